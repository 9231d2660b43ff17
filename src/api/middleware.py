"""ASGI middleware: request ids and access logs, the body size limit, idempotency keys."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any, Awaitable, Callable

import structlog
from starlette.concurrency import run_in_threadpool

from crm.api.auth import digest
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


async def _send_problem(send: Send, status: int, detail: str, slug: str) -> None:
    body = problem_bytes(status, detail, slug)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]})
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
