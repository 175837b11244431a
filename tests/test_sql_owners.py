"""One owner per table: SQL that names a table lives in ``plugins/sage_sync/warehouse/`` only.

``docs/DESIGN.md`` says ``warehouse/`` is "tables and who writes them". That stays true only if
no other module writes SQL of its own: a second writer of a table is a second place to look when
its meaning changes. Every other module of the package, and the DAG files, ask ``warehouse/``.

Read with ``ast`` (nothing is imported). A string literal counts as SQL naming a table when
it starts like a statement (``select``/``with``/``insert into``/``update .. set``/``delete
from``/``truncate``, in lower case as the house writes SQL, or upper case) and names a relation
after ``from``/``join``/``into``/``update``, or when it names a table by schema (``sage_raw.x``,
``sage_control.x``, the dbt schemas). Docstrings are prose and are left out; an f-string is read
with each ``{...}`` as a placeholder.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "plugins" / "sage_sync"
OWNER = PACKAGE / "warehouse"

# The warehouse's schemas: the two this package migrates and the ones dbt builds.
SCHEMAS = ("sage_raw", "sage_control", "sage_staging", "sage_intermediate", "analytics")
_QUALIFIED = re.compile(rf"\b(?:{'|'.join(SCHEMAS)})\.[a-z_]")


def _kw(word: str) -> str:
    """A keyword as SQL is written here: all lower case (the house style), or all upper case."""
    return rf"\b(?:{word}|{word.upper()})\b"


_STATEMENT = re.compile(
    rf"^\s*(?:\(\s*)?(?:"
    rf"(?:{_kw('with')}[\s\S]*?{_kw('as')}\s*\(\s*)?{_kw('select')}[\s\S]*?(?:{_kw('from')}|{_kw('join')})\s+[\w\"{{]"
    rf"|{_kw('insert')}\s+{_kw('into')}\s+[\w\"{{]"
    rf"|{_kw('update')}\s+[\w\"{{][\s\S]*?{_kw('set')}"
    rf"|{_kw('delete')}\s+{_kw('from')}\s+[\w\"{{]"
    rf"|{_kw('truncate')}"
    rf")"
)


def names_a_table(text: str) -> bool:
    """Whether ``text`` reads as SQL that names a table (see the module docstring)."""
    return bool(_STATEMENT.search(text) or _QUALIFIED.search(text))


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the nodes that are docstrings (module, class, function)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sql_strings(path: Path) -> list[str]:
    """``path:line: text`` for every string literal in ``path`` that is SQL naming a table."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _docstrings(tree)
    inside_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or id(node) in inside_fstring:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        else:
            continue
        if names_a_table(text):
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            found.append(f"{name}:{node.lineno}: {' '.join(text.split())[:100]}")
    return found


def checked_modules() -> list[Path]:
    """Every Python file of the package outside ``warehouse/``, and the DAG files."""
    package = (p for p in PACKAGE.rglob("*.py") if not p.is_relative_to(OWNER))
    return sorted([*package, *(ROOT / "dags").glob("*.py")])


@pytest.mark.parametrize("path", checked_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_warehouse_writes_sql_that_names_a_table(path: Path) -> None:
    found = sql_strings(path)
    assert found == [], (
        "SQL naming a table outside plugins/sage_sync/warehouse/: move the query into the warehouse "
        "module that owns the table and call it from here:\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "text",
    [
        "select status from sage_control.companies where company_id = %s",
        "delete from {} where company_id = %s",
        "insert into {} (company_id) values (%s)",
        "update companies set status = %s",
        "\n  with last as (select 1) select * from last join x on true",
        "truncate sage_raw.contacts",
        "select max(_extracted_at) from {}",
        "{} rows in analytics.fct_spend",
    ],
)
def test_the_check_sees_sql(text: str) -> None:
    assert names_a_table(text), text


@pytest.mark.parametrize(
    "text",
    [
        "Select the business to connect and its first Synced From quarter",
        "deleted from Sage since the last run",
        "update the page",
        "select now()",
        "a reset wipes the imported data: confirm it explicitly",
        "sage_raw",
        "x-sage://warehouse/sage_raw",
    ],
)
def test_the_check_leaves_prose_alone(text: str) -> None:
    assert not names_a_table(text), text


def test_the_check_reads_files(tmp_path: Path) -> None:
    """The rule can fail on a file, and skips a docstring that only talks about a table."""
    bad = tmp_path / "status.py"
    bad.write_text(
        '"""Reads sage_control.sync_runs through the warehouse."""\n'
        "def f(conn, cid):\n"
        '    """select * from sage_control.companies, as prose."""\n'
        '    return conn.execute(f"select 1 from sage_control.companies where company_id = {cid!r}")\n'
    )
    assert sql_strings(bad) == ["status.py:4: select 1 from sage_control.companies where company_id = {}"]
