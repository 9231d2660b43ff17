"""Product aggregate: SKU-derived identity, money rules and the dated standard cost."""

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid5

import pytest

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.product import SKU_NAMESPACE, Product, product_id

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(days=1)
ACTOR = "test"


def register(sku: str = "WIDGET-1", *, standard_cost=Decimal("2.50"), list_price=Decimal("4.00"),
             name: str = "Widget", supplier: str | None = None) -> Product:
    return Product.register(sku=sku, name=name, standard_cost=standard_cost, list_price=list_price,
                            supplier=supplier, occurred_at=T0, actor=ACTOR)


def given_product(**kwargs) -> Product:
    product = register(**kwargs)
    product.collect_events()
    return product


def change_cost(product: Product, cost: str, effective_from: date, *, at: datetime = T1) -> None:
    product.change_standard_cost(standard_cost=Decimal(cost), effective_from=effective_from,
                                 occurred_at=at, actor=ACTOR)


def only_new_event(aggregate):
    events = aggregate.collect_events()
    assert len(events) == 1, events
    return events[0]


# --- identity ---------------------------------------------------------------------------------

def test_a_product_id_is_derived_deterministically_from_its_sku():
    assert product_id("WIDGET-1") == uuid5(SKU_NAMESPACE, "WIDGET-1")
    assert product_id("WIDGET-1") == product_id("WIDGET-1")
    assert product_id("WIDGET-1") != product_id("WIDGET-2")


def test_a_registered_product_carries_the_id_derived_from_its_sku():
    product = register("WIDGET-1")

    event = only_new_event(product)
    assert product.id == product_id("WIDGET-1")
    assert event.originator_id == product_id("WIDGET-1")


def test_two_registrations_of_the_same_sku_get_the_same_id():
    first = register("WIDGET-1", name="Widget")
    second = register("WIDGET-1", name="Widget, renamed", standard_cost=Decimal("9"))

    assert first.id == second.id


def test_skus_differing_only_in_case_are_different_products():
    assert register("widget-1").id != register("WIDGET-1").id


# --- register ---------------------------------------------------------------------------------

def test_registering_a_product_records_its_cost_price_and_supplier():
    product = register(name="  Widget ", supplier="  Parts Co ")

    event = only_new_event(product)
    assert type(event) is Product.Registered
    assert event.sku == "WIDGET-1" and event.name == "Widget" and event.supplier == "Parts Co"
    assert event.standard_cost == Decimal("2.50") and event.list_price == Decimal("4.00")
    assert product.standard_cost == Decimal("2.50")


@pytest.mark.parametrize("field", ["standard_cost", "list_price"])
def test_a_negative_cost_or_price_is_refused(field):
    with pytest.raises(InvalidValueError):
        register(**{field: Decimal("-0.01")})


@pytest.mark.parametrize("field", ["standard_cost", "list_price"])
def test_a_zero_cost_or_price_is_accepted(field):
    event = only_new_event(register(**{field: Decimal("0")}))

    assert getattr(event, field) == Decimal("0")


@pytest.mark.parametrize("field", ["standard_cost", "list_price"])
def test_money_with_more_than_four_decimal_places_is_refused(field):
    with pytest.raises(InvalidValueError):
        register(**{field: Decimal("1.00001")})


def test_money_with_four_decimal_places_or_trailing_zeros_is_accepted():
    event = only_new_event(register(standard_cost=Decimal("1.2345"), list_price=Decimal("2.500000")))

    assert event.standard_cost == Decimal("1.2345") and event.list_price == Decimal("2.5")


@pytest.mark.parametrize("bad", [1.5, 2, "2.50", Decimal("NaN"), Decimal("Infinity")])
def test_a_price_that_is_not_a_finite_decimal_is_refused(bad):
    with pytest.raises(InvalidValueError):
        register(list_price=bad)


@pytest.mark.parametrize("sku", ["", "-WIDGET", ".WIDGET", "WID GET", "WID/GET", "x" * 65,
                                 "WIDGÉT", 123, None])
def test_a_malformed_sku_is_refused(sku):
    with pytest.raises(InvalidValueError):
        register(sku)


@pytest.mark.parametrize("sku", ["W", "x" * 64, "a.b_c-D9"])
def test_a_well_formed_sku_is_accepted(sku):
    assert only_new_event(register(sku)).sku == sku


