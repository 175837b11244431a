"""The trigger form of ``sage_backfill``: which company, and the quarter its Synced From moves to.

The quarters offered and accepted are the one Synced From policy of the page and the CLI
(``core.quarters.SYNCED_FROM``): earlier than the company's own, not before six years back. The
form is built at each parse of the DAG file from the registry (``orchestration.companies``);
with no company yet, both fields are free text that the DAG's ``validate`` task checks.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param

from sage_sync.core.quarters import QUARTER_PATTERN, SYNCED_FROM, Quarter
from sage_sync.orchestration.companies import form_companies
from sage_sync.warehouse.snapshot import DagCompany


def params() -> dict[str, Param]:
    """The form's two fields, ``company_id`` and ``synced_from``."""
    companies = form_companies()
    return {"company_id": _company_param(companies), "synced_from": _quarter_param(companies)}


def valid_quarters(companies: list[DagCompany], today: datetime | None = None) -> list[str]:
    """Every quarter some company may move Synced From to (the one policy, ``SYNCED_FROM``: earlier
    than its own, not before the floor), latest first.

    One list for the whole form (a trigger form cannot make one field depend on another);
    `validate` refuses, in one line, a quarter that is not earlier than the chosen company's.
    """
    day = (today or datetime.now(UTC)).date()
    found = {q for c in companies for q in SYNCED_FROM.earlier_quarters(c.synced_from, day)}
    return [str(q) for q in sorted(found, reverse=True)]


def _quarter_param(companies: list[DagCompany]) -> Param:
    description = (
        "A quarter earlier than the company's current Synced From (shown beside the company), not "
        "before six years back; documents dated from its first day are imported. Uses the grant the "
        "company already gave (no re-authorisation: use the Sage connections page for that)"
    )
    quarters = valid_quarters(companies)
    if not quarters:  # no company (yet), or none that may move: free text, checked by `validate`
        return Param(
            str(Quarter.containing(datetime.now(UTC).date()).previous()),
            type="string",
            pattern=f"^{QUARTER_PATTERN}$",
            title="New Synced From",
            description=description,
        )
    # The default is the latest quarter the default company may move to, when it may move at all.
    own = SYNCED_FROM.earlier_quarters(companies[0].synced_from, datetime.now(UTC).date())
    default = str(own[0]) if own else quarters[0]
    return Param(
        default,
        type="string",
        enum=quarters,
        title="New Synced From",
        description=description,
        values_display={q: f"{q} (from {Quarter.parse(q).start_date:%-d %b %Y})" for q in quarters},
    )


def _company_param(companies: list[DagCompany]) -> Param:
    if not companies:
        # No registry (yet): a free-text id, checked by `validate` at run time.
        return Param(
            "",
            type="string",
            minLength=1,
            title="Company",
            description="Sage business id of a connected company (none is connected yet)",
        )
    return Param(
        companies[0].company_id,
        type="string",
        title="Company",
        enum=[c.company_id for c in companies],
        values_display={
            c.company_id: f"{c.company_name} ({c.status}, from {c.synced_from_quarter})" for c in companies
        },
        description="The connected company whose Synced From moves earlier",
    )
