"""The purchase model behind the `p_alive` trait: BG/NBD fitted on every customer's orders.

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
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir
import numpy as np
from threadpoolctl import threadpool_limits

from keepers.engine.sql import compiled_sql
from keepers.errors import KeepersError
from keepers.models.bgnbd import BGNBDModel, fit_bgnbd
from keepers.store.database import Tx

if TYPE_CHECKING:
    from keepers.engine.plan import Plan

ORDERS = ibis.table({"customer_id": "int64", "ordered_at": "timestamp('UTC')"}, name="orders")
WEEK = 604_800.0
_FITS: dict[str, BGNBDModel | None] = {}


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


def attach_purchase_model(tx: Tx, plan: Plan, as_of: datetime) -> Plan:
    """Give `plan` the model its `p_alive` rules need at `as_of` (nothing when unused)."""
    if plan.uses_p_alive:
        plan.purchase_model = purchase_model(tx, as_of)
    return plan


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
