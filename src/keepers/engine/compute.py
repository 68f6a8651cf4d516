"""Run a plan against the store: refresh traits, evaluate rules, write what changed — one
transaction, set-based, in the database that holds the data.

A run is incremental when it can be: it recomputes the aggregates of only the customers
that may have changed since the last run —
- customers the ingest writer queued in `dirty_customers` (new events, identity merges),
- customers with events, orders or refunds timestamped between the two runs' as-of times
  (late and future-dated events, and every step of a backfill),
- customers with an event that has just left a rule's window (`count(…, days=30)`).
Most of them had every earlier event counted by the last run: their stored traits are
brought forward from the events dated since (`Plan.merged_traits`: counts add up, the
latest value wins, windows are recounted over their last days). Only customers with an
event dated before the last run that arrived after it, or an identity merge, have their
whole history rescanned. Stage and segment rules are then evaluated for those customers
and for the customers whose `days_since_…` counts crossed a number a rule compares them
with (`Plan.tick_points`), which moves customers without any new event. A full run
recomputes every aggregate; it happens on demand, on the first run, when the definitions
change what is aggregated, or when as-of moves backwards. It then rewrites only the stored
rows whose traits changed on DuckDB (usually few: a nightly full run, or one after a stage
rule changed), and rebuilds the table when the columns changed or most rows did.

What a run writes, each in the same transaction: `customer_state` (traits, stage, segment
list), one `stage_history` row per move, `segment_memberships` stays, and numbered
`changes` for automations. Runs are serialised (a PostgreSQL advisory lock, or a process
lock for the one-owner DuckDB file), so concurrent runs cannot interleave.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import ibis
import pyarrow as pa

from keepers.engine.fitted import attach_models
from keepers.engine.plan import SEGMENT_ALL, TS, Plan, listed
from keepers.engine.sql import compiled_sql
from keepers.store.database import Tx

COMPUTE_LOCK = 720_402  # PostgreSQL advisory lock serialising compute runs
STATE = "customer_state"
STAGE_COLUMNS = {
    "stage": "string",
    "stage_since": TS,
    "stage_cause": "string",
    "previous_stage": "string",
    "segments": "string",
}
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass
class ComputeReport:
    """What one run did."""

    run_id: int
    mode: str
    as_of: datetime
    customers: int
    recomputed: int
    stage_moves: int
    segment_changes: int
    seconds: float
    engine: str = ""
    stages: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["as_of"] = self.as_of.isoformat()
        return data


def utc(moment: datetime) -> datetime:
    """A moment in UTC: every engine writes zone names differently, offsets least well."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def process_lock(url: str) -> threading.Lock:
    """One lock per DuckDB file in this process (the only process that may write it)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(url, threading.Lock())


def render(
    tx: Tx,
    plan: Plan,
    name: str,
    build: Callable[..., Any],
    as_of: datetime,
    previous: datetime | None = None,
) -> str:
    """The SQL of `build(as_of)` (or `build(as_of, previous)`) for this dialect, compiled
    once per plan and process."""
    moments = [as_of] if previous is None else [as_of, previous]
    return compiled_sql(tx, (plan.fingerprint(), name), build, moments)


def state_table(plan: Plan) -> Any:
    return ibis.table({**plan.state_schema(), **STAGE_COLUMNS}, name=STATE)


def run_compute(
    tx: Tx,
    plan: Plan,
    *,
    as_of: datetime,
    definitions_version: int,
    full: bool = False,
    emit_changes: bool = True,
    evaluated: pa.Table | None = None,
) -> ComputeReport:
    """One run at `as_of`. `evaluated` carries traits, stage and segments of every customer
    computed elsewhere (Spark); the store then only applies the difference."""
    started = time.perf_counter()
    as_of = utc(as_of)
    attach_models(tx, plan, as_of)
    if tx.dialect.name == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", [COMPUTE_LOCK])
    last = last_run(tx)
    exists = state_exists(tx)
    signature = plan.signature()
    full = (
        full
        or evaluated is not None
        or last is None
        or not exists
        or last["signature"] != signature
        or as_of < last["as_of"]
    )
    max_seq = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM dirty_customers")[0][0]
    same_rules = last is not None and last["definitions_version"] == definitions_version
    # fields fitted over everyone (p_alive, rfm_*, clv_12m …) can change for anyone with
    # the day's models or the clock, so their rules are evaluated for everyone
    since = last["as_of"] if not full and same_rules and not plan.model_fields else None
    if since is not None:
        _ticked(tx, plan, as_of, since)
    recomputed = 0  # a full run recomputes everyone: counted with the stages below
    if full:
        _refresh_all(tx, plan, as_of, exists, evaluated)
    else:
        recomputed = _refresh_affected(tx, plan, as_of, last["as_of"], max_seq)
    _diff(tx, plan, as_of, outside=evaluated is not None, since=since)
    run_id = (last["run_id"] if last else 0) + 1
    stored_sizes = _stored(last, "segment_sizes")
    open_segments = None if stored_sizes is None else {k for k, n in stored_sizes.items() if n}
    moves, segment_changes = _apply(tx, plan, as_of, run_id, emit_changes, open_segments)
    stored_stages = None if full else _stored(last, "stage_counts")
    stages = _stage_counts(tx, None if stored_stages is None else dict(stored_stages))
    sizes = _segment_sizes(tx, stored_sizes)
    if full:
        recomputed = sum(stages.values())  # everyone
    tx.execute("DELETE FROM dirty_customers WHERE seq <= ?", [max_seq])
    report = ComputeReport(
        run_id=run_id,
        mode="full" if full else "incremental",
        as_of=as_of,
        customers=sum(stages.values()),
        recomputed=recomputed,
        stage_moves=moves,
        segment_changes=segment_changes,
        seconds=0.0,
        stages={"unstaged" if k is None else k: n for k, n in stages.items()},
        segments=sizes,
    )
    report.seconds = round(time.perf_counter() - started, 4)
    tx.execute(
        "INSERT INTO compute_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            report.mode,
            as_of,
            datetime.now(as_of.tzinfo),
            report.seconds,
            report.customers,
            recomputed,
            moves,
            segment_changes,
            signature,
            definitions_version,
            max_seq,
            json.dumps(sorted(stages.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))),
            json.dumps(dict(sorted(sizes.items()))),
        ],
    )
    _drop_temps(tx)
    return report


def _stored(last: dict[str, Any] | None, column: str) -> Any:
    """The counts the previous run stored, as JSON (None before the first run, or for runs
    older than the column)."""
    if last is None or last.get(column) is None:
        return None
    return json.loads(last[column])


def _stage_counts(tx: Tx, before: dict[str | None, int] | None) -> dict[str | None, int]:
    """Customers per stage after this run (None: no stage). An incremental run adds its
    moves to the previous run's counts: customers who moved, those who appeared (their
    stage as written) and those who went (`_kp_removed`). A full run, or one after a run
    that stored none, counts the table."""
    if before is None:
        return {
            stage: n
            for stage, n in tx.execute(f"SELECT stage, count(*) FROM {STATE} GROUP BY stage")
        }
    changes = tx.execute(
        "WITH appeared AS (SELECT customer_id FROM _kp_fresh "
        "EXCEPT SELECT customer_id FROM _kp_kept), "
        "moved AS (SELECT stage, new_stage FROM _kp_diff WHERE stage IS DISTINCT FROM new_stage "
        "AND customer_id NOT IN (SELECT customer_id FROM appeared) "
        "AND customer_id NOT IN (SELECT customer_id FROM _kp_removed)) "
        "SELECT stage, sum(n) FROM (SELECT stage, -1 AS n FROM moved "
        "UNION ALL SELECT new_stage, 1 FROM moved "
        f"UNION ALL SELECT stage, 1 FROM {STATE} "
        "WHERE customer_id IN (SELECT customer_id FROM appeared) "
        "UNION ALL SELECT stage, -1 FROM _kp_removed) AS c GROUP BY stage"
    )
    after = dict(before)
    for stage, n in changes:
        after[stage] = after.get(stage, 0) + int(n)
    return {stage: n for stage, n in after.items() if n}


def _segment_sizes(tx: Tx, before: dict[str, int] | None) -> dict[str, int]:
    """Open memberships per segment after this run: the previous run's sizes plus this
    run's entries and exits, or a count of the table when there are none."""
    if before is None:
        rows = tx.execute(
            "SELECT segment, count(*) FROM segment_memberships WHERE exited_at IS NULL "
            "GROUP BY segment"
        )
        return {segment: n for segment, n in rows}
    after = dict(before)
    rows = tx.execute(
        "SELECT segment, sum(CASE WHEN entered THEN 1 ELSE -1 END) FROM _kp_seg GROUP BY segment"
    )
    for segment, n in rows:
        after[segment] = after.get(segment, 0) + int(n)
    return {segment: n for segment, n in after.items() if n}


