"""Two checkouts on one machine never share local databases silently."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _devenv():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("devenv_under_test", ROOT / "scripts" / "devenv.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_checkout_gets_its_own_database_names(monkeypatch: pytest.MonkeyPatch) -> None:
    devenv = _devenv()
    monkeypatch.delenv("SAGE_CHECKOUT_ID", raising=False)
    monkeypatch.setattr(devenv, "ROOT", Path("/srv/clones/sage-sync"))
    first = devenv.checkout_id()
    monkeypatch.setattr(devenv, "ROOT", Path("/home/ana/sage-sync"))
    second = devenv.checkout_id()
    assert first != second
    assert first.startswith("sage_sync_") and second.startswith("sage_sync_")
    # PostgreSQL identifiers: lower case, no quoting needed, well under 63 bytes with the prefix.
    assert all(c.isalnum() or c == "_" for c in first + second)
    assert len("sage_airflow_" + first + "_test") < 63


def test_the_setting_overrides_the_derived_name(monkeypatch: pytest.MonkeyPatch) -> None:
    devenv = _devenv()
    monkeypatch.setenv("SAGE_CHECKOUT_ID", "Team-Prod")
    assert devenv.checkout_id() == "team_prod"
