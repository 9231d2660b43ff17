"""The relay against a real Kafka-protocol broker: envelopes, schemas, order, outages, crashes."""

from __future__ import annotations

import json
import time
from uuid import UUID
from collections import defaultdict
from pathlib import Path

import jsonschema
import pytest
from kafka import KafkaConsumer, TopicPartition

from crm.infra.kafka import TOPICS, start_local_broker
from crm.infra.relay import Lease, Relay, RelayRunningError, RelayThread, Shard, forget_positions
from crm.infra.schemas import event_classes, stale
from tests.integration.test_projections import a_busy_history

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {p.stem: json.loads(p.read_text()) for p in (ROOT / "schemas").glob("crm.*.json")}


def consume_all(bootstrap: str, expected: int, timeout: float = 30.0) -> list:
    """Every record of crm's topics, from the beginning: once `expected` distinct ids arrived, on to
    the end of every partition as it is then, so a duplicate after them is read too."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_interval_ms=5000)
    partitions = [TopicPartition(t, p) for t in TOPICS for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    records, ids, deadline, ends = [], set(), time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            if ends is None and len(ids) >= expected:
                ends = consumer.end_offsets(partitions)
            if ends is not None and all(consumer.position(p) >= end for p, end in ends.items()):
                break
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    records.append(record)
                    ids.add(json.loads(record.value)["id"])
    finally:
        consumer.close()
    return records


def start_relay(rt, bootstrap: str) -> RelayThread:  # type: ignore[no-untyped-def]
    return RelayThread(Relay(rt.store, rt.database_url, bootstrap, partitions=3)).start()


def wait_published(relay: RelayThread, position: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while relay.relay.status.position < position:
        assert time.monotonic() < deadline, f"relay stuck at {relay.relay.status.position} < {position}"
        time.sleep(0.05)


def test_the_checked_in_schemas_are_up_to_date() -> None:
    assert stale(ROOT / "schemas") == [], "run `crm schemas` and commit the result"
    assert len(SCHEMAS) == len(event_classes()) == 29


def test_a_stale_schema_is_detected(tmp_path) -> None:
    for path in (ROOT / "schemas").glob("crm.*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    target = tmp_path / "crm.order.Placed.v1.json"
    target.write_text(target.read_text().replace('"currency"', '"currency_code"'))
    assert stale(tmp_path) == ["crm.order.Placed.v1.json"]


def test_every_event_arrives_once_as_a_valid_cloudevent(fresh_system, kafka_broker) -> None:
    rt, admin = fresh_system()
    history = a_busy_history(admin)
    relay = start_relay(rt, kafka_broker.bootstrap)
    try:
        wait_published(relay, history["position"])
    finally:
        relay.stop()
    records = consume_all(kafka_broker.bootstrap, history["position"])
    events = [json.loads(r.value) for r in records]
    assert sorted(e["position"] for e in events) == list(range(1, history["position"] + 1))
    for record, event in zip(records, events):
        assert event["specversion"] == "1.0" and event["source"] == "crm"
        assert event["id"] == f"{event['subject']}:{event['aggregateversion']}"
        assert record.key.decode() == event["subject"]
        assert record.topic == "crm." + event["type"].split(".")[1]
        assert dict(record.headers)["ce_id"].decode() == event["id"]
        jsonschema.validate(event["data"], SCHEMAS[event["type"]])
        assert event["dataschema"] == SCHEMAS[event["type"]]["$id"]
    assert {e["type"] for e in events} >= {"crm.complaint.Rated.v1", "crm.order.PaymentReceived.v1",
                                           "crm.customer.TierOverridden.v1", "crm.product.Registered.v1"}


def test_the_envelope_cut_from_the_stored_json_equals_the_decoded_one(fresh_system) -> None:
    from crm.infra.cloudevents import decoded_cloudevent, to_cloudevent
    from crm.infra.personal_data import REGISTERED
    from crm.infra.relay import Relay

    rt, admin = fresh_system(with_runners=False)
    history = a_busy_history(admin)
    gone = admin.post("/v1/customers", json={"name": "Zoë Erased", "email": "z@example.com",
                                             "birthday": "1980-02-29"}).json()["id"]
    admin.patch(f"/v1/customers/{gone}", json={"phone": "+44 1"})  # sealed in a nested dict: decoded
    assert admin.post(f"/v1/customers/{gone}/erase", json={"reason": "GDPR"}).status_code == 200
    admin.post("/v1/customers", json={"name": "Ünïcode \"quoted\" Ltd", "special_days": [
        {"label": "founded", "month": 3, "day": 1}]})
    head = rt.store.position()
    relay = Relay(rt.store, rt.database_url, "127.0.0.1:1")  # never connects: only its upcast is used
    notifications = rt.store.recorder.select_notifications(start=1, limit=head)
    rt.store.mapper.prefetch(notifications)
    def not_through_the_mapper(notification):  # type: ignore[no-untyped-def]
        raise AssertionError(f"a registration was decoded through the mapper: {notification.id}")

    sealed, registrations = 0, 0
    for notification in notifications:
        registration = notification.topic == REGISTERED  # sealed at the top level: opened in place
        registrations += registration
        upcast = not_through_the_mapper if registration else relay._upcast
        topic, key, value, headers = to_cloudevent(notification, upcast, rt.store.mapper.opened_json)
        d_topic, d_key, d_value, d_headers = decoded_cloudevent(notification, relay._upcast)
        assert (topic, key, headers) == (d_topic, d_key, d_headers), notification.id
        assert json.loads(value) == json.loads(d_value), notification.id
        assert list(json.loads(value)["data"]) == list(json.loads(d_value)["data"]), "fields in the same order"
        sealed += b'"_personal"' in notification.state
    assert len(notifications) == head > history["position"] > 20 and 0 < sealed < len(notifications)
    assert 0 < registrations < sealed  # the profile updates and resolution e-mails went through the mapper
    erased = [json.loads(to_cloudevent(n, relay._upcast, rt.store.mapper.opened_json)[2]) for n in notifications
              if str(n.originator_id) == gone and n.originator_version == 1]
    assert erased[0]["data"]["name"] == "[erased]" and erased[0]["data"]["email"] is None
    relay.close()


def test_commands_keep_working_while_the_broker_is_down_and_everything_arrives_after(fresh_system, caplog) -> None:
    rt, admin = fresh_system()
    broker = start_local_broker()
    port = broker.port
    relay = start_relay(rt, broker.bootstrap)
    collected: list = []
    try:
        first = [admin.post("/v1/customers", json={"name": f"Before {n}"}).json() for n in range(20)]
        wait_published(relay, first[-1]["position"])
        collected += consume_all(broker.bootstrap, 20)  # a downstream consumer read them before the outage
        broker.stop()
        during = [admin.post("/v1/customers", json={"name": f"During {n}"}) for n in range(20)]
        assert all(r.status_code == 201 for r in during), "commands must not depend on the broker"
        deadline = time.monotonic() + 30
        while relay.relay.status.broker_reachable is not False:
            assert time.monotonic() < deadline, "the relay never noticed the outage"
            time.sleep(0.1)
        broker = start_local_broker(port)  # memory storage: it comes back empty
        customer = during[0].json()["id"]
        for version in range(2, 6):  # more events for one key, to check its order
            admin.patch(f"/v1/customers/{customer}", json={"phone": f"{version}"})
        head = rt.store.position()
        wait_published(relay, head)
        collected += consume_all(broker.bootstrap, head - 20)
    finally:
        relay.stop()
        broker.stop()
    first_seen = {}
    for record in collected:
        event = json.loads(record.value)
        first_seen.setdefault(event["id"], event)
    assert sorted(e["position"] for e in first_seen.values()) == list(range(1, head + 1))
    versions = [e["aggregateversion"] for r in collected for e in [json.loads(r.value)] if e["subject"] == customer]
    assert versions == sorted(versions) and versions[-1] == 5
    outage_lines = [r for r in caplog.records if "relay.broker.unavailable" in r.getMessage()]
    assert len(outage_lines) == 1, "an outage is logged once, not once per message or retry"


def test_a_relay_killed_mid_batch_resumes_without_loss(fresh_system, kafka_broker) -> None:
    rt, admin = fresh_system()
    for n in range(300):
        last = admin.post("/v1/customers", json={"name": f"Bulk {n}"}).json()
    crashed = Relay(rt.store, rt.database_url, kafka_broker.bootstrap, partitions=3, batch_size=100)
    original_advance = crashed._advance
    calls = {"n": 0}

    def dies_after_publishing_the_second_batch(position):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("killed between the broker's ack and the position update")
        original_advance(position)

    crashed._advance = dies_after_publishing_the_second_batch  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        while True:
            crashed.publish_next()
    crashed.close()
    assert Relay(rt.store, rt.database_url, kafka_broker.bootstrap).position() == 100
    resumed = start_relay(rt, kafka_broker.bootstrap)
    try:
        wait_published(resumed, last["position"])
    finally:
        resumed.stop()
    records = consume_all(kafka_broker.bootstrap, last["position"])
    by_id: dict[str, list] = defaultdict(list)
    for record in records:
        by_id[json.loads(record.value)["id"]].append(record.value)
    assert len(by_id) == last["position"]
    duplicates = {i: values for i, values in by_id.items() if len(values) > 1}
    assert len(duplicates) == 100  # the second batch, published twice
    assert all(len(set(values)) == 1 for values in duplicates.values()), "a duplicate must be the same event"


def test_health_reports_the_relay(fresh_system, kafka_broker) -> None:
    from fastapi.testclient import TestClient

    from crm.api.app import create_app

    rt, admin = fresh_system()
    made = admin.post("/v1/customers", json={"name": "Health Relay"}).json()
    relay = start_relay(rt, kafka_broker.bootstrap)
    try:
        wait_published(relay, made["position"])
        health = TestClient(create_app(rt, relay=relay, kafka_bootstrap=kafka_broker.bootstrap)).get("/health").json()
    finally:
        relay.stop()
    assert health["kafka_bootstrap"] == kafka_broker.bootstrap
    assert health["relay"] == {"position": made["position"], "lag_events": 0, "lag_seconds": 0.0,
                               "broker_reachable": True, "standby": False}


def test_the_tail_command_prints_events_as_they_arrive(fresh_system, kafka_broker) -> None:
    import subprocess
    import sys

    rt, admin = fresh_system()
    made = admin.post("/v1/customers", json={"name": "Tailed Ltd"}).json()
    relay = start_relay(rt, kafka_broker.bootstrap)
    try:
        wait_published(relay, made["position"])
    finally:
        relay.stop()
    crm = Path(sys.executable).with_name("crm")
    out = subprocess.run([str(crm), "--log-level", "WARNING", "tail", "crm.customer", "--from-beginning",
                          "--bootstrap", kafka_broker.bootstrap, "--max-seconds", "4"],
                         capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [e["data"]["name"] for e in lines] == ["Tailed Ltd"]


def ids_in_order(records: list) -> dict[str, list[int]]:
    """Each aggregate's versions in the order a consumer received them."""
    versions: dict[str, list[int]] = defaultdict(list)
    for record in records:
        event = json.loads(record.value)
        versions[event["subject"]].append(event["aggregateversion"])
    return versions


