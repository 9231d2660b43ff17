"""Sending e-mail: the letters, the outbox that sends each at most once, and the transport, SMTP
(CRM_SMTP_URL, smtp://host:port) or, without it, .eml files under the data folder.

A send ends in one of three ways, and the outbox relies on telling them apart: accepted (the
server answered 250 to the whole message), not accepted (refused, or broken off before the
message's final line went out, so sending it again cannot make a duplicate), or unknown (the
whole message went out but no answer came back: the server may have taken it).
"""

from __future__ import annotations

import os
import re
import smtplib
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse
from uuid import UUID

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

# Quoted-printable bodies and encoded headers: any server takes them, 8BITMIME or not.
POLICY = SMTP.clone(cte_type="7bit")
SMTP_TIMEOUT = 30.0


class NotAcceptedError(Exception):
    """The server did not take the message; sending it again cannot make a duplicate."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent  # a 5xx answer: the same message will most likely be refused again


class OutcomeUnknownError(Exception):
    """The whole message went out but no answer came back: the server may have taken it."""


@dataclass(frozen=True)
class Letter:
    """One e-mail as the outbox keeps it: its key, recipient, subject and plain-text body."""

    key: str
    recipient: str
    subject: str
    body: str


def message_id(key: str) -> str:
    """The Message-ID of the letter with this outbox key: the same on every attempt."""
    return f"<{key.replace(':', '.')}@crm>"


def compose(letter: Letter, sender: str, now: datetime) -> EmailMessage:
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = letter.recipient
    message["Subject"] = " ".join(letter.subject.split())  # a line break in a header is an injection
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(letter.key)
    message.set_content(letter.body)
    return message


def resolution_letter(key: str, recipient: str, *, customer_name: str | None, complaint_id: object,
                      category: str, resolution: str | None) -> Letter:
    """The customer's e-mail: their complaint is resolved, and how."""
    return Letter(key, recipient, f"Your complaint {complaint_id} ({category}) has been resolved",
                  f"Dear {customer_name or 'customer'},\n\n"
                  f"your complaint {complaint_id} about {category} has been resolved.\n\n"
                  f"Resolution:\n{resolution or '(none given)'}\n\n"
                  f"If anything is still not right, please contact us and quote complaint {complaint_id}.\n")


def sla_letter(key: str, recipient: str, *, breached: bool, complaint_id: object, category: str,
               tier: str | None, assignee: str | None, due_at: datetime) -> Letter:
    """The alert to whoever handles the complaint: its SLA due time is near, or has passed."""
    due = utc_text(due_at)
    if assignee is None:
        handler = "It is not assigned to anyone."
    elif assignee == recipient:
        handler = f"It is assigned to you ({assignee})."
    else:
        handler = f"It is assigned to {assignee}, who has no e-mail address on record, so this goes to escalation."
    subject, state, ask = (
        (f"SLA breached: complaint {complaint_id} ({category}) was due {due}", "was not resolved by",
         "It is overdue now: please resolve it or escalate it.") if breached else
        (f"SLA warning: complaint {complaint_id} ({category}) is due {due}", "is close to",
         "Please resolve it before then, or record that it is waiting for the customer."))
    return Letter(key, recipient, subject,
                  f"Complaint {complaint_id} ({category}, tier {tier or 'unrated'}) {state} its SLA due time.\n\n"
                  f"Due: {due}\n{handler}\n\n{ask}\n")


def utc_text(when: datetime) -> str:
    return f"{when.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


class Mailer(Protocol):
    def send(self, key: str, message: EmailMessage) -> str:
        """Deliver the message; the server's answer, or NotAcceptedError / OutcomeUnknownError."""


def open_mailer(smtp_url: str | None, data_dir: Path) -> Mailer:
    """SMTP when a URL is set, else .eml files under data_dir/mail/."""
    return SmtpMailer.from_url(smtp_url) if smtp_url else EmlMailer(Path(data_dir) / "mail")


