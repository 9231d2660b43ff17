"""E-mail notifications: SLA alerts to whoever handles a complaint, the confirmed resolution to the
customer; never two e-mails for one event, and the customer's e-mail recorded as CustomerNotified.

The notifier follows the notification log with its own tracked position (table notifier_tracking).
The e-mail an event calls for goes into the outbox (crm_mail_outbox) in the same transaction as the
new position, so a crash neither loses nor doubles one. The sender marks a row 'sending' and
commits that before it talks to the server; a refusal (or no connection) puts the row back to
'pending' with exponential backoff; an acceptance marks it 'sent', after which CustomerNotified is
recorded through the aggregate (retried until done; the aggregate accepts it once per
confirmation). A row left in 'sending' (a crash, or an answer that never came) may have been
delivered, so it is never sent again on its own: stuck() lists it and an operator settles it.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError, Notification, Tracking
from eventsourcing.utils import get_topic
from psycopg_pool import ConnectionPool

from crm.aggregates.complaint import AlreadyRecordedError, Complaint
from crm.aggregates.errors import DomainError, InvalidValueError
from crm.aggregates.values import require_email
from crm.infra.event_store import CrmEventStore
from crm.infra.followers import FollowerThread, open_tracking, run_rounds
from crm.infra.mail import (Letter, MailOutbox, NotAcceptedError, OutboxMail, OutcomeUnknownError, compose,
                            message_id, open_mailer, resolution_letter, sla_letter)
from crm.infra.settings import Settings

log = structlog.get_logger(__name__)
APP, ACTOR = CrmEventStore.name, "notifier"
KINDS = {get_topic(Complaint.ResolutionConfirmed): "confirmation", get_topic(Complaint.SlaWarningIssued): "warning",
         get_topic(Complaint.SlaBreached): "breach"}
BATCH = 500
REFUSALS_BEFORE_FAILED = 3  # 5xx answers to the same message before it is given up as 'failed'
RETRY_CAP = timedelta(minutes=15)
STUCK_CHECK_EVERY = timedelta(minutes=1)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def alert_recipient(assignee: str | None, escalation_address: str) -> str:
    """The assignee when it is an e-mail address, else (a name, or nobody) the escalation address."""
    try:
        return require_email(assignee) or escalation_address
    except InvalidValueError:
        return escalation_address


class Notifier:
    """Follows the log into the mail outbox, delivers the outbox, records CustomerNotified; run() until stopped."""

    def __init__(self, store: CrmEventStore, pool: ConnectionPool, settings: Settings,
                 escalation_address: str = "sla-alerts@crm.invalid", *, sender: str = "crm@crm.invalid",
                 database_url: str | None = None, clock: Callable[[], datetime] = utc_now,
                 retry_base: timedelta = timedelta(seconds=2), stuck_after: timedelta = timedelta(minutes=2),
                 batch_size: int = BATCH) -> None:
        self.store, self.escalation_address, self.sender, self.clock = store, escalation_address, sender, clock
        self.retry_base, self.stuck_after, self.batch_size = retry_base, stuck_after, batch_size
        self.mailer = open_mailer(settings.smtp_url, settings.data_dir)
        self.outbox = MailOutbox(pool)
        self.tracking = open_tracking(database_url or settings.database_url or pool.conninfo, "notifier")
        self._failures, self._outage_since, self._paused_until = 0, 0.0, None
        self._accepted: dict[str, datetime] = {}  # taken by the server, 'sent' not yet committed
        self._reported: set[str] = set()
        self._next_stuck_check: datetime | None = None

    def position(self) -> int:
        return self.tracking.max_tracking_id(APP) or 0

    def run(self, stop: threading.Event) -> None:
        run_rounds(stop, self.process_next, name="notifier", idle_wait=0.1)

    def process_next(self) -> int:
        """One round: enqueue the next events' e-mails, deliver what is due, record deliveries; work done."""
        return self.follow_next() + self.deliver_due() + self.record_deliveries()

    # --- following the log -------------------------------------------------------------------

    def follow_next(self) -> int:
        """The e-mails of the next batch of events into the outbox, with the new position, in one transaction."""
        notifications = self.store.recorder.select_notifications(start=self.position() + 1, limit=self.batch_size)
        if not notifications:
            return 0
        now = self.clock()
        rows = [self._outbox_row(n, now) for n in notifications if n.topic in KINDS]
        try:
            with self.tracking.datastore.transaction(commit=True) as curs:
                self.outbox.enqueue(curs, rows)
                self.tracking._insert_tracking(curs, Tracking(APP, notifications[-1].id))
        except IntegrityError:  # another notifier advanced first; its rows have the same keys
            log.info("notifier.position_taken", position=notifications[-1].id)
            return 0
        return len(notifications)

    def _outbox_row(self, notification: Notification, now: datetime) -> dict[str, Any]:
        kind, version = KINDS[notification.topic], notification.originator_version
        key = f"{notification.originator_id}:{kind}:{version}"
        complaint = self.store.repository.get(notification.originator_id, version=version)
        skipped = None
        if kind == "confirmation":
            letter, skipped = self._resolution(key, complaint)
        else:
            letter = sla_letter(key, alert_recipient(complaint.assignee, self.escalation_address),
                                breached=kind == "breach", complaint_id=complaint.id,
                                category=self._category(complaint.id), tier=complaint.tier,
                                assignee=complaint.assignee, due_at=complaint.deadlines.due_at)
        return {"message_key": key, "kind": kind, "complaint_id": complaint.id, "event_version": version,
                "position": notification.id, "recipient": letter.recipient or None, "subject": letter.subject,
                "body": letter.body, "status": "skipped" if skipped else "pending", "last_error": skipped,
                "message_id": message_id(key), "next_attempt_at": now, "created_at": now}

    def _resolution(self, key: str, confirmed: Complaint) -> tuple[Letter, str | None]:
        """The customer's letter for this confirmation, and why it is not to be sent (or None)."""
        customer = self.store.customers.get(confirmed.customer_id)
        current = self.store.repository.get(confirmed.id)
        recipient = customer.profile.get("email") or ""
        letter = resolution_letter(key, recipient, customer_name=customer.profile.get("name"),
                                   complaint_id=confirmed.id, category=self._category(confirmed.id),
                                   resolution=confirmed.resolution)
        if current.confirmed_version != confirmed.confirmed_version:
            return letter, "superseded: the complaint was reopened after this confirmation"
        if current.notified_for_version == confirmed.confirmed_version:
            return letter, "the customer was already notified of this resolution"
        return letter, None if recipient else "the customer has no e-mail address"

    def _category(self, complaint_id: UUID) -> str:
        (filed,) = self.store.events.get(complaint_id, lte=1)  # the aggregate keeps no category
        return filed.category

    # --- delivering the outbox ---------------------------------------------------------------

    def deliver_due(self) -> int:
        """Send the due 'pending' e-mails, each marked 'sending' first; the number attempted."""
        now = self.clock()
        self._commit_accepted()
        self._report_stuck(now)
        if self._paused_until is not None and now < self._paused_until:
            return 0  # the server is down: wait for the backoff, not for every row's own
        attempted = 0
        while attempted < self.batch_size and (mail := self.outbox.claim(now)) is not None:
            attempted += 1
            if not self._deliver(mail, now):
                break
        return attempted

    def _deliver(self, mail: OutboxMail, now: datetime) -> bool:
        """One claimed e-mail; False when the server is unreachable (stop this round)."""
        try:
            reply = self.mailer.send(mail.message_key, compose(mail.letter(), self.sender, now))
        except OutcomeUnknownError as error:
            self.outbox.note_unknown(mail.message_key, str(error))
            log.error("notifier.mail_outcome_unknown", message_key=mail.message_key, error=str(error)[:300])
            return True
        except NotAcceptedError as error:
            return self._not_accepted(mail, error, now)
        self._accepted[mail.message_key] = now
        self._commit_accepted()
        if self._failures:
            log.info("notifier.mail_server_back", outage_s=round(time.monotonic() - self._outage_since, 1))
        self._failures, self._paused_until = 0, None
        log.info("notifier.mail_sent", message_key=mail.message_key, reply=reply[:200])
        return True

    def _not_accepted(self, mail: OutboxMail, error: NotAcceptedError, now: datetime) -> bool:
        if error.permanent and mail.attempts >= REFUSALS_BEFORE_FAILED:
            self.outbox.fail(mail.message_key, str(error))
            log.error("notifier.mail_failed", message_key=mail.message_key, error=str(error)[:300])
            return True
        self.outbox.retry_later(mail.message_key, now + self._backoff(mail.attempts), str(error))
        if error.permanent:
            log.warning("notifier.mail_refused", message_key=mail.message_key, error=str(error)[:300])
            return True
        self._failures += 1
        if self._failures == 1:  # one line per outage, not one per message
            self._outage_since = time.monotonic()
            log.warning("notifier.mail_server_unavailable", error=str(error)[:300])
        self._paused_until = now + self._backoff(self._failures)
        return False

    def _backoff(self, attempts: int) -> timedelta:
        return min(self.retry_base * 2 ** max(attempts - 1, 0), RETRY_CAP)

    def _commit_accepted(self) -> None:
        """Mark accepted e-mails 'sent'; kept in memory until the database has taken it."""
        for key, at in list(self._accepted.items()):
            self.outbox.mark_sent(key, at)
            del self._accepted[key]

    def _report_stuck(self, now: datetime) -> None:
        """Log each stuck e-mail once per process (looked for at most once a minute)."""
        if self._next_stuck_check is not None and now < self._next_stuck_check:
            return
        self._next_stuck_check = now + STUCK_CHECK_EVERY
        for mail in self.stuck(now):
            if mail.message_key not in self._reported:
                self._reported.add(mail.message_key)
                log.error("notifier.mail_stuck", message_key=mail.message_key, recipient=mail.recipient,
                          claimed_at=mail.claimed_at.isoformat(), last_error=mail.last_error,
                          hint="may have been delivered; never resent; settle it by hand")

    def stuck(self, now: datetime | None = None) -> list[OutboxMail]:
        """E-mails left 'sending' (a crash, or no answer): perhaps delivered, so an operator decides."""
        return self.outbox.sending_since((now or self.clock()) - self.stuck_after)

    def settle(self, message_key: str, *, delivered: bool) -> bool:
        """An operator's verdict on a stuck e-mail: delivered (mark it sent) or not (send it again)."""
        if delivered:
            return self.outbox.mark_sent(message_key, self.clock())
        return self.outbox.retry_later(message_key, self.clock(), "not delivered, said an operator")

    # --- recording what was delivered --------------------------------------------------------

    def record_deliveries(self) -> int:
        """CustomerNotified for each confirmation e-mail the server accepted; the number recorded."""
        done = 0
        for mail in self.outbox.unrecorded(self.batch_size):
            try:
                self._record_notified(mail)
            except IntegrityError:  # the complaint changed meanwhile: the next round reloads it
                continue
            self.outbox.mark_recorded(mail.message_key, self.clock())
            done += 1
        return done

    def _record_notified(self, mail: OutboxMail) -> None:
        complaint = self.store.repository.get(mail.complaint_id)
        confirmed = self.store.repository.get(mail.complaint_id, version=mail.event_version).confirmed_version
        if complaint.confirmed_version != confirmed:
            log.warning("notifier.confirmation_superseded", message_key=mail.message_key)
            return
        try:
            complaint.record_customer_notified(channel="email", address=mail.recipient, occurred_at=self.clock(),
                                               actor=ACTOR)
        except AlreadyRecordedError:
            return
        except DomainError as error:
            log.warning("notifier.cannot_record_notified", message_key=mail.message_key, error=str(error))
            return
        self.store.save(complaint)

    def close(self) -> None:
        self.tracking.datastore.close()


class NotifierThread(FollowerThread):
    """The notifier inside `crm up`."""

    def __init__(self, notifier: Notifier) -> None:
        super().__init__(notifier, "crm-notifier")
        self.notifier = notifier
