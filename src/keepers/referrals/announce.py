"""Referrers become advocates in the lifecycle: their friends' conversions as events.

The lifecycle counts `Referral Converted` events into the built-in `referrals_made` trait,
and the default `loyalty` stage rule reads it. Many shops never send that event; with the
programme's `announce: true`, Keepers writes it for them through the normal ingest path —
one per converted referred customer, on the referrer, at the moment of the friend's first
order — with a message id derived from the friend, so a retry stores nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from keepers.store.database import Tx

EVENT = "Referral Converted"
SOURCE = "referrals"
BATCH = 2_000
Ingest = Callable[[list[dict[str, Any]], str], Any]  # messages, source → IngestReport


def unannounced(tx: Tx, limit: int = 10_000) -> list[dict[str, Any]]:
    """`Referral Converted` messages for attributions whose friend has ordered and that
    Keepers has not announced yet (oldest first, at most `limit`). A pair a fraud check
    flagged is no referral to celebrate and is left out."""
    found = tx.execute(
        "SELECT a.referred_customer_id, a.code, b.user_id, b.anonymous_id, d.user_id, "
        "f.order_id, f.ordered_at FROM referral_attributions a "
        "JOIN customers b ON b.customer_id = a.referrer_customer_id "
        "JOIN customers d ON d.customer_id = a.referred_customer_id "
        "JOIN (SELECT customer_id, order_id, ordered_at, row_number() OVER (PARTITION BY "
        "customer_id ORDER BY ordered_at, order_id) AS n FROM orders) f "
        "ON f.customer_id = a.referred_customer_id AND f.n = 1 "
        "WHERE a.announced_at IS NULL AND (b.user_id IS NOT NULL OR b.anonymous_id IS NOT NULL) "
        "AND NOT EXISTS (SELECT 1 FROM referral_fraud_flags g WHERE g.referred_customer_id = "
        "a.referred_customer_id AND g.referrer_customer_id = a.referrer_customer_id "
        "AND g.check_name <> 'cap') "
        "ORDER BY f.ordered_at, a.referred_customer_id LIMIT ?",
        [limit],
    )
    return [_message(*row) for row in found]


def _message(
    referred: int,
    code: str,
    user_id: str | None,
    anonymous_id: str | None,
    referred_user: str | None,
    order_id: str,
    ordered_at: datetime,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": EVENT,
        "messageId": f"keepers-referral-converted-{referred}",
        "timestamp": ordered_at.isoformat(),
        "properties": {
            "referral_code": code,
            "referred_user_id": referred_user,
            "order_id": order_id,
        },
        "context": {"library": {"name": "keepers-referrals", "version": "1"}},
    }
    if user_id is not None:
        message["userId"] = user_id
    else:
        message["anonymousId"] = anonymous_id
    return message


def mark_announced(tx: Tx, messages: list[dict[str, Any]], now: datetime) -> int:
    """Record that these conversions were announced (after the ingest stored them)."""
    referred = [int(m["messageId"].rsplit("-", 1)[1]) for m in messages]
    if not referred:
        return 0
    marks = ", ".join("?" for _ in referred)
    rows = tx.execute(
        f"UPDATE referral_attributions SET announced_at = ? WHERE referred_customer_id IN "
        f"({marks}) AND announced_at IS NULL RETURNING referred_customer_id",
        [now, *referred],
    )
    return len(rows)
