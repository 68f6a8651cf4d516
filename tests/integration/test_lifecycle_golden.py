"""The golden dataset: hand-written event histories with hand-checked lifecycle results.

`tests/data/golden/events.jsonl` holds Segment messages for a few dozen customers;
`tests/data/golden/expected.yaml` says, run by run, what the engine must conclude about
each of them (stage, segments, chosen traits) and, at the end, the full stage history and
segment stays — every value with a comment deriving it from the definitions. Nothing there
was copied from engine output, so these tests can fail.

The runs move forward in time over one store; a few messages are held back and delivered
just before a later run (late data, an identity merge), so the incremental path is
exercised as well as the first, full run. Everything runs on DuckDB and on PostgreSQL.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from keepers.domain.definitions import (
    BUILTIN_KEYS,
    Definitions,
    SegmentDefinition,
    default_definitions,
)
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import store_definitions
from keepers.settings import Settings

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
# The ingest clock is after every run, so whether a customer exists at a run depends only
# on their events (a customer row created "now" would otherwise count as existing).
INGESTED_AT = datetime(2027, 1, 15, tzinfo=UTC)
# days_since_* are derived at evaluation time and not stored; every other built-in is.
STORED_TRAITS = frozenset(k for k in BUILTIN_KEYS if not k.startswith("days_since_"))
STAGE_RULES = {s.key: s.rule for s in default_definitions().stage_model.stages}


# --- the dataset --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    id: str
    as_of: datetime
    deliver: tuple[str, ...]  # messageIds held back until just before this run


@dataclass(frozen=True)
class Golden:
    messages: list[dict[str, Any]]
    runs: list[Run]
    extra_segments: list[SegmentDefinition]
    customers: dict[str, dict[str, Any]]

    def as_of(self, run_id: str) -> datetime:
        return next(r.as_of for r in self.runs if r.id == run_id)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@cache
def golden() -> Golden:
    lines = (GOLDEN / "events.jsonl").read_text().splitlines()
    messages = [json.loads(line) for line in lines if line.strip()]
    expected = yaml.safe_load((GOLDEN / "expected.yaml").read_text())
    runs = [Run(r["id"], _time(r["as_of"]), tuple(r.get("deliver", ()))) for r in expected["runs"]]
    data = Golden(
        messages=messages,
        runs=runs,
        extra_segments=[SegmentDefinition(**s) for s in expected.get("extra_segments", [])],
        customers=expected["customers"],
    )
    _check_dataset(data)
    return data


def _check_dataset(data: Golden) -> None:
    """Mistakes in the dataset itself fail loudly instead of being silently skipped."""
    ids = [m["messageId"] for m in data.messages]
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"events.jsonl: duplicate messageIds {duplicated}"
    held = [i for r in data.runs for i in r.deliver]
    assert set(held) <= set(ids), (
        f"expected.yaml: unknown held-back messages {set(held) - set(ids)}"
    )
    assert [r.as_of for r in data.runs] == sorted(r.as_of for r in data.runs), "runs must move on"
    run_ids = {r.id for r in data.runs}
    for key, customer in data.customers.items():
        missing = run_ids - customer.keys()
        assert not missing, f"expected.yaml: {key} says nothing about runs {sorted(missing)}"
        for run in data.runs:
            entry = customer[run.id]
            if entry == "absent":
                continue
            assert {"stage", "segments"} <= entry.keys(), f"{key} {run.id}: stage and segments"
            unknown = set(entry.get("traits", {})) - STORED_TRAITS
            assert not unknown, f"expected.yaml: {key} {run.id}: unknown traits {unknown}"
        for move in customer["history"]:
            assert len(move) == 3 and move[2] in run_ids, f"{key}: bad history row {move}"
        for segment, stays in customer["memberships"].items():
            for stay in stays:
                assert stay[0] in run_ids and stay[1] in run_ids | {None}, f"{key} {segment}"


# --- running it -----------------------------------------------------------------------------


@dataclass
class Observed:
    """What the store says after each run (customers keyed by userId, else anonymousId)."""

    run_numbers: dict[str, int] = field(default_factory=dict)  # "R1" -> compute run_id
    states: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)  # customer_id -> golden key
    history: list[tuple[Any, ...]] = field(default_factory=list)
    memberships: list[tuple[Any, ...]] = field(default_factory=list)
    changes: list[tuple[Any, ...]] = field(default_factory=list)


def _utc(value: Any) -> Any:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _ingest(keepers: Keepers, messages: list[dict[str, Any]]) -> None:
    if not messages:
        return
    report = keepers.ingest_messages(messages, source_id="golden")
    assert not report.rejected, f"golden messages rejected: {report.rejected}"
    assert report.stored == len(messages), f"stored {report.stored} of {len(messages)}"


def _use_definitions(keepers: Keepers, extra: list[SegmentDefinition]) -> None:
    """The default model plus the dataset's extra segments (pro_plan reads traits.plan)."""
    defaults = default_definitions()
    definitions = Definitions(
        stage_model=defaults.stage_model,
        segments=[*defaults.segments, *extra],
        traits=defaults.traits,
    )
    with keepers.db.transaction() as tx:
        store_definitions(
            tx, definitions, actor="golden", summary="golden dataset", now=INGESTED_AT
        )


def _state(keepers: Keepers, traits: list[str]) -> dict[str, dict[str, Any]]:
    columns = ["stage", "stage_since", "previous_stage", "segments", *traits]
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            f"SELECT c.user_id, c.anonymous_id, {', '.join('s.' + c for c in columns)} "
            "FROM customer_state s JOIN customers c ON c.customer_id = s.customer_id"
        )
    state: dict[str, dict[str, Any]] = {}
    for user_id, anonymous_id, *values in rows:
        key = user_id or anonymous_id
        assert key not in state, f"two customers in customer_state answer to {key}"
        state[key] = {c: _utc(v) for c, v in zip(columns, values, strict=True)}
    return state


def run_golden(settings: Settings, engine: str = "database") -> Observed:
    data = golden()
    held = {message_id: run.id for run in data.runs for message_id in run.deliver}
    traits = sorted(
        {
            name
            for customer in data.customers.values()
            for entry in customer.values()
            if isinstance(entry, dict)
            for name in entry.get("traits", {})
        }
    )
    observed = Observed()
    keepers = Keepers.open(settings, clock=lambda: INGESTED_AT)
    try:
        _ingest(keepers, [m for m in data.messages if m["messageId"] not in held])
        _use_definitions(keepers, data.extra_segments)
        for run in data.runs:
            _ingest(keepers, [m for m in data.messages if held.get(m["messageId"]) == run.id])
            report = keepers.compute(as_of=run.as_of, engine=engine)
            observed.run_numbers[run.id] = report.run_id
            observed.states[run.id] = _state(keepers, traits)
        with keepers.db.transaction() as tx:
            for customer_id, user_id, anonymous_id in tx.execute(
                "SELECT customer_id, user_id, anonymous_id FROM customers"
            ):
                observed.keys[customer_id] = user_id or anonymous_id
            observed.history = tx.execute(
                "SELECT customer_id, from_stage, to_stage, moved_at, cause, run_id "
                "FROM stage_history"
            )
            observed.memberships = tx.execute(
                "SELECT segment, customer_id, entered_at, exited_at, entered_run, exited_run "
                "FROM segment_memberships"
            )
            observed.changes = tx.execute(
                "SELECT change_id, run_id, changed_at, customer_id, kind, name, detail "
                "FROM changes ORDER BY change_id"
            )
    finally:
        keepers.close()
    observed.history = [tuple(_utc(v) for v in row) for row in observed.history]
    observed.memberships = [tuple(_utc(v) for v in row) for row in observed.memberships]
    observed.changes = [tuple(_utc(v) for v in row) for row in observed.changes]
    keys = list(observed.keys.values())
    assert len(keys) == len(set(keys)), "two customers share a golden key"
    return observed


# --- comparing --------------------------------------------------------------------------------


def _same(actual: Any, expected: Any) -> bool:
    if expected is None or actual is None:
        return actual is None and expected is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and actual == expected
    if isinstance(expected, int | float):
        return isinstance(actual, int | float) and math.isclose(actual, expected, abs_tol=1e-9)
    if isinstance(expected, str) and isinstance(actual, datetime):
        return actual == _time(expected)
    return actual == expected


@dataclass
class Checks:
    """Every comparison is counted; all failures are reported together, one line each."""

    count: int = 0
    failures: list[str] = field(default_factory=list)

    def equal(self, where: str, actual: Any, expected: Any) -> None:
        self.count += 1
        if not _same(actual, expected):
            self.failures.append(f"{where}: expected {expected!r}, got {actual!r}")

    def report(self) -> str:
        lines = "\n  ".join(self.failures)
        return f"{len(self.failures)} of {self.count} golden checks failed:\n  {lines}"


def _segment_list(stored: str | None) -> list[str]:
    return sorted(s for s in (stored or "").split(",") if s)


def _label(data: Golden, observed: Observed, moment: datetime | None, run_id: Any) -> str:
    """'R2' when a time and a run number are those of golden run R2, else both, raw."""
    if moment is None and run_id is None:
        return "-"
    for run in data.runs:
        if moment == run.as_of and run_id == observed.run_numbers[run.id]:
            return run.id
    return f"{moment.isoformat() if moment else None} (run {run_id})"


def _check_run(checks: Checks, data: Golden, observed: Observed, run: Run) -> None:
    state = observed.states[run.id]
    checks.equal(
        f"{run.id}: customers not in the dataset", sorted(state.keys() - set(data.customers)), []
    )
    for key, customer in data.customers.items():
        entry = customer[run.id]
        where = f"{run.id} {key}"
        if entry == "absent":
            checks.equal(f"{where} present in customer_state", key in state, False)
            continue
        checks.equal(f"{where} present in customer_state", key in state, True)
        if key not in state:
            continue
        row = state[key]
        checks.equal(f"{where} stage", row["stage"], entry["stage"])
        checks.equal(f"{where} segments", _segment_list(row["segments"]), sorted(entry["segments"]))
        for name, value in entry.get("traits", {}).items():
            checks.equal(f"{where} trait {name}", row[name], value)
        moves = [m for m in customer["history"] if data.as_of(m[2]) <= run.as_of]
        if moves:
            last = moves[-1]
            checks.equal(f"{where} stage_since", row["stage_since"], data.as_of(last[2]))
            checks.equal(f"{where} previous_stage", row["previous_stage"], last[0])


def _check_history(checks: Checks, data: Golden, observed: Observed) -> None:
    """Each customer's moves as 'from → to @ run', and the rule recorded as each cause."""
    moves: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for customer_id, before, after, moved_at, cause, run_id in observed.history:
        moves[observed.keys[customer_id]].append((run_id, before, after, moved_at, cause))
    unknown = sorted(moves.keys() - set(data.customers))
    checks.equal("stage history of customers not in the dataset", unknown, [])
    for key, customer in data.customers.items():
        rows = sorted(moves.get(key, []), key=lambda row: row[0])
        actual = [
            f"{before} → {after} @ {_label(data, observed, at, run_id)}"
            for run_id, before, after, at, _ in rows
        ]
        expected = [f"{before} → {after} @ {run}" for before, after, run in customer["history"]]
        checks.equal(f"{key} stage history", actual, expected)
        for _, _, after, _, cause in rows:
            rule = STAGE_RULES.get(after) if after else None
            checks.equal(f"{key} cause of the move to {after}", cause, rule)


