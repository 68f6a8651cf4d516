"""The day's purchase and spend models behind the `p_alive`, `expected_orders_90d` and
`clv_12m` traits and the `clv` report: BG/NBD and Gamma-Gamma fitted on every customer's orders.

`p_alive` is the probability that a customer has not silently stopped buying (Fader, Hardie
& Lee 2005, "Counting your customers the easy way", eq. 13):

    P(alive | x, t_x, T) = 1 / (1 + [x > 0] · a / (b + x − 1) · ((α + T) / (α + t_x))^(r + x))

with, as of the moment evaluated, x = orders − 1 (repeat orders), t_x = weeks between the
first and the last order, T = weeks since the first order. Customers without an order have
no `p_alive` (the model describes buyers), so a rule comparing it is false for them.

The parameters (r, α, a, b) are fitted on all customers' orders up to midnight UTC of the
evaluated day: every run on one day, in any process, gets the same parameters (the fit is
cached per process by the data it saw), while T still moves with the exact moment. With
fewer than 10 buyers or 5 repeat buyers there is no fit and `p_alive` is missing for all.
The fit is one aggregate query plus a vectorised maximum-likelihood fit; the values are
then plain SQL arithmetic in the same rule query as every other trait.

Gamma-Gamma (expected spend per future order) is fitted the same way, once per day on the
repeat buyers' average repeat-order value (first order left out); expected orders and CLV
as SQL are in `keepers.engine.expectation`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import ibis
import ibis.expr.types as ir
import numpy as np
from threadpoolctl import threadpool_limits

from keepers.engine.sql import compiled_sql
from keepers.engine.tables import ORDERS
from keepers.errors import KeepersError
from keepers.models.bgnbd import BGNBDModel, fit_bgnbd
from keepers.models.gamma_gamma import GammaGammaModel, fit_gamma_gamma
from keepers.store.database import Tx

SPEND_COLUMNS = ("orders", "revenue", "first_value")
WEEK = 604_800.0
_FITS: dict[str, BGNBDModel | None] = {}
_SPEND_FITS: dict[str, tuple[GammaGammaModel | None, str | None]] = {}


def order_history(cutoff: ir.TimestampValue) -> ir.Table:
    """(customer_id, orders, first, last) in epoch seconds, orders before `cutoff`."""
    o = ORDERS.filter(ORDERS.ordered_at < cutoff)
    return o.group_by("customer_id").aggregate(
        orders=o.count(),
        first=o.ordered_at.min().epoch_seconds().cast("float64"),
        last=o.ordered_at.max().epoch_seconds().cast("float64"),
    )


def fit_day(as_of: datetime) -> datetime:
    """Midnight UTC of the day `as_of` falls on: the fit's data end."""
    moment = as_of.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def rft(orders: np.ndarray, first: np.ndarray, last: np.ndarray, at: float) -> tuple:
    """(frequency, recency, T) in weeks as BG/NBD reads them, from order counts and the
    first and last order times (epoch seconds), at epoch second `at`."""
    x = np.asarray(orders, dtype=np.float64) - 1.0
    t_x = (np.asarray(last, dtype=np.float64) - first) / WEEK
    age = (at - np.asarray(first, dtype=np.float64)) / WEEK
    return x, t_x, age


def purchase_model(tx: Tx, as_of: datetime) -> BGNBDModel | None:
    """BG/NBD fitted on orders up to midnight of `as_of`'s day, or None when there are too
    few buyers (or no optimum) for a fit."""
    cutoff = fit_day(as_of)
    sql = compiled_sql(tx, ("clv_order_history",), order_history, [cutoff])
    table = tx.fetch_arrow(sql)
    orders = table.column("orders").to_numpy().astype(np.float64)
    first = table.column("first").to_numpy().astype(np.float64)
    last = table.column("last").to_numpy().astype(np.float64)
    x, t_x, age = rft(orders, first, last, cutoff.timestamp())
    order = np.lexsort((t_x, x, age))  # the same customers in any row order: one key
    digest = hashlib.sha1(np.stack([x[order], t_x[order], age[order]]).tobytes()).hexdigest()
    if digest not in _FITS:
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                _FITS[digest] = fit_bgnbd(x, t_x, age).model
        except KeepersError:
            _FITS[digest] = None
        if len(_FITS) > 64:
            _FITS.pop(next(iter(_FITS)))
    return _FITS[digest]


