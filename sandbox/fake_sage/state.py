"""Mutable in-memory state of the fake Sage server: clock, record stores, OAuth grants, faults, log.

Why one module: the HTTP layer (``app.py``) stays a thin translation of Sage's wire contract and the
data shapes (``seed.py``) stay free of HTTP; everything that changes at run time lives here, so
``FakeSage.reset`` is a single call and tests can start from a known state.

Memory/speed design (benchmarks want ~1,000,000 purchase invoices in one business):
a :class:`StreamStore` keeps only four compact ``array`` columns per record (created, updated, document
day, deleted) and derives record ids from the record's position with a keyed 64-bit bijection
(:class:`IdCodec`), so no id table is needed. Record bodies of seeded data are generated on demand from
the seed; only records edited through the admin API are kept as dicts. List queries are computed once
per (filters, sort, data version) and cached, so paging through them is O(page size) per page.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import secrets
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Protocol

Record = dict[str, Any]

MASK64 = (1 << 64) - 1
REFRESH_TOKEN_TTL = 2_678_400  # 31 days, Sage's documented refresh_token_expires_in
AUTH_CODE_TTL = 60  # Sage: the code is single use and expires after 60 seconds
# "drop" closes the connection before the request is handled (Sage never saw it); "lose" handles
# it (a token endpoint rotates the refresh token) and then closes the connection before the answer.
# "401" refuses a valid access token once, as a Sage node that has not yet seen a fresh token might.
FAULT_KINDS = (
    "401",
    "429",
    "500",
    "503",
    "slow",
    "hold",
    "drop",
    "lose",
    "truncate",
    "short_total",
    "next_back",
    "endless",
)
# Faults that answer a list request with a well-formed but lying envelope (a misbehaving server):
# short_total: `$total` one page smaller than the truth; next_back: `$next` points one page back;
# endless: `page` is ignored (page 1 every time), `$total` and `$page` are left out and `$next`
# always names the page after the one asked for.
ENVELOPE_FAULTS = ("short_total", "next_back", "endless")

# Streams served as lists under /v3.1 and the ones that carry a document `date` and `deleted_since`.
STREAMS = (
    "ledger_accounts",
    "contacts",
    "tax_rates",
    "purchase_invoices",
    "purchase_credit_notes",
    "purchase_quick_entries",
    "other_payments",
)
SPEND_STREAMS = ("purchase_invoices", "purchase_credit_notes", "purchase_quick_entries", "other_payments")
VOIDABLE_STREAMS = ("purchase_invoices", "purchase_credit_notes", "purchase_quick_entries")


# --------------------------------------------------------------------------------------------- errors


class SageError(Exception):
    """An API error; rendered as Sage's JSON error array ``[{"$severity", "$dataCode", ...}]``."""

    def __init__(self, status: int, data_code: str, message: str, source: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.data_code = data_code
        self.message = message
        self.source = source

    def body(self) -> list[dict[str, str]]:
        """The JSON array Sage sends for errors."""
        return [{"$severity": "error", "$dataCode": self.data_code, "$message": self.message, "$source": self.source}]


class OAuthError(Exception):
    """A token-endpoint error; rendered OAuth-style as ``{"error", "error_description"}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


# ---------------------------------------------------------------------------------------------- time


def iso(ts: int) -> str:
    """Epoch seconds -> Sage's timestamp form ``2024-05-01T10:11:12Z``."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat() + "Z"  # faster than strftime


def parse_instant(text: str) -> int:
    """Parse Sage's ``updated_or_created_since``/``deleted_since`` value (date or datetime) to epoch.

    A bare date means midnight UTC. A ``+`` in an offset that arrived form-decoded as a space is
    restored, because clients often forget to percent-encode it.
    """
    text = text.strip().replace(" ", "+")
    if len(text) == 10:
        return int(datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).timestamp())
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def day_number(text: str | None) -> int:
    """A ``YYYY-MM-DD`` document date as a proleptic ordinal (0 = no date), for compact storage."""
    return date.fromisoformat(text).toordinal() if text else 0


def day_text(day: int) -> str:
    """Inverse of :func:`day_number`."""
    return date.fromordinal(day).isoformat()


