"""Foundation: customers with dense integer ids, identities, the event log, orders, accounts.

Why these shapes:
- `customer_id` is a dense BIGINT from a sequence, assigned when a customer is first seen:
  mapping string ids to integers afterwards costs more than the whole lifecycle compute.
- `identities` maps every userId / anonymousId to the one customer it belongs to; merges
  (identify with both ids, alias) repoint identities and events, and mark the absorbed
  profile with `merged_into` rather than deleting it, so the merge can be explained.
- `events` is append-only and keyed by `message_key`, a 128-bit hash of (source, messageId):
  a resent batch stores nothing new, and the key indexes several times faster than the two
  strings would in DuckDB (measured: 11 ms vs 19 ms per 800 rows at a few 100k events).
- orders and line items are first-class rows from `Order Completed`; refunds are their own
  rows so a refund that arrives before its order is not lost.
- behavioural facts (first/last seen, order counts, …) are not kept on the customer row:
  the engine computes them from the event log, set-based, so ingest writes as little as
  it can per event.
- write keys are stored as SHA-256 hashes only; the key is shown once, on creation.
"""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    j = d.json_type
    return [
        "CREATE SEQUENCE IF NOT EXISTS customer_id_seq START 1",
        f"""CREATE TABLE customers (
            customer_id BIGINT PRIMARY KEY,
            user_id TEXT,
            anonymous_id TEXT,
            email TEXT,
            traits {j},
            merged_into BIGINT,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE identities (
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            customer_id BIGINT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (kind, value))""",
        f"""CREATE TABLE events (
            message_key {d.message_key_type} PRIMARY KEY,
            source_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            customer_id BIGINT NOT NULL,
            type TEXT NOT NULL,
            event TEXT,
            user_id TEXT,
            anonymous_id TEXT,
            group_id TEXT,
            timestamp TIMESTAMPTZ NOT NULL,
            original_timestamp TIMESTAMPTZ,
            sent_at TIMESTAMPTZ,
            received_at TIMESTAMPTZ NOT NULL,
            properties {j},
            traits {j},
            context {j})""",
        """CREATE TABLE orders (
            order_id TEXT PRIMARY KEY,
            customer_id BIGINT NOT NULL,
            ordered_at TIMESTAMPTZ NOT NULL,
            revenue DOUBLE PRECISION,
            total DOUBLE PRECISION,
            discount DOUBLE PRECISION,
            shipping DOUBLE PRECISION,
            tax DOUBLE PRECISION,
            currency TEXT,
            coupon TEXT,
            source_id TEXT NOT NULL,
            message_id TEXT NOT NULL)""",
        """CREATE TABLE order_items (
            order_id TEXT NOT NULL,
            line_no INTEGER NOT NULL,
            product_id TEXT,
            sku TEXT,
            name TEXT,
            category TEXT,
            brand TEXT,
            price DOUBLE PRECISION,
            quantity DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (order_id, line_no))""",
        """CREATE TABLE refunds (
            source_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            order_id TEXT NOT NULL,
            customer_id BIGINT NOT NULL,
            refunded_at TIMESTAMPTZ NOT NULL,
            amount DOUBLE PRECISION,
            PRIMARY KEY (source_id, message_id))""",
        f"""CREATE TABLE accounts (
            account_id TEXT PRIMARY KEY,
            name TEXT,
            traits {j},
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE account_members (
            account_id TEXT NOT NULL,
            customer_id BIGINT NOT NULL,
            joined_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (account_id, customer_id))""",
        """CREATE TABLE rejected_events (
            source_id TEXT NOT NULL,
            received_at TIMESTAMPTZ NOT NULL,
            code TEXT NOT NULL,
            reason TEXT NOT NULL,
            payload TEXT)""",
        """CREATE TABLE write_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            revoked_at TIMESTAMPTZ)""",
    ]
