"""Helpers the tests and the benches share, outside the product code.

``connect_company`` stands in for the Connect flow's last step: it registers a company and stores
its first tokens, without the pages or the CLI (whose use cases, ``lifecycle.connections.register``
and ``connect``, also check the grant with Sage and unpause the DAG).
"""

from __future__ import annotations

from sage_sync.core.quarters import Quarter
from sage_sync.lifecycle.inputs import dsn_or_refuse, warehouse
from sage_sync.sage.tokens import TokenSet
from sage_sync.warehouse import registry
from sage_sync.warehouse.token_store import PostgresTokenStore


def connect_company(company_id: str, name: str, quarter: Quarter, tokens: TokenSet) -> registry.Company:
    """Register (or re-register) the company and store its first tokens."""
    with warehouse() as conn:
        company = registry.register_company(conn, company_id, name, quarter)
        conn.commit()
    PostgresTokenStore(dsn_or_refuse()).replace(company_id, tokens)
    return company
