"""Write routes for orders."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request, Response

from crm.api.deps import IfMatch, OrdersWriter, execute
from crm.api.routing import OneHopRoute
from crm.api.schemas import OrderPlaced, OrderStatus
from crm.commands import orders as o

router = APIRouter(prefix="/v1/orders", tags=["orders"], route_class=OneHopRoute)


@router.post("", status_code=201, response_model=OrderPlaced)
def place_order(body: o.PlaceOrder, request: Request, response: Response, who: OrdersWriter) -> OrderPlaced:
    """Place an order; the response gives its forecast profit from the standard costs frozen now."""
    result = OrderPlaced.of(execute(request, response, body, who))
    response.headers["Location"] = f"/v1/orders/{result.id}"
    return result


@router.post("/{order_id}/ship", response_model=OrderStatus)
def ship(order_id: UUID, request: Request, response: Response, who: OrdersWriter, version: IfMatch,
         body: o.ShipDetails | None = None) -> OrderStatus:
    """Record the shipment (body optional; `shipped_at` back-dates it)."""
    command = o.ShipOrder(order_id=order_id, **(body or o.ShipDetails()).model_dump())
    return OrderStatus.of(execute(request, response, command, who, version))


@router.post("/{order_id}/invoice", response_model=OrderStatus)
def invoice(order_id: UUID, body: o.InvoiceDetails, request: Request, response: Response,
            who: OrdersWriter, version: IfMatch) -> OrderStatus:
    """Invoice the order's full amount."""
    command = o.InvoiceOrder(order_id=order_id, **body.model_dump())
    return OrderStatus.of(execute(request, response, command, who, version))


@router.post("/{order_id}/payments", response_model=OrderStatus)
def receive_payment(order_id: UUID, body: o.PaymentDetails, request: Request, response: Response,
                    who: OrdersWriter, version: IfMatch) -> OrderStatus:
    """Record a (partial) payment; overpaying is refused with 409."""
    command = o.ReceivePayment(order_id=order_id, **body.model_dump())
    return OrderStatus.of(execute(request, response, command, who, version))


@router.post("/{order_id}/cancel", response_model=OrderStatus)
def cancel(order_id: UUID, body: o.CancelDetails, request: Request, response: Response,
           who: OrdersWriter, version: IfMatch) -> OrderStatus:
    """Cancel the order (not after invoicing)."""
    command = o.CancelOrder(order_id=order_id, **body.model_dump())
    return OrderStatus.of(execute(request, response, command, who, version))
