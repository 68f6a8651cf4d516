"""Rule fields fitted once per UTC day over every customer: `p_alive`, the RFM scores,
expected orders and CLV, churn risk and persona — each the same number its report shows
for the same moment (churn risk and persona: for that day's midnight, see
`keepers.engine.scores`).

A compute run evaluates rules over stored traits, often for a few customers only, while
these numbers depend on everyone (a quintile, a fitted model). So, as for `p_alive`, what
depends on everyone is fitted once per day on the orders before midnight UTC — BG/NBD and
Gamma-Gamma parameters (`keepers.engine.clv`), RFM breakpoints (`keepers.engine.rfm`) — and
attached to the plan; each customer's value is then plain SQL over their own stored traits
at the exact moment. Only the fields some rule reads are fitted and computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from keepers.domain.definitions import Definitions
from keepers.engine.clv import WEEK, fit_day, p_alive_sql, purchase_model, spend_model
from keepers.engine.expectation import Expectation, expectation_for, horizon_table
from keepers.engine.rfm import RFMBreaks, rfm_breaks, rfm_scores
from keepers.engine.scores import SCORED_FIELDS, day_scores, scorers_for
from keepers.models.bgnbd import BGNBDModel
from keepers.models.gamma_gamma import GammaGammaModel
from keepers.store.database import Tx

if TYPE_CHECKING:
    from keepers.engine.plan import Plan

FIELDS = {
    "p_alive": "number",
    "rfm_r": "number",
    "rfm_f": "number",
    "rfm_m": "number",
    "rfm_segment": "string",
    "expected_orders_90d": "number",
    "clv_12m": "number",
    **SCORED_FIELDS,
}
RFM_FIELDS = frozenset({"rfm_r", "rfm_f", "rfm_m", "rfm_segment"})
EXPECTED_FIELDS = frozenset({"expected_orders_90d", "clv_12m"})
PURCHASE_FIELDS = EXPECTED_FIELDS | {"p_alive"}
FIRST_ORDER_VALUE = "_first_order_value"  # stored for clv_12m: Gamma-Gamma's repeat spend


@dataclass(frozen=True)
class DayModels:
    """What the day's rule fields need, and why any of them is missing."""

    purchase: BGNBDModel | None = None
    expectation: Expectation | None = None
    spend: GammaGammaModel | None = None
    rfm: RFMBreaks | None = None
    missing: tuple[tuple[str, str], ...] = ()  # (field, why it has no values today)
    fields: frozenset[str] = frozenset()  # the fields these were fitted for
    # scorer table name → the day's scores (customer_id + fields), staged for the run
    # (which scores are present shows in `missing`, part of the compiled queries' key)
    scores: tuple[tuple[str, pa.Table], ...] = field(default=(), repr=False, compare=False)


def attach_models(tx: Tx, plan: Plan, as_of: datetime, also: frozenset[str] = frozenset()) -> Plan:
    """Give `plan` the day's models its rules read at `as_of` (nothing when unused), and
    those of the fields in `also`, which a caller works out itself (not in the rules' SQL)."""
    plan.models = day_models(tx, plan.model_fields | also, as_of, plan.definitions)
    for name, table in plan.models.scores:
        tx.stage(name, table)
    if plan.model_fields & EXPECTED_FIELDS and tx.dialect.name == "postgres":
        # a few thousand terms: LLVM would spend far longer compiling than running them
        tx.execute("SET LOCAL jit = off")
    return plan


_DAY_MODELS: dict[tuple, DayModels] = {}


