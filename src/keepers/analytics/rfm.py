"""RFM: recency, frequency and monetary quintile scores and the named segments.

Recency = whole days since the last order, frequency = orders, monetary = order value, all
up to the as-of moment. Scores are quintiles 1–5 over the customers who have ordered, with
recency reversed (most recent = 5) and frequency ranked with ties broken by customer id
(the usual `pd.qcut(rank(method="first"))` recipe). Segments come from the R and F scores
by the widely used map (hibernating `[1-2][1-2]`, at risk `[1-2][3-4]`, can't lose `[1-2]5`,
about to sleep `3[1-2]`, need attention `33`, loyal `[3-4][4-5]`, promising `41`, new `51`,
potential loyalists `[4-5][2-3]`, champions `5[4-5]`), with R = F = 1 split off from
hibernating as *lost*. The first matching row wins.
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import Context, live_orders, ratio, seconds_between
from keepers.errors import InvalidInput

# (key, label, recency scores, frequency scores), in priority order
SEGMENTS: tuple[tuple[str, str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("lost", "Lost", (1,), (1,)),
    ("hibernating", "Hibernating", (1, 2), (1, 2)),
    ("at_risk", "At risk", (1, 2), (3, 4)),
    ("cant_lose", "Can't lose them", (1, 2), (5,)),
    ("about_to_sleep", "About to sleep", (3,), (1, 2)),
    ("need_attention", "Need attention", (3,), (3,)),
    ("loyal", "Loyal", (3, 4), (4, 5)),
    ("promising", "Promising", (4,), (1,)),
    ("new", "New customers", (5,), (1,)),
    ("potential_loyalists", "Potential loyalists", (4, 5), (2, 3)),
    ("champions", "Champions", (5,), (4, 5)),
)
SEGMENT_KEYS = tuple(s[0] for s in SEGMENTS)


def segment_of(r: ir.IntegerValue, f: ir.IntegerValue) -> ir.StringValue:
    return ibis.cases(*((r.isin(rs) & f.isin(fs), key) for key, _, rs, fs in SEGMENTS))


def members(as_of: ir.TimestampValue) -> ir.Table:
    """(customer_id, recency_days, frequency, monetary, r, f, m, segment)."""
    o = live_orders(as_of)
    per = o.group_by("customer_id").aggregate(
        last_order_at=o.ordered_at.max(), frequency=o.count(), monetary=o.value.sum()
    )
    recency = (seconds_between(as_of, per.last_order_at) / 86_400).floor().cast("int64")
    per = per.mutate(recency_days=recency)
    r = ibis.ntile(5).over(order_by=[ibis.desc(per.recency_days), per.customer_id]) + 1
    f = ibis.ntile(5).over(order_by=[per.frequency, per.customer_id]) + 1
    m = ibis.ntile(5).over(order_by=[per.monetary, per.customer_id]) + 1
    scored = per.mutate(r=r.cast("int64"), f=f.cast("int64"), m=m.cast("int64"))
    return scored.mutate(segment=segment_of(scored.r, scored.f)).drop("last_order_at")


def rfm(ctx: Context) -> dict[str, Any]:
    def by_segment(as_of: ir.TimestampValue) -> ir.Table:
        t = members(as_of)
        return t.group_by("segment").aggregate(
            customers=t.count(),
            revenue=t.monetary.sum(),
            avg_recency_days=t.recency_days.mean(),
            avg_frequency=t.frequency.mean(),
            avg_monetary=t.monetary.mean(),
        )

    def grid(as_of: ir.TimestampValue) -> ir.Table:
        t = members(as_of)
        return t.group_by(["r", "f"]).aggregate(customers=t.count())

    segments = {r["segment"]: r for r in ctx.rows(("rfm",), by_segment)}
    total = sum(int(r["customers"]) for r in segments.values())
    revenue = sum(float(r["revenue"] or 0) for r in segments.values())
    cells = [[0] * 5 for _ in range(5)]
    for c in ctx.rows(("rfm_grid",), grid):
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

    def build(as_of: ir.TimestampValue) -> ir.Table:
        t = members(as_of)
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

    return ("rfm_who", segment, r, f), build
