"""Order aggregate: frozen costs and forecast profit at placement, then fulfilment and payment."""

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest

from crm.aggregates.customer import Customer, CustomerInactiveError
from crm.aggregates.errors import InvalidValueError
from crm.aggregates.order import Order, OrderStateError, OverpaymentError, UnknownProductError
from crm.aggregates.product import Product

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(days=1)
T2 = T0 + timedelta(days=2)
ACTOR = "test"


def a_customer() -> Customer:
    return Customer.register(name="Acme Ltd", occurred_at=T0, actor=ACTOR)


def a_product(sku: str = "WIDGET-1", cost: str = "2.50", price: str = "4.00") -> Product:
    return Product.register(sku=sku, name=sku.title(), standard_cost=Decimal(cost),
                            list_price=Decimal(price), supplier=None, occurred_at=T0, actor=ACTOR)


def catalogue(*products: Product) -> dict[str, Product]:
    return {p.sku: p for p in products or (a_product(),)}


def line(sku: str = "WIDGET-1", quantity=3, unit_price: str | Decimal = "4.00") -> dict:
    return {"sku": sku, "quantity": quantity, "unit_price": Decimal(unit_price)}


def place(lines=None, *, customer: Customer | None = None, products=None, at: datetime = T0,
          **kwargs) -> Order:
    return Order.place(customer=customer or a_customer(), products=products or catalogue(),
                       lines=[line()] if lines is None else lines, currency="EUR",
                       occurred_at=at, actor=ACTOR, **kwargs)


def given_order(*steps: str, lines=None) -> Order:
    """A placed order, optionally taken through 'ship', 'invoice' or 'cancel'; events drained."""
    order = place(lines)
    for step in steps:
        if step == "ship":
            order.ship(occurred_at=T1, actor=ACTOR)
        elif step == "invoice":
            order.invoice(due_on=date(2026, 2, 5), occurred_at=T1, actor=ACTOR)
        elif step == "cancel":
            order.cancel(reason="changed mind", occurred_at=T1, actor=ACTOR)
        else:
            raise AssertionError(step)
    order.collect_events()
    return order


def pay(order: Order, amount: str, *, at: datetime = T2) -> None:
    order.receive_payment(amount=Decimal(amount), occurred_at=at, actor=ACTOR)


def only_new_event(aggregate):
    events = aggregate.collect_events()
    assert len(events) == 1, events
    return events[0]


# --- placing: frozen costs and forecast -------------------------------------------------------

def test_placing_an_order_records_the_customer_lines_and_currency():
    customer = a_customer()
    warned = [uuid4()]

    order = place(customer=customer, warned_complaint_ids=warned)

    event = only_new_event(order)
    assert type(event) is Order.Placed
    assert event.customer_id == customer.id and event.currency == "EUR"
    assert event.warned_complaint_ids == warned
    assert [(ln["sku"], ln["quantity"], ln["unit_price"]) for ln in event.lines] == \
        [("WIDGET-1", 3, Decimal("4.00"))]
    assert order.status == "placed"


def test_an_order_freezes_the_standard_cost_in_force_on_its_date():
    product = a_product(cost="2.50")
    product.change_standard_cost(standard_cost=Decimal("3.00"), effective_from=date(2026, 1, 6),
                                 occurred_at=T0, actor=ACTOR)

    order = place(products=catalogue(product), at=T0)  # placed the day before the change

    event = only_new_event(order)
    assert event.lines[0]["standard_cost"] == Decimal("2.50")
    assert event.lines[0]["cost"] == Decimal("7.50")
    assert event.lines[0]["product_id"] == product.id


def test_a_later_cost_change_does_not_alter_an_order_already_placed():
    product = a_product(cost="2.50")
    order = place(products=catalogue(product), at=T0)

    product.change_standard_cost(standard_cost=Decimal("3.00"), effective_from=date(2026, 1, 5),
                                 occurred_at=T1, actor=ACTOR)

    assert order.lines[0]["standard_cost"] == Decimal("2.50")
    assert order.forecast_profit == Decimal("4.50")


