"""Every copy of the stream list outside Python equals the registry (sage_sync.sage.streams).

dbt reads the registry through a generated macro (scripts/gen_dbt_streams.py); what cannot be
generated (the migrations' arrays, the sources YAML, the dbt tests' accepted values, a staging
model per stream) is compared here, and a failure names the file to fix.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sage_sync.sage.schema import SCHEMAS
from sage_sync.sage.streams import DOCUMENT_STREAMS, STREAMS

ROOT = Path(__file__).resolve().parents[2]
DBT = ROOT / "dbt"
MIGRATIONS = ROOT / "plugins" / "sage_sync" / "warehouse" / "migrations"
ALL = set(STREAMS)
SPEND = {s.name for s in DOCUMENT_STREAMS}
# sage_raw tables that are not streams: the loader's own deletion log and quarantine
RAW_EXTRAS = {"deletions", "quarantine"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_generated_stream_macro_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_dbt_streams.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_migration_arrays_list_every_stream() -> None:
    arrays = {}
    for path in sorted(MIGRATIONS.glob("*.sql")):
        for found in re.findall(r"foreach stream in array array\[(.*?)\]", path.read_text(), re.S):
            arrays[_rel(path)] = set(re.findall(r"'([a-z_]+)'", found))
    assert len(arrays) == 2, f"expected the two stream loops of the migrations, found {sorted(arrays)}"
    for name, streams in arrays.items():
        assert streams - RAW_EXTRAS == ALL, (
            f"{name}: stream array differs from sage_sync.sage.streams: "
            f"missing {sorted(ALL - streams)}, extra {sorted(streams - ALL - RAW_EXTRAS)}"
        )


def test_sources_yaml_has_a_table_per_stream() -> None:
    path = DBT / "models" / "staging" / "sage" / "_sage__sources.yml"
    sources = {s["name"]: s for s in yaml.safe_load(path.read_text())["sources"]}
    tables = {t["name"] for t in sources["sage"]["tables"]}
    assert tables - RAW_EXTRAS == ALL, (
        f"{_rel(path)}: source sage tables differ from sage_sync.sage.streams: "
        f"missing {sorted(ALL - tables)}, extra {sorted(tables - ALL - RAW_EXTRAS)}"
    )


def _stream_value_lists(node: Any) -> Iterator[list[Any]]:
    """accepted_values lists of every column called `stream` (values of sage streams)."""
    if isinstance(node, dict):
        if node.get("name") == "stream":
            for test in node.get("data_tests", []) or []:
                if isinstance(test, dict) and "accepted_values" in test:
                    spec = test["accepted_values"]
                    yield (spec.get("arguments") or spec)["values"]
        for value in node.values():
            yield from _stream_value_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from _stream_value_lists(item)


def test_accepted_stream_values_match_the_registry() -> None:
    checked = 0
    for path in sorted((DBT / "models").rglob("*.yml")):
        for values in _stream_value_lists(yaml.safe_load(path.read_text())):
            checked += 1
            found = set(values)
            # a list of spend streams only must be the spend streams; any other, every stream
            expected = SPEND if found <= SPEND else ALL
            assert found == expected, (
                f"{_rel(path)}: accepted stream values {sorted(found)} differ from "
                f"sage_sync.sage.streams: missing {sorted(expected - found)}, extra {sorted(found - expected)}"
            )
    assert checked >= 3, "the stream accepted_values lists were not found: has the YAML layout changed?"


def test_every_stream_has_its_staging_models() -> None:
    staging = DBT / "models" / "staging" / "sage"
    models = {p.stem for p in staging.rglob("*.sql")}
    for stream in STREAMS.values():
        assert f"stg_sage__{stream.name}" in models, f"{_rel(staging)}: add stg_sage__{stream.name}.sql"
        if stream.line_field:
            lines = f"stg_sage__{stream.name.removesuffix('s')}_lines"
            assert lines in models, f"{_rel(staging)}: add {lines}.sql ({{{{ sage_document_lines('{stream.name}') }}}})"
        if stream.incremental:
            base = f"base_sage__{stream.name}_latest"
            assert base in models, f"{_rel(staging)}/base: add {base}.sql"


# -- typed fields: what the staging models cast is what the loader validates (sage.schema) ---------

_TYPED_READ = re.compile(
    r"sage_(amount|date|timestamp|boolean|integer|link_id)\('(?:latest\.)?(payload|line)', '(\w+)'\)"
)
_KIND = {"amount": "amount", "date": "date", "timestamp": "timestamp", "boolean": "boolean"}
_KIND |= {"integer": "integer", "link_id": "link"}


def _typed_reads(text: str) -> set[tuple[str, str, str]]:
    """(payload or line, field, type) of every typed read macro in ``text``."""
    return {(where, field, _KIND[macro]) for macro, where, field in _TYPED_READ.findall(text)}


def test_every_typed_read_in_staging_is_declared_in_the_schema() -> None:
    """A field dbt casts but the loader does not validate could fail or poison a build again."""
    staging = DBT / "models" / "staging" / "sage"
    default_lines = _typed_reads((DBT / "macros" / "sage_document_lines.sql").read_text())
    purchase_documents = _typed_reads((DBT / "macros" / "sage_purchase_documents.sql").read_text())
    checked = 0
    for stream in STREAMS.values():
        declared = {("payload", f, t) for f, t in SCHEMAS[stream.name].fields.items()}
        declared |= {("line", f, t) for f, t in SCHEMAS[stream.name].line_fields.items()}
        header = staging / f"stg_sage__{stream.name}.sql"
        reads = {r for r in _typed_reads(header.read_text()) if r[0] == "payload"}
        if "sage_purchase_document(" in header.read_text():
            reads |= purchase_documents
        if stream.line_field:
            lines = (staging / f"stg_sage__{stream.name.removesuffix('s')}_lines.sql").read_text()
            reads |= _typed_reads(lines) if "columns=" in lines else default_lines
        undeclared = reads - declared
        assert not undeclared, (
            f"{_rel(header)} and its lines read {sorted(undeclared)}: declare them in "
            "plugins/sage_sync/sage/schema.py (then run scripts/gen_dbt_streams.py)"
        )
        checked += len(reads)
    assert checked > 50, "the typed reads were not found: have the staging macros been renamed?"


def test_staging_never_casts_payload_text_unguarded() -> None:
    """Casts of payload text go through the guarded macros of sage_parsing.sql, never a bare cast."""
    for path in sorted((DBT / "models" / "staging").rglob("*.sql")):
        bare = re.findall(r"cast\(\s*(?:nullif\(|trim\()*[^()]*->>[^()]*", path.read_text())
        assert not bare, f"{_rel(path)}: unguarded cast {bare}; use the sage_* macros of sage_parsing.sql"
