"""Churn risk: a classifier of who goes quiet next, validated on a later period.

With a horizon h (`horizon_days`, 30) and the as-of moment T:

- a *snapshot* at a cutoff t holds every customer active (any event but passive system
  ones, such as `Email Delivered`) in (t − `active_days`, t]; its features are as of t and
  its label is *churned* = no activity at all in (t, t + h];
- the model is fitted on the snapshot at T − 2h (labels end at T − h, so nothing after
  T − h is seen), validated on the snapshot at T − h (labels end at T): an honest
  out-of-time test, reported as ROC AUC with both sample sizes and churn rates, next to the
  AUC of recency alone (days since last activity) — the baseline any model must beat;
- then every customer active in (T − `active_days`, T] is scored for (T, T + h].

Features (as of t): days since last activity, since the first, since the last order (the
tenure when there is none); events in the last 7, 30 and 90 days and ever; distinct active
days in the last 30; orders ever and in the last 90 days; revenue; emails opened in the
last 30 days; the last NPS answer (the median when unknown). Counts and days are log1p'd
and standardised on the training snapshot (z clipped to ±5, so scoring does not extrapolate
wildly); the model is scikit-learn's LogisticRegression (L2, C = 1), so each feature's
weight reads as the change in log-odds of churning per standard deviation.

Risk bands: high ≥ 0.6, medium ≥ 0.3, else low (probabilities are calibrated to the
training period's churn rate, so compare bands within one report).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa

from keepers.analytics.base import ORDERS, Context, active_events, ratio, seconds_between
from keepers.engine.plan import events_table, json_text
from keepers.errors import InvalidInput

DAY = 86_400.0
MIN_SAMPLE = 50
CLIP = 5.0
BANDS = (("high", 0.6), ("medium", 0.3), ("low", 0.0))
SCORED = ibis.table(
    {"customer_id": "int64", "band": "string", "risk": "float64"}, name="_kp_churn_risk"
)
FEATURES = (
    "days_since_active",
    "tenure_days",
    "days_since_order",
    "events_7d",
    "events_30d",
    "events_90d",
    "events",
    "active_days_30d",
    "orders",
    "orders_90d",
    "revenue",
    "emails_opened_30d",
    "nps",
)
RAW = ("nps",)  # everything else is a count, an amount or days: log1p


def snapshot(active_days: int, jsonb: bool) -> Any:
    """build(t, end): one row per customer active in (t − active_days, t] — features as
    of t, and `churned` = no activity in (t, end]."""

    def build(t: ir.TimestampValue, end: ir.TimestampValue) -> ir.Table:
        e = active_events(end, jsonb=jsonb)
        before = e.timestamp <= t

        def within(days: int) -> ir.BooleanValue:
            return before & (e.timestamp > t - ibis.interval(days=days))

        per = e.group_by("customer_id").aggregate(
            last_at=e.timestamp.max(where=before),
            first_at=e.timestamp.min(where=before),
            events=before.sum(),
            events_7d=within(7).sum(),
            events_30d=within(30).sum(),
            events_90d=within(90).sum(),
            active_days_30d=e.timestamp.date().nunique(where=within(30)),
            emails_opened_30d=(within(30) & (e.event == "Email Opened")).sum(),
            after=(e.timestamp > t).sum(),
        )
        per = per.filter(per.last_at > t - ibis.interval(days=active_days))
        o = ORDERS.filter(ORDERS.ordered_at <= t)
        bought = o.group_by("customer_id").aggregate(
            orders=o.count(),
            orders_90d=(o.ordered_at > t - ibis.interval(days=90)).sum(),
            revenue=o.revenue.coalesce(o.total, 0.0).sum(),
            last_order_at=o.ordered_at.max(),
        )
        v = events_table(jsonb=jsonb)
        v = v.filter(v.timestamp <= t, v.event == "NPS Survey Answered")
        score = json_text(v.properties, ["score"]).try_cast("float64")
        answers = v.group_by("customer_id").aggregate(
            nps=score.argmax(v.timestamp, where=score.notnull())
        )
        j = per.left_join(bought, per.customer_id == bought.customer_id).left_join(
            answers, per.customer_id == answers.customer_id
        )
        tenure = seconds_between(t, per.first_at) / DAY
        return j.select(
            per.customer_id,
            days_since_active=seconds_between(t, per.last_at) / DAY,
            tenure_days=tenure,
            days_since_order=(seconds_between(t, j.last_order_at) / DAY).fill_null(tenure),
            events_7d=per.events_7d,
            events_30d=per.events_30d,
            events_90d=per.events_90d,
            events=per.events,
            active_days_30d=per.active_days_30d,
            orders=j.orders.fill_null(0),
            orders_90d=j.orders_90d.fill_null(0),
            revenue=j.revenue.fill_null(0.0),
            emails_opened_30d=per.emails_opened_30d,
            nps=j.nps,
            churned=per.after == 0,
        ).order_by("customer_id")

    return build


@dataclass
class Snapshot:
    cutoff: Any
    customer_ids: np.ndarray
    x: np.ndarray  # raw features, FEATURES order (nan = unknown)
    churned: np.ndarray


def _snapshot(ctx: Context, t: Any, h: int, active_days: int) -> Snapshot:
    jsonb = ctx.tx.dialect.name == "postgres"
    at = replace(ctx, as_of=t)
    table = at.arrow(("churn_snapshot", active_days, jsonb), snapshot(active_days, jsonb), t + h)
    x = np.column_stack([_floats(table, f) for f in FEATURES]) if table.num_rows else None
    return Snapshot(
        cutoff=t,
        customer_ids=table.column("customer_id").to_numpy(),
        x=x if x is not None else np.empty((0, len(FEATURES))),
        churned=np.asarray(table.column("churned").to_pylist(), dtype=bool),
    )


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype("float64")


class Prepare:
    """The transformation fitted on the training snapshot: log1p, impute, standardise."""

    def __init__(self, x: np.ndarray) -> None:
        logged = self._log(x)
        self.fill = np.array([np.nanmedian(c) if (~np.isnan(c)).any() else 0.0 for c in logged.T])
        filled = self._fill(logged)
        self.mean = filled.mean(axis=0)
        std = filled.std(axis=0)
        # (nearly) constant in training: leave it centred, unscaled (its weight stays ~0)
        self.std = np.where(std < 1e-3, 1.0, std)

    def _log(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        for i, name in enumerate(FEATURES):
            if name not in RAW:
                out[:, i] = np.log1p(np.clip(out[:, i], 0, None))
        return out

    def _fill(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), self.fill, x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (self._fill(self._log(x)) - self.mean) / self.std
        return np.clip(z, -CLIP, CLIP)  # beyond the training range: no wild extrapolation


@dataclass
class Scored:
    train: Snapshot
    test: Snapshot
    now: Snapshot
    risk: np.ndarray
    auc: float | None
    auc_recency: float | None
    weights: dict[str, float]


def fit(ctx: Context, horizon_days: int = 30, active_days: int = 90) -> Scored:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    _check(horizon_days, active_days)
    h = timedelta(days=horizon_days)
    train = _snapshot(ctx, ctx.as_of - 2 * h, h, active_days)
    test = _snapshot(ctx, ctx.as_of - h, h, active_days)
    now = _snapshot(ctx, ctx.as_of, h, active_days)
    _enough(train, "training")
    prepare = Prepare(train.x)
    model = LogisticRegression(C=1.0, max_iter=1000).fit(prepare(train.x), train.churned)
    auc = auc_recency = None
    if len(test.churned) and 0 < test.churned.sum() < len(test.churned):
        auc = float(roc_auc_score(test.churned, model.predict_proba(prepare(test.x))[:, 1]))
        recency = test.x[:, FEATURES.index("days_since_active")]
        auc_recency = float(roc_auc_score(test.churned, recency))
    risk = model.predict_proba(prepare(now.x))[:, 1] if len(now.x) else np.empty(0)
    weights = dict(zip(FEATURES, (float(w) for w in model.coef_[0]), strict=True))
    return Scored(train, test, now, risk, auc, auc_recency, weights)


def _check(horizon_days: int, active_days: int) -> None:
    if not 7 <= horizon_days <= 365:
        raise InvalidInput(f"horizon_days must be between 7 and 365, not {horizon_days}")
    if not 1 <= active_days <= 730:
        raise InvalidInput(f"active_days must be between 1 and 730, not {active_days}")


def _enough(s: Snapshot, which: str) -> None:
    n, churned = len(s.churned), int(s.churned.sum())
    if n < MIN_SAMPLE or churned == 0 or churned == n:
        raise InvalidInput(
            f"the {which} snapshot at {s.cutoff.date()} has {n} active customers, {churned} of "
            f"whom churned; a churn model needs at least {MIN_SAMPLE} and both outcomes "
            "(try a shorter horizon_days, or wait for more history)"
        )


def _band(risk: np.ndarray) -> np.ndarray:
    out = np.full(len(risk), BANDS[-1][0], dtype=object)
    for name, floor in reversed(BANDS[:-1]):
        out[risk >= floor] = name
    return out


def churn_risk(ctx: Context, horizon_days: int = 30, active_days: int = 90) -> dict[str, Any]:
    s = fit(ctx, horizon_days, active_days)
    bands = _band(s.risk)
    return {
        "as_of": ctx.as_of.isoformat(),
        "horizon_days": horizon_days,
        "active_days": active_days,
        "model": "logistic regression on standardised log1p features",
        "training": _sample(s.train),
        "validation": {
            **_sample(s.test),
            "auc": _round(s.auc),
            "auc_recency_only": _round(s.auc_recency),
        },
        "scored": {
            "customers": len(s.risk),
            "mean_risk": _round(float(s.risk.mean())) if len(s.risk) else None,
            "bands": [
                {"band": name, "from": floor, "customers": int((bands == name).sum())}
                for name, floor in BANDS
            ],
        },
        "weights": [
            {"feature": f, "log_odds_per_sd": round(w, 4)}
            for f, w in sorted(s.weights.items(), key=lambda kv: -abs(kv[1]))
        ],
    }


def _sample(s: Snapshot) -> dict[str, Any]:
    n = len(s.churned)
    return {
        "cutoff": s.cutoff.isoformat(),
        "customers": n,
        "churned": int(s.churned.sum()),
        "churn_rate": ratio(int(s.churned.sum()), n),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def who(ctx: Context, *, band: str, horizon_days: int = 30, active_days: int = 90) -> Any:
    """The customers in one risk band (high, medium, low), with their risk."""
    if band not in {b for b, _ in BANDS}:
        raise InvalidInput(f"band must be one of {', '.join(b for b, _ in BANDS)}, not '{band}'")
    s = fit(ctx, horizon_days, active_days)
    ctx.tx.stage(
        SCORED.get_name(),
        pa.table(
            {
                "customer_id": pa.array(s.now.customer_ids, pa.int64()),
                "band": pa.array(_band(s.risk).tolist(), pa.string()),
                "risk": pa.array(s.risk, pa.float64()),
            }
        ),
    )

    def build(as_of: ir.TimestampValue) -> ir.Table:
        return SCORED.filter(SCORED.band == ibis.literal(band)).select("customer_id", "risk")

    return ("churn_risk_who", band), build
