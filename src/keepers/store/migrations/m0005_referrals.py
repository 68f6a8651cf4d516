"""Referral programme: codes, attributions, the reward ledger, fraud flags, programme rules.

Why these shapes:
- a code belongs to one customer and is unique across the store (stored upper-case, so
  "anna12" and "ANNA12" are the same code); a customer may hold several (one picked up
  from the `referral_code` identify trait, one generated), and a code can be disabled
  without deleting it, because rewards already refer to it;
- an attribution says who brought a customer in: one row per referred customer (the
  earliest code they used, before or with their first order), with how it was seen
  (`property`, `context` or `link`) and the event that carried it, so every attribution
  can be explained; `announced_at` says when Keepers sent the referrer's `Referral
  Converted` event itself (for shops that do not), so it is sent once;
- the reward ledger is one row per (rule, qualifying order): its id is derived from both,
  so a sync that runs twice writes the same rows. Status moves pending → earned → paid,
  or to void with a reason (refunded, fraud, cap, manual); the times of each move are
  kept. Rewards are never deleted: a void row is the record of why nothing was paid;
- a fraud flag names the check (own code, same email, device, IP, payment fingerprint,
  cap) and the shared value, one per (referred, referrer, check), for review;
- the programme rules (reward amount, window, caps, which checks run) are one versioned
  JSON document like the lifecycle definitions, and each reward records the rule version
  it was opened under.
"""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    j = d.json_type
    tables = [
        """CREATE TABLE referral_codes (
            code TEXT PRIMARY KEY,
            customer_id BIGINT NOT NULL,
            source TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            disabled_at TIMESTAMPTZ)""",
        """CREATE TABLE referral_attributions (
            referred_customer_id BIGINT NOT NULL,
            referrer_customer_id BIGINT NOT NULL,
            code TEXT NOT NULL,
            how TEXT NOT NULL,
            event_id TEXT,
            first_seen_at TIMESTAMPTZ NOT NULL,
            attributed_at TIMESTAMPTZ NOT NULL,
            announced_at TIMESTAMPTZ)""",
        """CREATE TABLE referral_rewards (
            reward_id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            rule_version INTEGER NOT NULL,
            beneficiary_customer_id BIGINT NOT NULL,
            referrer_customer_id BIGINT NOT NULL,
            referred_customer_id BIGINT NOT NULL,
            code TEXT NOT NULL,
            order_id TEXT NOT NULL,
            order_value DOUBLE PRECISION,
            amount DOUBLE PRECISION,
            currency TEXT,
            points BIGINT,
            status TEXT NOT NULL,
            reason TEXT,
            pending_at TIMESTAMPTZ NOT NULL,
            eligible_at TIMESTAMPTZ NOT NULL,
            earned_at TIMESTAMPTZ,
            paid_at TIMESTAMPTZ,
            voided_at TIMESTAMPTZ,
            payout_reference TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE referral_fraud_flags (
            referred_customer_id BIGINT NOT NULL,
            referrer_customer_id BIGINT NOT NULL,
            code TEXT,
            check_name TEXT NOT NULL,
            detail TEXT,
            flagged_at TIMESTAMPTZ NOT NULL)""",
        f"""CREATE TABLE referral_programme_versions (
            version INTEGER PRIMARY KEY,
            body {j} NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            actor TEXT NOT NULL,
            summary TEXT NOT NULL)""",
    ]
    if d.name != "postgres":
        return tables
    return [
        *tables,
        "CREATE UNIQUE INDEX referral_attributions_referred "
        "ON referral_attributions (referred_customer_id)",
        "CREATE INDEX referral_attributions_referrer ON referral_attributions "
        "(referrer_customer_id)",
        "CREATE INDEX referral_codes_customer ON referral_codes (customer_id)",
        "CREATE INDEX referral_rewards_referrer ON referral_rewards (referrer_customer_id, status)",
        "CREATE INDEX referral_fraud_flags_referred ON referral_fraud_flags (referred_customer_id)",
    ]
