"""Write routes for complaints: filing and one route per step of the state machine."""


from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response

from crm.api.deps import ComplaintFiler, ComplaintHandler, ComplaintRater, IfMatch, execute
from crm.api.routing import OneHopRoute
from crm.api.schemas import ComplaintFiled, ComplaintStatus
from crm.api.auth import Principal
from crm.commands import complaints as k

router = APIRouter(prefix="/v1/complaints", tags=["complaints"], route_class=OneHopRoute)


@router.post("", status_code=201, response_model=ComplaintFiled)
def file_complaint(body: k.FileComplaint, request: Request, response: Response,
                   who: ComplaintFiler) -> ComplaintFiled:
    """File a complaint; the customer's tier now sets its due and warning times."""
    result = ComplaintFiled.of(execute(request, response, body, who))
    response.headers["Location"] = f"/v1/complaints/{result.id}"
    return result


def _step(step: str, complaint_id: UUID, body: k.Command, request: Request, response: Response,
          who: Principal, version: int | None) -> ComplaintStatus:
    command = k.ComplaintStep(complaint_id=complaint_id, step=step, details=body.model_dump())
    return ComplaintStatus.of(execute(request, response, command, who, version))


def _route(step: str, model: type[k.Command], doc: str, principal_type: Any) -> None:
    if any(field.is_required() for field in model.model_fields.values()):
        def take_step(complaint_id: UUID, body: model, request: Request, response: Response,  # type: ignore[valid-type]
                      who: principal_type, version: IfMatch) -> ComplaintStatus:  # type: ignore[valid-type]
            return _step(step, complaint_id, body, request, response, who, version)
    else:  # every field optional: the body may be left out
        def take_step(complaint_id: UUID, request: Request, response: Response,  # type: ignore[misc]
                      who: principal_type, version: IfMatch,  # type: ignore[valid-type]
                      body: model | None = None) -> ComplaintStatus:  # type: ignore[valid-type]
            return _step(step, complaint_id, body or model(), request, response, who, version)

    take_step.__doc__ = doc
    take_step.__name__ = f"complaint_{step.replace('-', '_')}"
    router.add_api_route(f"/{{complaint_id}}/{step}", take_step, methods=["POST"],
                         response_model=ComplaintStatus, name=take_step.__name__)


DOCS = {
    "assign": "Assign the complaint to an employee.",
    "notes": "Add a note to the complaint's timeline.",
    "escalate": "Escalate the complaint one level.",
    "await-customer": "Pause the SLA clock while waiting for the customer.",
    "resume": "Resume after waiting; the deadlines move by the time spent waiting.",
    "resolve": "Resolve the complaint with a resolution and optional root cause.",
    "confirm": "Confirm the resolution (the customer is then told by e-mail).",
    "rate": "The customer's rating of the resolution, 1-5.",
    "reopen": "Reopen a resolved, confirmed or closed complaint; the SLA clock starts afresh.",
    "close": "Close a resolved or confirmed complaint.",
}

for _name, (_model, _) in k.STEPS.items():
    _route(_name, _model, DOCS[_name], ComplaintRater if _name == "rate" else ComplaintHandler)
