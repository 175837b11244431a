"""The dbt project's structure rules hold, and each one bites (scripts/check_dbt_project.py).

- every mart's materialisation comes from its area folder in dbt_project.yml, never its own file;
- var('emission_factor_set') is read by one model, int_emission_factors, and nothing else;
- no intermediate model refs a mart, and the exceptions seed cannot excuse one that does.

The project is parsed once (``dbt parse``, no database); each planted fault is made on a copy of
its manifest, so the test shows the rule would catch it.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DBT_PROJECT = ROOT / "dbt"
DBT = str(Path(sys.executable).with_name("dbt"))
RULES = ("marts_materialized_by_folder", "var_read_by_one_model", "fct_intermediate_dependent_on_marts")


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_dbt_project", ROOT / "scripts" / "check_dbt_project.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    target = tmp_path_factory.mktemp("dbt_parse")
    paths = ["--project-dir", str(DBT_PROJECT), "--profiles-dir", str(DBT_PROJECT), "--target-path", str(target)]
    result = subprocess.run(
        [DBT, "parse", *paths, "--log-path", str(target / "logs"), "--quiet"],
        cwd=DBT_PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return json.loads((target / "manifest.json").read_text())


def _found(manifest: dict[str, Any], rule: str) -> list[str]:
    return sorted(resource for r, resource in set(check.findings(manifest)) if r == rule)


def _node(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in manifest["nodes"].values() if n["resource_type"] == "model" and n["name"] == name)


@pytest.mark.parametrize("rule", RULES)
def test_the_project_keeps_the_rule(manifest: dict[str, Any], rule: str) -> None:
    assert _found(manifest, rule) == [], f"{rule}: see scripts/check_dbt_project.py for what to do"


def test_every_mart_folder_sets_its_materialisation(manifest: dict[str, Any]) -> None:
    marts = [n for n in manifest["nodes"].values() if n["resource_type"] == "model" and check.model_type(n) == "marts"]
    project = yaml.safe_load(check.PROJECT.read_text())
    assert len(marts) >= 14
    for node in marts:
        materialized, depth = check.folder_materialization(node["fqn"], project)
        assert depth >= 2 and node["config"]["materialized"] == materialized, node["original_file_path"]


def test_a_mart_that_sets_its_own_materialisation_is_found(manifest: dict[str, Any]) -> None:
    planted = copy.deepcopy(manifest)
    node = _node(planted, "rpt_spend_exceptions")
    node["raw_code"] = "{{ config(materialized='view') }}\n" + node["raw_code"]
    assert _found(planted, "marts_materialized_by_folder") == ["rpt_spend_exceptions"]
    # a YAML config (or anything else) that makes it differ from its folder's
    planted = copy.deepcopy(manifest)
    _node(planted, "dim_suppliers")["config"]["materialized"] = "view"
    assert _found(planted, "marts_materialized_by_folder") == ["dim_suppliers"]


def test_a_second_reader_of_the_factor_set_var_is_found(manifest: dict[str, Any]) -> None:
    planted = copy.deepcopy(manifest)
    node = _node(planted, "fct_spend_emissions")
    node["raw_code"] += "\n{%- set factor_set = var('emission_factor_set') %}"
    test = next(n for n in planted["nodes"].values() if n["name"] == "assert_factor_set_covers_spend")
    test["raw_code"] += "\nselect '{{ var(\"emission_factor_set\") }}'"
    assert _found(planted, "var_read_by_one_model") == [
        "emission_factor_set: assert_factor_set_covers_spend",
        "emission_factor_set: fct_spend_emissions",
    ]


def test_an_intermediate_reading_a_mart_is_found_and_cannot_be_excepted(
    manifest: dict[str, Any], tmp_path: Path
) -> None:
    planted = copy.deepcopy(manifest)
    child = _node(planted, "int_emission_account_mappings")["unique_id"]
    planted["parent_map"][child].append(_node(planted, "dim_nominal_accounts")["unique_id"])
    found = _found(planted, "fct_intermediate_dependent_on_marts")
    assert found == ["dim_nominal_accounts -> int_emission_account_mappings"]
    seed = tmp_path / "exceptions.csv"
    with seed.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fct_name", "column_name", "id_to_exclude", "comment"])
        writer.writerow(["fct_intermediate_dependent_on_marts", "child", found[0], "a reason"])
    with pytest.raises(SystemExit, match="takes no exceptions"):
        check.load_exceptions(seed)