RUN_COLUMNS = (
    "run_id",
    "mode",
    "as_of",
    "seconds",
    "customers",
    "stage_moves",
    "signature",
    "definitions_version",
    "stage_counts",
    "segment_sizes",
)


def last_run(tx: Tx) -> dict[str, Any] | None:
    """The most recent compute run, or None before the first."""
    rows = tx.execute(
        f"SELECT {', '.join(RUN_COLUMNS)} FROM compute_runs ORDER BY run_id DESC LIMIT 1"
    )
    return dict(zip(RUN_COLUMNS, rows[0], strict=True)) if rows else None


def state_exists(tx: Tx) -> bool:
    if tx.dialect.name == "postgres":
        query = (
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?"
        )
    else:
        query = "SELECT count(*) FROM duckdb_tables() WHERE NOT temporary AND table_name = ?"
    return tx.execute(query, [STATE])[0][0] > 0


def _jsonb(tx: Tx) -> bool:
    return tx.dialect.name == "postgres"


def affected_traits(tx: Tx, plan: Plan, as_of: Any, only: str = "_kp_affected") -> Any:
    """The traits of the customers listed in `_kp_affected` (or another list), from their
    whole history."""
    return plan.traits(as_of, only=only, jsonb=_jsonb(tx))


def temp_table(tx: Tx, name: str, select: str, params: list[Any] | None = None) -> None:
    tx.execute(f"DROP TABLE IF EXISTS {name}")
    tx.execute(f"CREATE TEMP TABLE {name} AS {select}", params or [])
    if tx.dialect.name == "postgres":
        # autovacuum never analyzes temporary tables: without statistics the planner joins
        # a few thousand rows against the big tables by scanning them
        tx.execute(f"ANALYZE {name}")


