"""dbt-project-evaluator's rules, checked on the manifest of ``dbt parse``.

dbt Labs' dbt-project-evaluator package is installed from the dbt package hub (``dbt deps``),
which this project's build machines cannot reach, and it runs as models in the warehouse. This
script checks the same rules, by the same names (``fct_<rule>``) and with the same settings,
on ``target/manifest.json`` instead: no database, about a second after ``dbt parse``.

Settings (as the package's vars would say them): model types staging (``stg_``), base
(``base_``, in ``base/``), intermediate (``int_``), marts (``fct_``, ``dim_``, ``rpt_``);
primary-key tests are ``unique`` + ``not_null`` on one column or the project's
``unique_combination`` test (macros/test_unique_combination.sql).

Four rules are ours, not the package's:

- ``docs_stray_markdown_emphasis``: a ``*`` outside a code span in a model or column description,
  which dbt docs render as italics;
- ``marts_materialized_by_folder``: a mart's materialisation is its area folder's
  (``+materialized`` under ``marts: <area>:`` in ``dbt_project.yml``), never its own file's;
- ``var_read_by_one_model``: each var of :data:`ONE_READER_VARS` is read by its one model and by no
  other node or macro (the factor set in use: everything else takes it from that model's rows);
- ``fct_intermediate_dependent_on_marts`` is the package's, but may not be excepted: intermediates
  sit below the marts.

Exceptions are the package's seed, ``seeds/dbt_project_evaluator_exceptions.csv``
(``fct_name, column_name, id_to_exclude, comment``; ``id_to_exclude`` is a SQL ``like``
pattern matched against the finding's resource), each with the reason it is kept; the rules of
:data:`NOT_EXCEPTABLE` take none.

    python scripts/check_dbt_project.py [--manifest dbt/target/manifest.json] [--all]

Exit status 1 when a finding is not excepted; ``--all`` also lists the excepted ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DBT = ROOT / "dbt"
EXCEPTIONS = DBT / "seeds" / "dbt_project_evaluator_exceptions.csv"
PROJECT = DBT / "dbt_project.yml"
# var -> the one model that may read it
ONE_READER_VARS = {"emission_factor_set": "int_emission_factors"}
NOT_EXCEPTABLE = frozenset(
    {"fct_intermediate_dependent_on_marts", "marts_materialized_by_folder", "var_read_by_one_model"}
)
CONFIG_MATERIALIZED = re.compile(r"\bmaterialized\s*=")

PREFIXES = {"staging": ("stg_",), "base": ("base_",), "intermediate": ("int_",), "marts": ("fct_", "dim_", "rpt_")}
PK_TESTS = {"unique_combination", "unique_combination_of_columns"}
CHAINED_VIEWS_MAX = 4  # the package's default chained_views_threshold
HARD_CODED = re.compile(r"\b(?:from|join)\s+(?!\{\{)(\"?[a-z_][\w]*\"?\.\"?[a-z_][\w]*\"?)", re.I)

Finding = tuple[str, str]  # (rule, resource) with resource as the package reports it


def model_type(node: dict[str, Any]) -> str:
    """The node's type by its folder (models/<type>/...; base/ under staging is its own type)."""
    parts = Path(node["original_file_path"]).parts[1:-1]
    if "base" in parts:
        return "base"
    return parts[0] if parts and parts[0] in PREFIXES else "other"


def _code(node: dict[str, Any]) -> str:
    """A node's or macro's SQL and Jinja without its comments."""
    return re.sub(r"\{#.*?#\}|--[^\n]*", "", node.get("raw_code") or node.get("macro_sql") or "", flags=re.S)


def _models(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: v
        for k, v in manifest["nodes"].items()
        if v["resource_type"] == "model"
        and v["package_name"] == manifest["metadata"].get("project_name", v["package_name"])
    }


def findings(manifest: dict[str, Any], project: dict[str, Any] | None = None) -> Iterator[Finding]:
    """Every rule's findings (``project``: dbt_project.yml as parsed, read from disk when not given)."""
    models = _models(manifest)
    project = project if project is not None else yaml.safe_load(PROJECT.read_text())
    yield from _vars_read_by_one_model(manifest)
    for uid, node in models.items():
        yield from _modeling(uid, node, manifest)
        if model_type(node) == "marts":
            yield from _materialized_by_folder(node, project)
        yield from _structure(node)
        yield from _documentation_and_tests(uid, node, manifest)
        if node["config"].get("materialized") == "view" and _view_chain(uid, manifest, models) > CHAINED_VIEWS_MAX:
            yield "fct_chained_views_dependencies", node["name"]
    for uid, source in manifest["sources"].items():
        yield from _source(uid, source, manifest, models)


