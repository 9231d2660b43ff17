"""E-mail notifications against a real SMTP server on loopback (aiosmtpd): content, exactly once."""

from __future__ import annotations

import email
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import default
from uuid import UUID

import pytest
from aiosmtpd.controller import Controller

from crm.infra.notifications import Notifier, NotifierThread
from tests.conftest import Clock

ESCALATION = "sla-alerts@crm.example"




@dataclass
class Mailbox:
    """An aiosmtpd handler keeping every message it accepted; `drop_answer` loses the 250 on the way back."""

    messages: list[EmailMessage] = field(default_factory=list)
    drop_answer: bool = False

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        message = email.message_from_bytes(envelope.content, policy=default)
        message["X-Envelope-To"] = ",".join(envelope.rcpt_tos)
        self.messages.append(message)
        if self.drop_answer:  # taken, but the client never hears so: the outcome is unknown to it
            server.transport.close()
        return "250 Message accepted for delivery"


class SmtpServer:
    """A real SMTP server on a loopback port, started and stopped at will."""

    def __init__(self, port: int) -> None:
        self.port, self.mailbox, self._controller = port, Mailbox(), None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def messages(self) -> list[EmailMessage]:
        return self.mailbox.messages


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_down():  # type: ignore[no-untyped-def]
    """A port with nothing listening yet; start() brings a server up on it."""
    server = SmtpServer(free_port())
    yield server
    server.stop()


@pytest.fixture
def smtp_server(smtp_down: SmtpServer) -> SmtpServer:
    return smtp_down.start()


# --- helpers ------------------------------------------------------------------------------------

def notifier_for(rt, smtp_url: str | None, clock=None, **options) -> Notifier:  # type: ignore[no-untyped-def]
    settings = rt.settings.model_copy(update={"smtp_url": smtp_url})
    return Notifier(rt.store, rt.pool, settings, escalation_address=ESCALATION,
                    clock=clock or (lambda: datetime.now(timezone.utc)), **options)


def drain(notifier: Notifier, rounds: int = 50) -> None:
    """Process until a round finds nothing to do."""
    for _ in range(rounds):
        if not notifier.process_next():
            return
    raise AssertionError("the notifier never went idle")


def post(admin, path: str, body: dict, status: int = 201) -> dict:  # type: ignore[no-untyped-def]
    response = admin.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()


def new_customer(admin, email_address: str | None = "buyer@globex.example") -> dict:  # type: ignore[no-untyped-def]
    return post(admin, "/v1/customers", {"name": "Globex", "email": email_address})


def confirmed_complaint(admin, customer_id: str) -> dict:  # type: ignore[no-untyped-def]
    """A complaint filed, resolved with a known resolution and confirmed."""
    complaint = post(admin, "/v1/complaints", {"customer_id": customer_id, "category": "delivery",
                                               "description": "arrived late"})
    for step, body in (("assign", {"assignee": "dana"}),
                       ("resolve", {"resolution": "A replacement was sent by courier.", "by": "dana"}),
                       ("confirm", {"by": "team lead"})):
        post(admin, f"/v1/complaints/{complaint['id']}/{step}", body, status=200)
    return complaint


def overdue_complaint(rt, admin, customer_id: str, assignee: str | None) -> str:  # type: ignore[no-untyped-def]
    """A complaint filed 20 days ago (past its warning and due marks), warned and breached."""
    filed_at = (datetime.now(timezone.utc) - timedelta(days=20)).isoformat()
    complaint_id = post(admin, "/v1/complaints", {"customer_id": customer_id, "category": "billing",
                                                  "description": "charged twice", "filed_at": filed_at})["id"]
    if assignee:
        post(admin, f"/v1/complaints/{complaint_id}/assign", {"assignee": assignee}, status=200)
    complaint = rt.store.repository.get(UUID(complaint_id))
    now = datetime.now(timezone.utc)
    complaint.issue_sla_warning(occurred_at=now, actor="sla-clock")
    complaint.record_sla_breach(occurred_at=now, actor="sla-clock")
    rt.store.save(complaint)
    return complaint_id


def events_named(rt, complaint_id: str, name: str) -> list:  # type: ignore[no-untyped-def]
    return [e for e in rt.store.events.get(UUID(complaint_id)) if type(e).__name__ == name]


def outbox_row(rt, key_prefix: str) -> dict:  # type: ignore[no-untyped-def]
    from psycopg.rows import dict_row

    with rt.pool.connection() as conn:
        return conn.cursor(row_factory=dict_row).execute(
            "SELECT * FROM crm_mail_outbox WHERE message_key LIKE %s", (key_prefix + "%",)).fetchone()


def confirmation_key(rt, complaint_id: str) -> str:  # type: ignore[no-untyped-def]
    (confirmed,) = events_named(rt, complaint_id, "ResolutionConfirmed")
    return f"{complaint_id}:confirmation:{confirmed.originator_version}"


# --- the customer's e-mail on a confirmed resolution -----------------------------------------------

