"""`make demo`, `make airflow` and `make deploy-up` never share a checkout's Airflow, and
`make airflow` stops whole on Ctrl-C.

Run side by side, the standalone scheduler took over the demo's `dags test` runs and ran them
against its own fake Sage: the demo died with a 40-line traceback and its three companies ended
`needs_reauth`. Now the second command refuses in one line. And Ctrl-C on `make airflow` left
standalone's components running as orphans.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from scripts.checkout_lock import CheckoutBusy, exclusive

ROOT = Path(__file__).resolve().parents[2]


def test_demo_refuses_in_one_line_while_airflow_holds_the_checkout(tmp_path: Path) -> None:
    lock = tmp_path / "airflow.lock"
    env = {**os.environ, "SAGE_CHECKOUT_LOCK": str(lock)}
    with exclusive("make airflow", lock=lock, state=tmp_path / "none.json"):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "make demo refused" in lines[0] and "`make airflow`" in lines[0] and "Ctrl-C" in lines[0]
    assert "fake Sage" not in done.stdout  # refused before it started anything
    assert time.monotonic() - started < 30
    # Once the holder is gone the lock is free again (the kernel drops an flock with its holder).
    with exclusive("make demo", lock=lock, state=tmp_path / "none.json"):
        pass


def test_a_running_deployment_holds_the_checkout_too(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = tmp_path / "state.json"
        state.write_text(json.dumps({"processes": {"scheduler": {"pid": sleeper.pid, "pgid": sleeper.pid}}}))
        with pytest.raises(CheckoutBusy) as refused, exclusive("make demo", lock=tmp_path / "lock", state=state):
            pass
        assert refused.value.code == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    with exclusive("make demo", lock=tmp_path / "lock", state=state):  # its processes are gone
        pass


# A stand-in for `airflow standalone`: a component that, like a task under Airflow's supervisor,
# sits in a process group of its own and ignores SIGTERM.
STANDALONE = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", (
    "import os, signal, time\\n"
    "os.setpgid(0, 0)\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "print(os.getpid(), flush=True)\\n"
    "time.sleep(300)\\n"
)], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
time.sleep(300)
"""

WRAPPER = """
import sys
sys.path.insert(0, {scripts!r})
from deployment import run_in_foreground
raise SystemExit(run_in_foreground([sys.executable, "-c", {standalone!r}], dict(__import__("os").environ), 5.0))
"""


def test_ctrl_c_stops_standalone_and_every_process_below_it() -> None:
    wrapper = subprocess.Popen(
        [sys.executable, "-c", WRAPPER.format(scripts=str(ROOT / "scripts"), standalone=STANDALONE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = psutil.Process(int(wrapper.stdout.readline()))  # type: ignore[union-attr]
    standalone = psutil.Process(child.ppid())
    assert standalone.ppid() == wrapper.pid
    wrapper.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to make's python
    assert wrapper.wait(timeout=30) == 130
    _gone, alive = psutil.wait_procs([standalone, child], timeout=10)
    assert not alive, f"left running: {alive}"
