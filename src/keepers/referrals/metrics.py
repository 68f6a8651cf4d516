"""Referral numbers: the leaderboard, programme totals, and the lists behind them.

- invites — `Referral Sent` events (sent by the shop or its widget, when it sends them);
- referred — customers attributed to a referrer; converted — those of them with an order;
- revenue from referred customers — the value (revenue, else total) of all their orders,
  refunds shown beside it, not subtracted;
- rewards — counts and amounts by status (amounts per currency, and points).

Every number is one grouped query over all referrers; nothing loops over customers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from keepers.store.database import Tx

INVITE_EVENT = "Referral Sent"


def _plain(value: Any) -> Any:
    """Database values as JSON-friendly Python: moments as ISO text, exact numbers as int
    or float (PostgreSQL sums come back as Decimal), money rounded to cents."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else round(float(value), 2)
    if isinstance(value, float):
        return round(value, 2)
    return value


def _select(
    tx: Tx, columns: Sequence[tuple[str, str]], rest: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """Rows as dicts: `columns` are (name, SQL expression) pairs, `rest` the FROM … part."""
    listed = ", ".join(f"{expr} AS {name}" for name, expr in columns)
    rows = tx.execute(f"SELECT {listed} {rest}", list(params))
    names = [name for name, _ in columns]
    return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in rows]


REFERRED = (
    "SELECT a.referrer_customer_id AS referrer, count(*) AS referred, "
    "count(o.customer_id) AS converted, COALESCE(sum(o.revenue), 0) AS revenue, "
    "COALESCE(sum(f.refunded), 0) AS refunded FROM referral_attributions a "
    "LEFT JOIN (SELECT customer_id, sum(COALESCE(revenue, total, 0)) AS revenue FROM orders "
    "GROUP BY customer_id) o ON o.customer_id = a.referred_customer_id "
    "LEFT JOIN (SELECT customer_id, sum(COALESCE(amount, 0)) AS refunded FROM refunds "
    "GROUP BY customer_id) f ON f.customer_id = a.referred_customer_id "
    "GROUP BY a.referrer_customer_id"
)
INVITES = (
    f"SELECT customer_id AS referrer, count(*) AS invites FROM events "
    f"WHERE event = '{INVITE_EVENT}' GROUP BY customer_id"
)
REWARDS = (
    "SELECT referrer_customer_id AS referrer, "
    "COALESCE(sum(amount) FILTER (WHERE status IN ('earned', 'paid')), 0) AS earned_amount, "
    "COALESCE(sum(amount) FILTER (WHERE status = 'pending'), 0) AS pending_amount, "
    "CAST(COALESCE(sum(points) FILTER (WHERE status IN ('earned', 'paid')), 0) AS BIGINT) "
    "AS earned_points, "
    "count(*) FILTER (WHERE status = 'void') AS void_rewards, min(currency) AS currency "
    "FROM referral_rewards GROUP BY referrer_customer_id"
)
FLAGGED = (
    "SELECT referrer_customer_id AS referrer, count(DISTINCT referred_customer_id) AS flagged "
    "FROM referral_fraud_flags WHERE referrer_customer_id <> referred_customer_id "
    "GROUP BY referrer_customer_id"
)


LEADERBOARD = (
    ("customer_id", "p.referrer"),
    ("user_id", "c.user_id"),
    ("email", "c.email"),
    (
        "code",
        "(SELECT min(code) FROM referral_codes k WHERE k.customer_id = p.referrer "
        "AND k.disabled_at IS NULL)",
    ),
    ("invites", "COALESCE(i.invites, 0)"),
    ("referred", "COALESCE(r.referred, 0)"),
    ("converted", "COALESCE(r.converted, 0)"),
    ("revenue", "COALESCE(r.revenue, 0)"),
    ("earned_amount", "COALESCE(w.earned_amount, 0)"),
    ("pending_amount", "COALESCE(w.pending_amount, 0)"),
    ("earned_points", "COALESCE(w.earned_points, 0)"),
    ("currency", "w.currency"),
    ("flagged", "COALESCE(f.flagged, 0)"),
)


def leaderboard(tx: Tx, limit: int = 20) -> list[dict[str, Any]]:
    """Referrers ranked by converted friends, then revenue they brought, then invites."""
    people = f"SELECT referrer FROM ({REFERRED}) r UNION SELECT referrer FROM ({INVITES}) i"
    columns = (
        (
            "rank",
            "row_number() OVER (ORDER BY COALESCE(r.converted, 0) DESC, "
            "COALESCE(r.revenue, 0) DESC, COALESCE(i.invites, 0) DESC, p.referrer)",
        ),
        *LEADERBOARD,
    )
    return _select(
        tx,
        columns,
        f"FROM ({people}) p LEFT JOIN customers c ON c.customer_id = p.referrer "
        f"LEFT JOIN ({INVITES}) i ON i.referrer = p.referrer "
        f"LEFT JOIN ({REFERRED}) r ON r.referrer = p.referrer "
        f"LEFT JOIN ({REWARDS}) w ON w.referrer = p.referrer "
        f"LEFT JOIN ({FLAGGED}) f ON f.referrer = p.referrer ORDER BY rank LIMIT ?",
        [limit],
    )


