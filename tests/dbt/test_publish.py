"""A reader sees one build's marts, all of them, or the build before: never a mix (write-audit-publish).

dbt builds one mart after another, each in its own transaction, so a query that joins or compares
marts mid-build could see the line fact of the new build beside the rollups of the old one (the
page once showed 0 kg for every quarter of a new company). The marts are built in a private
schema and `analytics.<mart>` are views that show only the PUBLISHED build; a build publishes, in
one transaction at its end, only when everything it ran succeeded (dbt/macros/publish/).

Publishing is about tables (a dbt view would be live, mid-build included); every mart is a table.
Each check reads, in ONE statement, the same company's £ in the line fact, the category rollup
and the emissions coverage, and kg in the emission fact and its rollup, while a real `dbt build`
applies new raw versions.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from tests.conftest import analyst_role
from tests.dbt.test_dbt_models import (
    DBT,
    DBT_PROJECT,
    GBP_CO,
    LATER,
    Row,
    _dbt_env,
    _document,
    _insert_rows,
    _invoice_line,
    _load_later,
    _load_scenario,
)
from tests.dbt.test_marts_stay_queryable import _land_invoices
from tests.dbt_kit import run_dbt

pytestmark = pytest.mark.dbt

# One statement: the same company's figures in five marts. Within a published build they agree:
# the fact's £ = the category rollup's £ = the coverage's net £; the emission fact's kg = its rollup's.
FIGURES = sql.SQL("""
    select
        (select coalesce(sum(amount), 0) from analytics.fct_spend_transactions where company_id = %(c)s),
        (select coalesce(sum(amount), 0) from analytics.rpt_spend_by_category_quarter where company_id = %(c)s),
        (select coalesce(sum(net_gbp), 0) from analytics.rpt_emissions_coverage where company_id = %(c)s),
        (select coalesce(sum(kgco2e), 0) from analytics.fct_spend_emissions where company_id = %(c)s),
        (select coalesce(sum(kgco2e), 0) from analytics.rpt_emissions_by_category_quarter where company_id = %(c)s)
