"""Tiering policy and scoring math (pure functions): exact examples and properties."""

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.tiering import (
    DEFAULT_TIERING_POLICY,
    INDICATORS,
    LOWER_IS_BETTER,
    NO_ORDERS_REASON,
    Grade,
    Indicators,
    TieringPolicy,
    grade,
    grade_columns,
    percentile_ranks,
    rank_column,
    score,
    tier_for,
)

WEIGHTS = {"order_volume": 0.4, "collection_days": 0.3, "profit_margin": 0.3}
THRESHOLDS = {"A": 80, "B": 60, "C": 40}


def customer(volume: str, days: float | None, margin: str | None) -> Indicators:
    return Indicators(order_volume=Decimal(volume), collection_days=days,
                      profit_margin=None if margin is None else Decimal(margin))


# --- strategies -------------------------------------------------------------------------

@st.composite
def valid_policies(draw) -> TieringPolicy:
    parts = draw(st.lists(st.integers(0, 1000), min_size=3, max_size=3).filter(any))
    cuts = sorted(draw(st.lists(st.floats(0, 100), min_size=3, max_size=3, unique=True)),
                  reverse=True)
    return TieringPolicy(
        weights={name: part / sum(parts) for name, part in zip(INDICATORS, parts)},
        thresholds=dict(zip("ABC", cuts)),
        window_days=draw(st.integers(1, 3650)),
        visits_per_year={tier: draw(st.integers(0, 52)) for tier in "ABCD"},
        version=draw(st.integers(0, 10_000)),
    )


money = st.integers(0, 10**9).map(lambda cents: Decimal(cents) / 100)
margins = st.none() | st.integers(-10_000, 10_000).map(lambda bp: Decimal(bp) / 10_000)
days = st.none() | st.integers(0, 3650).map(float)
indicators = st.builds(Indicators, order_volume=money, collection_days=days, profit_margin=margins)
populations = st.lists(indicators, min_size=1, max_size=12).map(
    lambda found: {f"c{i}": ind for i, ind in enumerate(found)})


def improved(ind: Indicators, name: str, step: int) -> Indicators:
    """The same customer, better by `step` on one indicator (a missing value appears)."""
    if name == "order_volume":
        return Indicators(ind.order_volume + step, ind.collection_days, ind.profit_margin)
    if name == "collection_days":  # lower is better
        better = 30.0 if ind.collection_days is None else ind.collection_days - step
        return Indicators(ind.order_volume, better, ind.profit_margin)
    better = Decimal("0.1") if ind.profit_margin is None else ind.profit_margin + step
    return Indicators(ind.order_volume, ind.collection_days, better)


# --- percentile ranks -------------------------------------------------------------------

def test_five_distinct_values_rank_from_zero_to_a_hundred_in_quarters():
    ranks = percentile_ranks({"a": 300, "b": 100, "c": 500, "d": 200, "e": 400})

    assert ranks == {"a": 50.0, "b": 0.0, "c": 100.0, "d": 25.0, "e": 75.0}


