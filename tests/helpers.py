"""Small helpers shared by tests."""

from __future__ import annotations

import uuid
from typing import Any

from keepers.services.keepers import Keepers


def rows(keepers: Keepers, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with keepers.db.transaction() as tx:
        return tx.execute(sql, params or [])


def scalar(keepers: Keepers, sql: str, params: list[Any] | None = None) -> Any:
    return rows(keepers, sql, params)[0][0]


def track(user_id: str | None = None, event: str = "Product Viewed", **extra: Any) -> dict:
    message = {
        "type": "track",
        "userId": user_id,
        "event": event,
        "messageId": extra.pop("messageId", str(uuid.uuid4())),
    }
    message.update(extra)
    return message
