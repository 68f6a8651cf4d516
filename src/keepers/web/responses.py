"""JSON responses and the one place KeepersError becomes an HTTP answer."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keepers.errors import KeepersError, Overloaded, RuleError, StoreUnavailable

log = logging.getLogger("keepers.web")


class JSONBytes(Response):
    """A JSON response serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    status: int,
    code: str,
    message: str,
    retry_after: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = {"code": code, "message": message, **(extra or {})}
    return JSONBytes(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KeepersError)
    async def keepers_error(request: Request, exc: KeepersError) -> Response:
        retry = exc.retry_after_s if isinstance(exc, Overloaded | StoreUnavailable) else None
        status = exc.http_status if exc.http_status != 500 else 400
        extra = None
        if isinstance(exc, RuleError):  # where in the rule, so an editor can underline it
            extra = {
                "position": exc.position,
                "length": exc.length,
                "suggestion": exc.suggestion,
                "rule": exc.source,
            }
        return error_response(status, exc.code, exc.message, retry, extra)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        status = 400 if first.get("type") == "json_invalid" else 422
        message = f"field '{where}': {first.get('msg')}" if where else str(first.get("msg"))
        return error_response(status, "invalid_input", message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "unexpected server error; see the log")
