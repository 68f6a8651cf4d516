"""Lifecycle: definition versions, what changed since the last compute, and what compute writes.

Why these shapes:
- definitions are one versioned JSON document (stage model, segments, traits): a change is a
  new version with who, when and a one-line summary, so "what did the rules say on 1 May"
  has an answer and the engine can tell when its aggregates must be rebuilt.
- `dirty_customers` is filled by the ingest writer in the same transaction as the events
  (and by identity merges), numbered from a sequence taken under the writers' lock: the
  engine reads the rows up to a number, recomputes exactly those customers and deletes them,
  so an event committed while a compute runs is simply picked up by the next one.
- the per-customer state (traits, stage, segments) lives in `customer_state`, which the
  engine creates itself because its columns follow the trait definitions.
- `stage_history` is one row per move (either direction) with the rule that fired;
  `segment_memberships` one row per stay (entered, exited); `changes` the numbered feed of
  stage and segment entries and exits that automations consume by position, exactly once.
"""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    j = d.json_type
    tables = [
        "CREATE SEQUENCE IF NOT EXISTS dirty_seq START 1",
        f"""CREATE TABLE definition_versions (
            version INTEGER PRIMARY KEY,
            body {j} NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            actor TEXT NOT NULL,
            summary TEXT NOT NULL)""",
        """CREATE TABLE dirty_customers (
            customer_id BIGINT NOT NULL,
            seq BIGINT NOT NULL)""",
        """CREATE TABLE compute_runs (
            run_id BIGINT PRIMARY KEY,
            mode TEXT NOT NULL,
            as_of TIMESTAMPTZ NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            seconds DOUBLE PRECISION NOT NULL,
            customers BIGINT NOT NULL,
            recomputed BIGINT NOT NULL,
            stage_moves BIGINT NOT NULL,
            segment_changes BIGINT NOT NULL,
            signature TEXT NOT NULL,
            definitions_version INTEGER NOT NULL,
            dirty_seq BIGINT NOT NULL)""",
        """CREATE TABLE stage_history (
            customer_id BIGINT NOT NULL,
            from_stage TEXT,
            to_stage TEXT,
            moved_at TIMESTAMPTZ NOT NULL,
            cause TEXT,
            run_id BIGINT NOT NULL)""",
        """CREATE TABLE segment_memberships (
            segment TEXT NOT NULL,
            customer_id BIGINT NOT NULL,
            entered_at TIMESTAMPTZ NOT NULL,
            exited_at TIMESTAMPTZ,
            entered_run BIGINT NOT NULL,
            exited_run BIGINT)""",
        """CREATE TABLE changes (
            change_id BIGINT NOT NULL,
            run_id BIGINT NOT NULL,
            changed_at TIMESTAMPTZ NOT NULL,
            customer_id BIGINT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            detail TEXT)""",
    ]
    if d.name != "postgres":
        return tables  # DuckDB scans these fast; ART indexes would slow every insert
    return [
        *tables,
        "CREATE INDEX dirty_customers_seq ON dirty_customers (seq)",
        "CREATE INDEX stage_history_customer ON stage_history (customer_id, moved_at)",
        "CREATE INDEX segment_memberships_customer ON segment_memberships (customer_id)",
        "CREATE INDEX segment_memberships_open ON segment_memberships (segment, customer_id) "
        "WHERE exited_at IS NULL",
        "CREATE UNIQUE INDEX changes_id ON changes (change_id)",
        "CREATE INDEX events_timestamp ON events (timestamp)",
        "CREATE INDEX events_customer ON events (customer_id)",
        "CREATE INDEX orders_customer ON orders (customer_id)",
    ]
