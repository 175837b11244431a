"""Every exception of ``sage_sync``, in one place, so callers can tell "retry later" from "ask a human".

Layers raise these and the layers above catch them by type: the Sage client's (``SageError``
and its family), the warehouse's (unknown company or run, lock and rate-limit timeouts), the
pipeline's (a company to skip, a run already in progress), the lifecycle's one-line refusals
(``LifecycleError``) and the web layer's login redirect.

Messages are built only from Sage's ``$dataCode`` / ``$message``, OAuth error codes, paths and
request ids: never from tokens, codes or client secrets, because exception text ends up in task
logs and in ``sage_control.connection_events``.
"""

from __future__ import annotations

from typing import Any


class SageError(Exception):
    """Base class of every error raised by ``sage_sync``'s Sage client layer."""


class ReauthorizationRequired(SageError):
    """The grant is gone (revoked, expired, rotated away, or lost in transit).

    No retry can fix this: a user of the business must authorise the app again. ``refused`` is
    the fingerprint of the refresh token Sage refused, when one was: before a company is marked,
    the store is read again under the refresh lock, and a different token there (a reconnect
    saved a new grant meanwhile) means the company is not dead at all.
    """

    def __init__(self, *args: object, refused: str | None = None) -> None:
        super().__init__(*args)
        self.refused = refused


class GrantRefused(ReauthorizationRequired):
    """Sage refused one company's grant during a run: the one line that says who and what to do.

    Raised by the pipeline around the client's :class:`ReauthorizationRequired` once the company
    is marked ``needs_reauth``; the DAG tasks turn it into a failure without retries.
    """

    def __init__(self, company_id: str, company_name: str, reason: str | None = None) -> None:
        self.company_id = company_id
        self.company_name = company_name
        self.reason = reason
        text = (
            f"Sage refused the grant for {company_name}: re-authorise it on the Sage connections page "
            f"or with `python -m sage_sync reconnect {company_id} --code ...` (code from "
            "`python -m sage_sync authorize-url`)"
        )
        if reason:
            text += f"; Sage said: {reason}"
        super().__init__(text)


class SubscriptionInactive(SageError):
    """Sage answered 401 "No active subscription (MSE)": the business's plan has lapsed.

    Refreshing the token does not help, and neither does re-authorising; the company must
    renew its subscription.
    """


class OAuthError(SageError):
    """The token or revoke endpoint refused the request for a reason other than the grant.

    Typically ``invalid_client`` (wrong client id/secret) or ``invalid_request``: a
    configuration problem, not a user one.
    """

    def __init__(self, error: str, status: int | None, description: str | None = None) -> None:
        self.error = error
        self.status = status
        self.description = description
        text = f"Sage OAuth error {error!r} (HTTP {status})"
        if description:
            text += f": {description}"
        super().__init__(text)


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """``"$dataCode: $message"`` pairs of Sage's error array, joined for a message."""
    parts = []
    for err in errors:
        code = str(err.get("$dataCode") or "").strip()
        message = str(err.get("$message") or "").strip()
        source = str(err.get("$source") or "").strip()
        text = ": ".join(p for p in (code, message) if p)
        if source:
            text += f" (source {source})"
        if text:
            parts.append(text)
    return "; ".join(parts)


