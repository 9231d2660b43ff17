"""SLA saga in virtual time, the SLA policy, prevention warnings, and crashes of the saga process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError

from crm.aggregates.complaint import Complaint
from crm.infra.sla_saga import MIN_WAIT, SlaSaga
from tests.conftest import Clock

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday




def events_of(rt, complaint_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [type(e).__name__ for e in rt.store.events.get(UUID(complaint_id))]


def tiered_customer(admin, tier: str | None) -> str:  # type: ignore[no-untyped-def]
    cid = admin.post("/v1/customers", json={"name": f"Tier {tier}", "email": "care@example.com"}).json()["id"]
    if tier:
        admin.post(f"/v1/customers/{cid}/tier-override", json={"tier": tier, "reason": "r", "approved_by": "x"})
    return cid


def settle(saga: SlaSaga) -> None:
    while saga.follow():
        pass
    saga.fire_due()
    while saga.follow():
        pass


@pytest.fixture
def virtual(fresh_system):  # type: ignore[no-untyped-def]
    clock = Clock(T0)
    rt, admin = fresh_system(clock=clock)
    saga = SlaSaga(rt.store, rt.database_url, clock=clock)
    yield rt, admin, clock, saga
    saga.close()


def test_an_a_tier_complaint_warns_at_80_percent_and_breaches_after_3_days(virtual) -> None:
    rt, admin, clock, saga = virtual
    filed = admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, "A"), "category": "late",
                                               "description": "d"}).json()
    assert filed["due_at"] == "2026-03-05T09:00:00Z"
    settle(saga)
    assert saga.pending() == 2 and "SlaWarningIssued" not in events_of(rt, filed["id"])
    clock.advance(days=2, hours=9, minutes=36)  # 80 % of 3 days = 57.6 h
    settle(saga)
    assert events_of(rt, filed["id"])[-1] == "SlaWarningIssued"
    clock.advance(hours=14, minutes=23)
    settle(saga)
    assert "SlaBreached" not in events_of(rt, filed["id"])
    clock.advance(minutes=1)
    settle(saga)
    assert events_of(rt, filed["id"]).count("SlaBreached") == 1 and saga.pending() == 0


def test_a_b_tier_complaint_is_due_in_five_days_and_resolving_cancels_its_deadlines(virtual) -> None:
    rt, admin, clock, saga = virtual
    filed = admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, "B"), "category": "late",
                                               "description": "d"}).json()
    assert filed["due_at"] == "2026-03-07T09:00:00Z"
    admin.post(f"/v1/complaints/{filed['id']}/resolve", json={"resolution": "ok", "by": "ann"})
    settle(saga)
    assert saga.pending() == 0
    clock.advance(days=30)
    settle(saga)
    assert "SlaBreached" not in events_of(rt, filed["id"])


def test_time_awaiting_the_customer_does_not_count(virtual) -> None:
    rt, admin, clock, saga = virtual
    kid = admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, "A"), "category": "c",
                                             "description": "d"}).json()["id"]
    clock.advance(days=1)
    admin.post(f"/v1/complaints/{kid}/await-customer")
    settle(saga)
    assert saga.pending() == 0  # paused: nothing can fire
    clock.advance(days=4)
    resumed = admin.post(f"/v1/complaints/{kid}/resume")
    assert resumed.status_code == 200
    complaint: Complaint = rt.store.repository.get(UUID(kid))
    assert complaint.deadlines.due_at == T0 + timedelta(days=7)  # 3 days + 4 paused
    clock.advance(days=1, hours=23)
    settle(saga)
    assert "SlaBreached" not in events_of(rt, kid)
    clock.advance(hours=2)
    settle(saga)
    assert events_of(rt, kid).count("SlaBreached") == 1


def test_a_reopened_complaint_runs_a_fresh_clock(virtual) -> None:
    rt, admin, clock, saga = virtual
    kid = admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, "A"), "category": "c",
                                             "description": "d"}).json()["id"]
    clock.advance(days=4)
    settle(saga)
    assert events_of(rt, kid).count("SlaBreached") == 1
    admin.post(f"/v1/complaints/{kid}/resolve", json={"resolution": "fixed", "by": "ann"})
    clock.advance(days=1)
    admin.post(f"/v1/complaints/{kid}/reopen", json={"reason": "not fixed"})
    settle(saga)
    clock.advance(days=2, hours=23)
    settle(saga)
    assert events_of(rt, kid).count("SlaBreached") == 1 and events_of(rt, kid).count("SlaWarningIssued") == 2
    clock.advance(hours=2)
    settle(saga)
    assert events_of(rt, kid).count("SlaBreached") == 2


def test_a_working_calendar_counts_only_opening_hours(virtual) -> None:
    rt, admin, clock, saga = virtual
    policy = admin.put("/v1/sla/policy", json={"durations": {"A": "PT16H"}, "calendar": {
        "weekdays": [0, 1, 2, 3, 4], "opens": "09:00", "closes": "17:00", "holidays": ["2026-03-03"],
        "timezone": "UTC"}})
    assert policy.status_code == 200, policy.text
    filed = admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, "A"), "category": "c",
                                               "description": "d"}).json()
    # Monday 09:00 + 16 working hours, Tuesday a holiday: due Wednesday 17:00
    assert filed["due_at"] == "2026-03-04T17:00:00Z"


def test_a_complaint_already_overdue_breaches_as_soon_as_the_saga_starts(virtual) -> None:
    rt, admin, clock, saga = virtual
    kid = admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, None), "category": "c",
                                             "description": "d",
                                             "filed_at": (T0 - timedelta(days=20)).isoformat()}).json()["id"]
    settle(saga)
    names = events_of(rt, kid)
    assert names[0] == "Filed" and sorted(names[1:]) == ["SlaBreached", "SlaWarningIssued"]


def test_two_sagas_firing_the_same_deadline_record_it_once(virtual) -> None:
    rt, admin, clock, saga = virtual
    kid = admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, "A"), "category": "c",
                                             "description": "d"}).json()["id"]
    other = SlaSaga(rt.store, rt.database_url, clock=clock)
    try:
        settle(saga)
        clock.advance(days=5)
        saga.fire_due()
        other.fire_due()
        settle(other)
        settle(saga)
    finally:
        other.close()
    assert events_of(rt, kid).count("SlaBreached") == 1 and events_of(rt, kid).count("SlaWarningIssued") == 1


def test_a_bad_sla_policy_is_refused_and_the_old_one_stays(admin) -> None:
    before = admin.get("/v1/sla/policy").json()
    for bad in [{"durations": {"A": "3 days"}}, {"warn_ratio": 1.5}, {"durations": {"A": "-P1D"}},
                {"calendar": {"weekdays": [], "opens": "09:00", "closes": "17:00"}},
                {"calendar": {"weekdays": [0], "opens": "18:00", "closes": "17:00"}}, {"colour": 1}]:
        assert admin.put("/v1/sla/policy", json=bad).status_code == 422, bad
    assert admin.get("/v1/sla/policy").json() == before


def test_ordering_a_product_complained_about_warns_with_that_complaints_history(fresh_system) -> None:
    rt, admin = fresh_system()
    admin.post("/v1/products", json={"sku": "W-9", "name": "Widget", "standard_cost": "1", "list_price": "2"})
    admin.post("/v1/products", json={"sku": "W-10", "name": "Other", "standard_cost": "1", "list_price": "2"})
    cid = tiered_customer(admin, None)
    first = admin.post("/v1/orders", json={"customer_id": cid, "lines": [{"sku": "W-9", "quantity": 1,
                                                                          "unit_price": "2"}]}).json()
    assert first["warnings"] == []
    kid = admin.post("/v1/complaints", json={"customer_id": cid, "category": "quality",
                                             "description": "it broke", "order_id": first["id"]}).json()["id"]
    resolved = admin.post(f"/v1/complaints/{kid}/resolve", json={"resolution": "refunded", "by": "ann"}).json()
    assert rt.reads.wait_for(resolved["position"], 10)
    again = admin.post("/v1/orders", json={"customer_id": cid, "lines": [
        {"sku": "W-9", "quantity": 2, "unit_price": "2"}, {"sku": "W-10", "quantity": 1, "unit_price": "2"}]}).json()
    (warning,) = again["warnings"]
    assert warning["complaint_id"] == kid and warning["sku"] == "W-9" and warning["status"] == "resolved"
    assert warning["summary"] == "quality: it broke" and warning["resolution"] == "refunded"
    order = rt.store.repository.get(UUID(again["id"]))
    assert [str(i) for i in order.warned_complaint_ids] == [kid]  # the auditor sees the warning was given
    shipped = admin.post(f"/v1/orders/{again['id']}/ship").json()
    assert [w["complaint_id"] for w in shipped["warnings"]] == [kid]
    other = tiered_customer(admin, None)
    assert admin.post("/v1/orders", json={"customer_id": other, "lines": [
        {"sku": "W-9", "quantity": 1, "unit_price": "2"}]}).json()["warnings"] == []


@pytest.mark.slow
def test_killing_the_saga_process_at_random_points_records_each_breach_once(fresh_system, tmp_path) -> None:
    rt, admin = fresh_system()
    ids = []
    for n in range(40):
        cid = tiered_customer(admin, None)
        ids.append(admin.post("/v1/complaints", json={
            "customer_id": cid, "category": "c", "description": f"overdue {n}",
            "filed_at": (datetime.now(timezone.utc) - timedelta(days=11)).isoformat()}).json()["id"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(CRM_DATABASE_URL=rt.database_url, CRM_DATA_DIR=str(tmp_path), CRM_KAFKA_BOOTSTRAP="off")
    crm = Path(sys.executable).with_name("crm")
    rng = random.Random(5)
    for _ in range(6):  # bounded: six kills at random points, then one run to the end
        process = subprocess.Popen([str(crm), "--log-level", "WARNING", "saga"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
    process = subprocess.Popen([str(crm), "--log-level", "WARNING", "saga"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while any(events_of(rt, k).count("SlaBreached") == 0 for k in ids):
            assert time.monotonic() < deadline, "breaches were not all recorded"
            time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    for kid in ids:
        names = events_of(rt, kid)
        assert names.count("SlaBreached") == 1 and names.count("SlaWarningIssued") == 1, names


def _file_a_tier(admin, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    customer = tiered_customer(admin, "A")
    return [admin.post("/v1/complaints", json={"customer_id": customer, "category": "c", "description": "d"}
                       ).json()["id"] for _ in range(count)]


def _notes_after_loads(rt, admin, monkeypatch, complaint_id: str, times: int) -> list[object]:  # type: ignore[no-untyped-def]
    """After each of the complaint's first `times` loads, a handler adds a note (so a save of what
    was loaded conflicts); returns the notes' HTTP statuses."""
    get, notes = rt.store.repository.get, []

    def get_then_change(loaded_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        complaint = get(loaded_id, *args, **kwargs)
        if str(loaded_id) == complaint_id and len(notes) < times and "writing" not in notes:
            notes.append("writing")  # the note's own load comes through here too
            notes[-1] = admin.post(f"/v1/complaints/{complaint_id}/notes", json={"text": "called", "by": "ann"}).status_code
        return complaint

    monkeypatch.setattr(rt.store.repository, "get", get_then_change)
    return notes


def test_deadlines_due_together_are_recorded_in_one_transaction(virtual, monkeypatch) -> None:
    """A round of due deadlines waits for one WAL flush, not one per deadline; each complaint is
    loaded once, and its warning comes before its breach."""
    rt, admin, clock, saga = virtual
    kids = _file_a_tier(admin, 30)
    settle(saga)
    saves: list[int] = []
    save = rt.store.save
    monkeypatch.setattr(rt.store, "save", lambda *aggregates: saves.append(len(aggregates)) or save(*aggregates))
    clock.advance(days=5)
    assert saga.fire_due() == 60
    assert saves == [30]
    for kid in kids:
        assert events_of(rt, kid)[1:] == ["SlaWarningIssued", "SlaBreached"]
    settle(saga)
    assert saga.pending() == 0


def test_a_complaint_changed_while_its_group_fires_leaves_every_deadline_recorded_once(virtual, monkeypatch) -> None:
    """The group's save conflicts (a handler wrote to one complaint after the saga loaded it):
    nothing of the group is stored, and each deadline is fired again on its own."""
    rt, admin, clock, saga = virtual
    kids = _file_a_tier(admin, 5)
    settle(saga)
    clock.advance(days=5)
    touched = _notes_after_loads(rt, admin, monkeypatch, kids[2], times=1)
    saves: list[tuple[int, bool]] = []
    save = rt.store.save

    def recorded_save(*aggregates):  # type: ignore[no-untyped-def]
        try:
            result = save(*aggregates)
        except IntegrityError:
            saves.append((len(aggregates), False))
            raise
        saves.append((len(aggregates), True))
        return result

    monkeypatch.setattr(rt.store, "save", recorded_save)
    assert saga.fire_due() == 10
    assert saves[0] == (5, False) and saves[1:] == [(1, True)] * 10  # the group refused, then one by one
    assert touched == [200]  # the note was recorded between the load and the save
    for kid in kids:
        names = events_of(rt, kid)
        assert names.count("SlaWarningIssued") == 1 and names.count("SlaBreached") == 1, (kid, names)
    assert len(events_of(rt, kids[2])) == 4  # filed, the note, the warning and the breach: the note kept


def test_a_deadline_that_meets_a_change_twice_stays_due_and_fires_in_the_next_round(virtual, monkeypatch) -> None:
    """Handlers keep writing to a complaint while the saga fires it (the group's load and the
    retry's): its marks are not lost, the next round records them."""
    rt, admin, clock, saga = virtual
    kids = _file_a_tier(admin, 3)
    settle(saga)
    clock.advance(days=5)
    notes = _notes_after_loads(rt, admin, monkeypatch, kids[1], times=2)
    assert saga.fire_due() == 5  # the others' warnings and breaches, and its breach (retried unraced)
    assert notes == [200, 200]  # one note raced the group's save, the other its warning's retry
    assert saga.pending() == 6  # nothing dropped: its warning stays due (fired ones go when the saga follows)
    settle(saga)
    for kid in kids:
        names = events_of(rt, kid)
        assert names.count("SlaWarningIssued") == 1 and names.count("SlaBreached") == 1, (kid, names)
    assert saga.pending() == 0


def test_an_idle_saga_waits_until_the_next_deadline_is_due_and_no_longer(virtual) -> None:
    rt, admin, clock, saga = virtual
    assert saga.idle_wait(0.2) == 0.2  # nothing pending: the longest wait
    admin.post("/v1/complaints", json={"customer_id": tiered_customer(admin, "A"), "category": "late",
                                       "description": "d"})
    settle(saga)
    assert saga.pending() == 2
    assert saga.idle_wait(0.2) == 0.2  # the warning is due in 57.6 h: new events are followed meanwhile
    clock.advance(days=2, hours=9, minutes=35, seconds=59.95)  # 50 ms before the warning is due
    assert saga.idle_wait(0.2) == pytest.approx(0.051, abs=1e-6)  # 1 ms after it, not at the next round

    class OneRound(threading.Event):  # the saga's own loop, stopped after its first wait
        waits: list[float | None] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout)
            self.set()
            return True

    stop = OneRound()
    saga.run(stop)
    assert stop.waits == [pytest.approx(0.051, abs=1e-6)]  # run() waits as idle_wait() says
    clock.advance(seconds=1)  # due, not fired yet (a round that met a change): retried soon, not spun on
    assert saga.idle_wait(0.2) == MIN_WAIT
    clock.advance(seconds=1)  # overdue for more than a second: one that keeps failing, retried at the old pace
    assert saga.idle_wait(0.2) == 0.2