class Clock:
    """The fake "now". Fixed at start for determinism; moved only by the admin API.

    ``run(True)`` lets it follow the wall clock from its current value (tokens that really expire
    while several processes sync: the token chaos test); ``run(False)`` freezes it again.
    """

    def __init__(self, start: int) -> None:
        self._now = start
        self._running_since: float | None = None

    def now(self) -> int:
        """Current fake time, epoch seconds."""
        if self._running_since is not None:
            return self._now + int(time.time() - self._running_since)
        return self._now

    def advance(self, seconds: float) -> int:
        """Move forward (or back, if negative) and return the new time."""
        self._now += round(seconds)
        return self.now()

    def set(self, when: str) -> int:
        """Jump to an ISO instant."""
        self._now = parse_instant(when)
        if self._running_since is not None:
            self._running_since = time.time()
        return self._now

    def run(self, running: bool) -> int:
        """Follow the wall clock (True) or stand still (False) from the current fake time."""
        self._now = self.now()
        self._running_since = time.time() if running else None
        return self._now


# ------------------------------------------------------------------------------------------- records


class IdCodec:
    """Keyed bijection between a record's position and a 32-hex, Sage-looking id.

    Why: with ids computed from the position, a million-record stream needs no id table, and a
    ``GET /<stream>/{id}`` is an O(1) decode instead of a dict lookup over every id.
    """

    def __init__(self, *salt: object) -> None:
        digest = hashlib.blake2b("/".join(map(str, salt)).encode(), digest_size=32).digest()
        self._key = digest[:8]
        self._k1 = int.from_bytes(digest[8:16], "big")
        self._k2 = int.from_bytes(digest[16:24], "big")
        self._mul = int.from_bytes(digest[24:32], "big") | 1
        self._inv = pow(self._mul, -1, 1 << 64)

    def _tag(self, low: int) -> str:
        """Keyed check half, so ids look uniformly random and foreign ids are rejected."""
        return hashlib.blake2b(low.to_bytes(8, "big"), key=self._key, digest_size=8).hexdigest()

    def encode(self, index: int) -> str:
        """Position -> id."""
        low = (((index ^ self._k1) * self._mul) & MASK64) ^ self._k2
        return f"{self._tag(low)}{low:016x}"

    def decode(self, record_id: str) -> int | None:
        """Id -> position, or None if the id was not made by this codec."""
        if len(record_id) != 32:
            return None
        try:
            low = int(record_id[16:], 16)
        except ValueError:
            return None
        if record_id[:16] != self._tag(low):
            return None
        return (((low ^ self._k2) * self._inv) & MASK64) ^ self._k1


@dataclass(frozen=True)
class Query:
    """A list request reduced to what selects and orders records (hashable, used as a cache key)."""

    deleted_since: int | None = None
    updated_since: int | None = None
    from_day: int | None = None
    to_day: int | None = None
    equals: tuple[tuple[str, str], ...] = ()
    sort: str | None = None
    descending: bool = False


def _link_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


# Equality filters Sage offers on list endpoints, as getters over a full record.
FILTER_GETTERS: dict[str, Callable[[Record], Any]] = {
    "contact_id": lambda r: _link_id(r.get("contact")),
    "status_id": lambda r: _link_id(r.get("status")),
    "transaction_type_id": lambda r: _link_id(r.get("transaction_type")),
    "bank_account_id": lambda r: _link_id(r.get("bank_account")),
    "ledger_account_type_id": lambda r: _link_id(r.get("ledger_account_type")),
    "contact_type_id": lambda r: {_link_id(t) for t in r.get("contact_types") or []},
}


