"""The deployment's Airflow pools, declared once.

Everything that names a pool or its size reads this module: the DAG tasks that take a slot
(``orchestration.defaults``), ``python -m sage_sync.orchestration.pools`` (which sets every pool
declared here; the Makefile, docker-compose.yaml and ``scripts/deployment.py`` run it), the
shared Sage request budget's bucket (``warehouse.ratelimit``, named after the pool it goes with)
and the benches. It lives in ``core`` because the warehouse layer reads the name too; setting
the pools in Airflow is ``orchestration``'s job. Which pool a task takes is its lane's
(``core.lanes``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    """One Airflow pool: its name, its slots, and the description Airflow's UI shows."""

    name: str
    slots: int
    description: str


# Every Sage-calling task of every company's daily run takes a slot of it; the history lane's tasks
# (first syncs, backfills: see core.lanes) take one of SAGE_HISTORY instead. Together they bound the
# concurrent requests to Sage, which allows at most 150 per app (keep the sum of the slots at or
# below that; see warehouse.ratelimit).
SAGE_API = Pool("sage_api", 8, "Concurrent Sage API calls of the daily runs, all companies")
# Small on purpose: a first sync's task holds its slot (and a worker slot) for hours, and the lane
# gets only its share of the request rate, which a few tasks already use up.
SAGE_HISTORY = Pool("sage_history", 4, "Concurrent Sage API calls of first syncs and backfills, all companies")
POOL = SAGE_API.name  # the daily lane's pool: the name the DAG tasks and the benches use

POOLS: tuple[Pool, ...] = (SAGE_API, SAGE_HISTORY)
