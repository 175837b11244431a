"""A small, defensive HTTP client for Sage Accounting v3.1 (read-only: GET only).

It knows Sage's contract and nothing about the warehouse: ``X-Business`` on every call, the
list envelope and its ``$next`` links, the JSON error array, which failures are worth a retry,
and the token refresh a 401 deserves. The retry loop is written out rather than delegated
to a retry library because its branches differ in kind (a 401 costs a refresh, a 429 may name
its own delay) and that reads more plainly as code than as a policy object.

One room on purpose: the session, paging, the retry loop and the error mapping
are one HTTP contract; split, each part would need the others to be read.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests

from sage_sync.core.config import DEFAULT_MAX_PAGES  # without a $total, at most this many pages
from sage_sync.core.errors import (
    BusinessMismatch,
    IncompleteListing,
    InvalidResponse,
    PageLimitExceeded,
    RateLimited,
    SageAPIError,
    SubscriptionInactive,
    TransientError,
)
from sage_sync.sage.money import to_int

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# 401s tolerated on a token a refresh has just issued, before the request fails as transient.
FRESH_401_RETRIES = 2
_TRANSPORT_ERRORS = (
    requests.ConnectionError,  # refused, reset, dropped mid-response
    requests.Timeout,  # connect and read timeouts
    requests.exceptions.ChunkedEncodingError,  # body shorter than announced
    requests.exceptions.ContentDecodingError,
)
_BODY_ERRORS = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
_SUBSCRIPTION_MESSAGE = "no active subscription"

# A list may take this many pages more than its $total needs (plus a tenth): records created while
# it pages, and a $total a page too small, must not end a read that Sage itself has not ended.
PAGE_CAP_SLACK = 3
# Sage's record timestamps and its `Date` header agree to within seconds; a record stamped later
# than the answer's `Date` plus this comes from a clock glitch and must never become a cursor.
CLOCK_TOLERANCE = timedelta(minutes=5)


class TokenSource(Protocol):
    """What the client needs from ``auth.TokenManager``."""

    def access_token(self) -> str: ...

    def refresh(self, rejected_token: str | None = None) -> str: ...


@dataclass(frozen=True)
class Page:
    """One page of a Sage list: its items plus the envelope fields that drive paging."""

    items: list[dict[str, Any]]
    page: int
    total: int | None
    next: str | None
    items_per_page: int | None
    request_id: str | None
    server_time: datetime | None = None  # Sage's `Date` header: its clock when it answered

    @property
    def is_last(self) -> bool:
        """Sage ended the list: ``$next`` is null. Nothing else ends one (``$total`` may be wrong)."""
        return self.next is None

    @property
    def stamp_ceiling(self) -> datetime:
        """The latest ``updated_at`` a record of this page can honestly carry.

        Sage's clock (``Date``) when it answered, else the local one, plus ``CLOCK_TOLERANCE``: a
        record stamped later is loaded but never moves a watermark or a cursor.
        """
        return (self.server_time or datetime.now(UTC)) + CLOCK_TOLERANCE

    def cursor_stamp(self) -> tuple[datetime | None, int]:
        """The newest ``updated_at`` this page may move a cursor or watermark to, and how many of its
        records are stamped past :attr:`stamp_ceiling` (loaded and counted, never a cursor)."""
        return newest_stamp(self.items, self.stamp_ceiling)

    def served_all(self) -> bool:
        """The pages up to this one hold at least ``$total`` records (unknown ``$total``: True)."""
        if self.total is None:
            return True
        return (self.page - 1) * (self.items_per_page or 0) + len(self.items) >= self.total


def parse_stamp(value: object) -> datetime | None:
    """An ISO 8601 timestamp with its zone (``Z`` or an offset), else None: a naive one is a guess."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.utcoffset() is not None else None


def newest_stamp(items: list[dict[str, Any]], ceiling: datetime) -> tuple[datetime | None, int]:
    """The greatest ``updated_at`` not past ``ceiling`` among records with an id, and how many are past it.

    Mirrors what the loader accepts (a non-empty string id, a zoned timestamp), so the read-ahead
    predicts the same cursor the read then takes.
    """
    newest: datetime | None = None
    future = 0
    for item in items:
        record_id, stamp = item.get("id"), parse_stamp(item.get("updated_at"))
        if not (isinstance(record_id, str) and record_id.strip()) or stamp is None:
            continue
        if stamp > ceiling:
            future += 1
        elif newest is None or stamp > newest:
            newest = stamp
    return newest, future