def totals(tx: Tx) -> dict[str, Any]:
    """The programme's totals: invites, attributions by how, conversions, revenue, rewards."""
    invites = tx.execute(f"SELECT count(*) FROM events WHERE event = '{INVITE_EVENT}'")[0][0]
    referred = _select(
        tx,
        (
            ("referrers", "count(DISTINCT referrer)"),
            ("referred", "COALESCE(sum(referred), 0)"),
            ("converted", "COALESCE(sum(converted), 0)"),
            ("revenue", "COALESCE(sum(revenue), 0)"),
            ("refunded", "COALESCE(sum(refunded), 0)"),
        ),
        f"FROM ({REFERRED}) r",
    )[0]
    by_how = dict(tx.execute("SELECT how, count(*) FROM referral_attributions GROUP BY how"))
    rewards = _select(
        tx,
        (
            ("status", "status"),
            ("currency", "currency"),
            ("rewards", "count(*)"),
            ("amount", "COALESCE(sum(amount), 0)"),
            ("points", "CAST(COALESCE(sum(points), 0) AS BIGINT)"),
        ),
        "FROM referral_rewards GROUP BY status, currency ORDER BY status, currency",
    )
    flags = dict(
        tx.execute("SELECT check_name, count(*) FROM referral_fraud_flags GROUP BY check_name")
    )
    return {
        "invites": int(invites),
        "referrers": int(referred["referrers"]),
        "referred": int(referred["referred"]),
        "referred_by": {how: int(n) for how, n in sorted(by_how.items())},
        "converted": int(referred["converted"]),
        "conversion_rate": _rate(referred["converted"], referred["referred"]),
        "converted_per_invite": _rate(referred["converted"], invites),
        "revenue_from_referred": float(referred["revenue"]),
        "refunded_from_referred": float(referred["refunded"]),
        "rewards": rewards,
        "fraud_flags": {check: int(n) for check, n in sorted(flags.items())},
    }


def _rate(part: Any, whole: Any) -> float | None:
    return round(float(part) / float(whole), 4) if whole else None


REWARD_COLUMNS = (
    ("reward_id", "r.reward_id"),
    ("rule", "r.rule"),
    ("status", "r.status"),
    ("reason", "r.reason"),
    ("beneficiary_customer_id", "r.beneficiary_customer_id"),
    ("referrer_customer_id", "r.referrer_customer_id"),
    ("referrer_user_id", "b.user_id"),
    ("referred_customer_id", "r.referred_customer_id"),
    ("referred_user_id", "d.user_id"),
    ("code", "r.code"),
    ("order_id", "r.order_id"),
    ("order_value", "r.order_value"),
    ("amount", "r.amount"),
    ("currency", "r.currency"),
    ("points", "r.points"),
    ("pending_at", "r.pending_at"),
    ("eligible_at", "r.eligible_at"),
    ("earned_at", "r.earned_at"),
    ("paid_at", "r.paid_at"),
    ("voided_at", "r.voided_at"),
    ("payout_reference", "r.payout_reference"),
)


def list_rewards(
    tx: Tx, *, status: str | None = None, referrer: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    where, params = ["TRUE"], []
    if status is not None:
        where.append("r.status = ?")
        params.append(status)
    if referrer is not None:
        where.append("r.referrer_customer_id = ?")
        params.append(referrer)
    return _select(
        tx,
        REWARD_COLUMNS,
        "FROM referral_rewards r "
        "LEFT JOIN customers b ON b.customer_id = r.referrer_customer_id "
        "LEFT JOIN customers d ON d.customer_id = r.referred_customer_id "
        f"WHERE {' AND '.join(where)} ORDER BY r.pending_at DESC, r.reward_id LIMIT ?",
        [*params, limit],
    )


FLAG_COLUMNS = (
    ("check_name", "g.check_name"),
    ("detail", "g.detail"),
    ("code", "g.code"),
    ("referred_customer_id", "g.referred_customer_id"),
    ("referred_user_id", "d.user_id"),
    ("referred_email", "d.email"),
    ("referrer_customer_id", "g.referrer_customer_id"),
    ("referrer_user_id", "b.user_id"),
    ("referrer_email", "b.email"),
    ("flagged_at", "g.flagged_at"),
    (
        "reward_status",
        "(SELECT min(r.status) FROM referral_rewards r WHERE r.referred_customer_id = "
        "g.referred_customer_id AND r.referrer_customer_id = g.referrer_customer_id)",
    ),
)


def list_flags(tx: Tx, *, limit: int = 100) -> list[dict[str, Any]]:
    """Fraud flags, newest first, with both customers and what their rewards became."""
    return _select(
        tx,
        FLAG_COLUMNS,
        "FROM referral_fraud_flags g "
        "LEFT JOIN customers d ON d.customer_id = g.referred_customer_id "
        "LEFT JOIN customers b ON b.customer_id = g.referrer_customer_id "
        "ORDER BY g.flagged_at DESC, g.referred_customer_id, g.check_name LIMIT ?",
        [limit],
    )


CODE_COLUMNS = (
    ("code", "k.code"),
    ("customer_id", "k.customer_id"),
    ("user_id", "c.user_id"),
    ("email", "c.email"),
    ("source", "k.source"),
    ("created_at", "k.created_at"),
    ("disabled_at", "k.disabled_at"),
    ("referred", "(SELECT count(*) FROM referral_attributions a WHERE a.code = k.code)"),
)


def list_codes(tx: Tx, *, customer: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    where, params = ("WHERE k.customer_id = ?", [customer]) if customer is not None else ("", [])
    return _select(
        tx,
        CODE_COLUMNS,
        f"FROM referral_codes k LEFT JOIN customers c ON c.customer_id = k.customer_id {where} "
        "ORDER BY referred DESC, k.code LIMIT ?",
        [*params, limit],
    )
