"""The list of companies the scheduler builds DAGs for, read cheaply at parse time.

Airflow re-parses DAG files every few seconds, so this does one bounded query (short connect
and statement timeouts) and keeps a JSON snapshot of the answer. When the warehouse cannot be
reached, the last snapshot is used: an outage must not make every company's DAG vanish.

Every registered company is read: there is no row cap, since a company past a cap would never get
a DAG and stay in its initial sync with nothing saying why (10,001 companies are tested). A row
whose id breaks the rule of :mod:`sage_sync.core.ids` (written before the registry checked ids,
or by hand) is left out with a logged reason, so the other companies' DAGs still parse.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from sage_sync.core.errors import ConfigError
from sage_sync.core.ids import company_id_problem
from sage_sync.core.quarters import Quarter
from sage_sync.warehouse import db

log = logging.getLogger(__name__)

# synced_since_reset: has a run of the company succeeded since it was created or last reset? Until
# one has, its next run reads everything (core.lanes: the history lane). The status says so for
# nearly every company (active: a run succeeded since; initial_sync: none has, as a reset sets it),
# so only the others ask the runs: one index probe each costs a 10,000-company parse, made by every
# task run too, about 10 times the rest of this query. The reset's own run starts in the reset's
# transaction (the same now()), so a reset that re-imported at once counts.
_QUERY = """
    select c.company_id, c.company_name, c.status, c.synced_from_quarter, c.daily_start_minute,
           case c.status when 'active' then true when 'initial_sync' then false
           else exists (select 1 from sage_control.sync_runs r
                        where r.company_id = c.company_id and r.status = 'success'
                          and r.started_at >= coalesce((select max(e.occurred_at) from sage_control.connection_events e
                                                        where e.company_id = c.company_id and e.event_type = 'reset'),
                                                       '-infinity')) end as synced_since_reset
    from sage_control.companies c
    order by c.company_id
"""


@dataclass(frozen=True)
class DagCompany:
    """What a company DAG needs to know at parse time."""

    company_id: str
    company_name: str
    status: str
    synced_from_quarter: str
    # The company's own daily start (minutes after 00:00 UTC), or None: spread over the window.
    # Defaulted, so a snapshot written before the column existed still reads.
    daily_start_minute: int | None = None
    # False until a run has succeeded since the company was created or last reset: its next run is
    # then a first sync (or a full re-import), in the history lane. Defaulted, so a snapshot written
    # before the field existed still reads (as daily).
    synced_since_reset: bool = True

    @property
    def synced_from(self) -> Quarter:
        """``synced_from_quarter`` as a :class:`Quarter` (the column's check keeps it well formed)."""
        return Quarter.parse(self.synced_from_quarter)


def snapshot_path() -> Path:
    """Where the last good registry read is kept (``SAGE_REGISTRY_SNAPSHOT`` overrides)."""
    default = Path(os.environ.get("AIRFLOW_HOME", tempfile.gettempdir())) / "sage_companies.json"
    return Path(os.environ.get("SAGE_REGISTRY_SNAPSHOT", str(default)))


def _write_snapshot(path: Path, companies: list[DagCompany]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(c) for c in companies], indent=1))
    tmp.replace(path)  # atomic: a parser never reads a half-written snapshot


def _read_snapshot(path: Path) -> list[DagCompany]:
    try:
        return [DagCompany(**row) for row in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def _valid(companies: list[DagCompany]) -> list[DagCompany]:
    """The companies whose id can name a DAG; each one left out is logged with the reason."""
    kept = []
    for company in companies:
        problem = company_id_problem(company.company_id)
        if problem is None:
            kept.append(company)
        else:
            log.warning("company %r skipped: no DAG is built for it (%s)", company.company_id, problem)
    return kept


def companies_for_dags(dsn: str | None = None) -> list[DagCompany]:
    """Companies from the registry, else from the last snapshot, else none; only those with a valid id."""
    path = snapshot_path()
    try:
        with db.connect(
            dsn,
            app="sage_sync.dag_parse",
            connect_timeout=db.PARSE_CONNECT_TIMEOUT_S,
            statement_timeout_ms=db.PARSE_STATEMENT_TIMEOUT_MS,
        ) as conn:
            rows = conn.execute(_QUERY).fetchall()
    except (psycopg.Error, ConfigError) as exc:
        log.warning("registry unreadable (%s); using snapshot %s", type(exc).__name__, path)
        return _valid(_read_snapshot(path))
    companies = _valid([DagCompany(*row) for row in rows])
    try:
        _write_snapshot(path, companies)
    except OSError as exc:  # a read-only filesystem must not break parsing either
        log.warning("could not write registry snapshot %s: %s", path, exc)
    return companies
