"""Stopping a deployment process stops the task processes below it too.

Airflow's task supervisor moves each task process into a process group of its own, so signalling a
worker's group alone left a running task behind (reparented, still writing: a dbt build went on
creating views in a warehouse the next test had emptied). Here a parent in its own session starts a
child that does what the supervisor does (``os.setpgid(0, 0)``) and ignores SIGTERM, as a busy task
may; stopping the parent's group must end both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from scripts.deployment import _start_ticks, _stop_group

PARENT = """
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


def test_stopping_a_group_also_stops_a_task_process_in_a_group_of_its_own() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
    child = psutil.Process(child_pid)
    assert child.is_running() and child.ppid() == parent.pid
    assert os.getpgid(child_pid) == child_pid != parent.pid  # outside the parent's group

    _stop_group(
        {"pid": parent.pid, "pgid": parent.pid, "start_ticks": _start_ticks(parent.pid), "command": ["parent"]},
        signal.SIGTERM,
        timeout=5.0,
    )
    parent.wait(5)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