def _drop_temps(tx: Tx) -> None:
    for name in (
        "_kp_affected",
        "_kp_merged",
        "_kp_rescan",
        "_kp_ticked",
        "_kp_fresh",
        "_kp_kept",
        "_kp_removed",
        "_kp_changed",
        "_kp_diff",
        "_kp_seg",
    ):
        tx.execute(f"DROP TABLE IF EXISTS {name}")


def _kept_columns() -> str:
    return ", ".join(f"o.{c}" for c in STAGE_COLUMNS)


def _refresh_all(
    tx: Tx, plan: Plan, as_of: datetime, exists: bool, evaluated: pa.Table | None
) -> None:
    """Every customer's traits. On DuckDB, when the stored table has the same columns, the
    new traits go to a temporary table and only the rows that differ are rewritten (a full
    run after a stage-rule change, or a nightly one, changes few customers' traits: writing
    a million rows costs a fifth of the run). Otherwise, or when more than `REWRITE_SHARE`
    of the rows changed, the state table is rebuilt, keeping stages and segments (one
    statement: the traits feed the new table directly). PostgreSQL always rebuilds: there
    the comparison alone took 4 s at 1M customers, and rebuilding measured faster (full
    runs of 21.9–24.1 s against 24.8–30.5 s in place)."""
    if evaluated is not None:
        tx.stage("_kp_staged", evaluated)
        source = f"(SELECT {', '.join(plan.state_schema())} FROM _kp_staged)"
    else:
        traits = render(tx, plan, "traits", lambda t: plan.traits(t, jsonb=_jsonb(tx)), as_of)
        source = f"({traits})"
    if not exists:
        columns = ", ".join(
            f"CAST(NULL AS {'TIMESTAMPTZ' if kind == TS else 'TEXT'}) AS {name}"
            for name, kind in STAGE_COLUMNS.items()
        )
        tx.execute(f"CREATE TABLE {STATE} AS SELECT f.*, {columns} FROM {source} AS f")
        temp_table(
            tx, "_kp_removed", f"SELECT customer_id, stage, segments FROM {STATE} WHERE false"
        )
        _index_state(tx)
    elif tx.dialect.name == "duckdb" and _stored_columns(tx) == [
        *plan.state_schema(),
        *STAGE_COLUMNS,
    ]:
        temp_table(tx, "_kp_fresh", f"SELECT * FROM {source} AS f")
        if not _rewrite_changed(tx, plan):
            _rebuild_state(tx, "(SELECT * FROM _kp_fresh)")
    else:
        _rebuild_state(tx, source)