class StreamStore:
    """One business's records of one stream, in creation order (the default list order).

    Columns are kept as arrays of epoch seconds / day ordinals; ``deleted`` is 0 for live records.
    ``kind`` is a small per-record tag the seed generator uses (e.g. draft/void) so lazily generated
    bodies agree with the timestamps chosen for them.
    """

    CACHE_SIZE = 8

    def __init__(self, stream: str, codec: IdCodec | None) -> None:
        self.stream = stream
        self.codec = codec
        self.created = array("q")
        self.updated = array("q")
        self.day = array("l")
        self.deleted = array("q")
        self.kind = array("b")
        self.overrides: dict[int, Record] = {}
        self.body: Callable[[int], Record] | None = None
        self._named: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self.version = 0
        self._cache: OrderedDict[Query, array] = OrderedDict()

    def __len__(self) -> int:
        return len(self.created)

    # identity -----------------------------------------------------------------------------------
    def id_of(self, index: int) -> str:
        """The id of the record at ``index``."""
        name = self._names.get(index)
        if name is not None:
            return name
        assert self.codec is not None
        return self.codec.encode(index)

    def index_of(self, record_id: str) -> int | None:
        """The position of ``record_id``, or None if unknown."""
        if record_id in self._named:
            return self._named[record_id]
        index = self.codec.decode(record_id) if self.codec else None
        if index is None or index >= len(self) or index in self._names:
            return None
        return index

    # reading ------------------------------------------------------------------------------------
    def get(self, index: int) -> Record:
        """A full record (a private copy the caller may change)."""
        if index in self.overrides:
            return copy.deepcopy(self.overrides[index])
        assert self.body is not None, f"{self.stream}: no body for generated record {index}"
        return self.body(index)

    def is_deleted(self, index: int) -> bool:
        """True once the record has a ``deleted_at``."""
        return self.deleted[index] != 0

    # writing ------------------------------------------------------------------------------------
    def append_meta(self, created: int, updated: int, day: int, deleted: int, kind: int = 0) -> int:
        """Reserve the next position for a lazily generated record; returns its index."""
        self.created.append(created)
        self.updated.append(updated)
        self.day.append(day)
        self.deleted.append(deleted)
        self.kind.append(kind)
        self._touch()
        return len(self) - 1

    def add(self, record: Record) -> int:
        """Append a fully built record (its ``id`` may be a codec id or a mnemonic like GB_ZERO)."""
        index = len(self)
        self.append_meta(0, 0, 0, 0)
        record_id = record["id"]
        if self.codec is None or self.codec.decode(record_id) != index:
            self._named[record_id] = index
            self._names[index] = record_id
        self.put(index, record)
        return index

    def put(self, index: int, record: Record) -> None:
        """Replace the record at ``index``; its timestamps become the index columns."""
        self.overrides[index] = record
        self.created[index] = parse_instant(record["created_at"]) if record.get("created_at") else 0
        self.updated[index] = parse_instant(record["updated_at"]) if record.get("updated_at") else 0
        self.day[index] = day_number(record.get("date"))
        self.deleted[index] = parse_instant(record["deleted_at"]) if record.get("deleted_at") else 0
        self._touch()

    def _touch(self) -> None:
        self.version += 1
        self._cache.clear()

    # querying -----------------------------------------------------------------------------------
    def select(self, query: Query) -> array:
        """Positions matching ``query`` in the requested order (cached until the data changes)."""
        hit = self._cache.get(query)
        if hit is not None:
            self._cache.move_to_end(query)
            return hit
        if query.updated_since is not None and query.sort == "updated_at" and not query.descending:
            # A change-feed cursor (every request a new `updated_or_created_since`, sorted by it), as
            # an indexed server answers it: the cached list without the cursor, cut where updated_at
            # reaches it (sorting is stable, so the order is the same as filtering first). Not
            # cached: each cursor is asked for once. Without this, a 1M-record company costs the
            # fake a full filter and sort per page, and the benchmark measures the fake.
            base = self.select(replace(query, updated_since=None))
            return base[bisect_left(base, query.updated_since, key=self.updated.__getitem__) :]
        result = array("q", self._compute(query))
        self._cache[query] = result
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def _compute(self, query: Query) -> list[int]:
        deleted = self.deleted
        if query.deleted_since is not None:
            since = query.deleted_since
            idx = [i for i in range(len(self)) if deleted[i] > since]
        else:
            idx = [i for i in range(len(self)) if not deleted[i]]
        if query.updated_since is not None:
            updated, since = self.updated, query.updated_since
            idx = [i for i in idx if updated[i] >= since]
        if query.from_day is not None:
            days, low = self.day, query.from_day
            idx = [i for i in idx if days[i] >= low]
        if query.to_day is not None:
            days, high = self.day, query.to_day
            idx = [i for i in idx if days[i] <= high]
        for name, value in query.equals:
            getter = FILTER_GETTERS[name]
            if name == "contact_type_id":
                idx = [i for i in idx if value in getter(self.get(i))]
            else:
                idx = [i for i in idx if getter(self.get(i)) == value]
        if query.sort:
            idx = self._sorted(idx, query.sort, query.descending)
        return idx

    def _sorted(self, idx: list[int], attribute: str, descending: bool) -> list[int]:
        columns = {"created_at": self.created, "updated_at": self.updated, "date": self.day}
        column = columns.get(attribute)
        if column is not None:
            return sorted(idx, key=column.__getitem__, reverse=descending)
        values = {i: self.get(i).get(attribute) or "" for i in idx}
        return sorted(idx, key=values.__getitem__, reverse=descending)


