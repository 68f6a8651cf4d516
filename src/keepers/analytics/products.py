"""Products: co-purchase affinity and the next-best product, spending trends, and
replenishment (when a consumable is due again).

A *product* is a line item's `product_id`, else its `sku`, else its `name` (the spec treats
`product_id` as the item's identity; CSV imports fall back to the SKU). Everything counts
orders placed up to the as-of moment.

Affinity (market-basket analysis at the customer level, Agrawal et al. 1993): a customer
"bought A" if any of their orders up to as-of held A, so a basket is a customer's whole
purchase history, which is what cross-selling to that customer needs. With N buyers,
n(A) customers who bought A and n(AB) who bought both:

- support(A, B) = n(AB) (also shown as n(AB) ÷ N); pairs with fewer than `min_support`
  customers are ignored as noise;
- confidence(A → B) = P(B | A) = n(AB) ÷ n(A);
- lift(A, B) = P(A ∧ B) ÷ (P(A) P(B)) = n(AB) · N ÷ (n(A) n(B)); 1 = independent, > 1 =
  bought together more often than chance.

The *next-best product* of a customer is the product B they have not bought with the highest
lift(A, B) over the products A they have bought (pairs with support ≥ `min_support` and
lift > 1 only); ties go to the higher confidence(A → B), then the smaller product key.

Spending trend: revenue (order value: revenue, else total) in the recent window
(as_of − w, as_of] against the prior one (as_of − 2w, as_of − w], w = `window_days` (90).
Customers with an order in either window only: *expanding* when recent ≥ prior × (1 + c),
*contracting* when 0 < recent ≤ prior × (1 − c), c = `change` (0.25), else *steady*;
*stopped* when they spent in the prior window but not the recent one, *started* the
other way round (new or returning customers).

Replenishment: a *purchase* of a product is an order (a distinct order time) holding it; a
gap is the time between two consecutive purchases of it by one customer, in days. A product
is a *consumable* when at least `min_repeaters` (5) customers, and at least `min_repeat_share`
(25 %) of its buyers, bought it twice or more (durables such as a camera are re-bought by a
few customers too; in the demo shop they sit at 4–17 %, consumables at 33–48 %). Each
customer's cycle for it is the median of their own gaps when they have two or more gaps
(three purchases); otherwise the product's cycle: the median, over its repeat buyers, of
each one's median gap (every customer counts once, however often they buy). The expected
re-order moment is the last purchase + the cycle. With the window [as_of, as_of + d):
*due* — expected in the window; *overdue* — expected before as_of, but less than one cycle
ago; *lapsed* — expected more than one cycle ago (they have most likely stopped);
*later* — expected after the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import ORDERS, Context, live_orders, ratio, seconds_between
from keepers.engine.plan import TS
from keepers.errors import InvalidInput

DAY = 86_400.0
ITEMS = ibis.table(
    {"order_id": "string", "product_id": "string", "sku": "string", "name": "string"},
    name="order_items",
)
CYCLES = ibis.table(  # `cycles` as the replenishment report writes it for its queries
    {
        "customer_id": "int64",
        "product": "string",
        "purchases": "int64",
        "gaps": "int64",
        "last_at": TS,
        "cycle_days": "float64",
        "cycle_from": "string",
        "expected_at": TS,
        "status": "string",
    },
    name="_kp_cycles",
)
TRENDS = ("expanding", "steady", "contracting", "started", "stopped")
STATUSES = ("due", "overdue", "lapsed", "later")
SAMPLE = 50


# --- what was bought ------------------------------------------------------------------------


def purchases(as_of: ir.TimestampValue) -> ir.Table:
    """(customer_id, product, name, ordered_at): one row per line item of a live order."""
    i = ITEMS
    o = ORDERS.filter(ORDERS.ordered_at <= as_of)
    j = i.join(o, i.order_id == o.order_id)
    product = i.product_id.coalesce(i.sku, i.name)
    t = j.select(o.customer_id, product=product, name=i.name, ordered_at=o.ordered_at)
    return t.filter(t.product.notnull())


def owned(as_of: ir.TimestampValue) -> ir.Table:
    """(customer_id, product): who has bought what."""
    return purchases(as_of).select("customer_id", "product").distinct()


def catalogue(as_of: ir.TimestampValue) -> ir.Table:
    """(product, name, buyers): every product bought, with how many customers bought it."""
    p = purchases(as_of)
    return p.group_by("product").aggregate(
        name=p.name.max(), buyers=p.customer_id.nunique(), purchases=p.count()
    )


def pairs(min_support: int) -> Any:
    """(a, b, together, buyers_a, buyers_b, customers, lift) for products a < b bought by at
    least `min_support` customers together."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        own = owned(as_of)
        other = own.view()
        both = own.join(
            other, (own.customer_id == other.customer_id) & (own.product < other.product)
        ).select(a=own.product, b=other.product)
        together = both.group_by(["a", "b"]).aggregate(together=both.count())
        together = together.filter(together.together >= min_support)
        buyers = own.group_by("product").aggregate(buyers=own.count())
        customers = own.customer_id.nunique().as_scalar()
        ba, bb = buyers.view(), buyers.view()
        j = together.join(ba, together.a == ba.product).join(bb, together.b == bb.product)
        t = j.select(
            together.a,
            together.b,
            together.together,
            buyers_a=ba.buyers,
            buyers_b=bb.buyers,
            customers=customers,
        )
        return t.mutate(lift=t.together * t.customers.cast("float64") / (t.buyers_a * t.buyers_b))

    return build