def day_models(
    tx: Tx, wanted: frozenset[str] | set[str], as_of: datetime, definitions: Definitions
) -> DayModels:
    """The day's models for `wanted`. The fitted ones are kept per process while the orders
    before the day's midnight stay the same (one small aggregate instead of three fits'
    worth of queries, which a customer page or a run every minute would otherwise repeat);
    the scored fields have their own cache, keyed by the events as well."""
    wanted = frozenset(wanted)
    fitted = frozenset(wanted - SCORED_FIELDS.keys())
    models = DayModels()
    if fitted:
        cutoff = fit_day(as_of)
        mark = tx.execute(
            # integers only: a float SUM's last bits vary with the order it adds in
            "SELECT count(*), sum(customer_id),"
            " sum(CAST(extract(epoch FROM ordered_at) * 1000000 AS BIGINT)),"
            " sum(CAST(COALESCE(revenue, total, 0) AS DECIMAL(38, 6))) FROM orders"
            " WHERE ordered_at < ?",
            [cutoff],
        )[0]
        key = (cutoff, fitted, tuple(str(v) for v in mark))
        if key not in _DAY_MODELS:
            _DAY_MODELS[key] = _fit_day_models(tx, fitted, as_of)
            while len(_DAY_MODELS) > 16:
                _DAY_MODELS.pop(next(iter(_DAY_MODELS)))
        models = _DAY_MODELS[key]
    if not wanted & SCORED_FIELDS.keys():
        return models
    missing = dict(models.missing)
    scores = []
    day = fit_day(as_of).date().isoformat()
    for scorer in scorers_for(wanted):
        found = day_scores(tx, definitions, scorer, fit_day(as_of))
        if isinstance(found, str):
            missing.update(dict.fromkeys(wanted & set(scorer.fields), f"{found} (as of {day})"))
        else:
            scores.append((scorer.table, found))
    return replace(
        models,
        missing=tuple(sorted(missing.items())),
        fields=wanted,
        scores=tuple(scores),
    )


def _fit_day_models(tx: Tx, wanted: frozenset[str], as_of: datetime) -> DayModels:
    day = fit_day(as_of).date().isoformat()
    missing: dict[str, str] = {}
    purchase = expectation = spend = rfm = None
    if wanted & PURCHASE_FIELDS:
        purchase = purchase_model(tx, as_of)
        if purchase is None:
            why = f"fewer than 10 buyers or 5 repeat buyers before {day}: no purchase model"
            missing.update(dict.fromkeys(wanted & PURCHASE_FIELDS, why))
    if wanted & EXPECTED_FIELDS and purchase is not None:
        found = expectation_for(purchase)
        if isinstance(found, str):
            missing.update(dict.fromkeys(wanted & EXPECTED_FIELDS, found))
        else:
            expectation = found
    if "clv_12m" in wanted and expectation is not None:
        spend, why = spend_model(tx, as_of)
        if spend is None:
            missing["clv_12m"] = f"Gamma-Gamma not fitted: {why}"
    if wanted & RFM_FIELDS:
        rfm = rfm_breaks(tx, as_of)
        if rfm is None:
            missing.update(dict.fromkeys(wanted & RFM_FIELDS, f"nobody ordered before {day}"))
    return DayModels(
        purchase, expectation, spend, rfm, tuple(sorted(missing.items())), frozenset(wanted)
    )


def fitted_values(
    t: ir.Table, models: DayModels, now: ir.NumericValue, wanted: frozenset[str] | set[str]
) -> ir.Table:
    """`t` (stored traits plus `days_since_last_order`) with the wanted fields.

    Each stage ends in a subquery with a volatile column, which PostgreSQL never pulls up
    into the query above: the fields are computed once per customer, however many rules
    read them (DuckDB computes them once either way)."""
    values: dict[str, ir.Value] = {}
    t = _scored(t, models, wanted)
    if wanted & EXPECTED_FIELDS:
        t, values = _expected(t, models, now, wanted)
    elif wanted & PURCHASE_FIELDS:
        values["p_alive"] = _p_alive(t, models, now)
    if wanted & RFM_FIELDS:
        scores = rfm_scores(models.rfm, t.days_since_last_order, t.orders, t.revenue)
        for name in ("r", "f", "m", "segment"):
            values[f"rfm_{name}"] = _for_buyers(t, scores[name])
    keep = {k: v for k, v in values.items() if k in wanted}
    return t.mutate(**keep, _kp_fence=ibis.random()).view()


def _scored(t: ir.Table, models: DayModels, wanted: frozenset[str] | set[str]) -> ir.Table:
    """`t` with the day's scored fields joined by customer (NULL when the model is missing)."""
    staged = dict(models.scores)
    for scorer in scorers_for(wanted):
        if scorer.table in staged:
            schema = staged[scorer.table].schema
            scores = ibis.table(ibis.Schema.from_pyarrow(schema), name=scorer.table)
            t = t.left_join(scores, "customer_id").drop("customer_id_right")
        else:
            t = t.mutate(**{f: ibis.null(_IBIS_TYPES[SCORED_FIELDS[f]]) for f in scorer.fields})
    return t


