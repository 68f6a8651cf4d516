"""Cross-sell, spending trends and replenishment on small hand-made shops, every number
derived by hand in the comments (and, for affinity, also by brute force in Python).

Orders enter through the real ingest API as `Order Completed` messages.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keepers.analytics import products
from keepers.analytics.base import Context
from keepers.errors import InvalidInput
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import load_definitions
from keepers.settings import Settings
from keepers.testing.postgres import create_database

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
INGESTED_AT = datetime(2026, 8, 1, tzinfo=UTC)
CATALOG = {  # product_id: (sku, name, price)
    "COF": ("sku-cof", "Coffee beans", 15.0),
    "FIL": ("sku-fil", "Filters", 5.0),
    "MUG": ("sku-mug", "Mug", 12.0),
    "BEANS": ("sku-beans", "House blend 1kg", 30.0),
    "MUG2": ("sku-mug2", "Travel mug", 20.0),
}


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def order(user: str, at: datetime, items: list[str], revenue: float | None = None) -> dict:
    """An `Order Completed` message; an item is a product_id from CATALOG, or `sku:GRD` for a
    line that only has a SKU (the product key falls back to it)."""
    lines = []
    for item in items:
        if item.startswith("sku:"):
            lines.append({"sku": item[4:], "name": "Grinder", "price": 40.0, "quantity": 1})
        else:
            sku, name, price = CATALOG[item]
            lines.append(
                {"product_id": item, "sku": sku, "name": name, "price": price, "quantity": 1}
            )
    properties: dict[str, Any] = {"order_id": f"o-{uuid.uuid4().hex[:12]}", "products": lines}
    if revenue is not None:
        properties["revenue"] = revenue
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "properties": properties,
    }


# Affinity: ten customers, whole histories in 2025 (outside the trend windows).
# n(COF)=5 (c1 c2 c3 c4 c10), n(FIL)=4 (c1 c2 c3 c5), n(MUG)=5 (c3 c6 c7 c8 c10),
# n(GRD)=3 (c6 c7 c9); together: COF+FIL 3 (c1 c2 c3), COF+MUG 2 (c3 c10),
# GRD+MUG 2 (c6 c7), FIL+MUG 1 (c3); N = 10.
BASKETS = {
    "c1": [["COF", "FIL"]],
    "c2": [["COF"], ["FIL"]],  # bought in two orders: still one customer with both
    "c3": [["COF", "FIL"], ["MUG"]],
    "c4": [["COF"], ["COF"]],
    "c5": [["FIL"]],
    "c6": [["MUG", "sku:GRD"]],
    "c7": [["MUG"], ["sku:GRD"]],
    "c8": [["MUG"]],
    "c9": [["sku:GRD"]],
    "c10": [["COF", "MUG"]],
}

# Trends as of 2026-06-30: recent = (04-01, 06-30], prior = (01-01, 04-01].
TREND_ORDERS = {
    "t1": [("2026-02-10", 100.0), ("2026-05-10", 130.0)],  # +30 % → expanding
    "t2": [("2026-02-10", 100.0), ("2026-05-10", 125.0)],  # +25 % exactly → expanding
    "t3": [("2026-02-10", 100.0), ("2026-05-10", 80.0)],  # −20 % → steady
    "t4": [("2026-01-15", 120.0), ("2026-03-15", 80.0), ("2026-06-01", 50.0)],  # −75 %
    "t5": [("2025-06-01", 90.0), ("2026-06-15", 40.0)],  # nothing in prior → started
    "t6": [("2026-03-01", 60.0)],  # nothing recent → stopped
    # 04-01 00:00 is the prior window's last moment; the July order is after as-of
    "t7": [("2026-04-01", 70.0), ("2026-06-29", 70.0), ("2026-07-01", 1000.0)],  # steady
    "t8": [("2026-01-01", 500.0), ("2025-12-01", 10.0)],  # both before the windows: absent
}


def affinity_messages() -> list[dict]:
    at = day("2025-03-01")
    messages = []
    for user, orders in BASKETS.items():
        for n, items in enumerate(orders):
            messages.append(order(user, at + timedelta(days=n), items))
    for user, orders in TREND_ORDERS.items():
        messages += [order(user, day(d), [], revenue=value) for d, value in orders]
    return messages


# Replenishment as of 2026-06-30, window [06-30, 07-07), min_repeaters 2.
# BEANS: r1 gaps 30, 30 → own cycle 30; r2 gaps 20, 40, 20 → 20; r3 one gap (22) and r4 no
# gap → the product cycle = median of the repeat buyers' own medians [20, 22, 30, 60] = 26;
# r5 gaps 60, 60 → 60. Five buyers, four repeat buyers → a consumable.
BEANS = {
    "r1": ["2026-04-01", "2026-05-01", "2026-05-31"],  # 05-31 + 30 = 06-30 00:00 → due
    "r2": ["2026-03-01", "2026-03-21", "2026-04-30", "2026-05-20"],  # 06-09; + 20 < as-of
    "r3": ["2026-05-10", "2026-06-01"],  # 06-01 + 26 = 06-27 → overdue (lapses 07-23)
    "r4": ["2026-06-10"],  # 06-10 + 26 = 07-06 → due
    "r5": ["2026-01-10", "2026-03-11", "2026-05-10"],  # 05-10 + 60 = 07-09 → later
}
# MUG2: nine buyers, two bought it twice → 2 / 9 = 22 % repeat: a durable at 25 %.
MUG2 = {"r1": 2, "r2": 2, **{f"r{n}": 1 for n in range(6, 13)}}


def replenishment_messages() -> list[dict]:
    messages = []
    for user, days in BEANS.items():
        for d in days:
            items = ["BEANS", "BEANS"] if (user, d) == ("r1", "2026-05-31") else ["BEANS"]
            messages.append(order(user, day(d), items))  # two lines, one purchase
    for user, times in MUG2.items():
        for n in range(times):
            messages.append(order(user, day("2026-02-01") + timedelta(days=40 * n), ["MUG2"]))
    return messages


class Shop:
    """An opened store with the customers' ids by userId."""

    def __init__(self, url: str, messages: list[dict]) -> None:
        self.keepers = Keepers.open(Settings(database_url=url), clock=lambda: INGESTED_AT)
        result = self.keepers.ingest_messages(messages, source_id="test")
        assert not result.rejected and result.stored == len(messages)
        with self.keepers.db.transaction() as tx:
            rows = tx.execute("SELECT user_id, customer_id FROM customers")
        self.ids = {user: cid for user, cid in rows}
        self.users = {cid: user for user, cid in rows}

    def run(self, report: Any, **options: Any) -> dict:
        with self.keepers.db.transaction() as tx:
            return report(self._context(tx), **options)

    def who(self, pick: Any, **cell: Any) -> list[dict]:
        """The rows behind a cell, with `user` in place of the customer id."""
        with self.keepers.db.transaction() as tx:
            ctx = self._context(tx)
            key, build = pick(ctx, **cell)
            rows = ctx.rows(key, build)
        return sorted(
            ({**r, "user": self.users[r["customer_id"]]} for r in rows), key=lambda r: r["user"]
        )

    def _context(self, tx: Any) -> Context:
        return Context(tx=tx, definitions=load_definitions(tx).definitions, as_of=AS_OF)


