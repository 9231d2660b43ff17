"""ASGI middleware: request ids and access logs, failing fast while the database is away, the
caller's key, the body size limit, idempotency keys."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any, Awaitable, Callable

import structlog
from starlette.concurrency import run_in_threadpool

from crm.api.auth import KeyRing, digest
from crm.api.problems import MEDIA_TYPE, problem_bytes
from crm.infra.idempotency import ClaimState, IdempotencyStore

MAX_BODY = 1_000_000
MAX_KEY_LENGTH = 200
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
log = structlog.get_logger("crm.access")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_problem(send: Send, status: int, detail: str, slug: str,
                        headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    body = problem_bytes(status, detail, slug)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestContext:
    """Binds a request id to every log line of the request and logs one access line."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = (_header(scope, b"x-request-id") or uuid.uuid4().hex)[:64]
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info("http.request", method=scope["method"], path=scope["path"], status=status,
                     ms=round((time.perf_counter() - started) * 1000, 1))
            structlog.contextvars.clear_contextvars()


class BodyLimitAndIdempotency:
    """Buffers request bodies (refusing > 1 MB with 413) and honours Idempotency-Key on POST."""

    def __init__(self, app: Any, store: IdempotencyStore) -> None:
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return await _send_problem(send, 413, f"request bodies are limited to {MAX_BODY} bytes", "too-large")
        body = await self._read_body(receive)
        if body is None:
            return await _send_problem(send, 413, f"request bodies are limited to {MAX_BODY} bytes", "too-large")
        replay = _replayer(body, receive)
        key = _header(scope, b"idempotency-key")
        if scope["method"] != "POST" or key is None:
            return await self.app(scope, replay, send)
        if not key or len(key) > MAX_KEY_LENGTH:
            return await _send_problem(send, 400, "Idempotency-Key must be 1-200 characters", "bad-idempotency-key")
        await self._idempotent(scope, replay, send, key, body)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _idempotent(self, scope: Scope, receive: Receive, send: Send, key: str, body: bytes) -> None:
        principal = digest(_header(scope, b"authorization") or "")
        request_hash = hashlib.sha256(scope["method"].encode() + scope["path"].encode() + b"\0" + body).hexdigest()
        claim = await run_in_threadpool(self.store.claim, principal, key, request_hash)
        if claim.state is ClaimState.MISMATCH:
            return await _send_problem(send, 409, "this Idempotency-Key was used with a different request", "idempotency-mismatch")
        if claim.state is ClaimState.IN_PROGRESS:
            return await _send_problem(send, 409, "a request with this Idempotency-Key is still in progress", "idempotency-in-progress")
        if claim.state is ClaimState.REPLAY:
            assert claim.status is not None and claim.body is not None
            await send({"type": "http.response.start", "status": claim.status,
                        "headers": [(b"content-type", b"application/json"), (b"idempotent-replayed", b"true")]})
            return await send({"type": "http.response.body", "body": claim.body})
        await self._first_use(scope, receive, send, principal, key)

    async def _first_use(self, scope: Scope, receive: Receive, send: Send, principal: str, key: str) -> None:
        status, parts = 500, []

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if 200 <= status < 300:
                await run_in_threadpool(self.store.complete, principal, key, status, b"".join(parts))
            else:
                await run_in_threadpool(self.store.release, principal, key)


def _replayer(body: bytes, downstream: Receive) -> Receive:
    """Hand the buffered body over once, then the real channel (a streaming response listens on
    it for the client's disconnect; answering 'disconnect' at once would cut the stream short)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await downstream()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class DatabaseGate:
    """What the API knows about PostgreSQL's reachability: a circuit breaker.

    A request that meets a connection error trips it (`trip()`); while tripped, requests are
    answered 503 with Retry-After at once instead of each waiting for the pool's timeout, and at
    most one probe (a fresh connection) every PROBE_EVERY seconds checks whether the server is
    back; the first successful probe closes the gate again. on_change(down) lets the app shorten
    its pools' waits while the server is away, so requests already inside give up quickly too. Nothing is queued or retried on the
    client's behalf: a 503 means the command was not recorded.
    """

    PROBE_EVERY = 0.5
    RETRY_AFTER = "2"

    def __init__(self, probe: Callable[[], None], on_change: Callable[[bool], None] = lambda down: None) -> None:
        self.probe, self.on_change = probe, on_change
        self.down_since: float | None = None
        self.next_probe = 0.0

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def trip(self) -> None:
        if self.down_since is None:
            self.down_since, self.next_probe = time.monotonic(), time.monotonic() + self.PROBE_EVERY
            log.warning("database.down")
            self.on_change(True)

    async def passable(self) -> bool:
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self.next_probe:
            return False
        self.next_probe = now + self.PROBE_EVERY  # one probe at a time; the others answer at once
        try:
            await run_in_threadpool(self.probe)
        except Exception:  # still away
            return False
        log.info("database.back", outage_s=round(now - self.down_since, 1))
        self.down_since = None
        self.on_change(False)
        return True


class FailFastWhileDown:
    """Answers 503 + Retry-After at once while the DatabaseGate is tripped (liveness still answers)."""

    def __init__(self, app: Any, gate: DatabaseGate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health/live" and not await self.gate.passable():
            return await _send_problem(send, 503, "the event store is unavailable; retry shortly", "unavailable",
                                       [(b"retry-after", DatabaseGate.RETRY_AFTER.encode())])
        await self.app(scope, receive, send)


class Authenticate:
    """Every /v1 request must carry a known key (`Authorization: Bearer <key>`), checked before
    anything else looks at the request: no body parsing, no parameter validation and no stored
    idempotent answer reaches a caller without one (401). The Principal is left in the request
    state for the routes, which decide what the role may do (403)."""

    def __init__(self, app: Any, keyring: KeyRing) -> None:
        self.app, self.keyring = app, keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            scheme, _, key = (_header(scope, b"authorization") or "").partition(" ")
            key = key.strip()
            principal = self.keyring.authenticate(key) if scheme.lower() == "bearer" and key else None
            if principal is None:
                return await _send_problem(send, 401, "a valid API key is required (Authorization: Bearer <key>)",
                                           "unauthorized", [(b"www-authenticate", b"Bearer")])
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