def page_cap(total: int, per_page: int) -> int:
    """The most pages a list of ``total`` records may take: what it needs, a tenth more, and slack."""
    needed = math.ceil(total / per_page) if per_page > 0 else 0
    return needed + needed // 10 + PAGE_CAP_SLACK


class PageBudget:
    """Counts one read's pages and ends it, with the reason, past what Sage's ``$total`` allows.

    Offset paging (:meth:`spend`): at most :func:`page_cap` of the largest ``$total`` seen, or
    ``max_pages`` while no page carried one. A cursor read (:meth:`spend_cursor`) re-reads the
    records at its cursor on every request, so its pages are not a fixed count: it may load at
    most as many records as its ``$total`` allows (plus slack), and only a few requests that
    bring nothing new (a server that ignores the cursor or ``page``).
    """

    # Requests of a cursor read that bring no record not read before (after Sage served a page
    # again, the read starts its timestamp over from page 1).
    MAX_STALLS = 10

    def __init__(self, max_pages: int, path: str | None = None) -> None:
        self.max_pages = max_pages
        self.path = path
        self.pages = 0
        self.stalls = 0
        self.expected: int | None = None
        self.per_page: int | None = None

    def _observe(self, page: Page, already_read: int) -> None:
        self.pages += 1
        if page.total is not None and page.items_per_page:
            self.expected = max(self.expected or 0, already_read + page.total)
            self.per_page = page.items_per_page

    def _fail(self, reason: str) -> None:
        raise PageLimitExceeded(reason, pages=self.pages, path=self.path)

    def _without_total(self) -> None:
        if self.expected is None and self.pages >= self.max_pages:
            self._fail(f"Sage went on past {self.max_pages} pages with no $total (SAGE_MAX_PAGES)")

    def spend(self, page: Page) -> None:
        """Count an offset page; raise :class:`PageLimitExceeded` when another would be one too many."""
        self._observe(page, 0)
        if page.is_last:
            return
        self._without_total()
        if self.expected is not None and self.per_page:
            limit = page_cap(self.expected, self.per_page)
            if self.pages >= limit:
                self._fail(f"Sage went on past {limit} pages, more than its $total of {self.expected:,} allows")

    def spend_cursor(self, page: Page, already_read: int, fresh: int) -> None:
        """Count a cursor read's page that brought ``fresh`` records after ``already_read``."""
        self._observe(page, already_read)
        self.stalls += 0 if fresh else 1
        if page.is_last:
            return
        self._without_total()
        if self.stalls > self.MAX_STALLS:
            self._fail(f"Sage served {self.stalls} pages of records already read")
        if self.expected is not None and self.per_page:
            allowed = page_cap(self.expected, self.per_page) * self.per_page
            if already_read + fresh >= allowed:
                self._fail(f"Sage went on past {allowed:,} records, more than its $total of {self.expected:,} allows")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None.

    Sage does not document the header on 429, so it is optional; a value in the past means
    "now" (0), an unparseable one is ignored.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def join_url(api_url: str, path_or_url: str) -> str:
    """The absolute URL of ``path_or_url`` under ``api_url``.

    Sage's ``$next``/``$back`` and ``$path`` are paths relative to the API base *including*
    its version (``/purchase_invoices?page=2`` means ``.../v3.1/purchase_invoices?page=2``), so
    they are appended to ``api_url``, not resolved against the host. A path that already
    starts with the base's own path is taken as host-relative. An absolute URL is accepted
    only under ``api_url``: a bearer token must never follow a link to another host.
    """
    base = api_url.rstrip("/")
    if path_or_url.startswith(("http://", "https://")):
        if path_or_url == base or path_or_url.startswith((base + "/", base + "?")):
            return path_or_url
        host = urlsplit(path_or_url).netloc
        raise ValueError(f"refusing to follow a URL outside the Sage API base: {host}")
    path = path_or_url if path_or_url.startswith("/") else "/" + path_or_url
    parts = urlsplit(base)
    base_path = parts.path.rstrip("/")
    if base_path and (path == base_path or path.startswith((base_path + "/", base_path + "?"))):
        return urlunsplit((parts.scheme, parts.netloc, "", "", "")) + path
    return base + path


