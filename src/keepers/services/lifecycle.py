"""Lifecycle use cases: definitions, compute runs, stage counts — each one transaction.

The web API, the CLI and the scheduler call these; they never build SQL themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from keepers.domain.definitions import (
    Definitions,
    SegmentDefinition,
    default_definitions,
    parse_definitions,
    parse_segment,
)
from keepers.engine.clv import fit_day
from keepers.engine.compute import (
    ComputeReport,
    evaluate_as_of,
    last_run,
    process_lock,
    run_compute,
    state_exists,
    utc,
)
from keepers.engine.explain import explain_customer
from keepers.engine.plan import Plan
from keepers.engine.scores import warm as warm_day_scores
from keepers.errors import InvalidInput, NotFound, RuleError
from keepers.store.database import Database, Tx
from keepers.store.definitions import (
    list_definition_versions,
    read_definitions,
    save_definitions,
)

DEFAULT_ACTOR = "keepers"
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)  # the earliest moment a compute may be asked for


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


ENGINES = ("database", "spark")


def compute(
    db: Database,
    *,
    as_of: datetime,
    full: bool = False,
    emit_changes: bool = True,
    engine: str = "database",
    spark_master: str = "local[2]",
    spark_driver_memory: str = "4g",
) -> ComputeReport:
    """One compute run at `as_of`, with stage counts and segment sizes in the report.
    `engine="spark"` has Spark compute traits and rules; the store applies the result."""
    if engine not in ENGINES:
        raise InvalidInput(f"engine: expected one of {', '.join(ENGINES)}, got '{engine}'")
    with compute_transaction(db) as tx:
        current = load_definitions(tx)
        plan = Plan.build(current.definitions)
        evaluated = None
        if engine == "spark":
            from keepers.engine.spark import evaluate_on_spark

            evaluated = evaluate_on_spark(tx, plan, as_of, spark_master, spark_driver_memory)
        report = run_compute(
            tx,
            plan,
            as_of=as_of,
            definitions_version=current.version,
            full=full,
            emit_changes=emit_changes,
            evaluated=evaluated,
        )
        report.engine = "spark" if engine == "spark" else tx.dialect.name
    # the run counted (or carried forward) both; listed here in funnel and definition order
    report.stages = _in_funnel_order(report.stages.items(), current.definitions)
    report.segments = _defined_segments(report.segments.items(), current.definitions)
    return report


def stage_counts(tx: Tx, definitions: Definitions) -> dict[str, int]:
    """Customers per stage, in funnel order (every stage listed, empty ones as 0)."""
    rows = []
    if state_exists(tx):
        rows = tx.execute("SELECT stage, count(*) FROM customer_state GROUP BY stage")
    return _in_funnel_order(rows, definitions)


def _in_funnel_order(rows: Iterable[Any], definitions: Definitions) -> dict[str, int]:
    counts = {key: 0 for key in definitions.stage_model.funnel_order()}
    for stage, n in rows:
        counts[stage or "unstaged"] = n
    return counts


def segment_sizes(tx: Tx, definitions: Definitions) -> dict[str, int]:
    rows = tx.execute(
        "SELECT segment, count(*) FROM segment_memberships WHERE exited_at IS NULL GROUP BY segment"
    )
    return _defined_segments(rows, definitions)


def _defined_segments(rows: Iterable[Any], definitions: Definitions) -> dict[str, int]:
    sizes = {s.key: 0 for s in definitions.segments}
    for segment, n in rows:
        if segment in sizes:
            sizes[segment] = n
    return sizes


def as_of_summary(db: Database, *, as_of: datetime) -> dict[str, Any]:
    """Stage counts and segment sizes as of a past (or future) moment; nothing is written."""
    with compute_transaction(db) as tx:
        current = load_definitions(tx)
        table = evaluate_as_of(tx, Plan.build(current.definitions), as_of)
        stages = {key: 0 for key in current.definitions.stage_model.funnel_order()}
        for stage, n in tx.execute(f"SELECT stage, count(*) FROM {table} GROUP BY stage"):
            stages[stage or "unstaged"] = n
        segments = {}
        for segment in current.definitions.segments:
            tag = f",{segment.key},"
            segments[segment.key] = tx.execute(
                f"SELECT count(*) FROM {table} WHERE strpos(segments, ?) > 0", [tag]
            )[0][0]
        customers = tx.execute(f"SELECT count(*) FROM {table}")[0][0]
        tx.execute(f"DROP TABLE IF EXISTS {table}")
    return {
        "as_of": as_of.isoformat(),
        "customers": customers,
        "stages": stages,
        "segments": segments,
        "written": False,
    }


def state_as_of(db: Database, *, as_of: datetime) -> Any:
    """Everyone's traits, stage and segments as of a moment, as an Arrow table."""
    with compute_transaction(db) as tx:
        table = evaluate_as_of(tx, Plan.build(load_definitions(tx).definitions), as_of)
        result = tx.fetch_arrow(f"SELECT * FROM {table} ORDER BY customer_id")
        tx.execute(f"DROP TABLE IF EXISTS {table}")
    return result


