"""Replay history against a journey without sending anything (`keepers journeys simulate`).

The question to answer before a journey goes live: had it been live since a date, who would
have entered, which way would each of them have gone, and how many messages would each step
have queued? The answer is the live engine's semantics (`keepers.journeys.engine.tick`) run
over the past on a simulated clock: time walks from `since` to `until` in steps (a day by
default), and at every moment the three phases of a tick run against temp tables instead of
`enrollments`, `outbox` and `journey_log`:

1. **Enroll** the trigger's occurrences since the previous moment: stage entries and exits
   from `stage_history` (periods computed by a backfill count at their real times), segment
   entries and exits from `segment_memberships`, trigger events from `events` since `since`
   (each event enrolls once, as live), or everyone a trigger rule holds for at that moment.
   The entry rule (as of that moment) and the re-entry policy decide, as live.
2. **Goals**: the goal event within `within_days` of entering, or the goal rule.
3. **Steps**, until nothing is due: waits, wait until (the event after reaching the step, the
   rule, else the timeout), branches, split and holdout drawn from the live engine's own
   buckets (`bucket_sql(salt_of(...))`, so a customer's simulated path is the path the live
   journey gives them), and a count of what email, webhook, audience, trait and task steps
   would have queued.

Every rule at a moment (trigger, entry, branch, wait until, goal) reads the lifecycle as of
that moment: `evaluate_as_of` once per moment that needs it, then the plan's compiled rule
over that temp table — the same expressions as live. Nothing persistent is written.

The clock only stops at the simulated moments, so what happens between two of them is seen
at the next one: a one-day step simulates an engine that ticks daily, and a customer enters
at the first moment after their stage move, not at the move itself.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.domain.journeys import CHANNELS, Journey, Step, duration_seconds
from keepers.engine.compute import evaluate_as_of, temp_table, utc
from keepers.engine.fitted import attach_models
from keepers.engine.plan import Plan
from keepers.engine.sql import compiled_sql
from keepers.errors import InvalidInput
from keepers.journeys.engine import MAX_PASSES, bucket_sql, salt_of
from keepers.store.database import Tx

MAX_STEPS = 1_000
SAMPLE = 20
QUEUES = (*CHANNELS, "task")  # steps whose side effect would be queued
ENTRY_RULE_NOT_MET = "entry rule not met"  # the live engine's reasons, word for word
BLOCKED = "already in the journey or re-entry not allowed"
HISTORY = {  # trigger kind → (table, time column, name column) of its past occurrences
    "stage_entered": ("stage_history", "moved_at", "to_stage"),
    "stage_exited": ("stage_history", "moved_at", "from_stage"),
    "segment_entered": ("segment_memberships", "entered_at", "segment"),
    "segment_exited": ("segment_memberships", "exited_at", "segment"),
}
ENROLLMENTS = (
    "sim_id BIGINT, customer_id BIGINT, status TEXT, step TEXT, due_at TIMESTAMPTZ, "
    "entered_at TIMESTAMPTZ, step_entered_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, path TEXT, "
    "holdout BOOLEAN, moves INTEGER, goal_at TIMESTAMPTZ, trigger_ref TEXT"
)
TABLES = {
    "_kp_sim_enr": ENROLLMENTS,  # the simulated enrollments, shaped like `enrollments`
    "_kp_sim_visit": "sim_id BIGINT, n INTEGER, step TEXT, visited_at TIMESTAMPTZ",  # each arrival
    "_kp_sim_skip": "customer_id BIGINT, ref TEXT, reason TEXT",  # trigger occurrences refused
}
SCRATCH = ("_kp_sim_cand", "_kp_sim_one", "_kp_sim_rule", "_kp_sim_due", "_kp_asof")
CANDIDATES = ibis.table({"customer_id": "int64"}, name="_kp_sim_one")


def simulate(
    tx: Tx,
    plan: Plan,
    journey: Journey,
    since: datetime,
    until: datetime,
    *,
    step: timedelta = timedelta(days=1),
    version: int | None = None,
) -> dict[str, Any]:
    """What `journey` would have done from `since` to `until` had it been live, with the
    engine ticking every `step`: entries, skips by reason, per-step reach, queued messages
    and paths, goals, and a sample of customers' paths. Sends nothing, writes nothing."""
    moments = simulated_moments(since, until, step)
    for where, rule in journey.rules():
        plan.read_only_rule(rule, where)  # a mistake fails before any work
    run = _Simulation(tx, plan, journey, moments[0])
    for previous, moment in zip([None, *moments[:-1]], moments, strict=True):
        run.tick(moment, previous)
    result = {
        "journey": journey.key,
        "version": version,
        "since": moments[0].isoformat(),
        "until": moments[-1].isoformat(),
        "step_days": step / timedelta(days=1),
        **run.report(),
        "written": False,
    }
    run.drop()
    return result