def test_a_product_without_a_name_is_refused():
    with pytest.raises(InvalidValueError):
        register(name="   ")


def test_an_absurdly_large_price_is_refused_as_an_invalid_value():
    with pytest.raises(InvalidValueError):
        register(list_price=Decimal("1E+30"))


# --- standard cost over time ------------------------------------------------------------------

def test_changing_the_standard_cost_records_the_previous_cost():
    product = given_product(standard_cost=Decimal("2.50"))

    change_cost(product, "2.75", date(2026, 2, 1))

    event = only_new_event(product)
    assert type(event) is Product.StandardCostChanged
    assert event.previous_cost == Decimal("2.50")
    assert event.standard_cost == Decimal("2.75")
    assert event.effective_from == date(2026, 2, 1)
    assert product.standard_cost == Decimal("2.75")


def test_a_second_cost_change_carries_the_first_change_as_previous_cost():
    product = given_product(standard_cost=Decimal("2.50"))
    change_cost(product, "2.75", date(2026, 2, 1))
    product.collect_events()

    change_cost(product, "3.10", date(2026, 3, 1))

    event = only_new_event(product)
    assert (event.previous_cost, event.standard_cost) == (Decimal("2.75"), Decimal("3.10"))


@pytest.mark.parametrize(("day", "expected"), [
    (date(2020, 1, 1), "2.50"),     # long before registration: the registration cost
    (date(2026, 1, 31), "2.50"),    # the day before the first change
    (date(2026, 2, 1), "2.75"),     # the first change's own day
    (date(2026, 2, 28), "2.75"),
    (date(2026, 3, 1), "3.10"),     # the second change's own day
    (date(2030, 1, 1), "3.10"),
])
def test_the_cost_on_a_day_is_the_one_in_force_that_day(day, expected):
    product = given_product(standard_cost=Decimal("2.50"))
    change_cost(product, "2.75", date(2026, 2, 1))
    change_cost(product, "3.10", date(2026, 3, 1))

    assert product.cost_on(day) == Decimal(expected)


def test_before_any_change_every_day_costs_the_registration_cost():
    product = given_product(standard_cost=Decimal("2.50"))

    assert product.cost_on(date(1999, 1, 1)) == product.cost_on(date(2099, 1, 1)) == Decimal("2.50")


def test_a_cost_change_effective_before_the_latest_change_is_refused():
    product = given_product()
    change_cost(product, "2.75", date(2026, 3, 1))
    product.collect_events()

    with pytest.raises(InvalidValueError):
        change_cost(product, "2.60", date(2026, 2, 28))
    assert product.collect_events() == []
    assert product.cost_on(date(2026, 2, 28)) == Decimal("2.50")


def test_a_second_change_effective_the_same_day_supersedes_the_first():
    product = given_product()
    change_cost(product, "2.75", date(2026, 3, 1))
    product.collect_events()

    change_cost(product, "2.80", date(2026, 3, 1))

    assert only_new_event(product).previous_cost == Decimal("2.75")
    assert product.cost_on(date(2026, 3, 1)) == Decimal("2.80")


@pytest.mark.parametrize("cost", ["-1", "1.00001"])
def test_an_invalid_new_cost_is_refused(cost):
    product = given_product()

    with pytest.raises(InvalidValueError):
        change_cost(product, cost, date(2026, 2, 1))
    assert product.collect_events() == []
    assert product.standard_cost == Decimal("2.50")


# --- replay -----------------------------------------------------------------------------------

def test_a_product_rebuilt_from_its_events_matches_the_live_one():
    live = register(supplier="Parts Co")
    change_cost(live, "2.75", date(2026, 2, 1))
    change_cost(live, "3.10", date(2026, 3, 1))
    events = live.collect_events()

    rebuilt = None
    for event in events:
        rebuilt = event.mutate(rebuilt)

    assert rebuilt.id == live.id == product_id("WIDGET-1")
    assert rebuilt.version == live.version == 3
    assert (rebuilt.sku, rebuilt.name, rebuilt.list_price, rebuilt.supplier) == \
        ("WIDGET-1", "Widget", Decimal("4.00"), "Parts Co")
    assert rebuilt.costs == live.costs
    assert rebuilt.cost_on(date(2026, 2, 15)) == Decimal("2.75")
    assert rebuilt.standard_cost == Decimal("3.10")
