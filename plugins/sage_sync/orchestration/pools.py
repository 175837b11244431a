"""``python -m sage_sync.orchestration.pools``: set every pool ``core.pools`` declares in Airflow.

The one way a deployment gets its pools: the Makefile (``airflow-db``, ``test``), compose's
``airflow-init`` and ``scripts/deployment.py`` all run it, so the name, the slots and the
description are written in one place (``core.pools``). ``--slots NAME=N`` sizes a pool for one
deployment (the deployment test runs with fewer slots than its task slots). Setting a pool that
exists updates it, as ``airflow pools set`` does (the same call, in this process).

Airflow is imported inside :func:`set_pools` only: the rest of the package, and anything that
imports this module to read it, runs without Airflow's metadata database.
"""

from __future__ import annotations

import argparse
import sys

from sage_sync.core.pools import POOLS, Pool


def sized(overrides: dict[str, int]) -> list[Pool]:
    """The declared pools, with the slots of those named in ``overrides`` replaced."""
    unknown = set(overrides) - {p.name for p in POOLS}
    if unknown:
        raise SystemExit(f"no pool declared as {sorted(unknown)} (sage_sync.core.pools: {[p.name for p in POOLS]})")
    return [Pool(p.name, overrides.get(p.name, p.slots), p.description) for p in POOLS]


def set_pools(pools: list[Pool]) -> None:
    """Create or update each pool in Airflow's metadata database."""
    from airflow.models.pool import Pool as AirflowPool  # noqa: PLC0415 - see the module docstring

    for pool in pools:
        AirflowPool.create_or_update_pool(pool.name, pool.slots, pool.description, include_deferred=False)


def _slots(text: str) -> tuple[str, int]:
    name, _, slots = text.partition("=")
    if not name or not slots.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=SLOTS, got {text!r}")
    return name, int(slots)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sage_sync.orchestration.pools", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--slots", type=_slots, action="append", default=[], metavar="NAME=N", help="resize one pool")
    pools = sized(dict(parser.parse_args(argv).slots))
    set_pools(pools)
    for pool in pools:
        print(f"pool {pool.name}: {pool.slots} slots", file=sys.stderr)


if __name__ == "__main__":
    main()