REWRITE_SHARE = 0.25  # above this share of changed rows, rebuilding the table is cheaper


def _stored_columns(tx: Tx) -> list[str]:
    return tx.fetch_arrow(f"SELECT * FROM {STATE} LIMIT 0").schema.names


def _rewrite_changed(tx: Tx, plan: Plan) -> bool:
    """Rewrite the rows of `customer_state` whose traits differ from `_kp_fresh`, drop the
    customers no longer there; False (nothing written) when too many rows differ."""
    # a row of new traits not stored as it is (EXCEPT compares NULLs as equal)
    columns = ", ".join(plan.state_schema())
    temp_table(
        tx,
        "_kp_changed",
        f"SELECT customer_id FROM (SELECT {columns} FROM _kp_fresh "
        f"EXCEPT SELECT {columns} FROM {STATE}) AS c",
    )
    temp_table(
        tx,
        "_kp_removed",
        f"SELECT customer_id, stage, segments FROM {STATE} o WHERE NOT EXISTS "
        "(SELECT 1 FROM _kp_fresh f WHERE f.customer_id = o.customer_id)",
    )
    changed, removed, total = tx.execute(
        "SELECT (SELECT count(*) FROM _kp_changed), (SELECT count(*) FROM _kp_removed), "
        "(SELECT count(*) FROM _kp_fresh)"
    )[0]
    if changed + removed > REWRITE_SHARE * max(total, 1):
        return False
    listed_rows = (
        "customer_id IN (SELECT customer_id FROM _kp_changed "
        "UNION ALL SELECT customer_id FROM _kp_removed)"
    )
    temp_table(
        tx,
        "_kp_kept",
        f"SELECT customer_id, {', '.join(STAGE_COLUMNS)} FROM {STATE} "
        "WHERE customer_id IN (SELECT customer_id FROM _kp_changed)",
    )
    tx.execute(f"DELETE FROM {STATE} WHERE {listed_rows}")
    tx.execute(
        f"INSERT INTO {STATE} SELECT f.*, {_kept_columns()} FROM _kp_fresh f "
        "JOIN _kp_changed c ON c.customer_id = f.customer_id "
        "LEFT JOIN _kp_kept o ON o.customer_id = f.customer_id"
    )
    return True


def _rebuild_state(tx: Tx, source: str) -> None:
    """A new state table from `source` (every customer's traits) and the stored stages."""
    tx.execute(f"DROP TABLE IF EXISTS {STATE}_next")
    tx.execute(
        f"CREATE TABLE {STATE}_next AS SELECT f.*, {_kept_columns()} "
        f"FROM {source} AS f LEFT JOIN {STATE} o ON o.customer_id = f.customer_id"
    )
    temp_table(
        tx,
        "_kp_removed",
        f"SELECT customer_id, stage, segments FROM {STATE} o WHERE NOT EXISTS "
        f"(SELECT 1 FROM {STATE}_next f WHERE f.customer_id = o.customer_id)",
    )
    tx.execute(f"DROP TABLE {STATE}")
    tx.execute(f"ALTER TABLE {STATE}_next RENAME TO {STATE}")
    _index_state(tx)


def _index_state(tx: Tx) -> None:
    if tx.dialect.name == "postgres":
        tx.execute(f"CREATE UNIQUE INDEX {STATE}_customer ON {STATE} (customer_id)")


