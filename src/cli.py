"""The `crm` command: `crm up` runs everything in one process tree; `crm api` runs the API alone."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable

import click
import structlog
import uvicorn

from crm.infra.gc_pause import freeze_startup_objects
from crm.infra.logging import configure_logging
from crm.infra.settings import Settings

log = structlog.get_logger("crm.cli")


def _serve(settings: Settings, banner: bool, with_projections: bool, with_relay: bool) -> None:
    from crm.api.app import create_app
    from crm.infra.read_models import start_runners, stop_runners
    from crm.infra.runtime import open_runtime

    runtime = open_runtime(settings)
    runners = start_runners(runtime.database_url) if with_projections else {}
    broker, relay, bootstrap = _start_relay(settings, runtime) if with_relay else (None, None, settings.kafka_bootstrap)
    chainer = _start_chainer(runtime) if with_projections else None
    saga = _start_saga(runtime) if with_projections else None
    notifier = _start_notifier(runtime) if with_projections else None
    try:
        app = create_app(runtime, relay=relay, kafka_bootstrap=bootstrap)
        base = f"http://127.0.0.1:{settings.http_port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=settings.http_port, log_config=None,
                                access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        if banner:  # printed once the socket is bound, so every URL in it answers
            announce = lambda: _print_banner(base, runtime.generated_admin_key, bootstrap, settings)
            threading.Thread(target=_when_started, args=(server, announce), daemon=True).start()
        config.load()  # uvicorn's protocol modules imported now, so that the freeze covers them too
        freeze_startup_objects()  # what start-up made leaves the full collections (crm.infra.gc_pause)
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C after a clean shutdown; that is a normal stop
    finally:
        if notifier is not None:
            notifier.stop()
        if saga is not None:
            saga.stop()
        if chainer is not None:
            chainer.stop()
        if relay is not None:
            relay.stop()
        if broker is not None:
            broker.stop()
        stop_runners(runners)
        runtime.close()
        log.info("crm.stopped")


def _start_notifier(runtime):  # type: ignore[no-untyped-def]
    """E-mails for SLA warnings, breaches and confirmed resolutions (CRM_SMTP_URL, else .eml files)."""
    from crm.infra.notifications import Notifier, NotifierThread

    return NotifierThread(Notifier(runtime.store, runtime.pool, runtime.settings,
                                   database_url=runtime.database_url)).start()


def _start_saga(runtime):  # type: ignore[no-untyped-def]
    from crm.infra.sla_saga import SagaThread, SlaSaga

    return SagaThread(SlaSaga(runtime.store, runtime.database_url)).start()


def _start_chainer(runtime):  # type: ignore[no-untyped-def]
    """The audit hash chain follows the log in a thread (no second serialisation point on writes)."""
    from crm.infra.audit import start_chainer

    return start_chainer(runtime)


def _start_relay(settings: Settings, runtime, shard=None):  # type: ignore[no-untyped-def]
    """The local broker when no CRM_KAFKA_BOOTSTRAP is set; no relay when it is 'off'. One relay
    thread: all events, or those of `shard`."""
    from crm.infra.relay import Relay, RelayThread, Shard

    broker, bootstrap = _broker(settings)
    if bootstrap == "off":
        return None, None, "off"
    relay = Relay(runtime.store, runtime.database_url, bootstrap, partitions=settings.kafka_partitions,
                  replication=settings.kafka_replication_factor, shard=shard or Shard())
    return broker, RelayThread(relay).start(), bootstrap


def _broker(settings: Settings):  # type: ignore[no-untyped-def]
    """(local broker or None, bootstrap): a local tansu broker when CRM_KAFKA_BOOTSTRAP is unset."""
    from crm.infra.kafka import start_local_broker

    if settings.kafka_bootstrap:
        return None, settings.kafka_bootstrap
    broker = start_local_broker()
    return broker, broker.bootstrap


def _when_started(server: uvicorn.Server, announce: Callable[[], None]) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        announce()


def _print_banner(base: str, admin_key: str | None, bootstrap: str | None, settings: Settings) -> None:
    lines = ["crm is up.", f"  API:      {base}/v1", f"  Docs:     {base}/docs",
             f"  Health:   {base}/health",
             f"  Database: {'embedded, data in ' + str(settings.data_dir / 'pg') if not settings.database_url else 'CRM_DATABASE_URL'}",
             f"  Kafka:    {bootstrap if settings.kafka_bootstrap else f'{bootstrap} (local tansu broker, in memory)'}"]
    if admin_key:
        lines.append(f"  Admin key (generated for this run; set CRM_API_KEYS to choose keys): {admin_key}")
    lines.append("Stop with Ctrl-C.")
    # The banner is for the person at the terminal, so it goes to stdout, not the log stream.
    click.echo("\n".join(lines))
    sys.stdout.flush()


@click.group()
@click.option("--log-level", default="INFO", show_default=True)
def main(log_level: str) -> None:
    """crm: event-sourced customer-relationship backend."""
    configure_logging(log_level)


@main.command()
def up() -> None:
    """Start the whole system (embedded PostgreSQL unless CRM_DATABASE_URL is set) and the API."""
    _serve(Settings(), banner=True, with_projections=True, with_relay=True)


@main.command()
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="API processes sharing the port (each with its own connection pool)")
@click.pass_context
def api(ctx: click.Context, workers: int) -> None:
    """Run the API alone (production: point CRM_DATABASE_URL at the shared server)."""
    settings = Settings()
    if workers == 1:
        _serve(settings, banner=False, with_projections=False, with_relay=False)
        return
    import os

    from crm.infra.runtime import open_runtime

    if not settings.key_roles():
        raise click.UsageError("with --workers, set CRM_API_KEYS: each worker would generate its own key")
    runtime = open_runtime(settings, generate_key=False)  # schemas created once, before the workers race
    os.environ.update(CRM_DATABASE_URL=runtime.database_url,
                      CRM_LOG_LEVEL=ctx.parent.params["log_level"] if ctx.parent else "INFO")
    runtime.close()
    log.info("api.workers", workers=workers, port=settings.http_port)
    uvicorn.run("crm.api.app:app_from_environment", factory=True, workers=workers, host="127.0.0.1",
                port=settings.http_port, log_config=None, access_log=False)


@main.group(invoke_without_command=True)
@click.pass_context
def projections(ctx: click.Context) -> None:
    """Run the read-model projections alone (they follow the event log until Ctrl-C)."""
    if ctx.invoked_subcommand is not None:
        return
    from crm.infra.read_models import start_runners, stop_runners
    from crm.infra.runtime import resolve_database_url

    runners = start_runners(resolve_database_url(Settings()))
    log.info("projections.running", names=sorted(runners))
    try:
        while not runners.stopping.wait(1.0):  # a runner that stops on an error is restarted
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop_runners(runners)


@projections.command()
def checksum() -> None:
    """Print a digest of every read-model table (a rebuild must give the same digests)."""
    from crm.infra.rebuild import checksums
    from crm.infra.runtime import open_runtime

    runtime = open_runtime(Settings(), generate_key=False)
    try:
        for name, tables in checksums(runtime.store).items():
            for table, digest in tables.items():
                click.echo(f"{name}.{table} {digest}")
    finally:
        runtime.close()


@main.command()
@click.argument("name", default="all")
def rebuild(name: str) -> None:
    """Replay the event log into fresh read-model tables (NAME or all), then swap them in."""
    from crm.infra.rebuild import rebuild as run_rebuild
    from crm.infra.runtime import open_runtime
    from crm.projections import PROJECTIONS

    if name != "all" and name not in PROJECTIONS:
        raise click.BadParameter(f"one of: all, {', '.join(PROJECTIONS)}", param_hint="NAME")
    runtime = open_runtime(Settings(), generate_key=False)
    try:
        for each in PROJECTIONS if name == "all" else [name]:
            report = run_rebuild(runtime.store, runtime.database_url, each, show_progress=True)
            click.echo(f"{each}: {report.events} events to position {report.position} in {report.seconds:.2f} s "
                       f"({report.events_per_s:,.0f} events/s)")
    finally:
        runtime.close()


@main.command()
@click.option("--replay", is_flag=True,
              help="forget the published position of every shard and publish everything again")
@click.option("--shard", type=click.IntRange(0, 255), default=None,
              help="run only this shard of CRM_RELAY_SHARDS (default: all of them, one process each)")
@click.option("--supervised", is_flag=True, hidden=True,
              help="started by `crm relay`: stop when stdin closes (the supervisor has gone)")
@click.pass_context
def relay(ctx: click.Context, replay: bool, shard: int | None, supervised: bool) -> None:
    """Publish every event to Kafka (CRM_KAFKA_BOOTSTRAP; a local broker when unset) until Ctrl-C."""
    from crm.infra.relay import RelayRunningError, Shard, forget_positions
    from crm.infra.runtime import open_runtime

    settings = Settings()
    if settings.kafka_bootstrap == "off":
        raise click.UsageError("CRM_KAFKA_BOOTSTRAP is 'off': nothing to relay")
    if shard is not None and shard >= settings.relay_shards:
        raise click.UsageError(f"--shard {shard}: CRM_RELAY_SHARDS is {settings.relay_shards} (shards 0 to "
                               f"{settings.relay_shards - 1})")
    if supervised and (sys.stdin is None or sys.stdin.isatty()):
        raise click.UsageError("--supervised is for the shards `crm relay` starts (stdin a pipe from it)")
    runtime = open_runtime(settings, generate_key=False)
    if replay:  # before anything publishes: a batch in flight would write its position back
        try:
            forget_positions(runtime.database_url)
        except RelayRunningError as error:
            runtime.close()
            raise click.UsageError(f"--replay: {error}; stop it first") from error
    if shard is None and settings.relay_shards > 1:
        try:
            raise SystemExit(_relay_shards(settings, runtime, ctx.parent.params["log_level"] if ctx.parent else "INFO"))
        finally:
            runtime.close()
    broker, running, bootstrap = _start_relay(settings, runtime, Shard(shard or 0, settings.relay_shards))
    try:
        if supervised:
            _stop_when_stdin_closes(running.stop_event)
        log.info("relay.running", bootstrap=bootstrap, shard=running.relay.shard.name)
        running.run_until_interrupted()
    finally:
        if running.thread.is_alive():
            running.stop()
        if broker is not None:
            broker.stop()
        runtime.close()


def _stop_when_stdin_closes(stop: threading.Event) -> None:
    """A shard started by `crm relay` stops when the supervisor goes, however it went (killed
    too): its stdin is a pipe from the supervisor, which reaches end-of-file then."""
    def watch() -> None:
        import os

        try:  # os.read, not sys.stdin: a thread blocked inside the buffered reader aborts the exit
            while os.read(descriptor, 65536):
                pass
        finally:
            stop.set()

    descriptor = sys.stdin.fileno()

    threading.Thread(target=watch, name="crm-relay-supervisor-watch", daemon=True).start()


def _relay_shards(settings: Settings, runtime, log_level: str) -> int:  # type: ignore[no-untyped-def]
    """`crm relay` with CRM_RELAY_SHARDS > 1: one `crm relay --shard i` process per shard, on this
    database and broker, until Ctrl-C, SIGTERM or SIGHUP, or until one of them stops; then all
    stop. Each shard watches its stdin, a pipe from here: closing it stops the shard cleanly, and
    it closes by itself if this process dies."""
    import os
    import signal
    import subprocess

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in stop_signals}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if before[sig] is not signal.SIG_IGN:  # nohup's choice stands
            signal.signal(sig, signal.default_int_handler)  # like Ctrl-C
    broker, shards, failed = None, [], 0
    try:
        broker, bootstrap = _broker(settings)  # each shard creates missing topics, retrying while the broker is away
        env = {**os.environ, "CRM_DATABASE_URL": runtime.database_url, "CRM_KAFKA_BOOTSTRAP": bootstrap,
               "CRM_RELAY_SHARDS": str(settings.relay_shards)}
        for i in range(settings.relay_shards):  # sessions of their own: a Ctrl-C at the terminal reaches only this
            shards.append(subprocess.Popen([sys.executable, "-m", "crm.cli", "--log-level", log_level, "relay",
                                            "--shard", str(i), "--supervised"],
                                           env=env, stdin=subprocess.PIPE, start_new_session=True))
        log.info("relay.shards", shards=len(shards), bootstrap=bootstrap, pids=[p.pid for p in shards])
        while all(p.poll() is None for p in shards):
            time.sleep(0.2)
        failed = 1
        log.error("relay.shard_stopped",
                  codes={i: p.returncode for i, p in enumerate(shards) if p.returncode is not None})
    except KeyboardInterrupt:
        pass
    finally:
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)  # the clean-up below is not cut short
        for p in shards:
            p.stdin.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 15
        for p in shards:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.info("relay.shards_stopped", codes=[p.returncode for p in shards])
        if broker is not None:
            broker.stop()
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)
    return failed


@main.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="print the topic's retained events first")
@click.option("--bootstrap", envvar="CRM_KAFKA_BOOTSTRAP", required=True, help="Kafka bootstrap servers")
@click.option("--max-seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
def tail(topic: str, from_beginning: bool, bootstrap: str, max_seconds: float | None) -> None:
    """Print a topic's events (one CloudEvent JSON per line) as they arrive."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest" if from_beginning else "latest")
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    if not partitions:
        raise click.UsageError(f"no topic {topic} at {bootstrap}")
    consumer.assign(partitions)
    (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)()
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    click.echo(record.value.decode())
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@main.command()
@click.option("--check", is_flag=True, help="only report schema files that are out of date (exit 1 if any)")
@click.option("--directory", type=click.Path(path_type=Path), default=Path("schemas"), show_default=True)
def schemas(check: bool, directory: Path) -> None:
    """Generate the JSON Schema of every event type's data from the event classes."""
    from crm.infra.schemas import stale, write

    if check:
        outdated = stale(directory)
        for name in outdated:
            click.echo(f"stale: {name}")
        raise SystemExit(1 if outdated else 0)
    for name in write(directory):
        click.echo(f"wrote {directory / name}")