def rules(min_support: int) -> Any:
    """Both directions of every pair: (a, b, lift, confidence = P(b | a))."""
    build_pairs = pairs(min_support)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        p = build_pairs(as_of)
        forward = p.select("lift", a=p.a, b=p.b, confidence=p.together.cast("float64") / p.buyers_a)
        backward = p.select(
            "lift", a=p.b, b=p.a, confidence=p.together.cast("float64") / p.buyers_b
        )
        return forward.union(backward)

    return build


def next_best(min_support: int) -> Any:
    """(customer_id, product, because, lift, confidence): each customer's best product to
    offer next — the highest-lift one they have not bought, given one they have.

    Every rule gets one global rank (lift, confidence, product, because: the offer order),
    so a customer's offer is the rule of lowest rank whose `a` they own and `b` they do not.
    A customer owning k products needs only the first k rules from each `a`: those have k
    different `b`, at most k − 1 of them owned. That keeps the offers near Σ k² rows
    instead of every owned product × every rule (31M rows at 1M customers)."""
    build_rules = rules(min_support)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        r = build_rules(as_of)
        r = r.filter(r.lift > 1)
        order = [ibis.desc(r.lift), ibis.desc(r.confidence), r.b, r.a]
        r = r.mutate(rank=ibis.row_number().over(order_by=order))
        r = r.mutate(a_rank=ibis.row_number().over(group_by=r.a, order_by=r["rank"]))
        own = owned(as_of)
        sizes = own.group_by("customer_id").aggregate(k=own.count())
        mine = own.join(sizes, "customer_id")
        offers = mine.join(r, (mine.product == r.a) & (r.a_rank < mine.k)).select(
            mine.customer_id, product=r.b, rank=r["rank"]
        )
        have = own.view()
        fresh = offers.anti_join(
            have, (offers.customer_id == have.customer_id) & (offers.product == have.product)
        )
        best = fresh.group_by("customer_id").aggregate(rank=fresh["rank"].min())
        chosen = best.join(r, best["rank"] == r["rank"])
        return chosen.select(
            best.customer_id, product=r.b, because=r.a, lift=r.lift, confidence=r.confidence
        )

    return build


# --- spending trend -------------------------------------------------------------------------


