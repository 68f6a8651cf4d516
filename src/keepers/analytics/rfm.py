"""RFM: recency, frequency and monetary quintile scores and the named segments.

Recency = whole days since the last order, frequency = orders, monetary = order value, all
up to the as-of moment. Scores are quintiles 1–5 over the customers who have ordered, with
recency reversed (most recent = 5), scored against breakpoints fitted once per UTC day over
every buyer; equal values always get equal scores. Segments come from the R and F scores by
the widely used map (champions `5[4-5]`, loyal `[3-4][4-5]`, … lost `11`). Breakpoints,
scores and segments are `keepers.engine.rfm`'s, the very expressions behind the rule fields
`rfm_r`, `rfm_f`, `rfm_m` and `rfm_segment`, so a segment `rfm_segment == "champions"`
holds exactly the customers `--who segment=champions` lists for the same moment.
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import Context, live_orders, ratio, seconds_between
from keepers.engine.rfm import SEGMENT_KEYS, SEGMENTS, RFMBreaks, rfm_breaks, rfm_scores
from keepers.errors import InvalidInput

__all__ = ["SEGMENTS", "SEGMENT_KEYS", "members", "rfm", "who"]


def members(as_of: ir.TimestampValue, breaks: RFMBreaks | None) -> ir.Table:
    """(customer_id, recency_days, frequency, monetary, r, f, m, segment) of every buyer
    scored against the day's breakpoints (none without them)."""
    o = live_orders(as_of)
    per = o.group_by("customer_id").aggregate(
        last_order_at=o.ordered_at.max(), frequency=o.count(), monetary=o.value.sum()
    )
    recency = (seconds_between(as_of, per.last_order_at) / 86_400).floor().cast("int64")
    per = per.mutate(recency_days=recency)
    scored = per.mutate(**rfm_scores(breaks, per.recency_days, per.frequency, per.monetary))
    return scored.filter(scored.r.notnull()).drop("last_order_at")


def rfm(ctx: Context) -> dict[str, Any]:
    breaks = rfm_breaks(ctx.tx, ctx.as_of)

    def by_segment(as_of: ir.TimestampValue) -> ir.Table:
        t = members(as_of, breaks)
        return t.group_by("segment").aggregate(
            customers=t.count(),
            revenue=t.monetary.sum(),
            avg_recency_days=t.recency_days.mean(),
            avg_frequency=t.frequency.mean(),
            avg_monetary=t.monetary.mean(),
        )

    def grid(as_of: ir.TimestampValue) -> ir.Table:
        t = members(as_of, breaks)
        return t.group_by(["r", "f"]).aggregate(customers=t.count())

    segments = {r["segment"]: r for r in ctx.rows(("rfm", breaks), by_segment)}
    total = sum(int(r["customers"]) for r in segments.values())
    revenue = sum(float(r["revenue"] or 0) for r in segments.values())
    cells = [[0] * 5 for _ in range(5)]
    for c in ctx.rows(("rfm_grid", breaks), grid):
        cells[int(c["r"]) - 1][int(c["f"]) - 1] = int(c["customers"])
    rows = []
    for key, title, rs, fs in SEGMENTS:
        s = segments.get(key, {})
        n = int(s.get("customers") or 0)
        rows.append(
            {
                "segment": key,
                "label": title,
                "r_scores": list(rs),
                "f_scores": list(fs),
                "customers": n,
                "share": ratio(n, total),
                "revenue_share": ratio(float(s.get("revenue") or 0), revenue),
                "avg_recency_days": _round(s.get("avg_recency_days")),
                "avg_frequency": _round(s.get("avg_frequency")),
                "avg_monetary": _round(s.get("avg_monetary")),
            }
        )
    return {
        "as_of": ctx.as_of.isoformat(),
        "customers": total,
        "segments": rows,
        "grid": {"rows": "recency score 1-5", "columns": "frequency score 1-5", "customers": cells},
    }


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


def who(
    ctx: Context, *, segment: str | None = None, r: int | None = None, f: int | None = None
) -> Any:
    if segment is not None and segment not in SEGMENT_KEYS:
        raise InvalidInput(f"segment must be one of {', '.join(SEGMENT_KEYS)}, not '{segment}'")
    for name, score in (("r", r), ("f", f)):
        if score is not None and not 1 <= score <= 5:
            raise InvalidInput(f"{name} must be a score from 1 to 5, not {score}")
    breaks = rfm_breaks(ctx.tx, ctx.as_of)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        t = members(as_of, breaks)
        conds = [ibis.literal(True)]
        if segment is not None:
            conds.append(t.segment == ibis.literal(segment))
        if r is not None:
            conds.append(t.r == ibis.literal(r))
        if f is not None:
            conds.append(t.f == ibis.literal(f))
        return t.filter(*conds).select(
            "customer_id", "recency_days", "frequency", "monetary", "r", "f", "m", "segment"
        )

    return ("rfm_who", segment, r, f, breaks), build
