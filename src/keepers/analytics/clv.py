"""Customer lifetime value: what each customer has spent, and what they are expected to.

One query gives, per customer with an order up to the as-of moment: orders, the first and
last order time, revenue (order value: revenue, else total) and the first order's value.
Then:

- **P(alive)** and **expected orders** in the next `horizon_days` come from BG/NBD (Fader,
  Hardie & Lee 2005) with x = orders − 1, t_x and T in weeks — the very model and
  parameters behind the `p_alive` trait of stage and segment rules (fitted on orders up to
  midnight of the as-of day, see `keepers.engine.clv`), so this report and a rule such as
  `p_alive < 0.3` always agree;
- **expected spend** per future order from Gamma-Gamma (Fader, Hardie & Lee 2005b), fitted
  like BG/NBD once per day, on repeat buyers with their average repeat-order value (the first
  order left out, as the model's authors do; of equally early orders the smallest is the
  first) — customers with one order get the population mean;
- **predicted CLV**: the expected orders in each of the next `months` months × expected
  spend, discounted at `monthly_discount` a month. With the defaults (90 days, 12 months,
  1 %) expected orders and CLV are the rule fields `expected_orders_90d` and `clv_12m`
  (`keepers.engine.expectation` computes them in SQL, within 1e-8 of these values).

P(alive) bands: *alive* ≥ 0.7, *uncertain* ≥ 0.3, *likely gone* below — the churn risk of
a shop without subscriptions. Everything is shown by the stage customers were in at the
as-of moment. Too few buyers for a fit (10 customers, 5 repeat buyers) is an error that
says so; a Gamma-Gamma that cannot be fitted leaves spend and CLV out, with the reason.
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from keepers.analytics.base import Context, live_orders, ratio
from keepers.engine.clv import (
    fit_day,
    order_summary,
    purchase_model,
    repeat_spend,
    rft,
    spend_model,
)
from keepers.engine.compute import STATE, evaluate_as_of, state_exists
from keepers.errors import InvalidInput, KeepersError
from keepers.models.clv import customer_lifetime_value

BANDS = (("alive", 0.7), ("uncertain", 0.3), ("likely_gone", 0.0))
VALUES = ibis.table(
    {
        "customer_id": "int64",
        "revenue": "float64",
        "p_alive": "float64",
        "expected_orders": "float64",
        "expected_spend": "float64",
        "clv": "float64",
        "band": "string",
    },
    name="_kp_clv",
)
DAYS_PER_WEEK = 7.0


def order_values(as_of: ir.TimestampValue) -> ir.Table:
    return order_summary(live_orders(as_of))


def _value(ctx: Context, horizon_days: int, months: int, monthly_discount: float) -> dict:
    """Fit, predict for every buyer, and stage the per-customer values as `_kp_clv`."""
    if not 1 <= horizon_days <= 3660:
        raise InvalidInput(f"horizon_days must be between 1 and 3660, not {horizon_days}")
    if not 1 <= months <= 120:
        raise InvalidInput(f"months must be between 1 and 120, not {months}")
    try:
        discount = float(monthly_discount)
    except (TypeError, ValueError):
        raise InvalidInput(f"monthly_discount must be a number, not '{monthly_discount}'") from None
    if not 0 <= discount < 1:
        raise InvalidInput(f"monthly_discount must be between 0 and 1, not {monthly_discount}")
    model = purchase_model(ctx.tx, ctx.as_of)
    values = ctx.arrow(("clv_order_values",), order_values)
    if model is None:
        raise InvalidInput(
            f"{len(values):,} customers have ordered by {fit_day(ctx.as_of).date()}; the "
            "purchase model needs at least 10, and 5 who ordered again"
        )
    column = {name: values.column(name).to_numpy() for name in values.column_names}
    orders = column["orders"].astype(np.float64)
    x, t_x, age = rft(orders, column["first"], column["last"], ctx.as_of.timestamp())
    revenue = column["revenue"].astype(np.float64)
    _, repeat_value, positive = repeat_spend(orders, revenue, column["first_value"])
    warnings: list[str] = []
    spend = clv = None
    gg, why = spend_model(ctx.tx, ctx.as_of)
    with threadpool_limits(limits=1, user_api="blas"):
        alive = model.probability_alive(x, t_x, age)
        expected = model.conditional_expected_purchases(horizon_days / DAYS_PER_WEEK, x, t_x, age)
        try:
            if gg is None:
                raise InvalidInput(why or "no repeat buyers")
            spend = gg.conditional_expected_spend(x, np.where(positive, repeat_value, 0.0))
            clv = customer_lifetime_value(
                model, x, t_x, age, spend, months=months, monthly_discount_rate=discount
            )
        except KeepersError as exc:
            warnings.append(f"Gamma-Gamma not fitted, so no spend or CLV: {exc.message}")
            gg, spend, clv = None, None, None
    band = np.full(len(x), BANDS[-1][0], dtype=object)
    for name, floor in reversed(BANDS[:-1]):
        band[alive >= floor] = name
    nothing = np.full(len(x), np.nan)
    ctx.tx.stage(
        VALUES.get_name(),
        pa.table(
            {
                "customer_id": pa.array(column["customer_id"], pa.int64()),
                "revenue": revenue,
                "p_alive": alive,
                "expected_orders": expected,
                "expected_spend": pa.array(nothing if spend is None else spend, from_pandas=True),
                "clv": pa.array(nothing if clv is None else clv, from_pandas=True),
                "band": pa.array(band.tolist(), pa.string()),
            }
        ),
    )
    return {
        "customers": len(x),
        "repeat_buyers": int(np.count_nonzero(x > 0)),
        "bgnbd": {k: round(v, 6) for k, v in model.as_dict().items()},
        "gamma_gamma": None if gg is None else {k: round(v, 6) for k, v in gg.as_dict().items()},
        "fitted_on_orders_before": fit_day(ctx.as_of).isoformat(),
        "warnings": warnings,
    }


def _stages(ctx: Context) -> str:
    """The table holding each customer's stage at the as-of moment."""
    if ctx.current:
        if not state_exists(ctx.tx):
            raise InvalidInput("nothing computed yet: run `keepers compute` first")
        return STATE
    from keepers.engine.plan import Plan

    return evaluate_as_of(ctx.tx, Plan.build(ctx.definitions), ctx.as_of)


