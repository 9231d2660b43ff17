"""The cycle collector in the API workers under command load, with and without the start-up freeze.

`python -m bench.gc_pauses [--customers 5000] [--workers 2] [--pairs 3] [--seconds 10]`: writes
the `make bench` history to a fresh embedded PostgreSQL, then runs `make bench`'s commands load
(wrk, 32 connections, `POST /v1/customers`, after a 2 s warm-up of the same) against
`crm api --workers N`, once with the workers' start-up objects frozen out of the collector (as
shipped: `crm.infra.gc_pause.freeze_startup_objects`) and once without, in reverse order every
other round, `--pairs` rounds. Each run prints the rate, p50 and p99, the API processes' CPU per
command, and per worker the full collections during the measured seconds with their durations.

How: the API processes get a `sitecustomize` (in a temp dir put first on PYTHONPATH) that times
every collection through `gc.callbacks` and writes the figures to a file per process; for the
run without the freeze it also makes `gc.freeze` a no-op in those processes. Nothing in crm is
changed for the measurement. Before the load, this process builds one API app (as a worker
does, without serving it) and times a full collection before and after the freeze.

The machine is shared and noisy: compare runs next to each other, not across rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.load import KEY, ApiServer, measured, wrk, wrk_available
from bench.workload import fresh_history
from crm.infra.logging import configure_logging

HOOK = """
import gc, json, os, sys, time
if os.environ.get("CRM_BENCH_NO_FREEZE") == "1":
    gc.freeze = lambda: None  # the run without the freeze: start-up objects stay in the collections
_out = os.path.join(os.environ["CRM_BENCH_GC_DIR"], f"{os.getpid()}.json")
_started = {}
_full = []  # (monotonic end, ms) of every full collection
_young = [0, 0.0]  # generations 0 and 1: count, seconds

def _timed(phase, info):
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.perf_counter()
        return
    took = time.perf_counter() - _started.pop(generation, time.perf_counter())
    if generation == 2:
        _full.append((time.monotonic(), took * 1000))
    else:
        _young[0] += 1
        _young[1] += took
    if generation == 2 or _young[0] % 100 == 0:
        with open(_out + ".tmp", "w") as f:
            json.dump({"full": _full, "young": _young, "frozen": gc.get_freeze_count(),
                       "worker": "crm.api.app" in sys.modules}, f)  # the supervisor never imports the app
        os.replace(_out + ".tmp", _out)

gc.callbacks.append(_timed)
"""


def collection_ms_of_a_built_app(url: str) -> tuple[float, float]:
    """A full collection over this process once an API app is built, before and after the freeze."""
    from crm.api.app import create_app
    from crm.infra.runtime import open_runtime
    from crm.infra.settings import Settings

    runtime = open_runtime(Settings(database_url=url, api_keys=f"{KEY}=admin", kafka_bootstrap="off"),
                           generate_key=False)
    try:
        create_app(runtime)
        timings = []
        for freeze in (False, True):
            if freeze:
                gc.collect()
                gc.freeze()
            started = time.perf_counter()
            gc.collect()
            timings.append((time.perf_counter() - started) * 1000)
        gc.unfreeze()
        return timings[0], timings[1]
    finally:
        runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of (frozen, not frozen)")
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run")
    args = parser.parse_args()
    if not wrk_available():
        raise SystemExit("wrk is missing (apt-get install wrk)")
    configure_logging("WARNING", json=True)
    url, _, _ = fresh_history("gc", args.customers)
    before, after = collection_ms_of_a_built_app(url)
    print(f"one full collection with an API app built: {before:.1f} ms; after the freeze: {after:.1f} ms", flush=True)
    hook_dir = Path(tempfile.mkdtemp(prefix="crm-bench-gc-hook-"))
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    pythonpath = os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")]))
    try:
        for round_ in range(1, args.pairs + 1):
            for frozen in (True, False) if round_ % 2 else (False, True):
                out = Path(tempfile.mkdtemp(prefix="crm-bench-gc-out-"))
                hook = {"PYTHONPATH": pythonpath, "CRM_BENCH_NO_FREEZE": "0" if frozen else "1",
                        "CRM_BENCH_GC_DIR": str(out)}
                with ApiServer(url, args.workers, env=hook) as server:
                    wrk(server.base, "commands.lua", seconds=2, connections=32)  # warm-up, not reported
                    since = time.monotonic()
                    load = measured(server, "commands.lua", seconds=args.seconds, connections=32)
                    until = time.monotonic()
                print(f"round {round_}, {'frozen    ' if frozen else 'not frozen'}: {load.per_s:7,.0f} commands/s, "
                      f"p50 {load.p50_ms:6.1f} ms, p99 {load.p99_ms:6.1f} ms, {load.failures} failed, API CPU "
                      f"{load.api_cpu_ms:.2f} ms per command", flush=True)
                reports = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
                shutil.rmtree(out)
                for figures in (r for r in reports if r["worker"]):  # not `crm api`'s supervisor and helpers
                    full = [ms for at, ms in figures["full"] if since <= at <= until]
                    spread = f"{min(full):.1f}-{max(full):.1f} ms, median {statistics.median(full):.1f}" if full else "-"
                    print(f"    worker: {figures['frozen']:6,} objects frozen, {len(full)} full collections "
                          f"in {args.seconds} s ({spread})", flush=True)
    finally:
        shutil.rmtree(hook_dir)


if __name__ == "__main__":
    main()