def test_a_confirmed_resolution_is_mailed_to_the_customer_and_recorded_once(fresh_system, smtp_server) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = confirmed_complaint(admin, new_customer(admin)["id"])["id"]
    notifier = notifier_for(rt, smtp_server.url)
    try:
        drain(notifier)
    finally:
        notifier.close()

    (message,) = smtp_server.messages
    key = confirmation_key(rt, complaint_id)
    assert message["X-Envelope-To"] == "buyer@globex.example" and message["To"] == "buyer@globex.example"
    assert message["Subject"] == f"Your complaint {complaint_id} (delivery) has been resolved"
    assert message["Message-ID"] == f"<{key.replace(':', '.')}@crm>"
    body = message.get_content()
    assert "Dear Globex" in body and complaint_id in body and "delivery" in body
    assert "A replacement was sent by courier." in body
    (notified,) = events_named(rt, complaint_id, "CustomerNotified")
    assert (notified.channel, notified.address, notified.actor) == ("email", "buyer@globex.example", "notifier")
    row = outbox_row(rt, key)
    assert (row["status"], row["attempts"], row["recorded_at"] is not None) == ("sent", 1, True)


def test_a_restarted_or_replaying_notifier_sends_nothing_twice(fresh_system, smtp_server) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = confirmed_complaint(admin, new_customer(admin)["id"])["id"]
    first = notifier_for(rt, smtp_server.url)
    drain(first)
    first.close()

    restarted = notifier_for(rt, smtp_server.url)  # a new process on the same database
    drain(restarted)
    with rt.pool.connection() as conn:  # and one that lost its position and reads the log again
        conn.execute("DELETE FROM notifier_tracking")
    replaying = notifier_for(rt, smtp_server.url)
    assert replaying.position() == 0
    drain(replaying)
    restarted.close()
    replaying.close()

    assert len(smtp_server.messages) == 1
    assert len(events_named(rt, complaint_id, "CustomerNotified")) == 1


def test_while_smtp_is_down_nothing_is_recorded_and_delivery_is_retried_with_backoff(fresh_system, smtp_down) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = confirmed_complaint(admin, new_customer(admin)["id"])["id"]
    clock = Clock()
    notifier = notifier_for(rt, smtp_down.url, clock, retry_base=timedelta(seconds=10))
    try:
        drain(notifier)
        key = confirmation_key(rt, complaint_id)
        row = outbox_row(rt, key)
        assert (row["status"], row["attempts"]) == ("pending", 1)
        assert row["next_attempt_at"] == clock.now + timedelta(seconds=10)
        assert "cannot reach" in row["last_error"]

        clock.advance(seconds=5)  # not yet due: no attempt
        drain(notifier)
        assert outbox_row(rt, key)["attempts"] == 1
        clock.advance(seconds=5)  # due: tried again, then waits twice as long
        drain(notifier)
        row = outbox_row(rt, key)
        assert (row["status"], row["attempts"]) == ("pending", 2)
        assert row["next_attempt_at"] == clock.now + timedelta(seconds=20)
        assert events_named(rt, complaint_id, "CustomerNotified") == []

        smtp_down.start()
        clock.advance(seconds=20)
        drain(notifier)
    finally:
        notifier.close()
    assert len(smtp_down.messages) == 1
    assert (outbox_row(rt, key)["status"], outbox_row(rt, key)["attempts"]) == ("sent", 3)
    assert len(events_named(rt, complaint_id, "CustomerNotified")) == 1


def test_an_email_whose_acceptance_went_unheard_is_never_sent_again(fresh_system, smtp_server) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = confirmed_complaint(admin, new_customer(admin)["id"])["id"]
    smtp_server.mailbox.drop_answer = True
    clock = Clock()
    notifier = notifier_for(rt, smtp_server.url, clock)
    try:
        drain(notifier)
        key = confirmation_key(rt, complaint_id)
        assert outbox_row(rt, key)["status"] == "sending"
        assert outbox_row(rt, key)["last_error"].startswith("outcome unknown")
        smtp_server.mailbox.drop_answer = False
        clock.advance(seconds=3600)
        drain(notifier)
        drain(notifier_for(rt, smtp_server.url, clock))  # a restart does not resend it either
        assert len(smtp_server.messages) == 1  # the server did take it, once
        assert [m.message_key for m in notifier.stuck()] == [key]
        assert events_named(rt, complaint_id, "CustomerNotified") == []

        assert notifier.settle(key, delivered=True)  # the operator found it in the customer's mailbox
        drain(notifier)
    finally:
        notifier.close()
    assert len(smtp_server.messages) == 1
    assert notifier.stuck() == []
    assert len(events_named(rt, complaint_id, "CustomerNotified")) == 1