# ------------------------------------------------------------------------------------------- world


@dataclass
class User:
    """A Sage user: the owner of OAuth grants and of access to businesses."""

    id: str
    login: str
    first_name: str
    last_name: str
    business_ids: list[str]


@dataclass
class Business:
    """One Sage business: its singleton resources and one store per list stream."""

    id: str
    key: str
    name: str
    owner_id: str
    base_currency: str
    business: Record
    financial_settings: Record
    stores: dict[str, StreamStore]
    context: Any = None  # seed-specific lookups (links, tax percentages) used to normalise records


@dataclass
class World:
    """Everything a seed produces."""

    users: list[User]
    businesses: dict[str, Business]


@dataclass(frozen=True)
class Config:
    """How the server was started; ``reset`` rebuilds the world from it."""

    seed: int = 42
    start: str = "2026-11-27T06:00:00Z"
    token_ttl: int = 300
    client_id: str = "demo-client"
    client_secret: str = "demo-secret"
    scale: float = 1.0
    volumes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # "instant": the authorise page consents at once (tests and scripts need no browser);
    # "screen": it is a page with a sign-in choice and Allow / Deny, as Sage's is (the demo).
    consent: str = "instant"


class Shapes(Protocol):
    """What the state needs from the seed module (injected to keep the modules acyclic)."""

    def build_world(self, seed: int, now: int, scale: float, volumes: Mapping[str, Mapping[str, int]]) -> World: ...

    def normalise(self, business: Business, stream: str, record: Record, index: int, now: int) -> Record: ...


# -------------------------------------------------------------------------------------------- OAuth


def _token(length: int = 1300) -> str:
    """An opaque random token about as long as Sage's JWTs (clients must not assume a short one)."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(length)).decode().rstrip("=")
    return raw[:length]


@dataclass
class Grant:
    """One user's consent to one client; killed by ``/revoke``."""

    id: str
    user_id: str
    client_id: str
    scope: str
    revoked: bool = False


@dataclass
class AuthCode:
    """A pending authorization code (single use, 60 s)."""

    client_id: str
    redirect_uri: str
    user_id: str
    scope: str
    challenge: str | None
    method: str | None
    expires: int


