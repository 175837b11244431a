"""What this pipeline reads from Sage, declared once.

Every endpoint fact (path, which change filters the endpoint takes, its line array) lives here
so the sync code and the DAGs never build a URL or a query string themselves. Capabilities are
the v3.1 spec's list-operation parameters (see docs/SAGE_API.md, "Change filters and deletions").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote

StreamKind = Literal["document", "reference", "singleton"]

MAX_PAGE_SIZE = 200  # every v3.1 list operation declares items_per_page maximum 200


@dataclass(frozen=True)
class Stream:
    """One Sage endpoint and what it supports.

    ``incremental``: we page it with ``updated_or_created_since``; ``deletes``: it answers
    ``deleted_since``; ``date_filtered``: ``from_date``/``to_date`` filter the document date;
    ``sortable``: ``sort=updated_at:asc`` keeps page-offset paging stable over live data.
    Streams that are not incremental are re-read in full every run.
    """

    name: str
    path: str
    kind: StreamKind
    incremental: bool = False
    deletes: bool = False
    date_filtered: bool = False
    sortable: bool = False
    line_field: str | None = None
    extra_params: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Frozen means frozen: keep a read-only view even when given a plain dict.
        object.__setattr__(self, "extra_params", MappingProxyType(dict(self.extra_params)))

    def path_for(self, business_id: str) -> str:
        """The API path, with ``{business_id}`` filled in where the path names the business.

        Quoted as one path segment: a ``/`` or ``?`` in an id must not address another resource.
        """
        return self.path.format(business_id=quote(business_id, safe=""))


def _document(name: str, line_field: str | None) -> Stream:
    return Stream(
        name=name,
        path=f"/{name}",
        kind="document",
        incremental=True,
        deletes=True,
        date_filtered=True,
        sortable=True,
        line_field=line_field,
    )


_ALL = (
    # The business itself: a User Accounts endpoint, not paginated.
    Stream(name="businesses", path="/businesses/{business_id}", kind="singleton"),
    Stream(name="financial_settings", path="/financial_settings", kind="singleton"),
    # ledger_accounts and tax_rates take updated_or_created_since but not deleted_since, so an
    # incremental read could never see a removal: read them in full (they are small).
    Stream(name="ledger_accounts", path="/ledger_accounts", kind="reference"),
    Stream(
        name="contacts",
        path="/contacts",
        kind="reference",
        incremental=True,
        deletes=True,
        extra_params={"contact_type_id": "VENDOR"},  # suppliers only
    ),
    Stream(name="tax_rates", path="/tax_rates", kind="reference"),
    _document("purchase_invoices", "invoice_lines"),
    _document("purchase_credit_notes", "credit_note_lines"),
    _document("purchase_quick_entries", None),
    _document("other_payments", "payment_lines"),
)

STREAMS: Mapping[str, Stream] = MappingProxyType({s.name: s for s in _ALL})
DOCUMENT_STREAMS: tuple[Stream, ...] = tuple(s for s in _ALL if s.kind == "document")
REFERENCE_STREAMS: tuple[Stream, ...] = tuple(s for s in _ALL if s.kind == "reference")
SINGLETON_STREAMS: tuple[Stream, ...] = tuple(s for s in _ALL if s.kind == "singleton")


def get_stream(name: str) -> Stream:
    """The stream called ``name``, or a ``KeyError`` listing the known ones."""
    try:
        return STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown stream {name!r}; known: {', '.join(STREAMS)}") from None


def sage_datetime(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, the form Sage's filters document.

    Sub-second precision is dropped (rounding down), which only widens an inclusive
    ``updated_or_created_since``. Naive datetimes are refused: their zone is a guess.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _page_size(page_size: int) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    return page_size


def list_params(
    stream: Stream,
    *,
    updated_since: datetime | None = None,
    from_date: date | None = None,
    to_date: date | None = None,
    page_size: int = MAX_PAGE_SIZE,
) -> dict[str, Any]:
    """Query parameters that list ``stream`` with every attribute.

    Filters the stream does not support are left out on purpose (callers may pass a
    watermark to every stream; a full-refresh stream simply ignores it), so check
    ``stream.incremental`` / ``stream.date_filtered`` to know what was applied.
    """
    if stream.kind == "singleton":
        raise ValueError(f"stream {stream.name!r} is a singleton, not a list")
    params: dict[str, Any] = {"attributes": "all", "items_per_page": _page_size(page_size)}
    if stream.sortable:
        params["sort"] = "updated_at:asc"
    if stream.incremental and updated_since is not None:
        params["updated_or_created_since"] = sage_datetime(updated_since)
    if stream.date_filtered:
        if from_date is not None:
            params["from_date"] = from_date.isoformat()
        if to_date is not None:
            params["to_date"] = to_date.isoformat()
    params.update(stream.extra_params)
    return params


def deleted_params(
    stream: Stream,
    since: datetime,
    page_size: int = MAX_PAGE_SIZE,
) -> dict[str, Any]:
    """Query parameters listing records of ``stream`` deleted after ``since`` (exclusive).

    No ``attributes``: what Sage returns for a deleted record beyond ``id`` / ``$path`` is
    undocumented, and the id is all a deletion needs. No ``extra_params`` either: a filter
    such as ``contact_type_id`` could hide the deletion of a record we did store.
    """
    if not stream.deletes:
        raise ValueError(f"stream {stream.name!r} does not support deleted_since")
    params: dict[str, Any] = {
        "deleted_since": sage_datetime(since),
        "items_per_page": _page_size(page_size),
    }
    return params
