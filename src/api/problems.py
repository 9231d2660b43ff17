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

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database.unavailable", error=type(exc).__name__)
        return problem(503, "the event store is unavailable; retry shortly", slug="unavailable",
                       headers={"Retry-After": "2"})

    app.add_exception_handler(PgOperationalError, unavailable)
    app.add_exception_handler(StoreOperationalError, unavailable)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request.failed")
        return problem(500, "an internal error occurred; it was logged", slug="internal")
