"""Journeys, their enrollments and decisions, the outbox, consent and suppression.

Why these shapes:
- a journey is one versioned JSON document like the definitions; `journeys` holds the
  version new customers enter, its status and the position in the `changes` feed it has
  consumed, so each stage or segment change enrolls a customer at most once;
- an enrollment is one customer's pass through one journey version: the step it waits at
  and when that step is due. Advancing is set-based: every due enrollment at a step moves in
  one statement, together with its log rows and outbox rows, in one transaction;
- `journey_log` records every decision with its inputs (entered, skipped by the entry rule,
  branch taken with the rule's value, held out, email queued, blocked by consent …), which
  is what `keepers journeys trace` reads;
- `outbox` holds every side effect before it happens, unique on its idempotency key
  (enrollment, step, visit), with the Message-ID or webhook-id fixed at insert, so a retry
  after a crash carries the same id and receivers can drop the duplicate;
- `consent` is per customer, list and channel with its source and time (GDPR Art. 7(1));
  `suppressions` hold hashed addresses (hard bounces, complaints, unsubscribes) and survive
  the customer's erasure;
- `secrets` holds the keys Keepers makes for itself (signing unsubscribe links and
  webhooks) when the settings give none, so links stay valid across restarts.
"""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    j = d.json_type
    tables = [
        f"""CREATE TABLE journey_versions (
            journey TEXT NOT NULL,
            version INTEGER NOT NULL,
            body {j} NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            actor TEXT NOT NULL,
            summary TEXT NOT NULL,
            PRIMARY KEY (journey, version))""",
        """CREATE TABLE journeys (
            journey TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            activated_at TIMESTAMPTZ NOT NULL,
            change_cursor BIGINT NOT NULL)""",
        """CREATE TABLE enrollments (
            enrollment_id BIGINT PRIMARY KEY,
            journey TEXT NOT NULL,
            version INTEGER NOT NULL,
            customer_id BIGINT NOT NULL,
            status TEXT NOT NULL,
            step TEXT,
            due_at TIMESTAMPTZ,
            entered_at TIMESTAMPTZ NOT NULL,
            step_entered_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            reason TEXT,
            path TEXT,
            holdout BOOLEAN NOT NULL,
            moves INTEGER NOT NULL,
            goal_at TIMESTAMPTZ,
            trigger_ref TEXT)""",
        """CREATE TABLE journey_log (
            enrollment_id BIGINT,
            customer_id BIGINT NOT NULL,
            journey TEXT NOT NULL,
            version INTEGER NOT NULL,
            step TEXT,
            logged_at TIMESTAMPTZ NOT NULL,
            decision TEXT NOT NULL,
            detail TEXT)""",
        f"""CREATE TABLE outbox (
            outbox_id BIGINT PRIMARY KEY,
            idem_key TEXT NOT NULL UNIQUE,
            enrollment_id BIGINT,
            customer_id BIGINT NOT NULL,
            journey TEXT NOT NULL,
            version INTEGER NOT NULL,
            step TEXT NOT NULL,
            channel TEXT NOT NULL,
            payload {j} NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt_at TIMESTAMPTZ NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            sent_at TIMESTAMPTZ,
            reference TEXT NOT NULL,
            code INTEGER,
            last_error TEXT)""",
        """CREATE TABLE consent (
            customer_id BIGINT NOT NULL,
            list TEXT NOT NULL,
            channel TEXT NOT NULL,
            status TEXT NOT NULL,
            source TEXT NOT NULL,
            changed_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (customer_id, list, channel))""",
        """CREATE TABLE suppressions (
            address_hash TEXT NOT NULL,
            channel TEXT NOT NULL,
            reason TEXT NOT NULL,
            suppressed_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (address_hash, channel))""",
        """CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE tasks (
            task_id BIGINT PRIMARY KEY,
            customer_id BIGINT NOT NULL,
            journey TEXT NOT NULL,
            title TEXT NOT NULL,
            owner TEXT NOT NULL,
            notes TEXT,
            due_at TIMESTAMPTZ NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            status TEXT NOT NULL)""",
    ]
    if d.name != "postgres":
        return tables
    return [
        *tables,
        "CREATE INDEX enrollments_due ON enrollments (journey, version, step, due_at) "
        "WHERE status = 'active'",
        "CREATE INDEX enrollments_customer ON enrollments (customer_id, journey)",
        "CREATE INDEX journey_log_customer ON journey_log (customer_id, journey)",
        "CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state IN ('pending', 'sending')",
        "CREATE INDEX outbox_customer ON outbox (customer_id)",
    ]
