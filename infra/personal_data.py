"""Personal data encrypted with a key per customer, so erasure destroys the key (crypto-shredding).

Events are immutable and hash-chained, so GDPR erasure cannot edit them. Instead the personal
fields of an event (a customer's name, e-mail, phone, birthday and special days; the address a
resolution e-mail went to) are sealed with AES-256-GCM under that customer's key before the event
is stored, and the stored event carries only the ciphertext plus the names of the sealed fields:

    {"...": ..., "_personal": {"customer": "<hex>", "fields": ["name", ...], "nonce": "..", "sealed": ".."}}

Erasure (`PersonalDataErased`) replaces the key by a tombstone. From then on every reader (the
aggregate, projections, rebuilds, the relay, the audit history) decodes those fields as `ERASED`,
the stored bytes never change, so the hash chain still verifies, and business facts (orders,
profit, complaints) are untouched. Customer snapshots (the aggregate's state, kept outside the
log) seal the profile's personal fields the same way. The associated data of each seal is the
event's id and version, so ciphertext cannot be moved to another event.

Keys are cached per process for KEY_TTL seconds; a process that sees the erasure event (or erases)
drops the key at once, and any other process stops using it within KEY_TTL.

A new customer's key is made where its first event (`Customer.Registered`) is mapped, travels
with that stored event (`WithNewKey`), and is inserted by the event store's recorder in the
event's own transaction (`crm.infra.event_store.CrmRecorder`): the key exists exactly when the
customer does, and registering costs no statement of its own.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from crm.aggregates.complaint import Complaint
from crm.aggregates.customer import Customer
from crm.infra.cloudevents import PERSONAL_FIELD as FIELD

KEY_TTL = 60.0
# Keys of the customers seen last, per mapper (a process may hold several: `crm projections` one
# per projection). A soak run showed the old limit of 200,000 as steady growth, ~400 bytes per
# new customer per mapper; 5,000 is more than a batch of prefetched keys (rebuilds, the relay).
CACHE_LIMIT = 5_000
ERASED: dict[str, Any] = {"name": "[erased]", "email": None, "phone": None, "birthday": None,
                          "special_days": [], "address": "[erased]"}
CUSTOMER_FIELDS = ("name", "email", "phone", "birthday", "special_days")
REGISTERED, PROFILE_UPDATED = get_topic(Customer.Registered), get_topic(Customer.ProfileUpdated)
CUSTOMER_NOTIFIED, ERASURE = get_topic(Complaint.CustomerNotified), get_topic(Customer.PersonalDataErased)
SNAPSHOT = get_topic(Customer.Snapshot)


@dataclass(frozen=True)
class Sealed:
    """How the events of one sealed topic hold personal data: the state key naming the owning
    customer, the path of keys to the dict that holds the fields, and which fields they are."""

    owner: str
    path: tuple[str, ...]
    fields: tuple[str, ...]


# Sealing and opening both follow this table, so a new sealed topic is one entry here.
SEALED: dict[str, Sealed] = {
    REGISTERED: Sealed("originator_id", (), CUSTOMER_FIELDS),
    PROFILE_UPDATED: Sealed("originator_id", ("changes",), CUSTOMER_FIELDS),
    CUSTOMER_NOTIFIED: Sealed("customer_id", (), ("address",)),  # the address a resolution e-mail went to
    SNAPSHOT: Sealed("originator_id", ("state", "profile"), CUSTOMER_FIELDS),  # a customer's profile
}
SEALED_TOPICS = tuple(SEALED)

KEYS_SCHEMA = """CREATE TABLE IF NOT EXISTS crm_personal_keys (
    customer_id uuid PRIMARY KEY, key bytea, created_at timestamptz NOT NULL DEFAULT now(),
    erased_at timestamptz, CHECK ((key IS NULL) = (erased_at IS NOT NULL)))"""

# For a sealed event that is not the customer's first, when this process has its key neither
# cached nor pending: the customer's key, or a new one for a customer stored before keys went with
# the first event (WithNewKey) (one statement: the insert's own row is not visible to the SELECT
# of the same statement, an existing one is). Run alone on an autocommit
# connection, the statement is its own transaction, and `set_config(..., true)` turns off the WAL
# flush of that transaction's commit: no flush of its own, because the event sealed with this key
# commits later, and flushing that commit flushes all WAL before it, this key included. One round
# trip instead of four (BEGIN, SET LOCAL, the insert, COMMIT): 0.25-0.34 -> 0.15 ms of CPU and
# 0.42-0.51 -> 0.28 ms per new customer (throwaway timing loop, 2,000 keys, 2026-12-01). The
# key row is selected through `quiet` so that the setting is applied whenever a row is inserted.
CREATE_KEY = """WITH quiet AS (SELECT set_config('synchronous_commit', 'off', true) AS off),
made AS (INSERT INTO crm_personal_keys (customer_id, key) VALUES (%(id)s, %(key)s)
         ON CONFLICT (customer_id) DO NOTHING RETURNING key)