def test_an_email_left_sending_by_a_crash_waits_for_an_operator(fresh_system, smtp_server) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = confirmed_complaint(admin, new_customer(admin)["id"])["id"]
    clock = Clock()
    crashed = notifier_for(rt, smtp_server.url, clock)
    crashed.follow_next()
    key = confirmation_key(rt, complaint_id)
    assert crashed.outbox.claim(clock.now).message_key == key  # claimed, then the process died
    crashed.close()

    clock.advance(seconds=600)
    notifier = notifier_for(rt, smtp_server.url, clock)
    try:
        drain(notifier)
        assert smtp_server.messages == []
        assert [m.message_key for m in notifier.stuck()] == [key]
        assert notifier.settle(key, delivered=False)  # the operator found it never went out
        drain(notifier)
    finally:
        notifier.close()
    assert len(smtp_server.messages) == 1
    assert len(events_named(rt, complaint_id, "CustomerNotified")) == 1


def test_a_customer_without_email_is_skipped_and_not_recorded_as_notified(fresh_system, smtp_server) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = confirmed_complaint(admin, new_customer(admin, email_address=None)["id"])["id"]
    notifier = notifier_for(rt, smtp_server.url)
    try:
        drain(notifier)
    finally:
        notifier.close()
    assert smtp_server.messages == []
    row = outbox_row(rt, confirmation_key(rt, complaint_id))
    assert (row["status"], row["last_error"]) == ("skipped", "the customer has no e-mail address")
    assert events_named(rt, complaint_id, "CustomerNotified") == []


def test_without_an_smtp_url_messages_are_written_as_eml_files(fresh_system, tmp_path) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = confirmed_complaint(admin, new_customer(admin)["id"])["id"]
    settings = rt.settings.model_copy(update={"smtp_url": None, "data_dir": tmp_path / "crm-data"})
    notifier = Notifier(rt.store, rt.pool, settings)
    try:
        drain(notifier)
    finally:
        notifier.close()
    key = confirmation_key(rt, complaint_id)
    (written,) = (tmp_path / "crm-data" / "mail").iterdir()
    assert written.name == f"{key}.eml"
    message = email.message_from_bytes(written.read_bytes(), policy=default)
    assert message["To"] == "buyer@globex.example" and complaint_id in message["Subject"]
    assert "A replacement was sent by courier." in message.get_content()
    assert len(events_named(rt, complaint_id, "CustomerNotified")) == 1


# --- SLA alerts -----------------------------------------------------------------------------------

def test_sla_warning_and_breach_are_mailed_to_an_assignee_with_an_address(fresh_system, smtp_server) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = overdue_complaint(rt, admin, new_customer(admin)["id"], assignee="dana@crm.example")
    due_at = rt.store.repository.get(UUID(complaint_id)).deadlines.due_at
    due = f"{due_at:%Y-%m-%d %H:%M} UTC"
    notifier = notifier_for(rt, smtp_server.url)
    try:
        drain(notifier)
    finally:
        notifier.close()

    warning, breach = smtp_server.messages
    assert warning["To"] == breach["To"] == "dana@crm.example"
    assert warning["Subject"] == f"SLA warning: complaint {complaint_id} (billing) is due {due}"
    assert breach["Subject"] == f"SLA breached: complaint {complaint_id} (billing) was due {due}"
    for message in (warning, breach):
        body = message.get_content()
        assert complaint_id in body and "billing" in body and f"Due: {due}" in body
        assert "assigned to you (dana@crm.example)" in body
    assert events_named(rt, complaint_id, "CustomerNotified") == []


@pytest.mark.parametrize("assignee, says", [(None, "not assigned to anyone"),
                                            ("dana", "assigned to dana, who has no e-mail address")])
def test_sla_alerts_go_to_the_escalation_address_when_no_assignee_can_be_mailed(
        fresh_system, smtp_server, assignee, says) -> None:
    rt, admin = fresh_system(with_runners=False)
    complaint_id = overdue_complaint(rt, admin, new_customer(admin)["id"], assignee=assignee)
    notifier = notifier_for(rt, smtp_server.url)
    try:
        drain(notifier)
    finally:
        notifier.close()
    assert [m["To"] for m in smtp_server.messages] == [ESCALATION, ESCALATION]
    assert all(complaint_id in m["Subject"] and says in m.get_content() for m in smtp_server.messages)


# --- in the running system ------------------------------------------------------------------------

def test_the_notifier_thread_mails_a_confirmation_while_the_system_runs(fresh_system, smtp_server) -> None:
    rt, admin = fresh_system(with_runners=False)
    running = NotifierThread(notifier_for(rt, smtp_server.url)).start()
    try:
        complaint_id = confirmed_complaint(admin, new_customer(admin)["id"])["id"]
        deadline = time.monotonic() + 15
        while not events_named(rt, complaint_id, "CustomerNotified"):
            assert time.monotonic() < deadline, "no CustomerNotified within 15 s"
            time.sleep(0.05)
    finally:
        running.stop()
    assert len(smtp_server.messages) == 1
    assert len(events_named(rt, complaint_id, "CustomerNotified")) == 1