def _url(request: pytest.FixtureRequest, tmp_path_factory: Any, name: str) -> str:
    if request.param == "duckdb":
        return str(tmp_path_factory.mktemp(name) / "keepers.duckdb")
    server = request.getfixturevalue("postgres_server")
    return create_database(server, f"t_{name}_{uuid.uuid4().hex[:8]}")


@pytest.fixture(
    scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def affinity_shop(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Shop]:
    shop = Shop(_url(request, tmp_path_factory, "affinity"), affinity_messages())
    yield shop
    shop.keepers.close()


@pytest.fixture(
    scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def replenish_shop(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Shop]:
    shop = Shop(_url(request, tmp_path_factory, "replenish"), replenishment_messages())
    yield shop
    shop.keepers.close()


# --- affinity ---------------------------------------------------------------------------------


def test_pairs_have_hand_computed_support_confidence_and_lift(affinity_shop: Shop) -> None:
    report = affinity_shop.run(products.cross_sell, min_support=2)
    assert report["basis"] == "customers"
    assert report["customers"] == 10  # c1 … c10; itemless trend orders are no baskets
    assert report["products"] == 4  # COF FIL MUG, and GRD from lines with only a SKU
    assert report["pairs_with_support"] == 3  # FIL+MUG has support 1 < 2
    got = [
        (p["a"], p["b"], p["support"], p["confidence_a_to_b"], p["confidence_b_to_a"], p["lift"])
        for p in report["pairs"]
    ]
    assert got == [
        ("COF", "FIL", 3, 0.6, 0.75, 1.5),  # 3/5, 3/4, 3·10/(5·4)
        ("GRD", "MUG", 2, 0.666667, 0.4, 1.3333),  # 2/3, 2/5, 2·10/(3·5)
        ("COF", "MUG", 2, 0.4, 0.4, 0.8),  # 2/5, 2/5, 2·10/(5·5)
    ]
    assert report["pairs"][0]["support_share"] == 0.3  # 3 of 10 customers
    assert report["pairs"][0]["a_name"] == "Coffee beans"


def test_next_best_product_is_the_highest_lift_product_not_yet_bought(affinity_shop: Shop) -> None:
    # Rules with lift > 1: COF↔FIL (1.5) and GRD↔MUG (1.33). c10 has COF and MUG: FIL (1.5,
    # via COF) beats GRD (1.33, via MUG). c1 c2 c6 c7 own both sides of every rule they match.
    expected = {
        "c3": ("GRD", "MUG"),
        "c4": ("FIL", "COF"),
        "c5": ("COF", "FIL"),
        "c8": ("GRD", "MUG"),
        "c9": ("MUG", "GRD"),
        "c10": ("FIL", "COF"),
    }
    report = affinity_shop.run(products.cross_sell, min_support=2)
    best = report["next_best"]
    assert best["customers"] == 6
    assert {(r["product"], r["customers"]) for r in best["by_product"]} == {
        ("GRD", 2),
        ("FIL", 2),
        ("COF", 1),
        ("MUG", 1),
    }
    sample = {
        affinity_shop.users[r["customer_id"]]: (r["product"], r["because"]) for r in best["sample"]
    }
    assert sample == expected
    confidence = {affinity_shop.users[r["customer_id"]]: r["confidence"] for r in best["sample"]}
    # confidence(because → product): P(MUG | GRD) = 2/3, P(GRD | MUG) = 2/5, P(COF | FIL) = 3/4
    assert (confidence["c9"], confidence["c3"], confidence["c5"]) == (0.6667, 0.4, 0.75)
    rows = affinity_shop.who(products.who_cross_sell, next_best_product="GRD", min_support=2)
    assert [r["user"] for r in rows] == ["c3", "c8"]


def test_pair_targets_are_buyers_of_a_without_b(affinity_shop: Shop) -> None:
    rows = affinity_shop.who(products.who_cross_sell, pair=("COF", "FIL"))
    assert [r["user"] for r in rows] == ["c10", "c4"]  # COF buyers c1 c2 c3 c4 c10 minus FIL
    rows = affinity_shop.who(products.who_cross_sell, pair="MUG,GRD")
    assert [r["user"] for r in rows] == ["c10", "c3", "c8"]


def test_spending_trend_compares_the_last_90_days_with_the_90_before(affinity_shop: Shop) -> None:
    groups = affinity_shop.run(products.cross_sell)["trend"]["groups"]
    assert groups == {
        "expanding": {"customers": 2, "revenue_recent": 255.0, "revenue_prior": 200.0},  # t1 t2
        "steady": {"customers": 2, "revenue_recent": 150.0, "revenue_prior": 170.0},  # t3 t7
        "contracting": {"customers": 1, "revenue_recent": 50.0, "revenue_prior": 200.0},  # t4
        "started": {"customers": 1, "revenue_recent": 40.0, "revenue_prior": 0.0},  # t5
        "stopped": {"customers": 1, "revenue_recent": 0.0, "revenue_prior": 60.0},  # t6
    }
    rows = affinity_shop.who(products.who_cross_sell, trend="expanding")
    assert [(r["user"], r["recent"], r["prior"]) for r in rows] == [
        ("t1", 130.0, 100.0),
        ("t2", 125.0, 100.0),
    ]
    assert [r["user"] for r in affinity_shop.who(products.who_cross_sell, trend="contracting")] == [
        "t4"
    ]


def test_bad_cells_and_options_are_refused(affinity_shop: Shop) -> None:
    with pytest.raises(InvalidInput, match="exactly one"):
        affinity_shop.who(products.who_cross_sell)
    with pytest.raises(InvalidInput, match="two different products"):
        affinity_shop.who(products.who_cross_sell, pair="COF")
    with pytest.raises(InvalidInput, match="trend must be one of"):
        affinity_shop.who(products.who_cross_sell, trend="growing")
    with pytest.raises(InvalidInput, match="min_support"):
        affinity_shop.run(products.cross_sell, min_support=0)


def test_affinity_matches_a_brute_force_count_on_random_baskets(tmp_path: Any) -> None:
    rng = random.Random(7)
    catalog = list(CATALOG)
    baskets = {f"u{n}": rng.sample(catalog, rng.randint(1, 4)) for n in range(60)}
    shop = Shop(
        str(tmp_path / "random.duckdb"),
        [order(u, day("2025-05-01"), items) for u, items in baskets.items()],
    )
    try:
        report = shop.run(products.cross_sell, min_support=3, top=100)
        best = shop.who(products.who_cross_sell, next_best_product="BEANS", min_support=3)
        offered = {
            shop.users[r["customer_id"]]: r["product"]
            for r in shop.run(products.cross_sell, min_support=3)["next_best"]["sample"]
        }
    finally:
        shop.keepers.close()
    n = len(baskets)
    owners = {p: {u for u, b in baskets.items() if p in b} for p in catalog}
    lift = {}
    for a, b in itertools.combinations(sorted(catalog), 2):
        both = len(owners[a] & owners[b])
        if both >= 3:
            lift[a, b] = lift[b, a] = both * n / (len(owners[a]) * len(owners[b]))
    got = {(p["a"], p["b"]): p["lift"] for p in report["pairs"]}
    assert got == {k: round(v, 4) for k, v in lift.items() if k[0] < k[1]}

    def choice(user: str) -> str | None:
        scored = [
            (lift[a, b], len(owners[a] & owners[b]) / len(owners[a]), b)
            for a in baskets[user]
            for b in catalog
            if b not in baskets[user] and lift.get((a, b), 0) > 1
        ]
        if not scored:
            return None
        top = max(s[:2] for s in scored)
        return min(s[2] for s in scored if s[:2] == top)

    expected = {u: choice(u) for u in baskets}
    assert [r["user"] for r in best] == sorted(u for u, p in expected.items() if p == "BEANS")
    assert offered and all(expected[u] == p for u, p in offered.items())


# --- replenishment ----------------------------------------------------------------------------


def test_expected_reorder_dates_use_own_median_gap_else_the_products(replenish_shop: Shop) -> None:
    report = replenish_shop.run(products.replenishment, min_repeaters=2)
    assert report["consumables"] == 1  # BEANS; MUG2 has 22 % repeat buyers
    (beans,) = report["products"]
    assert beans == {
        "product": "BEANS",
        "name": "House blend 1kg",
        "buyers": 5,
        "repeat_buyers": 4,
        "product_cycle_days": 26.0,  # median of 20, 22, 30, 60
        "buyers_with_own_cycle": 3,  # r1 r2 r5 have two gaps or more
        "due": 2,  # r1 r4
        "overdue": 1,  # r3
        "lapsed": 1,  # r2
        "later": 1,  # r5
    }
    due = [(replenish_shop.users[r["customer_id"]], r) for r in report["due"]]
    assert [(u, r["expected_at"], r["cycle_days"], r["cycle_from"]) for u, r in due] == [
        ("r1", "2026-06-30T00:00:00+00:00", 30.0, "own"),  # due now: the window includes as-of
        ("r4", "2026-07-06T00:00:00+00:00", 26.0, "product"),
    ]
    assert due[0][1]["purchases"] == 3  # two lines of one order are one purchase
    overdue = [(replenish_shop.users[r["customer_id"]], r) for r in report["overdue"]]
    assert [(u, r["expected_at"], r["days_until"]) for u, r in overdue] == [
        ("r3", "2026-06-27T00:00:00+00:00", -3.0)
    ]
    assert report["statuses"]["lapsed"] == {"pairs": 1, "customers": 1}


def test_the_repeat_share_decides_what_is_a_consumable(replenish_shop: Shop) -> None:
    report = replenish_shop.run(products.replenishment, min_repeaters=2, min_repeat_share=0.2)
    assert {p["product"] for p in report["products"]} == {"BEANS", "MUG2"}


def test_who_lists_the_customers_due_overdue_or_lapsed(replenish_shop: Shop) -> None:
    due = replenish_shop.who(products.who_replenishment, status="due", min_repeaters=2)
    assert [(r["user"], r["products"]) for r in due] == [("r1", 1), ("r4", 1)]
    overdue = replenish_shop.who(
        products.who_replenishment, status="overdue", product="BEANS", min_repeaters=2
    )
    assert [(r["user"], r["cycle_days"]) for r in overdue] == [("r3", 26.0)]
    lapsed = replenish_shop.who(products.who_replenishment, status="lapsed", min_repeaters=2)
    assert [r["user"] for r in lapsed] == ["r2"]  # 05-20 + 20 = 06-09, a whole cycle ago
    with pytest.raises(InvalidInput, match="status must be one of"):
        replenish_shop.who(products.who_replenishment, status="soon")


def test_every_cell_lists_through_the_reports_service(
    affinity_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service joins each list with the customers table; a list that ends in a join
    must not be folded into that join (Ibis merges join chains)."""
    from keepers.services import analytics

    monkeypatch.setitem(analytics.WHO, "cross-sell", products.who_cross_sell)
    cells = {
        "pair": (dict(pair="COF,FIL"), ["c10", "c4"]),
        "trend": (dict(trend="stopped"), ["t6"]),
        "next": (dict(next_best_product="GRD", min_support="2"), ["c3", "c8"]),
    }
    for cell, expected in cells.values():
        listed = analytics.who(affinity_shop.keepers.db, "cross-sell", as_of=AS_OF, **cell)
        assert listed["customers"] == len(expected)
        assert sorted(r["user_id"] for r in listed["rows"]) == expected