@pytest.mark.parametrize("placed_at", [datetime(2026, 1, 6, 0, 0, tzinfo=timezone.utc), T2])
def test_an_order_placed_on_or_after_a_cost_change_gets_the_new_cost(placed_at):
    product = a_product(cost="2.50")
    product.change_standard_cost(standard_cost=Decimal("3.00"), effective_from=date(2026, 1, 6),
                                 occurred_at=T0, actor=ACTOR)

    order = place(products=catalogue(product), at=placed_at)

    event = only_new_event(order)
    assert event.lines[0]["standard_cost"] == Decimal("3.00")
    assert event.forecast_profit == Decimal("3.00")


def test_the_forecast_profit_and_margin_are_exact():
    order = place([line(quantity=3, unit_price="4.00")], products=catalogue(a_product(cost="2.50")))

    event = only_new_event(order)
    assert event.revenue == Decimal("12.00")
    assert event.cost == Decimal("7.50")
    assert event.forecast_profit == Decimal("4.50")
    assert event.forecast_margin == Decimal("0.3750")
    assert str(event.forecast_margin) == "0.3750"


def test_the_forecast_adds_up_every_line():
    products = catalogue(a_product("WIDGET-1", cost="2.50"), a_product("GADGET-2", cost="10.1234"))

    order = place([line("WIDGET-1", 3, "4.00"), line("GADGET-2", 2, "15.00")], products=products)

    event = only_new_event(order)
    assert event.revenue == Decimal("42.00")
    assert event.cost == Decimal("27.7468")
    assert event.forecast_profit == Decimal("14.2532")
    assert event.forecast_margin == Decimal("0.3394")  # 14.2532 / 42 = 0.33936...


def test_an_order_sold_below_cost_has_a_negative_forecast():
    order = place([line(quantity=2, unit_price="2.00")], products=catalogue(a_product(cost="2.50")))

    event = only_new_event(order)
    assert event.forecast_profit == Decimal("-1.00")
    assert event.forecast_margin == Decimal("-0.2500")


def test_a_zero_revenue_order_has_no_margin():
    order = place([line(quantity=5, unit_price="0")], products=catalogue(a_product(cost="2.50")))

    event = only_new_event(order)
    assert event.revenue == Decimal("0")
    assert event.forecast_profit == Decimal("-12.50")
    assert event.forecast_margin is None


def test_an_order_without_lines_is_refused():
    with pytest.raises(InvalidValueError):
        place([])


def test_an_order_of_500_lines_is_accepted_but_501_lines_are_refused():
    assert len(place([line(quantity=1)] * 500).lines) == 500
    with pytest.raises(InvalidValueError):
        place([line(quantity=1)] * 501)


@pytest.mark.parametrize("quantity", [0, -1, 1.5, 2.0, "3", None, True, False, 1_000_001])
def test_a_quantity_that_is_not_a_whole_number_from_1_to_a_million_is_refused(quantity):
    with pytest.raises(InvalidValueError):
        place([line(quantity=quantity)])


def test_a_quantity_of_a_million_is_accepted():
    assert place([line(quantity=1_000_000)]).lines[0]["quantity"] == 1_000_000


def test_a_negative_unit_price_is_refused():
    with pytest.raises(InvalidValueError):
        place([line(unit_price="-0.01")])


def test_a_unit_price_with_more_than_four_decimal_places_is_refused():
    with pytest.raises(InvalidValueError):
        place([line(unit_price="4.00001")])


def test_a_line_for_an_unknown_sku_is_refused():
    with pytest.raises(UnknownProductError):
        place([line("WIDGET-1"), line("NO-SUCH-SKU")])


def test_a_deactivated_customer_cannot_order():
    customer = a_customer()
    customer.deactivate(reason=None, occurred_at=T0, actor=ACTOR)

    with pytest.raises(CustomerInactiveError):
        place(customer=customer, at=T1)


