"""Advance journeys: enroll, move every due enrollment one step, queue side effects.

One `tick(now)` is one transaction (serialised like compute runs):

1. **Enroll** each active journey's new customers: stage or segment changes after the
   journey's position in the `changes` feed, trigger events since it was activated (each
   event enrolls once), or customers whose state matches a trigger rule. The entry rule and
   the re-entry policy then decide; at most one active enrollment per customer and journey,
   whatever the version. Every candidate gets a log row: entered, or skipped and why.
2. **Goals**: an enrollment whose customer did the goal event (or matches the goal rule)
   within `within_days` of entering records `goal_at`; an active one leaves with status
   `goal`. Held-out customers are tracked the same way, which is what uplift compares.
3. **Steps**, repeated until nothing is due: for every journey version and step, all due
   enrollments at that step move in a few statements — wait, wait until (event, rule or
   timeout), branch (rule), split (weighted, stable per customer), holdout (stable share),
   email / webhook / audience (an outbox row each, unique per enrollment, step and visit),
   task (a sales task row), exit. A step after a wait is due when the wait ends; every
   other step is due at once, so a whole chain of instant steps runs in one tick.

Rules are evaluated by the lifecycle plan over the stored customer state (the same compiled
expressions as stage and segment rules). Split and holdout draw from a hash of the journey
and customer id computed in SQL, so the same customer always takes the same path, on
DuckDB and PostgreSQL alike.
"""

from __future__ import annotations

import json
import threading
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.domain.journeys import CHANNELS, Journey, Step, duration_seconds
from keepers.engine.compute import state_exists, state_table, temp_table, utc
from keepers.engine.fitted import attach_models
from keepers.engine.plan import Plan
from keepers.engine.sql import compiled_sql
from keepers.journeys.store import current_journeys, journey_version, live_versions
from keepers.store.database import Tx

JOURNEY_LOCK = 720_403  # PostgreSQL advisory lock serialising journey ticks
MAX_PASSES = 50  # instant steps chained in one tick (a loop always passes a wait)
CANDIDATES = ibis.table({"customer_id": "int64"}, name="_kp_jone")
_LOCK = threading.Lock()


@dataclass
class TickReport:
    now: datetime
    entered: int = 0
    skipped: int = 0
    moved: int = 0
    queued: int = 0
    goals: int = 0
    finished: int = 0
    by_journey: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, journey: str, what: str, n: int) -> None:
        if n:
            setattr(self, what, getattr(self, what) + n)
            bucket = self.by_journey.setdefault(journey, {})
            bucket[what] = bucket.get(what, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "entered": self.entered,
            "skipped": self.skipped,
            "moved": self.moved,
            "queued": self.queued,
            "goals": self.goals,
            "finished": self.finished,
            "journeys": self.by_journey,
        }


def tick(tx: Tx, plan: Plan, now: datetime, *, email_domain: str = "keepers.local") -> TickReport:
    """Enroll, record goals and advance every journey once, at `now`."""
    now = utc(now)
    if tx.dialect.name == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", [JOURNEY_LOCK])
    report = TickReport(now)
    runner = _Runner(tx, plan, now, report, email_domain)
    for stored in current_journeys(tx, status="active"):
        runner.enroll(stored.journey, stored.version, stored.activated_at, stored.change_cursor)
    versions = {pair: journey_version(tx, *pair) for pair in live_versions(tx)}
    for (_, version), journey in versions.items():
        runner.goals(journey, version)
    for _ in range(MAX_PASSES):
        moved = sum(
            runner.step(journey, version, step)
            for (_, version), journey in versions.items()
            for step in journey.steps
        )
        if not moved:
            break
    for name in ("_kp_jcand", "_kp_jone", "_kp_jrule", "_kp_jdue"):
        tx.execute(f"DROP TABLE IF EXISTS {name}")
    return report