def _check_memberships(checks: Checks, data: Golden, observed: Observed) -> None:
    """Each customer's stays per segment as [entered run, exited run or '-']."""
    stays: dict[str, dict[str, list[tuple[Any, ...]]]] = defaultdict(lambda: defaultdict(list))
    for row in observed.memberships:
        segment, customer_id, entered_at, exited_at, entered_run, exited_run = row
        stays[observed.keys[customer_id]][segment].append(
            (entered_run, entered_at, exited_at, exited_run)
        )
    unknown = sorted(stays.keys() - set(data.customers))
    checks.equal("segment stays of customers not in the dataset", unknown, [])
    for key, customer in data.customers.items():
        actual = {
            segment: [
                [
                    _label(data, observed, entered_at, entered_run),
                    _label(data, observed, exited_at, exited_run),
                ]
                for entered_run, entered_at, exited_at, exited_run in sorted(rows, key=_first)
            ]
            for segment, rows in stays.get(key, {}).items()
        }
        expected = {
            segment: [[entered, exited or "-"] for entered, exited in intervals]
            for segment, intervals in customer["memberships"].items()
        }
        checks.equal(f"{key} segments ever joined", sorted(actual), sorted(expected))
        for segment in sorted(set(actual) | set(expected)):
            checks.equal(
                f"{key} {segment} stays [entered, exited]",
                actual.get(segment, []),
                expected.get(segment, []),
            )


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


# --- the tests --------------------------------------------------------------------------------

BACKENDS = pytest.mark.parametrize(
    "database_url",
    ["duckdb", "postgres"],
    indirect=True,
)


def test_golden_dataset_is_consistent() -> None:
    data = golden()
    assert 30 <= len(data.customers) <= 40
    assert len(data.runs) >= 3


@pytest.mark.parametrize(
    ("database_url", "engine"),
    [
        ("duckdb", "database"),
        ("postgres", "database"),
        pytest.param("duckdb", "spark", marks=pytest.mark.spark),
    ],
    indirect=["database_url"],
)
def test_golden_lifecycle(settings: Settings, engine: str) -> None:
    """Stage, segments and traits of every customer after every run; then the full stage
    history and the segment stays. The same definitions computed by the store itself
    (DuckDB, PostgreSQL) and by Spark in local mode must give the same answers."""
    data = golden()
    observed = run_golden(settings, engine)
    checks = Checks()
    for run in data.runs:
        _check_run(checks, data, observed, run)
    _check_history(checks, data, observed)
    _check_memberships(checks, data, observed)
    assert not checks.failures, checks.report()


@BACKENDS
def test_golden_change_records(settings: Settings) -> None:
    """The change feed agrees with the history: exactly one stage_entered per history row
    with a to_stage (and one stage_exited per row with a from_stage), one segment_entered /
    segment_exited per stay boundary, and nothing else."""
    observed = run_golden(settings)
    changes: Counter[tuple[Any, ...]] = Counter(
        (run_id, changed_at, customer_id, kind, name, detail)
        for _, run_id, changed_at, customer_id, kind, name, detail in observed.changes
    )
    expected: Counter[tuple[Any, ...]] = Counter()
    problems = []
    for customer_id, before, after, moved_at, _, run_id in observed.history:
        who = f"{observed.keys[customer_id]} {before} → {after} (run {run_id})"
        if after is not None:
            entered = (run_id, moved_at, customer_id, "stage_entered", after, before)
            expected[entered] += 1
            if changes[entered] != 1:
                problems.append(f"{who}: {changes[entered]} stage_entered records, not 1")
        if before is not None:
            expected[(run_id, moved_at, customer_id, "stage_exited", before, after)] += 1
    for row in observed.memberships:
        segment, customer_id, entered_at, exited_at, entered_run, exited_run = row
        expected[(entered_run, entered_at, customer_id, "segment_entered", segment, None)] += 1
        if exited_run is not None:
            expected[(exited_run, exited_at, customer_id, "segment_exited", segment, None)] += 1
    assert not problems, "\n".join(problems)
    kinds = Counter(change[3] for change in changes.elements())
    assert kinds["stage_entered"] == sum(1 for h in observed.history if h[2] is not None)
    missing, extra = expected - changes, changes - expected
    assert not missing and not extra, f"missing changes: {missing}\nunexpected changes: {extra}"
    ids = [row[0] for row in observed.changes]
    assert ids == sorted(set(ids)), "change ids are unique and increasing"
    runs = [row[1] for row in observed.changes]
    assert runs == sorted(runs), "change ids follow the runs"
