"""The one rule for a company id (Sage's business id), checked wherever an id enters.

An id is spliced into names other systems parse, so one id that does not fit them once removed
every company's DAG (the DAG file raised at import):

- the DAG id ``sage_sync__<id>``: Airflow 3.3 takes ``[A-Za-z0-9_.-]`` (``\\w`` also lets other
  Unicode letters through) up to 250 characters (``validate_key``), so an id may have 239;
- the DAG tag ``company:<id>``: at most 100 characters (``TAG_MAX_LEN``), so an id may have 92;
- a path segment of Airflow's REST API and of Sage's ``/businesses/{id}``, and report file names.

Sage's business ids are 32 lowercase hex characters in every example (docs/SAGE_API.md), so the
rule is ASCII letters, digits, ``-`` and ``_``, starting with a letter or a digit (no ``.``/``..``
path segments, nothing a shell or the CLI reads as an option), at most 64 characters: well
inside every limit above, with room for ids of other shapes (tests use ``biz-1``).
"""

from __future__ import annotations

import re

from sage_sync.core.errors import InvalidCompanyId

COMPANY_ID_MAX_LENGTH = 64
# For HTML ``pattern`` attributes and docs; anchored by whoever uses it.
COMPANY_ID_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{COMPANY_ID_MAX_LENGTH - 1}}}"
_COMPANY_ID_RE = re.compile(COMPANY_ID_PATTERN)


def company_id_problem(company_id: object) -> str | None:
    """Why ``company_id`` is not a valid company id, or None when it is."""
    if not isinstance(company_id, str) or not company_id:
        return "a company id must be a non-empty string"
    if len(company_id) > COMPANY_ID_MAX_LENGTH:
        return f"a company id has at most {COMPANY_ID_MAX_LENGTH} characters, this one has {len(company_id)}"
    if _COMPANY_ID_RE.fullmatch(company_id) is None:
        return (
            "a company id is made of ASCII letters, digits, '-' and '_' and starts with a letter "
            "or a digit (Sage's business ids are 32 hex characters)"
        )
    return None


def check_company_id(company_id: str) -> str:
    """``company_id`` unchanged, or :class:`InvalidCompanyId` with the reason (one line, id shown quoted)."""
    problem = company_id_problem(company_id)
    if problem is not None:
        # repr() keeps a newline or a control character from breaking the one-line message.
        raise InvalidCompanyId(f"invalid company id {company_id!r:.80}: {problem}")
    return company_id
