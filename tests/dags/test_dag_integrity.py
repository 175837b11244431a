"""The dags folder loads cleanly and every DAG meets the house rules.

Companies come from the registry of a real (test) warehouse; when it is unreachable the DAGs
come from the last snapshot instead of disappearing.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.lanes import Lane

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def two_companies(warehouse: psycopg.Connection, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter, daily_start_minute) "
        "values ('b1aa', 'Greenleaf Bakery Ltd', '2024-Q1', null), ('b2bb', 'Northwind Joinery Ltd', '2024-Q3', 450)"
    )  # b2bb starts at 07:30 UTC, a time of its own; b1aa at its place in the nightly window
    warehouse.commit()
    snapshot = tmp_path / "companies.json"
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_WAREHOUSE", warehouse_conn_json(pg_dsn))
    monkeypatch.setenv("SAGE_REGISTRY_SNAPSHOT", str(snapshot))
    return snapshot


_BAGS: dict[str, object] = {}


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), safe_mode=False)


@pytest.fixture
def bag(two_companies: Path):
    """The dags folder parsed once for this module's per-DAG checks (a parse takes seconds)."""
    if "bag" not in _BAGS:
        _BAGS["bag"] = _dagbag()
    return _BAGS["bag"]


DAG_FILES = sorted(path.name for path in DAGS.glob("*.py"))
EXPECTED_DAGS = ["sage_airflow_housekeeping", "sage_backfill", "sage_sync__b1aa", "sage_sync__b2bb", "sage_transform"]


@pytest.mark.parametrize("dag_file", DAG_FILES)
def test_dag_file_imports(bag, dag_file: str) -> None:
    errors = {Path(path).name: error for path, error in bag.import_errors.items()}
    assert dag_file not in errors, (
        f"dags/{dag_file} does not import; see the traceback below, or run "
        f"`. .local/env.sh && .venv/bin/airflow dags list-import-errors`:\n{errors.get(dag_file)}"
    )


def test_the_folder_holds_exactly_the_expected_dags(bag) -> None:
    assert sorted(bag.dags) == EXPECTED_DAGS, (
        "a DAG appeared or went missing: one per registered company (sage_sync__<id>), the transform "
        "and the backfill; add a new DAG to EXPECTED_DAGS only with its own tests"
    )


@pytest.mark.parametrize("dag_id", EXPECTED_DAGS)
def test_dag_follows_the_house_rules(bag, dag_id: str) -> None:
    dag = bag.dags.get(dag_id)
    assert dag is not None, f"{dag_id} was not loaded: look at test_dag_file_imports for its file"
    assert dag.doc_md, f"{dag_id}: give it a doc_md (the module docstring) so the UI says what it does"
    assert dag.tags, f"{dag_id}: give it tags so the UI can filter it"
    assert dag.catchup is False, f"{dag_id}: set catchup=False (runs read from watermarks, not logical dates)"
    assert dag.max_active_runs == 1, f"{dag_id}: set max_active_runs=1 (two runs would race for one state)"
    assert dag.start_date is not None and dag.start_date.tzinfo is not None, (
        f"{dag_id}: start from orchestration.defaults' tz-aware start date, not a naive datetime"
    )
    for task in dag.tasks:
        if task.task_id != "record_failure":
            assert task.retries >= 1, (
                f"{dag_id}.{task.task_id} has no retries: build it with the room's DEFAULT_ARGS "
                "(only record_failure, which closes a run, may not retry)"
            )


def test_the_company_dag_is_wired_as_designed(bag) -> None:
    dag = bag.dags["sage_sync__b1aa"]
    assert dag.dag_display_name == "Sage sync: Greenleaf Bakery Ltd"
    assert "company:b1aa" in dag.tags
    assert dag.is_paused_upon_creation is False  # a connected company syncs without a manual unpause
    # One task reads everything (issue 28: a task run costs ~0.6 core-s whatever it does); the
    # streams it reads are the registry's, in order (tests/dags/test_stream_states.py shows each).
    assert sorted(t.task_id for t in dag.tasks) == ["record_failure", "sync"]
    sync = dag.get_task("sync")
    # No run of b1aa has succeeded: its first sync, in the history lane's pool (tests/dags/test_task_timeouts.py).
    assert sync.pool == "sage_history"
    assert [o.name for o in sync.outlets] == ["sage_raw"]
    assert sync.downstream_task_ids == {"record_failure"}
    assert dag.get_task("record_failure").trigger_rule == "one_failed"


