"""The Segment-compatible tracking API: /v1/{identify,track,page,screen,group,alias,batch}
and analytics.js's short paths /v1/{i,t,p,s,g,a,b}.

The body is read raw whatever the Content-Type (analytics.js sends text/plain), gunzipped
when asked, and limited before parsing. The answer comes only after the events are
committed, so a 200 means durable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request

from keepers.errors import PayloadTooLarge
from keepers.ingest.payload import (
    SHORT_PATHS,
    Limits,
    Prepared,
    decompress,
    prepare_batch,
    prepare_single,
)
from keepers.ingest.writer import Job
from keepers.services.keepers import Keepers
from keepers.store.events import Rejection
from keepers.web.responses import JSONBytes

ERROR = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Segment-spec message (see segment.com/docs/connections/spec).",
    "properties": {
        "userId": {"type": ["string", "null"]},
        "anonymousId": {"type": ["string", "null"]},
        "messageId": {"type": "string", "maxLength": 100},
        "timestamp": {"type": "string", "format": "date-time"},
        "event": {"type": "string"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
        "writeKey": {"type": "string"},
    },
}
BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {"type": "array", "maxItems": 2500, "items": MESSAGE_SCHEMA},
        "sentAt": {"type": "string", "format": "date-time"},
        "context": {"type": "object"},
        "writeKey": {"type": "string"},
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Stored durably.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
    },
    400: {"description": "Bad input (invalid JSON, missing field, too many events).", **ERROR},
    401: {"description": "Missing or invalid write key.", **ERROR},
    413: {"description": "Over a size limit (32 KB per event, 500 KB per batch).", **ERROR},
    429: {"description": "Overloaded; retry after Retry-After seconds.", **ERROR},
    503: {"description": "The store cannot take writes; retry after Retry-After.", **ERROR},
}


def basic_write_key(authorization: str | None) -> str | None:
    """The write key from `Authorization: Basic base64(key:)` (a missing colon is tolerated)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing to buffer more than `limit` bytes off the wire."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def tracking_router(keepers: Keepers) -> APIRouter:
    router = APIRouter(tags=["tracking"])
    settings = keepers.settings
    limits = Limits(settings.max_event_bytes, settings.max_batch_bytes, settings.max_batch_events)

    async def handle(request: Request, kind: str) -> JSONBytes:
        limit = limits.max_batch_bytes if kind == "batch" else limits.max_event_bytes
        raw = await read_body(request, limit)
        body = decompress(raw, request.headers.get("content-encoding"), limit)
        received_at = keepers.clock()
        prepared: Prepared = (
            prepare_batch(body, received_at, limits)
            if kind == "batch"
            else prepare_single(kind, body, received_at, limits)
        )
        header_key = basic_write_key(request.headers.get("authorization"))
        source_id = keepers.authenticate(header_key or prepared.write_key)
        job = Job(
            source_id=source_id,
            events=prepared.events,
            rejected=[
                Rejection(source_id, received_at, code, message, payload)
                for _, code, message, payload in prepared.rejected
            ],
        )
        result = await asyncio.wrap_future(keepers.start_writer().submit(job))
        answer: dict[str, Any] = {"success": True}
        if prepared.rejected or result.quarantined:
            answer["rejected"] = [
                {"index": index, "code": code, "message": message}
                for index, code, message, _ in prepared.rejected
            ]
            if result.quarantined:
                answer["quarantined"] = result.quarantined  # kept in rejected_events
        return JSONBytes(answer)

    def add(path: str, kind: str) -> None:
        async def endpoint(request: Request) -> JSONBytes:
            return await handle(request, kind)

        endpoint.__name__ = f"ingest_{path.strip('/').replace('/', '_')}"
        schema = BATCH_SCHEMA if kind == "batch" else MESSAGE_SCHEMA
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            responses=RESPONSES,
            summary=f"Segment {kind}" + (" (analytics.js short path)" if len(path) == 4 else ""),
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": schema},
                        "text/plain": {"schema": schema},
                    },
                }
            },
        )

    for kind in ("identify", "track", "page", "screen", "group", "alias", "batch"):
        add(f"/v1/{kind}", kind)
    for short, kind in SHORT_PATHS.items():
        add(f"/v1/{short}", kind)

    @router.get(
        "/v1/projects/{write_key}/settings",
        summary="analytics.js settings",
        responses={401: RESPONSES[401]},
    )
    async def project_settings(write_key: str, request: Request) -> dict[str, Any]:
        """What the analytics.js loader fetches from its CDN, pointing it back at us."""
        keepers.authenticate(write_key)
        host = request.headers.get("host", f"{settings.host}:{settings.port}")
        return {
            "integrations": {
                "Segment.io": {
                    "apiKey": write_key,
                    "apiHost": f"{host}/v1",
                    "protocol": request.url.scheme,
                }
            },
            "plan": {"track": {"__default": {"enabled": True}}},
        }

    return router