class EmlMailer:
    """Writes each message to <folder>/<key>.eml; a file written whole counts as accepted."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, key: str, message: EmailMessage) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.eml"
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_bytes(message.as_bytes())
            os.replace(partial, path)  # the file appears whole or not at all
        except OSError as error:
            raise NotAcceptedError(f"cannot write {path}: {error}") from error
        return f"written to {path}"


class SmtpMailer:
    """Plain SMTP to one server, a connection per message."""

    def __init__(self, host: str, port: int = 25, timeout: float = SMTP_TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    @classmethod
    def from_url(cls, url: str) -> SmtpMailer:
        parts = urlparse(url)
        if parts.scheme != "smtp" or not parts.hostname or parts.username:
            raise ValueError("CRM_SMTP_URL must be smtp://host:port")
        return cls(parts.hostname, parts.port or 25)

    def send(self, key: str, message: EmailMessage) -> str:
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as error:
            raise NotAcceptedError(f"cannot reach {self.host}:{self.port}: {error!r}") from error
        try:
            self._hand_over(smtp, message)
            try:
                code, reply = smtp.getreply()  # the only answer that says whether it was taken
            except (OSError, smtplib.SMTPException) as error:
                raise OutcomeUnknownError(f"no answer after the message was sent: {error!r}") from error
            if code != 250:
                raise NotAcceptedError(f"{code} {reply.decode(errors='replace')}", permanent=code >= 500)
            return f"{code} {reply.decode(errors='replace')}"
        finally:
            _hang_up(smtp)

    @staticmethod
    def _hand_over(smtp: smtplib.SMTP, message: EmailMessage) -> None:
        """Everything up to the reply to the message itself; any failure here is definite."""
        try:
            smtp.ehlo_or_helo_if_needed()
            sender, recipient = (message[name].addresses[0].addr_spec for name in ("From", "To"))
            for command, expected in ((f"MAIL FROM:<{sender}>", (250,)), (f"RCPT TO:<{recipient}>", (250, 251)),
                                      ("DATA", (354,))):
                code, reply = smtp.docmd(command)
                if code not in expected:
                    raise smtplib.SMTPResponseException(code, reply)
            # Until sendall returns, the final "\r\n.\r\n" has not all gone out: nothing was taken.
            smtp.send(dot_stuffed(message.as_bytes()))
        except smtplib.SMTPResponseException as error:
            raise NotAcceptedError(f"{error.smtp_code} {error.smtp_error!r}",
                                   permanent=error.smtp_code >= 500) from error
        except (OSError, smtplib.SMTPException) as error:
            raise NotAcceptedError(repr(error)) from error


def dot_stuffed(payload: bytes) -> bytes:
    """The DATA section (RFC 5321 4.5.2): leading dots doubled, ended by a line with one dot."""
    stuffed = re.sub(rb"(?m)^\.", b"..", payload)
    return stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def _hang_up(smtp: smtplib.SMTP) -> None:
    """QUIT politely; a server that is gone already changes nothing about the outcome."""
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


# --- the outbox: every e-mail the notifier means to send, and how far each got ------------------

OUTBOX_SCHEMA = """CREATE TABLE IF NOT EXISTS crm_mail_outbox (
    message_key text PRIMARY KEY, kind text NOT NULL, complaint_id uuid NOT NULL,
    event_version integer NOT NULL, position bigint NOT NULL, recipient text, subject text NOT NULL,
    body text NOT NULL, message_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts integer NOT NULL DEFAULT 0, last_error text, next_attempt_at timestamptz,
    claimed_at timestamptz, created_at timestamptz NOT NULL, sent_at timestamptz,
    recorded_at timestamptz);
COMMENT ON COLUMN crm_mail_outbox.recorded_at IS 'CustomerNotified recorded (or found not to apply)';
CREATE INDEX IF NOT EXISTS crm_mail_outbox_due ON crm_mail_outbox (next_attempt_at, position)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS crm_mail_outbox_unrecorded ON crm_mail_outbox (position)
    WHERE status = 'sent' AND kind = 'confirmation' AND recorded_at IS NULL"""
COLUMNS = ("message_key, kind, complaint_id, event_version, recipient, subject, body, status, attempts, "
           "last_error, claimed_at")
ENQUEUE = """INSERT INTO crm_mail_outbox (message_key, kind, complaint_id, event_version, position, recipient,
    subject, body, message_id, status, last_error, next_attempt_at, created_at)
