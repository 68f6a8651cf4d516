"""From definitions to Ibis expressions: the traits of every customer, then stage and segments.

A `Plan` is built once per compute from the definitions. It has two halves, both plain Ibis
over unbound tables (so the same plan compiles to DuckDB, PostgreSQL or Spark SQL):

As-of time is an Ibis value (a literal), so a compiled query can be kept and reused with
another time (see `engine.compute.render`): compiling is slower than running, here.

- `traits(as_of, only=...)`: per-customer aggregates over the event log, orders and refunds
  as of a moment — the built-in traits, the user's traits, and the hidden aggregates the
  rules call for (`count("Product Viewed", days=30)` becomes one more column). Events are
  read once for the cheap aggregates; JSON properties are only parsed on the few events
  that need them (NPS answers, identify calls, events a user trait names).
- `evaluate(state, as_of)`: over a table of stored traits, the time-dependent traits
  (`days_since_*` from stored timestamps, so a customer crosses "90 days" without a new
  event), then segments and stage in dependency order — the first stage rule that holds wins.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir

from keepers.domain.definitions import BUILTIN_TRAITS, Definitions, TraitDefinition
from keepers.domain.rules import (
    COMPARISONS,
    Binary,
    Call,
    Field,
    FunctionSpec,
    In,
    IsNull,
    Literal,
    Node,
    Scope,
    check,
    check_number,
    children,
    parse,
    plain_literal,
)
from keepers.engine.compile import (
    call_arguments,
    compile_condition,
    compile_rule,
    literal_value,
    references,
)
from keepers.engine.fitted import FIELDS, FIRST_ORDER_VALUE, DayModels, fitted_values
from keepers.engine.rfm import SEGMENT_KEYS
from keepers.engine.tables import ORDERS, TS
from keepers.errors import RuleError

EVENT_COLUMNS = {
    "customer_id": "int64",
    "type": "string",
    "event": "string",
    "user_id": "string",
    "anonymous_id": "string",
    "timestamp": TS,
}
JSON_COLUMNS = ("properties", "traits", "context")


def events_table(*, jsonb: bool, name: str = "events") -> ir.Table:
    """The event log as Ibis sees it; PostgreSQL stores JSON as jsonb, whose functions
    differ from json's, so the column type must say which."""
    json_type = dt.JSON(binary=jsonb)
    return ibis.table({**EVENT_COLUMNS, **dict.fromkeys(JSON_COLUMNS, json_type)}, name=name)


REFUNDS = ibis.table(
    {"customer_id": "int64", "refunded_at": TS, "amount": "float64"}, name="refunds"
)
CUSTOMERS = ibis.table(
    {"customer_id": "int64", "merged_into": "int64", "created_at": TS}, name="customers"
)


def listed(name: str) -> ir.Table:
    """A temporary table of customer ids (`_kp_affected`, `_kp_merged` …)."""
    return ibis.table({"customer_id": "int64"}, name=name)


# aggregates over all time that can be brought forward from their stored value and the
# events dated after it (every earlier event was counted, every new one is later): how
MERGES = {
    "count": "add",
    "sum": "add",
    "exists": "or",
    "known": "or",
    "min_ts": "earlier",
    "first": "earlier",
    "max_ts": "later",
    "last": "later",
    "last_number": "later",
    "min": "least",
    "max": "greatest",
}

NUMBER_FUNCTIONS = ("sum", "avg", "min", "max")
EVENT_ARG = ("event", "string")
PROPERTY_ARG = ("property", "string")
DAYS = (("days", "number"),)
FUNCTIONS = {
    "count": FunctionSpec("count", (EVENT_ARG,), DAYS, "number", "events of that name"),
    **{
        name: FunctionSpec(name, (EVENT_ARG, PROPERTY_ARG), DAYS, "number", f"{name} of a property")
        for name in NUMBER_FUNCTIONS
    },
    "first": FunctionSpec("first", (EVENT_ARG, PROPERTY_ARG), DAYS, "any", "first value"),
    "last": FunctionSpec("last", (EVENT_ARG, PROPERTY_ARG), DAYS, "any", "last value"),
    "distinct": FunctionSpec(
        "distinct", (EVENT_ARG, PROPERTY_ARG), DAYS, "number", "distinct values of a property"
    ),
    "days_since": FunctionSpec(
        "days_since", (EVENT_ARG,), (), "number", "whole days since the last such event"
    ),
    "in_segment": FunctionSpec(
        "in_segment", (("segment", "string"),), (), "bool", "member of a segment"
    ),
}
EVENT_SCOPE = Scope(
    fields={"event": "string", "type": "string", "user_id": "string", "anonymous_id": "string"},
    prefixes={"properties": "any", "context": "any", "traits": "any"},
    what="trait filter",
)
STORED_BUILTINS = {
    "events": "int64",
    "page_views": "int64",
    "first_seen_at": TS,
    "last_seen_at": TS,
    "last_active_at": TS,
    "identified": "boolean",
    "signed_up": "boolean",
    "trial_started": "boolean",
    "orders": "int64",
    "revenue": "float64",
    "average_order_value": "float64",
    "first_order_at": TS,
    "last_order_at": TS,
    "previous_order_gap_days": "int64",
    "refunds": "int64",
    "refunded_amount": "float64",
    "net_revenue": "float64",
    "emails_opened": "int64",
    "emails_clicked": "int64",
    "unsubscribed": "boolean",
    "nps": "float64",
    "referrals_made": "int64",
}
DAYS_SINCE = {
    "days_since_first_seen": "first_seen_at",
    "days_since_last_seen": "last_seen_at",
    "days_since_last_active": "last_active_at",
    "days_since_first_order": "first_order_at",
    "days_since_last_order": "last_order_at",
}
SEGMENT_ALL = ","  # the stored segment list of a customer in none: ",a,b," otherwise


