"""Write the stream registry (``sage_sync.sage.streams``) and the typed fields of each stream
(``sage_sync.sage.schema``) into the dbt project as macros.

dbt cannot import Python, and the models need the stream facts at parse time (a ``ref`` in a
Jinja loop must be known before any database is reachable), so the registry is rendered into
``dbt/macros/sage_streams.sql`` and ``dbt/macros/sage_schema.sql``. The files are committed;
``tests/dbt/test_stream_registry.py`` fails when they differ from what this script writes.

    python scripts/gen_dbt_streams.py          # rewrite the macro
    python scripts/gen_dbt_streams.py --check  # exit 1 if the committed macro is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

from sage_sync.sage.schema import SCHEMAS  # noqa: E402
from sage_sync.sage.streams import STREAMS  # noqa: E402

MACRO = ROOT / "dbt" / "macros" / "sage_streams.sql"
SCHEMA_MACRO = ROOT / "dbt" / "macros" / "sage_schema.sql"


def stream_facts() -> list[dict[str, object]]:
    """What the dbt models need to know of each stream, in registry order."""
    return [
        {
            "name": s.name,
            "kind": s.kind,
            "is_incremental": s.incremental,
            "has_deletions": s.deletes,
            "is_date_filtered": s.date_filtered,
            "is_spend": s.kind == "document",
            "line_field": s.line_field,
            # the staging model of the lines: purchase_invoices -> stg_sage__purchase_invoice_lines
            "lines_model": f"stg_sage__{s.name.removesuffix('s')}_lines" if s.line_field else None,
        }
        for s in STREAMS.values()
    ]


def render() -> str:
    """The macro file's text."""
    items = ",\n".join(f"        {json.dumps(facts, sort_keys=False)}" for facts in stream_facts())
    # JSON literals are Jinja literals too, except the three constants.
    items = items.replace(": true", ": True").replace(": false", ": False").replace(": null", ": None")
    return (
        "{#\n"
        "    Generated from plugins/sage_sync/sage/streams.py by scripts/gen_dbt_streams.py: do not edit.\n"
        "    The Sage streams the pipeline reads, with the facts the models need (kind, whether it is\n"
        "    kept incrementally, has a deletion feed, is filtered by document date, is spend, and the\n"
        "    payload array and staging model of its lines).\n"
        "#}\n"
        "{% macro sage_streams() -%}\n"
        "    {{ return([\n"
        f"{items}\n"
        "    ]) }}\n"
        "{%- endmacro %}\n"
    )


def render_schema() -> str:
    """The typed-fields macro's text: per stream, its (field, type) pairs and its lines'."""
    items = []
    for name, schema in SCHEMAS.items():
        facts = {
            "fields": [list(pair) for pair in schema.fields.items()],
            "line_field": STREAMS[name].line_field,
            "line_fields": [list(pair) for pair in schema.line_fields.items()],
        }
        items.append(f"        {json.dumps(name)}: {json.dumps(facts).replace(': null', ': None')}")
    body = ",\n".join(items)
    return (
        "{#\n"
        "    Generated from plugins/sage_sync/sage/schema.py by scripts/gen_dbt_streams.py: do not edit.\n"
        "    The typed fields of each stream's payload and of its lines, as (field, type) pairs: what the\n"
        "    loader validates and the staging models cast (guarded, macros in sage_parsing.sql).\n"
        "#}\n"
        "{% macro sage_schema() -%}\n"
        "    {{ return({\n"
        f"{body}\n"
        "    }) }}\n"
        "{%- endmacro %}\n"
    )


def main() -> int:
    """Write the macros, or with ``--check`` say whether the committed ones are current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed macro is stale")
    args = parser.parse_args()
    outputs = {MACRO: render(), SCHEMA_MACRO: render_schema()}
    if args.check:
        stale = [path for path, text in outputs.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python scripts/gen_dbt_streams.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