class SageAPIError(SageError):
    """Sage answered an API call with an error that retrying will not fix (403, 404, 422, ...)."""

    def __init__(
        self,
        status: int,
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status = status
        self.errors = list(errors or [])
        self.request_id = request_id
        self.path = path
        detail = describe_errors(self.errors)
        super().__init__(
            _where(f"Sage API HTTP {status}", path=path, then=f": {detail}" if detail else "", request_id=request_id)
        )


def _where(text: str, *, path: str | None, then: str, request_id: str | None) -> str:
    """``text`` with the Sage path it happened on, what follows it, and Sage's request id (the id
    Sage support asks for), in the one order every Sage error message uses."""
    return text + (f" on {path}" if path else "") + then + (f" [x_request_id={request_id}]" if request_id else "")


class TransientError(SageError):
    """Sage kept failing in a way that is normally temporary (5xx, timeouts, dropped connections).

    Raised only after the client's retries are exhausted; running the task again later is the
    right response.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        path: str | None = None,
        request_id: str | None = None,
        attempts: int | None = None,
    ) -> None:
        self.reason = reason
        self.status = status
        self.path = path
        self.request_id = request_id
        self.attempts = attempts
        then = f" after {attempts} attempts" if attempts else ""
        super().__init__(_where(reason, path=path, then=then, request_id=request_id))


class RateLimited(TransientError):
    """Sage kept answering 429 after every retry (the app-wide rate limit is exhausted)."""


class InvalidResponse(TransientError):
    """Sage's body was malformed or truncated JSON (or not the expected shape) after retries."""


class IncompleteListing(TransientError):
    """A list stopped without Sage ending it (``$next: null``), or ended short of its ``$total``.

    Page-offset paging over live data shifts when a record is deleted: Sage then serves its last
    page again, or a server's ``$next`` goes back. Such a read may have skipped a live record, so
    it never counts as complete: the pass is read again, and if it stays incomplete the run fails
    with this reason and no watermark or Synced From moves.
    """


class PageLimitExceeded(SageError):
    """A list went on for more pages than its ``$total`` allows (or than the hard cap, without one).

    A server that keeps sending ``$next`` would otherwise hold a task, and the deployment's shared
    request budget, for ever.
    """

    def __init__(self, reason: str, *, pages: int, path: str | None = None) -> None:
        self.reason = reason
        self.pages = pages
        self.path = path
        super().__init__(f"{reason} on {path}" if path else reason)


class RefreshInDoubt(TransientError):
    """A refresh POST may have reached Sage but its answer did not arrive (read timeout, a reset
    after sending, 500/502/504): Sage may have rotated the refresh token in an answer we never saw."""


class TokensNotSaved(TransientError):
    """A refreshed pair could not be saved to the warehouse in time; it waits in a recovery record."""


class GrantReplaced(TransientError):
    """The stored grant changed (a reconnect saved a new one) while a step was using the old one.

    Not a dead grant: the step's next try uses the new one.
    """


class BusinessMissing(SageError):
    """The company's business is no longer among ``/businesses`` for its grant: nothing is written.

    Sage might answer an ``X-Business`` the user can no longer reach with another business (its
    lead business); storing that under this company would mix two businesses' books.
    """


class BusinessMismatch(SageError):
    """Sage answered for a different business than the ``X-Business`` we sent.

    Sage echoes the business it used in an ``X-Business`` response header; storing that data
    under our company would mix two businesses' books, so this is fatal for the request.
    """

    def __init__(self, expected: str, actual: str, path: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        self.path = path
        super().__init__(f"Sage answered for business {actual!r}, expected {expected!r} on {path}")


# -- configuration and secrets ---------------------------------------------------------------------


class ConfigError(RuntimeError):
    """A required setting is missing or malformed."""


class CryptoError(ConfigError):
    """The Fernet key is malformed, or it cannot decrypt a stored value (the key changed)."""


# -- warehouse -------------------------------------------------------------------------------------


class UnknownCompanyError(LookupError):
    """No company with this id is registered."""


class UnknownRunError(LookupError):
    """No sync run with this id exists."""


class TokenLockTimeout(TimeoutError):
    """Another process held this company's refresh lock for longer than the store's lock timeout."""


class RateLimitTimeout(TimeoutError):
    """No token became available within the limiter's ``max_wait``."""


class MigrationLockTimeout(TimeoutError):
    """A migration could not take its table locks within ``lock_timeout`` (a long reader holds them)."""


# -- pipeline --------------------------------------------------------------------------------------


class CompanySkipped(Exception):
    """The company must not be synced now (disconnected); the message says why."""


class RunInProgress(RuntimeError):
    """Another run of the same company is still running; runs of one company never overlap."""


class RunFenced(RuntimeError):
    """A write (or a re-open) under a run that is no longer the company's live run; nothing of it was kept.

    The run was closed (a sibling task failed, a newer run took over an abandoned one, a
    disconnect skipped it), or the company was reset or disconnected since it opened (its
    generation is older than the company's). Retrying cannot help: the run's work is over, and
    the next run reads from the watermarks the committed pages left. ``run_status`` is the run's
    status when it was fenced (``skipped`` after a disconnect: the DAG tasks skip rather than fail).
    """

    def __init__(self, message: str, *, sync_run_id: str, run_status: str | None = None) -> None:
        super().__init__(message)
        self.sync_run_id = sync_run_id
        self.run_status = run_status


class UnknownCompany(LookupError):
    """No such company in the registry."""


class InvalidStatusTransition(ValueError):
    """A company status change that the lifecycle does not allow (see ``CompanyStatus``)."""


# -- lifecycle and web -----------------------------------------------------------------------------


class LifecycleError(ValueError):
    """A refused lifecycle action; the message is one line a user can act on.

    ``cli_hint`` is the part that only makes sense in a shell (a flag, a command to run): the
    CLI prints ``str(exc)`` (message and hint), the Connect pages show :attr:`message` alone.
    """

    def __init__(self, message: str, cli_hint: str | None = None) -> None:
        super().__init__(f"{message} {cli_hint}" if cli_hint else message)
        self.message = message
        self.cli_hint = cli_hint


class InvalidCompanyId(LifecycleError):
    """A company id that does not fit the rule of ``core.ids`` (it could not name a DAG, a URL or a file)."""


class SchemaNotReady(LifecycleError):
    """The warehouse was never set up, or is older than this code: set-up (``migrate``) has to run."""


class ReportError(LifecycleError):
    """A report that cannot be made (unknown company, marts not built): one line for the user."""


class AirflowUnavailable(RuntimeError):
    """No Airflow api-server took the request (none is running here, or it refused the call).

    ``status`` is Airflow's HTTP status when it answered (None when nothing answered).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LoginRequired(Exception):
    """The request has no valid Airflow login: the web layer sends the browser to the login page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


# A stream's failure, raised after the run's other streams were read, carries the stream's name
# as a note: the failure notice and the task log then say which stream it was.
STREAM_NOTE = "stream: "


def note_stream(exc: BaseException, stream: str) -> None:
    """Mark ``exc`` as the failure of ``stream``."""
    exc.add_note(f"{STREAM_NOTE}{stream}")


def noted_streams(exc: object) -> list[str]:
    """The streams ``exc`` was marked the failure of (:func:`note_stream`), first first."""
    notes = getattr(exc, "__notes__", None) or []
    return [n.removeprefix(STREAM_NOTE) for n in notes if isinstance(n, str) and n.startswith(STREAM_NOTE)]
