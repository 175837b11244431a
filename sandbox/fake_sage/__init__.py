"""A fake Sage Business Cloud Accounting v3.1 server that speaks Sage's real contract.

Why it exists: the pipeline's client must be testable end to end (OAuth, paging, change feeds,
deletes, throttling, broken connections) without a real Sage tenant. The Sage-facing endpoints
(``/oauth2/auth/central``, ``/token``, ``/revoke``, ``/v3.1/...``) only do what real Sage does, so a
client that works here works against Sage by configuration alone. Everything that is *not* Sage lives
under ``/_admin`` (clock, faults, data edits) and is driven by :class:`FakeSageAdmin`.

Start it with ``python -m sandbox.fake_sage --port 8765`` or, from Python/tests, with
:class:`FakeSageServer` (a real uvicorn subprocess).
"""

from sandbox.fake_sage.server import FakeSageAdmin, FakeSageServer

__all__ = ["FakeSageAdmin", "FakeSageServer"]