def test_shards_share_the_log_each_event_once_and_in_order_per_aggregate(fresh_system, kafka_broker) -> None:
    from fastapi.testclient import TestClient

    from crm.api.app import create_app

    rt, admin = fresh_system()
    a_busy_history(admin)
    single = Relay(rt.store, rt.database_url, kafka_broker.bootstrap, partitions=3, batch_size=10)
    assert single.publish_next() == 10  # one relay published the start of the log, then it is split in two
    single.close()
    shards = [RelayThread(Relay(rt.store, rt.database_url, kafka_broker.bootstrap, partitions=3, batch_size=8,
                                shard=Shard(i, 2))).start() for i in range(2)]
    try:
        more = [admin.post("/v1/customers", json={"name": f"Sharded {n}"}).json() for n in range(30)]
        for version in range(2, 6):  # several events of one aggregate while the shards run
            admin.patch(f"/v1/customers/{more[0]['id']}", json={"phone": f"{version}"})
        head = rt.store.position()
        for shard in shards:  # a shard whose last event came earlier moves on to the head as well
            wait_published(shard, head)
        assert rt.reads.relay_position() == head  # the two shards', not the first relay's 10
        health = TestClient(create_app(rt)).get("/health").json()
    finally:
        for shard in shards:
            shard.stop()
    assert health["relay"] == {"position": head, "lag_events": 0, "lag_seconds": 0.0, "broker_reachable": None,
                              "standby": None}
    records = consume_all(kafka_broker.bootstrap, head)
    events = [json.loads(r.value) for r in records]
    assert sorted(e["position"] for e in events) == list(range(1, head + 1)), "each event exactly once"
    published = [s.relay.status.published for s in shards]
    owned = [sum(1 for e in events if e["position"] > 10 and Shard(i, 2).owns(UUID(e["subject"]))) for i in range(2)]
    assert published == owned and min(owned) > 0, (published, owned)
    for subject, versions in ids_in_order(records).items():
        assert versions == sorted(versions), subject
    assert ids_in_order(records)[more[0]["id"]] == [1, 2, 3, 4, 5]


