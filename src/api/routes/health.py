"""Liveness and readiness, open to all (no key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from crm.api.routing import OneHopRoute

router = APIRouter(tags=["health"], route_class=OneHopRoute)


@router.get("/health/live")
async def live() -> dict[str, str]:
    """Liveness: the process answers HTTP (no database work; a probe, and the raw HTTP baseline of
    `make bench`)."""
    return {"status": "ok"}


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Ready when the event store answers: its position, each projection's position, the broker."""
    runtime = request.app.state.runtime
    position = await run_in_threadpool(runtime.store.position)
    projections = await run_in_threadpool(runtime.reads.positions)
    relay = await run_in_threadpool(_relay, request)
    saga = await run_in_threadpool(runtime.reads.saga_status)
    return {"status": "ok", "position": position, "projections": projections,
            "kafka_bootstrap": request.app.state.kafka_bootstrap, "relay": relay, "sla_saga": saga}


def _relay(request: Request) -> dict[str, Any] | None:
    """The relay's position and lag; whether the broker answers, and whether the relay stands by
    because another one publishes (holds its lease), is known where the relay runs."""
    from crm.infra.relay import lag

    runtime, running = request.app.state.runtime, request.app.state.relay
    if running is not None and not running.relay.status.standby:
        status = running.relay.status
        position, reachable, standby = status.position, status.broker_reachable, False
    elif running is not None:  # another relay publishes: its position, from the tracking table
        position, reachable, standby = runtime.reads.relay_position(), None, True
    else:
        position, reachable, standby = runtime.reads.relay_position(), None, None
    if position is None:
        return None
    events, seconds = lag(runtime.store, position)
    return {"position": position, "lag_events": events, "lag_seconds": round(seconds, 3),
            "broker_reachable": reachable, "standby": standby}
