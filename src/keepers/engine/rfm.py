"""RFM scores, shared by the `rfm` report and the rule fields `rfm_r`, `rfm_f`, `rfm_m` and
`rfm_segment`: the same breakpoints and the same expression, so a segment such as
`rfm_segment == "champions"` holds exactly the customers the report lists.

Recency = whole days since the last order, frequency = orders, monetary = order value
(revenue, else total), all as of the moment evaluated. Quintile scores depend on every
buyer, while a compute run evaluates rules for few of them, so the breakpoints are fitted
once per UTC day (as the purchase model behind `p_alive`): over the n customers who ordered
before midnight UTC of the evaluated day, with their values at midnight, breakpoint
b_k (k = 1 … 4) of a measure is the value at position ⌈k·n/5⌉ of those n values sorted
ascending (SQL's `percentile_disc(k/5)`). A score is 1 + the number of breakpoints strictly
below the customer's value; recency is scored as −days, so the most recent get 5. Equal
values always get equal scores (ties never depend on row order or customer ids); among the
n fitted buyers a score is 1 + ⌊5·(buyers with a lower value)/n⌋, so distinct values split
as evenly as n allows (a fifth per score when 5 divides n; below 5 buyers some scores stay
unused). Customers who ordered later that day are scored against the same breakpoints;
with no buyer before the day there are no breakpoints and no scores.

Segments come from the R and F scores by the widely used map (hibernating `[1-2][1-2]`,
at risk `[1-2][3-4]`, can't lose `[1-2]5`, about to sleep `3[1-2]`, need attention `33`,
loyal `[3-4][4-5]`, promising `41`, new `51`, potential loyalists `[4-5][2-3]`, champions
`5[4-5]`), with R = F = 1 split off from hibernating as *lost*; the first matching row wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import ibis
import ibis.expr.types as ir

from keepers.engine.clv import fit_day
from keepers.engine.sql import compiled_sql
from keepers.engine.tables import ORDERS
from keepers.store.database import Tx

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
MEASURES = ("recency", "frequency", "monetary")


@dataclass(frozen=True)
class RFMBreaks:
    """The day's quintile breakpoints, ascending; recency as −days (higher = more recent)."""

    fitted_before: datetime
    buyers: int
    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]


def buyer_values(cutoff: ir.TimestampValue) -> ir.Table:
    """(customer_id, recency, frequency, monetary) at `cutoff`, of orders before it."""
    o = ORDERS.filter(ORDERS.ordered_at < cutoff)
    o = o.mutate(value=o.revenue.coalesce(o.total, 0.0))
    per = o.group_by("customer_id").aggregate(
        last=o.ordered_at.max(), frequency=o.count(), monetary=o.value.sum()
    )
    days = ((cutoff.epoch_seconds() - per["last"].epoch_seconds()) / 86_400).floor()
    return per.select(
        "customer_id",
        recency=-days.cast("float64"),
        frequency=per.frequency.cast("float64"),
        monetary=per.monetary,
    )


def breaks_query(cutoff: ir.TimestampValue) -> ir.Table:
    """One row: the buyer count and the four breakpoints of each measure (position
    ⌈k·n/5⌉ of the ascending values, whatever the order of equal values)."""
    per = buyer_values(cutoff)
    everyone = ibis.window()
    ranked = per.mutate(
        n=per.count().over(everyone),
        **{f"_{m}": ibis.row_number().over(order_by=per[m]) + 1 for m in MEASURES},
    )
    points = {
        f"{m}_{k}": ranked[m].max(
            where=ranked[f"_{m}"] == (ranked.n * (k / 5.0)).ceil().cast("int64")
        )
        for m in MEASURES
        for k in range(1, 5)
    }
    return ranked.aggregate(buyers=ranked.count(), **points)


def rfm_breaks(tx: Tx, as_of: datetime) -> RFMBreaks | None:
    """The breakpoints of `as_of`'s day, or None when nobody ordered before it."""
    cutoff = fit_day(as_of)
    row = tx.fetch_arrow(compiled_sql(tx, ("rfm_breaks",), breaks_query, [cutoff])).to_pylist()
    if not row or not row[0]["buyers"]:
        return None
    values = row[0]
    return RFMBreaks(
        fitted_before=cutoff,
        buyers=int(values["buyers"]),
        **{m: tuple(float(values[f"{m}_{k}"]) for k in range(1, 5)) for m in MEASURES},
    )


def score(value: ir.NumericValue, breaks: tuple[float, ...]) -> ir.IntegerValue:
    """1 + the number of breakpoints strictly below `value` (NULL stays NULL)."""
    cases = [(value <= ibis.literal(b), k) for k, b in enumerate(breaks, start=1)]
    return ibis.cases((value.isnull(), ibis.null("int64")), *cases, else_=len(breaks) + 1).cast(
        "int64"
    )


def segment_of(r: ir.IntegerValue, f: ir.IntegerValue) -> ir.StringValue:
    return ibis.cases(*((r.isin(rs) & f.isin(fs), key) for key, _, rs, fs in SEGMENTS))


def rfm_scores(
    breaks: RFMBreaks | None,
    recency_days: ir.NumericValue,
    frequency: ir.NumericValue,
    monetary: ir.NumericValue,
) -> dict[str, ir.Value]:
    """`r`, `f`, `m` (1–5) and `segment` of customers with these values (all NULL
    without breakpoints)."""
    if breaks is None:
        none = ibis.null("int64")
        return {"r": none, "f": none, "m": none, "segment": ibis.null("string")}
    r = score(-recency_days.cast("float64"), breaks.recency)
    f = score(frequency.cast("float64"), breaks.frequency)
    m = score(monetary.cast("float64"), breaks.monetary)
    return {"r": r, "f": f, "m": m, "segment": segment_of(r, f)}
