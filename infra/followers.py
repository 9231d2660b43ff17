"""What the log's followers share (relay, SLA saga, notifier, audit chainer): a tracked position
of their own, and a thread that runs them inside `crm up` until the process stops."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.utils import Environment

from crm.infra.postgres import eventsourcing_env


class Follower(Protocol):
    def run(self, stop: threading.Event) -> None: ...

    def close(self) -> None: ...


def open_tracking(database_url: str, name: str) -> PostgresTrackingRecorder:
    """The library's tracking recorder for one follower: table `<name>_tracking`, one connection."""
    env = Environment(name, {**eventsourcing_env(database_url), "POSTGRES_POOL_SIZE": "1"})
    return InfrastructureFactory.construct(env=env).tracking_recorder(PostgresTrackingRecorder)


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