VALUES (%(message_key)s, %(kind)s, %(complaint_id)s, %(event_version)s, %(position)s, %(recipient)s,
    %(subject)s, %(body)s, %(message_id)s, %(status)s, %(last_error)s, %(next_attempt_at)s, %(created_at)s)
ON CONFLICT (message_key) DO NOTHING"""
CLAIM = f"""UPDATE crm_mail_outbox SET status = 'sending', claimed_at = %(now)s, attempts = attempts + 1
WHERE status = 'pending' AND message_key = (
    SELECT message_key FROM crm_mail_outbox WHERE status = 'pending' AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at, position LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING {COLUMNS}"""
# The ways out of 'sending'; each applies only to a row still 'sending'.
MOVES = {
    "sent": "status = 'sent', sent_at = %(at)s, last_error = NULL",
    "retry": "status = 'pending', next_attempt_at = %(at)s, last_error = %(error)s",
    "failed": "status = 'failed', last_error = %(error)s",
    "unknown": "last_error = %(error)s",
}


@dataclass
class OutboxMail:
    """One e-mail of the outbox, as the sender and an operator see it."""

    message_key: str
    kind: str
    complaint_id: UUID
    event_version: int
    recipient: str | None
    subject: str
    body: str
    status: str
    attempts: int
    last_error: str | None
    claimed_at: datetime | None

    def letter(self) -> Letter:
        return Letter(self.message_key, self.recipient or "", self.subject, self.body)


class MailOutbox:
    """The crm_mail_outbox table and the steps of an e-mail through it."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        with pool.connection() as conn:
            conn.execute(OUTBOX_SCHEMA)

    @staticmethod
    def enqueue(curs: Any, rows: list[dict[str, Any]]) -> None:
        """On the caller's transaction (the follower's, with its position); a known key is left as it is."""
        for row in rows:
            curs.execute(ENQUEUE, row)

    def claim(self, now: datetime) -> OutboxMail | None:
        """The next due 'pending' e-mail, now 'sending' (committed before anything is sent)."""
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=class_row(OutboxMail)).execute(CLAIM, {"now": now}).fetchone()

    def _move(self, key: str, move: str, at: datetime | None = None, error: str | None = None) -> bool:
        with self.pool.connection() as conn:
            cur = conn.execute(f"UPDATE crm_mail_outbox SET {MOVES[move]} WHERE message_key = %(key)s "
                               "AND status = 'sending'", {"key": key, "at": at, "error": error and error[:2000]})
            return cur.rowcount == 1

    def mark_sent(self, key: str, at: datetime) -> bool:
        return self._move(key, "sent", at=at)

    def retry_later(self, key: str, at: datetime, error: str) -> bool:
        return self._move(key, "retry", at=at, error=error)

    def fail(self, key: str, error: str) -> bool:
        return self._move(key, "failed", error=error)

    def note_unknown(self, key: str, error: str) -> bool:
        return self._move(key, "unknown", error=f"outcome unknown: {error}")

    def sending_since(self, before: datetime) -> list[OutboxMail]:
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=class_row(OutboxMail)).execute(
                f"SELECT {COLUMNS} FROM crm_mail_outbox WHERE status = 'sending' AND claimed_at < %s "
                "ORDER BY claimed_at", (before,)).fetchall()

    def unrecorded(self, limit: int) -> list[OutboxMail]:
        """Confirmation e-mails sent whose CustomerNotified is not yet recorded."""
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=class_row(OutboxMail)).execute(
                f"SELECT {COLUMNS} FROM crm_mail_outbox WHERE status = 'sent' AND kind = 'confirmation' "
                "AND recorded_at IS NULL ORDER BY position LIMIT %s", (limit,)).fetchall()

    def mark_recorded(self, key: str, at: datetime) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE crm_mail_outbox SET recorded_at = %s WHERE message_key = %s", (at, key))