class ShardedRelay:
    """`crm relay` with CRM_RELAY_SHARDS=2 as a real process tree; its output collected as it comes."""

    def __init__(self, rt, bootstrap: str) -> None:  # type: ignore[no-untyped-def]
        import os
        import subprocess
        import sys
        import threading

        env = {**os.environ, "CRM_DATABASE_URL": rt.database_url, "CRM_KAFKA_BOOTSTRAP": bootstrap,
               "CRM_RELAY_SHARDS": "2"}
        self.process = subprocess.Popen([str(Path(sys.executable).with_name("crm")), "relay"], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()  # type: ignore[arg-type]

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def shard_pids(self, timeout: float = 30.0) -> list[int]:
        import re

        deadline = time.monotonic() + timeout
        while not (found := re.search(r"pids.{0,4}\[([\d, ]+)\]", self.output)):
            assert self.process.poll() is None and time.monotonic() < deadline, self.output
            time.sleep(0.05)
        return [int(p) for p in re.findall(r"\d+", found[1])]

    def logged(self, event: str) -> list[dict]:
        return [line for line in map(_json_or_none, self.lines) if line and line.get("event") == event]

    def wait_published(self, rt, head: int, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while rt.reads.relay_position() != head:
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, f"published {rt.reads.relay_position()} of {head}"
            time.sleep(0.2)


def _json_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


def gone(pid: int, timeout: float = 20.0) -> bool:
    """The process has exited (a zombie nobody reaped counts as exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_crm_relay_runs_a_process_per_shard_waits_for_the_broker_and_stops_them_all(fresh_system) -> None:
    import signal

    from crm.infra.kafka import free_port

    rt, admin = fresh_system()
    for n in range(20):
        admin.post("/v1/customers", json={"name": f"Relayed {n}"})
    head = rt.store.position()
    port = free_port()
    relay = ShardedRelay(rt, f"127.0.0.1:{port}")
    broker = None
    try:
        pids = relay.shard_pids()
        wait_until(lambda: len(relay.logged("relay.running")) == 2, 30, "the shards did not start")
        time.sleep(2)  # both are in their loop, trying the broker (kafka-python's admin client waits quietly)
        assert relay.process.poll() is None, "with the broker away the shards wait for it: " + relay.output
        broker = start_local_broker(port)
        relay.wait_published(rt, head)
        events = [json.loads(r.value) for r in consume_all(broker.bootstrap, head)]
    finally:
        relay.process.send_signal(signal.SIGINT)
        relay.process.wait(timeout=30)
        if broker is not None:
            broker.stop()
    assert relay.process.returncode == 0 and "Traceback" not in relay.output, relay.output
    assert len(pids) == 2 and all(gone(pid, timeout=0) for pid in pids), "stopped with the command"
    assert relay.logged("relay.shards_stopped")[0]["codes"] == [0, 0], "each stopped cleanly, none killed"
    assert sorted(e["position"] for e in events) == list(range(1, head + 1))


def test_crm_relay_stops_every_shard_when_one_stops_or_when_it_is_killed(fresh_system, kafka_broker) -> None:
    import os
    import signal

    rt, admin = fresh_system()
    admin.post("/v1/customers", json={"name": "Relayed"})
    head = rt.store.position()
    relay = ShardedRelay(rt, kafka_broker.bootstrap)
    try:
        first, second = relay.shard_pids()
        relay.wait_published(rt, head)
        os.kill(first, signal.SIGKILL)  # a shard dies: the command stops the other and fails
        assert relay.process.wait(timeout=30) == 1, relay.output
        assert gone(second, timeout=0) and relay.logged("relay.shard_stopped")
        assert relay.logged("relay.shards_stopped")[0]["codes"] == [-signal.SIGKILL, 0], relay.output
    finally:
        if relay.process.poll() is None:
            relay.process.kill()
    for n in range(300):  # so that the shards are publishing when their command is killed
        admin.post("/v1/customers", json={"name": f"Backlog {n}"})
    relay = ShardedRelay(rt, kafka_broker.bootstrap)
    try:
        pids = relay.shard_pids()
        deadline = time.monotonic() + 30
        while len(relay.logged("relay.running")) < 2:
            assert time.monotonic() < deadline, relay.output
            time.sleep(0.02)
    finally:
        relay.process.kill()  # the command itself killed, with no chance to clean up: its shards still stop
        relay.process.wait(timeout=10)
    assert all(gone(pid) for pid in pids), relay.output


def wait_until(condition, timeout: float, what: str, poll: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(poll)


def test_a_second_relay_stands_by_and_takes_over_when_the_first_stops(fresh_system, kafka_broker) -> None:
    from fastapi.testclient import TestClient

    from crm.api.app import create_app

    rt, admin = fresh_system()
    for n in range(20):
        admin.post("/v1/customers", json={"name": f"Before {n}"})
    active = start_relay(rt, kafka_broker.bootstrap)
    standby = None
    try:
        wait_published(active, rt.store.position())
        standby = start_relay(rt, kafka_broker.bootstrap)  # as `crm up` next to `crm relay`, or a failover pair
        wait_until(lambda: standby.relay.status.standby, 30, "the second relay never stood by")
        for n in range(20):
            admin.post("/v1/customers", json={"name": f"While both run {n}"})
        wait_published(active, rt.store.position())
        overlapping = Relay(rt.store, rt.database_url, kafka_broker.bootstrap, shard=Shard(1, 2))
        assert overlapping.publish_next() == 0 and overlapping.status.standby, "another shard count overlaps too"
        overlapping.close()
        with pytest.raises(RelayRunningError, match=r"crm relay crm \(pid \d+\)"):
            forget_positions(rt.database_url)  # --replay: a running relay would write its position back
        health = TestClient(create_app(rt, relay=standby, kafka_bootstrap=kafka_broker.bootstrap)).get("/health")
        assert health.json()["relay"]["standby"] is True
        assert standby.relay.status.published == 0
        assert health.json()["relay"]["position"] == rt.store.position() and health.json()["relay"]["lag_events"] == 0, \
            "a standby reports what the active relay published, not its own stale position"
        active.stop()  # the standby takes over where it stopped
        assert not active.relay.lease.acquire(), "a closed relay never takes its lease back"
        for n in range(20):
            admin.post("/v1/customers", json={"name": f"After {n}"})
        head = rt.store.position()
        wait_published(standby, head)
        assert not standby.relay.status.standby
    finally:
        active.stop()
        if standby is not None:
            standby.stop()
    records = consume_all(kafka_broker.bootstrap, head)
    assert sorted(json.loads(r.value)["position"] for r in records) == list(range(1, head + 1)), "each once"
    assert (active.relay.status.published, standby.relay.status.published) == (40, 20)


def test_a_relay_whose_lease_session_dies_stops_publishing_while_another_holds_the_lease(fresh_system,
                                                                                        kafka_broker) -> None:
    import psycopg

    def end_its_lease_session() -> None:  # as if its connection broke
        with psycopg.connect(rt.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'crm relay crm' AND pid <> pg_backend_pid()")

    rt, admin = fresh_system()
    admin.post("/v1/customers", json={"name": "First"})
    relay = start_relay(rt, kafka_broker.bootstrap)
    other = Lease(rt.database_url, Shard())  # another relay, taking the locks as soon as they are free
    try:
        wait_published(relay, rt.store.position())
        deadline = time.monotonic() + 30
        while not other.acquire():  # the relay checks its session every second: the other one is faster
            assert time.monotonic() < deadline, "the lease never came free"
            end_its_lease_session()
            time.sleep(0.01)
        wait_until(lambda: relay.relay.status.standby, 30, "the relay did not notice that it lost its lease")
        stood_at = relay.relay.status.position
        for n in range(10):
            admin.post("/v1/customers", json={"name": f"While it stands by {n}"})
        time.sleep(1.5)
        assert relay.relay.status.position == stood_at and rt.store.position() > stood_at, "published on standby"
        other.release()  # the other one is gone: the relay takes its lease back and goes on
        head = rt.store.position()
        wait_published(relay, head)
    finally:
        other.release()
        relay.stop()
    records = consume_all(kafka_broker.bootstrap, head)
    assert sorted(json.loads(r.value)["position"] for r in records) == list(range(1, head + 1))


def test_a_relay_records_no_position_once_its_lease_session_is_gone(fresh_system, kafka_broker) -> None:
    import psycopg

    rt, admin = fresh_system()
    admin.post("/v1/customers", json={"name": "Fenced"})
    relay = Relay(rt.store, rt.database_url, kafka_broker.bootstrap, partitions=3)
    try:
        assert relay.publish_next() >= 1
        before = relay.position()
        admin.post("/v1/customers", json={"name": "Fenced too"})
        with psycopg.connect(rt.database_url, autocommit=True) as conn:  # its session ends; its locks go with it
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'crm relay crm' AND pid <> pg_backend_pid()")
        relay._advance(rt.store.position())  # as after a batch published when the session had just gone
        assert (relay.position(), relay.status.position) == (before, before) < (rt.store.position(),) * 2
    finally:
        relay.close()


def test_a_relay_goes_on_from_a_position_another_relay_moved_past_its_own(fresh_system, kafka_broker) -> None:
    from eventsourcing.persistence import Tracking

    rt, admin = fresh_system()
    for n in range(40):
        admin.post("/v1/customers", json={"name": f"Moved {n}"})
    head = rt.store.position()
    relay = Relay(rt.store, rt.database_url, kafka_broker.bootstrap, partitions=3, batch_size=10)
    try:
        assert relay.publish_next() == 10 and relay.status.position == 10
        # Another relay published up to 30 in the moment before this one noticed its lease was gone.
        relay.tracking.insert_tracking(Tracking("crm", 30))
        assert relay.publish_next() == 10  # 11-20 once more; the table keeps 30, and so does the relay now
        assert relay.status.position == 30
        while relay.status.position < head:
            relay.publish_next()
    finally:
        relay.close()
    records = consume_all(kafka_broker.bootstrap, head - 10)  # 21-30: the other relay's (only its row is here)
    assert {json.loads(r.value)["position"] for r in records} == set(range(1, 21)) | set(range(31, head + 1))


def test_crm_relay_replay_refuses_while_a_relay_holds_its_lease(fresh_system, kafka_broker) -> None:
    from click.testing import CliRunner

    from crm.cli import main

    from eventsourcing.persistence import Tracking

    from crm.infra.followers import open_tracking
    from crm.infra.relay import tracked_positions

    rt, _ = fresh_system()
    tracking = open_tracking(rt.database_url, "relay")
    try:
        tracking.insert_tracking(Tracking("crm", 5))
        tracking.insert_tracking(Tracking("crm#1/2", 7))
        lease = Lease(rt.database_url, Shard(0, 2))  # one shard of another relay is enough
        assert lease.acquire()
        try:
            result = CliRunner().invoke(main, ["relay", "--replay"], env={
                "CRM_DATABASE_URL": rt.database_url, "CRM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap})
        finally:
            lease.release()
        assert result.exit_code == 2, result.output
        assert "a relay is running: crm relay crm#0/2 (pid" in result.output and "stop it first" in result.output
        assert tracked_positions(tracking) == {"crm": 5, "crm#1/2": 7}, "a refused --replay forgets nothing"
        forget_positions(rt.database_url)  # no relay runs now
        assert tracked_positions(tracking) == {}
        with tracking.datastore.transaction(commit=False) as curs:
            curs.execute(f"SELECT application_name FROM {tracking.tracking_table_name}")
            assert [row["application_name"] for row in curs.fetchall()] == ["__migration__"], \
                "the library's own row stays (without it the library migrates the table again)"
    finally:
        tracking.datastore.close()
