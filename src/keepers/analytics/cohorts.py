"""The cohort retention matrix by first-order period.

Rows are cohorts (the period of a customer's first order), columns "n periods later", a
cell the share of the cohort who ordered in that period (`recurring`, the default) or in
that period or any later one (`rolling`) — PostHog's two definitions, with orders as both
the start and the return event. Column 0 is always 100 %.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import Context, label, live_orders, period_start, ratio
from keepers.errors import InvalidInput

EPOCH_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
MODES = ("recurring", "rolling")
UNITS = ("week", "month", "quarter")


def _index(moment: ir.TimestampValue, unit: str) -> ir.IntegerValue:
    """A running number of the calendar period a moment falls in (UTC)."""
    if unit == "week":
        # days since 1970-01-05, a Monday, in whole weeks
        return ((moment.epoch_seconds() - 345_600) / 604_800).floor().cast("int64")
    months = moment.year().cast("int64") * 12 + moment.month().cast("int64") - 1
    return months if unit == "month" else (months / 3).floor().cast("int64")


def members(unit: str) -> Any:
    """(customer_id, cohort, offset): one row per period in which a customer ordered."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        o = live_orders(as_of)
        o = o.select("customer_id", at=_index(o.ordered_at, unit))
        first = o.group_by("customer_id").aggregate(cohort=lambda t: t.at.min())
        joined = o.join(first, "customer_id")
        return joined.select("customer_id", "cohort", offset=joined.at - joined.cohort).distinct()

    return build


def cohorts(
    ctx: Context, period: str = "month", mode: str = "recurring", cohorts_shown: int = 12
) -> dict[str, Any]:
    if period not in UNITS:
        raise InvalidInput(f"period must be one of {', '.join(UNITS)}, not '{period}'")
    if mode not in MODES:
        raise InvalidInput(f"mode must be recurring or rolling, not '{mode}'")
    build_members = members(period)

    def counts(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        return m.group_by(["cohort", "offset"]).aggregate(customers=lambda t: t.count())

    if mode == "rolling":  # retained at n = ordered at n or later

        def rolling(as_of: ir.TimestampValue) -> ir.Table:
            m = build_members(as_of)
            last = m.group_by(["customer_id", "cohort"]).aggregate(last=m.offset.max())
            return last.group_by(["cohort", "last"]).aggregate(customers=lambda t: t.count())

        raw = ctx.rows(("cohorts_rolling", period), rolling)
        cells: dict[int, dict[int, int]] = {}
        for r in raw:  # a customer whose last order is at n is retained at 0 … n
            row = cells.setdefault(r["cohort"], {})
            for n in range(int(r["last"]) + 1):
                row[n] = row.get(n, 0) + int(r["customers"])
    else:
        cells = {}
        for r in ctx.rows(("cohorts", period), counts):
            cells.setdefault(r["cohort"], {})[int(r["offset"])] = int(r["customers"])

    now_index = _python_index(ctx, period)
    shown = sorted(cells)[-cohorts_shown:]
    matrix = []
    for cohort in shown:
        row = cells[cohort]
        size = row.get(0, 0)
        width = now_index - cohort + 1  # periods observed so far, the current one included
        matrix.append(
            {
                "cohort": _cohort_label(cohort, period),
                "customers": size,
                "retention": [ratio(row.get(n, 0), size) for n in range(width)],
                "counts": [row.get(n, 0) for n in range(width)],
            }
        )
    return {"as_of": ctx.as_of.isoformat(), "period": period, "mode": mode, "cohorts": matrix}


def _python_index(ctx: Context, unit: str) -> int:
    start = period_start(ctx.as_of, unit)
    if unit == "week":
        return (start - EPOCH_MONDAY).days // 7
    months = start.year * 12 + start.month - 1
    return months if unit == "month" else months // 3


def _cohort_label(index: int, unit: str) -> str:
    if unit == "week":
        return label(EPOCH_MONDAY + timedelta(weeks=index), unit)
    year, month0 = divmod(index * (3 if unit == "quarter" else 1), 12)
    return label(datetime(year, month0 + 1, 1, tzinfo=UTC), unit)


def _parse_cohort(text: str, unit: str) -> int | None:
    try:
        if unit == "week":
            year, week = text.split("-W")
            monday = date.fromisocalendar(int(year), int(week), 1)
            start = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
            return (start - EPOCH_MONDAY).days // 7
        if unit == "quarter":
            year, quarter = text.split("-Q")
            if not 1 <= int(quarter) <= 4:
                return None
            return int(year) * 4 + int(quarter) - 1
        year, month = text.split("-")
        if not 1 <= int(month) <= 12:
            return None
        return int(year) * 12 + int(month) - 1
    except ValueError:
        return None


def who(ctx: Context, *, cohort: str, offset: int, period: str = "month") -> Any:
    """Customers of a cohort who ordered `offset` periods after their first order."""
    index = _parse_cohort(cohort, period)
    if index is None or index > _python_index(ctx, period):
        raise InvalidInput(
            f"cohort '{cohort}' is not a {period} before {ctx.as_of.date()} "
            "(use the labels the report prints, e.g. 2024-05, 2024-Q2, 2024-W07)"
        )
    build_members = members(period)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        return m.filter(m.cohort == ibis.literal(index), m.offset == ibis.literal(offset)).select(
            "customer_id"
        )

    return ("cohorts_who", period, index, offset), build
