"""Settings, the Airflow way: connections ``sage_default`` and ``sage_warehouse``.

Both can be given as ``AIRFLOW_CONN_<ID>`` environment variables (Airflow's JSON form, or its
URI form), which is how the CLI, the tests and the demo set them. Inside Airflow, a connection
stored in the metadata DB is found through Airflow's own lookup, imported lazily so that the
client and loader never depend on Airflow.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

from sage_sync.core.errors import ConfigError

SAGE_CONN_ID = "sage_default"
WAREHOUSE_CONN_ID = "sage_warehouse"

DEFAULT_API_URL = "https://api.accounting.sage.com/v3.1"
DEFAULT_AUTHORIZE_URL = "https://www.sageone.com/oauth2/auth/central?filter=apiv3.1"
DEFAULT_TOKEN_URL = "https://oauth.accounting.sage.com/token"  # noqa: S105 - a URL, not a secret
DEFAULT_REVOKE_URL = "https://oauth.accounting.sage.com/revoke"

# Requests a second that every sync process together may send to Sage (the shared PostgreSQL bucket of
# sage_sync.warehouse.ratelimit). Sage allows 1,296,000 a day per app, 15 a second on average; 12 keeps a fifth
# of that for what the bucket does not meter (the Connect page's business lookups, the CLI) and so
# that a day spent at the cap still ends under Sage's limit. Env SAGE_RATE_LIMIT_PER_S, else the
# sage_default connection's extra "rate_limit_per_s"; 0 or "off" sends without the bucket.
RATE_LIMIT_ENV = "SAGE_RATE_LIMIT_PER_S"
DEFAULT_RATE_LIMIT_PER_S = 12.0
_OFF = {"0", "off", "none", "false", "no", "disabled"}


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow connection this project reads."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _from_json(conn_id: str, raw: str) -> ConnectionInfo:
    data = json.loads(raw)
    extra = data.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=data.get("conn_type"),
        host=data.get("host"),
        login=data.get("login"),
        password=data.get("password"),
        schema=data.get("schema"),
        port=int(data["port"]) if data.get("port") else None,
        extra=dict(extra),
    )


def _from_uri(conn_id: str, raw: str) -> ConnectionInfo:
    parts = urlsplit(raw)
    extra = dict(parse_qsl(parts.query))
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=parts.scheme.replace("-", "_") or None,
        host=unquote(parts.hostname) if parts.hostname else None,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        schema=unquote(parts.path.lstrip("/")) or None,
        port=parts.port,
        extra=extra,
    )


def _from_airflow(conn_id: str) -> ConnectionInfo | None:
    try:  # Only when running inside an Airflow deployment with a metadata DB.
        from airflow.sdk import BaseHook  # noqa: PLC0415
    except ImportError:  # pragma: no cover - Airflow is always installed here
        return None
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - any lookup failure means "not configured there"
        return None
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn.conn_type,
        host=conn.host,
        login=conn.login,
        password=conn.password,
        schema=conn.schema,
        port=conn.port,
        extra=conn.extra_dejson,
    )


def get_connection(conn_id: str) -> ConnectionInfo:
    """Return connection ``conn_id`` from ``AIRFLOW_CONN_*`` or Airflow's own lookup."""
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if raw:
        raw = raw.strip()
        return _from_json(conn_id, raw) if raw.startswith("{") else _from_uri(conn_id, raw)
    found = _from_airflow(conn_id)
    if found is None:
        raise ConfigError(
            f"connection {conn_id!r} is not configured: set AIRFLOW_CONN_{conn_id.upper()} "
            "or add it in Airflow (Admin > Connections)"
        )
    return found


@dataclass(frozen=True)
class SageSettings:
    """Where Sage lives and who we are to it (client credentials stay out of repr)."""

    api_url: str
    client_id: str
    client_secret: str = field(repr=False)
    authorize_url: str
    token_url: str
    revoke_url: str
    redirect_uri: str
    scope: str = "readonly"
    # Shared request budget, requests a second for the whole deployment; None: no shared limiter.
    rate_limit_per_s: float | None = DEFAULT_RATE_LIMIT_PER_S


def sage_settings(conn_id: str = SAGE_CONN_ID) -> SageSettings:
    """Read connection ``sage_default``: host = API base URL, login/password = client id/secret."""
    conn = get_connection(conn_id)
    if not conn.login or not conn.password:
        raise ConfigError(f"connection {conn_id!r} needs login (client id) and password (client secret)")
    host = conn.host or DEFAULT_API_URL
    if "://" not in host:
        host = f"https://{host}"
    extra = conn.extra
    return SageSettings(
        api_url=host.rstrip("/"),
        client_id=conn.login,
        client_secret=conn.password,
        authorize_url=extra.get("authorize_url", DEFAULT_AUTHORIZE_URL),
        token_url=extra.get("token_url", DEFAULT_TOKEN_URL),
        revoke_url=extra.get("revoke_url", DEFAULT_REVOKE_URL),
        redirect_uri=extra.get("redirect_uri", "http://localhost:8080/sage/callback"),
        scope=extra.get("scope", "readonly"),
        rate_limit_per_s=rate_limit_per_s(extra),
    )