def order_summary(orders: ir.Table) -> ir.Table:
    """Per customer of `orders` (with a `value` column): orders, the first and last order
    time in epoch seconds, revenue and the first order's value — of equally early orders,
    the smallest, so the value never depends on row order."""
    ranked = orders.mutate(
        _first=ibis.row_number().over(
            group_by=orders.customer_id, order_by=[orders.ordered_at, orders.value]
        )
    )
    return ranked.group_by("customer_id").aggregate(
        orders=ranked.count(),
        first=ranked.ordered_at.min().epoch_seconds().cast("float64"),
        last=ranked.ordered_at.max().epoch_seconds().cast("float64"),
        revenue=ranked.value.sum(),
        first_value=ranked.value.max(where=ranked._first == 0),
    )


def repeat_spend(orders: np.ndarray, revenue: np.ndarray, first_value: np.ndarray) -> tuple:
    """(x, average repeat-order value, whether Gamma-Gamma can use it): the first order is
    left out, as the model's authors do."""
    x = np.asarray(orders, dtype=np.float64) - 1.0
    repeat = np.asarray(revenue, dtype=np.float64) - np.asarray(first_value, dtype=np.float64)
    value = np.divide(repeat, x, out=np.zeros_like(x), where=x > 0)
    return x, value, (x > 0) & (value > 0)


def spend_history(cutoff: ir.TimestampValue) -> ir.Table:
    o = ORDERS.filter(ORDERS.ordered_at < cutoff)
    return order_summary(o.mutate(value=o.revenue.coalesce(o.total, 0.0)))


def spend_model(tx: Tx, as_of: datetime) -> tuple[GammaGammaModel | None, str | None]:
    """Gamma-Gamma fitted on the repeat buyers' average repeat-order value, orders up to
    midnight of `as_of`'s day (as the purchase model), or None and why not."""
    cutoff = fit_day(as_of)
    table = tx.fetch_arrow(compiled_sql(tx, ("clv_spend_history",), spend_history, [cutoff]))
    columns = (table.column(c).to_numpy().astype(np.float64) for c in SPEND_COLUMNS)
    x, value, usable = repeat_spend(*columns)
    # a parallel SUM's last bits vary with the order it adds in: rounded to a millionth of
    # the currency and sorted, the same orders always give the same fit
    x, value = x[usable], np.round(value[usable], 6)
    order = np.lexsort((value, x))
    x, value = x[order], value[order]
    digest = hashlib.sha1(np.stack([x, value]).tobytes()).hexdigest()
    if digest not in _SPEND_FITS:
        _SPEND_FITS[digest] = _fit_spend(x, value)
        if len(_SPEND_FITS) > 64:
            _SPEND_FITS.pop(next(iter(_SPEND_FITS)))
    return _SPEND_FITS[digest]


def _fit_spend(x: np.ndarray, value: np.ndarray) -> tuple[GammaGammaModel | None, str | None]:
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            model = fit_gamma_gamma(x, value).model
    except KeepersError as exc:
        return None, exc.message
    if model.q <= 1:
        return None, f"its population mean spend is infinite (q = {model.q:.3g})"
    return model, None


def p_alive_sql(
    model: BGNBDModel | None,
    orders: ir.NumericValue,
    first: ir.NumericValue,
    last: ir.NumericValue,
    now: ir.NumericValue,
) -> ir.FloatingValue:
    """The formula above as an engine expression over epoch seconds."""
    if model is None:
        return ibis.null("float64")
    x = orders.cast("float64") - 1.0
    t_x = (last - first) / WEEK
    age = (now - first) / WEEK
    r, alpha, a, b = (ibis.literal(float(v)) for v in (model.r, model.alpha, model.a, model.b))
    log_odds_dead = (
        a.ln()
        - (b + ibis.greatest(x, 1.0) - 1.0).ln()
        + (r + x) * ((alpha + age).ln() - (alpha + t_x).ln())
    )
    capped = ibis.cases((log_odds_dead > 700.0, 700.0), else_=log_odds_dead)  # exp overflows
    alive = 1.0 / (1.0 + capped.exp())
    no_orders = orders.isnull() | (orders < 1)
    return ibis.cases((no_orders, ibis.null("float64")), (x > 0, alive), else_=1.0)
