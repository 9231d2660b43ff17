"""The SLA policy: resolution time per tier, when to warn, and an optional working calendar."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from crm.api.auth import Principal
from crm.api.deps import allowed
from crm.aggregates.sla import DEFAULT_SLA_POLICY, SlaPolicy
from crm.api.routing import OneHopRoute
from crm.api.schemas import ClockTime, Fraction, IsoDay, PolicyKey, SlaDuration, TimeZoneName

router = APIRouter(prefix="/v1/sla", tags=["sla"], route_class=OneHopRoute)
Manager = Annotated[Principal, Depends(allowed("sla.manage"))]
Reader = Annotated[Principal, Depends(allowed("reports.read"))]


class Calendar(BaseModel):
    """Working time only: weekdays (0 = Monday), opening hours, holidays, in a time zone."""

    model_config = ConfigDict(extra="forbid")
    weekdays: list[Annotated[int, Field(ge=0, le=6)]] = Field(max_length=7)
    opens: ClockTime = Field(examples=["09:00"])
    closes: ClockTime = Field(examples=["17:00"])
    holidays: list[IsoDay] = Field(default_factory=list, max_length=366)
    timezone: TimeZoneName = "UTC"


class SlaPolicyChange(BaseModel):
    """The fields to change; those left out keep their values. `calendar: null` means round the clock."""

    model_config = ConfigDict(extra="forbid")
    durations: dict[PolicyKey, SlaDuration] | None = Field(None, max_length=4, examples=[{"A": "P3D", "B": "P5D"}],
                                                           description="per tier, at most P366D")
    warn_ratio: Fraction | None = None
    calendar: Calendar | None = None


class SlaPolicyView(BaseModel):
    version: int
    durations: dict[str, str]
    warn_ratio: float
    calendar: dict[str, Any] | None


def current(request: Request) -> SlaPolicy:
    return request.app.state.runtime.policies.current("sla", SlaPolicy.from_dict, DEFAULT_SLA_POLICY)


@router.get("/policy", response_model=SlaPolicyView)
def get_policy(request: Request, who: Reader) -> SlaPolicyView:
    """The SLA policy in force (version 0: the contract's defaults)."""
    return SlaPolicyView(**current(request).to_dict())


@router.put("/policy", response_model=SlaPolicyView)
def put_policy(body: SlaPolicyChange, request: Request, who: Manager) -> SlaPolicyView:
    """Change the SLA policy; complaints filed from now on use it (a bad policy is 422, nothing changes)."""
    merged = current(request).to_dict()
    changes = body.model_dump(exclude_unset=True)
    if "durations" in changes and changes["durations"] is not None:
        changes["durations"] = {**merged["durations"], **changes["durations"]}
    merged.update(changes)
    merged.pop("version", None)
    checked = SlaPolicy.from_dict(merged)  # InvalidValueError -> 422
    version = request.app.state.runtime.policies.define("sla", checked.to_dict(), who.actor)
    return SlaPolicyView(**{**checked.to_dict(), "version": version})