def bucket_sql(salt: int) -> str:
    """A number in [0, 1) fixed per customer and salt, the same in every engine: Knuth's
    multiplicative hash (vol. 3, §6.4) modulo the prime 2³² − 5, then a MINSTD step
    (Park & Miller, multiplier 48271 modulo 2³¹ − 1). The two different prime moduli make
    the salt mix in non-linearly, so each journey and step draws independently (a bare
    salt offset would hold out the same customers everywhere). Integer arithmetic stays
    below 2⁶³ for customer ids under 3·10⁹."""
    first = f"((customer_id * 2654435761 + {salt}) % 4294967291)"
    return f"((({first} * 48271 + {salt * 7919 % 2147483647}) % 2147483647) / 2147483647.0)"


def salt_of(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) % 1_000_003


class _Runner:
    def __init__(
        self, tx: Tx, plan: Plan, now: datetime, report: TickReport, email_domain: str
    ) -> None:
        self.tx, self.plan, self.now, self.report = tx, plan, now, report
        self.email_domain = email_domain
        self.has_state = state_exists(tx)
        self.attached = False  # the day's models, at `now`, for what the rules so far read

    # --- rules ---------------------------------------------------------------------------

    def rule_into(self, rule: str, what: str) -> None:
        """`_kp_jrule(customer_id, ok)` for every customer in `_kp_jcand`."""
        if not self.has_state:
            temp_table(self.tx, "_kp_jrule", "SELECT customer_id, false AS ok FROM _kp_jcand")
            return
        node = self.plan.read_only_rule(rule, what)
        temp_table(self.tx, "_kp_jone", "SELECT DISTINCT customer_id FROM _kp_jcand")
        if self.plan.model_fields and (self.plan.models_missing or not self.attached):
            attach_models(self.tx, self.plan, self.now)
            self.attached = True
        state = state_table(self.plan)
        plan = self.plan

        def build(at: ir.TimestampValue) -> ir.Table:
            s = state.filter(state.customer_id.isin(CANDIDATES.customer_id))
            t = plan.evaluate(s, at)
            return t.select("customer_id", ok=plan.condition(t, node))

        sql = compiled_sql(self.tx, (plan.fingerprint(), "journey_rule", rule), build, [self.now])
        temp_table(
            self.tx,
            "_kp_jrule",
            f"SELECT c.customer_id, COALESCE(r.ok, false) AS ok FROM _kp_jcand c "
            f"LEFT JOIN ({sql}) r ON r.customer_id = c.customer_id",
        )

    # --- enrollment ----------------------------------------------------------------------

    def enroll(self, journey: Journey, version: int, activated_at: datetime, cursor: int) -> None:
        tx, trigger, key = self.tx, journey.trigger, journey.key
        kind, value = trigger.kind, trigger.value
        new_cursor = cursor
        if kind in ("stage_entered", "stage_exited", "segment_entered", "segment_exited"):
            new_cursor = tx.execute("SELECT COALESCE(MAX(change_id), 0) FROM changes")[0][0]
            temp_table(
                tx,
                "_kp_jcand",
                "SELECT customer_id, CAST(MAX(change_id) AS TEXT) AS ref FROM changes "
                f"WHERE change_id > {int(cursor)} AND change_id <= {int(new_cursor)} "
                f"AND kind = {_quote(kind)} AND name = {_quote(value)} GROUP BY customer_id",
            )
        elif kind == "event":
            temp_table(
                tx,
                "_kp_jcand",
                "SELECT customer_id, CAST(MIN(CAST(message_key AS TEXT)) AS TEXT) AS ref "
                f"FROM events e WHERE event = {_quote(value)} "
                f"AND timestamp >= {_ts(activated_at)} AND timestamp <= {_ts(self.now)} "
                "AND NOT EXISTS (SELECT 1 FROM enrollments n WHERE n.journey = "
                f"{_quote(key)} AND n.trigger_ref = CAST(e.message_key AS TEXT)) "
                "GROUP BY customer_id",
            )
        else:  # a rule over the state: whoever matches it now
            if not self.has_state:
                return
            temp_table(tx, "_kp_jcand", "SELECT customer_id FROM customer_state")
            self.rule_into(value, "trigger.rule")
            temp_table(
                tx,
                "_kp_jcand",
                "SELECT customer_id, CAST(NULL AS TEXT) AS ref FROM _kp_jrule WHERE ok",
            )
        if journey.entry.rule:
            self.rule_into(journey.entry.rule, "entry.rule")
        else:
            temp_table(tx, "_kp_jrule", "SELECT customer_id, true AS ok FROM _kp_jcand")
        j = _quote(key)
        mine = f"FROM enrollments n WHERE n.journey = {j} AND n.customer_id = c.customer_id"
        blocked = f"EXISTS (SELECT 1 {mine} AND n.status = 'active')"
        if journey.entry.reentry == "never":
            blocked = f"EXISTS (SELECT 1 {mine})"
        elif journey.entry.reentry == "after_days":
            since = self.now - timedelta(days=float(journey.entry.after_days or 0))
            blocked = (
                f"EXISTS (SELECT 1 FROM enrollments n WHERE n.journey = {j} "
                f"AND n.customer_id = c.customer_id AND (n.status = 'active' "
                f"OR n.entered_at > {_ts(since)}))"
            )
        temp_table(
            tx,
            "_kp_jdue",
            "SELECT c.customer_id, c.ref, CASE WHEN NOT r.ok THEN 'entry rule not met' "
            f"WHEN {blocked} THEN 'already in the journey or re-entry not allowed' "
            "ELSE NULL END AS reason FROM _kp_jcand c JOIN _kp_jrule r "
            "ON r.customer_id = c.customer_id",
        )
        first = journey.steps[0]
        base = tx.execute("SELECT COALESCE(MAX(enrollment_id), 0) FROM enrollments")[0][0]
        tx.execute(
            "INSERT INTO enrollments SELECT ? + row_number() OVER (ORDER BY customer_id), ?, ?, "
            "customer_id, 'active', ?, ?, ?, ?, CAST(NULL AS TIMESTAMPTZ), CAST(NULL AS TEXT), "
            "CAST(NULL AS TEXT), false, 0, CAST(NULL AS TIMESTAMPTZ), ref "
            "FROM _kp_jdue WHERE reason IS NULL",
            [base, key, version, first.id, self._due(first), self.now, self.now],
        )
        detail = json.dumps({"trigger": {kind: value}})
        tx.execute(
            "INSERT INTO journey_log SELECT n.enrollment_id, d.customer_id, ?, ?, "
            "CASE WHEN d.reason IS NULL THEN ? ELSE NULL END, ?, "
            "CASE WHEN d.reason IS NULL THEN 'entered' ELSE 'skipped' END, "
            "CASE WHEN d.reason IS NULL THEN ? ELSE d.reason END "
            "FROM _kp_jdue d LEFT JOIN enrollments n ON n.journey = ? "
            "AND n.enrollment_id > ? AND n.customer_id = d.customer_id",
            [key, version, first.id, self.now, detail, key, base],
        )
        entered, skipped = tx.execute(
            "SELECT count(*) FILTER (WHERE reason IS NULL), count(*) FILTER (WHERE reason IS NOT "
            "NULL) FROM _kp_jdue"
        )[0]
        self.report.count(key, "entered", entered)
        self.report.count(key, "skipped", skipped)
        tx.execute("UPDATE journeys SET change_cursor = ? WHERE journey = ?", [new_cursor, key])

    # --- goals ---------------------------------------------------------------------------

    def goals(self, journey: Journey, version: int) -> None:
        goal = journey.goal
        if goal is None:
            return
        tx, key = self.tx, journey.key
        seconds = goal.within_days * 86400.0
        now = _ts(self.now)
        open_ = (
            f"n.journey = {_quote(key)} AND n.version = {int(version)} AND n.goal_at IS NULL "
            "AND n.status IN ('active', 'holdout', 'completed', 'exited')"
        )
        if goal.event is not None:
            temp_table(
                tx,
                "_kp_jdue",
                "SELECT n.enrollment_id, n.customer_id, n.step, n.status, MIN(e.timestamp) AS at "
                "FROM enrollments n JOIN events e ON e.customer_id = n.customer_id "
                f"AND e.event = {_quote(goal.event)} AND e.timestamp >= n.entered_at "
                f"AND e.timestamp <= {now} AND EXTRACT(EPOCH FROM e.timestamp) - "
                f"EXTRACT(EPOCH FROM n.entered_at) <= {seconds!r} WHERE {open_} "
                "GROUP BY n.enrollment_id, n.customer_id, n.step, n.status",
            )
        else:
            temp_table(
                tx, "_kp_jcand", f"SELECT DISTINCT n.customer_id FROM enrollments n WHERE {open_}"
            )
            self.rule_into(goal.rule or "", "goal.rule")
            temp_table(
                tx,
                "_kp_jdue",
                f"SELECT n.enrollment_id, n.customer_id, n.step, n.status, {now} AS at "
                "FROM enrollments n JOIN _kp_jrule r ON r.customer_id = n.customer_id "
                f"WHERE r.ok AND {open_} AND EXTRACT(EPOCH FROM {now}) - "
                f"EXTRACT(EPOCH FROM n.entered_at) <= {seconds!r}",
            )
        what = _quote(goal.event or goal.rule or "")
        tx.execute(
            "INSERT INTO journey_log SELECT enrollment_id, customer_id, ?, ?, step, ?, "
            f"'goal reached', '{{\"goal\": ' || {_json_string(what)} || ', \"left_journey\": ' || "
            "CASE WHEN status = 'active' THEN 'true' ELSE 'false' END || '}' FROM _kp_jdue",
            [key, version, self.now],
        )
        tx.execute(
            "UPDATE enrollments SET goal_at = d.at, "
            "status = CASE WHEN enrollments.status = 'active' THEN 'goal' "
            "ELSE enrollments.status END, "
            "finished_at = CASE WHEN enrollments.status = 'active' THEN ? "
            "ELSE enrollments.finished_at END, "
            "reason = CASE WHEN enrollments.status = 'active' THEN 'goal reached' "
            "ELSE enrollments.reason END, "
            "step = CASE WHEN enrollments.status = 'active' THEN NULL ELSE enrollments.step END "
            "FROM _kp_jdue d WHERE enrollments.enrollment_id = d.enrollment_id",
            [self.now],
        )
        self.report.count(key, "goals", tx.execute("SELECT count(*) FROM _kp_jdue")[0][0])

    # --- steps ---------------------------------------------------------------------------

    def _due(self, step: Step) -> datetime:
        """When a step an enrollment has just reached is due."""
        if step.wait:
            return self.now + timedelta(seconds=step.wait_seconds)
        if step.wait_until:
            return self.now + timedelta(
                seconds=duration_seconds(step.wait_until.timeout, "timeout")
            )
        return self.now

    def _select_due(
        self, journey: Journey, version: int, step: Step, *, all_waiting: bool = False
    ) -> int:
        due = "" if all_waiting else f"AND due_at <= {_ts(self.now)}"
        temp_table(
            self.tx,
            "_kp_jdue",
            "SELECT enrollment_id, customer_id, moves, step_entered_at, due_at FROM enrollments "
            f"WHERE journey = {_quote(journey.key)} AND version = {int(version)} "
            f"AND step = {_quote(step.id)} AND status = 'active' {due}",
        )
        return self.tx.execute("SELECT count(*) FROM _kp_jdue")[0][0]

    def _move(
        self,
        journey: Journey,
        version: int,
        step: Step,
        target: str | None,
        where: str = "true",
        decision: str = "",
        detail: dict | None = None,
    ) -> int:
        """Move the selected due enrollments (`where` over `_kp_jdue d`) to `target`."""
        tx = self.tx
        ids = f"SELECT d.enrollment_id FROM _kp_jdue d WHERE {where}"
        n = tx.execute(f"SELECT count(*) FROM _kp_jdue d WHERE {where}")[0][0]
        if not n:
            return 0
        info = json.dumps({**(detail or {}), "next": target})
        tx.execute(
            "INSERT INTO journey_log SELECT d.enrollment_id, d.customer_id, ?, ?, ?, ?, ?, ? "
            f"FROM _kp_jdue d WHERE {where}",
            [journey.key, version, step.id, self.now, decision or step.kind, info],
        )
        if target is None:
            tx.execute(
                "UPDATE enrollments SET status = 'completed', step = NULL, due_at = NULL, "
                "finished_at = ?, reason = 'completed', moves = moves + 1 "
                f"WHERE enrollment_id IN ({ids})",
                [self.now],
            )
            self.report.count(journey.key, "finished", n)
        else:
            nxt = journey.step(target)
            tx.execute(
                "UPDATE enrollments SET step = ?, due_at = ?, step_entered_at = ?, "
                f"moves = moves + 1 WHERE enrollment_id IN ({ids})",
                [target, self._due(nxt), self.now],
            )
        self.report.count(journey.key, "moved", n)
        return n

    def _finish(
        self,
        journey: Journey,
        version: int,
        step: Step,
        status: str,
        reason: str,
        where: str = "true",
        detail: dict | None = None,
    ) -> int:
        tx = self.tx
        n = tx.execute(f"SELECT count(*) FROM _kp_jdue d WHERE {where}")[0][0]
        if not n:
            return 0
        tx.execute(
            "INSERT INTO journey_log SELECT d.enrollment_id, d.customer_id, ?, ?, ?, ?, ?, ? "
            f"FROM _kp_jdue d WHERE {where}",
            [journey.key, version, step.id, self.now, reason, json.dumps(detail or {})],
        )
        tx.execute(
            f"UPDATE enrollments SET status = ?, due_at = NULL, finished_at = ?, reason = ?, "
            f"holdout = {'true' if status == 'holdout' else 'holdout'}, moves = moves + 1 "
            f"WHERE enrollment_id IN (SELECT d.enrollment_id FROM _kp_jdue d WHERE {where})",
            [status, self.now, reason],
        )
        self.report.count(journey.key, "finished", n)
        self.report.count(journey.key, "moved", n)
        return n

    def step(self, journey: Journey, version: int, step: Step) -> int:
        kind = step.kind
        if kind == "wait_until":
            return self._wait_until(journey, version, step)
        if not self._select_due(journey, version, step):
            return 0
        following = journey.following(step)
        if kind == "wait":
            return self._move(
                journey, version, step, following, decision="waited", detail={"wait": step.wait}
            )
        if kind == "exit":
            return self._finish(journey, version, step, "exited", "exit step")
        if kind == "branch":
            assert step.branch is not None
            temp_table(self.tx, "_kp_jcand", "SELECT DISTINCT customer_id FROM _kp_jdue")
            self.rule_into(step.branch.rule, f"steps.{step.id}.branch.rule")
            ok = "d.customer_id IN (SELECT customer_id FROM _kp_jrule WHERE ok)"
            rule = {"rule": step.branch.rule}
            moved = self._move(
                journey, version, step, step.branch.then, ok, "branch: rule true", rule
            )
            return moved + self._move(
                journey, version, step, step.branch.else_, f"NOT ({ok})", "branch: rule false", rule
            )
        if kind == "split":
            assert step.split is not None
            total = sum(p.weight for p in step.split)
            bucket = bucket_sql(salt_of(journey.key, step.id)).replace(
                "customer_id", "d.customer_id"
            )
            low, moved = 0.0, 0
            for index, path in enumerate(step.split):
                high = 1.0 if index == len(step.split) - 1 else low + path.weight / total
                where = f"{bucket} >= {low!r} AND {bucket} < {high!r}"
                self.tx.execute(
                    "UPDATE enrollments SET path = ? WHERE enrollment_id IN "
                    f"(SELECT d.enrollment_id FROM _kp_jdue d WHERE {where})",
                    [path.name],
                )
                moved += self._move(
                    journey,
                    version,
                    step,
                    path.next,
                    where,
                    f"split: {path.name}",
                    {"path": path.name, "weight": path.weight},
                )
                low = high
            return moved
        if kind == "holdout":
            assert step.holdout is not None
            bucket = bucket_sql(salt_of(journey.key, "holdout")).replace(
                "customer_id", "d.customer_id"
            )
            held = f"{bucket} < {step.holdout.share!r}"
            share = {"share": step.holdout.share}
            n = self._finish(
                journey, version, step, "holdout", "held out (control group)", held, share
            )
            return n + self._move(
                journey, version, step, following, f"NOT ({held})", "not held out", share
            )
        if kind in (*CHANNELS, "task"):
            queued = self._queue(journey, version, step)
            self.report.count(journey.key, "queued", queued)
            return self._move(journey, version, step, following, decision=f"{kind} queued")
        raise AssertionError(f"unknown step kind {kind}")  # the model allows no other

    def _wait_until(self, journey: Journey, version: int, step: Step) -> int:
        wait = step.wait_until
        assert wait is not None
        if not self._select_due(journey, version, step, all_waiting=True):
            return 0
        if wait.event is not None:
            happened = (
                "EXISTS (SELECT 1 FROM events e WHERE e.customer_id = d.customer_id AND "
                f"e.event = {_quote(wait.event)} AND e.timestamp >= d.step_entered_at "
                f"AND e.timestamp <= {_ts(self.now)})"
            )
        else:
            temp_table(self.tx, "_kp_jcand", "SELECT DISTINCT customer_id FROM _kp_jdue")
            self.rule_into(wait.rule or "", f"steps.{step.id}.wait_until.rule")
            happened = "d.customer_id IN (SELECT customer_id FROM _kp_jrule WHERE ok)"
        following = journey.following(step)
        what = {"waited_for": wait.event or wait.rule}
        moved = self._move(
            journey,
            version,
            step,
            wait.then or following,
            happened,
            "wait until: it happened",
            what,
        )
        timed_out = f"NOT ({happened}) AND d.due_at <= {_ts(self.now)}"
        return moved + self._move(
            journey,
            version,
            step,
            wait.timeout_next or following,
            timed_out,
            "wait until: timed out",
            what,
        )

    def _queue(self, journey: Journey, version: int, step: Step) -> int:
        """One outbox row per due enrollment: the side effect, recorded before it happens."""
        tx = self.tx
        if step.task is not None:
            task = step.task
            base = tx.execute("SELECT COALESCE(MAX(task_id), 0) FROM tasks")[0][0]
            tx.execute(
                "INSERT INTO tasks SELECT ? + row_number() OVER (ORDER BY customer_id), "
                "customer_id, ?, ?, ?, ?, ?, ?, 'open' FROM _kp_jdue",
                [
                    base,
                    journey.key,
                    task.title,
                    task.owner,
                    task.notes,
                    self.now + timedelta(days=task.due_days),
                    self.now,
                ],
            )
            return tx.execute("SELECT count(*) FROM _kp_jdue")[0][0]
        action = getattr(step, step.kind)
        channel = "trait" if step.kind == "update_trait" else step.kind
        payload = json.dumps(action.model_dump(mode="json", by_alias=True, exclude_none=True))
        base = tx.execute("SELECT COALESCE(MAX(outbox_id), 0) FROM outbox")[0][0]
        key = (
            f"CAST(d.enrollment_id AS TEXT) || ':' || {_quote(step.id)} || ':' || "
            "CAST(d.moves AS TEXT)"
        )
        reference = (
            f"'<' || md5({key}) || '@' || {_quote(self.email_domain)} || '>'"
            if channel == "email"
            else f"'msg_' || md5({key})"
        )
        tx.execute(
            "INSERT INTO outbox SELECT ? + row_number() OVER (ORDER BY d.enrollment_id), "
            f"{key}, d.enrollment_id, d.customer_id, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, "
            f"CAST(NULL AS TIMESTAMPTZ), {reference}, CAST(NULL AS INTEGER), CAST(NULL AS TEXT) "
            f"FROM _kp_jdue d ON CONFLICT (idem_key) DO NOTHING",
            [base, journey.key, version, step.id, channel, payload, self.now, self.now, self.now],
        )
        return tx.execute("SELECT count(*) FROM _kp_jdue")[0][0]


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _json_string(quoted: str) -> str:
    """A SQL string literal holding a JSON string of the same text."""
    text = quoted[1:-1].replace("''", "'")
    return _quote(json.dumps(text))


def _ts(moment: datetime) -> str:
    return f"CAST('{utc(moment).isoformat()}' AS TIMESTAMPTZ)"