def _modeling(uid: str, node: dict[str, Any], manifest: dict[str, Any]) -> Iterator[Finding]:
    name, kind, sources = node["name"], model_type(node), manifest["sources"]
    parents = manifest["parent_map"].get(uid, [])
    model_parents = [p for p in parents if p.startswith(("model.", "seed.", "snapshot."))]
    source_parents = [p for p in parents if p.startswith("source.")]
    if not parents:
        yield "fct_root_models", name
    if source_parents and model_parents:
        yield "fct_direct_join_to_source", name
    if source_parents and kind in ("intermediate", "marts"):
        yield "fct_marts_or_intermediate_dependent_on_source", name
    if len({sources[p]["unique_id"] for p in source_parents}) > 1:
        yield "fct_multiple_sources_joined", name
    for parent in model_parents:
        parent_node = manifest["nodes"][parent]
        parent_kind = model_type(parent_node) if parent.startswith("model.") else "seed"
        edge = f"{parent_node['name']} -> {name}"
        if kind == "staging" and parent_kind == "staging":
            yield "fct_staging_dependent_on_staging", edge
        if kind in ("staging", "base") and parent_kind in ("intermediate", "marts"):
            yield "fct_staging_dependent_on_marts_or_intermediate", edge
        if kind == "intermediate" and parent_kind == "marts":
            yield "fct_intermediate_dependent_on_marts", edge
    if kind == "staging":
        parts = Path(node["original_file_path"]).parts
        folder = parts[2] if len(parts) > 3 else ""  # models/staging/<source>/<model>.sql
        if any(sources[p]["source_name"] != folder for p in source_parents):
            yield "fct_model_directories", name
        if not name.startswith(f"stg_{folder}__"):
            yield "fct_model_naming_conventions", name
    if HARD_CODED.search(_code(node)):
        yield "fct_hard_coded_references", name


def folder_materialization(fqn: list[str], project: dict[str, Any]) -> tuple[str | None, int]:
    """The ``+materialized`` dbt_project.yml gives a model by its folders (``fqn`` minus its name),
    and how many folders deep it is set (0: the project's own default or none)."""
    config = (project.get("models") or {}).get(fqn[0]) or {}
    found: tuple[str | None, int] = (config.get("+materialized"), 0)
    for depth, folder in enumerate(fqn[1:-1], start=1):
        config = config.get(folder) or {}
        if "+materialized" in config:
            found = (config["+materialized"], depth)
    return found


def _materialized_by_folder(node: dict[str, Any], project: dict[str, Any]) -> Iterator[Finding]:
    """A mart takes its materialisation from its area folder (models/marts/<area>/...), never from
    a config of its own (in its SQL or its YAML)."""
    materialized, depth = folder_materialization(node["fqn"], project)
    if depth < 2 or CONFIG_MATERIALIZED.search(_code(node)) or node["config"].get("materialized") != materialized:
        yield "marts_materialized_by_folder", node["name"]


_VAR_READ = r"\bvar\(\s*['\"]{}['\"]"


def _vars_read_by_one_model(manifest: dict[str, Any]) -> Iterator[Finding]:
    """Each var of ONE_READER_VARS is read by its model and nowhere else (models, tests, macros)."""
    project = manifest["metadata"].get("project_name")
    nodes = [*manifest["nodes"].values(), *manifest["macros"].values()]
    for var, owner in ONE_READER_VARS.items():
        read = re.compile(_VAR_READ.format(re.escape(var)))
        readers = {n["name"] for n in nodes if n.get("package_name") == project and read.search(_code(n))}
        for reader in sorted(readers - {owner}):
            yield "var_read_by_one_model", f"{var}: {reader}"
        if owner not in readers:
            yield "var_read_by_one_model", f"{var}: not read by {owner}"


def _structure(node: dict[str, Any]) -> Iterator[Finding]:
    name, kind = node["name"], model_type(node)
    if kind == "other" or not name.startswith(PREFIXES.get(kind, ("-",))):
        yield "fct_model_naming_conventions", name
    patch = (node.get("patch_path") or "").split("://")[-1]
    if patch and Path(patch).parent != Path(node["original_file_path"]).parent:
        yield "fct_test_directories", name


def stray_emphasis(description: str) -> bool:
    """A ``*`` that dbt docs' Markdown renders as italics: outside a code span and not ``**``.

    `round(net_gbp * deflator, 2) * factor` read as "round(net_gbp deflator, 2) factor" with
    the middle in italics; formulas go in backticks.
    """
    return "*" in re.sub(r"\*\*", "", re.sub(r"`[^`]*`", "", description))


