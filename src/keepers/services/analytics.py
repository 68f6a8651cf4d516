"""Reports: one entry point for the CLI, the REST API and the dashboard.

`report(name, as_of, **options)` answers with plain data; `who(name, cell…)` lists the
customers behind one of its numbers, from the same per-customer table the number counts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Any

import ibis.expr.types as ir

from keepers.analytics import (
    activity,
    churn,
    churn_model,
    clv,
    cohorts,
    funnel,
    health,
    nps,
    personas,
    products,
    rfm,
)
from keepers.analytics.base import CUSTOMERS, Context
from keepers.engine.compute import utc
from keepers.errors import InvalidInput
from keepers.services.lifecycle import compute_transaction, load_definitions
from keepers.store.database import Database

REPORTS: dict[str, Callable[..., dict[str, Any]]] = {
    "funnel": funnel.funnel,
    "churn": churn.churn,
    "retention": churn.churn,
    "cohorts": cohorts.cohorts,
    "lifecycle": activity.lifecycle,
    "rfm": rfm.rfm,
    "health": health.health,
    "clv": clv.clv,
    "churn-risk": churn_model.churn_risk,
    "personas": personas.personas,
    "cross-sell": products.cross_sell,
    "replenishment": products.replenishment,
    "nps": nps.nps,
}
WHO: dict[str, Callable[..., Any]] = {
    "funnel": funnel.who,
    "churn": churn.who,
    "retention": churn.who,
    "cohorts": cohorts.who,
    "lifecycle": activity.who,
    "rfm": rfm.who,
    "health": health.who,
    "clv": clv.who,
    "churn-risk": churn_model.who,
    "personas": personas.who,
    "cross-sell": products.who_cross_sell,
    "replenishment": products.who_replenishment,
    "nps": nps.who,
}
MAX_WHO = 10_000


def _context(tx: Any, as_of: datetime, current: bool) -> Context:
    return Context(
        tx=tx, definitions=load_definitions(tx).definitions, as_of=utc(as_of), current=current
    )


def _call(what: str, name: str, func: Callable[..., Any], ctx: Context, given: dict) -> Any:
    """Call a report (or its `who`) with the options it takes; name any it does not."""
    parameters = inspect.signature(func).parameters
    accepted = [p for p in parameters if p != "ctx"]
    options = {
        k: _typed(k, v, str(parameters[k].annotation)) if k in parameters else v
        for k, v in given.items()
        if v is not None
    }
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "none"
        raise InvalidInput(
            f"{what} '{name}' has no option {', '.join(unknown)} (it takes: {takes})"
        )
    try:
        return func(ctx, **options)
    except TypeError as exc:  # a required cell option is missing
        raise InvalidInput(f"{what} '{name}': {exc}".replace("who() ", "")) from None


def _typed(name: str, value: Any, annotation: str) -> Any:
    """Text from a command line or a query string, as the option's declared type."""
    if not isinstance(value, str) or "int" not in annotation:
        return value
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, not '{value}'") from None


def report(
    db: Database, name: str, *, as_of: datetime, current: bool = False, **options: Any
) -> dict[str, Any]:
    """One report as of a moment; options are the report's own (period, by, mode …).
    `current` says no past moment was asked for, so the stored state may answer."""
    run = REPORTS.get(name)
    if run is None:
        raise InvalidInput(f"unknown report '{name}'; reports: {', '.join(REPORTS)}")
    with compute_transaction(db) as tx:
        result = _call("report", name, run, _context(tx, as_of, current), options)
    return {"report": name, **result}


def who(
    db: Database,
    name: str,
    *,
    as_of: datetime,
    current: bool = False,
    limit: int = 100,
    **cell: Any,
) -> dict[str, Any]:
    """The customers behind one number of a report, with their ids and emails."""
    pick = WHO.get(name)
    if pick is None:
        raise InvalidInput(
            f"no customer lists for report '{name}'; they exist for: {', '.join(WHO)}"
        )
    if not 1 <= limit <= MAX_WHO:
        raise InvalidInput(f"limit must be between 1 and {MAX_WHO:,}, not {limit}")
    with compute_transaction(db) as tx:
        ctx = _context(tx, as_of, current)
        key, build = _call("customer list of", name, pick, ctx, cell)

        def listed(at: ir.TimestampValue) -> ir.Table:
            t = build(at)
            c = CUSTOMERS
            joined = t.left_join(c, t.customer_id == c.customer_id)
            return joined.select(
                *[t[col] for col in t.columns], user_id=c.user_id, email=c.email
            ).order_by(t.customer_id)

        def counted(at: ir.TimestampValue) -> ir.Table:
            return build(at).aggregate(n=lambda t: t.count())

        total = ctx.rows((key, "count"), counted)[0]["n"]
        rows = ctx.arrow((key, "list"), lambda at: listed(at).limit(limit)).to_pylist()
    return {
        "report": name,
        "as_of": as_of.isoformat(),
        "cell": {k: v for k, v in cell.items() if v is not None},
        "customers": int(total),
        "shown": len(rows),
        "rows": [{k: _plain(v) for k, v in r.items()} for r in rows],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 4)
    return value