def rate_limit_per_s(extra: dict[str, Any] | None = None) -> float | None:
    """The shared Sage request rate: ``SAGE_RATE_LIMIT_PER_S``, else the Sage connection's extra
    ``rate_limit_per_s``, else 12 a second. ``0`` or ``off`` turns the shared limiter off (None)."""
    raw: Any = os.environ.get(RATE_LIMIT_ENV, "").strip()
    source = RATE_LIMIT_ENV
    if not raw and extra is not None and extra.get("rate_limit_per_s") not in (None, ""):
        raw, source = extra["rate_limit_per_s"], f"connection {SAGE_CONN_ID!r} extra rate_limit_per_s"
    if raw in ("", None):
        return DEFAULT_RATE_LIMIT_PER_S
    if raw is False:  # JSON extra {"rate_limit_per_s": false}
        return None
    if isinstance(raw, str) and raw.strip().lower() in _OFF:
        return None
    try:
        if isinstance(raw, bool):
            raise TypeError
        rate = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source} must be requests a second (e.g. 12), 0 or 'off'; got {raw!r}") from None
    if not math.isfinite(rate) or rate < 0:
        raise ConfigError(f"{source} must be a finite number >= 0; got {raw!r}")
    return rate or None


# Pages one list may take when Sage sends no $total to derive a cap from (a $total always gives
# one: what it needs plus slack, see sage_sync.sage.client.page_cap). 10,000 pages of 200 is 2M
# records; Sage always sends $total, so this only stops a server paging for ever.
MAX_PAGES_ENV = "SAGE_MAX_PAGES"
DEFAULT_MAX_PAGES = 10_000
# The longest one try of a Sage task (a stream's read, the deletions, a backfill stream) may run
# before Airflow stops it (execution_timeout). A first sync of 1M records is about 5,000 requests:
# 7 minutes alone at Sage's rate, hours when 10,000 companies share the budget. Cursor reads keep
# their progress, so the retry resumes where the timed-out try stopped.
TASK_TIMEOUT_ENV = "SAGE_TASK_TIMEOUT_HOURS"
DEFAULT_TASK_TIMEOUT_HOURS = 12.0


def env_number(name: str, default: float, *, zero_allowed: bool = False) -> float:
    """The finite number in environment variable ``name`` (``default`` when unset or blank).

    A value that is not a number, not finite (``nan``, ``inf``) or below the bound (> 0, or >= 0
    with ``zero_allowed``) is refused with a ``ConfigError`` naming the variable: a setting that
    bounds a wait or a count must never silently become "for ever" or "never".
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number; got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        bound = ">= 0" if zero_allowed else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}; got {raw!r}")
    return value


# The history lane's share of the Sage rate (core.lanes): first syncs and backfills take tokens from a
# bucket of their own at this share of SAGE_RATE_LIMIT_PER_S, the daily runs from one at the rest, so
# the two together never exceed it. A third: a 1M-record first sync (about 5,000 requests) still ends
# in well under an hour at 4 a second, while the nightly runs keep 8 of 12.
HISTORY_RATE_SHARE_ENV = "SAGE_HISTORY_RATE_SHARE"
DEFAULT_HISTORY_RATE_SHARE = 1 / 3


def history_rate_share() -> float:
    """``SAGE_HISTORY_RATE_SHARE``: the history lane's share of the Sage rate, strictly between 0 and 1.

    Refused with a ``ConfigError`` naming the setting when it is not a number, not finite, or not
    inside (0, 1): at 0 a first sync would never get a token, at 1 no daily run would. Read when
    a DAG file is parsed, so a bad value fails the parse before any run starts.
    """
    share = env_number(HISTORY_RATE_SHARE_ENV, DEFAULT_HISTORY_RATE_SHARE)
    if share >= 1:
        raise ConfigError(
            f"{HISTORY_RATE_SHARE_ENV} must be a share of the Sage rate, above 0 and below 1 "
            f"(e.g. 0.33); got {os.environ.get(HISTORY_RATE_SHARE_ENV)!r}"
        )
    return share


def max_pages() -> int:
    """``SAGE_MAX_PAGES``: the most pages of one list without a ``$total`` (default 10,000)."""
    return int(env_number(MAX_PAGES_ENV, DEFAULT_MAX_PAGES))


def task_timeout() -> timedelta:
    """``SAGE_TASK_TIMEOUT_HOURS``: ``execution_timeout`` of the Sage tasks (default 12 hours)."""
    return timedelta(hours=env_number(TASK_TIMEOUT_ENV, DEFAULT_TASK_TIMEOUT_HOURS))


def warehouse_dsn(conn_id: str = WAREHOUSE_CONN_ID) -> str:
    """A libpq connection string for the warehouse (connection ``sage_warehouse``)."""
    conn = get_connection(conn_id)
    parts = {
        "host": conn.host or "127.0.0.1",
        "port": str(conn.port or 5432),
        "dbname": conn.schema or "postgres",
        "user": conn.login or "postgres",
    }
    if conn.password:
        parts["password"] = conn.password
    for key in ("sslmode", "options", "application_name"):
        if key in conn.extra:
            parts[key] = str(conn.extra[key])
    return " ".join(f"{k}='{_libpq_quote(v)}'" for k, v in parts.items())


def warehouse_conn_json(dsn: str) -> str:
    """The Airflow connection (JSON, as ``AIRFLOW_CONN_SAGE_WAREHOUSE`` takes it) of the libpq ``dsn``:
    the inverse of :func:`warehouse_dsn`, so set-up scripts, tests and benches that start from a
    database name write the connection one way. No password key under trust or peer auth."""
    params = conninfo_to_dict(dsn)
    conn: dict[str, Any] = {
        "conn_type": "postgres",
        "host": params.get("host") or "127.0.0.1",
        "port": int(params.get("port") or 5432),
        "login": params.get("user") or "postgres",
        "schema": params.get("dbname") or "postgres",
    }
    if params.get("password"):
        conn["password"] = params["password"]
    extra = {key: params[key] for key in ("sslmode", "options", "application_name") if params.get(key)}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


def _libpq_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


TOKEN_KEYS_ENV = "SAGE_TOKEN_KEYS"  # noqa: S105 - the name of a setting, not a secret
AIRFLOW_FERNET_ENV = "AIRFLOW__CORE__FERNET_KEY"


def token_keys() -> tuple[str, str]:
    """The keys that encrypt Sage's tokens, and the setting they came from.

    ``SAGE_TOKEN_KEYS``: the pipeline's own Fernet keys, comma-separated (the first encrypts,
    all decrypt). Unset: Airflow's ``AIRFLOW__CORE__FERNET_KEY``, as before it existed. Why a key
    of its own: Airflow's key opens every connection in Airflow's database and is handed to
    everything Airflow runs; this one opens only the Sage grants, is given only to the processes
    that sync, and rotates on its own schedule.
    """
    own = os.environ.get(TOKEN_KEYS_ENV, "").strip()
    if own:
        return own, TOKEN_KEYS_ENV
    return fernet_key(), AIRFLOW_FERNET_ENV


def fernet_key() -> str:
    """Airflow's Fernet key (comma-separated for rotation); tokens are unreadable without it."""
    key = os.environ.get(AIRFLOW_FERNET_ENV, "").strip()
    if not key:
        raise ConfigError(f"neither {TOKEN_KEYS_ENV} nor {AIRFLOW_FERNET_ENV} is set: tokens cannot be encrypted")
    return key


