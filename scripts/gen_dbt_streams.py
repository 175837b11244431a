"""Write the stream registry (``sage_sync.sage.streams``) into the dbt project as a macro.

dbt cannot import Python, and the models need the stream facts at parse time (a ``ref`` in a
Jinja loop must be known before any database is reachable), so the registry is rendered into
``dbt/macros/sage_streams.sql``. The file is committed; ``tests/dbt/test_stream_registry.py``
fails when it differs from what this script writes.

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

from sage_sync.sage.streams import STREAMS  # noqa: E402

MACRO = ROOT / "dbt" / "macros" / "sage_streams.sql"


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


def main() -> int:
    """Write the macro, or with ``--check`` say whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed macro is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if MACRO.read_text() != text:
            print(f"{MACRO.relative_to(ROOT)} is stale: run python scripts/gen_dbt_streams.py", file=sys.stderr)
            return 1
        return 0
    MACRO.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
