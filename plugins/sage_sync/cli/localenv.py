"""The checkout's settings for ``python -m sage_sync`` run from a fresh shell.

Every make target writes ``.local/env.sh`` (the warehouse, the Fernet key, Airflow's metadata
database that holds the ``sage_default`` connection) and sources it; a user who types the CLI
command from the README has not. So the CLI reads that file itself and takes from it only the
variables the environment does not already set: a configured deployment always wins.

While ``make airflow`` runs the demo's fake Sage, it writes that Sage's connection to
``.local/demo-sage.sh`` (and removes it on exit), so ``authorize-url`` and ``connect`` work in
the demo's settings too; that file is read after ``env.sh``, under the same rule.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import MutableMapping
from pathlib import Path

# plugins/sage_sync/cli/localenv.py -> the checkout's root
ROOT = Path(__file__).resolve().parents[3]
ENV_FILE_VARIABLE = "SAGE_ENV_FILE"
# Written by scripts/standalone.py while the demo's fake Sage runs: its `sage_default` connection.
DEMO_SAGE_FILE = ROOT / ".local" / "demo-sage.sh"


def env_file() -> Path:
    """``$SAGE_ENV_FILE``, else the checkout's ``.local/env.sh``."""
    return Path(os.environ.get(ENV_FILE_VARIABLE) or ROOT / ".local" / "env.sh")


def parse_exports(text: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of a shell file (values shell-quoted), nothing else."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:  # `export NAME=value`
            name, _, value = words[1].partition("=")
            if name.isidentifier():
                values[name] = value
    return values


def load_missing(environ: MutableMapping[str, str] | None = None, path: Path | None = None) -> list[str]:
    """Set the file's variables that ``environ`` lacks; returns their names (none without a file).

    Without ``path``: the checkout's settings file, then the running demo's Sage connection.
    """
    environ = os.environ if environ is None else environ
    added: list[str] = []
    for found in [path] if path else [env_file(), DEMO_SAGE_FILE]:
        if not found.is_file():
            continue
        values = parse_exports(found.read_text())
        for name in [n for n in values if n not in environ]:
            environ[name] = values[name]
            added.append(name)
    return added
