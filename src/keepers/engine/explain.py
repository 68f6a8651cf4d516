"""Why a customer is where they are: every stage rule in order and every segment, with the
value of each condition and of the traits it reads — computed by the same compiled rules
as the set-based run, over a one-customer table, so the explanation cannot drift from it."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np

from keepers.domain.rules import Call, Field, Node, source_of, walk
from keepers.engine.clv import fit_day, repeat_spend, rft
from keepers.engine.compile import explain_terms
from keepers.engine.compute import (
    affected_traits,
    render,
    temp_table,
    utc,
)
from keepers.engine.expectation import CLV_MONTHS, EXPECTED_DAYS, MONTHLY_DISCOUNT
from keepers.engine.fitted import EXPECTED_FIELDS, FIELDS, attach_models
from keepers.engine.plan import DAYS_SINCE, Plan
from keepers.engine.scores import SCORED_FIELDS, ready_fields, scorers_for
from keepers.models.clv import customer_lifetime_value
from keepers.store.database import Tx


def explain_customer(
    tx: Tx, plan: Plan, customer_id: int, as_of: datetime, *, scores: bool = False
) -> dict[str, Any]:
    """Traits, stage rules and segments of one customer as of a moment; with `scores`, also
    every score whether a rule reads it or not — health with its components, P(alive),
    RFM, expected orders, CLV, and churn risk and persona when the day's are computed."""
    as_of = utc(as_of)
    if scores:
        scored = ready_fields(plan.definitions, fit_day(as_of))
        scored |= {f for scorer in scorers_for(plan.model_fields) for f in scorer.fields}
        # expected orders and CLV as SQL are thousands of terms, which a one-customer
        # query would spend most of its time parsing: unless a rule reads them they are
        # computed below from the same day's models, in NumPy
        cheap = FIELDS.keys() - SCORED_FIELDS.keys() - EXPECTED_FIELDS
        plan.model_fields |= cheap | scored
    attach_models(tx, plan, as_of, also=EXPECTED_FIELDS if scores else frozenset())
    temp_table(tx, "_kp_affected", f"SELECT CAST({int(customer_id)} AS BIGINT) AS customer_id")
    traits_sql = render(tx, plan, "affected", lambda t: affected_traits(tx, plan, t), as_of)
    temp_table(tx, "_kp_one", traits_sql)
    rules = [(f"stage:{key}", rule, node) for key, rule, node in plan.stage_rules]
    rules += [(f"segment:{key}", rule, node) for key, (rule, node) in plan.segment_rules.items()]

    def explained(at: ir.TimestampValue) -> ir.Table:
        t = plan.evaluate(ibis.table(plan.state_schema(), name="_kp_one"), at)
        columns: dict[str, Any] = {}
        if scores:
            for key, part in plan.health_parts(t).items():
                _, node = plan.health_values[key]
                columns[f"_health_value_{key}"] = plan.value(t, node)
                columns[f"_health_part_{key}"] = part
        for index, (_, _, node) in enumerate(rules):
            columns[f"_rule_{index}"] = plan.value(t, node)
            for term_index, term in enumerate(explain_terms(node)):
                columns[f"_term_{index}_{term_index}"] = plan.value(t, term)
        return t.mutate(**columns)

    # compiled once per plan and process, as the compute's queries: compiling is the slow part
    kind = "explain_scores" if scores else "explain"
    rows = tx.fetch_arrow(render(tx, plan, kind, explained, as_of)).to_pylist()
    tx.execute("DROP TABLE IF EXISTS _kp_one")
    tx.execute("DROP TABLE IF EXISTS _kp_affected")
    if not rows:
        return {"exists": False, "as_of": as_of.isoformat()}
    row = rows[0]
    missing = dict(plan.models.missing)
    return {
        "exists": True,
        "as_of": as_of.isoformat(),
        "traits": _traits(plan, row),
        **({"missing": missing} if missing else {}),
        **({"scores": _scores(tx, plan, row, customer_id, as_of)} if scores else {}),
        "stage": row["new_stage"],
        "stage_rules": [
            _rule(plan, row, index, key.split(":", 1)[1], rule, node, "stage")
            for index, (key, rule, node) in enumerate(rules)
            if key.startswith("stage:")
        ],
        "segments": [
            _rule(plan, row, index, key.split(":", 1)[1], rule, node, "segment")
            for index, (key, rule, node) in enumerate(rules)
            if key.startswith("segment:")
        ],
    }