STEPS = {"day": timedelta(days=1), "week": timedelta(weeks=1), "month": timedelta(days=30)}
MAX_BACKFILL_STEPS = 1_000


def backfill(
    db: Database, *, since: datetime, until: datetime, every: str = "week"
) -> dict[str, Any]:
    """Rebuild stage history and segment memberships from `since`: the state is cleared and
    recomputed as of every step up to `until`, so funnels and time-in-stage exist for an
    imported past. History only — no change records (automations must not replay it)."""
    since, until = utc(since), utc(until)
    if every not in STEPS:
        raise InvalidInput(f"every: expected one of {', '.join(STEPS)}, got '{every}'")
    if since >= until:
        raise InvalidInput("since: must be before the end of the backfill")
    steps = (until - since) / STEPS[every]
    if steps > MAX_BACKFILL_STEPS:
        raise InvalidInput(
            f"since: {steps:,.0f} {every}ly steps is too many (at most {MAX_BACKFILL_STEPS:,}); "
            "start later or step by a longer period"
        )
    moments = []
    moment = since
    while moment < until:
        moments.append(moment)
        moment += STEPS[every]
    moments.append(until)
    with compute_transaction(db) as tx:
        current = load_definitions(tx)
        plan = Plan.build(current.definitions)
        for table in ("stage_history", "segment_memberships"):
            tx.execute(f"DELETE FROM {table}")
        tx.execute("DROP TABLE IF EXISTS customer_state")
        moves = changes = 0
        for step in moments:
            report = run_compute(
                tx, plan, as_of=step, definitions_version=current.version, emit_changes=False
            )
            moves += report.stage_moves
            changes += report.segment_changes
        stages = stage_counts(tx, current.definitions)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "every": every,
        "steps": len(moments),
        "stage_moves": moves,
        "segment_changes": changes,
        "stages": stages,
    }


