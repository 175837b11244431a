"""Connecting refuses a business id that no DAG, Airflow REST path, Sage URL or file name could carry.

The rule lives in ``sage_sync.core.ids``; the registry enforces it too (``tests/core/test_company_ids.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from sage_sync.core.errors import LifecycleError
from sage_sync.lifecycle import connections as lifecycle
from sage_sync.lifecycle.authorisation import Authorisation
from sage_sync.sage.tokens import TokenSet
from sandbox.fake_sage.server import FakeSageServer
from tests.lifecycle_kit import business_id, fresh_code


def _authorisation(business_id: str) -> Authorisation:
    tokens = TokenSet("access", "refresh", datetime.now(UTC) + timedelta(minutes=5), None)
    return Authorisation(tokens, [{"id": business_id, "name": "Odd Ltd"}])


@pytest.mark.parametrize("odd", ["has space", "a/b", "x" * 93, "dot.ted", "q?x#y"])
def test_connect_refuses_an_id_no_dag_could_carry(odd: str, lenv: dict, warehouse: psycopg.Connection) -> None:
    """A business id Sage lists is still checked before anything is stored or any DAG is asked for."""
    with pytest.raises(LifecycleError, match="company id"):
        lifecycle.register(_authorisation(odd), odd, "2024-Q1")
    assert warehouse.execute("select count(*) from sage_control.companies").fetchone() == (0,)
    assert warehouse.execute("select count(*) from sage_control.oauth_tokens").fetchone() == (0,)
    assert lenv["paused"] == []


def test_connect_refuses_an_odd_id_before_spending_the_code(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    code, verifier = fresh_code(sage)
    with pytest.raises(LifecycleError, match="company id"):
        lifecycle.connect(code, verifier, "../greenleaf", "2024-Q1")
    good = business_id(sage, "greenleaf")
    assert lifecycle.connect(code, verifier, good, "2024-Q1").company_id == good  # the code still works