def _first_two_runs(timetable):
    """The first two runs the scheduler would create from 2024-01-01, one after the other."""
    import pendulum
    from airflow.timetables.base import TimeRestriction

    restriction = TimeRestriction(earliest=pendulum.datetime(2024, 1, 1, tz="UTC"), latest=None, catchup=True)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    second = timetable.next_dagrun_info(last_automated_data_interval=first.data_interval, restriction=restriction)
    return first, second


def test_each_company_runs_daily_at_its_own_minute_as_a_cron_trigger(bag) -> None:
    """Not all at 00:00 UTC: b1aa at its minute in the nightly window, b2bb at the time set for
    it. Still a cron trigger, as `@daily` was (Airflow 3's reading of it): the logical date is the
    run's time and the data interval empty, and catchup stays off (the house rules above)."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.trigger import CronTriggerTimetable

    from sage_sync.orchestration.schedule import DailyWindow, spread_minute

    b1aa_minute = spread_minute("b1aa", DailyWindow(0, 360))
    for dag_id, minute in [("sage_sync__b1aa", b1aa_minute), ("sage_sync__b2bb", 7 * 60 + 30)]:
        # What the scheduler sees: the DAG as serialized to the metadata DB, a built-in timetable.
        timetable = DagSerialization.from_dict(DagSerialization.to_dict(bag.dags[dag_id])).timetable
        assert type(timetable) is CronTriggerTimetable, dag_id
        assert timetable.summary == f"{minute % 60} {minute // 60} * * *", dag_id
        first, second = _first_two_runs(timetable)
        assert first.run_after == pendulum.datetime(2024, 1, 1, tz="UTC").add(minutes=minute), dag_id
        assert first.data_interval.start == first.data_interval.end == first.logical_date == first.run_after
        assert second.run_after - first.run_after == pendulum.duration(days=1)


def test_the_metadata_housekeeping_runs_daily_after_the_window_unpaused(bag) -> None:
    """Two hours after the nightly window ends (08:00 UTC by default), one task that cleans."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization

    dag = bag.dags["sage_airflow_housekeeping"]
    assert dag.is_paused_upon_creation is False  # paused, nobody would notice the DB growing
    assert [t.task_id for t in dag.tasks] == ["clean_airflow_metadata"]
    timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    assert timetable.summary == "0 8 * * *"
    first, second = _first_two_runs(timetable)
    assert first.run_after == pendulum.datetime(2024, 1, 1, 8, tz="UTC")
    assert second.run_after - first.run_after == pendulum.duration(days=1)