class Auth:
    """Sage's OAuth 2 authorization-code server: codes, rotating refresh tokens, access tokens."""

    def __init__(self, clock: Clock, client_id: str, client_secret: str, token_ttl: int) -> None:
        self.clock = clock
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.codes: dict[str, AuthCode] = {}
        self.grants: dict[str, Grant] = {}
        self.access: dict[str, tuple[str, int]] = {}  # token -> (grant id, expiry)
        self.refresh_tokens: dict[str, tuple[str, int]] = {}
        self.spent: dict[str, str] = {}  # rotated-away or revoked refresh token -> grant id (token_state)

    def issue_code(
        self, client_id: str, redirect_uri: str, user_id: str, scope: str, *, challenge: str | None, method: str | None
    ) -> str:
        """Record a consent and return the code to put on the redirect."""
        code = "GB/" + secrets.token_hex(24)
        self.codes[code] = AuthCode(
            client_id, redirect_uri, user_id, scope, challenge, method, self.clock.now() + AUTH_CODE_TTL
        )
        return code

    def check_client(self, client_id: str | None, client_secret: str | None) -> None:
        """401 invalid_client unless the credentials are the configured app's."""
        if client_id != self.client_id or client_secret != self.client_secret:
            raise OAuthError(401, "invalid_client", "Client authentication failed")

    def exchange_code(self, form: Mapping[str, str]) -> dict[str, Any]:
        """``grant_type=authorization_code``."""
        code = self.codes.pop(form.get("code", ""), None)
        if code is None or code.expires <= self.clock.now():
            raise OAuthError(400, "invalid_grant", "The authorization code is invalid, expired or used")
        if code.client_id != form.get("client_id") or code.redirect_uri != form.get("redirect_uri"):
            raise OAuthError(400, "invalid_grant", "redirect_uri or client_id does not match the code")
        if code.challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier or _pkce(verifier, code.method) != code.challenge:
                raise OAuthError(400, "invalid_grant", "PKCE verification failed")
        grant = Grant(secrets.token_hex(16), code.user_id, code.client_id, code.scope)
        self.grants[grant.id] = grant
        return self._issue(grant)

    def refresh(self, form: Mapping[str, str]) -> dict[str, Any]:
        """``grant_type=refresh_token``: always rotates; the presented token dies."""
        token = form.get("refresh_token", "")
        entry = self.refresh_tokens.get(token)
        grant = self.grants.get(entry[0]) if entry else None
        if entry is None or grant is None or grant.revoked or entry[1] <= self.clock.now():
            raise OAuthError(400, "invalid_grant", "The refresh token is invalid, expired or revoked")
        if grant.client_id != form.get("client_id"):
            raise OAuthError(400, "invalid_grant", "The refresh token was issued to another client")
        del self.refresh_tokens[token]
        self.spent[token] = grant.id
        return self._issue(grant)

    def revoke(self, token: str) -> None:
        """Kill the grant behind a refresh token (unknown tokens are ignored, as RFC 7009 says)."""
        entry = self.refresh_tokens.get(token)
        if entry is not None:
            self._kill(entry[0])

    def revoke_user(self, user_id: str | None) -> int:
        """Admin: revoke every grant (of one user); returns how many."""
        ids = [g.id for g in self.grants.values() if not g.revoked and user_id in (None, g.user_id)]
        for grant_id in ids:
            self._kill(grant_id)
        return len(ids)

    def token_state(self, refresh_token: str = "", fingerprint: str = "") -> str:
        """Admin: what a refresh token is now, without spending it.

        ``live`` (it would refresh), ``spent`` (rotated away; its grant lives on in a newer token),
        ``revoked`` (its grant was revoked), ``expired`` or ``unknown``. ``fingerprint`` (the
        first 8 hex digits of its SHA-256, what the pipeline records) finds a token it never saw.
        """
        if fingerprint:
            known = (*self.refresh_tokens, *self.spent)
            refresh_token = next((t for t in known if hashlib.sha256(t.encode()).hexdigest()[:8] == fingerprint), "")
        entry = self.refresh_tokens.get(refresh_token)
        grant_id = entry[0] if entry else self.spent.get(refresh_token)
        grant = self.grants.get(grant_id) if grant_id else None
        if grant is None:
            return "unknown"
        if grant.revoked:
            return "revoked"
        if entry is None:
            return "spent"
        return "live" if entry[1] > self.clock.now() else "expired"

    def expire_access_tokens(self) -> None:
        """Admin: every access token is now expired (refresh tokens still work)."""
        now = self.clock.now()
        self.access = {t: (g, min(exp, now)) for t, (g, exp) in self.access.items()}

    def user_for(self, token: str | None) -> str:
        """The user id behind a bearer token, or a 401 SageError."""
        entry = self.access.get(token or "")
        grant = self.grants.get(entry[0]) if entry else None
        if entry is None or grant is None or grant.revoked:
            raise SageError(401, "AuthorizationFailure", "The access token is invalid.")
        if entry[1] <= self.clock.now():
            raise SageError(401, "AuthorizationFailure", "The access token has expired.")
        return grant.user_id

    def _kill(self, grant_id: str) -> None:
        self.grants[grant_id].revoked = True
        self.spent.update({t: e[0] for t, e in self.refresh_tokens.items() if e[0] == grant_id})  # for token_state
        self.refresh_tokens = {t: e for t, e in self.refresh_tokens.items() if e[0] != grant_id}
        self.access = {t: e for t, e in self.access.items() if e[0] != grant_id}

    def _issue(self, grant: Grant) -> dict[str, Any]:
        now = self.clock.now()
        access, refresh = _token(), _token()
        self.access[access] = (grant.id, now + self.token_ttl)
        self.refresh_tokens[refresh] = (grant.id, now + REFRESH_TOKEN_TTL)
        return {
            "access_token": access,
            "scope": grant.scope,
            "token_type": "bearer",
            "expires_in": self.token_ttl,
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TOKEN_TTL,
            "requested_by_id": grant.user_id,
        }


