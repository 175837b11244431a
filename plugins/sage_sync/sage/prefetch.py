"""Read-ahead for Sage pages: page n + 1 is on the wire while page n is validated and loaded.

A first sync is a long chain of request -> load -> commit. Sage's latency (50-200 ms a page) and the
load of a page (a few ms of CPU and a commit) can overlap, because the request for the next page
does not depend on the load: its cursor is known as soon as the page arrives. Why it is shaped so:

* **A thread, bounded.** The fetching runs in one background thread (requests releases the GIL
  while it waits on the socket); at most ``depth`` pages are fetched and not yet taken by the
  consumer, so memory stays flat whatever the history size.
* **The consumer's order, the consumer's errors.** Pages and a failure arrive in the order the
  fetching produced them: a request that fails after page n is raised to the consumer only when it
  asks for page n + 1, i.e. after it has committed page n. Nothing the warehouse sees changes: the
  consumer still loads, counts and moves the watermark in each page's own transaction.
* **One user of the client at a time.** A ``requests.Session`` is not for concurrent use; while a
  read-ahead runs only its thread sends requests, and closing it waits for a request in flight.
* **Speculate, then verify** (:class:`CursorReadAhead`). The cursor-paged streams decide the next
  request from what the loader reports; the read-ahead predicts it from the page the same way and
  hands a prefetched page over only when the request asked for equals the one it predicted.
  Otherwise (a page whose newest record was quarantined, say) the guess is dropped and the asked-for
  page fetched: a wasted request at worst, never a different result.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

from sage_sync.core.config import DEFAULT_MAX_PAGES
from sage_sync.sage.client import Page, SageClient
from sage_sync.sage.streams import sage_datetime

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ReadAhead(Generic[T]):
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead of the consumer.

    Use as ``with ReadAhead(pages) as ahead: for page in ahead: ...``. An exception raised by the
    source is raised by ``next()`` after every item produced before it. ``close()`` (also on leaving
    the ``with`` block, however it is left) stops the producer and waits for it: the item it is
    producing is finished and dropped, and the source is closed (``generator.close()``) in its thread.
    """

    def __init__(self, source: Iterable[T], depth: int = 1) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._source = iter(source)
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # One slot per item the producer may hold that the consumer has not taken yet (in flight
        # included): the bound on memory, and on requests sent ahead.
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._finished = False
        context = contextvars.copy_context()
        # The consumer's thread name: log lines of the requests belong to the run that made them.
        self._thread = threading.Thread(
            target=context.run, args=(self._produce,), daemon=True, name=threading.current_thread().name
        )
        self._thread.start()

    def _produce(self) -> None:
        try:
            while True:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(self._source)
                except StopIteration:
                    self._items.put(_DONE)
                    return
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer, in order
                    self._items.put(_Failure(exc))
                    return
                if self._stop.is_set():
                    return
                self._items.put(item)
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._items.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.exc
        self._slots.release()  # taken: the producer may fetch one more
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the producer and wait for it (a request in flight completes, its page is dropped)."""
        self._finished = True
        self._stop.set()
        self._slots.release()  # wakes a producer waiting for a slot
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_ahead_pages() -> int:
    """``SAGE_READ_AHEAD_PAGES``: pages a sync requests before it has loaded the one in hand."""
    value = os.environ.get("SAGE_READ_AHEAD_PAGES", "").strip()
    if not value:
        return 1
    depth = int(value)
    if depth < 0:
        raise ValueError(f"SAGE_READ_AHEAD_PAGES must be 0 or more, got {value!r}")
    return depth


def _cursor_successor(
    params: dict[str, Any], page: Page, cursor: datetime | None
) -> tuple[dict[str, Any], datetime | None] | None:
    """The request the cursor paging of ``sync`` sends after ``page``, and its exact cursor.

    None when ``page`` is the last. The cursor moves to the page's newest ``updated_at`` (then
    page 1), or, when the page did not get past it (a whole page with one timestamp), the page number
    steps on. ``cursor`` is the exact time the request was made from (the query holds it to the
    second only); None on the first request, which is judged from its query.
    """
    if page.is_last:
        return None
    newest, _future = page.cursor_stamp()  # the same rule as the read: a future stamp is no cursor
    if cursor is None and params.get("updated_or_created_since"):
        cursor = datetime.fromisoformat(params["updated_or_created_since"])
    if newest is not None and (cursor is None or newest > cursor):
        return {**params, "updated_or_created_since": sage_datetime(newest), "page": 1}, newest
    return {**params, "page": int(params.get("page", 1)) + 1}, cursor


class CursorReadAhead:
    """A stand-in for ``client`` in cursor paging whose ``get_page`` is answered ahead of time.

    Each ``get_page(path, params)`` returns the same page the client would; meanwhile the request
    predicted to follow is already being sent (``depth`` ahead). Use it as a context manager:
    leaving it stops the read-ahead and waits for a request in flight. ``depth`` defaults to
    ``SAGE_READ_AHEAD_PAGES`` (1); 0 sends every request when it is asked for, as the client alone.
    """

    def __init__(self, client: SageClient, depth: int | None = None) -> None:
        self.client = client
        self.depth = read_ahead_pages() if depth is None else depth
        self.max_pages = getattr(client, "max_pages", DEFAULT_MAX_PAGES)  # the read's page budget
        self._ahead: ReadAhead[tuple[str, dict[str, Any], Page | BaseException]] | None = None
        self.mispredicted = 0

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Page | BaseException]]:
        current, cursor = params, None
        while True:
            try:
                page = self.client.get_page(path, current)
            except Exception as exc:  # noqa: BLE001 - raised only if the consumer asks for this request
                yield path, current, exc
                return
            yield path, current, page
            successor = _cursor_successor(current, page, cursor)
            if successor is None:
                return
            current, cursor = successor

    def get_page(self, path: str, params: Mapping[str, Any] | None = None) -> Page:
        """The page ``client.get_page(path, params)`` returns, prefetched when it was predicted."""
        wanted = dict(params or {})
        if self.depth < 1:
            return self.client.get_page(path, wanted)
        for attempt in (1, 2):
            if self._ahead is None:
                self._ahead = ReadAhead(self._pages(path, wanted), depth=self.depth)
            got = next(self._ahead, None)
            if got is not None and got[0] == path and got[1] == wanted:
                if isinstance(got[2], BaseException):
                    self.close()
                    raise got[2]
                return got[2]
            # Not the request asked for (or the read-ahead had ended): start again from it.
            self.close()
            if attempt == 1 and got is not None:
                self.mispredicted += 1
        raise AssertionError("unreachable: a fresh read-ahead starts with the request asked for")

    def close(self) -> None:
        """Stop the read-ahead; the client is then free for direct use again."""
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def __enter__(self) -> CursorReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CursorReadAhead", "ReadAhead", "read_ahead_pages"]