def test_transform_starts_unpaused_and_runs_on_new_data_or_daily(two_companies: Path) -> None:
    """Asset events for a paused DAG queue no run, so the transform must never start paused; and
    a daily run catches up whatever an event did not trigger (a dropped event, a failed run)."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.assets import AssetOrTimeSchedule

    dag = _dagbag().dags["sage_transform"]
    assert dag.is_paused_upon_creation is False
    # What the scheduler sees: the DAG as serialized to the metadata DB.
    timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert [key.name for key, _ in timetable.asset_condition.iter_assets()] == ["sage_raw"]
    first, second = _first_two_runs(timetable)
    # At the end of the nightly window the company runs are spread over (default 00:00-06:00).
    assert first.run_after == pendulum.datetime(2024, 1, 1, 6, tz="UTC")
    assert second.run_after - first.run_after == pendulum.duration(days=1)


def test_the_transform_builds_on_four_threads_from_a_partial_parse(two_companies: Path) -> None:
    # Cosmos writes the profile the build runs with: without threads in it, dbt ran every one of
    # the project's 327 nodes in a row (`Concurrency: 1 threads` in the deployment's task log).
    import yaml
    from cosmos import settings as cosmos_settings

    build = _dagbag().dags["sage_transform"].get_task("dbt_build")
    mapping = build.profile_config.profile_mapping
    profile = yaml.safe_load(mapping.get_profile_file_contents("sage_carbon", "airflow"))
    assert profile["sage_carbon"]["outputs"]["airflow"]["threads"] == 4
    # A cache dir is what lets the next build start from this one's partial parse.
    assert build.partial_parse and build.cache_dir == cosmos_settings.cache_dir / "sage_transform"


def test_unreachable_warehouse_keeps_the_last_known_dags(two_companies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dagbag()  # a good parse writes the snapshot
    assert json.loads(two_companies.read_text())[0]["company_id"] == "b1aa"
    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json("host=127.0.0.1 port=1 user=postgres dbname=x"),
    )
    bag = _dagbag()
    assert bag.import_errors == {}
    assert {"sage_sync__b1aa", "sage_sync__b2bb"} <= set(bag.dags)


def test_the_backfill_starts_unpaused(two_companies: Path) -> None:
    # A run triggered from Airflow's form or `airflow dags trigger` on a paused DAG waits queued
    # for a human (seen under the real scheduler in tests/deployment).
    dag = _dagbag().dags["sage_backfill"]
    assert dag.is_paused_upon_creation is False and dag.timetable.can_be_scheduled is False


def test_the_backfill_form_offers_only_valid_quarters_and_a_valid_default(two_companies: Path) -> None:
    from sage_sync.core.quarters import SYNCED_FROM, Quarter

    dag = _dagbag().dags["sage_backfill"]
    company, quarter = dag.params.get_param("company_id"), dag.params.get_param("synced_from")
    assert company.schema["enum"] == ["b1aa", "b2bb"] and company.value == "b1aa"
    choices = quarter.schema["enum"]
    # Latest first: the quarter before the latest Synced From (b2bb's 2024-Q3), down to the floor.
    assert choices[0] == "2024-Q2" and "2024-Q3" not in choices
    assert choices == sorted(choices, reverse=True) and len(choices) == len(set(choices))
    # Down to the one Synced From policy's floor, as the page and the CLI (was 7 years, the page 6).
    assert Quarter.parse(choices[-1]) == SYNCED_FROM.floor(datetime.now(UTC).date())
    # The default is valid for the default company (b1aa syncs from 2024-Q1), and offered.
    assert quarter.value == "2023-Q4" and quarter.value in choices
    assert quarter.schema["values_display"]["2023-Q4"] == "2023-Q4 (from 1 Oct 2023)"


def test_the_backfill_refuses_a_later_quarter_in_one_line(two_companies: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    dag = _dagbag().dags["sage_backfill"]
    validate = dag.get_task("validate").python_callable
    with pytest.raises(AirflowFailException) as refused:
        validate(params={"company_id": "b1aa", "synced_from": "2024-Q2"}, run_id="manual__1")
    message = str(refused.value)
    assert message == (
        "Synced From not moved to 2024-Q2: 2024-Q2 is later than the current Synced From "
        "2024-Q1: Synced From only moves earlier (use reset to start again)"
    )
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no chained dump


def test_the_backfill_waits_for_the_run_slot_without_holding_a_worker(
    two_companies: Path, warehouse: psycopg.Connection
) -> None:
    """A backfill requested while another run holds the company is not lost after a few retries:
    `validate` is a reschedule-mode sensor that opens the run once the slot is free."""
    from sage_sync.pipeline import sync

    task = _dagbag().dags["sage_backfill"].get_task("validate")
    assert task.mode == "reschedule" and task.timeout >= 12 * 3600
    warehouse.execute("update sage_control.companies set status = 'active' where company_id = 'b1aa'")
    warehouse.commit()
    daily = sync.begin_run("b1aa", airflow_run_id="scheduled__1", kind="daily")
    request = {"params": {"company_id": "b1aa", "synced_from": "2023-Q4"}, "run_id": "manual__2"}
    waiting = task.python_callable(**request)
    assert waiting.is_done is False
    assert warehouse.execute(
        "select kind from sage_control.sync_runs where company_id = 'b1aa' and status = 'running'"
    ).fetchall() == [("daily",)]
    sync.finish_run("b1aa", daily, status="success")
    opened = task.python_callable(**request)
    assert opened.is_done is True and opened.xcom_value == sync.run_key("b1aa", "manual__2")
    assert warehouse.execute(
        "select sync_run_id, kind from sage_control.sync_runs where company_id = 'b1aa' and status = 'running'"
    ).fetchall() == [(opened.xcom_value, "backfill")]


def test_a_refused_grant_fails_every_sage_task_without_retries(
    two_companies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from sage_sync.core.errors import GrantRefused, TransientError
    from sage_sync.pipeline import sync

    def refused(*_args: object, **_kwargs: object) -> None:
        raise GrantRefused("b1aa", "Greenleaf Bakery Ltd", "invalid_grant")

    bag = _dagbag()
    company_dag, backfill_dag = bag.dags["sage_sync__b1aa"], bag.dags["sage_backfill"]

    def steps_that_work() -> None:
        """Every step of the daily sync task succeeds, without Sage: then one is made to fail."""
        monkeypatch.setattr(sync, "resume_point", lambda *_a, **_k: frozenset())
        monkeypatch.setattr(sync, "begin_run", lambda *_a, **_k: "r")
        monkeypatch.setattr(sync, "check_auth", lambda *_a, **_k: Lane.DAILY)
        monkeypatch.setattr(sync.run_env, "make_client", lambda *_a, **_k: nullcontext(None))
        monkeypatch.setattr(sync, "sync_stream", lambda *_a, **_k: {})
        monkeypatch.setattr(sync, "sync_deletions", lambda *_a, **_k: {})
        monkeypatch.setattr(sync, "finish_run", lambda *_a, **_k: None)

    ti = SimpleNamespace(try_number=1, max_tries=2, task=None, dag_id="sage_sync__b1aa", task_id="sync")
    daily = {"company_id": "b1aa", "run_id": "manual__1", "ti": ti}
    steps_that_work()
    company_dag.get_task("sync").python_callable(**daily)  # the baseline: no error
    calls = [
        (company_dag, "sync", "check_auth", daily),
        (company_dag, "sync", "sync_stream", daily),
        (company_dag, "sync", "sync_deletions", daily),
        (backfill_dag, "refresh_auth", "check_auth", {"sync_run_id": "r", "params": {"company_id": "b1aa"}}),
        (
            backfill_dag,
            "backfill_purchase_invoices",
            "backfill_stream",
            {
                "stream": "purchase_invoices",
                "sync_run_id": "r",
                "params": {"company_id": "b1aa", "synced_from": "2023-Q4"},
            },
        ),
    ]
    for dag, task_id, step, kwargs in calls:
        steps_that_work()
        monkeypatch.setattr(sync, step, refused)
        with pytest.raises(AirflowFailException, match=r"^Sage refused the grant for Greenleaf Bakery Ltd: "):
            dag.get_task(task_id).python_callable(**kwargs)
        steps_that_work()
        monkeypatch.setattr(sync, step, lambda *_a, **_k: (_ for _ in ()).throw(TransientError("HTTP 503")))
        with pytest.raises(TransientError):  # not translated: the task's retries apply
            dag.get_task(task_id).python_callable(**kwargs)


def test_the_daily_build_leaves_out_dbt_unit_tests(two_companies: Path) -> None:
    # They check the SQL against fixed inputs (tests/dbt runs them); the day's data needs the rest.
    build = _dagbag().dags["sage_transform"].get_task("dbt_build")
    assert build.exclude == "test_type:unit"
    command, _ = build.build_cmd(context={}, cmd_flags=build.add_cmd_flags())
    assert command[command.index("--exclude") + 1] == "test_type:unit"
    assert "--select" not in command  # everything else: every seed, model and data test
