"""The read-ahead: bounded, in order, errors where they belong, and nothing left running."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sage_sync.sage.client import Page
from sage_sync.sage.prefetch import CursorReadAhead, ReadAhead


def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("depth", [1, 2])
def test_the_producer_runs_at_most_depth_items_ahead(depth: int) -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for n in range(10):
            produced.append(n)
            yield n

    with ReadAhead(source(), depth=depth) as ahead:
        _wait_for(lambda: len(produced) == depth)
        time.sleep(0.2)  # it would have run on by now if it could
        assert len(produced) == depth
        taken = []
        for _ in range(3):
            taken.append(next(ahead))
            _wait_for(lambda: len(produced) == len(taken) + depth)
            time.sleep(0.05)
            assert len(produced) == len(taken) + depth
        assert taken == [0, 1, 2]
        assert list(ahead) == list(range(3, 10))


def test_items_before_a_failure_arrive_then_the_failure() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("page 3 failed")

    ahead = ReadAhead(source(), depth=2)
    assert next(ahead) == 1
    assert next(ahead) == 2
    with pytest.raises(ConnectionError, match="page 3 failed"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)
    ahead.close()


def test_closing_early_stops_the_producer_and_closes_the_source() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            for n in range(1_000):
                produced.append(n)
                yield n
        finally:
            closed.set()

    with ReadAhead(source(), depth=1) as ahead:
        assert next(ahead) == 0
        thread = ahead._thread
    assert closed.is_set() and not thread.is_alive()
    count = len(produced)
    time.sleep(0.1)
    assert len(produced) == count <= 2


def test_closing_waits_for_the_item_in_flight() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def source() -> Iterator[int]:
        yield 0
        started.set()
        release.wait(5)
        finished.set()
        yield 1

    ahead = ReadAhead(source(), depth=1)
    assert next(ahead) == 0
    assert started.wait(5)
    closer = threading.Thread(target=ahead.close)
    closer.start()
    time.sleep(0.1)
    assert closer.is_alive()  # still waiting: the client is not free yet
    release.set()
    closer.join(5)
    assert finished.is_set() and not closer.is_alive()


def test_a_consumer_error_leaves_nothing_running() -> None:
    def source() -> Iterator[int]:
        yield from range(100)

    with pytest.raises(RuntimeError), ReadAhead(source()) as ahead:
        next(ahead)
        thread = ahead._thread
        raise RuntimeError("the load failed")
    assert not thread.is_alive()


def _page(items: list[dict[str, Any]], *, last: bool = False, number: int = 1) -> Page:
    return Page(
        items=items, page=number, total=None, next=None if last else "/more", items_per_page=200, request_id=None
    )


class _Client:
    """Answers cursor requests from a script; records what was asked."""

    def __init__(
        self, pages: dict[tuple[str | None, int], Page], fail: set[tuple[str | None, int]] = frozenset()
    ) -> None:
        self.pages = pages
        self.fail = fail
        self.asked: list[tuple[str | None, int]] = []

    def get_page(self, path: str, params: dict[str, Any]) -> Page:
        key = (params.get("updated_or_created_since"), params.get("page", 1))
        self.asked.append(key)
        if key in self.fail:
            raise ConnectionError(f"failed {key}")
        return self.pages[key]


def _rec(record_id: str, stamp: str) -> dict[str, Any]:
    return {"id": record_id, "updated_at": stamp}


def _params(since: str | None, page: int = 1) -> dict[str, Any]:
    params: dict[str, Any] = {"sort": "updated_at:asc", "page": page}
    if since:
        params["updated_or_created_since"] = since
    return params


T1, T2 = "2024-01-01T00:00:01Z", "2024-01-01T00:00:02Z"


def test_cursor_pages_are_prefetched_and_match_direct_requests() -> None:
    pages = {
        (None, 1): _page([_rec("a", T1), _rec("b", T1)]),
        (T1, 1): _page([_rec("b", T1), _rec("c", T1)]),  # the cursor did not move: page 2 next
        (T1, 2): _page([_rec("d", T2)]),
        (T2, 1): _page([_rec("d", T2)], last=True),
    }
    client = _Client(pages)
    with CursorReadAhead(client) as ahead:  # type: ignore[arg-type]
        assert ahead.get_page("/x", _params(None)) is pages[(None, 1)]
        _wait_for(lambda: len(client.asked) == 2)  # the next one is on its way before it is asked for
        assert ahead.get_page("/x", _params(T1)) is pages[(T1, 1)]
        assert ahead.get_page("/x", _params(T1, 2)) is pages[(T1, 2)]
        assert ahead.get_page("/x", _params(T2)) is pages[(T2, 1)]
    assert client.asked == [(None, 1), (T1, 1), (T1, 2), (T2, 1)]  # nothing past the last page
    assert ahead.mispredicted == 0


def test_a_wrong_guess_is_dropped_and_the_asked_page_fetched() -> None:
    pages = {
        (None, 1): _page([_rec("a", T1)]),
        (T1, 1): _page([_rec("b", T2)]),
        (T2, 1): _page([], last=True),
        ("2024-01-01T00:00:00Z", 1): _page([_rec("z", T2)], last=True),
    }
    client = _Client(pages)
    with CursorReadAhead(client) as ahead:  # type: ignore[arg-type]
        ahead.get_page("/x", _params(None))
        got = ahead.get_page("/x", _params("2024-01-01T00:00:00Z"))  # not what was predicted
    assert got is pages[("2024-01-01T00:00:00Z", 1)]
    assert ahead.mispredicted == 1


def test_a_failed_prefetch_is_raised_only_when_that_page_is_asked_for() -> None:
    pages = {(None, 1): _page([_rec("a", T1)])}
    client = _Client(pages, fail={(T1, 1)})
    with CursorReadAhead(client) as ahead:  # type: ignore[arg-type]
        assert ahead.get_page("/x", _params(None)) is pages[(None, 1)]
        _wait_for(lambda: len(client.asked) == 2)  # the prefetch failed, silently so far
        with pytest.raises(ConnectionError, match="failed"):
            ahead.get_page("/x", _params(T1))


def test_read_ahead_off_sends_each_request_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_READ_AHEAD_PAGES", "0")
    pages = {(None, 1): _page([_rec("a", T1)]), (T1, 1): _page([_rec("b", T2)], last=True)}
    client = _Client(pages)
    with CursorReadAhead(client) as ahead:  # type: ignore[arg-type]
        assert ahead.get_page("/x", _params(None)) is pages[(None, 1)]
        time.sleep(0.1)
        assert client.asked == [(None, 1)]  # nothing sent ahead
        assert ahead.get_page("/x", _params(T1)) is pages[(T1, 1)]
