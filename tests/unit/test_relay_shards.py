"""Which events a relay shard owns, and where each shard of a relay goes on from."""

from __future__ import annotations

import uuid

import pytest

from crm.infra.relay import APP, Shard, covered, published_position, relay_rows, resume_point


def name(index: int, count: int) -> str:
    return Shard(index, count).name


def test_one_relay_keeps_the_name_it_always_had_and_shards_have_their_own() -> None:
    assert Shard().name == APP
    assert {name(i, 3) for i in range(3)} == {f"{APP}#0/3", f"{APP}#1/3", f"{APP}#2/3"}


@pytest.mark.parametrize("index, count", [(0, 0), (1, 1), (-1, 2), (3, 3), (0, 257)])
def test_impossible_shards_are_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        Shard(index, count)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_aggregate_belongs_to_exactly_one_shard_and_they_share_the_work(count: int) -> None:
    ids = [uuid.uuid4() for _ in range(7_000)]
    owners = [[i for i in range(count) if Shard(i, count).owns(a)] for a in ids]
    assert all(len(o) == 1 for o in owners)
    shares = [sum(o == [i] for o in owners) for i in range(count)]
    assert min(shares) > 0.8 * len(ids) / count, shares
    assert Shard(1, 2).owns(uuid.UUID(int=0xFF)) and not Shard(0, 2).owns(uuid.UUID(int=0xFF))  # the last byte decides


def test_a_relay_of_n_shards_has_published_up_to_its_slowest_shard() -> None:
    rows = {name(0, 2): 900, name(1, 2): 400}
    assert covered(rows, 2) == 400 and published_position(rows) == 400
    assert covered({name(0, 2): 900}, 2) is None  # shard 1 has not said where it is


def test_a_shard_goes_on_from_its_own_position() -> None:
    rows = {APP: 100, name(0, 2): 900, name(1, 2): 400}
    assert [resume_point(rows, Shard(i, 2)) for i in range(2)] == [900, 400]


def test_a_new_shard_never_skips_an_event_of_its_share() -> None:
    # Shard 0 of 2 got to 900, but only for its own aggregates: a first shard 1 must start at 0.
    assert resume_point({name(0, 2): 900}, Shard(1, 2)) == 0
    assert published_position({name(0, 2): 900}) == 0


def test_a_new_shard_count_goes_on_from_where_a_whole_relay_had_published_everything() -> None:
    one_relay = {APP: 500}
    assert [resume_point(one_relay, Shard(i, 3)) for i in range(3)] == [500, 500, 500]
    two_shards = {APP: 100, name(0, 2): 900, name(1, 2): 700}  # the best complete configuration: 2 shards, 700
    assert resume_point(two_shards, Shard()) == 700  # back to one relay: not from its old 100 again
    assert resume_point(two_shards, Shard(2, 3)) == 700
    half = {APP: 100, name(0, 3): 900}  # 3 shards never all ran: only the single relay's 100 is safe
    assert resume_point(half, Shard(1, 3)) == 100
    assert published_position(half) == 100


def test_nothing_is_published_where_no_relay_ever_ran_and_other_rows_are_not_the_relays() -> None:
    assert published_position({}) is None
    assert published_position({"__migration__": 1}) is None
    assert relay_rows({"__migration__": 1, APP: 5, f"{APP}#x/2": 3, "other#0/2": 9}) == {APP: 5}
    assert resume_point({"__migration__": 1}, Shard(0, 2)) == 0
    malformed = {f"{APP}#0/0": 7, f"{APP}#2/2": 8, f"{APP}#0/300": 9, f"{APP}#1/": 1, f"{APP}#\u00b2/2": 2,
                 f"{APP}#0/2x": 3}  # ignored, never an error
    assert relay_rows(malformed) == {} and published_position({**malformed, APP: 4}) == 4


@pytest.mark.parametrize("count", [1, 2, 3, 7, 256])
def test_the_shards_of_a_count_lease_every_id_byte_once(count: int) -> None:
    leased = [b for i in range(count) for b in Shard(i, count).id_bytes]
    assert sorted(leased) == list(range(256))
    for last in range(256):  # the lease covers exactly what the shard publishes
        some = uuid.UUID(bytes=uuid.uuid4().bytes[:15] + bytes([last]))
        assert [Shard(i, count).owns(some) for i in range(count)] == [
            last in Shard(i, count).id_bytes for i in range(count)]


def test_crm_relay_refuses_a_shard_beyond_the_configured_count() -> None:
    from click.testing import CliRunner

    from crm.cli import main

    result = CliRunner().invoke(main, ["relay", "--shard", "2"],
                                env={"CRM_RELAY_SHARDS": "2", "CRM_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 2 and "CRM_RELAY_SHARDS is 2 (shards 0 to 1)" in result.output


@pytest.mark.parametrize("rows", [
    {name(0, 2): 900, name(1, 2): 400}, {name(0, 2): 900}, {APP: 100, name(0, 2): 900, name(1, 2): 700},
    {APP: 100, name(0, 3): 900}, {APP: 500}, {APP: 50, name(0, 2): 10, name(1, 2): 20, name(2, 3): 99}])
def test_the_published_position_is_where_every_shard_of_any_count_would_go_on_from(rows: dict) -> None:
    # Why /health needs no shard count: whichever count runs, its slowest shard resumes here.
    for count in (1, 2, 3, 4):
        assert published_position(rows) == min(resume_point(rows, Shard(i, count)) for i in range(count))
