"""Errors as application/problem+json (RFC 9457); no stack trace or SQL ever reaches a client."""

from __future__ import annotations

import json
from typing import Any

import structlog
from eventsourcing.persistence import OperationalError as StoreOperationalError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import OperationalError as PgOperationalError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from crm.aggregates.errors import InvalidValueError, RuleViolationError
from crm.commands.base import ForbiddenError, NotFoundError, VersionConflictError
from crm.queries.base import BadCursorError

log = structlog.get_logger(__name__)
MEDIA_TYPE = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
          405: "Method not allowed", 409: "Conflict", 413: "Request body too large",
          422: "Invalid input", 500: "Internal error", 503: "Service unavailable"}


def problem(status: int, detail: str, *, slug: str | None = None, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": f"urn:crm:problem:{slug}" if slug else "about:blank",
            "title": TITLES.get(status, "Error"), "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def problem_bytes(status: int, detail: str, slug: str) -> bytes:
    return json.dumps({"type": f"urn:crm:problem:{slug}", "title": TITLES.get(status, "Error"),
                       "status": status, "detail": detail}).encode()


def _field_errors(errors: list[Any]) -> list[dict[str, Any]]:
    # The offending input is not echoed back: it may be large or personal.
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in errors]


def install(app: FastAPI) -> None:
    """Map every error the application can raise to its status and a problem document."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, "the request is not valid", slug="validation", errors=_field_errors(exc.errors()))

    @app.exception_handler(ValidationError)
    async def invalid_model(_: Request, exc: ValidationError) -> JSONResponse:
        return problem(422, "the request is not valid", slug="validation", errors=_field_errors(exc.errors()))

    @app.exception_handler(InvalidValueError)
    async def invalid_value(_: Request, exc: InvalidValueError) -> JSONResponse:
        return problem(422, str(exc), slug="invalid-value")

    @app.exception_handler(RuleViolationError)
    async def rule_violation(_: Request, exc: RuleViolationError) -> JSONResponse:
        return problem(409, str(exc), slug="business-rule")

    @app.exception_handler(VersionConflictError)
    async def version_conflict(_: Request, exc: VersionConflictError) -> JSONResponse:
        return problem(409, str(exc), slug="version-conflict")

    @app.exception_handler(BadCursorError)
    async def bad_cursor(_: Request, exc: BadCursorError) -> JSONResponse:
        return problem(422, str(exc), slug="bad-cursor")

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return problem(404, str(exc), slug="not-found")

    @app.exception_handler(ForbiddenError)
    async def forbidden(_: Request, exc: ForbiddenError) -> JSONResponse:
        return problem(403, str(exc), slug="forbidden")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database.unavailable", error=type(exc).__name__)
        gate = getattr(request.app.state, "database_gate", None)
        if gate is not None:
            gate.trip()  # the next requests fail fast until a probe finds the server back
        return problem(503, "the event store is unavailable; retry shortly", slug="unavailable",
                       headers={"Retry-After": "2"})

    app.add_exception_handler(PgOperationalError, unavailable)
    app.add_exception_handler(StoreOperationalError, unavailable)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request.failed")
        return problem(500, "an internal error occurred; it was logged", slug="internal")


PROBLEM_SCHEMA = {
    "type": "object", "title": "Problem", "required": ["type", "title", "status", "detail"],
    "description": "RFC 9457 problem details; `errors` lists the invalid fields of a 422.",
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "loc": {"type": "array", "items": {"type": "string"}}, "msg": {"type": "string"},
            "type": {"type": "string"}}}},
    },
}
_WRITES = {"post", "put", "patch", "delete"}


def document(app: FastAPI) -> None:
    """Make the OpenAPI spec say what the API really answers: every error a route can give is a
    documented application/problem+json response, and the /v1 routes need a bearer key.

    FastAPI documents only the success and a JSON 422; clients (and the schemathesis run in the
    tests) would otherwise meet 401, 403, 404, 409, 413 and 503 answers the spec never mentions.
    """
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = spec.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        for unused in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(unused, None)
        components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer",
                                                    "description": "an API key from CRM_API_KEYS"}}
        for path, operations in spec.get("paths", {}).items():
            for method, operation in operations.items():
                statuses = {422, 503}
                if path.startswith("/v1/"):
                    statuses |= {401, 403}
                    operation["security"] = [{"apiKey": []}]
                if "{" in path:
                    statuses.add(404)
                if method in _WRITES:
                    statuses |= {400, 409, 413}
                responses = operation.setdefault("responses", {})
                statuses |= {int(code) for code in responses if code.isdigit() and int(code) >= 400}
                for status in sorted(statuses):
                    responses[str(status)] = {
                        "description": TITLES[status],
                        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