def trends(window_days: int, change: float) -> Any:
    """(customer_id, recent, prior, trend) for customers who ordered in either window."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        window = ibis.interval(days=window_days)
        o = live_orders(as_of)
        o = o.filter(o.ordered_at > as_of - window - window)
        recent_order = o.ordered_at > as_of - window
        per = o.group_by("customer_id").aggregate(
            recent=o.value.sum(where=recent_order), prior=o.value.sum(where=~recent_order)
        )
        recent, prior = per.recent.fill_null(0.0), per.prior.fill_null(0.0)
        trend = ibis.cases(
            ((prior <= 0) & (recent <= 0), "steady"),
            (prior <= 0, "started"),
            (recent <= 0, "stopped"),
            (recent >= prior * (1 + change), "expanding"),
            (recent <= prior * (1 - change), "contracting"),
            else_="steady",
        )
        return per.select("customer_id", recent=recent, prior=prior, trend=trend)

    return build


# --- replenishment --------------------------------------------------------------------------


def cycles(min_repeaters: int, min_repeat_share: float, window_days: int) -> Any:
    """(customer_id, product, purchases, gaps, cycle_days, cycle_from, last_at, expected_at,
    status) for every buyer of every consumable product."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        p = purchases(as_of).select("customer_id", "product", "ordered_at").distinct()
        w = ibis.window(group_by=[p.customer_id, p.product], order_by=p.ordered_at)
        gap = seconds_between(p.ordered_at, p.ordered_at.lag().over(w)) / DAY
        g = p.mutate(gap=gap)
        per = g.group_by(["customer_id", "product"]).aggregate(
            purchases=g.count(), gaps=g.gap.count(), own=g.gap.median(), last_at=g.ordered_at.max()
        )
        repeat = per.gaps >= 1
        products = per.group_by("product").aggregate(
            buyers=per.count(), repeaters=repeat.sum(), product_cycle=per.own.median(where=repeat)
        )
        products = products.filter(
            products.repeaters >= min_repeaters,
            products.repeaters >= products.buyers * min_repeat_share,
        ).drop("buyers")
        j = per.join(products, "product")
        mine = j.gaps >= 2
        cycle = ibis.cases((mine, j.own), else_=j.product_cycle)
        t = j.select(
            "customer_id",
            "product",
            "purchases",
            "gaps",
            "last_at",
            cycle_days=cycle,
            cycle_from=ibis.cases((mine, "own"), else_="product"),
        )
        seconds = (t.cycle_days * DAY).round().cast("int64")
        expected = t.last_at + seconds.as_interval("s")
        lapsed_at = expected + seconds.as_interval("s")
        status = ibis.cases(
            (expected >= as_of + ibis.interval(days=window_days), "later"),
            (expected >= as_of, "due"),
            (lapsed_at > as_of, "overdue"),
            else_="lapsed",
        )
        return t.mutate(expected_at=expected, status=status)

    return build


# --- reports --------------------------------------------------------------------------------


def cross_sell(
    ctx: Context,
    top: int = 20,
    min_support: int = 5,
    window_days: int = 90,
    change: float = 0.25,
) -> dict[str, Any]:
    _check_affinity(top, min_support)
    change = _check_trend(window_days, change)
    # Each query below reads every order line, so numbers that share one go in one query.
    listed = ctx.rows(("cross_sell_catalogue",), _catalogue_and_buyers)
    names = {r["product"]: r for r in listed}
    customers = int(listed[0]["customers"]) if listed else 0
    build_pairs = pairs(min_support)

    def best_pairs(as_of: ir.TimestampValue) -> ir.Table:
        p = build_pairs(as_of)
        p = p.mutate(pairs_total=p.a.count().over())  # before the limit: all pairs
        return p.order_by([ibis.desc(p.lift), ibis.desc(p.together), p.a, p.b]).limit(top)

    top_pairs = ctx.rows(("cross_sell_pairs", min_support, top), best_pairs)
    pair_count = int(top_pairs[0]["pairs_total"]) if top_pairs else 0
    return {
        "as_of": ctx.as_of.isoformat(),
        "basis": "customers",
        "customers": customers,
        "products": len(names),
        "min_support": min_support,
        "pairs_with_support": pair_count,
        "pairs": [_pair(p, names, customers) for p in top_pairs],
        "next_best": _next_best_summary(ctx, min_support, top, names),
        "trend": _trend_summary(ctx, window_days, change),
    }


def _catalogue_and_buyers(as_of: ir.TimestampValue) -> ir.Table:
    """The catalogue, each row with the number of customers who bought anything."""
    own = owned(as_of)
    return catalogue(as_of).mutate(customers=own.customer_id.nunique().as_scalar())


