"""Liveness and readiness, open to all (no key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Ready when the event store answers: its position, each projection's position, the broker."""
    runtime = request.app.state.runtime
    position = await run_in_threadpool(runtime.store.position)
    projections = await run_in_threadpool(runtime.reads.positions)
    return {"status": "ok", "position": position, "projections": projections,
            "kafka_bootstrap": runtime.settings.kafka_bootstrap}
