"""One Airflow per checkout at a time.

`make demo`, `make airflow` and `make deploy-up` all run Airflow on this checkout's metadata
database and warehouse, with the same demo companies. Run side by side they break each other: the
standalone scheduler picked up the demo's `dags test` runs ("TI was not in a state where it could
be marked as running") and ran them against its own fake Sage, with tokens the demo's fake had
issued, and all three demo companies ended `needs_reauth`. So each of them takes this checkout's
lock, or refuses in one line naming the one that holds it.

The lock is an ``flock`` on ``.local/airflow.lock``: the kernel drops it when its holder dies, so
a killed `make airflow` never leaves a stale lock behind. A deployment started by
`make deploy-up` outlives the command that started it, so it is found by its recorded process
groups instead (``.local/deploy/state.json``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
LOCK = Path(os.environ.get("SAGE_CHECKOUT_LOCK") or LOCAL / "airflow.lock")
DEPLOY_STATE = LOCAL / "deploy" / "state.json"


class CheckoutBusy(SystemExit):
    """Another Airflow of this checkout runs: exit 2 with one line saying which, and what to do."""

    def __init__(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        super().__init__(2)


def running_deployment(state: Path = DEPLOY_STATE) -> bool:
    """True when a `make deploy-up` deployment of this checkout has a live process group."""
    try:
        processes = json.loads(state.read_text()).get("processes", {})
    except (OSError, ValueError):
        return False
    for proc in processes.values():
        try:
            os.killpg(int(proc["pgid"]), 0)
            return True
        except (ProcessLookupError, PermissionError, KeyError, ValueError, TypeError):
            continue
    return False


@contextmanager
def exclusive(what: str, lock: Path = LOCK, state: Path = DEPLOY_STATE) -> Iterator[None]:
    """Hold this checkout's Airflow lock while the block runs; refuse (exit 2) when it is taken."""
    if running_deployment(state):
        raise CheckoutBusy(
            f"{what} refused: `make deploy-up` runs this checkout's Airflow (its database and demo "
            "companies); stop it first with `make deploy-down`"
        )
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another Airflow command"
            raise CheckoutBusy(
                f"{what} refused: {holder} runs this checkout's Airflow (its database and demo "
                "companies); stop it first (Ctrl-C in its terminal)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`{what}` (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock
