"""Personas: k-means clusters of customers, described by what sets each apart.

Who is clustered: customers with at least one order up to the as-of moment (a persona of
people who never bought has no orders, spend or recency to speak of). One query fetches, per
customer, as of that moment:

- behaviour — `orders`; `revenue` (order value: revenue, else total); `aov` = revenue ÷
  orders; `recency_days` since the last order; `tenure_days` since the first;
  `emails_opened` and `emails_clicked` ('Email Opened' / 'Email Link Clicked' events);
  the category mix — each of the (up to 8) most bought categories' share of the customer's
  line-item value (price × quantity);
- demographics — `age` from the profile traits, when the data has it;
- psychographics — `nps`, the last 'NPS Survey Answered' score, and `deal_share`, the share
  of orders with a coupon or a discount.

Counts, money and days are log-transformed (log1p: one big spender should not make a
cluster of their own); missing ages and NPS answers take the median of the known ones;
features that are constant or entirely missing are left out; everything is standardised
(z-scores), with the category shares weighted √(2 ÷ categories) so the mix as a whole
weighs as much as two features. k-means (scikit-learn, k-means++, `random_state` 0) then
finds the clusters; with k = 0, k is the one in 3…8 with the best silhouette (k-means fitted
on up to 20,000 customers, silhouette measured on 4,000 of them). Above 200,000 customers the
final model is fitted on a random 200,000 (seeded) and every customer is then assigned to
the nearest centre. Same data, same result.

Personas are numbered by size (0 = the largest). Each is described by the features whose
average z-score in it lies furthest from 0 (the average customer), in plain words with
the raw averages ("orders 2.3× the average (4.1 vs 1.8)"), named from the top ones, and
shown with its stage mix (the stage each member was in at the as-of moment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa

from keepers.analytics.base import Context, ratio, seconds_between, stage_at, stays
from keepers.engine.plan import TS, events_table, json_text
from keepers.errors import InvalidInput

MIN_CUSTOMERS = 50
K_RANGE = range(3, 9)
MAX_K = 20
FIT_SAMPLE = 200_000
SEARCH_SAMPLE = 20_000
SILHOUETTE_SAMPLE = 4_000
MAX_CATEGORIES = 8
SEED = 0
DAY = 86_400.0
DESCRIBED = 4  # features in a persona's description
SHOWN = 8  # features listed with their numbers
ASSIGNED = ibis.table({"customer_id": "int64", "persona": "int64"}, name="_kp_personas")

ORDERS_FULL = ibis.table(
    {
        "order_id": "string",
        "customer_id": "int64",
        "ordered_at": TS,
        "revenue": "float64",
        "total": "float64",
        "discount": "float64",
        "coupon": "string",
    },
    name="orders",
)
ITEMS = ibis.table(
    {"order_id": "string", "category": "string", "price": "float64", "quantity": "float64"},
    name="order_items",
)
EMAIL_OPENED, EMAIL_CLICKED, NPS = "Email Opened", "Email Link Clicked", "NPS Survey Answered"

# feature: (how it is transformed, words for high, words for low)
FEATURES: dict[str, tuple[str, str, str]] = {
    "orders": ("log", "Frequent", "One-time"),
    "revenue": ("log", "High-value", "Low-value"),
    "aov": ("log", "Big-basket", "Small-basket"),
    "recency_days": ("log", "Lapsed", "Recent"),
    "tenure_days": ("log", "Long-standing", "New"),
    "emails_opened": ("log", "Email-engaged", "Email-silent"),
    "emails_clicked": ("log", "Click-happy", "Non-clicking"),
    "deal_share": ("raw", "Deal-seeking", "Full-price"),
    "nps": ("raw", "Delighted", "Unhappy"),
    "age": ("raw", "Older", "Younger"),
}
LABELS = {
    "orders": "orders",
    "revenue": "revenue",
    "aov": "average order value",
    "emails_opened": "emails opened",
    "emails_clicked": "email clicks",
}


# --- the data -------------------------------------------------------------------------------


def categories(as_of: ir.TimestampValue) -> ir.Table:
    """The categories bought, by how many customers bought them."""
    o = ORDERS_FULL.filter(ORDERS_FULL.ordered_at <= as_of)
    j = ITEMS.join(o, ITEMS.order_id == o.order_id)
    j = j.filter(j.category.notnull())
    return j.group_by("category").aggregate(buyers=j.customer_id.nunique())


def features(cats: tuple[str, ...], jsonb: bool) -> Any:
    """One row per customer with an order: the raw features and the stage at as-of."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        o = ORDERS_FULL.filter(ORDERS_FULL.ordered_at <= as_of)
        value = o.revenue.coalesce(o.total, 0.0)
        deal = (o.coupon.notnull() & (o.coupon != "")) | (o.discount.fill_null(0.0) > 0)
        per = o.group_by("customer_id").aggregate(
            orders=o.count(),
            revenue=value.sum(),
            deals=deal.sum(),
            first_at=o.ordered_at.min(),
            last_at=o.ordered_at.max(),
        )
        j = ITEMS.join(o, ITEMS.order_id == o.order_id)
        line = j.price.fill_null(0.0) * j.quantity
        mix = j.group_by("customer_id").aggregate(
            items_value=line.sum(),
            **{f"cat_{n}": line.sum(where=j.category == c) for n, c in enumerate(cats)},
        )
        e = events_table(jsonb=jsonb)
        e = e.filter(e.timestamp <= as_of, e.event.isin([EMAIL_OPENED, EMAIL_CLICKED, NPS]))
        score = json_text(e.properties, ["score"]).try_cast("float64")
        answered = (e.event == NPS) & score.notnull()
        ev = e.group_by("customer_id").aggregate(
            emails_opened=(e.event == EMAIL_OPENED).sum(),
            emails_clicked=(e.event == EMAIL_CLICKED).sum(),
            nps=score.argmax(e.timestamp, where=answered),
        )
        c = ibis.table({"customer_id": "int64", "traits": dt.JSON(binary=jsonb)}, name="customers")
        ages = c.select("customer_id", age=json_text(c.traits, ["age"]).try_cast("float64"))
        s = stays(as_of)
        s = s.filter(stage_at(s, as_of))
        stage = s.group_by("customer_id").aggregate(stage=s.stage.argmax(s.entered_at))
        t = (
            per.left_join(mix, per.customer_id == mix.customer_id)
            .left_join(ev, per.customer_id == ev.customer_id)
            .left_join(ages, per.customer_id == ages.customer_id)
            .left_join(stage, per.customer_id == stage.customer_id)
        )
        spend = t.items_value.nullif(0.0)
        return t.select(
            per.customer_id,
            orders=per.orders,
            revenue=per.revenue,
            aov=per.revenue / per.orders,
            recency_days=seconds_between(as_of, per.last_at) / DAY,
            tenure_days=seconds_between(as_of, per.first_at) / DAY,
            emails_opened=t.emails_opened.fill_null(0),
            emails_clicked=t.emails_clicked.fill_null(0),
            deal_share=per.deals / per.orders,
            nps=t.nps,
            age=t.age,
            stage=t.stage,
            **{f"cat_{n}": (t[f"cat_{n}"] / spend).fill_null(0.0) for n in range(len(cats))},
        ).order_by("customer_id")

    return build


# --- the model ------------------------------------------------------------------------------


@dataclass
class Fitted:
    """Customers (sorted by id), their persona, and what the description needs."""

    customer_ids: np.ndarray
    persona: np.ndarray  # by size: 0 = largest
    stages: list[Any]
    raw: dict[str, np.ndarray]  # feature → raw values (nan = unknown)
    z: dict[str, np.ndarray]  # feature → standardised model input (unweighted)
    k: int
    chosen_by: str
    silhouettes: dict[int, float]
    category_names: dict[str, str]


def fit(ctx: Context, k: int = 0) -> Fitted:
    """Fetch the features and cluster them (deterministic for the same data)."""
    if k != 0 and not 2 <= k <= MAX_K:
        raise InvalidInput(f"k must be 0 (choose) or between 2 and {MAX_K}, not {k}")
    found = ctx.rows(("personas_categories",), categories)
    found.sort(key=lambda r: (-int(r["buyers"]), r["category"]))
    cats = tuple(r["category"] for r in found[:MAX_CATEGORIES])
    jsonb = ctx.tx.dialect.name == "postgres"
    table = ctx.arrow(("personas_features", cats, jsonb), features(cats, jsonb))
    n = table.num_rows
    if n < MIN_CUSTOMERS:
        raise InvalidInput(
            f"personas need at least {MIN_CUSTOMERS} customers with an order; "
            f"there are {n} as of {ctx.as_of.date()}"
        )
    raw = {name: _column(table, name) for name in FEATURES}
    category_names = {f"cat_{i}": c for i, c in enumerate(cats)}
    raw.update({name: _column(table, name) for name in category_names})
    z, weights = _standardise(raw, category_names)
    x = np.column_stack([z[f] * weights[f] for f in z])
    model, chosen, scores, chosen_by = _cluster(x, k)
    labels = model.predict(x) if len(x) > FIT_SAMPLE else model.labels_
    persona = _by_size(labels, chosen)
    return Fitted(
        customer_ids=table.column("customer_id").to_numpy(),
        persona=persona,
        stages=table.column("stage").to_pylist(),
        raw=raw,
        z=z,
        k=chosen,
        chosen_by=chosen_by,
        silhouettes=scores,
        category_names=category_names,
    )


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype("float64")