def _pkce(verifier: str, method: str | None) -> str:
    if (method or "plain").upper() == "S256":
        digest = hashlib.sha256(verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return verifier


# ------------------------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """A scheduled misbehaviour for the next ``count`` matching requests."""

    kind: str
    path: str | None = None
    count: int = 1
    retry_after: int | None = None
    delay_ms: int | None = None
    business: str | None = None  # only requests with this X-Business (None: any)

    def matches(self, path: str, business: str | None = None) -> bool:
        """``path`` None means any API path; otherwise a substring (so also a prefix) of the path.
        A fault for one business hits only that business's requests (Sage's paths do not name it)."""
        if self.business is not None and self.business != business:
            return False
        return path.startswith("/v3.1") if self.path is None else self.path in path


class Faults:
    """FIFO of faults; the first matching fault is consumed by a request.

    A "hold" fault keeps its request waiting until :meth:`release` (or its ``delay_ms``, a safety
    cap): a test can keep a run busy for exactly as long as it needs, not for a guessed delay."""

    def __init__(self) -> None:
        self.items: list[Fault] = []
        self.released = asyncio.Event()

    def release(self) -> None:
        """Let every held request go on; a hold scheduled later waits again."""
        self.released.set()
        self.released = asyncio.Event()

    def add(self, fault: Fault) -> None:
        """Schedule a fault."""
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}; expected one of {FAULT_KINDS}")
        if fault.count < 1:
            raise ValueError("count must be >= 1")
        self.items.append(fault)

    def take(self, path: str, business: str | None = None) -> Fault | None:
        """Consume one use of the first fault matching ``path`` (and the request's business)."""
        for fault in self.items:
            if fault.matches(path, business):
                fault.count -= 1
                if fault.count <= 0:
                    self.items.remove(fault)
                return fault
        return None


# --------------------------------------------------------------------------------------------- root


