"""The per-process cache of customer keys stays bounded (a soak showed it growing with every
new customer) and keeps the keys stored last."""

from __future__ import annotations

import time
from contextlib import ExitStack
from uuid import uuid4

from crm.infra.personal_data import CACHE_LIMIT, KeyStore


def test_the_key_cache_is_bounded_and_keeps_the_latest_keys(runtime) -> None:
    keys = KeyStore(runtime.store.recorder.datastore)
    ids = [uuid4() for _ in range(CACHE_LIMIT * 3)]
    for customer in ids:
        keys._remember(customer, b"k" * 32)
    assert len(keys._cache) <= CACHE_LIMIT
    assert all(customer in keys._cache for customer in ids[-CACHE_LIMIT // 2:])
    assert ids[0] not in keys._cache


def test_a_key_stored_again_counts_as_recent(runtime) -> None:
    keys = KeyStore(runtime.store.recorder.datastore)
    first = uuid4()
    keys._remember(first, b"a" * 32)
    for _ in range(CACHE_LIMIT - 2):
        keys._remember(uuid4(), b"k" * 32)
    keys._remember(first, b"a" * 32)  # seen again: now the most recent
    for _ in range(3):
        keys._remember(uuid4(), b"k" * 32)  # overflows: the older half goes
    assert first in keys._cache


def _wal_fsyncs(database_url: str) -> int:
    """WAL fsyncs of the whole server so far (pg_stat_io; each backend's counts flushed first)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return int(conn.execute("SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'").fetchone()[0])


def test_a_new_key_commits_without_a_wal_flush_of_its_own_and_the_setting_does_not_leak(runtime) -> None:
    """The key row needs no flush of its own (the sealed event's commit flushes it), and the
    one-statement `CREATE_KEY` must not leave synchronous_commit off on a pooled connection."""
    import psycopg
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    datastore = runtime.store.recorder.datastore
    keys, count = KeyStore(datastore), 40
    with psycopg.connect(runtime.database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        before = _wal_fsyncs(runtime.database_url)
        for _ in range(count):  # the control: a plain insert in autocommit flushes at each commit
            conn.execute("INSERT INTO crm_personal_keys (customer_id, key) VALUES (%s, %s)",
                         (uuid4(), AESGCM.generate_key(256)))
        conn.execute("SELECT pg_stat_force_next_flush()")
        plain = _wal_fsyncs(runtime.database_url) - before
    made = {customer: keys.key_for(customer, create=True) for customer in [uuid4() for _ in range(count)]}
    with ExitStack() as stack:  # every pooled connection key_for may have used reports its counts
        for conn in [stack.enter_context(datastore.get_connection()) for _ in range(datastore.pool.get_stats()["pool_size"])]:
            conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.2)  # a backend flushes its statistics when it next goes idle
    quiet = _wal_fsyncs(runtime.database_url) - before - plain
    assert plain >= count, plain  # the measure sees every flush (fsync is on)
    assert quiet <= count // 4, quiet  # the WAL writer's own flushes only, not one per key
    fresh = KeyStore(datastore)  # stored, and committed: another store reads every key back
    assert all(fresh.key_for(customer, create=False) == key for customer, key in made.items())
    for _ in range(datastore.pool.max_size):  # every pooled connection commits durably again
        with datastore.get_connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == "on"
