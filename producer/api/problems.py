"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import (
    InvalidJob,
    JobConflict,
    JobFailed,
    JobNotFound,
    ObjectNotFound,
    StorageError,
    TransientError,
)

PROBLEM_TYPE = "application/problem+json"
log = logging.getLogger("zq.api")

_TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type", 422: "Unprocessable Content",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class ApiProblem(Exception):
    """An error with its HTTP status, raised by a route and rendered as problem+json."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None,
                 **extensions: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


class BodyTooLarge(Exception):
    """The request body grew past the route's limit while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def problem(status: int, detail: str, headers: dict[str, str] | None = None,
            **extensions: Any) -> JSONResponse:
    """A problem+json response; ``type`` is a stable tag per status."""
    title = _TITLES.get(status, "Error")
    body = {"type": f"about:blank#{title.lower().replace(' ', '-')}", "title": title,
            "status": status, "detail": detail, **extensions}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_TYPE)


def invalid_job(exc: InvalidJob) -> JSONResponse:
    """422 naming the field and the limit it broke."""
    error = {"field": exc.field, "limit": exc.limit}
    return problem(422, str(exc), field=exc.field, limit=exc.limit, errors=[error])


def install_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to a problem+json response."""

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem(exc.status, exc.detail, exc.headers, **exc.extensions)

    async def on_invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidJob)
        return invalid_job(exc)

    async def on_too_large(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        return problem(413, str(exc), field="body", limit=f"at most {exc.limit} bytes")

    async def on_request_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
                   "limit": str(e.get("msg", "invalid"))} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "limit": "invalid"}
        return problem(422, f"{first['field']}: {first['limit']}", field=first["field"],
                       limit=first["limit"], errors=errors)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def on_unavailable(_: Request, exc: Exception) -> JSONResponse:
        return problem(503, f"the queue's services cannot be reached: {exc}",
                       {"Retry-After": "5"})

    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected %s", type(exc).__name__, exc_info=exc)
        return problem(500, "unexpected server error (logged)")

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(InvalidJob, on_invalid)
    app.add_exception_handler(BodyTooLarge, on_too_large)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for kind, status in ((JobNotFound, 404), (ObjectNotFound, 404), (JobConflict, 409),
                         (JobFailed, 409)):
        app.add_exception_handler(kind, _fixed(status))
    for outage in (TransientError, StorageError, redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(outage, on_unavailable)
    app.add_exception_handler(Exception, on_bug)


def _fixed(status: int) -> Any:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return problem(status, str(exc))
    return handler
