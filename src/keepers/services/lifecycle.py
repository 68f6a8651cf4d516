"""Lifecycle use cases: definitions, compute runs, stage counts — each one transaction.

The web API, the CLI and the scheduler call these; they never build SQL themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keepers.domain.definitions import Definitions, default_definitions, parse_definitions
from keepers.engine.compute import ComputeReport, process_lock, run_compute, state_exists
from keepers.engine.plan import Plan
from keepers.store.database import Database, Tx
from keepers.store.definitions import read_definitions, save_definitions

DEFAULT_ACTOR = "keepers"


@dataclass(frozen=True)
class CurrentDefinitions:
    version: int
    definitions: Definitions


def load_definitions(tx: Tx) -> CurrentDefinitions:
    """The stored definitions; the defaults (version 0) until someone saves a change."""
    stored = read_definitions(tx)
    if stored is None:
        return CurrentDefinitions(0, default_definitions())
    return CurrentDefinitions(stored.version, parse_definitions(stored.body))


def store_definitions(
    tx: Tx, definitions: Definitions, *, actor: str, summary: str, now: datetime
) -> int:
    """Check every rule (a typo fails here, not in a later compute), then save a version."""
    Plan.build(definitions)
    body = definitions.model_dump(mode="json", exclude_none=True)
    return save_definitions(tx, body, actor=actor, summary=summary, now=now)


@contextlib.contextmanager
def compute_transaction(db: Database) -> Iterator[Tx]:
    """A transaction that no other compute in this process runs beside (DuckDB has one
    owner process; PostgreSQL runs are serialised by an advisory lock inside)."""
    lock = process_lock(db.url) if db.dialect.name == "duckdb" else contextlib.nullcontext()
    with lock, db.transaction() as tx:
        yield tx


def compute(
    db: Database, *, as_of: datetime, full: bool = False, emit_changes: bool = True
) -> ComputeReport:
    """One compute run at `as_of`, with stage counts and segment sizes in the report."""
    with compute_transaction(db) as tx:
        current = load_definitions(tx)
        plan = Plan.build(current.definitions)
        report = run_compute(
            tx,
            plan,
            as_of=as_of,
            definitions_version=current.version,
            full=full,
            emit_changes=emit_changes,
        )
        report.stages = stage_counts(tx, current.definitions)
        report.segments = segment_sizes(tx, current.definitions)
    return report


def stage_counts(tx: Tx, definitions: Definitions) -> dict[str, int]:
    """Customers per stage, in funnel order (every stage listed, empty ones as 0)."""
    counts = {key: 0 for key in definitions.stage_model.funnel_order()}
    if state_exists(tx):
        for stage, n in tx.execute("SELECT stage, count(*) FROM customer_state GROUP BY stage"):
            counts[stage or "unstaged"] = n
    return counts


def segment_sizes(tx: Tx, definitions: Definitions) -> dict[str, int]:
    sizes = {s.key: 0 for s in definitions.segments}
    rows = tx.execute(
        "SELECT segment, count(*) FROM segment_memberships WHERE exited_at IS NULL GROUP BY segment"
    )
    for segment, n in rows:
        if segment in sizes:
            sizes[segment] = n
    return sizes


def last_run(tx: Tx) -> dict[str, Any] | None:
    rows = tx.execute(
        "SELECT run_id, mode, as_of, seconds, customers, stage_moves FROM compute_runs "
        "ORDER BY run_id DESC LIMIT 1"
    )
    if not rows:
        return None
    keys = ("run_id", "mode", "as_of", "seconds", "customers", "stage_moves")
    return dict(zip(keys, rows[0], strict=True))