def _refresh_affected(tx: Tx, plan: Plan, as_of: datetime, previous: datetime, max_seq: int) -> int:
    """Recompute the traits of the customers that may have changed; keep everyone else's."""
    window = "timestamp > ? AND timestamp <= ?"
    parts = [
        "SELECT customer_id FROM dirty_customers WHERE seq <= ?",
        f"SELECT customer_id FROM events WHERE {window}",
        "SELECT customer_id FROM orders WHERE ordered_at > ? AND ordered_at <= ?",
        "SELECT customer_id FROM refunds WHERE refunded_at > ? AND refunded_at <= ?",
        # a profile exists from its creation even before its first event counts
        "SELECT customer_id FROM customers WHERE created_at > ? AND created_at <= ?",
    ]
    params: list[Any] = [max_seq, *[previous, as_of] * 4]
    for days in sorted(plan.windows()):
        parts.append(f"SELECT customer_id FROM events WHERE {window}")
        params += [previous - timedelta(days=days), as_of - timedelta(days=days)]
    tx.execute("DROP TABLE IF EXISTS _kp_affected")
    tx.execute(
        f"CREATE TEMP TABLE _kp_affected AS SELECT DISTINCT customer_id FROM "
        f"({' UNION ALL '.join(parts)}) AS a",
        params,
    )
    affected = "customer_id IN (SELECT customer_id FROM _kp_affected)"
    temp_table(
        tx,
        "_kp_kept",
        f"SELECT customer_id, {', '.join(STAGE_COLUMNS)} FROM {STATE} WHERE {affected}",
    )
    _fresh_traits(tx, plan, as_of, previous, max_seq)
    temp_table(
        tx,
        "_kp_removed",
        "SELECT customer_id, stage, segments FROM _kp_kept k WHERE NOT EXISTS "
        "(SELECT 1 FROM _kp_fresh f WHERE f.customer_id = k.customer_id)",
    )
    tx.execute(f"DELETE FROM {STATE} WHERE {affected}")
    tx.execute(
        f"INSERT INTO {STATE} SELECT f.*, {_kept_columns()} FROM _kp_fresh f "
        "LEFT JOIN _kp_kept o ON o.customer_id = f.customer_id"
    )
    return tx.execute("SELECT count(*) FROM _kp_fresh")[0][0]


def _fresh_traits(tx: Tx, plan: Plan, as_of: datetime, previous: datetime, max_seq: int) -> None:
    """`_kp_fresh`: the new traits of the customers in `_kp_affected`. Those whose stored
    traits counted every event dated up to the previous run (no queued event dated before
    it, no merge) are brought forward from the events dated since (`_kp_merged`); the
    rest have their history rescanned (`_kp_rescan`)."""
    # `_kp_kept`: the stored rows of the affected; a customer merged into another is
    # queued without an earliest timestamp, so is rescanned (and then gone)
    merge = "true" if plan.mergeable else "false"
    temp_table(
        tx,
        "_kp_merged",
        f"SELECT customer_id FROM _kp_kept k WHERE {merge} AND NOT EXISTS (SELECT 1 "
        "FROM dirty_customers d WHERE d.customer_id = k.customer_id AND d.seq <= ? "
        "AND (d.earliest IS NULL OR d.earliest <= ?))",
        [max_seq, previous],
    )
    temp_table(
        tx,
        "_kp_rescan",
        "SELECT customer_id FROM _kp_affected EXCEPT SELECT customer_id FROM _kp_merged",
    )
    rescan, merged = tx.execute(
        "SELECT (SELECT count(*) FROM _kp_rescan), (SELECT count(*) FROM _kp_merged)"
    )[0]
    parts = []
    if rescan or not merged:
        parts.append(
            render(tx, plan, "rescan", lambda t: affected_traits(tx, plan, t, "_kp_rescan"), as_of)
        )
    if merged:

        def forward(at: Any, since: Any) -> Any:
            return plan.merged_traits(at, since, jsonb=_jsonb(tx))

        parts.append(render(tx, plan, "merged", forward, as_of, previous))
    temp_table(tx, "_kp_fresh", " UNION ALL ".join(f"({sql})" for sql in parts))