def _documentation_and_tests(uid: str, node: dict[str, Any], manifest: dict[str, Any]) -> Iterator[Finding]:
    name = node["name"]
    if not node["description"].strip():
        yield "fct_undocumented_models", name
    if stray_emphasis(node["description"]):
        yield "docs_stray_markdown_emphasis", name
    for column in node["columns"].values():
        if not (column.get("description") or "").strip():
            yield "fct_undocumented_columns", f"{name}.{column['name']}"
        if stray_emphasis(column.get("description") or ""):
            yield "docs_stray_markdown_emphasis", f"{name}.{column['name']}"
    attached = [
        t
        for t in manifest["nodes"].values()
        if t["resource_type"] == "test" and t.get("attached_node") == uid and t.get("test_metadata")
    ]
    by_column: dict[str, set[str]] = {}
    for test in attached:
        by_column.setdefault(test.get("column_name") or "", set()).add(test["test_metadata"]["name"])
    if not (
        any(t["test_metadata"]["name"] in PK_TESTS for t in attached)
        or any({"unique", "not_null"} <= kinds for column, kinds in by_column.items() if column)
    ):
        yield "fct_missing_primary_key_tests", name


def _source(uid: str, source: dict[str, Any], manifest: dict[str, Any], models: dict[str, Any]) -> Iterator[Finding]:
    label = f"{source['source_name']}.{source['name']}"
    model_children = [c for c in manifest["child_map"].get(uid, []) if c in models]
    if not model_children:
        yield "fct_unused_sources", label
    if len(model_children) > 1:
        yield "fct_source_fanout", label
    if not source["description"].strip():
        yield "fct_undocumented_source_tables", label
    if not source["source_description"].strip():
        yield "fct_undocumented_sources", source["source_name"]
    freshness = source.get("freshness") or {}
    if not any((freshness.get(level) or {}).get("count") for level in ("warn_after", "error_after")):
        yield "fct_sources_without_freshness", label
    folder = Path(source["original_file_path"]).parent
    if folder.name != source["source_name"] or "staging" not in folder.parts:
        yield "fct_source_directories", label


def _view_chain(uid: str, manifest: dict[str, Any], models: dict[str, Any]) -> int:
    """How many views, this one included, are stacked on each other up to it (the longest chain)."""
    parents = [
        p
        for p in manifest["parent_map"].get(uid, [])
        if p in models and models[p]["config"].get("materialized") == "view"
    ]
    return 1 + max((_view_chain(p, manifest, models) for p in parents), default=0)


def _like(pattern: str, value: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace("%", ".*").replace("_", "."), value) is not None


def load_exceptions(path: Path = EXCEPTIONS) -> list[dict[str, str]]:
    """The exceptions seed; every row must give a reason."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if not row.get("comment", "").strip():
            raise SystemExit(f"{path.relative_to(ROOT)}: exception {row} gives no reason (comment)")
        if row["fct_name"] in NOT_EXCEPTABLE:
            raise SystemExit(f"{path.name}: rule {row['fct_name']} takes no exceptions: fix the model")
    return rows


def main() -> int:
    """Print the findings per rule; fail on any finding the exceptions seed does not cover."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DBT / "target" / "manifest.json")
    parser.add_argument("--all", action="store_true", help="also list excepted findings")
    parser.add_argument("--no-exceptions", action="store_true", help="ignore the exceptions seed")
    args = parser.parse_args()
    manifest = json.loads(args.manifest.read_text())
    exceptions = [] if args.no_exceptions else load_exceptions()
    found = sorted(set(findings(manifest)))
    excepted = [f for f in found if any(e["fct_name"] == f[0] and _like(e["id_to_exclude"], f[1]) for e in exceptions)]
    failing = [f for f in found if f not in excepted]
    for rule, resource in found if args.all else failing:
        print(f"{rule}: {resource}{'  (excepted)' if (rule, resource) in excepted else ''}")
    counts = Counter(rule for rule, _ in found)
    print(
        "findings per rule: "
        + (", ".join(f"{rule} {n}" for rule, n in sorted(counts.items())) or "none")
        + f"; {len(excepted)} excepted, {len(failing)} failing"
    )
    unused = [
        e for e in exceptions if not any(e["fct_name"] == f[0] and _like(e["id_to_exclude"], f[1]) for f in found)
    ]
    for e in unused:
        print(f"stale exception (nothing matches it any more): {e['fct_name']} {e['id_to_exclude']}")
    return 1 if failing or unused else 0


if __name__ == "__main__":
    sys.exit(main())
