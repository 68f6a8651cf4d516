"""Self-referral checks: is the "friend" the referrer under another name?

Each check compares what the referred customer and their referrer left in the store; a
match is a flag (one per referred customer, referrer and check) with the shared value, and
a flag voids the pair's unpaid rewards:

- `same_email` — the same mailbox once normalised (case, `+tag`, Gmail dots and
  `googlemail.com`; see `referrals.sql.normalise_email`);
- `same_device` — a `context.device.id` on events of both;
- `same_ip` — a `context.ip` on events of both (households share one; it can be switched
  off in the programme's `fraud` settings);
- `same_payment` — a `payment_fingerprint` property (a card or wallet fingerprint from the
  payment provider, on orders or any event) used by both;
- `own_code` (from attribution) — a customer used their own code;
- `cap` (from the ledger) — rewards over the per-referrer monthly cap.

Everything is one INSERT over all attributed pairs: the fingerprints of just the customers
in an attribution are collected once and joined pairwise.
"""

from __future__ import annotations

from datetime import datetime

from keepers.referrals.programme import FraudChecks
from keepers.referrals.sql import json_text, normalised_email
from keepers.store.database import Tx

FINGERPRINTS = {
    "same_device": json_text("e.context", "device", "id"),
    "same_ip": json_text("e.context", "ip"),
    "same_payment": json_text("e.properties", "payment_fingerprint"),
}


def fingerprints_sql(checks: list[str]) -> str:
    """(customer_id, check_name, value) for every customer in an attribution."""
    people = (
        "SELECT referred_customer_id AS customer_id FROM referral_attributions "
        "UNION SELECT referrer_customer_id FROM referral_attributions"
    )
    parts = [
        f"SELECT DISTINCT e.customer_id, '{check}' AS check_name, {value} AS value "
        f"FROM events e WHERE e.customer_id IN ({people}) AND {value} IS NOT NULL "
        f"AND {value} <> ''"
        for check, value in FINGERPRINTS.items()
        if check in checks
    ]
    if "same_email" in checks:
        email = normalised_email("c.email")
        parts.append(
            f"SELECT c.customer_id, 'same_email' AS check_name, {email} AS value FROM customers c "
            f"WHERE c.customer_id IN ({people}) AND {email} IS NOT NULL"
        )
    return " UNION ALL ".join(parts)


def check_pairs(tx: Tx, fraud: FraudChecks, now: datetime) -> dict[str, int]:
    """Flag every attributed pair that shares a fingerprint; counts of new flags by check."""
    checks = [c for c in fraud.enabled() if c != "own_code"]
    if not checks:
        return {}
    matches = (
        "SELECT a.referred_customer_id, a.referrer_customer_id, a.code, x.check_name, "
        "min(x.value) AS detail FROM referral_attributions a "
        "JOIN prints x ON x.customer_id = a.referred_customer_id "
        "JOIN prints y ON y.customer_id = a.referrer_customer_id "
        "AND y.check_name = x.check_name AND y.value = x.value "
        "GROUP BY a.referred_customer_id, a.referrer_customer_id, a.code, x.check_name"
    )
    rows = tx.execute(
        f"INSERT INTO referral_fraud_flags WITH prints AS ({fingerprints_sql(checks)}) "
        "SELECT m.referred_customer_id, m.referrer_customer_id, m.code, m.check_name, "
        f"m.detail, ? FROM ({matches}) m WHERE NOT EXISTS (SELECT 1 FROM referral_fraud_flags f "
        "WHERE f.referred_customer_id = m.referred_customer_id "
        "AND f.referrer_customer_id = m.referrer_customer_id "
        "AND f.check_name = m.check_name) RETURNING check_name",
        [now],
    )
    counts: dict[str, int] = {}
    for (check,) in rows:
        counts[check] = counts.get(check, 0) + 1
    return counts
