"""The per-process cache of customer keys stays bounded (a soak showed it growing with every
new customer) and keeps the keys stored last."""

from __future__ import annotations

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
