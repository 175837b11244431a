"""dbt as the tests run it: in this pytest process, the way the transform DAG runs it.

`sage_transform` runs dbt through cosmos' DBT_RUNNER mode, in the Airflow task's own process. The
tests ran every dbt command as a subprocess instead, and each one paid dbt's import (about 5 s of
CPU on a 2-core machine) and, in a new target directory, a full parse (about 13 s of CPU). Some
80 commands a suite run made that a third of the suite's CPU, and CI ran past its 25 minutes.

``run_dbt`` invokes ``dbtRunner`` here (imported once per pytest worker), one command at a time,
with the command's environment set on this process for its duration. A new target directory
starts from the partial-parse file the last command on the same project left, and dbt checks it
itself: a different database, target, profile or set of vars still gets a full parse.

The result is a ``subprocess.CompletedProcess`` as before: ``returncode`` 0 on success, 1 when a
node failed and 2 when dbt raised, and ``stdout`` the lines dbt prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PARTIAL_PARSE = "partial_parse.msgpack"
_LOCK = threading.Lock()  # dbt keeps global state (flags, adapters): one command at a time
_LAST_PARSE: dict[Path, Path] = {}  # project dir -> the partial-parse file its last command left


@contextlib.contextmanager
def _environment(env: Mapping[str, str], cwd: Path) -> Iterator[None]:
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _option(args: list[str], name: str) -> Path | None:
    return Path(args[args.index(name) + 1]).resolve() if name in args else None


def run_dbt(args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``dbt <args>`` in this process with ``env`` as its environment; ``args`` name the
    project, profiles, target and log paths as on the command line."""
    from dbt.cli.main import dbtRunner

    project = _option(args, "--project-dir") or Path.cwd()
    target = _option(args, "--target-path") or project / "target"
    lines: list[str] = []

    def printed(event: Any) -> None:
        if event.info.level in ("info", "warn", "error") and event.info.msg:
            lines.append(str(event.info.msg))

    with _LOCK, _environment(env, cwd or project):
        last = _LAST_PARSE.get(project)
        if last is not None and last.exists() and not (target / PARTIAL_PARSE).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(last, target / PARTIAL_PARSE)
        result = dbtRunner(callbacks=[printed]).invoke(list(args))
        if (target / PARTIAL_PARSE).exists():
            _LAST_PARSE[project] = target / PARTIAL_PARSE
    if result.exception is not None:
        lines.append(f"{type(result.exception).__name__}: {result.exception}")
    code = 0 if result.success else 2 if result.exception is not None else 1
    return subprocess.CompletedProcess(["dbt", *args], code, "\n".join(lines) + "\n", "")