def test_for_a_lower_is_better_indicator_the_lowest_value_ranks_a_hundred():
    ranks = percentile_ranks({"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0, "e": 50.0},
                             lower_is_better=True)

    assert ranks == {"a": 100.0, "b": 75.0, "c": 50.0, "d": 25.0, "e": 0.0}


def test_collection_days_is_the_only_lower_is_better_indicator():
    assert LOWER_IS_BETTER == {"collection_days"}


def test_a_single_customer_is_the_best_of_one():
    assert percentile_ranks({"only": 42.0}) == {"only": 100.0}
    assert percentile_ranks({"only": 42.0}, lower_is_better=True) == {"only": 100.0}


def test_tied_values_share_the_mean_of_the_places_they_occupy():
    ranks = percentile_ranks({"a": 100, "b": 100, "c": 300})

    assert ranks == {"a": 25.0, "b": 25.0, "c": 100.0}


def test_when_everyone_is_equal_everyone_ranks_fifty():
    assert percentile_ranks({"a": 7, "b": 7, "c": 7, "d": 7}) == dict.fromkeys("abcd", 50.0)


def test_a_missing_value_ranks_zero_and_below_every_present_value():
    ranks = percentile_ranks({"none": None, "fast": 10.0, "slow": 20.0}, lower_is_better=True)

    assert ranks == {"none": 0.0, "fast": 100.0, "slow": 50.0}


def test_a_lone_customer_without_a_value_gets_no_credit():
    assert percentile_ranks({"only": None}) == {"only": 0.0}


def test_no_values_give_no_ranks():
    assert percentile_ranks({}) == {}


@given(st.dictionaries(st.integers(), st.none() | st.floats(-1e9, 1e9), max_size=30),
       st.booleans())
def test_percentile_ranks_stay_within_zero_and_a_hundred(values, lower_is_better):
    ranks = percentile_ranks(values, lower_is_better=lower_is_better)

    assert set(ranks) == set(values)
    assert all(0.0 <= rank <= 100.0 for rank in ranks.values())


# --- score and tier ---------------------------------------------------------------------

def test_the_score_is_the_weighted_sum_of_the_three_ranks():
    assert score({"order_volume": 75, "collection_days": 75, "profit_margin": 25}) == 60.0
    assert score({"order_volume": 50, "collection_days": 25, "profit_margin": 50}) == 42.5


def test_a_score_needs_exactly_the_three_indicators():
    with pytest.raises(InvalidValueError):
        score({"order_volume": 50, "collection_days": 50})


@pytest.mark.parametrize(("points", "tier"), [(100, "A"), (80, "A"), (79.9999, "B"), (60, "B"),
                                              (40, "C"), (39.9999, "D"), (0, "D")])
def test_the_default_thresholds_are_eighty_sixty_and_forty(points, tier):
    assert tier_for(points) == tier


@given(valid_policies(), st.floats(0, 100))
def test_the_tier_is_the_highest_whose_threshold_the_score_reaches(policy, points):
    tier = tier_for(points, policy)

    reached = [t for t in "ABC" if points >= policy.thresholds[t]]
    assert tier == (reached[0] if reached else "D")
    if tier != "D":
        assert points >= policy.thresholds[tier]
    next_up = {"B": "A", "C": "B", "D": "C"}.get(tier)
    if next_up:
        assert points < policy.thresholds[next_up]


# --- grading ----------------------------------------------------------------------------

def test_five_customers_are_graded_with_the_ranks_computed_by_hand():
    given_customers = {"c1": customer("500", 10, "0.30"), "c2": customer("400", 20, "0.10"),
                       "c3": customer("300", 40, "0.20"), "c4": customer("200", 30, "0.05"),
                       "c5": customer("100", 50, "0.25")}

    grades = grade(given_customers)

    assert {key: (g.tier, g.score) for key, g in grades.items()} == {
        "c1": ("A", 100.0), "c2": ("B", 60.0), "c3": ("C", 42.5),
        "c4": ("D", 25.0), "c5": ("D", 22.5)}
    assert grades["c3"].percentiles == {"order_volume": 50.0, "collection_days": 25.0,
                                        "profit_margin": 50.0}
    assert grades["c3"].raw == {"order_volume": Decimal("300"), "collection_days": 40,
                                "profit_margin": Decimal("0.20")}


def test_a_single_customer_with_every_indicator_is_an_a_customer():
    assert grade({"only": customer("10", 45.0, "0.02")})["only"] == Grade(
        tier="A", score=100.0,
        percentiles={"order_volume": 100.0, "collection_days": 100.0, "profit_margin": 100.0},
        raw={"order_volume": Decimal("10"), "collection_days": 45.0,
             "profit_margin": Decimal("0.02")})


def test_a_customer_never_invoiced_and_without_revenue_earns_only_its_volume_share():
    graded = grade({"only": customer("0", None, None)})["only"]

    assert graded.percentiles == {"order_volume": 100.0, "collection_days": 0.0,
                                  "profit_margin": 0.0}
    assert (graded.score, graded.tier) == (40.0, "C")


def test_a_customer_without_invoices_ranks_below_the_slowest_payer():
    grades = grade({"slow": customer("100", 90.0, "0.1"), "none": customer("100", None, "0.1")})

    assert grades["slow"].percentiles["collection_days"] == 100.0
    assert grades["none"].percentiles["collection_days"] == 0.0


def test_no_customers_give_no_grades_and_the_absent_have_a_stated_reason():
    assert grade({}) == {}
    assert NO_ORDERS_REASON == "no orders in window"


def test_indicators_refuse_values_that_cannot_be_ranked():
    with pytest.raises(InvalidValueError):
        customer("NaN", 10.0, "0.1")
    with pytest.raises(InvalidValueError):
        customer("10", float("nan"), "0.1")


@given(populations, valid_policies())
def test_scores_stay_within_zero_and_a_hundred(population, policy):
    for graded in grade(population, policy).values():
        assert 0.0 <= graded.score <= 100.0
        assert all(0.0 <= rank <= 100.0 for rank in graded.percentiles.values())


@given(populations, st.sampled_from(INDICATORS), st.integers(1, 1000), st.data(),
       valid_policies())
def test_improving_one_indicator_never_lowers_that_customers_score(
        population, name, step, data, policy):
    key = data.draw(st.sampled_from(sorted(population)))
    before = grade(population, policy)[key].score

    after = grade({**population, key: improved(population[key], name, step)}, policy)[key].score

    assert after >= before


@given(populations, indicators, valid_policies())
def test_customers_with_equal_indicators_get_equal_scores_and_tiers(population, twin, policy):
    grades = grade({**population, "twin-1": twin, "twin-2": twin}, policy)

    assert grades["twin-1"].score == grades["twin-2"].score
    assert grades["twin-1"].tier == grades["twin-2"].tier


@given(populations)
def test_the_order_in_which_customers_are_given_does_not_change_their_grades(population):
    assert grade(dict(reversed(population.items()))) == grade(population)


# --- policy -----------------------------------------------------------------------------

def test_the_default_policy_carries_the_agreed_defaults():
    policy = DEFAULT_TIERING_POLICY

    assert dict(policy.weights) == WEIGHTS
    assert dict(policy.thresholds) == THRESHOLDS
    assert (policy.window_days, policy.version) == (365, 0)
    assert [policy.visits_for(t) for t in "ABCD"] == [4, 2, 1, 0]


@pytest.mark.parametrize("weights", [
    {**WEIGHTS, "order_volume": 0.5},                         # adds up to 1.1
    {**WEIGHTS, "order_volume": 1.0, "profit_margin": -0.3},  # a negative weight
    {**WEIGHTS, "referrals": 0.0},                            # an unknown indicator
    {"order_volume": 0.5, "collection_days": 0.5},            # a missing indicator
    {**WEIGHTS, "order_volume": float("nan")},
], ids=["sum", "negative", "unknown", "missing", "nan"])
def test_a_policy_with_bad_weights_is_refused(weights):
    with pytest.raises(InvalidValueError):
        TieringPolicy(weights=weights)


@pytest.mark.parametrize("thresholds", [
    {"A": 60, "B": 60, "C": 40},   # A not above B
    {"A": 80, "B": 40, "C": 60},   # B below C
    {"A": 101, "B": 60, "C": 40},  # above the scale
    {"A": 80, "B": 60, "C": -1},   # below the scale
    {"A": 80, "B": 60},            # C missing
    {**THRESHOLDS, "D": 0},        # D is the rest, not a threshold
], ids=["equal", "increasing", "over-100", "negative", "missing", "d-named"])
def test_a_policy_with_bad_thresholds_is_refused(thresholds):
    with pytest.raises(InvalidValueError):
        TieringPolicy(thresholds=thresholds)


@pytest.mark.parametrize("change", [
    {"window_days": 0}, {"window_days": 3651}, {"version": -1},
    {"visits_per_year": {"A": 4, "B": 2, "C": 1}},
    {"visits_per_year": {"A": 53, "B": 2, "C": 1, "D": 0}},
    {"visits_per_year": {"A": 4, "B": 2, "C": 1, "D": -1}},
])
def test_a_policy_with_a_window_version_or_visits_out_of_range_is_refused(change):
    with pytest.raises(InvalidValueError):
        TieringPolicy(**change)


def test_a_policy_keeps_its_own_copy_of_the_mappings_it_was_given():
    weights = dict(WEIGHTS)
    policy = TieringPolicy(weights=weights)

    weights["order_volume"] = 0.9

    assert policy.weights["order_volume"] == 0.4


def test_the_default_policy_survives_a_trip_through_json():
    stored = json.loads(json.dumps(DEFAULT_TIERING_POLICY.to_dict()))

    assert TieringPolicy.from_dict(stored) == DEFAULT_TIERING_POLICY


@given(valid_policies())
def test_any_valid_policy_round_trips_through_its_stored_form(policy):
    stored = json.loads(json.dumps(policy.to_dict()))

    assert TieringPolicy.from_dict(stored) == policy


def test_a_stored_policy_with_an_unknown_field_is_refused():
    with pytest.raises(InvalidValueError):
        TieringPolicy.from_dict({**DEFAULT_TIERING_POLICY.to_dict(), "bonus": 1})


def _ranks_by_definition(values, lower_is_better):  # type: ignore[no-untyped-def]
    """The module's formula, counted pair by pair: W worse values (None is worse than any), E equal."""
    n, ranks = len(values), []
    for v in values:
        if v is None:
            ranks.append(0.0)
            continue
        worse = sum(1 for u in values if u is None or (u > v if lower_is_better else u < v))
        equal = sum(1 for u in values if u is not None and u == v)
        ranks.append(100.0 if n == 1 else 100 * (worse + 0.5 * (equal - 1)) / (n - 1))
    return ranks


# Decimals one float cannot tell apart (0.1 and its neighbours at 22 digits), and plain ones
indistinguishable = st.sampled_from([Decimal("0.1"), Decimal("0.10"), Decimal("0.1000000000000000000001"),
                                     Decimal("0.0999999999999999999999"), Decimal("0.1000000000000000000002")])


@given(st.lists(st.none() | indistinguishable | money | margins.filter(lambda m: m is not None), max_size=40),
       st.booleans())
def test_rank_column_follows_the_definition_even_where_floats_tie(values, lower_is_better):
    assert rank_column(values, lower_is_better=lower_is_better) == _ranks_by_definition(values, lower_is_better)


def test_rank_column_splits_decimals_that_round_to_one_float():
    values = [Decimal("0.1000000000000000000001"), Decimal("0.1"), Decimal("0.0999999999999999999999")]
    assert float(values[0]) == float(values[1]) == float(values[2])
    assert rank_column(values) == [100.0, 50.0, 0.0]
    assert rank_column(values, lower_is_better=True) == [0.0, 50.0, 100.0]


@given(populations, valid_policies())
def test_grading_by_columns_scores_and_tiers_as_score_and_tier_for_do(population, policy):
    """grade_columns scores whole columns at once; each customer's score must be score()'s for its
    ranks, and its tier tier_for()'s (grade itself is built on grade_columns)."""
    given_ = list(population.values())
    columns = grade_columns([i.order_volume for i in given_], [i.collection_days for i in given_],
                            [i.profit_margin for i in given_], policy)
    for n in range(len(given_)):
        percentiles = {name: columns.percentiles[name][n] for name in INDICATORS}
        assert columns.scores[n] == score(percentiles, policy)
        assert columns.tiers[n] == tier_for(columns.scores[n], policy)