def _canonical(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A URL's path and sorted query pairs, so equal requests compare equal."""
    parts = urlsplit(url)
    return parts.path.rstrip("/"), tuple(sorted(parse_qsl(parts.query, keep_blank_values=True)))


def _request_id(response: requests.Response) -> str | None:
    # Sage documents the header as ``x_request_id`` (underscore); proxies may rewrite it.
    return response.headers.get("x_request_id") or response.headers.get("x-request-id")


def _server_time(response: requests.Response) -> datetime | None:
    """Sage's clock from the ``Date`` header (RFC 9110 requires one), or None when absent or junk."""
    value = response.headers.get("Date")
    try:
        when = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError):
        return None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def _error_list(response: requests.Response) -> list[dict[str, Any]]:
    """Sage's ``[{"$severity","$dataCode","$message","$source"}]`` error array, best effort."""
    try:
        body = response.json()
    except ValueError:
        return []
    if isinstance(body, dict):
        body = body.get("$errors", [body]) if "$errors" in body else [body]
    if not isinstance(body, list):
        return []
    return [e for e in body if isinstance(e, dict)]


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth another try."""

    def __init__(
        self,
        reason: str,
        final: type[TransientError],
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after


class RequestLimiter(Protocol):
    """A deployment-wide request budget (e.g. ``sage_sync.warehouse.ratelimit.PostgresRateLimiter``).

    ``acquire()`` blocks until one more request may be sent; ``throttled(seconds)``, if the
    limiter has it, is told when Sage answered 429 so every process sharing the budget slows down.
    """

    def acquire(self) -> None: ...


class SageClient:
    """GETs against one Sage business, with retries, a refresh on 401, and paging.

    ``backoff`` is the first retry delay in seconds (doubled per retry, with jitter, up to
    ``max_backoff``); a ``Retry-After`` header overrides it, capped at ``retry_after_cap``.
    ``sleep`` is injectable so tests do not wait. A ``requests.Session`` is not meant to be
    shared between threads, so use one client per thread (they may share a TokenManager).
    """

    def __init__(
        self,
        api_url: str,
        business_id: str,
        tokens: TokenSource,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (10, 60),
        max_attempts: int = 6,
        max_throttled_attempts: int = 30,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        retry_after_cap: float = 120.0,
        sleep: Callable[[float], None] | None = None,
        check_business: bool = True,
        limiter: RequestLimiter | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.api_url = api_url.rstrip("/")
        self.business_id = business_id
        self.tokens = tokens
        self._own_session = session is None
        self.session = session or requests.Session()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_throttled_attempts = max_throttled_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retry_after_cap = retry_after_cap
        # Looked up at call time (not bound as a default argument), so patching time.sleep works.
        self._sleep = sleep or _sleep
        self.check_business = check_business
        self.limiter = limiter
        self.max_pages = max_pages
        self.request_count = 0
        self.retry_count = 0

    def __enter__(self) -> SageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own_session:
            self.session.close()

    # -- public API ----------------------------------------------------------------------

    def get(self, path_or_next: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | list[Any]:
        """GET a path (``/financial_settings``) or a ``$next`` link and return the parsed JSON."""
        body, _ = self._get(path_or_next, params)
        return body

    def get_page(self, path: str, params: Mapping[str, Any] | None = None) -> Page:
        """One page of a list, for callers that page by a cursor of their own, not by ``$next``."""
        body, response = self._get(path, params)
        return self._page(body, response, default_page=to_int((params or {}).get("page")) or 1)

    def iter_pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[Page]:
        """Yield every page of a list, following ``$next`` until Sage ends it with ``$next: null``.

        ``$next`` already carries the whole query string, so ``params`` are sent with the first
        request only. Nothing but a null ``$next`` ends a list (a server's ``$total`` may be too
        small). Any other stop raises :class:`IncompleteListing` after the pages before it were
        yielded: a page served again (Sage answers a page past the end with its last page, which
        is what a deletion during paging leads to), a ``$next`` that repeats the page or goes back,
        an empty page that is not the last. :class:`PageLimitExceeded` ends a list that goes on
        past what its ``$total`` allows, or past ``max_pages`` without one.
        """
        budget = PageBudget(self.max_pages, urlsplit(join_url(self.api_url, path)).path)
        target: str = path
        query: Mapping[str, Any] | None = params
        previous: int | None = None
        while True:
            body, response = self._get(target, query)
            page = self._page(body, response, default_page=(previous or 0) + 1)
            where = urlsplit(response.url).path
            if previous is not None and page.page <= previous:
                raise IncompleteListing(
                    f"Sage served page {page.page} again after page {previous} (the pages shifted under a change)",
                    path=where,
                    request_id=page.request_id,
                )
            yield page
            if page.is_last:
                return
            if not page.items:
                raise IncompleteListing(f"Sage sent an empty page {page.page} that is not the last", path=where)
            budget.spend(page)
            try:
                next_url = join_url(self.api_url, page.next)  # type: ignore[arg-type] - not None here
            except ValueError as exc:
                raise InvalidResponse(str(exc), path=where) from None
            if _canonical(next_url) == _canonical(response.url):
                raise IncompleteListing(f"Sage's $next repeats the page just fetched ({page.page})", path=where)
            asked = to_int(dict(parse_qsl(urlsplit(next_url).query)).get("page"))
            if asked is not None and asked <= page.page:
                raise IncompleteListing(f"Sage's $next goes back to page {asked} after page {page.page}", path=where)
            previous = page.page
            target, query = next_url, None

    def iter_items(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of every page of a list."""
        for page in self.iter_pages(path, params):
            yield from page.items

    # -- internals -----------------------------------------------------------------------

    def _page(self, body: object, response: requests.Response, default_page: int) -> Page:
        request_id = _request_id(response)
        path = urlsplit(response.url).path
        if not isinstance(body, dict) or not isinstance(body.get("$items"), list):
            raise InvalidResponse("list response has no $items array", path=path, request_id=request_id)
        items = [item for item in body["$items"] if isinstance(item, dict)]
        if len(items) != len(body["$items"]):
            raise InvalidResponse("list response has non-object items", path=path, request_id=request_id)
        next_link = body.get("$next")
        if next_link is not None and not isinstance(next_link, str):
            raise InvalidResponse("list response has a non-string $next", path=path, request_id=request_id)
        # Accounting endpoints say $itemsPerPage; /businesses says $items_per_page.
        per_page = body.get("$itemsPerPage", body.get("$items_per_page"))
        return Page(
            items=items,
            page=to_int(body.get("$page")) or default_page,
            total=to_int(body.get("$total")),
            next=next_link or None,
            items_per_page=to_int(per_page),
            request_id=request_id,
            server_time=_server_time(response),
        )

    def _get(self, target: str, params: Mapping[str, Any] | None) -> tuple[Any, requests.Response]:
        """One logical GET: retries transient failures; a 401 refreshes, a 401 on a fresh token is retried."""
        url = join_url(self.api_url, target)
        path = urlsplit(url).path
        token = self.tokens.access_token()
        refreshed = False
        failures = throttles = fresh_401s = 0
        while True:
            try:
                response = self._send(url, params, token)
                if response.status_code == 401:
                    errors = _error_list(response)
                    if any(_SUBSCRIPTION_MESSAGE in str(e.get("$message", "")).lower() for e in errors):
                        raise SubscriptionInactive(str(SageAPIError(401, errors, _request_id(response), path)))
                    if refreshed:
                        token = self._after_fresh_401(path, response, errors, token, fresh_401s)
                        fresh_401s += 1
                        continue
                    log.info("Sage answered 401 on %s; refreshing the access token", path)
                    token = self.tokens.refresh(rejected_token=token)
                    refreshed = True
                    continue
                return self._parse(response, path), response
            except _Retryable as failure:
                # Throttling is Sage telling us to wait ("wait and repeat"), not a fault: it has
                # its own, larger budget so a busy hour slows a run down instead of failing it.
                if failure.status == 429:
                    throttles += 1
                else:
                    failures += 1
                if failures >= self.max_attempts or throttles >= self.max_throttled_attempts:
                    raise failure.final(
                        failure.reason,
                        status=failure.status,
                        path=path,
                        request_id=failure.request_id,
                        attempts=failures + throttles,
                    ) from None
                delay = self._delay(max(failures, throttles), failure.retry_after)
                if failure.status == 429 and self.limiter is not None:
                    throttled = getattr(self.limiter, "throttled", None)
                    if throttled is not None:
                        throttled(delay)
                self.retry_count += 1
                log.warning(
                    "Sage GET %s failed (%s, x_request_id=%s); retry %d/%d in %.1fs",
                    path,
                    failure.reason,
                    failure.request_id,
                    throttles if failure.status == 429 else failures,
                    (self.max_throttled_attempts if failure.status == 429 else self.max_attempts) - 1,
                    delay,
                )
                self._sleep(delay)

    def _after_fresh_401(
        self, path: str, response: requests.Response, errors: list[dict[str, Any]], token: str, seen: int
    ) -> str:
        """The token to retry with after a 401 on a token a refresh issued seconds ago.

        Such a 401 does not say the grant is dead (only ``invalid_grant`` from the token endpoint
        does): a Sage node may not know a fresh token yet. So wait and retry, first with the same
        token (no needless rotation), then through ``refresh(rejected_token=...)``, which takes a
        newer token another process stored or asks the token endpoint, the one authority on
        whether the grant lives. Bounded: after ``FRESH_401_RETRIES`` it is a transient failure,
        and the task's next try starts over.
        """
        if seen >= FRESH_401_RETRIES:
            raise TransientError(
                f"Sage refused freshly issued access tokens {seen + 1} times (the grant itself refreshes): "
                + str(SageAPIError(401, errors, _request_id(response), path)),
                status=401,
                path=path,
                attempts=seen + 2,
            )
        delay = self._delay(seen + 1, None)
        self.retry_count += 1
        log.warning("Sage answered 401 on %s with a fresh access token; retry %d in %.1fs", path, seen + 1, delay)
        self._sleep(delay)
        if seen + 1 < FRESH_401_RETRIES:
            return self.tokens.access_token()  # the same token unless it is about to expire
        return self.tokens.refresh(rejected_token=token)

    def _send(self, url: str, params: Mapping[str, Any] | None, token: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if self.business_id:
            # Every business-scoped call names its business. A client without one (GET /businesses
            # while connecting) sends no header at all: Sage documents it as optional, and an empty
            # value is not something the live API promises to accept.
            headers["X-Business"] = self.business_id
        if self.limiter is not None:
            self.limiter.acquire()
        self.request_count += 1
        started = time.monotonic()
        try:
            response = self.session.get(url, params=params, headers=headers, timeout=self.timeout)
        except _TRANSPORT_ERRORS as exc:
            elapsed = (time.monotonic() - started) * 1000
            log.debug("GET %s -> %s after %.0f ms", urlsplit(url).path, type(exc).__name__, elapsed)
            # A body shorter than its Content-Length (or a broken chunk) is a truncated response.
            truncated = isinstance(exc, _BODY_ERRORS)
            raise _Retryable(
                f"truncated response body ({type(exc).__name__})" if truncated else type(exc).__name__,
                InvalidResponse if truncated else TransientError,
            ) from None
        elapsed = (time.monotonic() - started) * 1000
        shown = urlsplit(response.url)
        log.debug(
            "GET %s%s -> %s in %.0f ms (x_request_id=%s)",
            shown.path,
            f"?{shown.query}" if shown.query else "",
            response.status_code,
            elapsed,
            _request_id(response),
        )
        return response

    def _parse(self, response: requests.Response, path: str) -> Any:
        status = response.status_code
        request_id = _request_id(response)
        if status in RETRY_STATUSES:
            raise _Retryable(
                f"HTTP {status}",
                RateLimited if status == 429 else TransientError,
                status=status,
                request_id=request_id,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 400:
            raise SageAPIError(status, _error_list(response), request_id, path)
        if self.check_business:
            answered_for = response.headers.get("X-Business")
            if answered_for and answered_for.strip().lower() != self.business_id.lower():
                raise BusinessMismatch(self.business_id, answered_for.strip(), path)
        try:
            return response.json()
        except ValueError:
            # A body cut short by a proxy or a dropped connection parses as broken JSON.
            raise _Retryable("malformed or truncated JSON body", InvalidResponse, status, request_id) from None

    def _delay(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        ceiling = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