@dataclass(frozen=True)
class Aggregate:
    """One per-customer aggregate over events."""

    column: str
    # count | exists | known | min_ts | max_ts | sum | avg | min | max | first | last |
    # distinct | last_number
    func: str
    event: str | None = None
    types: tuple[str, ...] = ()
    path: str | None = None  # dotted property path inside `source`
    source: str = "properties"
    where: str | None = None
    days: int | None = None
    exclude: tuple[str, ...] = ()

    @property
    def needs_json(self) -> bool:
        return self.path is not None or self.where is not None

    @property
    def ibis_type(self) -> str:
        if self.func in ("count", "distinct"):
            return "int64"
        if self.func in ("exists", "known"):
            return "boolean"
        if self.func in ("min_ts", "max_ts"):
            return TS
        if self.func in ("first", "last"):
            return "string"
        return "float64"


def _hidden(prefix: str, *parts: object) -> str:
    digest = hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]
    return f"_{prefix}_{digest}"


@dataclass
class Plan:
    """The compiled form of one version of the definitions."""

    definitions: Definitions
    passive: tuple[str, ...]
    aggregates: list[Aggregate] = field(default_factory=list)
    profile_traits: dict[str, str] = field(default_factory=dict)  # "traits.plan" -> column
    call_columns: dict[tuple, str] = field(default_factory=dict)
    user_traits: dict[str, str] = field(default_factory=dict)  # key -> type
    stage_rules: list[tuple[str, str, Node]] = field(default_factory=list)
    segment_rules: dict[str, tuple[str, Node]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # segment keys and "stage", evaluation order
    health_values: dict[str, tuple[str, Node]] = field(default_factory=dict)
    # fields fitted per day over everyone (p_alive, rfm_*, clv_12m …) some rule reads: the
    # run must attach the day's models (`keepers.engine.fitted.attach_models`)
    model_fields: frozenset[str] = frozenset()
    models: DayModels = field(default_factory=DayModels)

    # --- building -----------------------------------------------------------------------------

    @classmethod
    def build(cls, definitions: Definitions) -> Plan:
        plan = cls(definitions, tuple(definitions.stage_model.passive_events))
        plan._builtin_aggregates()
        for trait in definitions.traits:
            plan._user_trait(trait)
        scope = plan.scope(with_stage=False)
        for stage in definitions.stage_model.stages:
            node = plan._parse(stage.rule, scope, f"stage '{stage.key}'")
            plan.stage_rules.append((stage.key, stage.rule, node))
        segment_scope = plan.scope(with_stage=True)
        for segment in definitions.segments:
            node = plan._parse(segment.rule, segment_scope, f"segment '{segment.key}'")
            plan.segment_rules[segment.key] = (segment.rule, node)
        health_scope = Scope(
            fields={k: v for k, v in scope.fields.items() if k != "health_score"},
            prefixes=scope.prefixes,
            functions={k: v for k, v in FUNCTIONS.items() if k != "in_segment"},
            what="health value",
        )
        for component in definitions.health.components:
            what = f"health component '{component.key}'"
            node = plan._parse(component.value, health_scope, what, number=True)
            plan.health_values[component.key] = (component.value, node)
        plan.order = plan._dependency_order()
        return plan

    def scope(self, *, with_stage: bool) -> Scope:
        fields = {t.key: t.type for t in BUILTIN_TRAITS}
        fields.update(self.user_traits)
        fields["health_score"] = "number"
        fields.update(FIELDS)
        values = {"rfm_segment": SEGMENT_KEYS}
        if with_stage:
            fields["stage"] = "string"
            values["stage"] = tuple(s.key for s in self.definitions.stage_model.stages)
        return Scope(fields=fields, prefixes={"traits": "any"}, functions=FUNCTIONS, values=values)

    def _parse(self, rule: str, scope: Scope, what: str, *, number: bool = False) -> Node:
        try:
            node = parse(rule)
            (check_number if number else check)(node, rule, scope)
        except RuleError as exc:
            exc.message = f"{what}: {exc.message}"
            exc.args = (exc.message,)
            raise
        fields, calls = references(node)
        self.model_fields |= FIELDS.keys() & set(fields)
        for name in fields:
            if name.startswith("traits."):
                self.profile_traits.setdefault(name, _hidden("t", name))
        for call in calls:
            self._register_call(call, rule, what)
        return node

    def read_only_rule(self, rule: str, what: str) -> Node:
        """A rule over what this plan already computes (journey rules): fields, `stage`,
        `in_segment()` and the aggregate calls and `traits.*` the definitions already use.
        Anything that would need a new aggregate is refused with what to do instead."""
        try:
            node = parse(rule)
            check(node, rule, self.scope(with_stage=True))
        except RuleError as exc:
            exc.message = f"{what}: {exc.message}"
            exc.args = (exc.message,)
            raise
        fields, calls = references(node)
        for name in fields:
            if name.startswith("traits.") and name not in self.profile_traits:
                raise RuleError(
                    f"{what}: '{name}' is not read by any lifecycle rule; define a trait for it "
                    "(or use it in a segment) first",
                    source=rule,
                )
        for call in calls:
            known = (
                call.name == "in_segment" and str(literal_value(call.args[0])) in self.segment_rules
            ) or (call.name != "in_segment" and _call_key(call) in self.call_columns)
            if not known:
                raise RuleError(
                    f"{what}: {call.name}(…) is not computed by the lifecycle definitions; "
                    "define it as a trait (or a segment) and use that name",
                    source=rule,
                    position=call.start,
                    length=call.end - call.start,
                )
        if "clv_12m" in fields and not self.keeps_first_order_value:
            raise RuleError(
                f"{what}: 'clv_12m' is not read by any lifecycle rule; use it in a segment "
                "first (its spend model needs each customer's first order value stored)",
                source=rule,
            )
        self.model_fields |= FIELDS.keys() & set(fields)
        return node

    def condition(self, t: ir.Table, node: Node) -> ir.BooleanValue:
        """A rule as a filter over an evaluated table: never NULL."""
        return self._condition(t, node)

    def _register_call(self, call: Call, rule: str, what: str) -> None:
        bound = call_arguments(call, FUNCTIONS[call.name])
        if call.name == "in_segment":
            if bound["segment"] not in {s.key for s in self.definitions.segments}:
                known = ", ".join(s.key for s in self.definitions.segments) or "none yet"
                raise RuleError(
                    f"{what}: unknown segment '{bound['segment']}' (segments: {known})",
                    source=rule,
                    position=call.start,
                    length=call.end - call.start,
                )
            return
        key = _call_key(call)
        if key in self.call_columns:
            return
        column = _hidden("f", *key)
        self.call_columns[key] = column
        _, event, prop, days = key
        if call.name == "count":
            self.aggregates.append(Aggregate(column, "count", event=event, days=days))
        elif call.name == "days_since":
            self.aggregates.append(Aggregate(column, "max_ts", event=event))
        else:
            self.aggregates.append(Aggregate(column, call.name, event=event, path=prop, days=days))

    def _builtin_aggregates(self) -> None:
        a = self.aggregates.append
        a(Aggregate("events", "count"))
        a(Aggregate("page_views", "count", types=("page", "screen")))
        a(Aggregate("first_seen_at", "min_ts"))
        a(Aggregate("last_seen_at", "max_ts"))
        a(Aggregate("last_active_at", "max_ts", exclude=self.passive))
        a(Aggregate("identified", "known"))
        a(Aggregate("signed_up", "exists", event="Signed Up"))
        a(Aggregate("trial_started", "exists", event="Trial Started"))
        a(Aggregate("emails_opened", "count", event="Email Opened"))
        a(Aggregate("emails_clicked", "count", event="Email Link Clicked"))
        a(Aggregate("unsubscribed", "exists", event="Unsubscribed"))
        a(Aggregate("referrals_made", "count", event="Referral Converted"))
        a(Aggregate("nps", "last_number", event="NPS Survey Answered", path="score"))

    def _user_trait(self, trait: TraitDefinition) -> None:
        if trait.where:
            node = parse(trait.where)
            check(node, trait.where, EVENT_SCOPE)
        func = trait.aggregate
        self.aggregates.append(
            Aggregate(
                trait.key,
                func,
                event=trait.event,
                path=trait.property,
                where=trait.where,
                days=trait.days,
            )
        )
        self.user_traits[trait.key] = trait.value_type()

    def _dependency_order(self) -> list[str]:
        """Segments and the stage in an order where each comes after what it uses."""
        uses: dict[str, set[str]] = {"stage": set()}
        for key, node in ((k, n) for k, (_, n) in self.segment_rules.items()):
            uses[key] = _segments_used(node) | (
                {"stage"} if "stage" in references(node)[0] else set()
            )
        for _, _, node in self.stage_rules:
            uses["stage"] |= _segments_used(node)
        order: list[str] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                cycle = " → ".join([*visiting[visiting.index(name) :], name])
                raise RuleError(f"rules depend on each other in a circle: {cycle}")
            visiting.append(name)
            for used in sorted(uses.get(name, ())):
                visit(used)
            visiting.pop()
            order.append(name)

        for name in ["stage", *self.segment_rules]:
            visit(name)
        return order

    # --- signature ----------------------------------------------------------------------------

    def signature(self) -> str:
        """Changes when the stored columns change: then a full recompute is needed."""
        parts = [repr(a) for a in self.aggregates] + sorted(self.profile_traits.items())
        if self.keeps_first_order_value:
            parts.append(FIRST_ORDER_VALUE)
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """Changes with any definition or the day's models: the key of compiled queries."""
        body = (
            self.definitions.model_dump_json() + repr(sorted(self.model_fields)) + repr(self.models)
        )
        return hashlib.sha1(body.encode()).hexdigest()[:16]

    @property
    def models_missing(self) -> bool:
        """Whether a rule reads a fitted field the attached models were not fitted for."""
        return bool(self.model_fields - self.models.fields)

    @property
    def keeps_first_order_value(self) -> bool:
        """`clv_12m` needs each customer's first order value (Gamma-Gamma leaves it out)."""
        return "clv_12m" in self.model_fields

    def windows(self) -> set[int]:
        return {a.days for a in self.aggregates if a.days}

    def state_schema(self) -> dict[str, str]:
        """Columns of the stored traits (what `traits()` returns), in order."""
        columns = {"customer_id": "int64", **STORED_BUILTINS}
        for aggregate in self.aggregates:
            columns.setdefault(aggregate.column, aggregate.ibis_type)
        for column in self.profile_traits.values():
            columns[column] = "string"
        for column in self._dated_columns():
            columns[_epoch_column(column)] = "float64"
        if self.keeps_first_order_value:
            columns[FIRST_ORDER_VALUE] = "float64"
        return columns

    def _dated_columns(self) -> list[str]:
        """Timestamps that rules read as "days since": kept in epoch seconds too, so a rule
        evaluation over every customer is plain arithmetic."""
        calls = [c for key, c in self.call_columns.items() if key[0] == "days_since"]
        return [*DAYS_SINCE.values(), *calls]

    # --- traits -------------------------------------------------------------------------------

    def traits(
        self, as_of: ir.TimestampValue, *, only: str | None = None, jsonb: bool = False
    ) -> ir.Table:
        """Every customer's traits from the whole history (or those of the customers listed
        in the temporary table `only`)."""
        customers = CUSTOMERS.filter(CUSTOMERS.merged_into.isnull())
        log = events_table(jsonb=jsonb)
        events = log.filter(log.timestamp <= as_of)
        orders = ORDERS.filter(ORDERS.ordered_at <= as_of)
        refunds = REFUNDS.filter(REFUNDS.refunded_at <= as_of)
        if only is not None:
            ids = listed(only).customer_id
            customers = customers.filter(customers.customer_id.isin(ids))
            events = events.filter(events.customer_id.isin(ids))
            orders = orders.filter(orders.customer_id.isin(ids))
            refunds = refunds.filter(refunds.customer_id.isin(ids))
        lasting = [a for a in self.aggregates if not a.days]
        parts = [
            self._event_aggregates(events, as_of, json=json, wanted=lasting)
            for json in (False, True)
        ]
        parts += self._windowed_aggregates(events, as_of)
        parts += self._sales_aggregates(orders, refunds)
        if self.profile_traits:
            parts.append(self._profile_aggregates(events))
        joined = _joined(customers.select("customer_id", "created_at"), parts)
        joined = joined.filter(joined.first_seen_at.notnull() | (joined.created_at <= as_of)).drop(
            "created_at"
        )
        return self._finish_traits(joined)

    @property
    def mergeable(self) -> bool:
        """Whether stored traits can be brought forward (`merged_traits`): every aggregate
        over all time merges (an average or a distinct count does not)."""
        return all(a.days or a.func in MERGES for a in self.aggregates)

    def merged_traits(
        self, as_of: ir.TimestampValue, previous: ir.TimestampValue, *, jsonb: bool = False
    ) -> ir.Table:
        """The traits of the customers listed in `_kp_merged` as of `as_of`, from their
        traits stored by the run at `previous` and only the events dated after it: counts
        add up, the latest value wins, windows are recounted over their last days, orders
        and refunds are recounted (a few rows each). Exact for a customer whose stored
        traits counted every event dated up to `previous` and no other — the caller lists
        only stored, unmerged customers without late events, merges or anything else that
        rewrote their past."""
        ids = listed("_kp_merged").customer_id
        log = events_table(jsonb=jsonb)
        # only the events dated after the previous run or inside a window are read: a
        # range an index on (customer_id, timestamp) answers without the older history
        since = previous
        if self.windows():
            since = ibis.least(previous, as_of - ibis.interval(days=max(self.windows())))
        mine = log.filter(log.customer_id.isin(ids), log.timestamp > since, log.timestamp <= as_of)
        new = mine.filter(mine.timestamp > previous)
        lasting = [a for a in self.aggregates if not a.days]
        parts = [
            _renamed(self._event_aggregates(new, as_of, json=json, wanted=lasting))
            for json in (False, True)
        ]
        parts += self._windowed_aggregates(mine, as_of)
        if self.profile_traits:
            parts.append(_renamed(self._profile_aggregates(new)))
        orders = ORDERS.filter(ORDERS.customer_id.isin(ids), ORDERS.ordered_at <= as_of)
        refunds = REFUNDS.filter(REFUNDS.customer_id.isin(ids), REFUNDS.refunded_at <= as_of)
        parts += self._sales_aggregates(orders, refunds)
        stored = ibis.table(self.state_schema(), name="customer_state")
        kept = [a.column for a in lasting] + list(self.profile_traits.values())
        t = _joined(stored.filter(stored.customer_id.isin(ids)).select("customer_id", *kept), parts)
        merged = {a.column: _merge(a.func, t[a.column], t[_NEW + a.column]) for a in lasting}
        for column in self.profile_traits.values():
            merged[column] = t[_NEW + column].coalesce(t[column])
        t = t.mutate(**merged)
        return self._finish_traits(t.drop(*[c for c in t.columns if c.startswith(_NEW)]))

    def _windowed_aggregates(
        self, events: ir.Table, as_of: ir.TimestampValue
    ) -> list[ir.Table | None]:
        """The aggregates over the last N days, from a scan of only the events inside the
        longest window (and only the events they name): an event log is written roughly in
        time order, so the engine skips the older blocks by their min/max timestamps."""
        windowed = [a for a in self.aggregates if a.days]
        if not windowed:
            return []
        longest = max(a.days or 0 for a in windowed)
        recent = events.filter(events.timestamp > as_of - ibis.interval(days=longest))
        names = {a.event for a in windowed}
        if None not in names:  # every window counts named events: read only those
            recent = recent.filter(recent.event.isin(sorted(names)))
        return [
            self._event_aggregates(recent, as_of, json=json, wanted=windowed)
            for json in (False, True)
        ]

    def _sales_aggregates(self, orders: ir.Table, refunds: ir.Table) -> list[ir.Table]:
        return [
            _order_aggregates(orders, first_value=self.keeps_first_order_value),
            refunds.group_by("customer_id").aggregate(
                refunds=refunds.count(), refunded_amount=refunds.amount.sum()
            ),
        ]

    def _event_aggregates(
        self,
        events: ir.Table,
        as_of: ir.TimestampValue,
        *,
        json: bool,
        wanted: list[Aggregate] | None = None,
    ) -> ir.Table | None:
        """One scan for the aggregates that read no JSON, one (over the events they name)
        for those that do."""
        wanted = [
            a for a in (self.aggregates if wanted is None else wanted) if a.needs_json == json
        ]
        if not wanted:
            return None
        if json:
            names = {a.event for a in wanted}
            if None not in names:
                events = events.filter(events.event.isin(sorted(names)))
        metrics = {a.column: _aggregate(events, a, as_of) for a in wanted}
        return events.group_by("customer_id").aggregate(**metrics)

    def _profile_aggregates(self, events: ir.Table) -> ir.Table:
        identifies = events.filter(events.type == "identify")
        metrics = {}
        for name, column in self.profile_traits.items():
            value = json_text(identifies.traits, name.split(".")[1:])
            metrics[column] = value.argmax(identifies.timestamp, where=value.notnull())
        return identifies.group_by("customer_id").aggregate(**metrics)

    def _finish_traits(self, t: ir.Table) -> ir.Table:
        """Zeros where nothing happened (counts, sums), then the time-independent ratios."""
        zero = {"orders": 0, "revenue": 0.0, "refunds": 0, "refunded_amount": 0.0}
        for a in self.aggregates:
            if a.func in ("count", "distinct", "sum"):
                zero[a.column] = 0
            elif a.func in ("exists", "known"):
                zero[a.column] = False
        schema = self.state_schema()
        t = t.mutate(**{name: t[name].fill_null(value) for name, value in zero.items()})
        t = t.mutate(
            average_order_value=t.revenue / t.orders.nullif(0),
            net_revenue=t.revenue - t.refunded_amount,
            previous_order_gap_days=_whole_days(t.last_order_at, t.previous_order_at),
            **{_epoch_column(c): t[c].epoch_seconds() for c in self._dated_columns()},
        )
        return t.select(*[t[c].cast(kind).name(c) for c, kind in schema.items()])

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(self, state: ir.Table, as_of: ir.TimestampValue) -> ir.Table:
        """`state` plus `new_stage` and `new_segments` (",a,b," in key order)."""
        epoch = as_of.epoch_seconds()
        derived = {
            name: _days(epoch, state[_epoch_column(column)]) for name, column in DAYS_SINCE.items()
        }
        for key, column in self.call_columns.items():
            if key[0] == "days_since":
                derived[column + "_days"] = _days(epoch, state[_epoch_column(column)])
        t = state.mutate(**derived)
        if self.model_fields:
            t = fitted_values(t, self.models, epoch, self.model_fields)
        t = t.mutate(health_score=self.health_score(t))
        for name in self.order:
            if name == "stage":
                t = t.mutate(new_stage=self._stage_expr(t))
            else:
                _, node = self.segment_rules[name]
                t = t.mutate(**{_segment_column(name): self._condition(t, node)})
        segments = ibis.literal(",")
        for key in sorted(self.segment_rules):
            segments = segments + t[_segment_column(key)].ifelse(f"{key},", "")
        return t.mutate(new_segments=segments)

    def health_parts(self, t: ir.Table) -> dict[str, ir.FloatingValue]:
        """Each health component's score, 0–100 (NULL when the customer has no value)."""
        parts = {}
        for component in self.definitions.health.components:
            _, node = self.health_values[component.key]
            value = self.value(t, node).cast("float64")
            span = component.best - component.worst
            scaled = (value - component.worst) / span
            # not greatest/least: both engines skip NULLs there, and no value must stay NULL
            clamped = ibis.cases((scaled < 0.0, 0.0), (scaled > 1.0, 1.0), else_=scaled)
            parts[component.key] = clamped * 100.0
        return parts

    def health_score(self, t: ir.Table) -> ir.FloatingValue:
        """The weighted mean of the components a customer has a value for, 0–100."""
        points = ibis.literal(0.0)
        weights = ibis.literal(0.0)
        parts = self.health_parts(t)
        for component in self.definitions.health.components:
            part = parts[component.key]
            points = points + (part * component.weight).fill_null(0.0)
            weights = weights + part.notnull().ifelse(component.weight, 0.0)
        return (points / weights.nullif(0.0)).round(1)

    def days_ticked(
        self, state: ir.Table, at: ir.TimestampValue, previous: ir.TimestampValue
    ) -> ir.BooleanValue:
        """Whether a "days since" value a stage or segment rule reads has moved between two
        moments (`previous` ≤ `at`) far enough to change the rule's outcome: across one of
        the day counts it is compared with (`days_since_last_order > 180` changes only
        when the count goes from 180 to 181), or at all where it is used otherwise. NULL
        where no date is stored: meant for a filter, which drops NULL rows as it does false
        ones (filling NULLs with false per column doubled the scan's cost)."""
        now, then = at.epoch_seconds(), previous.epoch_seconds()
        ticked = ibis.literal(False)
        for column, points in self.tick_points().items():
            epoch = state[_epoch_column(column)]
            if points is None:
                moved = _days(then, epoch) != _days(now, epoch)
            else:
                # the count reaches k between the moments: then - k days < epoch <= now - k
                # days, a plain range; a second of slack either side can only add
                # customers (evaluated exactly), never miss one to rounding
                moved = ibis.literal(False)
                for k in sorted(points):
                    moved = moved | epoch.between(then - (k * 86400 + 1), now - (k * 86400 - 1))
            ticked = ticked | moved
        return ticked

    def tick_points(self) -> dict[str, frozenset[int] | None]:
        """For each dated column the stage and segment rules read: the day counts at which
        an outcome can change (a count crossing from below k to k or above), or None when
        a rule uses the count in a way that can change with any day."""

        def column_of(node: Node) -> str | None:
            if isinstance(node, Field):
                return DAYS_SINCE.get(node.name)
            if isinstance(node, Call) and node.name == "days_since":
                return self.call_columns[_call_key(node)]
            return None

        points: dict[str, set[int] | None] = {}

        def add(column: str, ks: set[int] | None) -> None:
            if column in points and points[column] is None:
                return
            points[column] = None if ks is None else points.get(column, set()) | ks

        def visit(node: Node, *, any_use: bool = False) -> None:
            column = column_of(node)
            if column is not None:
                add(column, None)
                return
            if not any_use and isinstance(node, Binary) and node.op in COMPARISONS:
                for side, other, op in (
                    (node.left, node.right, node.op),
                    (node.right, node.left, _MIRROR[node.op]),
                ):
                    column, number = column_of(side), _number(plain_literal(other))
                    if column is not None and number is not None:
                        add(column, _critical_days(op, number))
                        return
            if not any_use and isinstance(node, In):
                column = column_of(node.operand)
                numbers = [_number(plain_literal(item)) for item in node.items.items]
                if column is not None and None not in numbers:
                    add(column, {k for n in numbers for k in _critical_days("==", n)})
                    return
            if isinstance(node, IsNull) and column_of(node.operand) is not None:
                return  # a count is NULL exactly when its date is, at any moment
            for child in children(node):
                visit(child, any_use=any_use)

        rules = [node for _, _, node in self.stage_rules]
        rules += [node for _, node in self.segment_rules.values()]
        for node in rules:
            visit(node)
        if any("health_score" in references(node)[0] for node in rules):
            for _, node in self.health_values.values():
                visit(node, any_use=True)
        return {c: None if ks is None else frozenset(ks) for c, ks in points.items()}

    def _stage_expr(self, t: ir.Table) -> ir.StringValue:
        cases = [(self._condition(t, node), key) for key, _, node in self.stage_rules]
        return ibis.cases(*cases, else_=ibis.null("string"))

    def _condition(self, t: ir.Table, node: Node) -> ir.BooleanValue:
        return compile_condition(node, self._field_resolver(t), self._call_resolver(t))

    def value(self, t: ir.Table, node: Node) -> ir.Value:
        return compile_rule(node, self._field_resolver(t), self._call_resolver(t))

    def _field_resolver(self, t: ir.Table) -> Callable[[str], ir.Value]:
        def resolve(name: str) -> ir.Value:
            if name == "stage":
                return t.new_stage
            if name.startswith("traits."):
                return t[self.profile_traits[name]]
            return t[name]

        return resolve

    def _call_resolver(self, t: ir.Table) -> Callable[[Call], ir.Value]:
        return lambda call: t[self.call_column(call)]

    def call_column(self, call: Call) -> str:
        """The column (after `evaluate`) holding the value of a rule's function call."""
        if call.name == "in_segment":
            return _segment_column(str(literal_value(call.args[0])))
        column = self.call_columns[_call_key(call)]
        return column + "_days" if call.name == "days_since" else column

    def stage_causes(self) -> dict[str, str]:
        return {key: rule for key, rule, _ in self.stage_rules}


_MIRROR = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _number(literal: Literal | None) -> float | None:
    value = None if literal is None else literal.value
    return None if isinstance(value, bool) or not isinstance(value, int | float) else value


def _critical_days(op: str, number: float) -> set[int]:
    """The whole day counts k where `days op number` changes as days goes from k-1 to k."""
    if op in (">", "<="):
        return {math.floor(number) + 1}
    if op in (">=", "<"):
        return {math.ceil(number)}
    return {int(number), int(number) + 1} if float(number).is_integer() else set()


_NEW = "_new_"  # prefix of an aggregate over the events after the stored traits


def _renamed(part: ir.Table | None) -> ir.Table | None:
    if part is None:
        return None
    return part.rename({_NEW + c: c for c in part.columns if c != "customer_id"})


def _joined(base: ir.Table, parts: list[ir.Table | None]) -> ir.Table:
    for part in parts:
        if part is not None:
            base = base.left_join(part, "customer_id").drop("customer_id_right")
    return base


def _merge(func: str, stored: ir.Value, new: ir.Value) -> ir.Value:
    """A stored aggregate brought forward with the same aggregate over later events (NULL
    when there were none)."""
    how = MERGES[func]
    if how == "add":
        return stored.fill_null(0) + new.fill_null(0)
    if how == "or":
        return stored.fill_null(False) | new.fill_null(False)
    if how == "earlier":
        return stored.coalesce(new)
    if how == "later":
        return new.coalesce(stored)
    pick = ibis.least if how == "least" else ibis.greatest
    return ibis.cases((new.isnull(), stored), (stored.isnull(), new), else_=pick(stored, new))


def _call_key(call: Call) -> tuple:
    """(function, event, property, days) of an aggregate call, however it was written."""
    bound = call_arguments(call, FUNCTIONS[call.name])
    days = bound.get("days")
    return (call.name, bound.get("event"), bound.get("property"), int(days) if days else None)


def _epoch_column(column: str) -> str:
    return f"_e_{column}"


def _days(epoch: ir.NumericValue, since: ir.NumericValue) -> ir.IntegerValue:
    """Whole days from epoch second `since` to epoch second `epoch`."""
    return ((epoch - since) / 86400).floor().cast("int64")


def _segment_column(key: str) -> str:
    return f"_seg_{key}"


def _segments_used(node: Node) -> set[str]:
    calls = references(node)[1]
    return {str(literal_value(c.args[0])) for c in calls if c.name == "in_segment"}


def _json_path(column: ir.Value, path: list[str]) -> ir.Value:
    for part in path:
        column = column[part]
    return column


def json_text(column: ir.Value, path: list[str]) -> ir.StringValue:
    """A JSON value as text, whatever its JSON type ("pro", "35", "true")."""
    raw = _json_path(column, path).cast("string")
    return raw.re_replace(r'^"|"$', "").nullif("null")


def _aggregate(events: ir.Table, a: Aggregate, as_of: ir.TimestampValue) -> ir.Value:
    cond = ibis.literal(True)
    if a.event is not None:
        cond = cond & (events.event == a.event)
    if a.types:
        cond = cond & events.type.isin(list(a.types))
    if a.exclude:
        cond = cond & ~events.event.isin(list(a.exclude)).fill_null(False)
    if a.days:
        cond = cond & (events.timestamp > as_of - ibis.interval(days=a.days))
    if a.where:
        node = parse(a.where)
        cond = cond & compile_condition(node, lambda name: _event_field(events, name), _no_calls)
    func = a.func
    if func == "count":
        return events.count(where=cond)
    if func == "exists":
        return events.count(where=cond) > 0
    if func == "known":
        return events.user_id.notnull().any()
    if func == "min_ts":
        return events.timestamp.min(where=cond)
    if func == "max_ts":
        return events.timestamp.max(where=cond)
    path = (a.path or "").split(".")
    if func in ("first", "last", "distinct"):
        text = json_text(events[a.source], path)
        if func == "distinct":
            return text.nunique(where=cond)
        pick = text.argmin if func == "first" else text.argmax
        return pick(events.timestamp, where=cond & text.notnull())
    number = json_text(events[a.source], path).try_cast("float64")
    if func == "last_number":
        return number.argmax(events.timestamp, where=cond & number.notnull())
    return getattr(number, {"avg": "mean"}.get(func, func))(where=cond)


def _event_field(events: ir.Table, name: str) -> ir.Value:
    head, _, rest = name.partition(".")
    if rest:
        return json_text(events[head], rest.split("."))
    return events[head]


def _no_calls(call: Call) -> ir.Value:
    raise RuleError(f"functions cannot be used in a trait filter: {call.name}()")


def _order_aggregates(orders: ir.Table, *, first_value: bool = False) -> ir.Table:
    ranked = orders.mutate(
        position=ibis.row_number().over(
            group_by=orders.customer_id, order_by=ibis.desc(orders.ordered_at)
        ),
        amount=orders.revenue.coalesce(orders.total, 0.0),
    )
    extra = {}
    if first_value:  # as `keepers.engine.clv.order_summary`: of equally early, the smallest
        ranked = ranked.mutate(
            _first=ibis.row_number().over(
                group_by=ranked.customer_id, order_by=[ranked.ordered_at, ranked.amount]
            )
        )
        extra[FIRST_ORDER_VALUE] = ranked.amount.max(where=ranked._first == 0)
    return ranked.group_by("customer_id").aggregate(
        orders=ranked.count(),
        revenue=ranked.amount.sum(),
        first_order_at=ranked.ordered_at.min(),
        last_order_at=ranked.ordered_at.max(),
        previous_order_at=ranked.ordered_at.max(where=ranked.position == 1),
        **extra,
    )


def _whole_days(later: ir.TimestampValue, earlier: ir.TimestampValue) -> ir.IntegerValue:
    return ((later.epoch_seconds() - earlier.epoch_seconds()) / 86400).floor().cast("int64")
