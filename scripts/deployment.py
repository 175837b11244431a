"""``python scripts/deployment.py up|down|status``: the CeleryExecutor deployment on this machine, no Docker.

It runs the processes ``docker-compose.yaml`` runs, with the settings of ``scripts/deploy_settings.py``
(the list compose is checked against): Airflow's api-server, scheduler, dag-processor and triggerer,
and two ``airflow celery worker`` processes with distinct hostnames; PostgreSQL (from
``.local/env.sh``) holds the metadata and the Celery results, Redis is the broker.

Why a Redis of its own: several checkouts (and other projects) share the machine's Redis on 6379;
a Celery broker there would mix their queues unless every name were prefixed. So ``up`` starts a
``redis-server`` on a free port, bound to 127.0.0.1, with no persistence, and ``down`` stops it.

Every process is started in a session of its own (``setsid``: its process group is its pid), and
``.local/deploy/state.json`` records the groups. ``down`` signals exactly those groups (Airflow's
processes fork children: killing only the parent would leave them running), after checking each
pid still runs the command it was started with, so a recycled pid is never touched.

``up`` returns once the api-server reports the metadata DB, scheduler, triggerer and dag-processor
healthy at ``/api/v2/monitor/health`` and every worker answers a Celery ping.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkout_lock
import deploy_settings as settings
from localpg import LOCAL, ROOT

from sage_sync.core.pools import SAGE_API, SAGE_HISTORY

BIN = Path(sys.executable).parent
DEFAULT_STATE_DIR = LOCAL / "deploy"
CELERY_APP = "airflow.providers.celery.executors.celery_executor_utils.app"


# What the passing of a day does to the scheduler's bookkeeping, for the deployment test and
# benchmark (parameter: the DAG ids): each DAG's next run, its logical date, data interval and due
# time, moves to now. Moving only the due time is not enough: the scheduler does not schedule a run
# whose logical date (the company's next start time, in the nightly window) is still in the future.
NEXT_RUN_DUE_NOW_SQL = (
    "update dag set next_dagrun = now(), next_dagrun_data_interval_start = now(), "
    "next_dagrun_data_interval_end = now(), next_dagrun_create_after = now() "
    "where dag_id = any(%s) and (next_dagrun_create_after > now() or next_dagrun > now())"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_hostname(index: int) -> str:
    """Celery hostname of worker ``index`` (1-based); task_instance.hostname shows it."""
    return f"worker{index}@{socket.gethostname()}"


@dataclass
class Deployment:
    """A running deployment: where its state lives, its environment and its processes."""

    state_dir: Path
    env: dict[str, str]
    api_url: str
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def save(self) -> None:
        # Secrets stay out of the state file: it only needs to find and stop the processes.
        data = {
            "api_url": self.api_url,
            "processes": self.processes,
            "env": {k: v for k, v in self.env.items() if k in _RECORDED_ENV},
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)  # stopping must work even if it was removed
        self.state_file.write_text(json.dumps(data, indent=2))

    def start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """Start ``command`` in a new session, logging to ``<state_dir>/logs/<name>.log``."""
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                command,
                env={**self.env, **(extra_env or {})},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "command": command,
            "extra_env": extra_env or {},
            "start_ticks": _start_ticks(proc.pid),
            "log": str(logs / f"{name}.log"),
            "started_at": time.time(),
        }
        self.save()
        return self.processes[name]

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop one recorded process group (``sig`` first, SIGKILL after ``timeout``)."""
        proc = self.processes.pop(name, None)
        self.save()
        if proc is not None:
            _stop_group(proc, sig, timeout)

    def kill(self, name: str) -> None:
        """SIGKILL one process group at once, as a crash would (no clean shutdown)."""
        self.stop(name, signal.SIGKILL, timeout=10.0)

    def restart(self, name: str) -> None:
        """Stop a process cleanly and start it again with the same command."""
        command, extra_env = list(self.processes[name]["command"]), self.processes[name].get("extra_env")
        self.stop(name)
        self.start(name, command, extra_env)

    def workers(self) -> list[str]:
        return sorted(n for n in self.processes if n.startswith("worker"))

    def airflow(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command in the deployment's environment."""
        done = subprocess.run(
            [str(BIN / "airflow"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done


# Non-secret values worth keeping for `status` and for tools that attach to a running deployment.
_RECORDED_ENV = {
    "AIRFLOW_HOME",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "SAGE_REGISTRY_SNAPSHOT",
}


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has exited


def _is_ours(proc: dict[str, Any]) -> bool:
    """The recorded pid is alive and is the process started then (not a recycled pid). Airflow and
    Celery rewrite their command lines (setproctitle), so the start time is what identifies them."""
    return _start_ticks(int(proc["pid"])) == proc.get("start_ticks")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> set[psutil.Process]:
    """Every live process below ``pid`` (none when it is gone)."""
    try:
        return set(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return set()


def kill_strays(procs: set[psutil.Process]) -> None:
    """SIGKILL those of ``procs`` still running, and wait for them.

    Why: Airflow's task supervisor puts each task process in a process group of its own
    (``os.setpgid``), so signalling a worker's (or ``airflow standalone``'s) group leaves a running
    task behind, reparented and still writing: a dbt build went on creating views in a database the
    next test had emptied ("relation ... already exists"). ``is_running`` also checks the start time,
    so a recycled pid is never touched."""
    alive = [p for p in procs if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


def _stop_group(proc: dict[str, Any], sig: int, timeout: float) -> None:
    pgid = int(proc["pgid"])
    if not _group_alive(pgid):
        return
    if _start_ticks(pgid) is not None and not _is_ours(proc):
        print(f"pid {pgid} is no longer {proc['command'][:3]}: left alone", file=sys.stderr)
        return
    # The tree is read while its leader lives: once it exits its children are reparented.
    tree = descendants(int(proc["pid"]))
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        kill_strays(tree)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pgid):
        tree |= descendants(int(proc["pid"]))
        _reap(int(proc["pid"]))
        time.sleep(0.2)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        while _group_alive(pgid) and time.monotonic() < deadline + 10:
            _reap(int(proc["pid"]))
            time.sleep(0.2)
    kill_strays(tree)


def run_in_foreground(command: list[str], env: dict[str, str], stop_timeout: float = 30.0) -> int:
    """Run ``command`` in a session of its own until it exits, or until Ctrl-C or SIGTERM stop it,
    its process group and every task process below it (`make airflow`'s `airflow standalone`).

    Ctrl-C reached standalone's group but not the task processes Airflow moves to groups of their
    own, and `make airflow` left orphans running; here the stop is :func:`_stop_group`'s.
    """
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    record = {"pid": proc.pid, "pgid": proc.pid, "start_ticks": _start_ticks(proc.pid), "command": command}

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print("\nstopping Airflow and every process it started ...", file=sys.stderr, flush=True)
        _stop_group(record, signal.SIGTERM, stop_timeout)
        proc.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _reap(pid: int) -> None:
    """Collect a child that exited (when this process started it), so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def build_env(state_dir: Path, overrides: dict[str, str] | None = None) -> tuple[dict[str, str], int]:
    """The deployment's environment: ``.local/env.sh`` (already in ``os.environ``), the shared settings,
    then the site values this script picks; returns it with the api-server's port."""
    state_dir.mkdir(parents=True, exist_ok=True)
    secret_file = state_dir / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    api_port = free_port()
    env = dict(os.environ)
    env.update(settings.SHARED)
    metadata = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    home = state_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "SAGE_REGISTRY_SNAPSHOT": str(home / "sage_companies.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "SAGE_AIRFLOW_API_URL": f"http://127.0.0.1:{api_port}",
            "SAGE_AIRFLOW_METADATA_DB_URL": metadata,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
            # Celery's database result backend is SQLAlchemy too: same server and driver as the metadata DB.
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata}",
            # Log-serving sub-processes listen on fixed ports by default (8793/8794), which other
            # Airflows on the machine hold: free ones here (the workers skip theirs, see `up`).
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
        }
    )
    env.update(overrides or {})
    return env, api_port


def _start_redis(dep: Deployment) -> None:
    if dep.env.get("AIRFLOW__CELERY__BROKER_URL"):
        return  # a broker given by the caller (e.g. a managed Redis): use it, start none
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit(
            "redis-server not found: install it (Debian: apt-get install redis-server) "
            "or set AIRFLOW__CELERY__BROKER_URL to a Redis you run"
        )
    port = free_port()
    dep.start(
        "redis",
        [
            redis,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
    )
    dep.env["AIRFLOW__CELERY__BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"redis-server did not answer on {port}; see {dep.processes['redis']['log']}")


def _prepare(dep: Deployment, migrate: bool, pool_slots: int, history_pool_slots: int) -> None:
    """What compose's airflow-init does: metadata schema, the pools, the warehouse schemas."""
    if migrate:
        dep.airflow("db", "migrate", timeout=600)
    sizes = ["--slots", f"{SAGE_API.name}={pool_slots}", "--slots", f"{SAGE_HISTORY.name}={history_pool_slots}"]
    for module in (
        ["sage_sync.orchestration.pools", *sizes],
        ["sage_sync", "migrate"],
    ):
        subprocess.run(
            [str(BIN / "python"), "-m", *module], env=dep.env, cwd=ROOT, check=True, capture_output=True, timeout=300
        )


def health(dep: Deployment) -> dict[str, Any]:
    """The api-server's health answer ({} when it does not answer yet)."""
    try:
        response = requests.get(f"{dep.api_url}/api/v2/monitor/health", timeout=5)
        return response.json() if response.ok else {}
    except (requests.RequestException, ValueError):
        return {}


def _components_healthy(answer: dict[str, Any]) -> bool:
    wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((answer.get(name) or {}).get("status") == "healthy" for name in wanted)


def ping_workers(dep: Deployment, timeout: float = 5.0) -> set[str]:
    """Hostnames of the Celery workers that answer a ping through the broker."""
    done = subprocess.run(
        [str(BIN / "celery"), "--app", CELERY_APP, "inspect", "ping", "--json", "--timeout", str(timeout)],
        env=dep.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    except (ValueError, IndexError):
        return set()
    return {name for name, reply in answer.items() if (reply or {}).get("ok") == "pong"}


def wait_healthy(dep: Deployment, timeout: float = 240.0) -> None:
    """Block until every component reports healthy and every worker answers a ping."""
    deadline = time.monotonic() + timeout
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _check_alive(dep)
        answer = health(dep)
        if _components_healthy(answer):
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"deployment not healthy after {timeout:.0f}s: {answer}")
    wanted = {worker_hostname(int(n.removeprefix("worker"))) for n in dep.workers()}
    seen: set[str] = set()
    while time.monotonic() < deadline:
        _check_alive(dep)
        seen = ping_workers(dep)
        if wanted <= seen:
            return
        time.sleep(1)
    raise RuntimeError(f"workers {sorted(wanted - seen)} did not answer a ping in {timeout:.0f}s")


def _check_alive(dep: Deployment) -> None:
    for name, proc in dep.processes.items():
        if not _is_ours(proc):
            tail = Path(proc["log"]).read_text(errors="replace")[-3000:] if Path(proc["log"]).exists() else ""
            raise RuntimeError(f"{name} exited during start-up; end of {proc['log']}:\n{tail}")


def start_worker(dep: Deployment, index: int) -> None:
    """Start Celery worker ``index``: its own hostname, also on the tasks it runs (task_instance.hostname,
    see scripts/deploy_hostname.py), and no log server of its own (the log files are local, the
    api-server reads them from the shared log folder)."""
    name = worker_hostname(index)
    dep.start(
        f"worker{index}",
        [str(BIN / "airflow"), *settings.WORKER_COMMAND, "--celery-hostname", name, "--skip-serve-logs"],
        {"SAGE_WORKER_HOSTNAME": name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scripts.deploy_hostname.hostname"},
    )


def up(
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    workers: int = settings.WORKERS,
    overrides: dict[str, str] | None = None,
    migrate: bool = True,
    timeout: float = 240.0,
    pool_slots: int = SAGE_API.slots,
    history_pool_slots: int = SAGE_HISTORY.slots,
) -> Deployment:
    """Start the whole deployment and wait until it is healthy; returns it."""
    existing = load(state_dir)
    if existing is not None and any(_group_alive(int(p["pgid"])) for p in existing.processes.values()):
        raise SystemExit(f"a deployment is already running from {state_dir} (stop it: make deploy-down)")
    env, api_port = build_env(state_dir, overrides)
    dep = Deployment(state_dir, env, f"http://127.0.0.1:{api_port}")
    try:
        if not env.get("AIRFLOW_CONN_SAGE_DEFAULT"):
            _start_fake_sage(dep)
        _start_redis(dep)
        _prepare(dep, migrate, pool_slots, history_pool_slots)
        dep.start("api-server", [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(api_port)])
        for name, command in settings.PROCESSES[1:]:
            dep.start(name, [str(BIN / "airflow"), *command])
        for index in range(1, workers + 1):
            start_worker(dep, index)
        wait_healthy(dep, timeout)
    except BaseException:
        down(state_dir)
        raise
    return dep


def _start_fake_sage(dep: Deployment) -> None:
    """No Sage app configured: run the fake Sage, as compose's `demo` profile does."""
    port = free_port()
    dep.start("fake-sage", [str(BIN / "python"), "-m", "sandbox.fake_sage", "--port", str(port), "--seed", "42"])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/_admin/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    dep.env["AIRFLOW_CONN_SAGE_DEFAULT"] = json.dumps(
        {
            "conn_type": "http",
            "host": f"{base}/v3.1",
            "login": "demo-client",
            "password": "demo-secret",
            "extra": {
                "authorize_url": f"{base}/oauth2/auth/central?filter=apiv3.1",
                "token_url": f"{base}/token",
                "revoke_url": f"{base}/revoke",
                "redirect_uri": f"{dep.api_url}/sage/callback",
            },
        }
    )


def load(state_dir: Path = DEFAULT_STATE_DIR) -> Deployment | None:
    """The deployment recorded in ``state_dir`` (its environment is only the recorded part)."""
    path = state_dir / "state.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Deployment(state_dir, {**os.environ, **data.get("env", {})}, data["api_url"], data["processes"])


def down(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop every process group the deployment started (workers first, Redis last); returns their names."""
    dep = load(state_dir)
    if dep is None:
        return []
    order = list(dep.processes)
    # In three waves, each wave's processes stopped at once (one at a time took about 30 s):
    # the workers (so no task starts while the rest goes), then Airflow's other processes, then
    # what they depend on.
    waves = [
        [n for n in order if n.startswith("worker")],
        [n for n in order if not n.startswith("worker") and n not in ("redis", "fake-sage")],
        [n for n in order if n in ("redis", "fake-sage")],
    ]
    for wave in waves:
        procs = [dep.processes[n] for n in wave]
        with ThreadPoolExecutor(max_workers=max(len(procs), 1)) as pool:
            list(pool.map(lambda proc: _stop_group(proc, signal.SIGTERM, 30.0), procs))
        for name in wave:
            dep.processes.pop(name, None)
        dep.save()
    dep.state_file.unlink(missing_ok=True)
    return [name for wave in waves for name in wave]


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """Each recorded process (alive or not), the api-server's health and the workers that answer."""
    dep = load(state_dir)
    if dep is None:
        return {"running": False}
    procs = {
        name: {"pid": p["pid"], "alive": _group_alive(int(p["pgid"])) and _is_ours(p)}
        for name, p in dep.processes.items()
    }
    return {
        "running": any(p["alive"] for p in procs.values()),
        "api_url": dep.api_url,
        "processes": procs,
        "health": health(dep),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/deployment.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--workers", type=int, default=settings.WORKERS)
    parser.add_argument(
        "--pool-slots",
        type=int,
        default=SAGE_API.slots,
        help=f"slots of the {SAGE_API.name} pool (concurrent Sage-calling tasks of the daily runs)",
    )
    parser.add_argument(
        "--history-pool-slots",
        type=int,
        default=SAGE_HISTORY.slots,
        help=f"slots of the {SAGE_HISTORY.name} pool (concurrent Sage-calling tasks of first syncs and backfills)",
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.action == "up":
        if args.state_dir == DEFAULT_STATE_DIR:
            # This checkout's own Airflow database: not while `make airflow` or `make demo` runs on
            # it (a `make demo` started later finds this deployment's process groups and refuses).
            with checkout_lock.exclusive("make deploy-up", state=args.state_dir / "state.json"):
                pass
        began = time.monotonic()
        dep = up(
            args.state_dir,
            workers=args.workers,
            pool_slots=args.pool_slots,
            history_pool_slots=args.history_pool_slots,
        )
        print(
            f"deployment healthy in {time.monotonic() - began:.0f}s: {dep.api_url} "
            f"(user admin; password in {dep.env['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated); "
            f"{len(dep.workers())} Celery workers; logs in {args.state_dir / 'logs'}; stop: make deploy-down"
        )
    elif args.action == "down":
        stopped = down(args.state_dir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        print(json.dumps(status(args.state_dir), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
