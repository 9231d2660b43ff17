"""The FastAPI application: routes, error mapping, middleware, all wired to one Runtime."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI

from crm.api import problems
from crm.api.auth import KeyRing
from crm.api.middleware import Authenticate, BodyLimitAndIdempotency, DatabaseGate, FailFastWhileDown, RequestContext
from crm.api.routing import add_routes, size_lookup_limiter
from crm.api.routes import audit, complaints, customers, health, orders, products, queries, reports, sla, tiering
from crm.infra.runtime import Runtime
from crm.queries.base import CursorCodec
from crm.infra.unit_of_work import utc_now

DESCRIPTION = """Event-sourced CRM core. Writes return the global `position` of their last event.
Errors are `application/problem+json`. Authenticate with `Authorization: Bearer <key>`.
POSTs honour `Idempotency-Key`; commands on existing aggregates honour `If-Match: <version>`."""


def create_app(runtime: Runtime, clock: Callable[[], datetime] = utc_now, relay: Any = None,
               kafka_bootstrap: str | None = None) -> FastAPI:
    """Build the API over an open Runtime (the caller owns and closes it, and the relay if given)."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        size_lookup_limiter(runtime.settings.api_lookup_threads)  # per event loop: sized in the one serving
        yield

    app = FastAPI(title="crm", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.relay = relay
    app.state.kafka_bootstrap = kafka_bootstrap or runtime.settings.kafka_bootstrap
    app.state.keyring = KeyRing(runtime.api_keys)
    app.state.clock = clock
    app.state.cursor_codec = CursorCodec(runtime.cursor_secret)
    problems.install(app)
    for module in (health, customers, products, orders, complaints, queries, reports, tiering, sla, audit):
        add_routes(app, module.router)
    problems.document(app)
    app.add_middleware(BodyLimitAndIdempotency, store=runtime.idempotency)
    app.add_middleware(Authenticate, keyring=app.state.keyring)
    app.state.database_gate = DatabaseGate(probe=lambda: _probe(runtime.database_url),
                                           on_change=_pool_waits(runtime))
    app.add_middleware(FailFastWhileDown, gate=app.state.database_gate)
    app.add_middleware(RequestContext)  # outermost: every line of a request carries its id
    return app


def _probe(database_url: str) -> None:
    """Raises unless a fresh connection to PostgreSQL opens and answers (the gate's probe)."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=2, autocommit=True) as conn:
        conn.execute("SELECT 1")


def _pool_waits(runtime: Runtime) -> Callable[[bool], None]:
    """While the database is away, a wait for a pooled connection gives up after 0.2 s (requests
    already in flight then answer 503 soon, not after the library's ten retries); restored after."""
    pools = [runtime.pool, runtime.store.recorder.datastore.pool]
    normal = [pool.timeout for pool in pools]

    def change(down: bool) -> None:
        for pool, timeout in zip(pools, normal):
            pool.timeout = 0.2 if down else timeout

    return change


def app_from_environment() -> FastAPI:
    """The API of one worker process of `crm api --workers N` (uvicorn calls this in each worker):
    a Runtime of its own from the CRM_* settings; closed when the worker stops."""
    from crm.infra.gc_pause import freeze_startup_objects
    from crm.infra.logging import configure_logging
    from crm.infra.runtime import open_runtime
    from crm.infra.settings import Settings

    import os

    settings = Settings()
    configure_logging(os.environ.get("CRM_LOG_LEVEL", "INFO"))
    runtime = open_runtime(settings, generate_key=False)
    app = create_app(runtime)

    serve = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        try:
            async with serve(served):
                yield
        finally:
            runtime.close()

    app.router.lifespan_context = lifespan
    freeze_startup_objects()  # the worker is built: its objects leave the full collections (crm.infra.gc_pause)
    return app
