"""Segment-spec messages → normalised events (pure: no I/O, no clock).

The Segment HTTP Tracking API is the contract: the official Segment and RudderStack clients
must work unmodified. Rules carried over from the spec (segment-docs `spec/common.md`,
`http-api/index.md`):

- `userId` and/or `anonymousId` is required; JSON `null` means absent; numbers become strings.
- `track` needs `event`, `group` needs `groupId`, `alias` needs `previousId` and `userId`.
- `messageId` (≤ 100 characters) deduplicates resends; the server assigns one when missing.
- Clock skew: `timestamp = receivedAt − (sentAt − originalTimestamp)`, where the client's
  `timestamp` is the `originalTimestamp`. Without `sentAt` the client's time is kept as is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from dateutil import parser as _dateutil

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
MAX_MESSAGE_ID = 100
MAX_ID_LENGTH = 1024


@dataclass(slots=True)
class Event:
    """One validated message, ready for the store."""

    message_id: str
    type: str
    event: str | None  # track: event name; page/screen: name
    user_id: str | None
    anonymous_id: str | None
    group_id: str | None
    previous_id: str | None
    timestamp: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    properties: dict[str, Any] | None
    traits: dict[str, Any] | None
    context: dict[str, Any] | None
    # The same three objects as JSON text for the store, serialised once while validating.
    properties_json: str | None = None
    traits_json: str | None = None
    context_json: str | None = None


class MessageRejected(ValueError):
    """A message breaks the spec; `code` is the machine name, the text names the field."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def to_json(value: Any) -> str | None:
    """JSON text for the store; NUL escapes (PostgreSQL refuses them) become U+FFFD."""
    if value is None:
        return None
    return orjson.dumps(value).replace(b"\\u0000", b"\\ufffd").decode()


def _json_field(value: dict[str, Any] | None, field: str) -> str | None:
    try:
        return to_json(value)
    except (TypeError, RecursionError) as exc:  # orjson writes at most 254 levels
        raise MessageRejected(
            "invalid_field", f"field '{field}' is nested too deeply (more than 250 levels)"
        ) from exc


def parse_timestamp(value: Any, field: str) -> datetime | None:
    """Lenient ISO-8601 → aware UTC datetime; None stays None.

    Fast path `datetime.fromisoformat` (handles `Z`, ms/µs, offsets); fallback dateutil for
    forms like `2015-2-02T00:30:08.276Z` that appear in Segment's own docs. Naive → UTC.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageRejected("invalid_timestamp", f"field '{field}' must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = _dateutil.parse(value)
        except (ValueError, OverflowError) as exc:
            raise MessageRejected(
                "invalid_timestamp", f"field '{field}': cannot read {value[:40]!r} as a timestamp"
            ) from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise MessageRejected(
            "invalid_timestamp", f"field '{field}': {value[:40]!r} is out of range"
        ) from exc


def _identifier(message: dict[str, Any], field: str) -> str | None:
    """An id field: absent/null/"" → None, number → string, anything else rejected."""
    value = message.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MessageRejected("invalid_field", f"field '{field}' must be a string")
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ID_LENGTH or "\x00" in text:
        raise MessageRejected(
            "invalid_field", f"field '{field}' is longer than {MAX_ID_LENGTH} or has NUL"
        )
    return text


def _object(message: dict[str, Any], field: str) -> dict[str, Any] | None:
    value = message.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MessageRejected("invalid_field", f"field '{field}' must be an object")
    return value


def _name(message: dict[str, Any], field: str, required: bool) -> str | None:
    value = message.get(field)
    if value is None or value == "":
        if required:
            raise MessageRejected("missing_field", f"field '{field}' is required")
        return None
    if not isinstance(value, str):
        raise MessageRejected("invalid_field", f"field '{field}' must be a string")
    if len(value) > MAX_ID_LENGTH or "\x00" in value:
        raise MessageRejected(
            "invalid_field", f"field '{field}' is longer than {MAX_ID_LENGTH} or has NUL"
        )
    return value


def _message_id(message: dict[str, Any]) -> str:
    value = _identifier(message, "messageId")
    if value is None:
        return str(uuid.uuid4())
    if len(value) > MAX_MESSAGE_ID:
        raise MessageRejected(
            "invalid_field", f"field 'messageId' is longer than {MAX_MESSAGE_ID} characters"
        )
    return value


def _times(
    message: dict[str, Any], received_at: datetime, batch_sent_at: datetime | None
) -> tuple[datetime, datetime | None, datetime | None]:
    """(timestamp, originalTimestamp, sentAt) with Segment's clock-skew correction."""
    original = parse_timestamp(message.get("originalTimestamp"), "originalTimestamp")
    if original is None:
        original = parse_timestamp(message.get("timestamp"), "timestamp")
    sent_at = parse_timestamp(message.get("sentAt"), "sentAt") or batch_sent_at
    if original is None:
        return received_at, None, sent_at
    if sent_at is None:
        return original, original, None
    return received_at - (sent_at - original), original, sent_at


def normalize_message(
    message: Any,
    *,
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    implied_type: str | None = None,
) -> Event:
    """Validate one Segment message and return the event to store, or raise MessageRejected."""
    if not isinstance(message, dict):
        raise MessageRejected("invalid_message", "each message must be a JSON object")
    kind = implied_type or message.get("type")
    if kind not in MESSAGE_TYPES:
        raise MessageRejected(
            "invalid_type", f"field 'type' must be one of {', '.join(MESSAGE_TYPES)}"
        )
    user_id = _identifier(message, "userId")
    anonymous_id = _identifier(message, "anonymousId")
    if user_id is None and anonymous_id is None:
        raise MessageRejected("no_user_anon_id", "either 'userId' or 'anonymousId' is required")
    timestamp, original, sent_at = _times(message, received_at, batch_sent_at)
    context = _object(message, "context")
    group_id = _identifier(message, "groupId")
    if group_id is None and context is not None and context.get("groupId") not in (None, ""):
        group_id = _identifier(context, "groupId")
    event = Event(
        message_id=_message_id(message),
        type=kind,
        event=_name(message, "event" if kind == "track" else "name", kind == "track"),
        user_id=user_id,
        anonymous_id=anonymous_id,
        group_id=group_id,
        previous_id=_identifier(message, "previousId"),
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        received_at=received_at,
        properties=_object(message, "properties"),
        traits=_object(message, "traits"),
        context=context,
    )
    _check_type_rules(event)
    event.properties_json = _json_field(event.properties, "properties")
    event.traits_json = _json_field(event.traits, "traits")
    event.context_json = _json_field(event.context, "context")
    return event


def _check_type_rules(event: Event) -> None:
    if event.type == "group" and event.group_id is None:
        raise MessageRejected("missing_field", "field 'groupId' is required for group")
    if event.type == "alias":
        if event.previous_id is None:
            raise MessageRejected("missing_field", "field 'previousId' is required for alias")
        if event.user_id is None:
            raise MessageRejected("missing_field", "field 'userId' is required for alias")