# Notices (sage_sync.orchestration.notices): where a refused grant, a failed run or a late first sync is
# reported. Each channel is on only when configured; with neither, no notice is built or sent.
NOTIFY_WEBHOOK_ENV = "SAGE_NOTIFY_WEBHOOK_URL"
NOTIFY_EMAIL_TO_ENV = "SAGE_NOTIFY_EMAIL_TO"
SMTP_CONN_ID = "sage_smtp"


@dataclass(frozen=True)
class SmtpSettings:
    """The mail server notices go through (connection ``sage_smtp``; password out of repr)."""

    host: str = "localhost"
    port: int = 25
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "sage-sync@localhost"
    starttls: bool = False
    ssl: bool = False


@dataclass(frozen=True)
class NotifySettings:
    """Who hears about incidents: a webhook (Slack's incoming webhook, or any URL taking
    ``{"text": ...}``) and/or e-mail recipients. The webhook URL is a secret (Slack's carries its
    key): it stays out of repr and out of every log line."""

    webhook_url: str | None = field(default=None, repr=False)
    email_to: tuple[str, ...] = ()
    smtp: SmtpSettings = field(default_factory=SmtpSettings)

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.email_to)


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def notify_settings() -> NotifySettings:
    """``SAGE_NOTIFY_WEBHOOK_URL``, ``SAGE_NOTIFY_EMAIL_TO`` (comma-separated) and, for e-mail, the
    connection ``sage_smtp`` (host, port, login, password; extra ``from``, ``starttls``, ``ssl``);
    without that connection mail goes to an MTA on localhost:25."""
    webhook = os.environ.get(NOTIFY_WEBHOOK_ENV, "").strip() or None
    email_to = tuple(a.strip() for a in os.environ.get(NOTIFY_EMAIL_TO_ENV, "").split(",") if a.strip())
    smtp = SmtpSettings()
    if email_to:
        try:
            conn = get_connection(SMTP_CONN_ID)
        except ConfigError:
            conn = None
        if conn is not None:
            extra = conn.extra
            smtp = SmtpSettings(
                host=conn.host or smtp.host,
                port=conn.port or (465 if _flag(extra.get("ssl")) else smtp.port),
                login=conn.login,
                password=conn.password,
                sender=str(extra.get("from") or conn.login or smtp.sender),
                starttls=_flag(extra.get("starttls", False)),
                ssl=_flag(extra.get("ssl", False)),
            )
    return NotifySettings(webhook_url=webhook, email_to=email_to, smtp=smtp)
