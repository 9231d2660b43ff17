"""OneHopRoute: a blocking endpoint runs in the thread pool once, and FastAPI still validates,
documents and streams as it does for a plain route; LookupRoute's GETs run on the lookup limiter."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import fastapi.routing
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.responses import StreamingResponse

import crm.api.routing
from crm.api.routing import LookupRoute, OneHopRoute, in_thread_pool, size_lookup_limiter


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
    monkeypatch.setattr(crm.api.routing, "run_blocking", counting("ours", crm.api.routing.run_blocking))
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


def _concurrency_app(lookup_threads: int) -> tuple[FastAPI, dict[str, int]]:
    """Endpoints that each hold their thread until one more than `lookup_threads` of their kind run
    at once (at most 0.5 s), and the most of each kind that did: a LookupRoute GET and POST, and a
    OneHopRoute GET. A limited kind peaks at its limit (each request waits out the 0.5 s); an
    unlimited one gets past it at once. No timing decides the outcome, only the waits' length."""
    peak = {"lookup": 0, "lookup-router write": 0, "other read": 0}
    running = dict.fromkeys(peak, 0)
    changed = threading.Condition()

    def occupy(kind: str) -> None:
        with changed:
            running[kind] += 1
            peak[kind] = max(peak[kind], running[kind])
            changed.notify_all()
            changed.wait_for(lambda: peak[kind] > lookup_threads, timeout=0.5)
            running[kind] -= 1

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        size_lookup_limiter(lookup_threads)
        yield

    lookups, others = APIRouter(route_class=LookupRoute), APIRouter(route_class=OneHopRoute)

    @lookups.get("/lookup")
    def lookup() -> None:
        occupy("lookup")

    @lookups.post("/write")
    def write() -> None:
        occupy("lookup-router write")

    @others.get("/report")
    def report() -> None:
        occupy("other read")

    app = FastAPI(lifespan=lifespan)
    app.include_router(lookups)
    app.include_router(others)
    return app, peak


@pytest.mark.parametrize("lookup_threads", [1, 3])
def test_lookups_share_their_own_small_pool_and_other_routes_keep_the_large_one(lookup_threads: int) -> None:
    app, peak = _concurrency_app(lookup_threads)
    calls = 2 * lookup_threads + 2
    with TestClient(app) as client, ThreadPoolExecutor(calls) as callers:
        for call in (lambda _: client.get("/lookup"), lambda _: client.post("/write"),
                     lambda _: client.get("/report")):
            assert all(r.status_code == 200 for r in callers.map(call, range(calls)))
    assert peak["lookup"] == lookup_threads  # never more at once, and the pool was used to the full
    assert peak["lookup-router write"] > lookup_threads  # writes are not held to the lookups' limit
    assert peak["other read"] > lookup_threads  # nor are the reads of other routers (reports, audit)
