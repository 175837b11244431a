"""The raw loader: Sage records into the append-only ``sage_raw`` tables, new versions only.

Contract (docs/DESIGN.md): a row is a version of a record; a record whose content hash equals its
latest version's (latest = greatest ``_extracted_at``) adds nothing, so re-running a load is a no-op
and an A -> B -> A history keeps three versions.

Why it is shaped like this:

* **The caller's transaction.** A page's rows, the run's counters and the watermark commit together
  (see ``watermarks``), so a crash loses at most one page and never leaves a watermark ahead of data.
  With an autocommit connection the load runs in a transaction of its own instead.
* **Validate in Python, never fail the page for one record.** Anything PostgreSQL would reject is
  caught before it reaches the server (an error there would abort the whole transaction) and goes
  to ``sage_raw.quarantine`` with a precise reason and the record's JSON text. So does a record
  whose typed fields (those dbt casts, declared in ``sage.schema``) break their type: an impossible
  date failed every company's dbt build, and a ``"NaN"`` amount turned every sum it met into NaN.
  A NUL character (``\\u0000``) in any string is quarantined, not stripped: jsonb cannot store it, and
  silently changing a payload would make its hash lie about what Sage sent.
* **Speed: one lookup + one COPY straight into the raw table, no per-row round trip.** One query
  fetches the latest stored hash of every id in the page; then one binary ``COPY`` writes only the
  records whose hash differs. The canonical JSON text is made once and is both the hash input and the
  payload, and it is made inside the COPY loop, so Python serialises while the server parses jsonb.
  Measured on 10k invoice-like records (2 KB each): about 0.85-1.0x the rate of a bare COPY of the same
  payloads, where "COPY into a temp table + one INSERT ... SELECT new versions" reached about 0.6x
  (the payload crosses the server twice). Hashing with ``hashlib`` took half the time of SQL
  ``sha256()`` and, unlike it, lets unchanged records never leave the client.
* **orjson for the canonical text** when it provably gives the same bytes (no float, no subclass,
  read back equal; ``_canonical_bytes``), the standard encoder otherwise: the loader about 2x faster
  on Sage-shaped pages (bench/RESULTS.md, issue #12), stored hashes unchanged.
* **Concurrent loads** of the same company and stream (a daily run overlapping a backfill) are
  serialised by a transaction advisory lock taken before the lookup, so the lookup-then-COPY can't let
  both add the same version. (Under READ COMMITTED, the default: the lookup is a later statement than
  the lock, so it sees what the other load committed.) The lock and the lookup are sent in one
  pipeline: still two statements and two snapshots, but one round trip, which is what a page pays
  for most on a busy server (bench/RESULTS.md: 0.795 -> 0.813 of bare COPY in one A/B run).
* **Tried and not kept** (bench/RESULTS.md): one ``INSERT ... SELECT FROM unnest(...)`` with the
  dedupe on the server (a ``LEFT JOIN LATERAL`` on the latest version), which saves the COPY's round
  trips but serialises every record before sending: 0.818 against 0.850 for this shape, same run.

Long on purpose: most of it is the per-record validation that keeps one bad record from failing
a page; it is one contract (what a raw table accepts) and reads best in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from sage_sync.sage.schema import invalid_field, json_type
from sage_sync.sage.streams import STREAMS as _REGISTRY

# The raw tables this loader writes: one per stream of the registry (migrations create them).
STREAMS = frozenset(_REGISTRY)
DETECTION_METHODS = frozenset({"deleted_since", "reconciliation"})

# The content-hash serialisation of docs/DESIGN.md. allow_nan=False changes no valid output; it only
# turns NaN/Infinity (which jsonb rejects) into an error we can quarantine.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
# json always escapes control characters, so a NUL in a string appears as the six characters \u0000,
# preceded by an even number of backslashes (an odd number means an escaped backslash + "u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_NUL_ESCAPE_BYTES = re.compile(_NUL_ESCAPE.pattern.encode())
_REASON_VALUE_CHARS = 80
# orjson writes the same bytes as _CANONICAL for dicts, lists, strings, ints, bools and null (keys in
# code point order = UTF-8 byte order; the same escapes: tests/warehouse/test_canonical_json.py), about
# 8x faster. Not for floats: it formats them its own way (1e-05 -> 0.00001) and writes NaN/Infinity as
# null. Its output is used only after _orjson_safe() proved there was no float; otherwise _CANONICAL.
# Subclasses of dict/list/str/int go to the standard encoder too: it calls their own methods (items(),
# __str__ of an enum...), orjson reads their storage, so they could differ.
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS
# Deleting digits and "-" from orjson output leaves every float token (digits with "." or "e") as a
# "." or "e" right after ":", "," or "["; mapping those to "," and "e" makes it one substring test.
# A string that looks the same ("10:30.5") only costs the slow path.
_FLOAT_TABLE = bytes.maketrans(b":[.E", b",,ee")
_NUMBER_CHARS = b"0123456789-"

# Namespace (first int) of the per company+stream transaction advisory lock.
_LOAD_LOCK_NAMESPACE = 0x5A6E_0003


@dataclass(frozen=True)
class LoadResult:
    """What one call saw and did.

    ``rows_seen`` counts every record given (quarantined ones included); ``record_ids`` lists the valid
    records' distinct ids in first-seen order (for checking a pass covered Sage's ``$total``);
    ``max_updated_at`` is the greatest valid ``updated_at`` seen, changed or not (the next watermark).
    """

    rows_seen: int
    versions_added: int
    quarantined: int
    max_updated_at: datetime | None
    record_ids: list[str] = field(default_factory=list)


class _Invalid(Exception):
    """A record that cannot be loaded; the message is the quarantine reason."""


def content_hash(payload: Any) -> str:
    """sha256 hex of the canonical JSON of ``payload`` (the warehouse's ``content_hash``)."""
    return hashlib.sha256(_canonical_bytes(payload)).hexdigest()


def load_records(
    conn: psycopg.Connection,
    stream: str,
    company_id: str,
    sync_run_id: str,
    records: Iterable[Any],
    *,
    record_id_override: str | None = None,
) -> LoadResult:
    """Load one page of ``records`` into ``sage_raw.<stream>``, adding only changed versions.

    Runs in the caller's transaction (the caller commits). Invalid records are quarantined, never
    raised. ``record_id_override`` is the record id of singletons (``financial_settings`` uses the
    company id); then ``id`` is not required and the batch collapses to its last record.
    A record id repeated in the batch keeps its last occurrence.
    """
    table = _raw_table(stream)
    # Pass 1, cheap: identity checks and in-batch collapse (re-assigning a key keeps its place in
    # the dict but takes the new value, so the last occurrence wins).
    candidates: dict[str, tuple[dict[str, Any], datetime | None]] = {}
    rejected: list[tuple[str | None, str, str]] = []
    rows_seen = 0
    for record in records:
        rows_seen += 1
        try:
            record_id, updated_at = _identity(record, record_id_override)
        except _Invalid as exc:
            rejected.append((_quarantine_id(record, record_id_override), _raw_text(record), str(exc)))
            continue
        # The fields dbt casts (sage.schema): a value its cast would choke on, or a NaN it would
        # sum, is refused here, with the field named, rather than stored for dbt to meet.
        if (reason := invalid_field(stream, record)) is not None:
            rejected.append((_quarantine_id(record, record_id_override), _raw_text(record), reason))
            candidates.pop(record_id, None)  # this record's last occurrence is the bad one
            continue
        candidates[record_id] = (record, updated_at)

    versions_added = 0
    if candidates or rejected:
        with conn.transaction() if conn.autocommit else nullcontext():
            if candidates:
                versions_added = _copy_new_versions(
                    conn,
                    stream=stream,
                    table=table,
                    company_id=company_id,
                    sync_run_id=sync_run_id,
                    candidates=candidates,
                    rejected=rejected,
                )
            if rejected:
                _quarantine(conn, stream, company_id, sync_run_id, rejected)
    max_updated_at = max((ts for _, ts in candidates.values() if ts is not None), default=None)
    return LoadResult(rows_seen, versions_added, len(rejected), max_updated_at, list(candidates))


def _copy_new_versions(
    conn: psycopg.Connection,
    *,
    stream: str,
    table: sql.Identifier,
    company_id: str,
    sync_run_id: str,
    candidates: dict[str, tuple[dict[str, Any], datetime | None]],
    rejected: list[tuple[str | None, str, str]],
) -> int:
    """COPY the candidates whose content differs from their latest stored version.

    Removes from ``candidates`` (and appends to ``rejected``) records that fail serialisation.
    """
    # Held until the caller commits: another load of this company+stream waits here, then its lookup
    # (a later statement, so a fresh snapshot under READ COMMITTED) sees what this one added. The two
    # statements go in one pipeline: one round trip, still two snapshots.
    # Latest stored version of each candidate: its hash and, only when this same transaction already
    # stored it (a record met on two pages of one transaction), the bumped time for the next version
    # so that "latest = greatest _extracted_at" stays unambiguous. Otherwise a version's
    # _extracted_at is the transaction timestamp.
    with conn.pipeline():
        lock = conn.execute(
            "select now() from pg_advisory_xact_lock(%s, hashtext(%s))",
            (_LOAD_LOCK_NAMESPACE, f"{company_id}/{stream}"),
        )
        lookup = conn.execute(
            sql.SQL(
                "select distinct on (record_id) record_id, content_hash, "
                "  case when _extracted_at >= now() then _extracted_at + interval '1 microsecond' end "
                "from {} where company_id = %s and record_id = any(%s) "
                "order by record_id, _extracted_at desc"
            ).format(table),
            (company_id, list(candidates)),
        )
    row = lock.fetchone()
    assert row is not None
    now: datetime = row[0]
    # fetchall: iterating the cursor row by row costs more than the query
    latest: dict[str, tuple[str, datetime | None]] = {
        record_id: (digest, bumped) for record_id, digest, bumped in lookup.fetchall()
    }
    invalid: list[str] = []
    versions_added = 0
    sha256 = hashlib.sha256
    copy_sql = sql.SQL(
        "copy {} (company_id, record_id, source_updated_at, payload, content_hash, _extracted_at, "
        "_sync_run_id) from stdin (format binary)"
    ).format(table)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        # Binary COPY skips text-COPY escaping on both sides (about 10% faster measured). The payload
        # goes as the canonical UTF-8 bytes already hashed: Jsonb with an identity ``dumps`` sends
        # them as they are.
        copy.set_types(["text", "text", "timestamptz", "jsonb", "text", "timestamptz", "text"])
        # Serialising and hashing inside the COPY loop lets Python work while the server parses jsonb.
        for record_id, (record, updated_at) in candidates.items():
            try:
                data = _canonical_bytes(record)
                digest = sha256(data).hexdigest()
            except _Invalid as exc:
                invalid.append(record_id)
                rejected.append((_quarantine_id(record, record_id), _raw_text(record), str(exc)))
                continue
            stored = latest.get(record_id)
            if stored is None:
                extracted_at = now
            elif stored[0] == digest:
                continue
            else:
                extracted_at = stored[1] or now
            copy.write_row((company_id, record_id, updated_at, Jsonb(data, _as_is), digest, extracted_at, sync_run_id))
            versions_added += 1
    for record_id in invalid:
        del candidates[record_id]
    return versions_added


def record_deletions(
    conn: psycopg.Connection,
    stream: str,
    company_id: str,
    sync_run_id: str,
    records: Iterable[Any],
    method: str = "deleted_since",
) -> int:
    """Record deleted records in ``sage_raw.deletions``; returns how many were not recorded before.

    A record needs a string ``id``; ``deleted_at``, if present, must be an ISO 8601 timestamp with an
    offset. Others are quarantined. Runs in the caller's transaction.
    """
    _raw_table(stream)
    if method not in DETECTION_METHODS:
        raise ValueError(f"unknown detection method {method!r}; expected one of {sorted(DETECTION_METHODS)}")
    ids: list[str] = []
    deleted_ats: list[datetime | None] = []
    payloads: list[str] = []
    rejected: list[tuple[str | None, str, str]] = []
    for record in records:
        try:
            record_id, _ = _identity(record, None)
            deleted_at = _timestamp(record, "deleted_at")
            text = _canonical_text(record)
            _utf8(text)
        except _Invalid as exc:
            rejected.append((_quarantine_id(record, None), _raw_text(record), str(exc)))
            continue
        ids.append(record_id)
        deleted_ats.append(deleted_at)
        payloads.append(text)
    if rejected:
        _quarantine(conn, stream, company_id, sync_run_id, rejected)
    if not ids:
        return 0
    cur = conn.execute(
        "insert into sage_raw.deletions "
        "(company_id, stream, record_id, source_deleted_at, detection_method, payload, _sync_run_id) "
        "select %(company)s, %(stream)s, d.record_id, d.deleted_at, %(method)s, d.payload::jsonb, %(run)s "
        "from unnest(%(ids)s::text[], %(deleted_ats)s::timestamptz[], %(payloads)s::text[]) "
        "  as d (record_id, deleted_at, payload) "
        # Also absorbs an id repeated within this batch: the second one conflicts with the first.
        "on conflict (company_id, stream, record_id, detection_method) do nothing",
        {
            "company": company_id,
            "stream": stream,
            "method": method,
            "run": sync_run_id,
            "ids": ids,
            "deleted_ats": deleted_ats,
            "payloads": payloads,
        },
    )
    return cur.rowcount


def _quarantine(
    conn: psycopg.Connection,
    stream: str,
    company_id: str,
    sync_run_id: str,
    rejected: list[tuple[str | None, str, str]],
) -> None:
    conn.execute(
        "insert into sage_raw.quarantine (company_id, stream, record_id, raw_payload, reason, _sync_run_id) "
        "select %(company)s, %(stream)s, q.record_id, q.raw_payload, q.reason, %(run)s "
        "from unnest(%(ids)s::text[], %(raws)s::text[], %(reasons)s::text[]) "
        "  as q (record_id, raw_payload, reason)",
        {
            "company": company_id,
            "stream": stream,
            "run": sync_run_id,
            "ids": [r[0] for r in rejected],
            "raws": [r[1] for r in rejected],
            "reasons": [r[2] for r in rejected],
        },
    )


def _raw_table(stream: str) -> sql.Identifier:
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; expected one of {sorted(STREAMS)}")
    return sql.Identifier("sage_raw", stream)


def _identity(record: Any, record_id_override: str | None) -> tuple[str, datetime | None]:
    """(record id, parsed updated_at) of a record, or :class:`_Invalid` with the reason."""
    if not isinstance(record, dict):
        raise _Invalid(f"record is {json_type(record)}, not a JSON object")
    if record_id_override is not None:
        record_id = record_id_override
    else:
        record_id = record.get("id")
        if record_id is None:
            raise _Invalid("missing 'id'" if "id" not in record else "'id' is null")
        if not isinstance(record_id, str):
            raise _Invalid(f"'id' is {json_type(record_id)}, not a string")
        if not record_id.strip():
            raise _Invalid("'id' is an empty string")
    # Checked here, not only with the payload: the id goes to the server (version lookup) first.
    if "\x00" in record_id:
        raise _Invalid("'id' contains a NUL character (\\u0000), which PostgreSQL text cannot store")
    _utf8(record_id)
    return record_id, _timestamp(record, "updated_at")


def _timestamp(record: dict[str, Any], key: str) -> datetime | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{key!r} is {json_type(value)}, not an ISO 8601 timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(f"{key!r} is not an ISO 8601 timestamp: {_clip(value)}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        # Sage sends UTC with "Z"; a time without an offset can't be placed on the timeline safely.
        raise _Invalid(f"{key!r} has no UTC offset ('Z' or '+hh:mm'): {_clip(value)}")
    return parsed


def _canonical_bytes(payload: Any) -> bytes:
    """The canonical JSON of ``payload`` as UTF-8: the hash input and the stored payload.

    Byte for byte what ``_CANONICAL`` gives (every stored hash depends on it); orjson makes it when
    that is provably the same, the standard encoder otherwise (and for every error message).
    """
    try:
        data = orjson.dumps(payload, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:  # non-str keys, ints beyond 64 bits, surrogates, depth, types
        return _utf8(_canonical_text(payload))
    if not _orjson_safe(data, payload):
        return _utf8(_canonical_text(payload))
    if b"\\u0000" in data and _NUL_ESCAPE_BYTES.search(data):
        raise _Invalid("payload contains a NUL character (\\u0000), which PostgreSQL jsonb cannot store")
    return data


def _orjson_safe(data: bytes, payload: Any) -> bool:
    """Whether orjson's ``data`` for ``payload`` is certainly what ``_CANONICAL`` writes.

    No float token (finite floats are formatted differently), and the bytes read back equal the input:
    that catches NaN/Infinity (written as null) and anything orjson serialises that the standard
    encoder refuses (datetime, UUID, dataclass, enum), which must keep failing the same way.
    """
    if data[:1] not in (b"{", b"["):
        return False  # a bare scalar: rare (content_hash of a number), not worth the proof
    if b",e" in data.translate(_FLOAT_TABLE, _NUMBER_CHARS):
        return False
    return bool(orjson.loads(data) == payload)


def _canonical_text(payload: Any) -> str:
    try:
        text = _CANONICAL.encode(payload)
    except ValueError as exc:  # NaN / Infinity
        raise _Invalid(f"payload is not valid JSON: {exc}") from None
    except (TypeError, RecursionError) as exc:
        raise _Invalid(f"payload is not JSON-serialisable: {exc}") from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise _Invalid("payload contains a NUL character (\\u0000), which PostgreSQL jsonb cannot store")
    return text


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid("payload contains invalid Unicode (an unpaired surrogate), not encodable as UTF-8") from None


def _as_is(data: bytes) -> bytes:
    return data


def _raw_text(record: Any) -> str:
    """The record as text for ``quarantine.raw_payload``: JSON when possible, never a NUL."""
    try:
        text = json.dumps(record, ensure_ascii=False, default=repr)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(record, ensure_ascii=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return ascii(record)[:1_000_000]


def _quarantine_id(record: Any, record_id_override: str | None) -> str | None:
    record_id = (
        record_id_override
        if record_id_override is not None
        else (record.get("id") if isinstance(record, dict) else None)
    )
    if not isinstance(record_id, str) or not record_id or "\x00" in record_id:
        return None
    try:
        record_id.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return record_id


def _clip(value: str) -> str:
    shown = value if len(value) <= _REASON_VALUE_CHARS else value[:_REASON_VALUE_CHARS] + "..."
    return ascii(shown)


__all__ = ["DETECTION_METHODS", "STREAMS", "LoadResult", "content_hash", "load_records", "record_deletions"]