def _pair(p: dict[str, Any], names: dict[str, dict], customers: int) -> dict[str, Any]:
    together, a, b = int(p["together"]), p["a"], p["b"]
    return {
        "a": a,
        "a_name": names.get(a, {}).get("name"),
        "b": b,
        "b_name": names.get(b, {}).get("name"),
        "support": together,
        "support_share": ratio(together, customers),
        "buyers_a": int(p["buyers_a"]),
        "buyers_b": int(p["buyers_b"]),
        "confidence_a_to_b": ratio(together, p["buyers_a"]),
        "confidence_b_to_a": ratio(together, p["buyers_b"]),
        "lift": round(float(p["lift"]), 4),
    }


def _next_best_summary(
    ctx: Context, min_support: int, top: int, names: dict[str, dict]
) -> dict[str, Any]:
    build = next_best(min_support)

    def counts_and_sample(as_of: ir.TimestampValue) -> ir.Table:
        """Offers per product, and the strongest offers: one query, so the next-best
        products are worked out once (the database keeps a CTE used twice)."""
        t = build(as_of)
        per = t.group_by("product").aggregate(customers=t.count(), avg_lift=t.lift.mean())
        best = t.order_by([ibis.desc(t.lift), ibis.desc(t.confidence), t.customer_id])
        best = best.limit(SAMPLE)
        number, text = ibis.null("float64"), ibis.null("string")
        return per.select(
            "product",
            "customers",
            "avg_lift",
            customer_id=ibis.null("int64"),
            because=text,
            lift=number,
            confidence=number,
        ).union(
            best.select(
                "product",
                customers=ibis.null("int64"),
                avg_lift=number,
                customer_id=best.customer_id,
                because=best.because,
                lift=best.lift,
                confidence=best.confidence,
            )
        )

    found = ctx.rows(("next_best_summary", min_support), counts_and_sample)
    counts = [r for r in found if r["customer_id"] is None]
    counts.sort(key=lambda r: (-int(r["customers"]), r["product"]))
    rows = [r for r in found if r["customer_id"] is not None]
    rows.sort(key=lambda r: (-r["lift"], -r["confidence"], r["customer_id"]))
    return {
        "customers": sum(int(r["customers"]) for r in counts),
        "products_offered": len(counts),
        "by_product": [
            {
                "product": r["product"],
                "name": names.get(r["product"], {}).get("name"),
                "customers": int(r["customers"]),
                "avg_lift": round(float(r["avg_lift"]), 4),
            }
            for r in counts[:top]
        ],
        "sample": [
            {
                "customer_id": int(r["customer_id"]),
                "product": r["product"],
                "because": r["because"],
                "lift": round(float(r["lift"]), 4),
                "confidence": round(float(r["confidence"]), 4),
            }
            for r in rows
        ],
    }


def _trend_summary(ctx: Context, window_days: int, change: float) -> dict[str, Any]:
    build = trends(window_days, change)

    def counts(as_of: ir.TimestampValue) -> ir.Table:
        t = build(as_of)
        return t.group_by("trend").aggregate(
            customers=t.count(), recent=t.recent.sum(), prior=t.prior.sum()
        )

    found = {r["trend"]: r for r in ctx.rows(("trend_counts", window_days, change), counts)}
    groups = {}
    for name in TRENDS:
        r = found.get(name, {})
        groups[name] = {
            "customers": int(r.get("customers") or 0),
            "revenue_recent": round(float(r.get("recent") or 0.0), 2),
            "revenue_prior": round(float(r.get("prior") or 0.0), 2),
        }
    return {
        "window_days": window_days,
        "change": change,
        "recent_window": f"(as_of - {window_days}d, as_of]",
        "prior_window": f"(as_of - {2 * window_days}d, as_of - {window_days}d]",
        "groups": groups,
    }