@main.command()
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="grade the window ending here (UTC); default now")
def retier(as_of) -> None:  # type: ignore[no-untyped-def]
    """Re-grade every active customer under the tiering policy in force, with a progress bar."""
    from datetime import datetime, timezone

    from tqdm import tqdm

    from crm.aggregates.tiering import DEFAULT_TIERING_POLICY, TieringPolicy
    from crm.infra.tiering_runs import RunInProgressError, execute
    from crm.infra.runtime import open_runtime

    runtime = open_runtime(Settings(), generate_key=False)
    try:
        policy = runtime.policies.current("tiering", TieringPolicy.from_dict, DEFAULT_TIERING_POLICY)
        when = as_of.replace(tzinfo=timezone.utc) if as_of else datetime.now(timezone.utc)
        try:
            run_id = runtime.runs.begin(when, policy.version, "cli")
        except RunInProgressError as error:
            raise click.ClickException(str(error)) from error
        with tqdm(unit="customer", desc="retier") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            report = execute(runtime.store, runtime.pool, runtime.reads, runtime.runs, run_id, policy, when, progress)
        click.echo(f"run {run_id}: {report.evaluated} evaluated, {report.changed} changed in {report.seconds:.2f} s")
        for pair, count in sorted(report.transitions.items()):
            click.echo(f"  {pair}: {count}")
    finally:
        runtime.close()


