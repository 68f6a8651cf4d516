"""The management API under /api: status, write keys, bulk ingest for the CLI.

Every route needs a permission (`keepers.web.permissions`): the admin bearer token (setting
`admin_token`, or the per-run token the server writes beside its DuckDB file for local CLI
use), an API token with a role, or a user's session.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from keepers.errors import NotFound
from keepers.services.keepers import Keepers
from keepers.web.permissions import GuardedRoute

ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input.", **ERR},
    401: {"description": "Not logged in, or a wrong token.", **ERR},
    403: {"description": "The role may not do this, or the CSRF token is missing.", **ERR},
    422: {"description": "A field is invalid.", **ERR},
}


class WriteKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")


class WriteKeyCreated(BaseModel):
    key_id: str
    name: str
    write_key: str


class WriteKeyPublic(BaseModel):
    key_id: str
    name: str
    prefix: str
    created_at: str
    revoked_at: str | None


class IngestRequest(BaseModel):
    messages: list[dict[str, Any]] = Field(max_length=50_000)
    source: str = Field("import", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")


class IngestAnswer(BaseModel):
    stored: int
    duplicates: int
    rejected: list[dict[str, Any]]


def api_router(keepers: Keepers, admin_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/api",
        tags=["management"],
        responses=RESPONSES,
        route_class=GuardedRoute,
    )

    @router.get("/status")
    def status() -> dict[str, Any]:
        """Counts of customers, events, orders and revenue."""
        return keepers.status()

    @router.post("/keys", status_code=201)
    def create_key(body: WriteKeyCreate) -> WriteKeyCreated:
        """A new write key for a source; the key is shown only in this answer."""
        record, secret = keepers.create_write_key(body.name)
        return WriteKeyCreated(key_id=record.key_id, name=record.name, write_key=secret)

    @router.get("/keys")
    def list_keys() -> list[WriteKeyPublic]:
        return [
            WriteKeyPublic(
                key_id=k.key_id,
                name=k.name,
                prefix=k.prefix,
                created_at=k.created_at.isoformat(),
                revoked_at=k.revoked_at.isoformat() if k.revoked_at else None,
            )
            for k in keepers.list_write_keys()
        ]

    @router.delete(
        "/keys/{key_id}",
        status_code=204,
        responses={404: {"description": "No such active key.", **ERR}},
    )
    def revoke_key(key_id: str) -> None:
        if not keepers.revoke_write_key(key_id):
            raise NotFound(f"no active write key {key_id!r}")

    @router.post("/ingest")
    async def ingest(body: IngestRequest) -> IngestAnswer:
        """Store Segment messages in bulk (used by `keepers import` while the server runs)."""
        keepers.start_writer()
        report = await asyncio.to_thread(keepers.ingest_messages, body.messages, body.source)
        return IngestAnswer(
            stored=report.stored,
            duplicates=report.duplicates,
            rejected=[{"index": i, "code": c, "message": m} for i, c, m in report.rejected],
        )

    @router.get("/rejected")
    def rejected(limit: int = 20) -> list[dict[str, Any]]:
        """The most recent messages that could not be stored, with the reason."""
        return keepers.rejected_events(max(1, min(limit, 1000)))

    return router