def _summary(t: ir.Table) -> dict[str, Any]:
    return {
        "customers": t.count(),
        "revenue": t.revenue.sum(),
        "p_alive": t.p_alive.mean(),
        "expected_orders": t.expected_orders.sum(),
        "clv": t.clv.sum(),
    }


def clv(
    ctx: Context, horizon_days: int = 90, months: int = 12, monthly_discount: float = 0.01
) -> dict[str, Any]:
    fitted = _value(ctx, horizon_days, months, monthly_discount)
    stages = ibis.table({"customer_id": "int64", "stage": "string"}, name=_stages(ctx))

    def by_stage(as_of: ir.TimestampValue) -> ir.Table:
        v, s = VALUES, stages
        j = v.left_join(s, v.customer_id == s.customer_id).select(
            *[v[c] for c in VALUES.columns], stage=s.stage
        )
        return j.group_by("stage").aggregate(**_summary(j))

    def by_band(as_of: ir.TimestampValue) -> ir.Table:
        return VALUES.group_by("band").aggregate(**_summary(VALUES))

    def top_share(as_of: ir.TimestampValue) -> ir.Table:
        v = VALUES.mutate(share=ibis.percent_rank().over(order_by=ibis.desc(VALUES.clv)))
        return v.aggregate(top=v.clv.sum(where=v.share < 0.1), total=v.clv.sum())

    order = {s.key: i for i, s in enumerate(ctx.definitions.stage_model.stages)}
    stage_rows = ctx.rows(("clv_by_stage", stages.get_name()), by_stage)
    stage_rows.sort(key=lambda r: order.get(r["stage"], len(order)))
    bands = {r["band"]: r for r in ctx.rows(("clv_by_band",), by_band)}
    totals = ctx.rows(("clv_totals",), lambda at: VALUES.aggregate(**_summary(VALUES)))[0]
    share = ctx.rows(("clv_top_share",), top_share)[0]
    return {
        "as_of": ctx.as_of.isoformat(),
        "horizon_days": horizon_days,
        "months": months,
        "monthly_discount": float(monthly_discount),
        **{k: v for k, v in fitted.items() if k != "warnings"},
        "totals": _row(totals),
        "clv_share_of_top_10_percent": ratio(share["top"], share["total"]),
        "bands": [
            {"band": name, "p_alive_from": floor, **_row(bands.get(name, {}))}
            for name, floor in BANDS
        ],
        "stages": [{"stage": r["stage"] or "unstaged", **_row(r)} for r in stage_rows],
        "warnings": fitted["warnings"],
    }


def _row(r: dict[str, Any]) -> dict[str, Any]:
    customers = int(r.get("customers") or 0)

    def money(key: str) -> float | None:
        value = r.get(key)
        return None if value is None or value != value else round(float(value), 2)

    revenue, clv_total = money("revenue"), money("clv")
    return {
        "customers": customers,
        "revenue": revenue,
        "avg_revenue": None if revenue is None or not customers else round(revenue / customers, 2),
        "avg_p_alive": None if r.get("p_alive") is None else round(float(r["p_alive"]), 4),
        "expected_orders": money("expected_orders"),
        "clv": clv_total,
        "avg_clv": None if clv_total is None or not customers else round(clv_total / customers, 2),
    }


def who(
    ctx: Context,
    *,
    band: str | None = None,
    stage: str | None = None,
    top: int | None = None,
    horizon_days: int = 90,
    months: int = 12,
    monthly_discount: float = 0.01,
) -> Any:
    """`band=alive|uncertain|likely_gone`, `stage=KEY`, or `top=N` (highest predicted CLV,
    else expected orders when spend could not be fitted)."""
    if sum(c is not None for c in (band, stage, top)) != 1:
        raise InvalidInput("give exactly one of band, stage or top")
    if band is not None and band not in {b for b, _ in BANDS}:
        raise InvalidInput(f"band must be one of {', '.join(b for b, _ in BANDS)}, not '{band}'")
    if top is not None and not 1 <= top <= 10_000:
        raise InvalidInput(f"top must be between 1 and 10000, not {top}")
    _value(ctx, horizon_days, months, monthly_discount)
    shown = ("customer_id", "revenue", "p_alive", "expected_orders", "clv")
    if band is not None:
        return ("clv_who_band", band), lambda at: VALUES.filter(VALUES.band == band).select(*shown)
    if top is not None:

        def best(as_of: ir.TimestampValue) -> ir.Table:
            v = VALUES
            ranked = v.mutate(
                n=ibis.row_number().over(
                    order_by=[ibis.desc(v.clv.fill_null(0.0)), ibis.desc(v.expected_orders)]
                )
            )
            return ranked.filter(ranked.n < top).select(*shown)

        return ("clv_who_top", top), best
    table = _stages(ctx)
    stages = ibis.table({"customer_id": "int64", "stage": "string"}, name=table)

    def in_stage(as_of: ir.TimestampValue) -> ir.Table:
        v, s = VALUES, stages
        j = v.join(s, v.customer_id == s.customer_id)
        return j.filter(s.stage == stage).select(*[v[c] for c in shown])

    return ("clv_who_stage", table, stage), in_stage