class FakeSage:
    """The whole server state plus the admin operations on records."""

    LOG_SIZE = 100_000

    def __init__(self, config: Config, shapes: Shapes) -> None:
        self.config = config
        self.shapes = shapes
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Rebuild data, clock, tokens, faults and log from the config (optionally a new seed)."""
        if seed is not None:
            self.config = Config(**{**self.config.__dict__, "seed": seed})
        cfg = self.config
        self.clock = Clock(parse_instant(cfg.start))
        self.auth = Auth(self.clock, cfg.client_id, cfg.client_secret, cfg.token_ttl)
        self.faults = Faults()
        # A misbehaving server (admin "misbehave"): an X-Business the user cannot reach is answered
        # with the user's lead business, and no response names the business it used. Real Sage is
        # not known to do this; the pipeline must not mix two businesses' books if it ever does.
        self.foreign_business_as_lead = False
        self.log: deque[dict[str, Any]] = deque(maxlen=self.LOG_SIZE)
        self.world = self.shapes.build_world(cfg.seed, self.clock.now(), cfg.scale, cfg.volumes)

    # lookups ------------------------------------------------------------------------------------
    @property
    def users(self) -> list[User]:
        """All users, default user first."""
        return self.world.users

    def user(self, key: str | None) -> User:
        """A user by id or login (None = the default, first user)."""
        if key is None:
            return self.world.users[0]
        for user in self.world.users:
            if key in (user.id, user.login):
                return user
        raise KeyError(key)

    def business(self, business_id: str) -> Business:
        """A business by id or 404."""
        try:
            return self.world.businesses[business_id]
        except KeyError:
            raise SageError(404, "RecordNotFound", "Business not found.") from None

    def business_for(self, user_id: str, header: str | None) -> Business:
        """Apply ``X-Business``: absent -> the user's lead business; foreign/unknown -> 403."""
        user = self.user(user_id)
        if not header:
            return self.world.businesses[user.business_ids[0]]
        if header not in user.business_ids:
            if self.foreign_business_as_lead and user.business_ids:
                return self.world.businesses[user.business_ids[0]]
            raise SageError(403, "AccessDenied", "You do not have access to this business.", "X-Business")
        return self.world.businesses[header]

    def remove_access(self, user_key: str, business_id: str) -> list[str]:
        """Admin: the user can no longer reach the business (removed from it in Sage); their ids left."""
        user = self.user(user_key)
        if business_id in user.business_ids:
            user.business_ids.remove(business_id)
        return list(user.business_ids)

    def store(self, business_id: str, stream: str) -> tuple[Business, StreamStore]:
        """A business's store of one stream, or a 404."""
        business = self.business(business_id)
        if stream not in business.stores:
            raise SageError(404, "RecordNotFound", f"Unknown stream {stream!r}.")
        return business, business.stores[stream]

    def _live_index(self, store: StreamStore, record_id: str) -> int:
        index = store.index_of(record_id)
        if index is None or store.is_deleted(index):
            raise SageError(404, "RecordNotFound", "Record not found.")
        return index

    # admin mutations ----------------------------------------------------------------------------
    def create(self, business_id: str, stream: str, record: Record) -> Record:
        """Add a record; id and timestamps default to server-assigned values."""
        business, store = self.store(business_id, stream)
        index = len(store)
        now = iso(self.clock.now())
        draft = {"created_at": now, "updated_at": now, "deleted_at": None, **record}
        draft.setdefault("id", store.id_of(index) if store.codec else None)
        if not draft["id"]:
            raise SageError(422, "RecordInvalid", "This stream needs an explicit id.", "id")
        if store.index_of(draft["id"]) is not None:
            raise SageError(422, "RecordInvalid", "Duplicate id.", "id")
        built = self.shapes.normalise(business, stream, draft, index, self.clock.now())
        store.add(built)
        return store.get(index)

    def update(self, business_id: str, stream: str, record_id: str, changes: Record) -> Record:
        """Merge ``changes`` into a live record, recompute derived amounts, bump ``updated_at``."""
        business, store = self.store(business_id, stream)
        index = self._live_index(store, record_id)
        current = store.get(index)
        merged = {**current, **changes, "id": current["id"], "updated_at": iso(self.clock.now())}
        if "updated_at" in changes:
            merged["updated_at"] = changes["updated_at"]
        for key in _derived_keys(changes):
            merged.pop(key, None)
        store.put(index, self.shapes.normalise(business, stream, merged, index, self.clock.now()))
        return store.get(index)

    def delete(self, business_id: str, stream: str, record_id: str) -> Record:
        """Soft-delete: from now on only ``deleted_since`` lists it."""
        _, store = self.store(business_id, stream)
        index = self._live_index(store, record_id)
        record = store.get(index)
        record["deleted_at"] = iso(self.clock.now())
        store.put(index, record)
        return record

    def void(self, business_id: str, stream: str, record_id: str, reason: str) -> Record:
        """Void a purchase document (status VOID with void_reason, nothing outstanding)."""
        if stream not in VOIDABLE_STREAMS:
            raise SageError(422, "RecordInvalid", f"{stream} cannot be voided.")
        return self.update(
            business_id,
            stream,
            record_id,
            {
                "status": {"id": "VOID"},
                "void_reason": reason,
            },
        )

    def records(self, business_id: str, stream: str, include_deleted: bool = False) -> list[Record]:
        """Every record of a stream as ``attributes=all`` would show it."""
        _, store = self.store(business_id, stream)
        return [store.get(i) for i in range(len(store)) if include_deleted or not store.is_deleted(i)]


LINE_KEYS = ("invoice_lines", "credit_note_lines", "payment_lines")
HEADER_AMOUNTS = (
    "net_amount",
    "tax_amount",
    "total_amount",
    "base_currency_net_amount",
    "base_currency_tax_amount",
    "base_currency_total_amount",
)
SETTLEMENT = ("outstanding_amount", "total_paid", "base_currency_outstanding_amount")


def _derived_keys(changes: Mapping[str, Any]) -> list[str]:
    """Fields to recompute after an update because something they derive from changed."""
    keys: list[str] = []
    if any(k in changes for k in (*LINE_KEYS, "exchange_rate", "tax_rate", "tax_rate_id")) or (
        "net_amount" in changes and not any(k in changes for k in LINE_KEYS)
    ):
        keys += [k for k in HEADER_AMOUNTS if k not in changes]
    if keys or "status" in changes or "status_id" in changes:
        keys += [k for k in SETTLEMENT if k not in changes]
    if "contact" in changes or "contact_id" in changes:
        keys += [k for k in ("contact_name", "contact_reference") if k not in changes]
    if "void_reason" not in changes and ("status" in changes or "status_id" in changes):
        keys.append("void_reason")
    return keys
