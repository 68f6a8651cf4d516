"""Who brought whom: attribution of new customers to referrers, set-based from the event log.

A customer is attributed through a code seen on one of their own events, in one of three
ways (the names stored in `how`):

- `property` — `properties.referral_code` on a sign-up, order or any other event (not on
  the referrer's own `Referral Sent` / `Referral Converted` events, which carry their code);
- `context` — `context.referrer = {type: "referral", id: CODE}` (analytics.js' field);
- `link` — `?ref=CODE` in `context.page.url`, or in a page call's `properties.url`.

Only identified customers are attributed (an anonymous visitor who clicked a link is
attributed once they sign up: identify merges their browsing into their profile), and only
events up to their first order count: a referral brings in a *new* customer, so a code
used after someone already bought attributes nothing. The earliest
such event wins (ties: property, then context, then link). A code only attributes while it
is enabled, and never to its own holder — that is flagged `own_code` instead. Anonymous
browsing merged into the customer counts, since identity merges move those events.

Attributions are kept once made (a sync never re-decides them), except when an identity
merge joins two profiles: then the survivor's attribution is rebuilt from both histories.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from keepers.referrals.sql import REF_PATTERN, code_of, json_text, regex_group
from keepers.store.database import Tx

REFERRER_EVENTS = ("Referral Sent", "Referral Converted", "Referral Shared", "Referral Link Shared")
HOW = ("property", "context", "link")
MERGES = "_kp_ref_merges"


CANDIDATES = "_kp_ref_candidates"
CANDIDATE_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("seen_at", pa.timestamp("us", tz="UTC")),
        ("message_id", pa.string()),
        ("code", pa.string()),
        ("how", pa.string()),
        ("rank_how", pa.int64()),
    ]
)


def candidates_sql(tx: Tx, now: datetime) -> str:
    """(customer_id, seen_at, message_id, code, how, rank_how) of every event up to `now`
    that carries a code."""
    until = f"CAST('{now.astimezone(UTC).isoformat()}' AS TIMESTAMPTZ)"
    prop = json_text("e.properties", "referral_code")
    url = (
        f"COALESCE({json_text('e.context', 'page', 'url')}, "
        f"CASE WHEN e.type = 'page' THEN {json_text('e.properties', 'url')} END)"
    )
    excluded = ", ".join(f"'{name}'" for name in REFERRER_EVENTS)
    base = "SELECT e.customer_id, e.timestamp AS seen_at, e.message_id"
    return (
        f"{base}, {code_of(prop)} AS code, 'property' AS how, 1 AS rank_how FROM events e "
        f"WHERE e.timestamp <= {until} AND {prop} IS NOT NULL "
        f"AND (e.event IS NULL OR e.event NOT IN ({excluded})) "
        f"UNION ALL {base}, {code_of(json_text('e.context', 'referrer', 'id'))}, 'context', 2 "
        f"FROM events e WHERE e.timestamp <= {until} "
        f"AND {json_text('e.context', 'referrer', 'type')} = 'referral' "
        f"AND {json_text('e.context', 'referrer', 'id')} IS NOT NULL "
        f"UNION ALL {base}, {code_of(regex_group(tx.dialect, url, REF_PATTERN))}, 'link', 3 "
        f"FROM events e WHERE e.timestamp <= {until} AND {url} LIKE '%ref=%'"
    )


def stage_candidates(tx: Tx, now: datetime) -> int:
    """Read the event log once for codes (the JSON scan is the costly part of a sync) and
    stage the few events that carry one for the statements that follow."""
    found = tx.fetch_arrow(candidates_sql(tx, now))
    table = pa.table({name: found.column(name) for name in CANDIDATE_SCHEMA.names}).cast(
        CANDIDATE_SCHEMA
    )
    tx.stage(CANDIDATES, table)
    return table.num_rows


def attribute(tx: Tx, now: datetime) -> dict[str, int]:
    """Attribute every customer not yet attributed whose events carry a code; flag own-code
    use. One INSERT for all customers."""
    stage_candidates(tx, now)
    valid = (
        "SELECT x.*, r.customer_id AS referrer FROM "
        f"{CANDIDATES} x JOIN referral_codes r ON r.code = x.code "
        "AND (r.disabled_at IS NULL OR r.disabled_at > x.seen_at) "
        "JOIN customers c ON c.customer_id = x.customer_id AND c.user_id IS NOT NULL "
        "AND c.merged_into IS NULL LEFT JOIN (SELECT customer_id, min(ordered_at) AS "
        "first_order_at FROM orders WHERE ordered_at <= ? GROUP BY customer_id) f "
        "ON f.customer_id = x.customer_id "
        "WHERE (f.first_order_at IS NULL OR x.seen_at <= f.first_order_at) "
        "AND r.customer_id <> x.customer_id AND NOT EXISTS (SELECT 1 FROM "
        "referral_attributions a WHERE a.referred_customer_id = x.customer_id)"
    )
    ranked = (
        "SELECT v.*, row_number() OVER (PARTITION BY v.customer_id "
        f"ORDER BY v.seen_at, v.rank_how, v.code) AS n FROM ({valid}) v"
    )
    added = tx.execute(
        "INSERT INTO referral_attributions SELECT customer_id, referrer, code, how, "
        f"message_id, seen_at, ?, NULL FROM ({ranked}) k WHERE n = 1 "
        "RETURNING referred_customer_id",
        [now, now],
    )
    own = tx.execute(
        "INSERT INTO referral_fraud_flags SELECT x.customer_id, x.customer_id, min(x.code), "
        "'own_code', 'used their own code (' || min(x.how) || ')', ? "
        f"FROM {CANDIDATES} x JOIN referral_codes r ON r.code = x.code "
        "AND r.customer_id = x.customer_id WHERE NOT EXISTS (SELECT 1 FROM referral_fraud_flags "
        "g WHERE g.referred_customer_id = x.customer_id AND g.check_name = 'own_code') "
        "GROUP BY x.customer_id RETURNING referred_customer_id",
        [now],
    )
    return {"attributed": len(added), "own_code_attempts": len(own)}


def follow_merges(tx: Tx) -> int:
    """Point referral rows at the profile a merged customer now lives in.

    Codes and rewards are repointed; attributions and fraud flags that touch a merged
    profile or its survivor are deleted, to be rebuilt from the joined history by the same
    sync. Cheap when nothing was merged (one count)."""
    referenced = (
        "SELECT customer_id AS id FROM referral_codes "
        "UNION SELECT referred_customer_id FROM referral_attributions "
        "UNION SELECT referrer_customer_id FROM referral_attributions "
        "UNION SELECT referred_customer_id FROM referral_rewards "
        "UNION SELECT referrer_customer_id FROM referral_rewards "
        "UNION SELECT beneficiary_customer_id FROM referral_rewards "
        "UNION SELECT referrer_customer_id FROM referral_fraud_flags "
        "UNION SELECT referred_customer_id FROM referral_fraud_flags"
    )
    chain = (
        "WITH RECURSIVE chain(src, dst) AS ("
        "SELECT c.customer_id, c.merged_into FROM customers c "
        f"WHERE c.merged_into IS NOT NULL AND c.customer_id IN ({referenced}) "
        "UNION SELECT chain.src, c.merged_into FROM chain JOIN customers c "
        "ON c.customer_id = chain.dst WHERE c.merged_into IS NOT NULL) "
        "SELECT src, dst FROM chain WHERE NOT EXISTS (SELECT 1 FROM customers m "
        "WHERE m.customer_id = chain.dst AND m.merged_into IS NOT NULL)"
    )
    found = tx.fetch_arrow(chain)
    if not found.num_rows:
        return 0
    tx.stage(
        MERGES,
        pa.table(
            {
                "src": pa.array(found.column("src").to_pylist(), pa.int64()),
                "dst": pa.array(found.column("dst").to_pylist(), pa.int64()),
            }
        ),
    )
    touched = f"(SELECT src FROM {MERGES} UNION SELECT dst FROM {MERGES})"
    for table in ("referral_attributions", "referral_fraud_flags"):
        tx.execute(
            f"DELETE FROM {table} WHERE referred_customer_id IN {touched} "
            f"OR referrer_customer_id IN {touched}"
        )
    for table, column in (
        ("referral_codes", "customer_id"),
        ("referral_rewards", "referred_customer_id"),
        ("referral_rewards", "referrer_customer_id"),
        ("referral_rewards", "beneficiary_customer_id"),
    ):
        tx.execute(
            f"UPDATE {table} SET {column} = m.dst FROM {MERGES} m WHERE {table}.{column} = m.src"
        )
    return found.num_rows