# --- shipping ---------------------------------------------------------------------------------

def test_a_placed_order_can_be_shipped():
    order = given_order()

    order.ship(occurred_at=T1, actor=ACTOR)

    assert type(only_new_event(order)) is Order.Shipped
    assert order.status == "shipped" and order.shipped_at == T1


@pytest.mark.parametrize("past", [("ship",), ("cancel",), ("ship", "cancel")])
def test_a_shipped_or_cancelled_order_cannot_be_shipped(past):
    order = given_order(*past)

    with pytest.raises(OrderStateError):
        order.ship(occurred_at=T2, actor=ACTOR)
    assert order.collect_events() == []


# --- invoicing --------------------------------------------------------------------------------

@pytest.mark.parametrize("past", [(), ("ship",)])
def test_invoicing_bills_the_order_revenue(past):
    order = given_order(*past)

    order.invoice(due_on=date(2026, 2, 5), occurred_at=T1, actor=ACTOR)

    event = only_new_event(order)
    assert type(event) is Order.Invoiced
    assert event.amount == Decimal("12.00") and event.due_on == date(2026, 2, 5)
    assert order.status == "invoiced"


def test_an_invoice_may_fall_due_on_its_own_date():
    order = given_order()

    order.invoice(due_on=T1.date(), occurred_at=T1, actor=ACTOR)

    assert only_new_event(order).due_on == T1.date()


def test_an_invoice_due_before_the_invoice_date_is_refused():
    order = given_order("ship")

    with pytest.raises(InvalidValueError):
        order.invoice(due_on=T1.date() - timedelta(days=1), occurred_at=T1, actor=ACTOR)
    assert order.collect_events() == []
    assert order.status == "shipped"


@pytest.mark.parametrize("past", [("invoice",), ("cancel",)])
def test_an_invoiced_or_cancelled_order_cannot_be_invoiced(past):
    order = given_order(*past)

    with pytest.raises(OrderStateError):
        order.invoice(due_on=date(2026, 3, 1), occurred_at=T2, actor=ACTOR)
    assert order.collect_events() == []


# --- payments ---------------------------------------------------------------------------------

def test_a_partial_payment_leaves_the_rest_outstanding():
    order = given_order("ship", "invoice")

    pay(order, "5.00")

    event = only_new_event(order)
    assert type(event) is Order.PaymentReceived
    assert (event.amount, event.paid_total, event.outstanding) == \
        (Decimal("5.00"), Decimal("5.00"), Decimal("7.00"))
    assert order.status == "invoiced"


def test_the_payment_that_settles_the_invoice_makes_the_order_paid():
    order = given_order("ship", "invoice")
    pay(order, "5.00")
    pay(order, "4.9999")
    order.collect_events()

    pay(order, "2.0001")

    event = only_new_event(order)
    assert (event.paid_total, event.outstanding) == (Decimal("12.00"), Decimal("0"))
    assert order.status == "paid"


@pytest.mark.parametrize(("earlier", "amount"), [((), "12.0001"), (("5.00",), "7.01")])
def test_a_payment_beyond_the_outstanding_amount_is_refused(earlier, amount):
    order = given_order("invoice")
    for paid in earlier:
        pay(order, paid)
    order.collect_events()

    with pytest.raises(OverpaymentError):
        pay(order, amount)
    assert order.collect_events() == []
    assert order.status == "invoiced"


@pytest.mark.parametrize("past", [(), ("ship",), ("cancel",)])
def test_a_payment_before_invoicing_is_refused(past):
    order = given_order(*past)

    with pytest.raises(OrderStateError):
        pay(order, "1.00")
    assert order.collect_events() == []
    assert order.paid == Decimal(0)


def test_a_payment_on_a_paid_order_is_refused():
    order = given_order("invoice")
    pay(order, "12.00")
    order.collect_events()

    with pytest.raises(OrderStateError):
        pay(order, "0.01")
    assert order.collect_events() == []