def _standardise(
    raw: dict[str, np.ndarray], category_names: dict[str, str]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    z, weights = {}, {}
    cat_weight = np.sqrt(2 / max(len(category_names), 1))
    for name, values in raw.items():
        kind = FEATURES[name][0] if name in FEATURES else "raw"
        known = ~np.isnan(values)
        if not known.any():
            continue
        v = np.where(known, values, np.median(values[known]))
        if kind == "log":
            v = np.log1p(np.clip(v, 0, None))
        std = v.std()
        if std < 1e-12:
            continue
        z[name] = (v - v.mean()) / std
        weights[name] = cat_weight if name in category_names else 1.0
    return z, weights


def _cluster(x: np.ndarray, k: int) -> tuple[Any, int, dict[int, float], str]:
    """k-means on (a sample of) x; with k = 0, k by silhouette, searched on a smaller sample
    and then refitted on the fitting sample when that is larger."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(SEED)

    def sample(data: np.ndarray, size: int) -> np.ndarray:
        return data if len(data) <= size else data[np.sort(rng.choice(len(data), size, False))]

    def kmeans(data: np.ndarray, clusters: int) -> Any:
        return KMeans(n_clusters=clusters, n_init=4, random_state=SEED).fit(data)

    fit_x = sample(x, FIT_SAMPLE)
    if k:
        return kmeans(fit_x, k), k, {}, "given"
    search_x = sample(fit_x, SEARCH_SAMPLE)
    scored = np.sort(rng.choice(len(search_x), min(SILHOUETTE_SAMPLE, len(search_x)), False))
    scores, models = {}, {}
    for clusters in K_RANGE:
        if clusters >= len(scored):
            break
        models[clusters] = kmeans(search_x, clusters)
        labels = models[clusters].labels_[scored]
        if len(set(labels.tolist())) < 2:
            continue
        scores[clusters] = round(float(silhouette_score(search_x[scored], labels)), 4)
    if not scores:
        raise InvalidInput("the customers are too alike to form personas")
    best = max(scores, key=lambda c: (scores[c], -c))
    model = models[best] if len(search_x) == len(fit_x) else kmeans(fit_x, best)
    return model, best, scores, "silhouette"


def _by_size(labels: np.ndarray, k: int) -> np.ndarray:
    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return rank[labels]


# --- the report -----------------------------------------------------------------------------


def personas(ctx: Context, k: int = 0) -> dict[str, Any]:
    return describe(ctx, fit(ctx, k))


def describe(ctx: Context, f: Fitted) -> dict[str, Any]:
    n = len(f.customer_ids)
    rows, names = [], set()
    for p in range(f.k):
        members = f.persona == p
        traits = _distinguishing(f, members)
        name = _name(traits, f.category_names)
        if name in names:
            name = f"{name} ({p})"
        names.add(name)
        rows.append(
            {
                "persona": p,
                "name": name,
                "customers": int(members.sum()),
                "share": ratio(int(members.sum()), n),
                "description": [t["text"] for t in traits[:DESCRIBED]],
                "features": [_rounded_trait(t, f.category_names) for t in traits[:SHOWN]],
                "stages": _stage_mix(f, members),
            }
        )
    return {
        "as_of": ctx.as_of.isoformat(),
        "customers": n,
        "k": f.k,
        "k_chosen_by": f.chosen_by,
        "silhouette": {str(c): s for c, s in f.silhouettes.items()},
        "features_used": [
            f"share:{f.category_names[name]}" if name in f.category_names else name for name in f.z
        ],
        "personas": rows,
    }


def _distinguishing(f: Fitted, members: np.ndarray) -> list[dict[str, Any]]:
    """Every feature used, furthest from the average customer first."""
    traits = []
    for name, z in f.z.items():
        values = f.raw[name]
        traits.append(
            {
                "feature": name,
                "z": float(z[members].mean()),
                "mean": _nanmean(values[members]),
                "overall": _nanmean(values),
            }
        )
    traits.sort(key=lambda t: (-abs(t["z"]), t["feature"]))
    for t in traits:
        t["text"] = _words(t, f.category_names)
    return traits


def _nanmean(values: np.ndarray) -> float | None:
    known = values[~np.isnan(values)]
    return float(known.mean()) if len(known) else None


def _words(t: dict[str, Any], category_names: dict[str, str]) -> str:
    name, mean, overall = t["feature"], t["mean"], t["overall"]
    if mean is None or overall is None:
        return f"{name}: unknown"
    if name in category_names:
        return f"{category_names[name]} {mean:.0%} of spend vs {overall:.0%} overall"
    if name == "deal_share":
        return f"coupons or discounts on {mean:.0%} of orders vs {overall:.0%} overall"
    if name == "recency_days":
        return f"last order {mean:.0f} days ago vs {overall:.0f} on average"
    if name == "tenure_days":
        return f"first order {mean:.0f} days ago vs {overall:.0f} on average"
    if name == "nps":
        return f"NPS answer {mean:.1f} vs {overall:.1f} on average"
    if name == "age":
        return f"age {mean:.0f} vs {overall:.0f} on average"
    label = LABELS[name]
    if overall > 0:
        return f"{label} {mean / overall:.1f}× the average ({mean:.1f} vs {overall:.1f})"
    return f"{label} {mean:.1f} vs {overall:.1f} on average"


def _name(traits: list[dict[str, Any]], category_names: dict[str, str]) -> str:
    """Two adjectives from the strongest traits, and the favourite category if it stands out."""
    top = traits[:DESCRIBED]
    words = [
        FEATURES[t["feature"]][1 if t["z"] > 0 else 2]
        for t in top
        if t["feature"] in FEATURES and abs(t["z"]) >= 0.25
    ][:2]
    favourite = next(
        (
            category_names[t["feature"]]
            for t in top
            if t["feature"] in category_names and t["z"] > 0
        ),
        None,
    )
    noun = f"{favourite} fans" if favourite else "customers"
    if not words:
        return f"Typical {noun}"
    return " ".join([words[0], *(w.lower() for w in words[1:]), noun])


def _rounded_trait(t: dict[str, Any], category_names: dict[str, str]) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    name = t["feature"]
    return {
        "feature": f"share:{category_names[name]}" if name in category_names else name,
        "z": r(t["z"]),
        "mean": r(t["mean"]),
        "overall": r(t["overall"]),
    }


def _stage_mix(f: Fitted, members: np.ndarray) -> list[dict[str, Any]]:
    stages = np.array([s or "" for s in f.stages], dtype=object)[members]
    found, counts = np.unique(stages, return_counts=True)
    total = int(members.sum())
    mix = sorted(zip(found.tolist(), counts.tolist(), strict=True), key=lambda x: (-x[1], x[0]))
    return [
        {"stage": s or None, "customers": int(c), "share": ratio(int(c), total)} for s, c in mix
    ]


# --- who ------------------------------------------------------------------------------------


def who(ctx: Context, *, persona: str, k: int = 0) -> Any:
    """The customers of one persona, by number ("0") or by the name the report gave it."""
    f = fit(ctx, k)
    index = _persona_index(ctx, f, persona)
    table = pa.table(
        {
            "customer_id": pa.array(f.customer_ids, pa.int64()),
            "persona": pa.array(f.persona, pa.int64()),
        }
    )
    ctx.tx.stage(ASSIGNED.get_name(), table)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        a = ASSIGNED
        return a.filter(a.persona == ibis.literal(index)).select("customer_id", "persona")

    return ("personas_who", index), build


def _persona_index(ctx: Context, f: Fitted, persona: int | str) -> int:
    text = str(persona).strip()
    if text.isdigit():
        index = int(text)
    else:
        names = {p["name"].lower(): p["persona"] for p in describe(ctx, f)["personas"]}
        if text.lower() not in names:
            raise InvalidInput(f"no persona named '{persona}'; personas: {', '.join(names)}")
        index = names[text.lower()]
    if not 0 <= index < f.k:
        raise InvalidInput(f"persona must be between 0 and {f.k - 1}, not {persona}")
    return index
