"""Churn and retention per calendar period, from the stage history and the orders.

- A *customer* at moment t has ordered at or before t and is not in the churned stage at t.
- S = customers at the start of the period, E = customers at its end, N = new customers
  (first order in the period) still customers at its end, lost = customers at the start who
  are not customers at the end, reactivated = customers at the end who were neither
  customers at the start nor new.
- churn rate = lost ÷ S; customer retention rate = (E − N) ÷ S (the usual CRR formula). The
  two add up to 1 + reactivated ÷ S: people who came back count as retained.
- Net revenue retention = revenue in the period from the previous period's buyers ÷ the
  previous period's revenue (refunds are not subtracted).
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import (
    PERIODS,
    Context,
    complete_periods,
    live_orders,
    need_history,
    ratio,
    reported_period,
    stage_at,
    stays,
)
from keepers.errors import InvalidInput

CHURNED = "churned"
GROUPS = ("start", "end", "lost", "new", "reactivated")


def members(churned: str) -> Any:
    """One row per (period, customer) with whether they were a customer at each end."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        p = PERIODS
        first_order = (
            live_orders(as_of)
            .group_by("customer_id")
            .aggregate(first_order_at=lambda o: o.ordered_at.min())
        )
        s = stays(as_of, only=live_orders(as_of).select("customer_id"))  # buyers only
        s = s.join(first_order, "customer_id")
        # one join for both ends of the period (an outer join of two would be simpler to
        # read, but Ibis folds such join chains together wrongly)
        x = s.join(
            p,
            (stage_at(s, p.starts_at) | stage_at(s, p.ends_at)) & (s.first_order_at < p.ends_at),
        )
        customer = x.stage != churned
        agg = x.group_by([x.customer_id, x.idx]).aggregate(
            start=(stage_at(x, x.starts_at) & (x.first_order_at < x.starts_at) & customer).any(),
            end=(stage_at(x, x.ends_at) & customer).any(),
            new=((x.first_order_at >= x.starts_at) & (x.first_order_at < x.ends_at)).any(),
        )
        return agg.mutate(
            lost=agg.start & ~agg.end,
            new=agg.new & agg.end,
            reactivated=agg.end & ~agg.start & ~agg.new,
        )

    return build


def revenue_retention(as_of: ir.TimestampValue) -> ir.Table:
    """Per period: revenue, and revenue from customers who also bought in the one before."""
    o = live_orders(as_of)
    p = PERIODS
    spend = (
        o.join(p, (o.ordered_at >= p.starts_at) & (o.ordered_at < p.ends_at))
        .group_by(["customer_id", "idx"])
        .aggregate(value=lambda t: t.value.sum())
    )
    before = spend.view()
    joined = spend.left_join(
        before, (spend.customer_id == before.customer_id) & (spend.idx == before.idx + 1)
    )
    return joined.group_by(joined.idx).aggregate(
        revenue=joined.value.sum(),
        buyers=joined.customer_id.nunique(),
        from_previous_buyers=joined.value.sum(where=joined.value_right.notnull()),
    )


def churn(ctx: Context, period: str = "month", periods: int = 12) -> dict[str, Any]:
    first, _ = need_history(ctx.tx)
    spans = complete_periods(ctx.as_of, period, periods + 1)  # one more for revenue retention
    ctx.stage_periods(spans)
    churned = _churned_stage(ctx)
    build_members = members(churned)

    def counts(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        return m.group_by("idx").aggregate(**{g: m[g].sum() for g in GROUPS})

    by_idx = {r["idx"]: r for r in ctx.rows(("churn", churned), counts)}
    money = {r["idx"]: r for r in ctx.rows(("revenue_retention",), revenue_retention)}
    rows = []
    for idx, span in enumerate(spans):
        if idx == 0:
            continue
        c = by_idx.get(idx, {})
        s, e, lost, new, back = (int(c.get(g) or 0) for g in GROUPS)
        covered = span.starts_at >= first
        previous = money.get(idx - 1, {})
        now = money.get(idx, {})
        rows.append(
            {
                **span.to_dict(),
                "covered": covered,
                "customers_at_start": s,
                "customers_at_end": e,
                "new": new,
                "lost": lost,
                "reactivated": back,
                "churn_rate": ratio(lost, s) if covered else None,
                "retention_rate": ratio(e - new, s) if covered else None,
                "revenue": round(float(now.get("revenue") or 0.0), 2),
                "net_revenue_retention": ratio(
                    float(now.get("from_previous_buyers") or 0.0), previous.get("revenue")
                ),
            }
        )
    return {
        "as_of": ctx.as_of.isoformat(),
        "period": period,
        "churned_stage": churned,
        "history_since": first.isoformat(),
        "periods": rows,
    }


def _churned_stage(ctx: Context) -> str:
    keys = {s.key for s in ctx.definitions.stage_model.stages}
    return CHURNED if CHURNED in keys else "\x00no churned stage"


def who(
    ctx: Context, *, in_period: str, group: str, period: str = "month", periods: int = 12
) -> Any:
    if group not in GROUPS:
        raise InvalidInput(f"group must be one of {', '.join(GROUPS)}, not '{group}'")
    idx = reported_period(ctx, in_period, period, periods)
    churned = _churned_stage(ctx)
    build_members = members(churned)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        return m.filter(m.idx == ibis.literal(idx), m[group]).select("customer_id")

    return ("churn_who", churned, idx, group), build
