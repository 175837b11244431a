"""A company id is checked where it enters (one rule, ``core.ids``) and quoted wherever it is spliced in.

The id becomes a dag_id (``sage_sync__<id>``, at most 250 characters of ``[A-Za-z0-9_.-]``), a
DAG tag (``company:<id>``, at most 100), a segment of Airflow REST paths and of a Sage URL, and
part of report file names. Sage's business ids are 32 hex characters.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest

from sage_sync.core.errors import InvalidCompanyId, LifecycleError
from sage_sync.core.ids import COMPANY_ID_MAX_LENGTH, check_company_id, company_id_problem
from sage_sync.orchestration import airflow_api
from sage_sync.reporting.report import report_files
from sage_sync.sage.streams import STREAMS
from sage_sync.warehouse import registry

GOOD = ["0d40342d0287cd6b13555c54afca6c90", "b1aa", "biz-1", "co_2", "A" * COMPANY_ID_MAX_LENGTH]
ODD = [
    "has space",
    "a/b",
    "../../etc/passwd",
    "x" * (COMPANY_ID_MAX_LENGTH + 1),
    "x" * 93,
    "q?x=1#frag",
    "café",
    "dot.ted",
    "-leading-dash",
    "_leading_underscore",
    "tab\tin",
    "new\nline",
    "nul\x00",
    "",
]


@pytest.mark.parametrize("company_id", GOOD)
def test_sage_shaped_ids_pass(company_id: str) -> None:
    assert check_company_id(company_id) == company_id
    assert company_id_problem(company_id) is None


@pytest.mark.parametrize("company_id", ODD)
def test_odd_ids_are_refused_with_the_reason(company_id: str) -> None:
    with pytest.raises(InvalidCompanyId) as refused:
        check_company_id(company_id)
    assert isinstance(refused.value, LifecycleError)  # the one-line refusal the CLI and pages show
    assert "\n" not in str(refused.value) and "company id" in str(refused.value)
    assert company_id_problem(company_id) is not None


def test_the_rule_fits_what_airflow_takes_as_a_dag_id_and_a_tag() -> None:
    from airflow.sdk.definitions._internal.node import validate_key
    from airflow.sdk.definitions.dag import TAG_MAX_LEN

    longest = "f" * COMPANY_ID_MAX_LENGTH
    validate_key(airflow_api.dag_id_for(longest))  # raises on a bad dag_id
    assert len(f"company:{longest}") <= TAG_MAX_LEN


def test_the_registry_refuses_an_odd_id(warehouse: psycopg.Connection) -> None:
    for odd in ODD:
        with pytest.raises(InvalidCompanyId):
            registry.register_company(warehouse, odd, "Acme", "2024-Q1")
        warehouse.rollback()
    assert warehouse.execute("select count(*) from sage_control.companies").fetchone() == (0,)


def test_the_sage_business_url_quotes_the_id() -> None:
    assert STREAMS["businesses"].path_for("0d40342d0287cd6b13555c54afca6c90") == (
        "/businesses/0d40342d0287cd6b13555c54afca6c90"
    )
    assert STREAMS["businesses"].path_for("a/b?c#d e") == "/businesses/a%2Fb%3Fc%23d%20e"


def test_report_file_names_cannot_leave_the_folder(tmp_path: Path) -> None:
    files = report_files(tmp_path, "../../a b/c")
    for path in (files.category_csv, files.coverage_csv, files.workbook, files.chart):
        assert path.parent == tmp_path and "/" not in path.name and " " not in path.name
    assert report_files(tmp_path, "b1aa").workbook == tmp_path / "emissions_b1aa.xlsx"


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.paths.append(self.path)  # the request target exactly as sent
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_PATCH = do_POST = do_GET = _answer  # the names BaseHTTPRequestHandler dispatches to

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    _Recorder.paths = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_airflow_rest_paths_quote_the_dag_id(api_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_AIRFLOW_API_URL", api_server)  # the api-server's address is configuration
    dag_id = airflow_api.dag_id_for("a b/c?d#e")
    assert airflow_api.set_dag_paused(dag_id, paused=True, caller=airflow_api.Caller(token="t")) is True
    airflow_api.trigger(dag_id, None, airflow_api.Caller(token="t"))
    quoted = "sage_sync__a%20b%2Fc%3Fd%23e"
    assert _Recorder.paths == [
        f"/api/v2/dags/{quoted}",
        f"/api/v2/dags/{quoted}",
        f"/api/v2/dags/{quoted}/dagRuns",
    ]
