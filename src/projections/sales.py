"""Sales read models: orders, order lines as profit facts (frozen cost, business time), payments, products."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

from crm.aggregates.order import Order
from crm.aggregates.product import Product
from crm.projections.base import ReadModelProjection, Write, as_json


def _order(event: Any, sets: str, **params: Any) -> Write:
    return Write(f"UPDATE orders SET version = %(v)s, {sets} WHERE id = %(id)s",
                 {"id": event.originator_id, "v": event.originator_version, **params})


class SalesProjection(ReadModelProjection):
    """Orders with their status and payments; one profit fact per order line; the product catalogue."""

    name = "sales"
    schema = "read_sales"
    tables = {
        "orders": """id uuid PRIMARY KEY, customer_id uuid NOT NULL, placed_at timestamptz NOT NULL,
            status text NOT NULL, currency text NOT NULL, revenue numeric NOT NULL, cost numeric NOT NULL,
            forecast_profit numeric NOT NULL, forecast_margin numeric, line_count integer NOT NULL,
            warned_complaint_ids jsonb NOT NULL, shipped_at timestamptz, invoiced_at timestamptz,
            invoice_amount numeric, due_on date, paid numeric NOT NULL DEFAULT 0, cancelled_at timestamptz,
            cancel_reason text, version integer NOT NULL""",
        "order_lines": """order_id uuid NOT NULL, line_no integer NOT NULL, customer_id uuid NOT NULL,
            placed_at timestamptz NOT NULL, sku text NOT NULL, quantity integer NOT NULL,
            unit_price numeric NOT NULL, standard_cost numeric NOT NULL, revenue numeric NOT NULL,
            cost numeric NOT NULL, cancelled boolean NOT NULL DEFAULT false, PRIMARY KEY (order_id, line_no)""",
        "payments": """event_id text PRIMARY KEY, order_id uuid NOT NULL, customer_id uuid NOT NULL,
            amount numeric NOT NULL, received_at timestamptz NOT NULL""",
        "products": """sku text PRIMARY KEY, id uuid NOT NULL, name text NOT NULL, list_price numeric NOT NULL,
            standard_cost numeric NOT NULL, supplier text, version integer NOT NULL""",
    }
    indexes = (
        "CREATE INDEX IF NOT EXISTS orders_customer ON orders (customer_id, placed_at)",
        "CREATE INDEX IF NOT EXISTS order_lines_placed ON order_lines (placed_at)",
        "CREATE INDEX IF NOT EXISTS order_lines_customer ON order_lines (customer_id, placed_at)",
        "CREATE INDEX IF NOT EXISTS order_lines_sku ON order_lines (sku, placed_at)",
        "CREATE INDEX IF NOT EXISTS payments_order ON payments (order_id)",
    )

    @singledispatchmethod
    def writes_for(self, domain_event: Any) -> list[Write]:
        return []  # not an event this read model needs; its position is still tracked

    @writes_for.register
    def _(self, event: Order.Placed) -> list[Write]:
        writes = [Write("""INSERT INTO orders (id, customer_id, placed_at, status, currency, revenue, cost,
                forecast_profit, forecast_margin, line_count, warned_complaint_ids, version) VALUES (%(id)s,
                %(customer)s, %(at)s, 'placed', %(currency)s, %(revenue)s, %(cost)s, %(profit)s, %(margin)s,
                %(lines)s, %(warned)s, %(v)s)""",
                        {"id": event.originator_id, "customer": event.customer_id, "at": event.occurred_at,
                         "currency": event.currency, "revenue": event.revenue, "cost": event.cost,
                         "profit": event.forecast_profit, "margin": event.forecast_margin,
                         "lines": len(event.lines), "warned": as_json(event.warned_complaint_ids),
                         "v": event.originator_version})]
        lines = [{"line_no": n, "sku": l["sku"], "quantity": l["quantity"], "unit_price": l["unit_price"],
                  "standard_cost": l["standard_cost"], "revenue": l["revenue"], "cost": l["cost"]}
                 for n, l in enumerate(event.lines, start=1)]
        writes.append(Write("""INSERT INTO order_lines (order_id, line_no, customer_id, placed_at, sku, quantity,
                unit_price, standard_cost, revenue, cost)
            SELECT %(id)s, l.line_no, %(customer)s, %(at)s, l.sku, l.quantity, l.unit_price, l.standard_cost,
                   l.revenue, l.cost
            FROM jsonb_to_recordset(%(lines)s::jsonb) AS l(line_no integer, sku text, quantity integer,
                 unit_price numeric, standard_cost numeric, revenue numeric, cost numeric)""",
                            {"id": event.originator_id, "customer": event.customer_id, "at": event.occurred_at,
                             "lines": as_json(lines)}))
        return writes

    @writes_for.register
    def _(self, event: Order.Shipped) -> list[Write]:
        return [_order(event, "shipped_at = %(at)s, status = CASE WHEN status = 'placed' THEN 'shipped' "
                              "ELSE status END", at=event.occurred_at)]

    @writes_for.register
    def _(self, event: Order.Invoiced) -> list[Write]:
        return [_order(event, "invoiced_at = %(at)s, invoice_amount = %(amount)s, due_on = %(due)s, "
                              "status = 'invoiced'", at=event.occurred_at, amount=event.amount, due=event.due_on)]

    @writes_for.register
    def _(self, event: Order.PaymentReceived) -> list[Write]:
        return [_order(event, "paid = %(paid)s, status = CASE WHEN %(outstanding)s = 0 THEN 'paid' "
                              "ELSE status END", paid=event.paid_total, outstanding=event.outstanding),
                Write("""INSERT INTO payments (event_id, order_id, customer_id, amount, received_at)
                    SELECT %(e)s, id, customer_id, %(amount)s, %(at)s FROM orders WHERE id = %(id)s""",
                      {"e": f"{event.originator_id}:{event.originator_version}", "id": event.originator_id,
                       "amount": event.amount, "at": event.occurred_at}, append_only=True)]

    @writes_for.register
    def _(self, event: Order.Cancelled) -> list[Write]:
        return [_order(event, "status = 'cancelled', cancelled_at = %(at)s, cancel_reason = %(reason)s",
                       at=event.occurred_at, reason=event.reason),
                Write("UPDATE order_lines SET cancelled = true WHERE order_id = %(id)s", {"id": event.originator_id})]

    @writes_for.register
    def _(self, event: Product.Registered) -> list[Write]:
        return [Write("""INSERT INTO products (sku, id, name, list_price, standard_cost, supplier, version)
                VALUES (%(sku)s, %(id)s, %(name)s, %(price)s, %(cost)s, %(supplier)s, %(v)s)""",
                      {"sku": event.sku, "id": event.originator_id, "name": event.name, "price": event.list_price,
                       "cost": event.standard_cost, "supplier": event.supplier, "v": event.originator_version})]

    @writes_for.register
    def _(self, event: Product.StandardCostChanged) -> list[Write]:
        # The catalogue shows the latest announced cost; orders keep the cost they froze.
        return [Write("UPDATE products SET standard_cost = %(cost)s, version = %(v)s WHERE id = %(id)s",
                      {"id": event.originator_id, "cost": event.standard_cost, "v": event.originator_version})]
