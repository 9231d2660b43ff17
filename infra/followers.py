"""What the log's followers share (relay, SLA saga, notifier, audit chainer): a tracked position
of their own, and a thread that runs them inside `crm up` until the process stops."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol

import structlog

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.utils import Environment

from crm.infra.event_store import retry_ddl_races
from crm.infra.postgres import eventsourcing_env

log = structlog.get_logger(__name__)


class Follower(Protocol):
    def run(self, stop: threading.Event) -> None: ...

    def close(self) -> None: ...


def open_tracking(database_url: str, name: str) -> PostgresTrackingRecorder:
    """The library's tracking recorder for one follower: table `<name>_tracking`, one connection."""
    env = Environment(name, {**eventsourcing_env(database_url), "POSTGRES_POOL_SIZE": "1"})
    return retry_ddl_races(lambda: InfrastructureFactory.construct(env=env).tracking_recorder(PostgresTrackingRecorder))


def run_rounds(stop: threading.Event, one_round: Callable[[], int], *, name: str,
               idle_wait: float | Callable[[], float], on_error: Callable[[], None] = lambda: None,
               **context: Any) -> None:
    """Repeat one_round() until stop is set: wait idle_wait seconds (or as long as idle_wait()
    says, asked after the round) when it did nothing; after a failure (database, broker, SMTP away)
    call on_error, back off (0.1 s doubling to 5 s) and retry, never skip. An outage is logged once
    when it starts and once when it ends, not once per retry."""
    backoff, outage_since = 0.1, None
    while not stop.is_set():
        try:
            done = one_round()
            wait = 0.0 if done else idle_wait() if callable(idle_wait) else idle_wait
        except Exception as error:
            on_error()
            if outage_since is None:
                outage_since = time.monotonic()
                log.warning(f"{name}.unavailable", error=repr(error)[:300], **context)
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        if outage_since is not None:
            log.info(f"{name}.back", outage_s=round(time.monotonic() - outage_since, 1), **context)
            outage_since, backoff = None, 0.1
        if not done:
            stop.wait(wait)


class FollowerThread:
    """A follower in a daemon thread: start() it, stop() sets its stop event, joins and closes it."""

    def __init__(self, follower: Any, name: str) -> None:
        self.follower, self.stop_event = follower, threading.Event()
        self.thread = threading.Thread(target=follower.run, args=(self.stop_event,), name=name, daemon=True)

    def start(self) -> FollowerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        self.follower.close()

    def run_until_interrupted(self) -> None:
        """For the commands that run one follower alone: until Ctrl-C, then stop it cleanly."""
        try:
            while self.thread.is_alive():
                self.thread.join(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
