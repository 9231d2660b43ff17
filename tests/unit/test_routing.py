"""OneHopRoute: a blocking endpoint runs in the thread pool once, and FastAPI still validates,
documents and streams as it does for a plain route."""

from __future__ import annotations

import threading

import fastapi.routing
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.responses import StreamingResponse

import crm.api.routing
from crm.api.routing import OneHopRoute, in_thread_pool


class Out(BaseModel):
    n: int
    thread: str


def _app() -> FastAPI:
    router = APIRouter(route_class=OneHopRoute)

    @router.get("/blocking/{n}", response_model=Out)
    def blocking(n: int, flag: bool = False) -> Out:
        """Blocking work."""
        return Out(n=n * 2, thread=threading.current_thread().name)

    @router.get("/invalid", response_model=Out)
    def invalid() -> dict[str, object]:
        return {"n": "not a number", "thread": "x"}

    @router.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]), media_type="text/plain")

    app = FastAPI()
    app.include_router(router)
    return app


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts FastAPI's own thread-pool hops and OneHopRoute's."""
    counts = {"fastapi": 0, "ours": 0}

    def counting(name: str, real):  # type: ignore[no-untyped-def]
        async def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            counts[name] += 1
            return await real(*args, **kwargs)
        return run

    monkeypatch.setattr(fastapi.routing, "run_in_threadpool", counting("fastapi", fastapi.routing.run_in_threadpool))
    monkeypatch.setattr(crm.api.routing, "run_in_threadpool", counting("ours", crm.api.routing.run_in_threadpool))
    return counts


def test_a_blocking_endpoint_runs_off_the_event_loop_in_one_hop(hops: dict[str, int]) -> None:
    with TestClient(_app()) as client:
        loop_thread = client.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
        response = client.get("/blocking/21", params={"flag": "true"})
    assert response.status_code == 200
    body = response.json()
    assert body["n"] == 42
    assert body["thread"] != loop_thread  # the blocking work did not run on the event loop
    assert hops == {"fastapi": 0, "ours": 1}  # FastAPI validated the response without a second hop


def test_parameters_are_still_validated_and_documented() -> None:
    app = _app()
    client = TestClient(app)
    assert client.get("/blocking/x").status_code == 422
    operation = app.openapi()["paths"]["/blocking/{n}"]["get"]
    assert operation["summary"] == "Blocking"
    assert operation["description"] == "Blocking work."
    assert [p["name"] for p in operation["parameters"]] == ["n", "flag"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Out"}


def test_a_response_that_breaks_the_model_is_still_refused() -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    assert client.get("/invalid").status_code == 500


def test_responses_and_coroutines_pass_through() -> None:
    assert TestClient(_app()).get("/stream").text == "ab"

    async def already_async() -> int:
        return 1

    def generator():  # type: ignore[no-untyped-def]
        yield 1

    assert in_thread_pool(already_async) is already_async
    assert in_thread_pool(generator) is generator