@pytest.mark.parametrize("amount", ["0", "-1.00", "1.00001"])
def test_a_zero_negative_or_over_precise_payment_is_refused(amount):
    order = given_order("invoice")

    with pytest.raises(InvalidValueError):
        pay(order, amount)
    assert order.collect_events() == []


def test_a_zero_revenue_order_is_paid_as_soon_as_it_is_invoiced():
    order = given_order(lines=[line(unit_price="0")])

    order.invoice(due_on=date(2026, 2, 5), occurred_at=T1, actor=ACTOR)

    assert only_new_event(order).amount == Decimal("0")
    assert order.status == "paid"


# --- cancelling -------------------------------------------------------------------------------

@pytest.mark.parametrize("past", [(), ("ship",)])
def test_an_order_not_yet_invoiced_can_be_cancelled(past):
    order = given_order(*past)

    order.cancel(reason="  customer withdrew ", occurred_at=T2, actor=ACTOR)

    event = only_new_event(order)
    assert type(event) is Order.Cancelled and event.reason == "customer withdrew"
    assert order.status == "cancelled"


def test_an_invoiced_order_cannot_be_cancelled():
    order = given_order("ship", "invoice")

    with pytest.raises(OrderStateError):
        order.cancel(reason="too late", occurred_at=T2, actor=ACTOR)
    assert order.collect_events() == []
    assert order.status == "invoiced"


def test_cancelling_twice_is_refused():
    order = given_order("cancel")

    with pytest.raises(OrderStateError):
        order.cancel(reason="again", occurred_at=T2, actor=ACTOR)
    assert order.collect_events() == []


def test_a_cancellation_needs_a_reason():
    order = given_order()

    with pytest.raises(InvalidValueError):
        order.cancel(reason="  ", occurred_at=T2, actor=ACTOR)
    assert order.collect_events() == []
    assert order.status == "placed"


# --- replay -----------------------------------------------------------------------------------

def test_an_order_rebuilt_from_its_events_matches_the_live_one():
    live = place([line(quantity=3, unit_price="4.00")])
    live.ship(occurred_at=T1, actor=ACTOR)
    live.invoice(due_on=date(2026, 2, 5), occurred_at=T1, actor=ACTOR)
    pay(live, "5.00")
    events = live.collect_events()

    rebuilt = None
    for event in events:
        rebuilt = event.mutate(rebuilt)

    assert rebuilt.id == live.id and rebuilt.version == live.version == 4
    assert rebuilt.customer_id == live.customer_id
    assert rebuilt.lines == live.lines
    assert (rebuilt.revenue, rebuilt.forecast_profit, rebuilt.forecast_margin) == \
        (Decimal("12.00"), Decimal("4.50"), Decimal("0.3750"))
    assert (rebuilt.shipped_at, rebuilt.invoiced_amount, rebuilt.paid) == \
        (T1, Decimal("12.00"), Decimal("5.00"))
    assert rebuilt.status == live.status == "invoiced"


def test_an_order_invoiced_before_shipping_can_still_be_shipped() -> None:
    order = given_order("invoice")
    order.ship(occurred_at=T2, actor=ACTOR)
    (event,) = order.collect_events()
    assert type(event) is Order.Shipped
    assert order.status == "invoiced"  # payment state wins over fulfilment in the summary status


def test_an_order_ships_only_once_even_after_invoicing() -> None:
    order = given_order("ship", "invoice")
    with pytest.raises(OrderStateError):
        order.ship(occurred_at=T2, actor=ACTOR)
    assert order.collect_events() == []


@pytest.mark.parametrize("currency", ["", "eur", "EURO", "E1R"])
def test_an_order_in_a_malformed_currency_is_refused(currency: str) -> None:
    with pytest.raises(InvalidValueError):
        Order.place(customer=a_customer(), products=catalogue(), lines=[line()], currency=currency,
                    occurred_at=T0, actor=ACTOR)