""")
# The same figures as a page reads them: one query a mart, in one REPEATABLE READ transaction.
PAGE_QUERIES = [
    "select coalesce(sum(amount), 0) from analytics.fct_spend_transactions where company_id = %(c)s",
    "select coalesce(sum(amount), 0) from analytics.rpt_spend_by_category_quarter where company_id = %(c)s",
    "select coalesce(sum(net_gbp), 0) from analytics.rpt_emissions_coverage where company_id = %(c)s",
    "select coalesce(sum(kgco2e), 0) from analytics.fct_spend_emissions where company_id = %(c)s",
    "select coalesce(sum(kgco2e), 0) from analytics.rpt_emissions_by_category_quarter where company_id = %(c)s",
]
# A page locks the marts it reads before its first query takes the snapshot, so a publish that
# re-creates a view (a deploy) waits for the page instead of swapping the view under its snapshot.
PAGE_LOCK = (
    "lock table analytics.fct_spend_transactions, analytics.rpt_spend_by_category_quarter, "
    "analytics.rpt_emissions_coverage, analytics.fct_spend_emissions, analytics.rpt_emissions_by_category_quarter "
    "in access share mode"
)
Figures = tuple[Decimal, ...]


def _agrees(figures: Figures) -> bool:
    spend, by_category, coverage, kg, kg_by_category = figures
    return spend == by_category == coverage and kg == kg_by_category


def _figures(conn: psycopg.Connection) -> Figures:
    return tuple(conn.execute(FIGURES, {"c": GBP_CO}).fetchone())


# --------------------------------------------------------------------------- the project under test


def _project(tmp: Path, *, failing_test: bool = False, added_column: bool = False) -> Path:
    """The dbt project, or a copy of it with a data test that fails on a poisoned document or with
    a column added to a mart (a deploy)."""
    if not (failing_test or added_column):
        return DBT_PROJECT
    project = tmp / "project"
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(DBT_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    if failing_test:
        (project / "tests" / "assert_no_poisoned_document.sql").write_text(
            "select record_id from {{ ref('fct_spend_transactions') }} where record_id like 'pi_poison%'\n"
        )
    if added_column:
        model = project / "models" / "marts" / "spend" / "rpt_spend_by_category_quarter.sql"
        model.write_text(f"select *, 1 as deployed_column from (\n{model.read_text()}\n) as deployed\n")
    return project


# A build here is the daily build: dbt's unit tests are left out, as in Airflow (test_dbt_models runs them).
DAILY = ["--exclude", "test_type:unit"]


def _dbt(project: Path, args: list[str], dsn: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    args = [*args, *DAILY] if args[0] == "build" else args
    paths = ["--project-dir", str(project), "--profiles-dir", str(project)]
    paths += ["--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs")]
    return run_dbt([*args, *paths], _dbt_env(dsn), project)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.fixture
def empty_marts(warehouse: psycopg.Connection) -> psycopg.Connection:
    """The warehouse with no modelled layer at all (the fixture drops the private marts schema
    too), in autocommit: a read must hold no lock or snapshot across a build."""
    warehouse.autocommit = True
    return warehouse


# --------------------------------------------------------------------------- readers


@dataclass
class Readers:
    """Two readers as the analyst role until stopped: one reads every figure in one statement
    (a BI tool), one reads them one query each in a REPEATABLE READ transaction (the page)."""

    dsn: str
    statement_reads: list[Figures] = field(default_factory=list)
    page_reads: list[Figures] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(analyst_role(self.dsn))))
        return conn

    def _statements(self) -> None:
        with self._connect() as conn:
            while not self.stop.is_set():
                try:
                    self.statement_reads.append(_figures(conn))
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {error}".strip())
                    time.sleep(0.05)

    def _page(self) -> None:
        with self._connect() as conn:
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            while not self.stop.is_set():
                try:
                    with conn.transaction():
                        # as the page does (lifecycle.inputs.warehouse): lock, then the first query
                        conn.execute(PAGE_LOCK)
                        self.page_reads.append(
                            tuple(conn.execute(query, {"c": GBP_CO}).fetchone()[0] for query in PAGE_QUERIES)
                        )
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {error}".strip())
                    time.sleep(0.05)

    def start(self) -> Readers:
        for target in (self._statements, self._page):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        while not (self.statement_reads and self.page_reads) and not self.errors:
            time.sleep(0.05)
        return self

    def finish(self) -> Readers:
        time.sleep(0.3)  # a few reads of the state the build left
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return self

    @property
    def reads(self) -> list[Figures]:
        return self.statement_reads + self.page_reads


@pytest.fixture
def readers(pg_dsn: str) -> Iterator[Readers]:
    started = Readers(pg_dsn)
    yield started
    started.stop.set()
    for thread in started.threads:
        thread.join(timeout=60)


def _poison_row() -> Row:
    line = _invoice_line("pi_poison_l1", "999.00", "0", "GB_ZERO", "la_office", "Paper")
    return Row("purchase_invoices", GBP_CO, "pi_poison", _document("pi_poison", "invoice", [line]), LATER)


# --------------------------------------------------------------------------- the tests


def test_no_mart_is_a_view() -> None:
    """These tests build the project as it is: a mart that were a view would be live mid-build."""
    settings = yaml.safe_load((DBT_PROJECT / "dbt_project.yml").read_text())

    def views(folder: dict, path: str) -> list[str]:
        found = [path] if folder.get("+materialized") == "view" else []
        for key, value in folder.items():
            if isinstance(value, dict):
                found += views(value, f"{path}/{key}")
        return found

    assert views(settings["models"]["sage_carbon"]["marts"], "marts") == []
    marts = DBT_PROJECT / "models" / "marts"
    assert not [p.name for p in marts.rglob("*.sql") if "materialized='view'" in p.read_text().replace(" ", "")]


def test_every_read_during_a_build_sees_one_build_across_marts(
    empty_marts: psycopg.Connection, pg_dsn: str, readers: Readers, tmp_path: Path
) -> None:
    project = _project(tmp_path)
    _load_scenario(pg_dsn)
    _land_invoices(pg_dsn, "a", "2024-06-01T06:00:00Z")
    _ok(_dbt(project, ["build"], pg_dsn, tmp_path))
    before = _figures(empty_marts)
    assert _agrees(before), before
    assert before[0] > 0 and before[3] > 0

    # the next day's sync: more invoices, an edit, a void, a deletion
    _land_invoices(pg_dsn, "b", "2024-06-02T06:00:00Z")
    _load_later(pg_dsn)
    readers.start()
    _ok(_dbt(project, ["build"], pg_dsn, tmp_path))
    readers.finish()
    after = _figures(empty_marts)
    assert _agrees(after), after
    assert after != before

    assert readers.errors == [], readers.errors[:5]
    assert len(readers.statement_reads) >= 10 and len(readers.page_reads) >= 10, "the readers barely ran"
    mixed = [figures for figures in readers.reads if not _agrees(figures)]
    assert not mixed, f"{len(mixed)} of {len(readers.reads)} reads mixed two builds, e.g. {mixed[:3]}"
    assert set(readers.reads) <= {before, after}, sorted(set(readers.reads) - {before, after})[:3]
    assert readers.statement_reads[-1] == after

    # the analyst reads the published views, never the private schema the build writes
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(analyst_role(pg_dsn))))
        assert _figures(conn) == after
        for private in ("sage_marts.fct_spend_transactions", "sage_marts.dbt_published"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select 1 from {private} limit 1")


def test_a_failed_build_publishes_nothing_until_a_good_build(
    empty_marts: psycopg.Connection, pg_dsn: str, readers: Readers, tmp_path: Path
) -> None:
    project = _project(tmp_path, failing_test=True)
    _load_scenario(pg_dsn)
    _land_invoices(pg_dsn, "a", "2024-06-01T06:00:00Z")
    _ok(_dbt(project, ["build"], pg_dsn, tmp_path))
    published = _figures(empty_marts)

    # new invoices and a document the audit refuses: the build writes, its test fails
    _land_invoices(pg_dsn, "b", "2024-06-02T06:00:00Z")
    with psycopg.connect(pg_dsn) as conn:
        _insert_rows(conn, [_poison_row()])
    readers.start()
    failed = _dbt(project, ["build"], pg_dsn, tmp_path)
    readers.finish()
    assert failed.returncode == 1, failed.stdout[-4000:]
    assert "assert_no_poisoned_document" in failed.stdout
    assert readers.errors == [], readers.errors[:5]
    assert set(readers.reads) == {published}, "a reader saw the failed build's marts"
    assert _figures(empty_marts) == published

    # neither a build of one model nor a seed publishes marts the failed build wrote and they did not rebuild
    _ok(_dbt(project, ["build", "--select", "rpt_spend_exceptions"], pg_dsn, tmp_path))
    _ok(_dbt(project, ["seed", "--select", "company_category_overrides"], pg_dsn, tmp_path))
    assert _figures(empty_marts) == published

    # Sage deletes the document; the next good build publishes everything since
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "insert into sage_raw.deletions (company_id, stream, record_id, source_deleted_at, "
            "detection_method, _extracted_at, _sync_run_id) values "
            "(%s, 'purchase_invoices', 'pi_poison', '2024-06-04T00:00:00Z', 'deleted_since', %s, 'run1')",
            (GBP_CO, "2024-06-05T06:00:00Z"),
        )
    _ok(_dbt(project, ["build"], pg_dsn, tmp_path))
    good = _figures(empty_marts)
    assert _agrees(good) and good != published
    assert (
        good[0]
        == empty_marts.execute(
            "select sum(amount) from sage_marts.fct_spend_transactions where company_id = %s", (GBP_CO,)
        ).fetchone()[0]
    )


def test_a_deploy_that_adds_a_column_keeps_the_marts_readable(
    empty_marts: psycopg.Connection, pg_dsn: str, readers: Readers, tmp_path: Path
) -> None:
    _load_scenario(pg_dsn)
    _land_invoices(pg_dsn, "a", "2024-06-01T06:00:00Z")
    _ok(_dbt(_project(tmp_path), ["build"], pg_dsn, tmp_path))
    before = _figures(empty_marts)

    _land_invoices(pg_dsn, "b", "2024-06-02T06:00:00Z")
    deployed = _project(tmp_path, added_column=True)
    readers.start()
    # The mart is incremental: a deploy that changes its columns takes a full refresh (README,
    # Upgrading); an incremental run would keep its columns (on_schema_change: ignore).
    _ok(_dbt(deployed, ["build", "--full-refresh"], pg_dsn, tmp_path))
    readers.finish()
    after = _figures(empty_marts)
    assert readers.errors == [], readers.errors[:5]
    assert set(readers.reads) <= {before, after}, sorted(set(readers.reads) - {before, after})[:3]
    assert _agrees(after) and after != before
    columns = [
        r[0]
        for r in empty_marts.execute(
            "select column_name from information_schema.columns where table_schema = 'analytics' "
            "and table_name = 'rpt_spend_by_category_quarter' order by ordinal_position"
        )
    ]
    assert columns[-1] == "deployed_column" and "dbt_build_id" not in columns
    # what the deploy replaced is gone once published
    leftovers = empty_marts.execute(
        "select relname from pg_class where relnamespace = 'sage_marts'::regnamespace and relname like '%\\_\\_old\\_%'"
    ).fetchall()
    assert leftovers == []


def test_a_full_refresh_publishes_the_same_marts(
    empty_marts: psycopg.Connection, pg_dsn: str, readers: Readers, tmp_path: Path
) -> None:
    project = _project(tmp_path)
    _load_scenario(pg_dsn)
    _land_invoices(pg_dsn, "a", "2024-06-01T06:00:00Z")
    _ok(_dbt(project, ["build"], pg_dsn, tmp_path))
    before = _figures(empty_marts)
    readers.start()
    _ok(_dbt(project, ["build", "--full-refresh"], pg_dsn, tmp_path))
    readers.finish()
    assert readers.errors == [], readers.errors[:5]
    assert set(readers.reads) == {before}
    assert _figures(empty_marts) == before


def test_a_build_killed_mid_way_publishes_nothing(
    empty_marts: psycopg.Connection, pg_dsn: str, readers: Readers, tmp_path: Path
) -> None:
    """dbt dies (a worker lost, an OOM kill) after committing some marts: readers keep the
    published build, and the next build publishes everything since."""
    project = _project(tmp_path)
    _load_scenario(pg_dsn)
    _land_invoices(pg_dsn, "a", "2024-06-01T06:00:00Z")
    _ok(_dbt(project, ["build"], pg_dsn, tmp_path))
    published = _figures(empty_marts)

    _land_invoices(pg_dsn, "b", "2024-06-02T06:00:00Z")
    readers.start()
    paths = ["--project-dir", str(project), "--profiles-dir", str(project), "--target-path", str(tmp_path / "target")]
    dying = subprocess.Popen(
        [DBT, "build", *DAILY, *paths, "--log-path", str(tmp_path / "logs")],
        env=_dbt_env(pg_dsn),
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and dying.poll() is None:  # until the line fact is committed
            if empty_marts.execute(
                "select count(*) from sage_marts.dbt_build_marts where mart = 'fct_spend_transactions' "
                "and build_id = (select max(build_id) from sage_marts.dbt_builds)"
            ).fetchone()[0]:
                break
            time.sleep(0.1)
        assert dying.poll() is None, "the build ended before it could be killed"
    finally:
        dying.kill()
        dying.wait()
    readers.finish()
    assert readers.errors == [], readers.errors[:5]
    assert set(readers.reads) == {published}
    assert _figures(empty_marts) == published

    _ok(_dbt(project, ["build"], pg_dsn, tmp_path))
    after = _figures(empty_marts)
    assert _agrees(after) and after != published