def _traits(plan: Plan, row: dict[str, Any]) -> dict[str, Any]:
    names = [c for c in plan.state_schema() if not c.startswith("_") and c != "customer_id"]
    names += list(DAYS_SINCE)
    names += [name for name in FIELDS if name in plan.model_fields]
    traits = {name: _plain(row.get(name)) for name in names}
    for name, column in plan.profile_traits.items():
        traits[name] = _plain(row.get(column))
    return traits


def _scores(
    tx: Tx, plan: Plan, row: dict[str, Any], customer_id: int, as_of: datetime
) -> dict[str, Any]:
    """Every score of the customer; the health score with what each component gave."""
    health = [
        {
            "component": c.key,
            "label": c.label or c.key.replace("_", " "),
            "value": _plain(row.get(f"_health_value_{c.key}")),
            "points": _rounded(row.get(f"_health_part_{c.key}")),
            "weight": c.weight,
            "rule": c.value,
        }
        for c in plan.definitions.health.components
    ]
    fitted = {name: _plain(row.get(name)) for name in FIELDS if name in plan.model_fields}
    for name, value in _predicted(tx, plan, row, customer_id, as_of).items():
        fitted.setdefault(name, value)
    ordered = {name: fitted[name] for name in FIELDS if name in fitted}
    return {"health_score": _plain(row.get("health_score")), "health": health, **ordered}


def _predicted(
    tx: Tx, plan: Plan, row: dict[str, Any], customer_id: int, as_of: datetime
) -> dict[str, float | None]:
    """`expected_orders_90d` and `clv_12m` of one customer with the day's BG/NBD and
    Gamma-Gamma in NumPy (the exact formulas the SQL approximates within 1e-8)."""
    none: dict[str, float | None] = dict.fromkeys(sorted(EXPECTED_FIELDS))
    orders = row.get("orders") or 0
    if orders < 1:
        return none
    models = plan.models  # fitted for these fields too (`attach_models(also=…)`)
    if models.purchase is None or models.expectation is None:
        return none
    first, last = row["_e_first_order_at"], row["_e_last_order_at"]
    x, t_x, age = rft(np.array([orders]), np.array([first]), np.array([last]), as_of.timestamp())
    purchase = models.purchase
    expected = purchase.conditional_expected_purchases(EXPECTED_DAYS / 7.0, x, t_x, age)
    out: dict[str, float | None] = {"expected_orders_90d": float(expected[0]), "clv_12m": None}
    if models.spend is not None:
        first_value = tx.execute(
            "SELECT COALESCE(revenue, total, 0) AS v FROM orders WHERE customer_id = ? "
            "AND ordered_at <= ? ORDER BY ordered_at, v LIMIT 1",
            [customer_id, as_of],
        )[0][0]
        _, value, usable = repeat_spend(
            np.array([orders]), np.array([row.get("revenue") or 0.0]), np.array([first_value])
        )
        spend = models.spend.conditional_expected_spend(x, np.where(usable, value, 0.0))
        clv = customer_lifetime_value(
            purchase, x, t_x, age, spend, months=CLV_MONTHS, monthly_discount_rate=MONTHLY_DISCOUNT
        )
        out["clv_12m"] = float(clv[0])
    return out


def _rounded(value: Any) -> float | None:
    value = _plain(value)
    return None if value is None else round(float(value), 1)


def _rule(
    plan: Plan, row: dict[str, Any], index: int, key: str, rule: str, node: Node, kind: str
) -> dict[str, Any]:
    terms = [
        {
            "condition": source_of(term, rule),
            "value": _plain(row[f"_term_{index}_{term_index}"]),
            "reads": _reads(plan, row, term, rule),
        }
        for term_index, term in enumerate(explain_terms(node))
    ]
    return {kind: key, "rule": rule, "matched": bool(row[f"_rule_{index}"]), "conditions": terms}


def _reads(plan: Plan, row: dict[str, Any], term: Node, rule: str) -> dict[str, Any]:
    """The values a condition read: its fields and aggregate calls."""
    values: dict[str, Any] = {}
    for node in walk(term):
        if isinstance(node, Field):
            column = plan.profile_traits.get(node.name, node.name)
            values[node.name] = _plain(row.get("new_stage" if node.name == "stage" else column))
        elif isinstance(node, Call):
            values[source_of(node, rule)] = _plain(row.get(plan.call_column(node)))
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
