"""create_app(settings): the HTTP face of Keepers — tracking API, management API, health."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from keepers import __version__
from keepers.services.access import AccessService
from keepers.services.keepers import Keepers
from keepers.services.scheduler import ComputeScheduler
from keepers.settings import Settings
from keepers.web.access_api import AccessGuard, access_router
from keepers.web.api import api_router
from keepers.web.dashboard import ReportCache, dashboard_router
from keepers.web.journeys_api import journeys_router, mail_router
from keepers.web.lifecycle_api import lifecycle_router
from keepers.web.referrals_api import referrals_router
from keepers.web.responses import install_error_handlers
from keepers.web.sales_api import sales_router
from keepers.web.tracking import tracking_router

STATIC = str(Path(__file__).parent / "static")


def create_app(settings: Settings, keepers: Keepers | None = None) -> FastAPI:
    """The ASGI app. Opens (and closes) the store itself unless an opened `Keepers` is given;
    then the caller owns it and closes it."""
    owned = keepers is None
    keepers = keepers or Keepers.open(settings)
    admin_token = (
        settings.admin_token.get_secret_value()
        if settings.admin_token
        else secrets.token_urlsafe(24)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keepers.start_writer()
        scheduler = ComputeScheduler(
            keepers, settings.compute_interval_s, after_compute=reports.warm
        ).start()
        app.state.scheduler = scheduler
        yield
        scheduler.stop()
        if owned:
            keepers.close()

    app = FastAPI(
        title="Keepers",
        version=__version__,
        lifespan=lifespan,
        description="Customer lifecycle management. /v1/* speaks the Segment "
        "HTTP Tracking API; /api/* is the management API.",
    )
    app.state.keepers = keepers
    app.state.admin_token = admin_token
    access = AccessService(keepers.db, keepers.clock)
    app.state.access_guard = AccessGuard(access, admin_token)
    secure = secure_cookies(settings.public_url)
    reports = ReportCache(keepers)  # the dashboard's; warmed after each scheduled compute
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "X-Retry-Count", "Content-Encoding"],
        max_age=86400,
    )
    install_error_handlers(app)
    app.include_router(tracking_router(keepers))
    app.include_router(access_router(keepers, admin_token, service=access, cookie_secure=secure))
    app.include_router(api_router(keepers, admin_token))
    app.include_router(lifecycle_router(keepers, admin_token))
    app.include_router(journeys_router(keepers, admin_token))
    app.include_router(sales_router(keepers, admin_token))
    app.include_router(referrals_router(keepers, admin_token))
    app.include_router(mail_router(keepers))
    app.include_router(dashboard_router(keepers, access, cookie_secure=secure, cache=reports))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", tags=["health"])
    def health() -> dict[str, Any]:
        """Liveness and the kind of store behind this server."""
        return {
            "status": "ok",
            "database": keepers.database_kind,
            "version": __version__,
            "writer": keepers.start_writer().stats(),
        }

    _add_schemas(app)
    return app


def secure_cookies(public_url: str | None) -> bool:
    """Session cookies are Secure unless the server says it is reached over plain http on
    another machine (browsers keep Secure cookies from http://127.0.0.1 and localhost)."""
    url = urlsplit(public_url or "")
    return url.scheme != "http" or url.hostname in ("127.0.0.1", "localhost", "::1")


def _add_schemas(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
        components["Accepted"] = {
            "type": "object",
            "required": ["success"],
            "properties": {
                "success": {"type": "boolean"},
                "rejected": {"type": "array", "items": {"type": "object"}},
            },
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