SELECT made.key FROM made, quiet WHERE quiet.off = 'off'
UNION ALL SELECT key FROM crm_personal_keys WHERE customer_id = %(id)s"""


# New customers' keys, in the transaction of their first events (CrmRecorder). No ON CONFLICT: a
# key row that already exists for the id (the id registered before, or a tombstone) fails the
# whole transaction with a unique violation, which the library raises as its IntegrityError, so
# an event is never stored sealed under a key that is not the stored one.
INSERT_NEW_KEYS = ("INSERT INTO crm_personal_keys (customer_id, key) "
                   "SELECT * FROM unnest(%s::uuid[], %s::bytea[])")


@dataclass(frozen=True)
class WithNewKey(StoredEvent):
    """A stored event sealed under a key made for it (a new customer's `Registered`): the event
    store's recorder inserts the key, for the event's originator, in the event's transaction.
    Anything that stores events without that recorder must refuse these (`copy_events` does)."""

    new_key: bytes = field(default=b"", repr=False, compare=False)


class MissingKeyError(LookupError):
    """Sealed data names a customer with no key row at all (never created, or the table was lost)."""


class KeyStore:
    """Customer keys in PostgreSQL (table crm_personal_keys), with a per-process cache.

    `datastore` is the library's PostgresDatastore (its connections are in autocommit mode)."""

    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore
        self._cache: dict[UUID, tuple[bytes | None, float]] = {}
        # keys made for first events not stored yet (new_key), with the thread that mapped them
        self._pending: dict[UUID, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        try:
            with datastore.transaction(commit=True) as curs:
                curs.execute(KEYS_SCHEMA)
        except psycopg.errors.UniqueViolation:
            pass  # another process created it at the same moment (IF NOT EXISTS is not atomic)

    def key_for(self, customer_id: UUID, *, create: bool) -> bytes | None:
        """The customer's key; None once erased. With create, a customer without a key gets one."""
        cached = self._fresh(customer_id, time.monotonic())
        if cached is not None:
            return cached[0]
        pending = self._pending.get(customer_id)
        if pending is not None and pending[0] == threading.get_ident():
            # the customer's first event, mapped by this thread (the same save), is not stored yet;
            # never another thread's: its registration may yet fail, and the key with it
            return pending[1]
        with self.datastore.get_connection() as conn:  # autocommit: one statement, one transaction
            if create:
                row = conn.execute(CREATE_KEY, {"id": customer_id, "key": AESGCM.generate_key(256)}).fetchone()
            else:
                row = conn.execute("SELECT key FROM crm_personal_keys WHERE customer_id = %(id)s",
                                   {"id": customer_id}).fetchone()
        if row is None:
            raise MissingKeyError(f"no personal-data key for customer {customer_id}")
        return self._remember(customer_id, row["key"])

    def new_key(self, customer_id: UUID) -> bytes:
        """A new key for a new customer's first event (`WithNewKey`), stored in that event's
        transaction. Always a new one, even where a key for the id is cached: the transaction
        must find no key row for the id, or it fails. Until then the key is pending: the
        customer's other events mapped by the same thread before the commit (the same save) are
        sealed with it."""
        key = AESGCM.generate_key(256)
        with self._lock:
            if len(self._pending) >= CACHE_LIMIT:  # first events mapped and never stored (none in crm's paths)
                for oldest in list(itertools.islice(self._pending, CACHE_LIMIT // 2)):
                    del self._pending[oldest]
            self._pending[customer_id] = (threading.get_ident(), key)
        return key

    def settle(self, stored: Iterable[WithNewKey], *, committed: bool) -> None:
        """After the transaction of new customers' first events: their keys no longer pending,
        and cached if it committed."""
        stored = list(stored)
        with self._lock:
            for event in stored:
                if self._pending.get(event.originator_id, (0, b""))[1] == event.new_key:  # type: ignore[arg-type]
                    del self._pending[event.originator_id]  # type: ignore[arg-type]
        if committed:
            for event in stored:
                self._remember(event.originator_id, event.new_key)  # type: ignore[arg-type]

    def prefetch(self, customer_ids: Iterable[UUID]) -> None:
        """Load many customers' keys in one query (for batch readers: rebuilds, the relay, audit)."""
        now = time.monotonic()
        wanted = list({c for c in customer_ids if self._fresh(c, now) is None})
        if not wanted:
            return
        with self.datastore.transaction(commit=False) as curs:
            curs.execute("SELECT customer_id, key FROM crm_personal_keys WHERE customer_id = ANY(%s)", (wanted,))
            rows = curs.fetchall()
        for row in rows:
            self._remember(row["customer_id"], row["key"])

    def destroy(self, customer_id: UUID) -> None:
        """Erase the key for good, leaving a tombstone (so no new key is ever made for this customer).
        Idempotent. PostgreSQL keeps the old bytes in WAL and backups until they age out."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute("INSERT INTO crm_personal_keys (customer_id, key, erased_at) VALUES (%s, NULL, now()) "
                         "ON CONFLICT (customer_id) DO UPDATE SET key = NULL, "
                         "erased_at = coalesce(crm_personal_keys.erased_at, now())", (customer_id,))
        self.forget(customer_id, erased=True)

    def _fresh(self, customer_id: UUID, now: float) -> tuple[bytes | None, float] | None:
        """The cache's entry if usable (an erasure for good, a key for KEY_TTL seconds), else None.
        One read of the cache: another thread may trim it meanwhile."""
        cached = self._cache.get(customer_id)
        return cached if cached is not None and (cached[0] is None or now - cached[1] < KEY_TTL) else None

    def forget(self, customer_id: UUID, *, erased: bool) -> None:
        with self._lock:
            if erased:
                self._cache[customer_id] = (None, time.monotonic())
            else:
                self._cache.pop(customer_id, None)

    def _remember(self, customer_id: UUID, key: bytes | None) -> bytes | None:
        key = None if key is None else bytes(key)
        with self._lock:
            self._cache.pop(customer_id, None)  # re-inserted last: the dict's order is least recently stored first
            if len(self._cache) >= CACHE_LIMIT:
                for oldest in list(itertools.islice(self._cache, CACHE_LIMIT // 2)):
                    del self._cache[oldest]
            self._cache[customer_id] = (key, time.monotonic())
        return key


def _personal_part(topic: str, state: dict[str, Any]) -> tuple[UUID | None, dict[str, Any], dict[str, Any]]:
    """(owning customer, where the personal fields live, the personal fields) of an event's state,
    the dicts on the way copied (the domain event keeps its own); no owner if none."""
    sealed = SEALED.get(topic)
    owner = state.get(sealed.owner) if sealed else None
    if sealed is None or owner is None:
        return None, state, {}
    holder = _holder(topic, state, copy=True)
    return owner, holder, {f: holder[f] for f in sealed.fields if f in holder}


def _holder(topic: str, state: dict[str, Any], *, copy: bool) -> dict[str, Any]:
    """The dict of an event's state that holds the topic's personal fields (SEALED)."""
    holder = state
    for name in SEALED[topic].path:
        if copy:
            holder[name] = dict(holder[name])
        holder = holder[name]
    return holder


def _aad(originator_id: Any, version: int) -> bytes:
    return f"{originator_id}:{version}".encode()


class PersonalDataMapper(Mapper[UUID]):
    """The library's mapper, sealing personal fields under their customer's key (see module doc)."""

    keys: KeyStore

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        topic = get_topic(type(domain_event))
        if topic == ERASURE:
            self.keys.forget(domain_event.originator_id, erased=False)  # re-read: the tombstone follows
        if topic not in SEALED_TOPICS:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        owner, holder, personal = _personal_part(topic, state)
        if owner is None or not personal:
            return super().to_stored_event(domain_event)
        made = topic == REGISTERED  # a new customer: a new key, which goes with the event (WithNewKey)
        key = self.keys.new_key(owner) if made else self.keys.key_for(owner, create=True)
        for name in personal:
            del holder[name]
        seal: dict[str, Any] = {"customer": owner.hex, "fields": list(personal)}
        if key is not None:  # an erased customer's personal data is never stored, sealed or not
            nonce = os.urandom(12)
            sealed = AESGCM(key).encrypt(nonce, self.transcoder.encode(personal),
                                         _aad(domain_event.originator_id, domain_event.originator_version))
            seal.update(nonce=base64.b64encode(nonce).decode(), sealed=base64.b64encode(sealed).decode())
        state[FIELD] = seal
        clone = object.__new__(type(domain_event))
        object.__setattr__(clone, "__dict__", state)
        stored = super().to_stored_event(clone)
        if not made:
            return stored
        assert key is not None and owner == stored.originator_id
        return WithNewKey(stored.originator_id, stored.originator_version, stored.topic, stored.state, key)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        domain_event = super().to_domain_event(stored_event)
        if stored_event.topic == ERASURE:
            self.keys.forget(stored_event.originator_id, erased=True)
        state = vars(domain_event)
        seal = state.pop(FIELD, None)
        if seal is not None:
            _holder(stored_event.topic, state, copy=False).update(self._open(seal, stored_event))
        return domain_event

    def _open(self, seal: dict[str, Any], stored_event: StoredEvent) -> dict[str, Any]:
        key = self.keys.key_for(UUID(seal["customer"]), create=False) if "sealed" in seal else None
        if key is None:
            return {name: ERASED[name] for name in seal["fields"]}
        opened: dict[str, Any] = self.transcoder.decode(_decrypt(key, seal["nonce"], seal["sealed"], stored_event))
        return opened

    def opened_json(self, stored: StoredEvent) -> tuple[bytes, bytes] | None:
        """For the relay: (the stored JSON without its seal, the sealed fields as stored JSON), the
        seal opened (or its fields as ERASED) without decoding the rest of the event. Only where
        the fields sit at the top level of the state and the seal ends it, as `to_stored_event`
        writes it; None otherwise (the caller decodes the event through the mapper)."""
        sealed = SEALED.get(stored.topic)
        found = _SEAL_AT_END.search(stored.state) if sealed is not None and not sealed.path else None
        if found is None:
            return None
        customer, fields, nonce, ciphertext = found.groups()
        key = self.keys.key_for(UUID(customer.decode()), create=False) if ciphertext is not None else None
        if key is None:
            personal = json.dumps({name: ERASED[name] for name in json.loads(fields)}, separators=(",", ":")).encode()
        else:
            personal = _decrypt(key, nonce.decode(), ciphertext.decode(), stored)
        return stored.state[:found.start()] + b"}", personal

    def prefetch(self, stored_events: Iterable[StoredEvent]) -> None:
        """Load the keys a batch of stored events will need, in one query."""
        owners = []
        for stored in stored_events:
            if stored.topic in SEALED_TOPICS and b'"' + FIELD.encode() in stored.state:
                owners.append(_owner(stored))
        if owners:
            self.keys.prefetch(owners)


# The seal as to_stored_event appends it, last in the state: customer, fields, and (unless the
# customer was already erased) nonce and ciphertext, both base64.
_SEAL_AT_END = re.compile(rb',"%s":\{"customer":"([0-9a-f]{32})","fields":(\[[^\]]*\])'
                          rb'(?:,"nonce":"([A-Za-z0-9+/=]*)","sealed":"([A-Za-z0-9+/=]*)")?\}\}\Z' % FIELD.encode())


def _decrypt(key: bytes, nonce: str, sealed: str, stored_event: StoredEvent) -> bytes:
    try:
        return AESGCM(key).decrypt(base64.b64decode(nonce), base64.b64decode(sealed),
                                   _aad(stored_event.originator_id, stored_event.originator_version))
    except InvalidTag as error:
        raise ValueError(f"personal data of event {stored_event.originator_id}:"
                         f"{stored_event.originator_version} does not open with its customer's key") from error


def _owner(stored: StoredEvent) -> UUID:
    state = stored.state
    start = state.index(b'"customer":"', state.index(FIELD.encode())) + len(b'"customer":"')
    return UUID(state[start:start + 32].decode())


def shred(store: Any, customer_id: UUID) -> None:
    """Destroy the customer's key, and blank the copies of its personal data kept outside the log:
    the e-mails to it in the mail outbox (a pending one is never sent). Idempotent."""
    store.mapper.keys.destroy(customer_id)
    with store.recorder.datastore.transaction(commit=True) as curs:
        curs.execute("SELECT to_regclass('crm_mail_outbox') IS NOT NULL AND "
                     "to_regclass('read_complaints.complaints') IS NOT NULL AS ready")
        if curs.fetchone()["ready"]:
            curs.execute("""UPDATE crm_mail_outbox SET body = '[erased]',
                                   recipient = CASE WHEN recipient IS NULL THEN NULL ELSE '[erased]' END,
                                   status = CASE WHEN status = 'pending' THEN 'skipped' ELSE status END,
                                   last_error = CASE WHEN status = 'pending' THEN 'personal data erased'
                                                     ELSE last_error END
                             WHERE kind = 'confirmation' AND complaint_id IN
                                   (SELECT id FROM read_complaints.complaints WHERE customer_id = %s)""",
                         (customer_id,))
