"""HTTP benchmarks with wrk over loopback: commands, customer-360 queries, and the raw baseline.

The server under test is `crm api --workers N` (a real process tree, as in production) on the
bench's PostgreSQL; the load generator is wrk (Debian package `wrk`; `make bench` installs it)
with the Lua scripts in bench/wrk/. Every figure comes from one wrk run of `seconds` with
`connections` connections on 2 threads; wrk's latency histogram gives p50 and p99.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

WRK_DIR = Path(__file__).resolve().parent / "wrk"
KEY = "bench-admin-key"


@dataclass(frozen=True)
class Load:
    """One wrk run: requests per second, latency percentiles, failures; from `http_figures`, also
    the CPU per request of the API processes and of PostgreSQL."""

    per_s: float
    p50_ms: float
    p99_ms: float
    failures: int
    api_cpu_ms: float | None = None
    pg_cpu_ms: float | None = None


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.NoSuchProcess:
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU so far of a process and its children (the API's master and workers)."""
    children = psutil.Process(pid).children(recursive=True)
    return cpu_s(pid) + sum(cpu_s(child.pid) for child in children)


def postgres_pids(workdir: Path) -> list[int]:
    """A benchmark's own PostgreSQL server (its postmaster runs with -D under workdir) and its backends."""
    for proc in psutil.process_iter(["cmdline"]):
        if str(workdir) in " ".join(proc.info["cmdline"] or ()) and "postgres" in proc.name():
            return [proc.pid, *(child.pid for child in proc.children(recursive=True))]
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """`crm api --workers N` on a free port, against the given database; a context manager. `env`:
    more environment for `crm api` and its workers (on top of this process's)."""

    def __init__(self, database_url: str, workers: int, env: dict[str, str] | None = None) -> None:
        self.port, self.workers = free_port(), workers
        env = {**os.environ, "CRM_DATABASE_URL": database_url, "CRM_API_KEYS": f"{KEY}=admin",
               "CRM_HTTP_PORT": str(self.port), "CRM_KAFKA_BOOTSTRAP": "off", **(env or {})}
        crm = Path(sys.executable).with_name("crm")
        self.process = subprocess.Popen([str(crm), "--log-level", "WARNING", "api", "--workers", str(workers)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiServer:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "crm api exited at start"
            try:
                with urllib.request.urlopen(self.base + "/health/live", timeout=1):
                    pass
                time.sleep(1.0 if self.workers > 1 else 0)  # every worker up, not only the first
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("crm api did not start")

    def __exit__(self, *_: object) -> None:
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)


def wrk(base: str, script: str, *, seconds: int, connections: int, env: dict[str, str] | None = None) -> Load:
    """Run wrk with one of bench/wrk/*.lua and read the JSON line its done() prints."""
    run_env = {**os.environ, "CRM_BENCH_WRK": str(WRK_DIR), "CRM_BENCH_KEY": KEY, **(env or {})}
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(WRK_DIR / script), base], env=run_env, capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout
    figures = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return Load(per_s=figures["requests"] / (figures["duration_us"] / 1e6), p50_ms=figures["p50_us"] / 1000,
                p99_ms=figures["p99_us"] / 1000, failures=figures["socket_errors"] + figures["non_2xx"])


def customer_ids_file(pool, limit: int = 10_000) -> str:  # type: ignore[no-untyped-def]
    """Ids of customers in the read model, one per line, for queries.lua."""
    with pool.connection() as conn:
        ids = [str(r[0]) for r in conn.execute("SELECT id FROM read_customers.customers LIMIT %s", (limit,))]
    assert ids, "no customers in the read model"
    handle, path = tempfile.mkstemp(prefix="crm-bench-ids-", suffix=".txt")
    os.write(handle, "\n".join(ids).encode())
    os.close(handle)
    return path


def http_figures(database_url: str, pool, workers: tuple[int, ...], seconds: int, connections: int,  # type: ignore[no-untyped-def]
                 postgres_dir: Path) -> dict[int, dict[str, Load]]:
    """Per worker count: raw baseline, queries (read models must be caught up), then commands. Each
    with the CPU per request, user and system, of `crm api` (its supervisor and workers) and of
    the PostgreSQL server whose data lives under `postgres_dir` (postmaster and backends)."""
    ids = customer_ids_file(pool)
    figures: dict[int, dict[str, Load]] = {}
    try:
        for count in workers:
            with ApiServer(database_url, count) as server:
                wrk(server.base, "raw.lua", seconds=2, connections=connections)  # warm-up, not reported
                figures[count] = {kind: measured(server, script, postgres_dir, seconds=seconds, connections=connections,
                                                 env={"CRM_BENCH_IDS": ids})
                                  for kind, script in (("raw", "raw.lua"), ("queries", "queries.lua"),
                                                       ("commands", "commands.lua"))}
    finally:
        os.unlink(ids)
    return figures


def measured(server: ApiServer, script: str, postgres_dir: Path | None = None, *, seconds: int,
             connections: int, env: dict[str, str] | None = None) -> Load:
    """One wrk run with the CPU per request it cost the API processes and, given its data dir,
    PostgreSQL (psutil: the CPU of the processes alive at the end, less theirs at the start)."""
    pg_pids = (lambda: postgres_pids(postgres_dir)) if postgres_dir is not None else list
    api, pg = tree_cpu_seconds(server.process.pid), {pid: cpu_s(pid) for pid in pg_pids()}
    load = wrk(server.base, script, seconds=seconds, connections=connections, env=env)
    api = tree_cpu_seconds(server.process.pid) - api
    pg_cpu = sum(cpu_s(pid) - pg.get(pid, 0.0) for pid in pg_pids())
    requests = load.per_s * seconds
    return replace(load, api_cpu_ms=1000 * api / requests,
                   pg_cpu_ms=1000 * pg_cpu / requests if postgres_dir is not None else None)
