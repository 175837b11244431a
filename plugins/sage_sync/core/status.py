"""The company-status values and the moves between them, written once.

``sage_control.companies.status`` holds one of :class:`CompanyStatus`; the values are plain
strings (a ``StrEnum``), so they compare equal to what the database returns and serialise as
themselves in JSON. :func:`check_transition` is the one place that says which change is allowed;
``warehouse.registry.set_status`` calls it before every status update.
"""

from __future__ import annotations

from enum import StrEnum

from sage_sync.core.errors import InvalidStatusTransition


class CompanyStatus(StrEnum):
    """Where a company connection stands."""

    INITIAL_SYNC = "initial_sync"  # connected (or reset); its first full sync has not completed yet
    ACTIVE = "active"  # synced at least once since connecting or the last reset
    ERROR = "error"  # Sage refused for a reason a retry will not fix (e.g. a lapsed subscription)
    NEEDS_REAUTH = "needs_reauth"  # the grant is dead: a user must authorise access again
    DISCONNECTED = "disconnected"  # a user stopped imports; only a re-authorisation brings it back
    # The grant no longer reaches the company's business (not among /businesses): runs stop before
    # writing anything, and each run checks again; a successful run makes it active once more.
    BUSINESS_MISSING = "business_missing"


STATUSES = frozenset(CompanyStatus)
# Statuses from which a company is not synced and cannot be reset or backfilled.
NOT_CONNECTED = frozenset({CompanyStatus.DISCONNECTED, CompanyStatus.NEEDS_REAUTH})

# A (re)authorisation (``registry.register_company`` / ``registry.reauthorise``) may move any status
# to INITIAL_SYNC or ACTIVE. Everything else is below; keeping a status (to record a last error) is
# always allowed, except that a disconnected company stays disconnected until it is re-authorised.
ALLOWED_TRANSITIONS: dict[CompanyStatus, frozenset[CompanyStatus]] = {
    CompanyStatus.INITIAL_SYNC: frozenset(CompanyStatus),
    CompanyStatus.ACTIVE: frozenset(CompanyStatus),
    CompanyStatus.ERROR: frozenset(CompanyStatus),
    CompanyStatus.NEEDS_REAUTH: frozenset(CompanyStatus),
    CompanyStatus.DISCONNECTED: frozenset({CompanyStatus.INITIAL_SYNC, CompanyStatus.ACTIVE}),
    CompanyStatus.BUSINESS_MISSING: frozenset(CompanyStatus),
}
REAUTHORISED = frozenset({CompanyStatus.INITIAL_SYNC, CompanyStatus.ACTIVE})


def parse_status(value: str) -> CompanyStatus:
    """``value`` as a :class:`CompanyStatus`; ``ValueError`` naming the known ones otherwise."""
    try:
        return CompanyStatus(value)
    except ValueError:
        raise ValueError(f"unknown company status [{value!r}]; expected one of {sorted(STATUSES)}") from None


def check_transition(current: str, new: str) -> CompanyStatus:
    """``new`` as a status, or :class:`InvalidStatusTransition` when ``current`` may not move there."""
    target = parse_status(new)
    if target not in ALLOWED_TRANSITIONS[parse_status(current)]:
        raise InvalidStatusTransition(f"a company cannot go from {current} to {target}")
    return target
