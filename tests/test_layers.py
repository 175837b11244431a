"""The layer map of docs/DESIGN.md, held by reading every module's imports (``ast``, nothing is imported).

Each folder of ``plugins/sage_sync`` is one layer and may import only the layers listed for it.
Lazy imports inside functions count too: a route that imports ``sage_sync.warehouse`` at call
time breaks the map as much as a top-level import does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "plugins" / "sage_sync"

# layer -> the layers it may import (besides itself). Keep in step with docs/DESIGN.md.
# `orchestration` sits below `lifecycle`: the use cases pause and trigger DAGs through its REST
# client, so nothing in it calls a use case (the DAG files' task bodies do, inside the task).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "sage": {"core"},
    "warehouse": {"core", "sage"},
    "pipeline": {"core", "sage", "warehouse"},
    "orchestration": {"core", "sage", "warehouse", "pipeline"},
    "lifecycle": {"core", "sage", "warehouse", "pipeline", "orchestration"},
    "reporting": {"core", "sage", "warehouse", "pipeline", "orchestration", "lifecycle"},
    "web": {"core", "orchestration", "lifecycle", "reporting"},
    "cli": {"core", "orchestration", "lifecycle", "reporting"},
}
# Files outside the package and the layers they may reach. A DAG file's task bodies call the
# pipeline and the use cases; at parse time it imports `orchestration` only (checked below).
OUTSIDE: dict[str, set[str]] = {
    "plugins/sage_connect_plugin.py": {"web"},
    "plugins/sage_sync/__main__.py": {"cli"},
    "dags/sage_company_sync.py": {"orchestration", "pipeline"},
    "dags/sage_backfill.py": {"orchestration", "pipeline", "lifecycle"},
    "dags/sage_transform.py": {"orchestration"},
    "dags/sage_housekeeping.py": {"orchestration"},
}
DAG_FILES = sorted(name for name in OUTSIDE if name.startswith("dags/"))
# Only these modules may import Airflow (the rest of the package runs without it). celery_config
# and worker_preload are read by Celery workers only (Airflow's Celery config, and its plugins
# loaded before the worker forks); pools sets the pools in Airflow's metadata database.
AIRFLOW_IMPORTERS = {
    "core/config.py",
    "orchestration/backfill_form.py",
    "orchestration/celery_config.py",
    "orchestration/companies.py",
    "orchestration/defaults.py",
    "orchestration/housekeeping.py",
    "orchestration/notifier.py",
    "orchestration/pools.py",
    "orchestration/tasks.py",
    "orchestration/worker_preload.py",
    "web/app.py",
    "web/access.py",
}


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth of the file."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            # `from sage_sync import warehouse` names a layer in the imported names
            if node.module == "sage_sync":
                names.extend(f"sage_sync.{alias.name}" for alias in node.names)
    return names


def layer_of(module: str) -> str | None:
    """``sage_sync.<layer>...`` -> layer; None for anything else."""
    parts = module.split(".")
    return parts[1] if parts[0] == "sage_sync" and len(parts) > 1 else None


def violations(path: Path, allowed: set[str], own: str | None) -> list[str]:
    """One line per import of ``path`` that reaches a layer outside ``allowed`` (``own`` is its layer)."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for module in imported_modules(path):
        layer = layer_of(module)
        if layer is None or layer in (own, "__main__"):
            continue
        if layer not in allowed:
            found.append(f"{name} imports {module} (layer {layer!r} is not below {own or 'it'})")
    return found


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_lives_in_a_layer() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"], f"modules outside a layer folder: {loose}"
    assert {p.parent.name for p in package_modules()} <= set(ALLOWED), "a folder missing from the layer map"


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_layer_imports_only_the_layers_below_it(path: Path) -> None:
    layer = path.relative_to(PACKAGE).parts[0]
    assert violations(path, ALLOWED[layer], layer) == []


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_dags_and_the_plugin_file_reach_only_their_layers(name: str) -> None:
    assert violations(ROOT / name, OUTSIDE[name], None) == []


def parse_time_imports(path: Path) -> list[str]:
    """The modules ``path`` imports when it is loaded: its top-level statements, not a function's body."""
    names: list[str] = []
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("name", DAG_FILES)
def test_dag_files_import_only_orchestration_at_parse_time(name: str) -> None:
    """A parse (every few seconds, and in every task process) loads Airflow's room, not the sync
    stack: the pipeline and the use cases are imported inside the task bodies."""
    layers = {layer_of(m) for m in parse_time_imports(ROOT / name)} - {None}
    assert layers == {"orchestration"}, f"{name} imports {sorted(layers - {'orchestration'})} at parse time"


def test_only_orchestration_the_web_layer_and_config_import_airflow() -> None:
    importers = {
        str(p.relative_to(PACKAGE))
        for p in package_modules()
        if any(m == "airflow" or m.startswith("airflow.") for m in imported_modules(p))
    }
    assert importers <= AIRFLOW_IMPORTERS, sorted(importers - AIRFLOW_IMPORTERS)


def test_the_check_catches_a_shortcut(tmp_path: Path) -> None:
    """The rule can fail: a CLI module reaching into the warehouse is reported."""
    bad = tmp_path / "commands.py"
    bad.write_text("def f():\n    from sage_sync.warehouse import registry\n    return registry\n")
    assert violations(bad, ALLOWED["cli"], "cli") == [
        "commands.py imports sage_sync.warehouse (layer 'warehouse' is not below cli)"
    ]
