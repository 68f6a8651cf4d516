"""The health score: a weighted mean, 0–100, of components defined in the definitions
(`health:`), each a number from traits scored linearly between its worst and best value.

The same expression is the `health_score` field stage and segment rules can use, so the
report, a customer's explanation and a rule such as `health_score < 40` always agree.
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import Context, ratio
from keepers.engine.compute import STATE, evaluate_as_of, state_exists
from keepers.engine.plan import Plan
from keepers.errors import InvalidInput

# (key, lowest score in the band), best first
BANDS = (("excellent", 80), ("good", 60), ("fair", 40), ("poor", 20), ("critical", 0))
BAND_KEYS = tuple(b for b, _ in BANDS)


def band_of(score: ir.FloatingValue) -> ir.StringValue:
    return ibis.cases(*((score >= low, key) for key, low in BANDS), else_=ibis.null("string"))


def _scored(ctx: Context) -> tuple[Plan, str, Any]:
    """The plan, the state table's name and a builder of per-customer health rows."""
    plan = Plan.build(ctx.definitions)
    if ctx.current:
        if not state_exists(ctx.tx):
            raise InvalidInput("nothing computed yet: run `keepers compute` first")
        table = STATE
    else:
        table = evaluate_as_of(ctx.tx, plan, ctx.as_of)
    state = ibis.table({**plan.state_schema(), "stage": "string"}, name=table)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        t = plan.evaluate(state, as_of)
        parts = plan.health_parts(t)
        return t.select(
            "customer_id",
            "stage",
            health_score=t.health_score,
            band=band_of(t.health_score),
            **{f"score_{k}": v.round(1) for k, v in parts.items()},
        )

    return plan, table, build


def health(ctx: Context) -> dict[str, Any]:
    plan, table, build = _scored(ctx)
    components = ctx.definitions.health.components

    def summary(as_of: ir.TimestampValue) -> ir.Table:
        h = build(as_of)
        return h.group_by("band").aggregate(
            customers=h.count(),
            average=h.health_score.mean(),
            **{f"avg_{c.key}": h[f"score_{c.key}"].mean() for c in components},
            **{f"has_{c.key}": h[f"score_{c.key}"].count() for c in components},
        )

    def by_stage(as_of: ir.TimestampValue) -> ir.Table:
        h = build(as_of)
        return h.group_by("stage").aggregate(customers=h.count(), average=h.health_score.mean())

    key = (plan.fingerprint(), table)
    bands = {r["band"]: r for r in ctx.rows(("health", *key), summary)}
    stages = {r["stage"]: r for r in ctx.rows(("health_stage", *key), by_stage)}
    scored = sum(int(r["customers"]) for b, r in bands.items() if b is not None)
    total_weight = sum(c.weight for c in components)
    component_rows = []
    for c in components:
        have = sum(int(r[f"has_{c.key}"] or 0) for r in bands.values())
        points = sum(
            float(r[f"avg_{c.key}"] or 0) * int(r[f"has_{c.key}"] or 0) for r in bands.values()
        )
        component_rows.append(
            {
                "component": c.key,
                "label": c.label or c.key,
                "value": c.value,
                "best": c.best,
                "worst": c.worst,
                "weight": c.weight,
                "weight_share": ratio(c.weight, total_weight),
                "customers_with_value": have,
                "average_score": round(points / have, 1) if have else None,
            }
        )
    overall = sum(float(r["average"] or 0) * int(r["customers"]) for b, r in bands.items() if b)
    order = ctx.definitions.stage_model.funnel_order()
    return {
        "as_of": ctx.as_of.isoformat(),
        "customers": scored,
        "average": round(overall / scored, 1) if scored else None,
        "bands": [
            {
                "band": b,
                "from": low,
                "customers": int(bands.get(b, {}).get("customers") or 0),
                "share": ratio(int(bands.get(b, {}).get("customers") or 0), scored),
            }
            for b, low in BANDS
        ],
        "by_stage": [
            {
                "stage": s,
                "customers": int(stages[s]["customers"]),
                "average": _round(stages[s]["average"]),
            }
            for s in [*order, *sorted(k for k in stages if k not in order and k)]
            if s in stages
        ],
        "components": component_rows,
    }


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def who(ctx: Context, *, band: str | None = None, stage: str | None = None) -> Any:
    """Customers in a health band (and/or stage), with each component's score."""
    if band is not None and band not in BAND_KEYS:
        raise InvalidInput(f"band must be one of {', '.join(BAND_KEYS)}, not '{band}'")
    plan, table, build_scored = _scored(ctx)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        h = build_scored(as_of)
        conds = [h.health_score.notnull()]
        if band is not None:
            conds.append(h.band == ibis.literal(band))
        if stage is not None:
            conds.append(h.stage == ibis.literal(stage))
        return h.filter(*conds)

    return ("health_who", plan.fingerprint(), table, band, stage), build