@main.command()
def saga() -> None:
    """Run the SLA saga alone: follow complaints, fire warnings and breaches when due, until Ctrl-C."""
    from crm.infra.runtime import open_runtime

    runtime = open_runtime(Settings(), generate_key=False)
    log.info("sla.saga.running")
    try:
        _start_saga(runtime).run_until_interrupted()
    finally:
        runtime.close()


@main.group()
def audit() -> None:
    """Auditors' tools: a customer's full history, verification of the hash chain, checkpoints."""


def _with_runtime(action):  # type: ignore[no-untyped-def]
    from crm.infra.runtime import open_runtime

    runtime = open_runtime(Settings(), generate_key=False)
    try:
        return action(runtime)
    finally:
        runtime.close()


@audit.command("history")
@click.argument("customer", type=click.UUID)
@click.option("--jsonl", is_flag=True, help="one JSON object per line (for long histories)")
def audit_history(customer, jsonl: bool) -> None:  # type: ignore[no-untyped-def]
    """Every event of CUSTOMER and of its orders and complaints, in global order."""
    from crm.infra.audit import print_history

    raise SystemExit(_with_runtime(lambda rt: print_history(rt, customer, sys.stdout, jsonl=jsonl)))


@audit.command("verify")
@click.option("--from-checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="an exported checkpoint file: verify from it (and check it still matches)")
def audit_verify(from_checkpoint: Path | None) -> None:
    """Recompute the hash chain over the stored events; exit 0 when intact, 1 when broken."""
    from crm.infra.audit import print_verify

    raise SystemExit(_with_runtime(lambda rt: print_verify(rt, sys.stdout, from_checkpoint)))


@audit.command("checkpoint")
@click.option("--position", type=int, default=None, help="a checkpoint at or before this position")
def audit_checkpoint(position: int | None) -> None:
    """Print the latest checkpoint (position and hash) as JSON, to keep outside the system."""
    from crm.infra.audit import print_checkpoint

    raise SystemExit(_with_runtime(lambda rt: print_checkpoint(rt, sys.stdout, position)))


@audit.command("chain")
def audit_chain() -> None:
    """Run the hash chainer alone (production), following the log until Ctrl-C."""
    from crm.infra.audit import run_chainer

    _with_runtime(run_chainer)


if __name__ == "__main__":
    main()
