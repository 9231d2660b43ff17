"""Write routes for products."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from crm.api.deps import IfMatch, ProductsWriter, execute
from crm.api.routing import OneHopRoute
from crm.api.schemas import ProductWritten
from crm.commands import products as p

router = APIRouter(prefix="/v1/products", tags=["products"], route_class=OneHopRoute)


@router.post("", status_code=201, response_model=ProductWritten)
def register_product(body: p.RegisterProduct, request: Request, response: Response,
                     who: ProductsWriter) -> ProductWritten:
    """Register a product; its id is derived from the SKU, and a SKU registers once."""
    result = ProductWritten.of(execute(request, response, body, who))
    response.headers["Location"] = f"/v1/products/{result.sku}"
    return result


@router.put("/{sku}/standard-cost", response_model=ProductWritten)
def change_standard_cost(sku: p.Sku, body: p.CostChange, request: Request, response: Response,
                         who: ProductsWriter, version: IfMatch) -> ProductWritten:
    """Set a new standard cost from `effective_from` (default today); placed orders keep theirs."""
    command = p.ChangeStandardCost(sku=sku, **body.model_dump())
    return ProductWritten.of(execute(request, response, command, who, version))