def _ticked(tx: Tx, plan: Plan, as_of: datetime, since: datetime) -> None:
    """`_kp_ticked`: customers whose day counts crossed a number a rule compares them with
    since the previous run (narrow range tests over the stored epoch columns, read before
    this run rewrites any row)."""

    def ticked(at: Any, previous: Any) -> Any:
        state = state_table(plan)
        return state.filter(plan.days_ticked(state, at, previous)).select("customer_id")

    temp_table(tx, "_kp_ticked", render(tx, plan, "ticked", ticked, as_of, since))


def _diff(
    tx: Tx, plan: Plan, as_of: datetime, *, outside: bool = False, since: datetime | None = None
) -> None:
    """Customers whose stage or segment list changes in this run (or who are gone).
    `outside`: the new stage and segments were evaluated elsewhere and staged.
    `since`: the previous run's as-of, when the rules have not changed since — then only
    the recomputed customers and those whose day counts crossed a number a rule compares
    them with can change, and only they are evaluated (exact, and a small fraction of
    everyone)."""
    removed = (
        f"SELECT customer_id, stage, CAST(NULL AS TEXT), segments, '{SEGMENT_ALL}' FROM _kp_removed"
    )
    if outside:
        temp_table(
            tx,
            "_kp_diff",
            f"SELECT o.customer_id, o.stage, s.new_stage, o.segments, s.new_segments "
            f"FROM {STATE} o JOIN _kp_staged s ON s.customer_id = o.customer_id "
            "WHERE o.stage IS DISTINCT FROM s.new_stage "
            f"OR o.segments IS DISTINCT FROM s.new_segments UNION ALL {removed}",
        )
        return

    def changed(at: Any) -> Any:
        state = state_table(plan)
        if since is not None:
            # who can change: the recomputed and the ticked, so the rules run on a few rows
            candidates = listed("_kp_ticked").union(listed("_kp_affected"))
            state = state.filter(state.customer_id.isin(candidates.customer_id))
        evaluated = plan.evaluate(state, at)
        return evaluated.filter(
            ~evaluated.stage.identical_to(evaluated.new_stage)
            | ~evaluated.segments.identical_to(evaluated.new_segments)
        ).select("customer_id", "stage", "new_stage", "segments", "new_segments")

    select = render(tx, plan, "diff" if since is None else "diff_candidates", changed, as_of)
    temp_table(tx, "_kp_diff", f"{select} UNION ALL {removed}")


def _apply(
    tx: Tx,
    plan: Plan,
    as_of: datetime,
    run_id: int,
    emit_changes: bool,
    open_segments: set[str] | None,
) -> tuple[int, int]:
    """History, memberships, change records and the new stage of everyone in the diff.
    `open_segments`: the segments with open memberships, when the last run counted them."""
    moved = "stage IS DISTINCT FROM new_stage"
    cause = _cause_sql(plan)
    tx.execute(
        f"INSERT INTO stage_history SELECT customer_id, stage, new_stage, ?, {cause}, ? "
        f"FROM _kp_diff WHERE {moved}",
        [as_of, run_id],
    )
    moves = tx.execute(f"SELECT count(*) FROM _kp_diff WHERE {moved}")[0][0]
    segment_changes = _apply_segments(tx, plan, as_of, run_id, open_segments)
    if emit_changes:
        _write_changes(tx, as_of, run_id)
    tx.execute(
        f"UPDATE {STATE} SET "
        f"stage_since = CASE WHEN {STATE}.stage IS DISTINCT FROM d.new_stage THEN ? "
        f"ELSE {STATE}.stage_since END, "
        f"previous_stage = CASE WHEN {STATE}.stage IS DISTINCT FROM d.new_stage THEN d.stage "
        f"ELSE {STATE}.previous_stage END, "
        f"stage_cause = {cause.replace('new_stage', 'd.new_stage')}, "
        "stage = d.new_stage, segments = d.new_segments "
        f"FROM _kp_diff d WHERE {STATE}.customer_id = d.customer_id",
        [as_of],
    )
    return moves, segment_changes