def replenishment(
    ctx: Context, window_days: int = 7, min_repeaters: int = 5, min_repeat_share: float = 0.25
) -> dict[str, Any]:
    min_repeat_share = _check_replenishment(window_days, min_repeaters, min_repeat_share)
    build = cycles(min_repeaters, min_repeat_share, window_days)
    names = {r["product"]: r for r in ctx.rows(("products_catalogue",), catalogue)}

    def per_product() -> ir.Table:
        t = CYCLES
        flags = {s: (t.status == s).sum() for s in STATUSES}
        return t.group_by("product").aggregate(
            buyers=t.count(),
            repeat_buyers=(t.gaps >= 1).sum(),
            cycle_days=t.cycle_days.max(where=t.cycle_from == "product"),
            own_cycles=(t.cycle_from == "own").sum(),
            **flags,
        )

    def per_status() -> ir.Table:
        t = CYCLES
        return t.group_by("status").aggregate(pairs=t.count(), customers=t.customer_id.nunique())

    def listed(as_of: ir.TimestampValue) -> ir.Table:
        t = CYCLES.filter(CYCLES.status.isin(["due", "overdue"]))
        nearest = seconds_between(t.expected_at, as_of).abs()  # due soonest, just overdue
        ranked = t.mutate(
            n=ibis.row_number().over(
                group_by="status", order_by=[nearest, t.customer_id, t.product]
            )
        )
        return ranked.filter(ranked.n < SAMPLE).drop("n")

    key = (min_repeaters, min_repeat_share, window_days)
    # Each customer's cycles take windows over every order line: worked out once.
    with ctx.written(CYCLES, ("replenish_cycles", *key), build):
        products = ctx.staged_rows(("replenish_products",), per_product)
        statuses = {r["status"]: r for r in ctx.staged_rows(("replenish_status",), per_status)}
        rows = ctx.rows(("replenish_list",), listed)
    products.sort(key=lambda r: (-int(r["due"]) - int(r["overdue"]), r["product"]))
    return {
        "as_of": ctx.as_of.isoformat(),
        "window_days": window_days,
        "min_repeaters": min_repeaters,
        "min_repeat_share": min_repeat_share,
        "consumables": len(products),
        "statuses": {
            s: {
                "pairs": int(statuses.get(s, {}).get("pairs") or 0),
                "customers": int(statuses.get(s, {}).get("customers") or 0),
            }
            for s in STATUSES
        },
        "products": [_product_row(r, names) for r in products],
        "due": [_due_row(r, ctx) for r in rows if r["status"] == "due"],
        "overdue": [_due_row(r, ctx) for r in rows if r["status"] == "overdue"],
    }


def _product_row(r: dict[str, Any], names: dict[str, dict]) -> dict[str, Any]:
    return {
        "product": r["product"],
        "name": names.get(r["product"], {}).get("name"),
        "buyers": int(r["buyers"]),
        "repeat_buyers": int(r["repeat_buyers"]),
        "product_cycle_days": _days(r["cycle_days"]),
        "buyers_with_own_cycle": int(r["own_cycles"]),
        **{s: int(r[s] or 0) for s in STATUSES},
    }


def _due_row(r: dict[str, Any], ctx: Context) -> dict[str, Any]:
    expected = r["expected_at"]
    return {
        "customer_id": int(r["customer_id"]),
        "product": r["product"],
        "purchases": int(r["purchases"]),
        "last_purchase_at": r["last_at"].isoformat(),
        "cycle_days": _days(r["cycle_days"]),
        "cycle_from": r["cycle_from"],
        "expected_at": expected.isoformat(),
        "days_until": round((expected - ctx.as_of).total_seconds() / DAY, 2),
    }


