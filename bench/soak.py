"""`make soak`: the whole system under a steady command load for 10 minutes (issue 9).

What runs: a fresh embedded PostgreSQL in a temp dir; `crm api --workers N` (bench.load.ApiServer,
N = 2, the worker count of the best commands figure in BENCHMARKS.md); `crm projections` and
`crm relay` (with its local tansu broker, in memory) as their own processes, as in production.

The load is open-loop: `POST /v1/customers` (the commands benchmark's RegisterCustomer, a
distinct body each) scheduled at a fixed rate whatever the responses do, from an asyncio client
in this process, at most 32 requests in flight (wrk's 32 connections in the commands benchmark);
a request that finds no free slot waits in the client. Its latency runs from its scheduled time,
so a slow server shows up as latency, not as a lower offered rate, and a request not answered
within 10 s of that time is a timeout. Every non-2xx answer, transport error and timeout counts.

Every 10 s: the resident memory (RSS) of each process, the store's head, each projection's and
the relay's tracked position (GET /health; straight from the database when /health does not
answer within 5 s) and how old the oldest event it has not applied is. Also the CPU seconds of
each process, of the soak's PostgreSQL and of the whole machine (the rest is other people's work).

Criteria (PASS/FAIL): no errors; RSS growth < 10 % for each crm process from the sample at the
warm-up mark (60 s, or half the run if shorter) to the last sample (the tansu broker keeps every
message in memory by design, so it is reported but not judged); each follower's lag bounded: its
lag at the end of the load under 1 s worth of events, and the least-squares slope of its lag
after the warm-up under 1 % of the event rate (a follower falling behind grows its lag linearly).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import psutil
import uvloop
from psycopg_pool import ConnectionPool

from bench.load import KEY, ApiServer, cpu_s, postgres_pids
from bench.run import _cores, _cpu
from crm.infra.event_store import open_event_store
from crm.infra.logging import configure_logging
from crm.infra.postgres import start_embedded
from crm.infra.read_store import PgReadStore
from crm.infra.relay import lag

HERE = Path(__file__).resolve().parent
SAMPLE_S = 10
WARMUP_S = 60
TIMEOUT_S = 10.0
IDLE_S = 3.0  # uvicorn closes keep-alive connections idle for 5 s: reuse only younger ones
NOT_JUDGED = ("broker",)


def default_rate() -> float:
    """Half the benchmarked command rate (bench/results.json), else 330/s."""
    try:
        return json.loads((HERE / "results.json").read_text())["commands_per_s"] / 2
    except (OSError, KeyError, TypeError, ValueError):
        return 330.0


@contextlib.contextmanager
def crm_follower(args: list[str], url: str, log_path: Path) -> Iterator[subprocess.Popen]:
    """`crm ARGS` as its own process group on the soak database; its log (WARNING and up) kept."""
    env = {k: v for k, v in os.environ.items() if k != "CRM_KAFKA_BOOTSTRAP"}  # unset: local broker
    env["CRM_DATABASE_URL"] = url
    with log_path.open("wb") as log_file:
        child = subprocess.Popen([str(Path(sys.executable).with_name("crm")), "--log-level", "WARNING", *args],
                                 env=env, stdout=log_file, stderr=log_file, start_new_session=True)
        try:
            yield child
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, 15)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, 9)


class Http:
    """A small HTTP/1.1 keep-alive client on asyncio streams (cheap enough to share 2 cores)."""

    def __init__(self, port: int) -> None:
        self.port, self.idle, self.opened = port, [], 0

    async def request(self, method: str, path: str, body: bytes = b"", auth: bool = False,
                      timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        if auth:
            head += f"Authorization: Bearer {KEY}\r\n"
        async with asyncio.timeout(timeout):
            reader, writer = await self._connection()
            try:
                writer.write(head.encode() + b"\r\n" + body)
                status, payload, keep = await _response(reader)
            except BaseException:
                writer.close()
                raise
        if keep:
            self.idle.append((time.monotonic(), reader, writer))
        else:
            writer.close()
        return status, payload

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:  # the most recently used first
            since, reader, writer = self.idle.pop()
            if time.monotonic() - since < IDLE_S and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        payload = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        payload = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            payload += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        return status, await reader.read(), False
    return status, payload, headers.get("connection") != "close"


class Soak:
    def __init__(self, http: Http, rate: float, seconds: int, connections: int) -> None:
        self.http, self.rate, self.seconds = http, rate, seconds
        self.slots = asyncio.Semaphore(connections)  # requests in flight, as wrk's connections
        self.latencies: list[float] = []   # from the scheduled time, seconds
        self.service: list[float] = []     # from the send, seconds
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.sent = 0

    async def drive(self, started: float) -> None:
        """Open loop: request k is sent at started + k / rate, late or not."""
        loop, tasks = asyncio.get_running_loop(), set()
        total = int(self.rate * self.seconds)
        for k in range(total):
            at = started + k / self.rate
            if (wait := at - loop.time()) > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(self._command(k, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            self.sent += 1
        if tasks:
            await asyncio.wait(tasks)

    async def _command(self, k: int, at: float) -> None:
        loop = asyncio.get_running_loop()
        body = json.dumps({"name": f"Soak {k}", "email": f"s{k}@example.com", "region": "North"}).encode()
        sent = None
        try:
            async with asyncio.timeout_at(at + TIMEOUT_S):  # a client's deadline, queueing included
                async with self.slots:
                    sent = loop.time()
                    status, payload = await self.http.request("POST", "/v1/customers", body, auth=True)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as error:
            kind = type(error).__name__ if sent is not None else "TimeoutError (queued in the client, never sent)"
            self._error(kind, repr(error))
            return
        done = loop.time()
        self.latencies.append(done - at)
        self.service.append(done - sent)
        self.statuses[str(status)] += 1
        if not 200 <= status < 300:
            self._error(str(status), payload[:300].decode(errors="replace"))

    def _error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{kind}: {detail}")


def processes(api: ApiServer, followers: dict[str, subprocess.Popen]) -> dict[int, str]:
    """pid -> role, for the API's process tree and each follower's (with the relay's broker)."""
    roles: dict[int, str] = {api.process.pid: "api supervisor"}
    workers = [p for p in psutil.Process(api.process.pid).children(recursive=True)
               if "resource_tracker" not in " ".join(p.cmdline())]
    for n, worker in enumerate(sorted(workers, key=lambda p: p.pid), start=1):
        roles[worker.pid] = f"api worker {n}"
    for name, child in followers.items():
        roles[child.pid] = name
        for n, grandchild in enumerate(psutil.Process(child.pid).children(recursive=True), start=1):
            roles[grandchild.pid] = f"{name} broker (tansu)" if "tansu" in " ".join(grandchild.cmdline()) \
                else f"{name} child {n}"
    return roles


def rss_mib(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return None


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


async def sample(http: Http, store: Any, reads: PgReadStore, roles: dict[int, str], soak: Soak, t: float) -> dict[str, Any]:
    try:
        status, payload = await http.request("GET", "/health", timeout=5.0)
        health = json.loads(payload) if status == 200 else {}
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        status, health = type(error).__name__, {}
    if status == 200:
        positions = dict(health["projections"])
        if health.get("relay"):
            positions["relay"] = health["relay"]["position"]
    else:  # /health did not answer in time: the same figures straight from the database
        health["position"] = await asyncio.to_thread(store.position)
        positions = await asyncio.to_thread(reads.positions)
        if (relay := await asyncio.to_thread(reads.relay_position)) is not None:
            positions["relay"] = relay
    lags = await asyncio.to_thread(lambda: {name: lag(store, position) for name, position in positions.items()})
    return {"t": round(t, 1), "head": health.get("position"), "requests": soak.sent,
            "rss_mib": {role: rss_mib(pid) for pid, role in roles.items()},
            "lag_events": {name: events for name, (events, _) in lags.items()},
            "lag_s": {name: round(seconds, 3) for name, (_, seconds) in lags.items()},
            "health_status": status, "loadavg_1m": round(os.getloadavg()[0], 2)}


def slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return 0.0
    return statistics.linear_regression([x for x, _ in points], [y for _, y in points]).slope


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def soak_run(url: str, workdir: Path, store: Any, api: ApiServer, followers: dict[str, subprocess.Popen],
                   rate: float, seconds: int, connections: int) -> dict[str, Any]:
    http = Http(api.port)
    reads = PgReadStore(ConnectionPool(url, min_size=1, max_size=2, kwargs={"options": "-c TimeZone=UTC"}))
    roles = processes(api, followers)
    soak = Soak(http, rate, seconds, connections)
    loop = asyncio.get_running_loop()
    cpu_start = {pid: cpu_s(pid) for pid in [*roles, os.getpid()]}
    postgres_start, busy_start = {pid: cpu_s(pid) for pid in postgres_pids(workdir)}, machine_busy_s()
    samples: list[dict[str, Any]] = []
    started = loop.time() + 0.5
    driver = asyncio.create_task(soak.drive(started))
    for k in range(seconds // SAMPLE_S + 1):
        await asyncio.sleep(max(0.0, started + k * SAMPLE_S - loop.time()))
        samples.append(await sample(http, store, reads, roles, soak, loop.time() - started))
        current = processes(api, followers)
        if gone := [roles[pid] for pid in set(roles) - set(current)]:  # exited (uvicorn restarts a dead worker)
            samples[-1]["processes_gone"] = gone
        roles.update({pid: role for pid, role in current.items() if pid not in roles})  # the broker starts late
        last = samples[-1]
        print(f"t={last['t']:>5.0f}s sent={soak.sent} errors={sum(soak.errors.values())} head={last['head']} "
              f"lag={last['lag_events']} rss={ {r: round(v or 0) for r, v in last['rss_mib'].items()} }",
              flush=True)
    await driver
    load_s = loop.time() - started
    cpu = {roles.get(pid, "soak client (this process)"): round(cpu_s(pid) - before, 1)
           for pid, before in cpu_start.items()}
    cpu["postgres (soak's server)"] = round(sum(cpu_s(pid) - postgres_start.get(pid, 0.0)
                                                for pid in postgres_pids(workdir)), 1)
    cpu["machine, all processes"] = round(machine_busy_s() - busy_start, 1)
    cpu["machine, not the soak's"] = round(cpu["machine, all processes"]
                                           - sum(v for k, v in cpu.items() if not k.startswith("machine")), 1)
    drain_started, head = time.monotonic(), store.position()
    drained: float | None = None
    while time.monotonic() - drain_started < 60:
        final = await sample(http, store, reads, roles, soak, loop.time() - started)
        if all(final["lag_events"].get(name, 1) == 0 for name in samples[-1]["lag_events"]) and final["head"] >= head:
            drained = round(time.monotonic() - drain_started, 1)
            break
        await asyncio.sleep(0.2)
    result = summarise(soak, samples, rate, seconds, load_s, cpu, drained, http.opened)
    result["lag_events_after_drain_wait"] = final["lag_events"]
    return result


def summarise(soak: Soak, samples: list[dict[str, Any]], rate: float, seconds: int, load_s: float,
              cpu: dict[str, float], drained: float | None, connections: int) -> dict[str, Any]:
    warmup = min(WARMUP_S, (seconds // 2) // SAMPLE_S * SAMPLE_S)
    base = next(s for s in samples if s["t"] >= warmup - 1)
    last = samples[-1]
    event_rate = (last["head"] - base["head"]) / max(1e-9, last["t"] - base["t"])
    memory = {}
    for role, end in last["rss_mib"].items():
        start = base["rss_mib"].get(role)
        growth = None if not start or end is None else (end - start) / start * 100
        memory[role] = {"rss_start_mib": None if start is None else round(start, 1),
                        "rss_end_mib": None if end is None else round(end, 1),
                        "growth_pct": None if growth is None else round(growth, 2),
                        "max_mib": round(max(s["rss_mib"].get(role) or 0 for s in samples), 1),
                        "judged": not any(word in role for word in NOT_JUDGED)}
    followers = {}
    for name in last["lag_events"]:
        after = [(s["t"], s["lag_events"][name]) for s in samples if s["t"] >= warmup - 1 and name in s["lag_events"]]
        followers[name] = {"max_lag_events": max(s["lag_events"].get(name, 0) for s in samples),
                           "max_lag_s": max(s["lag_s"].get(name, 0.0) for s in samples),
                           "final_lag_events": last["lag_events"][name], "final_lag_s": last["lag_s"][name],
                           "slope_events_per_s": round(slope(after), 3)}
    errors = sum(soak.errors.values())
    criteria = {
        "zero errors": errors == 0,
        f"RSS growth < 10 % from {warmup} s (every crm process)":
            all(m["growth_pct"] is not None and m["growth_pct"] < 10 for m in memory.values() if m["judged"]),
        "lag bounded (final < 1 s of events, slope < 1 % of event rate)":
            all(f["final_lag_events"] < max(1.0, event_rate) and f["slope_events_per_s"] < 0.01 * event_rate
                for f in followers.values()),
        "no process exited": not any("processes_gone" in s for s in samples),
    }
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.uname().machine}, {_cpu()}, {_cores()} cores, Python {sys.version.split()[0]}",
        "duration_s": seconds, "load_wall_s": round(load_s, 1), "target_rate_per_s": round(rate, 1),
        "achieved_rate_per_s": round(len(soak.latencies) / load_s, 1), "requests": soak.sent,
        "answered": len(soak.latencies), "statuses": dict(soak.statuses), "errors": errors,
        "errors_by_kind": dict(soak.errors), "error_samples": soak.error_samples,
        "latency_ms": {"p50": round(quantile(soak.latencies, 0.50) * 1000, 1),
                       "p99": round(quantile(soak.latencies, 0.99) * 1000, 1),
                       "max": round(max(soak.latencies, default=0) * 1000, 1),
                       "service_p99": round(quantile(soak.service, 0.99) * 1000, 1)},
        "loadavg_1m_mean": round(statistics.mean(s["loadavg_1m"] for s in samples), 2),
        "connections_opened": connections, "events_per_s": round(event_rate, 1),
        "events_written": last["head"], "warmup_s": warmup, "memory": memory, "followers": followers,
        "drained_after_load_s": drained, "cpu_s": cpu, "criteria": criteria, "pass": all(criteria.values()),
        "samples": samples,
    }


def table(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    rows = [("duration", f"{result['duration_s']} s of load (+ start-up and drain)"),
            ("target rate", f"{result['target_rate_per_s']:,} commands/s (open loop)"),
            ("achieved rate", f"{result['achieved_rate_per_s']:,} answered/s"),
            ("requests", f"{result['requests']:,} sent, {result['answered']:,} answered"),
            ("errors", f"{result['errors']} {result['errors_by_kind'] or ''}".strip()),
            ("latency", f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms (from scheduled time)"),
            ("events", f"{result['events_written']:,} in the log, {result['events_per_s']:,}/s after warm-up")]
    for role, m in result["memory"].items():
        rows.append((f"RSS {role}", f"{m['rss_start_mib']} → {m['rss_end_mib']} MiB ({m['growth_pct']:+} %)"
                                    f"{'' if m['judged'] else ', not judged'}"))
    for name, f in result["followers"].items():
        rows.append((f"lag {name}", f"max {f['max_lag_events']} events / {f['max_lag_s']} s; final "
                                    f"{f['final_lag_events']} / {f['final_lag_s']} s; slope {f['slope_events_per_s']} events/s"))
    rows.append(("caught up after load", f"{result['drained_after_load_s']} s"))
    rows.append(("CPU during the load", ", ".join(f"{k} {v} s" for k, v in result["cpu_s"].items())
                 + f" ({result['load_wall_s']} s × {_cores()} cores; 1-min load average {result['loadavg_1m_mean']})"))
    for criterion, ok in result["criteria"].items():
        rows.append((criterion, "PASS" if ok else "**FAIL**"))
    rows.append(("verdict", "PASS" if result["pass"] else "**FAIL**"))
    return "| figure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="load duration")
    parser.add_argument("--rate", type=float, default=default_rate(),
                        help="commands per second (default: half of commands_per_s in bench/results.json, else 330)")
    parser.add_argument("--workers", type=int, default=2, help="API processes (the commands benchmark's best: 2)")
    parser.add_argument("--connections", type=int, default=32,
                        help="most requests in flight (the commands benchmark's wrk connections: 32); later ones "
                             "wait in the client, their latency still counted from their scheduled time")
    parser.add_argument("--no-relay", action="store_true", help="do not run the relay and its local broker")
    parser.add_argument("--output", type=Path, default=HERE / "soak.json")
    args = parser.parse_args()
    configure_logging("WARNING", json=True)
    workdir = Path(tempfile.mkdtemp(prefix="crm-soak-"))
    url = start_embedded(workdir)
    store = open_event_store(url)
    with contextlib.ExitStack() as stack:
        api = stack.enter_context(ApiServer(url, args.workers))
        followers = {"projections": stack.enter_context(crm_follower(["projections"], url, workdir / "projections.log"))}
        if not args.no_relay:
            followers["relay"] = stack.enter_context(crm_follower(["relay"], url, workdir / "relay.log"))
        time.sleep(3)  # followers subscribed, broker up, topics created
        for name, child in followers.items():
            assert child.poll() is None, f"crm {name} exited at start: {(workdir / f'{name}.log').read_text()[-2000:]}"
        result = uvloop.run(soak_run(url, workdir, store, api, followers, args.rate, args.seconds, args.connections))
        for name, child in followers.items():
            lines = (workdir / f"{name}.log").read_text(errors="replace").splitlines()
            result.setdefault("follower_log_lines", {})[name] = {"count": len(lines), "first": lines[:5]}
            if child.poll() is not None:
                result["criteria"][f"crm {name} still running"] = result["pass"] = False
    result["command"] = " ".join(["python -m bench.soak", *sys.argv[1:]])
    git = ["git", "-C", str(HERE.parent)]
    result["code"] = {"commit": subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
                      "uncommitted_files": subprocess.run([*git, "status", "--porcelain"], capture_output=True,
                                                          text=True).stdout.splitlines()}
    result["ran"] = (f"embedded PostgreSQL ({workdir}); crm api --workers {args.workers}; crm projections"
                     f"{'' if args.no_relay else '; crm relay (local tansu broker, in memory)'}; "
                     "open-loop asyncio client in the soak process")
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\n{result['ran']}\nmachine: {result['machine']}; date: {result['date']}; written to {args.output}")
    store.close()
    raise SystemExit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