def _cause_sql(plan: Plan) -> str:
    """The rule that put a customer in their new stage, as SQL over `new_stage`."""
    whens = " ".join(
        f"WHEN {_quote(key)} THEN {_quote(rule)}" for key, rule in plan.stage_causes().items()
    )
    return f"CASE new_stage {whens} ELSE NULL END" if whens else "CAST(NULL AS TEXT)"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _apply_segments(
    tx: Tx, plan: Plan, as_of: datetime, run_id: int, open_keys: set[str] | None
) -> int:
    if open_keys is None:
        open_keys = {
            row[0]
            for row in tx.execute(
                "SELECT DISTINCT segment FROM segment_memberships WHERE exited_at IS NULL"
            )
        }
    keys = sorted(open_keys | set(plan.segment_rules))
    if not keys:
        temp_table(
            tx,
            "_kp_seg",
            "SELECT CAST(NULL AS TEXT) AS segment, CAST(NULL AS BIGINT) AS customer_id, "
            "false AS entered WHERE false",
        )
        return 0
    selects = []
    for key in keys:
        tag = _quote(f",{key},")
        now_in = f"strpos(new_segments, {tag}) > 0"
        was_in = f"strpos(COALESCE(segments, '{SEGMENT_ALL}'), {tag}) > 0"
        selects.append(
            f"SELECT {_quote(key)} AS segment, customer_id, {now_in} AS entered "
            f"FROM _kp_diff WHERE ({now_in}) <> ({was_in})"
        )
    temp_table(tx, "_kp_seg", " UNION ALL ".join(selects))
    tx.execute(
        "UPDATE segment_memberships SET exited_at = ?, exited_run = ? "
        "FROM _kp_seg s WHERE segment_memberships.exited_at IS NULL AND NOT s.entered "
        "AND segment_memberships.segment = s.segment "
        "AND segment_memberships.customer_id = s.customer_id",
        [as_of, run_id],
    )
    tx.execute(
        "INSERT INTO segment_memberships SELECT segment, customer_id, ?, CAST(NULL AS "
        "TIMESTAMPTZ), ?, CAST(NULL AS BIGINT) FROM _kp_seg WHERE entered",
        [as_of, run_id],
    )
    return tx.execute("SELECT count(*) FROM _kp_seg")[0][0]


def _write_changes(tx: Tx, as_of: datetime, run_id: int) -> None:
    """Numbered change records; automations read them in order and remember a position."""
    base = tx.execute("SELECT COALESCE(MAX(change_id), 0) FROM changes")[0][0]
    tx.execute(
        "INSERT INTO changes SELECT ? + row_number() OVER (ORDER BY customer_id, ord), "
        "?, ?, customer_id, kind, name, detail FROM ("
        "SELECT customer_id, 0 AS ord, 'stage_exited' AS kind, stage AS name, "
        "new_stage AS detail FROM _kp_diff WHERE stage IS NOT NULL "
        "AND stage IS DISTINCT FROM new_stage "
        "UNION ALL SELECT customer_id, 1, 'stage_entered', new_stage, stage FROM _kp_diff "
        "WHERE new_stage IS NOT NULL AND stage IS DISTINCT FROM new_stage "
        "UNION ALL SELECT customer_id, 2, CASE WHEN entered THEN 'segment_entered' "
        "ELSE 'segment_exited' END, segment, CAST(NULL AS TEXT) FROM _kp_seg) AS c",
        [base, run_id, as_of],
    )


def evaluate_as_of(tx: Tx, plan: Plan, as_of: datetime) -> str:
    """Everyone's traits, stage and segments as of a moment, into the temp table it names,
    without touching the stored state (`--as-of`)."""
    as_of = utc(as_of)
    attach_models(tx, plan, as_of)

    def state(at: Any) -> Any:
        evaluated = plan.evaluate(plan.traits(at, jsonb=_jsonb(tx)), at)
        return evaluated.select(
            *plan.state_schema(), stage=evaluated.new_stage, segments=evaluated.new_segments
        )

    temp_table(tx, "_kp_asof", render(tx, plan, "as_of", state, as_of))
    return "_kp_asof"