_IBIS_TYPES = {"number": "float64", "string": "string"}


def _p_alive(t: ir.Table, models: DayModels, now: ir.NumericValue) -> ir.FloatingValue:
    return p_alive_sql(models.purchase, t.orders, t._e_first_order_at, t._e_last_order_at, now)


def _for_buyers(t: ir.Table, value: ir.Value) -> ir.Value:
    return ibis.cases((t.orders >= 1, value), else_=ibis.null(value.type()))


def _expected(
    t: ir.Table, models: DayModels, now: ir.NumericValue, wanted: frozenset[str] | set[str]
) -> tuple[ir.Table, dict[str, ir.Value]]:
    """`t` with x, α + T, P(alive) and the quadrature weights staged, and G summed over the
    horizons; P(alive), expected orders in 90 days and the 12-month CLV over it (NULL when
    a model is missing)."""
    e, purchase = models.expectation, models.purchase
    if e is None or purchase is None:
        nothing = ibis.null("float64")
        return t, {"p_alive": _p_alive(t, models, now), **dict.fromkeys(EXPECTED_FIELDS, nothing)}
    x = (t.orders - 1).cast("float64")
    u = purchase.alpha + (now - t._e_first_order_at) / WEEK
    alive = _p_alive(t, models, now)
    staged = t.mutate(_kp_x=x, _kp_u=u, _kp_alive=alive, _kp_fence=ibis.random()).view()
    buyers = staged.filter(staged.orders >= 1).select("customer_id", "_kp_x", "_kp_u")
    buyers = buyers.mutate(**e.staged(buyers._kp_x), _kp_fence=ibis.random()).view()
    buyers = buyers.mutate(**e.staged_total(buyers), _kp_fence=ibis.random()).view()
    expected, clv = "expected_orders_90d" in wanted, "clv_12m" in wanted
    narrow = buyers.select("customer_id", "_kp_x", "_kp_u", *e.staged_names())
    rows = horizon_table(narrow, expected=expected, clv=clv)
    g = e.alive_sql(rows, rows._kp_weeks)
    sums = rows.group_by("customer_id").aggregate(
        _kp_g90=g.sum(where=rows._kp_h == 0),
        _kp_gclv=(rows._kp_discount * g).sum(where=rows._kp_h >= 1),
    )
    joined = staged.left_join(sums, "customer_id").drop("customer_id_right")
    joined = joined.mutate(_kp_fence=ibis.random()).view()
    values: dict[str, ir.Value] = {"p_alive": joined._kp_alive}
    if expected:
        values["expected_orders_90d"] = _for_buyers(joined, joined._kp_alive * joined._kp_g90)
    if clv:
        values["clv_12m"] = _for_buyers(joined, _clv(joined, models.spend))
    return joined, values


def _clv(t: ir.Table, spend: GammaGammaModel | None) -> ir.FloatingValue:
    """Expected spend × P(alive) × Σ_k weight_k · G(month k): the report's discounted sum
    of monthly expected orders, times Gamma-Gamma's conditional expected spend."""
    if spend is None:
        return ibis.null("float64")
    return _expected_spend(t, spend) * t._kp_alive * t._kp_gclv


def _expected_spend(t: ir.Table, spend: GammaGammaModel) -> ir.FloatingValue:
    """Gamma-Gamma's E[M | x, m̄]: (1 − w)·population mean + w·m̄, w = p·x / (p·x + q − 1),
    m̄ the average repeat-order value (0 when not positive, as the report passes it)."""
    x = t._kp_x
    repeat = (t.revenue - t[FIRST_ORDER_VALUE]) / x.nullif(0.0)
    mean = ibis.cases(((x > 0) & (repeat > 0), repeat), else_=0.0)
    weight = spend.p * x / (spend.p * x + (spend.q - 1.0))
    return (1.0 - weight) * spend.population_mean_spend + weight * mean
