"""Write routes for customers."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request, Response

from crm.api.deps import CustomersEraser, CustomersWriter, IfMatch, execute
from crm.api.routing import OneHopRoute
from crm.api.schemas import WriteResult
from crm.commands import customers as c

router = APIRouter(prefix="/v1/customers", tags=["customers"], route_class=OneHopRoute)


@router.post("", status_code=201, response_model=WriteResult)
def register_customer(body: c.RegisterCustomer, request: Request, response: Response,
                      who: CustomersWriter) -> WriteResult:
    """Register a customer."""
    result = WriteResult.of(execute(request, response, body, who))
    response.headers["Location"] = f"/v1/customers/{result.id}"
    return result


@router.patch("/{customer_id}", response_model=WriteResult)
def update_customer(customer_id: UUID, body: c.ProfileFields, request: Request, response: Response,
                    who: CustomersWriter, version: IfMatch) -> WriteResult:
    """Change profile fields; only the fields sent change."""
    fields = body.model_dump(exclude_unset=True)
    command = c.UpdateProfile(customer_id=customer_id, **fields)
    return WriteResult.of(execute(request, response, command, who, version))


@router.post("/{customer_id}/visits", status_code=201, response_model=WriteResult)
def record_visit(customer_id: UUID, body: c.VisitDetails, request: Request, response: Response,
                 who: CustomersWriter, version: IfMatch) -> WriteResult:
    """Record a visit to the customer."""
    command = c.RecordVisit(customer_id=customer_id, **body.model_dump())
    return WriteResult.of(execute(request, response, command, who, version))


@router.post("/{customer_id}/tier-override", status_code=201, response_model=WriteResult)
def override_tier(customer_id: UUID, body: c.OverrideDetails, request: Request, response: Response,
                  who: CustomersWriter, version: IfMatch) -> WriteResult:
    """Set the customer's tier by hand (audited as TierOverridden), optionally until a date."""
    command = c.OverrideTier(customer_id=customer_id, **body.model_dump())
    return WriteResult.of(execute(request, response, command, who, version))


@router.post("/{customer_id}/deactivate", response_model=WriteResult)
def deactivate(customer_id: UUID, request: Request, response: Response,
               who: CustomersWriter, version: IfMatch, body: c.DeactivationDetails | None = None) -> WriteResult:
    """Deactivate the customer (body optional): no orders or visits until reactivated."""
    command = c.DeactivateCustomer(customer_id=customer_id, **(body or c.DeactivationDetails()).model_dump())
    return WriteResult.of(execute(request, response, command, who, version))


@router.post("/{customer_id}/reactivate", response_model=WriteResult)
def reactivate(customer_id: UUID, request: Request, response: Response, who: CustomersWriter,
               version: IfMatch) -> WriteResult:
    """Reactivate a deactivated customer."""
    command = c.ReactivateCustomer(customer_id=customer_id)
    return WriteResult.of(execute(request, response, command, who, version))


@router.post("/{customer_id}/erase", response_model=WriteResult)
def erase(customer_id: UUID, body: c.ErasureDetails, request: Request, response: Response,
          who: CustomersEraser, version: IfMatch) -> WriteResult:
    """GDPR erasure (admin only): destroys the key that seals the customer's name, e-mail, phone,
    birthday and special days (and the addresses resolution e-mails went to), and records
    PersonalDataErased. History, read models and Kafka then show those fields as erased; orders,
    profit and complaints stay; `GET /v1/audit/verify` still passes. A second erase is 409."""
    command = c.ErasePersonalData(customer_id=customer_id, **body.model_dump())
    return WriteResult.of(execute(request, response, command, who, version))
