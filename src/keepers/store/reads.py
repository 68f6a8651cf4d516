"""Read-side queries over the foundation tables."""

from __future__ import annotations

from typing import Any

from keepers.store.database import Tx


def count_summary(tx: Tx) -> dict[str, Any]:
    """Headline counts: customers (merged profiles excluded), events, orders, net revenue."""
    row = tx.execute(
        "SELECT "
        "(SELECT count(*) FROM customers WHERE merged_into IS NULL), "
        "(SELECT count(*) FROM customers WHERE merged_into IS NULL AND user_id IS NOT NULL), "
        "(SELECT count(*) FROM events), "
        "(SELECT count(*) FROM orders), "
        "(SELECT count(*) FROM order_items), "
        "(SELECT coalesce(sum(revenue), 0) FROM orders), "
        "(SELECT count(DISTINCT order_id) FROM refunds), "
        "(SELECT coalesce(sum(coalesce(r.amount, o.revenue)), 0) FROM refunds r "
        "   JOIN orders o ON o.order_id = r.order_id), "
        "(SELECT count(*) FROM accounts), "
        "(SELECT count(*) FROM rejected_events)"
    )[0]
    customers, known, events, orders, items, revenue, refunded, refund_sum, accounts, bad = row
    return {
        "customers": customers,
        "known_customers": known,
        "anonymous_visitors": customers - known,
        "events": events,
        "orders": orders,
        "order_items": items,
        "revenue": round(float(revenue), 2),
        "refunded_orders": refunded,
        "net_revenue": round(float(revenue) - float(refund_sum), 2),
        "accounts": accounts,
        "rejected_events": bad,
    }


def list_rejected_events(tx: Tx, limit: int = 20) -> list[dict[str, Any]]:
    rows = tx.execute(
        "SELECT source_id, received_at, code, reason FROM rejected_events "
        "ORDER BY received_at DESC LIMIT ?",
        [limit],
    )
    return [
        {"source_id": s, "received_at": r.isoformat(), "code": c, "reason": m}
        for s, r, c, m in rows
    ]
