"""Active customers per period as PostHog's lifecycle view: new, returning, resurrecting
and dormant.

Active in a period = did something (any event but passive system ones such as `Email
Delivered`). For each period: *new* — first activity ever in it; *returning* — active in it
and in the period before; *resurrecting* — active in it, not in the one before, active at
some time earlier; *dormant* — active in the period before, not in this one (shown as a
negative count, as PostHog does). new + returning + resurrecting = active.
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import (
    PERIODS,
    Context,
    active_events,
    complete_periods,
    reported_period,
)
from keepers.errors import InvalidInput

STATUSES = ("new", "returning", "resurrecting", "dormant")


def members(jsonb: bool) -> Any:
    """(customer_id, idx, status) for every customer with a status in a reported period."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        e = active_events(as_of, jsonb=jsonb)
        p = PERIODS
        first = e.group_by("customer_id").aggregate(first_at=e.timestamp.min())
        active = (
            e.join(p, (e.timestamp >= p.starts_at) & (e.timestamp < p.ends_at))
            .select("customer_id", "idx", "starts_at")
            .distinct()
        )
        prev = active.view()
        now = active.left_join(
            prev, (active.customer_id == prev.customer_id) & (active.idx == prev.idx + 1)
        ).join(first, active.customer_id == first.customer_id)
        status = ibis.cases(
            (now.first_at >= now.starts_at, "new"),
            (now.idx_right.notnull(), "returning"),
            else_="resurrecting",
        )
        current = now.select(active.customer_id, active.idx, status=status)
        nxt = active.view()
        gone = active.anti_join(
            nxt, (active.customer_id == nxt.customer_id) & (nxt.idx == active.idx + 1)
        ).select(active.customer_id, idx=active.idx + 1, status=ibis.literal("dormant"))
        periods = p.count()  # the last period has no "next" to be dormant in
        return current.union(gone.filter(gone.idx < periods.as_scalar()))

    return build


def lifecycle(ctx: Context, period: str = "month", periods: int = 12) -> dict[str, Any]:
    spans = complete_periods(ctx.as_of, period, periods + 1)  # one before the first shown
    ctx.stage_periods(spans)
    jsonb = ctx.tx.dialect.name == "postgres"
    build_members = members(jsonb)

    def counts(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        return m.group_by(["idx", "status"]).aggregate(customers=lambda t: t.count())

    found: dict[int, dict[str, int]] = {}
    for r in ctx.rows(("activity", jsonb), counts):
        found.setdefault(int(r["idx"]), {})[r["status"]] = int(r["customers"])
    rows = []
    for idx, span in enumerate(spans[1:], start=1):
        c = found.get(idx, {})
        row = {**span.to_dict(), **{s: c.get(s, 0) for s in STATUSES}}
        row["dormant"] = -row["dormant"]
        row["active"] = row["new"] + row["returning"] + row["resurrecting"]
        rows.append(row)
    return {"as_of": ctx.as_of.isoformat(), "period": period, "periods": rows}


def who(
    ctx: Context, *, in_period: str, status: str, period: str = "month", periods: int = 12
) -> Any:
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not '{status}'")
    idx = reported_period(ctx, in_period, period, periods)
    jsonb = ctx.tx.dialect.name == "postgres"
    build_members = members(jsonb)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        return m.filter(m.idx == ibis.literal(idx), m.status == ibis.literal(status)).select(
            "customer_id"
        )

    return ("activity_who", jsonb, idx, status), build
