"""Tiering: the versioned policy, and runs that re-grade every customer."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from crm.api.auth import Principal
from crm.api.deps import allowed
from crm.aggregates.tiering import MAX_VISITS_PER_YEAR, MAX_WINDOW_DAYS, TieringPolicy
from crm.api.routing import OneHopRoute
from crm.api.schemas import Fraction, Percent, PolicyKey, SaneInstant

router = APIRouter(prefix="/v1/tiering", tags=["tiering"], route_class=OneHopRoute)
Manager = Annotated[Principal, Depends(allowed("tiering.manage"))]
Reader = Annotated[Principal, Depends(allowed("reports.read"))]


class PolicyChange(BaseModel):
    """The fields to change; those left out keep their current values."""

    model_config = ConfigDict(extra="forbid")
    weights: dict[PolicyKey, Fraction] | None = Field(None, max_length=10)
    thresholds: dict[PolicyKey, Percent] | None = Field(None, max_length=10)
    window_days: Annotated[int, Field(ge=1, le=MAX_WINDOW_DAYS)] | None = None
    visits_per_year: dict[PolicyKey, Annotated[int, Field(ge=0, le=MAX_VISITS_PER_YEAR)]] | None = Field(
        None, max_length=10)


class PolicyView(BaseModel):
    """The tiering policy in force (version 0: the built-in defaults)."""

    version: int
    weights: dict[str, float]
    thresholds: dict[str, float]
    window_days: int
    visits_per_year: dict[str, int]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    as_of: SaneInstant | None = Field(None, description="the run grades the window ending here; default now")


class RunAccepted(BaseModel):
    run_id: UUID


class RunView(BaseModel):
    """A run's status, progress and summary (the transition matrix counts `from->to` changes)."""

    run_id: UUID
    status: str
    as_of: datetime
    policy_version: int
    requested_by: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    progress: float
    evaluated: int
    changed: int
    transitions: dict[str, int]
    error: str | None


def current_policy(request: Request) -> TieringPolicy:
    from crm.aggregates.tiering import DEFAULT_TIERING_POLICY

    return request.app.state.runtime.policies.current("tiering", TieringPolicy.from_dict, DEFAULT_TIERING_POLICY)


def _view(policy: TieringPolicy) -> PolicyView:
    return PolicyView(**{**policy.to_dict(), "version": policy.version})


@router.get("/policy", response_model=PolicyView)
def get_policy(request: Request, who: Reader) -> PolicyView:
    """The tiering policy in force."""
    return _view(current_policy(request))


@router.put("/policy", response_model=PolicyView)
def put_policy(body: PolicyChange, request: Request, who: Manager) -> PolicyView:
    """Change the policy; a bad one is 422 and the old one stays. Every change is a new version."""
    merged = {**current_policy(request).to_dict(), **body.model_dump(exclude_none=True)}
    merged.pop("version", None)
    checked = TieringPolicy.from_dict(merged)  # InvalidValueError -> 422, nothing stored
    version = request.app.state.runtime.policies.define("tiering", checked.to_dict(), who.actor)
    return _view(TieringPolicy.from_dict({**checked.to_dict(), "version": version}))


@router.post("/runs", status_code=202, response_model=RunAccepted)
def start_run(request: Request, who: Manager, body: RunRequest | None = None) -> RunAccepted:
    """Start a run over all active customers (one at a time: a second is 409); follow it at /runs/{id}."""
    from crm.infra.tiering_runs import RunInProgressError
    from crm.infra.unit_of_work import utc_now

    runtime = request.app.state.runtime
    policy = current_policy(request)
    as_of = (body.as_of if body and body.as_of else request.app.state.clock()).astimezone(utc_now().tzinfo)
    try:
        run_id = runtime.runs.begin(as_of, policy.version, who.actor)
    except RunInProgressError as error:
        raise HTTPException(409, str(error)) from error
    args = (runtime.store, runtime.pool, runtime.reads, runtime.runs, run_id, policy, as_of)
    threading.Thread(target=_run_quietly, args=args, name=f"tiering-{run_id}", daemon=True).start()
    return RunAccepted(run_id=run_id)


def _run_quietly(*args: Any) -> None:
    from crm.infra.tiering_runs import execute

    try:
        execute(*args)
    except Exception:  # recorded on the run as 'failed' with its error, and logged
        pass


@router.get("/runs/{run_id}", response_model=RunView)
def get_run(run_id: UUID, request: Request, who: Reader) -> RunView:
    """Status, progress, counts evaluated and changed, the transition matrix, duration."""
    row = request.app.state.runtime.runs.get(run_id)
    if row is None:
        raise HTTPException(404, f"no tiering run {run_id}")
    finished = row["finished_at"]
    return RunView(run_id=row["id"], duration_s=(finished - row["started_at"]).total_seconds() if finished else None,
                   progress=float(row["progress"]), **{k: row[k] for k in (
                       "status", "as_of", "policy_version", "requested_by", "started_at", "finished_at",
                       "evaluated", "changed", "transitions", "error")})