def _days(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


# --- validation -----------------------------------------------------------------------------


def _check_affinity(top: int, min_support: int) -> None:
    if not 1 <= top <= 1000:
        raise InvalidInput(f"top must be between 1 and 1000, not {top}")
    if min_support < 1:
        raise InvalidInput(f"min_support must be at least 1 customer, not {min_support}")


def _check_trend(window_days: int, change: float | str) -> float:
    """The change threshold as a number (options may arrive as text)."""
    if not 1 <= window_days <= 3660:
        raise InvalidInput(f"window_days must be between 1 and 3660, not {window_days}")
    fraction = _number("change", change)
    if not 0 < fraction < 1:
        raise InvalidInput(f"change must be a fraction between 0 and 1, not {change}")
    return fraction


def _check_replenishment(
    window_days: int, min_repeaters: int, min_repeat_share: float | str
) -> float:
    """The repeat share as a number (options may arrive as text)."""
    if not 1 <= window_days <= 366:
        raise InvalidInput(f"window_days must be between 1 and 366, not {window_days}")
    if min_repeaters < 1:
        raise InvalidInput(f"min_repeaters must be at least 1, not {min_repeaters}")
    share = _number("min_repeat_share", min_repeat_share)
    if not 0 <= share <= 1:
        raise InvalidInput(f"min_repeat_share must be between 0 and 1, not {min_repeat_share}")
    return share


def _number(name: str, value: float | str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be a number, not '{value}'") from None


# --- who ------------------------------------------------------------------------------------


def _pair_of(pair: str | Sequence[str]) -> tuple[str, str]:
    parts = pair.split(",") if isinstance(pair, str) else list(pair)
    parts = [str(p).strip() for p in parts]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise InvalidInput(
            f"pair must name two different products, as 'A,B' or [A, B], not {pair!r}"
        )
    return parts[0], parts[1]


def who_cross_sell(
    ctx: Context,
    *,
    pair: str | Sequence[str] | None = None,
    trend: str | None = None,
    next_best_product: str | None = None,
    min_support: int = 5,
    window_days: int = 90,
    change: float = 0.25,
) -> Any:
    """`pair=(A, B)`: buyers of A who have not bought B (the cross-sell targets);
    `trend=…`: customers with that spending trend; `next_best_product=P`: customers whose
    next-best product is P."""
    chosen = [c for c in (pair, trend, next_best_product) if c is not None]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of pair, trend or next_best_product")
    if pair is not None:
        a, b = _pair_of(pair)

        def targets(as_of: ir.TimestampValue) -> ir.Table:
            own = owned(as_of)
            has_a = own.filter(own.product == ibis.literal(a))
            has_b = own.view()
            has_b = has_b.filter(has_b.product == ibis.literal(b))
            without_b = has_a.anti_join(has_b, has_a.customer_id == has_b.customer_id)
            # distinct (a no-op here) ends the join chain, so a caller's join starts anew
            return without_b.select("customer_id").distinct()

        return ("cross_sell_who_pair", a, b), targets
    if trend is not None:
        if trend not in TRENDS:
            raise InvalidInput(f"trend must be one of {', '.join(TRENDS)}, not '{trend}'")
        change = _check_trend(window_days, change)
        build_trends = trends(window_days, change)

        def trending(as_of: ir.TimestampValue) -> ir.Table:
            t = build_trends(as_of)
            return t.filter(t.trend == ibis.literal(trend)).select("customer_id", "recent", "prior")

        return ("cross_sell_who_trend", trend, window_days, change), trending
    _check_affinity(1, min_support)
    build_next = next_best(min_support)

    def offered(as_of: ir.TimestampValue) -> ir.Table:
        t = build_next(as_of)
        return t.filter(t.product == ibis.literal(next_best_product)).select(
            "customer_id", "because", "lift", "confidence"
        )

    return ("cross_sell_who_next", next_best_product, min_support), offered


def who_replenishment(
    ctx: Context,
    *,
    status: str,
    product: str | None = None,
    window_days: int = 7,
    min_repeaters: int = 5,
    min_repeat_share: float = 0.25,
) -> Any:
    """Customers with a consumable in that status (due, overdue, lapsed, later); with
    `product`, one row per customer for that product, else one row per customer with how
    many products are in that status and the earliest expected moment."""
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not '{status}'")
    min_repeat_share = _check_replenishment(window_days, min_repeaters, min_repeat_share)
    build = cycles(min_repeaters, min_repeat_share, window_days)

    def listed(as_of: ir.TimestampValue) -> ir.Table:
        t = build(as_of)
        t = t.filter(t.status == ibis.literal(status))
        if product is not None:
            t = t.filter(t.product == ibis.literal(product))
            return t.select("customer_id", "last_at", "cycle_days", "expected_at")
        return t.group_by("customer_id").aggregate(
            products=t.count(), expected_at=t.expected_at.min()
        )

    key = ("replenish_who", status, product, window_days, min_repeaters, min_repeat_share)
    return key, listed
