"""Raw request bodies → validated events, with the Segment HTTP API's limits.

Limits are measured after decompression: 32 KB per event, 500 KB per batch, 2,500 events per
batch. Decompression is capped, so a gzip bomb costs at most the limit plus one byte.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from keepers.domain.events import Event, MessageRejected, normalize_message, parse_timestamp
from keepers.errors import InvalidInput, PayloadTooLarge

SHORT_PATHS = {
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
    "b": "batch",
}


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_events: int = 2500


@dataclass
class Prepared:
    """A request's events, its rejected items, and the write key found in the body."""

    events: list[Event]
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)
    # (index, code, message, payload JSON)
    write_key: str | None = None


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before compression, refusing more than `limit` bytes."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        if len(raw) > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit:,} bytes")
        return raw
    if encoding.strip().lower() not in ("gzip", "x-gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported; use gzip")
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding.lower() else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {encoding.strip()} data: {exc}") from exc
    if len(body) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed request body is larger than {limit:,} bytes")
    return body


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise InvalidInput("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", code="invalid_json") from exc


def _write_key(payload: dict[str, Any]) -> str | None:
    key = payload.get("writeKey", payload.get("write_key"))
    return key if isinstance(key, str) and key else None


def prepare_single(kind: str, body: bytes, received_at: datetime, limits: Limits) -> Prepared:
    """One message posted to /v1/{identify,track,page,screen,group,alias}."""
    if len(body) > limits.max_event_bytes:
        raise PayloadTooLarge(
            f"the event is {len(body):,} bytes; the limit is {limits.max_event_bytes:,} per event"
        )
    message = parse_json(body)
    if not isinstance(message, dict):
        raise InvalidInput("the body must be a JSON object (one Segment message)")
    try:
        event = normalize_message(message, received_at=received_at, implied_type=kind)
    except MessageRejected as exc:
        raise InvalidInput(exc.message, code=exc.code) from exc
    return Prepared(events=[event], write_key=_write_key(message))


def prepare_batch(body: bytes, received_at: datetime, limits: Limits) -> Prepared:
    """A /v1/batch body: valid items are kept, invalid ones reported by index."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object with a 'batch' array")
    items = payload.get("batch")
    if not isinstance(items, list):
        raise InvalidInput("field 'batch' is required and must be an array", code="invalid_batch")
    if len(items) > limits.max_batch_events:
        raise InvalidInput(
            f"field 'batch' has {len(items):,} events; the limit is {limits.max_batch_events:,}",
            code="too_many_events",
        )
    try:
        sent_at = parse_timestamp(payload.get("sentAt"), "sentAt")
    except MessageRejected as exc:
        raise InvalidInput(exc.message, code=exc.code) from exc
    shared = {
        k: payload[k] for k in ("context", "integrations") if isinstance(payload.get(k), dict)
    }
    prepared = Prepared(events=[], write_key=_write_key(payload))
    for index, item in enumerate(items):
        try:
            prepared.events.append(
                normalize_message(
                    _with_shared(item, shared), received_at=received_at, batch_sent_at=sent_at
                )
            )
        except MessageRejected as exc:
            prepared.rejected.append(
                (index, exc.code, f"batch[{index}]: {exc.message}", orjson.dumps(item).decode())
            )
    if len(body) > limits.max_event_bytes:
        _check_event_sizes(prepared, limits.max_event_bytes)
    if not prepared.events and prepared.rejected:
        _, code, message, _ = prepared.rejected[0]
        raise InvalidInput(message, code=code)
    return prepared


def _with_shared(item: Any, shared: dict[str, Any]) -> Any:
    """Top-level batch `context`/`integrations` apply to every item (item keys win)."""
    if not shared or not isinstance(item, dict):
        return item
    merged = dict(item)
    for key, value in shared.items():
        own = item.get(key)
        merged[key] = {**value, **own} if isinstance(own, dict) else value
    return merged


def _check_event_sizes(prepared: Prepared, limit: int) -> None:
    """32 KB per event, measured on the JSON validation already produced (properties,
    traits, context) plus a fixed allowance for the ids and timestamps: no re-serialising."""
    for event in prepared.events:
        size = 256 + sum(
            len(part)
            for part in (event.properties_json, event.traits_json, event.context_json)
            if part
        )
        if size > limit:
            raise PayloadTooLarge(
                f"event {event.message_id!r} is about {size:,} bytes; the limit is {limit:,} "
                "per event"
            )
