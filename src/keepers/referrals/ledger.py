"""The reward ledger and its state machine: pending → earned → paid, or → void with a reason.

```
            (first order of a referred customer lands)
                    │ open              │ open, over the cap / flagged
                    ▼                   ▼
                 pending ──────────►  void   (refunded in the window, fraud, duplicate, by hand)
                    │ earn               ▲
                    ▼                    │
                 earned ─────────────────┘
                    │ pay (explicit command only)
                    ▼
                  paid    (final: money has left; a later flag is kept for review)
```

Every move is one small, named transition with the statuses it starts from and the one it
ends in (`TRANSITIONS`), applied set-based to every reward it concerns in one UPDATE, in the
sync's transaction. Times come from the data where the business decides them — a reward is
pending from its order and earned when the window ends (`eligible_at`), not when a sync
happened to notice — so two syncs, or a sync run late, write the same ledger.

A reward's id is `rule:order_id`: the qualifying order names it, so reopening is a no-op
and a merge of two customer profiles keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keepers.errors import InvalidInput, NotFound
from keepers.referrals.programme import FraudChecks, Programme, RewardRule
from keepers.store.database import Tx

STATUSES = ("pending", "earned", "paid", "void")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNPAID = ("pending", "earned")
MAX_IDS = 10_000


@dataclass(frozen=True)
class Transition:
    """One move of a reward, declared: from which statuses, to which, and why."""

    name: str
    from_statuses: tuple[str, ...]
    to_status: str
    why: str


OPEN = Transition("open", (), "pending", "the referred customer's first order landed")
CAP = Transition("cap", (), "void", "over the referrer's monthly cap when it landed")
FRAUD = Transition("fraud", UNPAID, "void", "a fraud check flagged the pair")
REFUND = Transition("refund", UNPAID, "void", "the order was refunded inside the window")
DUPLICATE = Transition("duplicate", UNPAID, "void", "a merge left one customer two rewards")
EARN = Transition("earn", ("pending",), "earned", "the window ended without a refund")
PAY = Transition("pay", ("earned",), "paid", "paid out, by an explicit command")
VOID = Transition("void", UNPAID, "void", "voided by hand, with a reason")
TRANSITIONS = (OPEN, CAP, FRAUD, REFUND, DUPLICATE, EARN, PAY, VOID)


def allowed(transition: Transition, status: str) -> bool:
    return status in transition.from_statuses


def _enabled_checks(fraud: FraudChecks) -> str:
    return ", ".join(f"'{c}'" for c in fraud.enabled())


def open_rewards(
    tx: Tx,
    rule: RewardRule,
    version: int,
    fraud: FraudChecks,
    now: datetime,
    since: datetime | None = None,
) -> dict[str, int]:
    """OPEN (or CAP / FRAUD at once) a reward for every attributed customer whose first
    order has landed (at or after `since`, when the rule came into force) and who has none
    under this rule yet."""
    hours = int(rule.window_days) * 24
    cap = "NULL" if rule.cap_per_month is None else str(int(rule.cap_per_month))
    month = "date_trunc('month', {} AT TIME ZONE 'UTC')"
    first = (
        "SELECT o.customer_id, o.order_id, o.ordered_at, "
        "COALESCE(o.revenue, o.total, 0) AS value, row_number() OVER (PARTITION BY "
        "o.customer_id ORDER BY o.ordered_at, o.order_id) AS n FROM orders o "
        "WHERE o.ordered_at <= ? AND o.customer_id IN "
        "(SELECT referred_customer_id FROM referral_attributions)"
    )
    cand = (
        "SELECT a.referred_customer_id AS referred, a.referrer_customer_id AS referrer, "
        f"a.code, f.order_id, f.ordered_at, f.value, {month.format('f.ordered_at')} AS month, "
        "(SELECT min(g.check_name) FROM referral_fraud_flags g WHERE "
        "g.referred_customer_id = a.referred_customer_id AND g.referrer_customer_id = "
        f"a.referrer_customer_id AND g.check_name IN ({_enabled_checks(fraud)})) AS flag "
        f"FROM referral_attributions a JOIN ({first}) f ON f.customer_id = "
        "a.referred_customer_id AND f.n = 1 WHERE f.value >= ? AND f.ordered_at >= ? "
        "AND NOT EXISTS (SELECT 1 "
        "FROM referral_rewards r WHERE r.rule = ? AND r.referred_customer_id = "
        "a.referred_customer_id)"
    )
    ranked = (
        "SELECT c.*, row_number() OVER (PARTITION BY c.referrer, c.month, c.flag IS NULL "
        "ORDER BY c.ordered_at, c.order_id) AS k, (SELECT count(*) FROM referral_rewards r "
        "WHERE r.rule = ? AND r.referrer_customer_id = c.referrer AND r.status <> 'void' "
        f"AND {month.format('r.pending_at')} = c.month) AS used FROM ({cand}) c"
    )
    capped = f"({cap} IS NOT NULL AND q.flag IS NULL AND q.used + q.k > {cap})"
    void = f"(q.flag IS NOT NULL OR {capped})"
    beneficiary = "q.referrer" if rule.beneficiary == "referrer" else "q.referred"
    rows = tx.execute(
        f"INSERT INTO referral_rewards SELECT ? || ':' || q.order_id, ?, ?, {beneficiary}, "
        "q.referrer, q.referred, q.code, q.order_id, q.value, ?, ?, ?, "
        f"CASE WHEN {void} THEN 'void' ELSE 'pending' END, "
        f"CASE WHEN q.flag IS NOT NULL THEN 'fraud: ' || q.flag WHEN {capped} "
        f"THEN 'cap: {cap} a month' END, q.ordered_at, "
        f"q.ordered_at + INTERVAL '{hours} hours', NULL, NULL, "
        f"CASE WHEN {void} THEN ? END, NULL, ?, ? FROM ({ranked}) q "
        "RETURNING status, reason",
        [
            rule.key,
            rule.key,
            version,
            rule.amount if (rule.amount or 0) > 0 else None,
            rule.currency if (rule.amount or 0) > 0 else None,
            rule.points or None,
            now,
            now,
            now,
            rule.key,  # ranked: used
            now,  # first: ordered_at <= now
            rule.min_order_value,
            since or EPOCH,
            rule.key,  # cand: not yet rewarded
        ],
    )
    _flag_capped(tx, now)
    return {
        "opened": sum(1 for status, _ in rows if status == "pending"),
        "capped": sum(1 for _, reason in rows if (reason or "").startswith("cap")),
        "flagged": sum(1 for _, reason in rows if (reason or "").startswith("fraud")),
    }


def _flag_capped(tx: Tx, now: datetime) -> None:
    """A capped reward is also a fraud flag ("cap"), so reviewers see it with the others."""
    tx.execute(
        "INSERT INTO referral_fraud_flags SELECT DISTINCT r.referred_customer_id, "
        "r.referrer_customer_id, r.code, 'cap', r.reason, ? FROM referral_rewards r "
        "WHERE r.status = 'void' AND r.reason LIKE 'cap:%' AND NOT EXISTS (SELECT 1 FROM "
        "referral_fraud_flags f WHERE f.referred_customer_id = r.referred_customer_id "
        "AND f.referrer_customer_id = r.referrer_customer_id AND f.check_name = 'cap')",
        [now],
    )


def _move(tx: Tx, t: Transition, set_sql: str, source: str, now: datetime) -> int:
    """Apply a transition to the rewards `source` (SELECT reward_id, reason) names; every
    placeholder in `set_sql` and `source` is the moment `now`."""
    states = ", ".join(f"'{s}'" for s in t.from_statuses)
    sql = (
        f"UPDATE referral_rewards SET status = '{t.to_status}', reason = x.reason, "
        f"{set_sql}, updated_at = ? FROM ({source}) x WHERE referral_rewards.reward_id = "
        f"x.reward_id AND referral_rewards.status IN ({states}) "
        "RETURNING referral_rewards.reward_id"
    )
    return len(tx.execute(sql, [now] * sql.count("?")))


def void_flagged(tx: Tx, fraud: FraudChecks, now: datetime) -> int:
    """FRAUD: unpaid rewards of a pair that an enabled check flagged."""
    source = (
        "SELECT r.reward_id, 'fraud: ' || min(g.check_name) AS reason FROM referral_rewards r "
        "JOIN referral_fraud_flags g ON g.referred_customer_id = r.referred_customer_id "
        "AND g.referrer_customer_id = r.referrer_customer_id "
        f"WHERE g.check_name IN ({_enabled_checks(fraud)}) GROUP BY r.reward_id"
    )
    return _move(tx, FRAUD, "voided_at = ?", source, now)


def void_refunded(tx: Tx, programme: Programme, now: datetime) -> int:
    """REFUND: unpaid rewards whose order was refunded before the window ended — any
    refund, or for rules with `void_on: full_refund` refunds adding up to the order value
    (a refund without an amount counts as full)."""
    full = ", ".join(f"'{r.key}'" for r in programme.rules if r.void_on == "full_refund")
    enough = "count(f.amount) < count(*) OR sum(f.amount) >= COALESCE(r.order_value, 0) - 0.005"
    having = f"r.rule NOT IN ({full}) OR {enough}" if full else "TRUE"
    source = (
        "SELECT r.reward_id, 'refunded' AS reason FROM referral_rewards r JOIN refunds f "
        "ON f.order_id = r.order_id WHERE f.refunded_at < r.eligible_at AND f.refunded_at <= ? "
        "AND r.status IN ('pending', 'earned') GROUP BY r.reward_id, r.rule, r.order_value "
        f"HAVING {having}"
    )
    return _move(tx, REFUND, "voided_at = ?", source, now)


def void_duplicates(tx: Tx, now: datetime) -> int:
    """DUPLICATE: after a merge, one reward per (rule, referred customer) stays — a paid
    one if any, else the earliest."""
    source = (
        "SELECT reward_id, 'duplicate: customer profiles merged' AS reason FROM (SELECT "
        "reward_id, row_number() OVER (PARTITION BY rule, referred_customer_id ORDER BY "
        "CASE WHEN status = 'paid' THEN 0 ELSE 1 END, pending_at, reward_id) AS n "
        "FROM referral_rewards WHERE status <> 'void') d WHERE n > 1"
    )
    return _move(tx, DUPLICATE, "voided_at = ?", source, now)


def earn(tx: Tx, now: datetime) -> int:
    """EARN: pending rewards whose window has ended (refunds were voided just before)."""
    source = (
        "SELECT reward_id, CAST(NULL AS TEXT) AS reason FROM referral_rewards "
        "WHERE status = 'pending' AND eligible_at <= ?"
    )
    return _move(tx, EARN, "earned_at = referral_rewards.eligible_at", source, now)


def _picked(
    tx: Tx, t: Transition, reward_ids: Sequence[str] | None, referrer: int | None
) -> tuple[str, list[Any]]:
    """SQL selecting the rewards an explicit command names; every named reward must exist
    and be in a status the transition starts from (else nothing changes)."""
    if reward_ids is not None:
        ids = list(dict.fromkeys(str(i) for i in reward_ids))
        if not ids or len(ids) > MAX_IDS:
            raise InvalidInput(f"reward_ids: give between 1 and {MAX_IDS:,} reward ids")
        marks = ", ".join("?" for _ in ids)
        found = dict(
            tx.execute(
                f"SELECT reward_id, status FROM referral_rewards WHERE reward_id IN ({marks})", ids
            )
        )
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no reward {', '.join(missing[:5])}")
        wrong = [f"{i} is {found[i]}" for i in ids if not allowed(t, found[i])]
        if wrong:
            starts = " or ".join(t.from_statuses)
            raise InvalidInput(
                f"reward_ids: {'; '.join(wrong[:5])} — only {starts} rewards can be "
                f"{'paid' if t is PAY else 'voided'}"
            )
        return f"reward_id IN ({marks})", ids
    if referrer is not None:
        return "referrer_customer_id = ?", [referrer]
    return "TRUE", []


def pay(
    tx: Tx,
    now: datetime,
    *,
    reward_ids: Sequence[str] | None = None,
    referrer: int | None = None,
    reference: str | None = None,
) -> list[dict[str, Any]]:
    """PAY: earned rewards (the named ones, a referrer's, or all) become paid."""
    where, params = _picked(tx, PAY, reward_ids, referrer)
    rows = tx.execute(
        "UPDATE referral_rewards SET status = 'paid', paid_at = ?, payout_reference = ?, "
        f"updated_at = ? WHERE status = 'earned' AND {where} "
        "RETURNING reward_id, beneficiary_customer_id, amount, currency, points",
        [now, reference, now, *params],
    )
    keys = ("reward_id", "customer_id", "amount", "currency", "points")
    return [dict(zip(keys, row, strict=True)) for row in sorted(rows)]


def void(tx: Tx, now: datetime, *, reward_ids: Sequence[str], reason: str) -> list[str]:
    """VOID by hand: named unpaid rewards, with the reason recorded."""
    if not reason or not reason.strip():
        raise InvalidInput("reason: say why the reward is voided")
    where, params = _picked(tx, VOID, reward_ids, None)
    rows = tx.execute(
        "UPDATE referral_rewards SET status = 'void', reason = ?, voided_at = ?, "
        f"updated_at = ? WHERE status IN ('pending', 'earned') AND {where} RETURNING reward_id",
        [f"manual: {reason.strip()[:500]}", now, now, *params],
    )
    return sorted(r[0] for r in rows)