def stage_moves(tx: Tx, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """How many customers moved from each stage to each other (backward moves included)."""
    where = "WHERE moved_at >= ?" if since else ""
    rows = tx.execute(
        "SELECT COALESCE(from_stage, '(new)'), COALESCE(to_stage, '(gone)'), count(*) "
        f"FROM stage_history {where} GROUP BY 1, 2 ORDER BY 3 DESC",
        [since] if since else [],
    )
    return [{"from": a, "to": b, "customers": n} for a, b, n in rows]


def resolve_customer(tx: Tx, reference: str) -> int:
    """A customer id from our id, a userId, an anonymousId or an email; merged profiles
    lead to the customer they were merged into."""
    rows: list[tuple[Any, ...]] = []
    if reference.isascii() and reference.isdigit() and len(reference) < 19:
        rows = tx.execute(
            "SELECT customer_id, merged_into FROM customers WHERE customer_id = ?",
            [int(reference)],
        )
    if not rows:
        rows = tx.execute(
            "SELECT c.customer_id, c.merged_into FROM identities i JOIN customers c "
            "ON c.customer_id = i.customer_id WHERE i.value = ? LIMIT 1",
            [reference],
        )
    if not rows:
        rows = tx.execute(
            "SELECT customer_id, merged_into FROM customers WHERE email = ? "
            "AND merged_into IS NULL LIMIT 1",
            [reference.strip().lower()],
        )
    if not rows:
        raise NotFound(f"no customer '{reference}' (try a customer id, userId or email)")
    customer, merged_into = rows[0]
    return int(merged_into or customer)


def explain(
    db: Database, reference: str, *, as_of: datetime, scores: bool = False
) -> dict[str, Any]:
    with compute_transaction(db) as tx:
        customer = resolve_customer(tx, reference)
        plan = Plan.build(load_definitions(tx).definitions)
        result = explain_customer(tx, plan, customer, as_of, scores=scores)
        profile = tx.execute(
            "SELECT user_id, anonymous_id, email FROM customers WHERE customer_id = ?", [customer]
        )[0]
        history = tx.execute(
            "SELECT from_stage, to_stage, moved_at, cause FROM stage_history "
            "WHERE customer_id = ? ORDER BY moved_at, run_id",
            [customer],
        )
    result["customer"] = {
        "customer_id": customer,
        "user_id": profile[0],
        "anonymous_id": profile[1],
        "email": profile[2],
    }
    result["history"] = [
        {"from": a, "to": b, "at": at.isoformat(), "cause": cause} for a, b, at, cause in history
    ]
    return result


# --- segments and definitions --------------------------------------------------------------


def change_definitions(
    db: Database,
    change: Callable[[Definitions], tuple[Definitions, str]],
    *,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Apply one change to the current definitions and save it as a new version."""
    with db.transaction() as tx:
        current = load_definitions(tx)
        updated, summary = change(current.definitions)
        version = store_definitions(tx, updated, actor=actor, summary=summary, now=now)
    return {"version": version, "summary": summary}


def preview_segment(db: Database, rule: str, *, as_of: datetime, sample: int = 10) -> dict:
    """How many customers a rule would select right now, and a few of them, before saving."""
    with compute_transaction(db) as tx:
        current = load_definitions(tx)
        trial = current.definitions.model_copy(deep=True)
        trial.segments.append(SegmentDefinition(key="p_preview", rule=rule))
        try:
            plan = Plan.build(trial)
        except RuleError as exc:  # the trial segment is ours; the user wrote a rule
            exc.message = exc.message.replace("segment 'p_preview'", "rule")
            exc.args = (exc.message,)
            raise
        table = evaluate_as_of(tx, plan, as_of)
        where = "strpos(segments, ',p_preview,') > 0"
        count = tx.execute(f"SELECT count(*) FROM {table} WHERE {where}")[0][0]
        rows = tx.execute(
            f"SELECT a.customer_id, c.user_id, c.email, a.stage FROM {table} a "
            f"JOIN customers c ON c.customer_id = a.customer_id WHERE {where} "
            "ORDER BY a.customer_id LIMIT ?",
            [sample],
        )
        total = tx.execute(f"SELECT count(*) FROM {table}")[0][0]
        tx.execute(f"DROP TABLE IF EXISTS {table}")
    return {
        "rule": rule,
        "customers": count,
        "of": total,
        "sample": [{"customer_id": c, "user_id": u, "email": e, "stage": s} for c, u, e, s in rows],
    }


def segment_members(tx: Tx, key: str, *, limit: int = 20) -> dict[str, Any]:
    rows = tx.execute(
        "SELECT m.customer_id, c.user_id, c.email, m.entered_at FROM segment_memberships m "
        "JOIN customers c ON c.customer_id = m.customer_id "
        "WHERE m.segment = ? AND m.exited_at IS NULL ORDER BY m.entered_at DESC, m.customer_id "
        "LIMIT ?",
        [key, limit],
    )
    size = tx.execute(
        "SELECT count(*) FROM segment_memberships WHERE segment = ? AND exited_at IS NULL", [key]
    )[0][0]
    return {
        "size": size,
        "sample": [
            {"customer_id": c, "user_id": u, "email": e, "entered_at": at.isoformat()}
            for c, u, e, at in rows
        ],
    }


def _segment_saved(segment: SegmentDefinition) -> Callable[[Definitions], tuple[Definitions, str]]:
    def change(definitions: Definitions) -> tuple[Definitions, str]:
        updated = definitions.model_copy(deep=True)
        existing = updated.segment(segment.key)
        if existing is None:
            updated.segments.append(segment)
            return updated, f"segment '{segment.key}' created: {segment.rule}"
        updated.segments[updated.segments.index(existing)] = segment
        return updated, f"segment '{segment.key}' changed: {existing.rule} → {segment.rule}"

    return change


def _segment_deleted(key: str) -> Callable[[Definitions], tuple[Definitions, str]]:
    def change(definitions: Definitions) -> tuple[Definitions, str]:
        if definitions.segment(key) is None:
            raise NotFound(f"no segment '{key}'")
        updated = definitions.model_copy(deep=True)
        updated.segments = [s for s in updated.segments if s.key != key]
        return updated, f"segment '{key}' deleted"

    return change


class LifecycleService:
    """The lifecycle operations with plain-data answers: what the CLI prints with `--json`,
    what the REST API returns, and what a remote CLI receives from the server."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        spark: tuple[str, str] = ("local[2]", "4g"),
    ) -> None:
        self.db = db
        self.clock = clock
        self.spark_master, self.spark_driver_memory = spark

    def compute(
        self,
        full: bool = False,
        as_of: datetime | None = None,
        backfill_since: datetime | None = None,
        every: str = "week",
        engine: str = "database",
    ) -> dict[str, Any]:
        for name, moment in (("as_of", as_of), ("backfill_since", backfill_since)):
            if moment is not None and utc(moment) < EARLIEST:
                # windows reach back up to a year before a moment: keep them in the calendar
                raise InvalidInput(f"{name}: must not be before {EARLIEST.date()}")
        if backfill_since is not None:
            return backfill(self.db, since=backfill_since, until=as_of or self.clock(), every=every)
        if as_of is not None:
            return as_of_summary(self.db, as_of=as_of)
        report = compute(
            self.db,
            as_of=self.clock(),
            full=full,
            engine=engine,
            spark_master=self.spark_master,
            spark_driver_memory=self.spark_driver_memory,
        ).to_dict()
        report["written"] = True
        return report

    def report(self, name: str, as_of: datetime | None = None, **options: Any) -> dict[str, Any]:
        """One analytics report (funnel, churn, cohorts, rfm …) now or as of a moment."""
        from keepers.services import analytics

        when = as_of or self.clock()
        return analytics.report(self.db, name, as_of=when, current=as_of is None, **options)

    def report_who(
        self, name: str, as_of: datetime | None = None, limit: int = 100, **cell: Any
    ) -> dict[str, Any]:
        """The customers behind one number of a report."""
        from keepers.services import analytics

        when = as_of or self.clock()
        return analytics.who(self.db, name, as_of=when, current=as_of is None, limit=limit, **cell)

    def stages(self) -> dict[str, Any]:
        with self.db.transaction() as tx:
            current = load_definitions(tx)
            counts = stage_counts(tx, current.definitions)
            moves = stage_moves(tx)
            run = last_run(tx)
        total = sum(counts.values()) or 1
        labels = {s.key: s for s in current.definitions.stage_model.stages}
        return {
            "computed_at": run["as_of"].isoformat() if run else None,
            "stages": [
                {
                    "stage": key,
                    "label": labels[key].label if key in labels else key,
                    "funnel": labels[key].funnel if key in labels else None,
                    "customers": n,
                    "share": round(n / total, 4),
                }
                for key, n in counts.items()
            ],
            "moves": moves,
        }

    def explain(
        self, customer: str, as_of: datetime | None = None, scores: bool = False
    ) -> dict[str, Any]:
        return explain(self.db, customer, as_of=as_of or self.clock(), scores=scores)

    def warm_scores(self) -> list[str]:
        """Compute today's churn-risk and persona scores if not yet done (a few seconds;
        then every customer page shows them). Not under the compute lock: a read."""
        with self.db.transaction() as tx:
            definitions = load_definitions(tx).definitions
            return warm_day_scores(tx, definitions, fit_day(self.clock()))

    def segments_list(self) -> list[dict[str, Any]]:
        with self.db.transaction() as tx:
            current = load_definitions(tx)
            sizes = segment_sizes(tx, current.definitions)
        return [
            {**s.model_dump(exclude_none=True), "customers": sizes.get(s.key, 0)}
            for s in current.definitions.segments
        ]

    def segment_show(self, key: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            segment = load_definitions(tx).definitions.segment(key)
            if segment is None:
                raise NotFound(f"no segment '{key}'")
            members = segment_members(tx, key)
        return {**segment.model_dump(exclude_none=True), **members}

    def segment_save(
        self,
        key: str,
        rule: str,
        label: str | None = None,
        description: str | None = None,
        actor: str = DEFAULT_ACTOR,
    ) -> dict[str, Any]:
        segment = parse_segment(
            {"key": key, "rule": rule, "label": label, "description": description}
        )
        saved = change_definitions(self.db, _segment_saved(segment), actor=actor, now=self.clock())
        return {**saved, **self._recompute(), "segment": segment.model_dump(exclude_none=True)}

    def segment_delete(self, key: str, actor: str = DEFAULT_ACTOR) -> dict[str, Any]:
        saved = change_definitions(self.db, _segment_deleted(key), actor=actor, now=self.clock())
        return {**saved, **self._recompute()}

    def _recompute(self) -> dict[str, Any]:
        """A definition change takes effect at once: the run is full only when the change
        alters what is aggregated, otherwise rules are re-evaluated for everyone."""
        report = compute(self.db, as_of=self.clock())
        return {"compute": report.to_dict()}

    def segment_preview(self, rule: str, sample: int = 10) -> dict[str, Any]:
        return preview_segment(self.db, rule, as_of=self.clock(), sample=sample)

    def definitions_export(self) -> dict[str, Any]:
        with self.db.transaction() as tx:
            current = load_definitions(tx)
        body = current.definitions.model_dump(mode="json", exclude_none=True)
        return {"version": current.version, "definitions": body}

    def definitions_apply(self, body: Any, actor: str = DEFAULT_ACTOR) -> dict[str, Any]:
        definitions = parse_definitions(body)

        def change(old: Definitions) -> tuple[Definitions, str]:
            return definitions, describe_change(old, definitions)

        saved = change_definitions(self.db, change, actor=actor, now=self.clock())
        return {**saved, **self._recompute()}

    def definitions_history(self) -> list[dict[str, Any]]:
        with self.db.transaction() as tx:
            versions = list_definition_versions(tx)
        return [
            {
                "version": v.version,
                "at": v.created_at.isoformat(),
                "actor": v.actor,
                "summary": v.summary,
            }
            for v in versions
        ]


def describe_change(old: Definitions, new: Definitions) -> str:
    """One line naming what a new version changes."""
    parts = []
    was_stages = {s.key for s in old.stage_model.stages}
    for kind, before, after in (
        ("stage", old.stage_model.stages, new.stage_model.stages),
        ("segment", old.segments, new.segments),
        ("trait", old.traits, new.traits),
    ):
        was = {item.key: item for item in before}
        now = {item.key: item for item in after}
        parts += [f"{kind} '{k}' added" for k in now if k not in was]
        parts += [f"{kind} '{k}' removed" for k in was if k not in now]
        parts += [f"{kind} '{k}' changed" for k in now if k in was and now[k] != was[k]]
    kept = [s.key for s in new.stage_model.stages if old.stage_model.stages and s.key in was_stages]
    before = [s.key for s in old.stage_model.stages if s.key in kept]
    if kept != before:
        parts.append(f"stages reordered: {', '.join(kept)}")
    if old.stage_model.passive_events != new.stage_model.passive_events:
        parts.append("passive events changed")
    return "; ".join(parts) or "no change"
