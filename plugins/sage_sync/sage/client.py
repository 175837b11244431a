"""A small, defensive HTTP client for Sage Accounting v3.1 (read-only: GET only).

It knows Sage's contract and nothing about the warehouse: ``X-Business`` on every call, the
list envelope and its ``$next`` links, the JSON error array, which failures are worth a retry,
and the token refresh a 401 deserves. The retry loop is written out rather than delegated
to a retry library because its branches differ in kind (a 401 costs a refresh, a 429 may name
its own delay) and that reads more plainly as code than as a policy object.

About 460 lines, one room on purpose: the session, paging, the retry loop and the error mapping
are one HTTP contract; split, each part would need the others to be read.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests

from sage_sync.core.errors import (
    BusinessMismatch,
    InvalidResponse,
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

    @property
    def is_last(self) -> bool:
        """No page follows: ``$next`` is null, the page is empty, or it reaches ``$total``."""
        if self.next is None or not self.items:
            return True
        return bool(self.total is not None and self.items_per_page and self.page * self.items_per_page >= self.total)


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
        """Yield every page of a list, following ``$next`` until Sage says there is no more.

        ``$next`` already carries the whole query string, so ``params`` are sent with the first
        request only. Sage answers a page past the end with the last page again instead of an
        empty one, so paging also stops when ``$next`` points at the page just fetched, when
        the page number fails to advance (that page is not yielded twice), when
        ``page * items_per_page`` reaches ``$total``, or on an empty page.
        """
        target: str = path
        query: Mapping[str, Any] | None = params
        previous: int | None = None
        while True:
            body, response = self._get(target, query)
            page = self._page(body, response, default_page=(previous or 0) + 1)
            if previous is not None and page.page <= previous:
                log.warning(
                    "Sage returned page %s after page %s for %s; treating it as the end",
                    page.page,
                    previous,
                    urlsplit(path).path,
                )
                return
            yield page
            if page.next is None or not page.items:
                return
            try:
                next_url = join_url(self.api_url, page.next)
            except ValueError as exc:
                raise InvalidResponse(str(exc), path=urlsplit(path).path) from None
            if _canonical(next_url) == _canonical(response.url):
                log.warning("Sage's $next repeats the page just fetched (%s); stopping", page.page)
                return
            if page.total is not None and page.items_per_page and page.page * page.items_per_page >= page.total:
                return
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