def simulated_moments(since: datetime, until: datetime, step: timedelta) -> list[datetime]:
    """`since`, `since + step`, … and `until`: the moments the simulated engine ticks."""
    try:
        since, until = utc(since), utc(until)
    except OverflowError:
        raise InvalidInput(f"since: {since} is out of range") from None
    if step <= timedelta(0):
        raise InvalidInput("step: must be more than 0")
    if since >= until:
        raise InvalidInput(
            f"since: {since.isoformat()} is not before the end of the simulation "
            f"({until.isoformat()})"
        )
    count = math.ceil((until - since) / step)
    if count > MAX_STEPS:
        raise InvalidInput(
            f"since: {count:,} steps of {step / timedelta(days=1):g} day(s) is too many (at most "
            f"{MAX_STEPS:,}); start later or take longer steps"
        )
    return [*(since + index * step for index in range(count)), until]


class _Simulation:
    """The live engine's phases over temp tables, one simulated moment at a time."""

    def __init__(self, tx: Tx, plan: Plan, journey: Journey, since: datetime) -> None:
        self.tx, self.plan, self.journey, self.since = tx, plan, journey, since
        self.now = since
        self.previous: datetime | None = None
        self.as_of: tuple[datetime, str] | None = None
        self.decisions: dict[str, Counter[str]] = {s.id: Counter() for s in journey.steps}
        self.queued: Counter[str] = Counter()
        for name, columns in TABLES.items():
            tx.execute(f"DROP TABLE IF EXISTS {name}")
            tx.execute(f"CREATE TEMP TABLE {name} ({columns})")

    def tick(self, now: datetime, previous: datetime | None) -> None:
        self.now, self.previous = now, previous
        self.enroll()
        self.goals()
        for _ in range(MAX_PASSES):
            due = self._due_steps()
            if not due or not sum(self.step(s) for s in self.journey.steps if s.id in due):
                break

    def drop(self) -> None:
        for name in (*TABLES, *SCRATCH):
            self.tx.execute(f"DROP TABLE IF EXISTS {name}")

    # --- helpers -------------------------------------------------------------------------

    def _count(self, table: str, where: str = "true") -> int:
        return self.tx.execute(f"SELECT count(*) FROM {table} d WHERE {where}")[0][0]

    def _window(self, column: str) -> str:
        """`column` after the previous moment (from `since` at the first) up to now."""
        low = (
            f"{column} >= {_ts(self.since)}"
            if self.previous is None
            else f"{column} > {_ts(self.previous)}"
        )
        return f"{low} AND {column} <= {_ts(self.now)}"

    def _state(self) -> str:
        """Everyone's traits, stage and segments as of now (computed once per moment)."""
        if self.as_of is None or self.as_of[0] != self.now:
            self.as_of = (self.now, evaluate_as_of(self.tx, self.plan, self.now))
        return self.as_of[1]

    def _rule(self, rule: str, what: str) -> None:
        """`_kp_sim_rule(customer_id, ok)` for every customer in `_kp_sim_cand`, as of now."""
        node = self.plan.read_only_rule(rule, what)
        table = self._state()
        if self.plan.models_missing:  # the rule reads a fitted field no rule before it did
            attach_models(self.tx, self.plan, self.now)
        temp_table(self.tx, "_kp_sim_one", "SELECT DISTINCT customer_id FROM _kp_sim_cand")
        plan = self.plan
        schema = {**plan.state_schema(), "stage": "string", "segments": "string"}
        state = ibis.table(schema, name=table)

        def build(at: ir.TimestampValue) -> ir.Table:
            t = plan.evaluate(state.filter(state.customer_id.isin(CANDIDATES.customer_id)), at)
            return t.select("customer_id", ok=plan.condition(t, node))

        key = (plan.fingerprint(), "journey_simulate_rule", rule)
        sql = compiled_sql(self.tx, key, build, [self.now])
        temp_table(
            self.tx,
            "_kp_sim_rule",
            "SELECT c.customer_id, COALESCE(r.ok, false) AS ok FROM _kp_sim_one c "
            f"LEFT JOIN ({sql}) r ON r.customer_id = c.customer_id",
        )

    def _due(self, step: Step) -> datetime:
        """When a step an enrollment has just reached is due (as `_Runner._due`)."""
        if step.wait:
            return self.now + timedelta(seconds=step.wait_seconds)
        if step.wait_until:
            return self.now + timedelta(
                seconds=duration_seconds(step.wait_until.timeout, "timeout")
            )
        return self.now

    # --- enrollment ----------------------------------------------------------------------

    def _candidates(self) -> str:
        """The trigger's occurrences at this moment: (customer_id, ref), one per customer."""
        kind, value = self.journey.trigger.kind, self.journey.trigger.value
        if kind in HISTORY:
            table, column, name = HISTORY[kind]
            ref = _quote(f"{kind}@{self.now.isoformat()}")
            select = (
                f"SELECT DISTINCT customer_id, {ref} AS ref FROM {table} "
                f"WHERE {name} = {_quote(value)} AND {self._window(column)}"
            )
        elif kind == "event":  # every event since `since` not yet used, as live
            select = (
                "SELECT customer_id, MIN(CAST(message_key AS TEXT)) AS ref FROM events e "
                f"WHERE event = {_quote(value)} AND timestamp >= {_ts(self.since)} "
                f"AND timestamp <= {_ts(self.now)} AND NOT EXISTS (SELECT 1 FROM _kp_sim_enr n "
                "WHERE n.trigger_ref = CAST(e.message_key AS TEXT)) GROUP BY customer_id"
            )
        else:  # a rule: whoever it holds for now
            temp_table(self.tx, "_kp_sim_cand", f"SELECT customer_id FROM {self._state()}")
            self._rule(value, "trigger.rule")
            select = "SELECT customer_id, 'rule' AS ref FROM _kp_sim_rule WHERE ok"
        return select

    def enroll(self) -> None:
        """Candidates in, through the entry rule and the re-entry policy (as `_Runner.enroll`);
        a refused trigger occurrence is counted once per reason."""
        tx, journey = self.tx, self.journey
        temp_table(tx, "_kp_sim_cand", self._candidates())
        if not self._count("_kp_sim_cand"):
            return
        if journey.entry.rule:
            self._rule(journey.entry.rule, "entry.rule")
        else:
            temp_table(tx, "_kp_sim_rule", "SELECT customer_id, true AS ok FROM _kp_sim_cand")
        temp_table(
            tx,
            "_kp_sim_due",
            f"SELECT c.customer_id, c.ref, CASE WHEN NOT r.ok THEN {_quote(ENTRY_RULE_NOT_MET)} "
            f"WHEN {self._blocked()} THEN {_quote(BLOCKED)} ELSE NULL END AS reason "
            "FROM _kp_sim_cand c JOIN _kp_sim_rule r ON r.customer_id = c.customer_id",
        )
        first = journey.steps[0]
        base = tx.execute("SELECT COALESCE(MAX(sim_id), 0) FROM _kp_sim_enr")[0][0]
        tx.execute(
            "INSERT INTO _kp_sim_enr SELECT ? + row_number() OVER (ORDER BY customer_id), "
            f"customer_id, 'active', ?, {_ts(self._due(first))}, {_ts(self.now)}, "
            f"{_ts(self.now)}, CAST(NULL AS TIMESTAMPTZ), CAST(NULL AS TEXT), false, 0, "
            "CAST(NULL AS TIMESTAMPTZ), ref FROM _kp_sim_due WHERE reason IS NULL",
            [base, first.id],
        )
        tx.execute(
            f"INSERT INTO _kp_sim_visit SELECT sim_id, 0, step, {_ts(self.now)} "
            "FROM _kp_sim_enr WHERE sim_id > ?",
            [base],
        )
        tx.execute(
            "INSERT INTO _kp_sim_skip SELECT DISTINCT d.customer_id, d.ref, d.reason "
            "FROM _kp_sim_due d WHERE d.reason IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            "_kp_sim_skip s WHERE s.customer_id = d.customer_id AND s.ref = d.ref "
            "AND s.reason = d.reason)"
        )

    def _blocked(self) -> str:
        """The re-entry policy over the simulated enrollments (as `_Runner.enroll`)."""
        entry = self.journey.entry
        mine = "FROM _kp_sim_enr n WHERE n.customer_id = c.customer_id"
        if entry.reentry == "never":
            return f"EXISTS (SELECT 1 {mine})"
        if entry.reentry == "after_days":
            since = self.now - timedelta(days=float(entry.after_days or 0))
            return (
                f"EXISTS (SELECT 1 {mine} AND (n.status = 'active' OR n.entered_at > {_ts(since)}))"
            )
        return f"EXISTS (SELECT 1 {mine} AND n.status = 'active')"

    # --- goals ---------------------------------------------------------------------------

    def goals(self) -> None:
        goal = self.journey.goal
        if goal is None:
            return
        tx, now = self.tx, _ts(self.now)
        seconds = goal.within_days * 86400.0
        open_ = "n.goal_at IS NULL AND n.status IN ('active', 'holdout', 'completed', 'exited')"
        if goal.event is not None:
            temp_table(
                tx,
                "_kp_sim_due",
                "SELECT n.sim_id, MIN(e.timestamp) AS goal_at FROM _kp_sim_enr n JOIN events e "
                f"ON e.customer_id = n.customer_id AND e.event = {_quote(goal.event)} "
                f"AND e.timestamp >= n.entered_at AND e.timestamp <= {now} "
                "AND EXTRACT(EPOCH FROM e.timestamp) - EXTRACT(EPOCH FROM n.entered_at) <= "
                f"{seconds!r} WHERE {open_} GROUP BY n.sim_id",
            )
        else:
            within = f"EXTRACT(EPOCH FROM {now}) - EXTRACT(EPOCH FROM n.entered_at) <= {seconds!r}"
            temp_table(
                tx,
                "_kp_sim_cand",
                f"SELECT DISTINCT n.customer_id FROM _kp_sim_enr n WHERE {open_} AND {within}",
            )
            if not self._count("_kp_sim_cand"):
                return
            self._rule(goal.rule or "", "goal.rule")
            temp_table(
                tx,
                "_kp_sim_due",
                f"SELECT n.sim_id, {now} AS goal_at FROM _kp_sim_enr n JOIN _kp_sim_rule r "
                f"ON r.customer_id = n.customer_id WHERE r.ok AND {open_} AND {within}",
            )
        if not self._count("_kp_sim_due"):
            return
        active = "_kp_sim_enr.status = 'active'"
        tx.execute(
            f"UPDATE _kp_sim_enr SET goal_at = d.goal_at, "
            f"status = CASE WHEN {active} THEN 'goal' ELSE _kp_sim_enr.status END, "
            f"finished_at = CASE WHEN {active} THEN {now} ELSE _kp_sim_enr.finished_at END, "
            f"due_at = CASE WHEN {active} THEN NULL ELSE _kp_sim_enr.due_at END, "
            f"step = CASE WHEN {active} THEN NULL ELSE _kp_sim_enr.step END "
            "FROM _kp_sim_due d WHERE _kp_sim_enr.sim_id = d.sim_id"
        )

    # --- steps ---------------------------------------------------------------------------

    def _due_steps(self) -> set[str]:
        """Steps with an enrollment to look at now (a wait until is looked at every time)."""
        waiting = [s.id for s in self.journey.steps if s.kind == "wait_until"]
        also = f" OR step IN ({', '.join(map(_quote, waiting))})" if waiting else ""
        rows = self.tx.execute(
            "SELECT DISTINCT step FROM _kp_sim_enr WHERE status = 'active' "
            f"AND (due_at <= {_ts(self.now)}{also})"
        )
        return {row[0] for row in rows}

    def _select_due(self, step: Step, *, all_waiting: bool = False) -> int:
        due = "" if all_waiting else f"AND due_at <= {_ts(self.now)}"
        temp_table(
            self.tx,
            "_kp_sim_due",
            "SELECT sim_id, customer_id, moves, step_entered_at, due_at FROM _kp_sim_enr "
            f"WHERE step = {_quote(step.id)} AND status = 'active' {due}",
        )
        return self._count("_kp_sim_due")

    def _move(self, step: Step, target: str | None, where: str = "true", path: str = "") -> int:
        """Move the selected enrollments (`where` over `_kp_sim_due d`) to `target`."""
        n = self._count("_kp_sim_due", where)
        if not n:
            return 0
        if path:
            self.decisions[step.id][path] += n
        ids = f"SELECT d.sim_id FROM _kp_sim_due d WHERE {where}"
        now = _ts(self.now)
        if target is None:
            self.tx.execute(
                "UPDATE _kp_sim_enr SET status = 'completed', step = NULL, due_at = NULL, "
                f"finished_at = {now}, moves = moves + 1 WHERE sim_id IN ({ids})"
            )
            return n
        self.tx.execute(
            f"INSERT INTO _kp_sim_visit SELECT d.sim_id, d.moves + 1, {_quote(target)}, {now} "
            f"FROM _kp_sim_due d WHERE {where}"
        )
        self.tx.execute(
            f"UPDATE _kp_sim_enr SET step = {_quote(target)}, "
            f"due_at = {_ts(self._due(self.journey.step(target)))}, step_entered_at = {now}, "
            f"moves = moves + 1 WHERE sim_id IN ({ids})"
        )
        return n

    def _finish(self, step: Step, status: str, where: str = "true", path: str = "") -> int:
        n = self._count("_kp_sim_due", where)
        if not n:
            return 0
        if path:
            self.decisions[step.id][path] += n
        self.tx.execute(
            f"UPDATE _kp_sim_enr SET status = {_quote(status)}, due_at = NULL, "
            f"finished_at = {_ts(self.now)}, "
            f"holdout = {'true' if status == 'holdout' else 'holdout'}, moves = moves + 1 "
            f"WHERE sim_id IN (SELECT d.sim_id FROM _kp_sim_due d WHERE {where})"
        )
        return n

    def step(self, step: Step) -> int:
        """One step for every enrollment due at it, as `_Runner.step` does live."""
        kind = step.kind
        if kind == "wait_until":
            return self._wait_until(step)
        if not self._select_due(step):
            return 0
        following = self.journey.following(step)
        if kind == "wait":
            return self._move(step, following)
        if kind == "exit":
            return self._finish(step, "exited")
        if kind == "branch":
            assert step.branch is not None
            temp_table(self.tx, "_kp_sim_cand", "SELECT DISTINCT customer_id FROM _kp_sim_due")
            self._rule(step.branch.rule, f"steps.{step.id}.branch.rule")
            ok = "d.customer_id IN (SELECT customer_id FROM _kp_sim_rule WHERE ok)"
            moved = self._move(step, step.branch.then, ok, "then")
            return moved + self._move(step, step.branch.else_, f"NOT ({ok})", "else")
        if kind == "split":
            return self._split(step)
        if kind == "holdout":
            assert step.holdout is not None
            bucket = bucket_sql(salt_of(self.journey.key, "holdout"))
            held = f"{bucket.replace('customer_id', 'd.customer_id')} < {step.holdout.share!r}"
            n = self._finish(step, "holdout", held, "held_out")
            return n + self._move(step, following, f"NOT ({held})", "continued")
        if kind in QUEUES:
            self.queued[step.id] += self._count("_kp_sim_due")
            return self._move(step, following)
        raise AssertionError(f"unknown step kind {kind}")  # the model allows no other

    def _split(self, step: Step) -> int:
        assert step.split is not None
        total = sum(p.weight for p in step.split)
        bucket = bucket_sql(salt_of(self.journey.key, step.id)).replace(
            "customer_id", "d.customer_id"
        )
        low, moved = 0.0, 0
        for index, path in enumerate(step.split):
            high = 1.0 if index == len(step.split) - 1 else low + path.weight / total
            where = f"{bucket} >= {low!r} AND {bucket} < {high!r}"
            self.tx.execute(
                f"UPDATE _kp_sim_enr SET path = {_quote(path.name)} WHERE sim_id IN "
                f"(SELECT d.sim_id FROM _kp_sim_due d WHERE {where})"
            )
            moved += self._move(step, path.next, where, path.name)
            low = high
        return moved

    def _wait_until(self, step: Step) -> int:
        wait = step.wait_until
        assert wait is not None
        if not self._select_due(step, all_waiting=True):
            return 0
        if wait.event is not None:
            happened = (
                "EXISTS (SELECT 1 FROM events e WHERE e.customer_id = d.customer_id AND "
                f"e.event = {_quote(wait.event)} AND e.timestamp >= d.step_entered_at "
                f"AND e.timestamp <= {_ts(self.now)})"
            )
        else:
            temp_table(self.tx, "_kp_sim_cand", "SELECT DISTINCT customer_id FROM _kp_sim_due")
            self._rule(wait.rule or "", f"steps.{step.id}.wait_until.rule")
            happened = "d.customer_id IN (SELECT customer_id FROM _kp_sim_rule WHERE ok)"
        following = self.journey.following(step)
        moved = self._move(step, wait.then or following, happened, "happened")
        timed_out = f"NOT ({happened}) AND d.due_at <= {_ts(self.now)}"
        return moved + self._move(step, wait.timeout_next or following, timed_out, "timed_out")

    # --- the answer ----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        tx = self.tx
        statuses = dict(
            tx.execute("SELECT status, count(*) FROM _kp_sim_enr GROUP BY status ORDER BY status")
        )
        reached = dict(tx.execute("SELECT step, count(*) FROM _kp_sim_visit GROUP BY step"))
        skipped = dict(
            tx.execute("SELECT reason, count(*) FROM _kp_sim_skip GROUP BY reason ORDER BY reason")
        )
        customers, goals = tx.execute(
            "SELECT count(DISTINCT customer_id), count(goal_at) FROM _kp_sim_enr"
        )[0]
        return {
            "entered": sum(statuses.values()),
            "customers": customers,
            "skipped": skipped,
            "by_step": {
                s.id: self._step_report(s, reached.get(s.id, 0)) for s in self.journey.steps
            },
            "goal_reached": goals,
            "still_active": statuses.get("active", 0),
            "statuses": statuses,
            "messages": sum(self.queued.values()),
            "sample": self._sample(),
            "notes": self._notes(),
        }

    def _step_report(self, step: Step, reached: int) -> dict[str, Any]:
        row: dict[str, Any] = {"reached": reached}
        if step.kind in QUEUES:
            row["queued"] = self.queued[step.id]
        names = path_names(step)
        if names:
            row["paths"] = {name: self.decisions[step.id][name] for name in names}
        return row

    def _sample(self) -> list[dict[str, Any]]:
        """The first enrollments (by entry time) with the steps each one reached, in order."""
        rows = self.tx.execute(
            "SELECT n.sim_id, n.customer_id, c.user_id, c.email, n.entered_at, n.status, "
            "n.path, n.holdout, n.goal_at FROM _kp_sim_enr n LEFT JOIN customers c "
            "ON c.customer_id = n.customer_id ORDER BY n.entered_at, n.customer_id, n.sim_id "
            "LIMIT ?",
            [SAMPLE],
        )
        if not rows:
            return []
        steps: dict[int, list[str]] = {row[0]: [] for row in rows}
        visits = self.tx.execute(
            "SELECT sim_id, step FROM _kp_sim_visit WHERE sim_id IN "
            f"({', '.join(str(int(i)) for i in steps)}) ORDER BY sim_id, n"
        )
        for sim_id, step in visits:
            steps[sim_id].append(step)
        return [
            {
                "customer_id": customer,
                "user_id": user,
                "email": email,
                "entered_at": utc(entered).isoformat(),
                "status": status,
                "split": split,
                "holdout": bool(holdout),
                "goal_at": utc(goal).isoformat() if goal else None,
                "path": steps[sim_id],
            }
            for sim_id, customer, user, email, entered, status, split, holdout, goal in rows
        ]

    def _notes(self) -> list[str]:
        """What the answer cannot know: stage or segment moves from before the history."""
        kind = self.journey.trigger.kind
        if kind not in HISTORY:
            return []
        stage = kind.startswith("stage")
        table, column = (
            ("stage_history", "moved_at") if stage else ("segment_memberships", "entered_at")
        )
        what = "stage history" if stage else "segment history"
        first = self.tx.execute(f"SELECT MIN({column}) FROM {table}")[0][0]
        backfill = f"`keepers compute --backfill --since {self.since.date().isoformat()}`"
        if first is None:
            return [f"there is no {what} yet: run `keepers compute` ({backfill} for the past)"]
        if utc(first) < self.since:
            return []
        initial = "everyone's first stage" if stage else "every member then"
        return [
            f"the {what} starts at {utc(first).isoformat()}: earlier moves are unknown and "
            f"{initial} counts as entered at that moment; {backfill} rebuilds the past"
        ]


def path_names(step: Step) -> list[str]:
    """The ways out of a step that decides, as counted in `by_step[...]["paths"]`."""
    if step.branch is not None:
        return ["then", "else"]
    if step.split is not None:
        return [p.name for p in step.split]
    if step.holdout is not None:
        return ["held_out", "continued"]
    if step.wait_until is not None:
        return ["happened", "timed_out"]
    return []


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _ts(moment: datetime) -> str:
    return f"CAST('{utc(moment).isoformat()}' AS TIMESTAMPTZ)"
