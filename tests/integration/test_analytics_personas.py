"""Personas on a hand-made shop of three obvious kinds of customer (20 of each), ingested
through the real API: the per-customer features must match a computation straight from the
messages, k-means must find the three kinds, and the words must carry the right numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from keepers.analytics import personas
from keepers.analytics.base import Context
from keepers.errors import InvalidInput
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import load_definitions
from keepers.settings import Settings
from keepers.testing.postgres import create_database

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
INGESTED_AT = datetime(2026, 8, 1, tzinfo=UTC)
AFTER = AS_OF + timedelta(days=3)  # events after as-of must not count
GROUPS = ("a", "b", "c")


@dataclass
class Person:
    """What we sent for one customer, and so what their features must be."""

    user: str
    age: int
    orders: list[tuple[datetime, str, float, float, bool]]  # at, category, price, qty, coupon
    opened: int = 0
    clicked: int = 0
    nps: list[tuple[datetime, int]] = field(default_factory=list)

    def expected(self) -> dict[str, float]:
        live = [o for o in self.orders if o[0] <= AS_OF]
        revenue = sum(price * qty for _, _, price, qty, _ in live)
        spend = {c: sum(p * q for _, cat, p, q, _ in live if cat == c) for c in CATEGORIES}
        answers = [score for at, score in sorted(self.nps) if at <= AS_OF]
        return {
            "orders": len(live),
            "revenue": revenue,
            "aov": revenue / len(live),
            "recency_days": (AS_OF - max(o[0] for o in live)).total_seconds() / 86_400,
            "tenure_days": (AS_OF - min(o[0] for o in live)).total_seconds() / 86_400,
            "emails_opened": self.opened,
            "emails_clicked": self.clicked,
            "deal_share": sum(o[4] for o in live) / len(live),
            "nps": answers[-1] if answers else np.nan,
            "age": self.age,
            **{f"share:{c}": v / revenue for c, v in spend.items()},
        }


CATEGORIES = ("Coffee & Tea", "Cameras & Photo", "Pet Supplies")


def people() -> list[Person]:
    """a: coffee regulars (8 orders a month apart, recent, emails, promoters, ~30);
    b: one camera order ~300 days ago, big basket, silent, ~57; c: two couponed pet-food
    orders ~100 and ~160 days ago, detractors, ~42."""
    out = []
    for i in range(20):
        last = AS_OF - timedelta(days=5 + i % 3, hours=i)
        a = Person(
            f"a{i:02d}",
            28 + i % 5,
            [
                (last - timedelta(days=30 * j), "Coffee & Tea", 15.0 + i % 4, 1, False)
                for j in range(8)
            ],
            opened=6 + i % 3,
            clicked=2,
            nps=[(AS_OF - timedelta(days=20), 9 + i % 2)],
        )
        b = Person(
            f"b{i:02d}",
            55 + i % 5,
            [
                (
                    AS_OF - timedelta(days=300 + i % 7),
                    "Cameras & Photo",
                    400.0 + 10 * (i % 5),
                    1,
                    False,
                )
            ],
        )
        c = Person(
            f"c{i:02d}",
            40 + i % 5,
            [
                (AS_OF - timedelta(days=100 + i % 5), "Pet Supplies", 30.0, 2, True),
                (AS_OF - timedelta(days=160 + i % 5), "Pet Supplies", 30.0, 1, True),
            ],
            opened=1,
            nps=[(AS_OF - timedelta(days=90), 3 + i % 2)],
        )
        out += [a, b, c]
    out[0].nps.append((AFTER, 1))  # a00 answers again after as-of: still 9
    out[1].orders.append((AFTER, "Coffee & Tea", 99.0, 1, True))  # b00 buys after as-of
    return out


def messages(persons: list[Person]) -> list[dict]:
    def msg(user: str, at: datetime, **body: Any) -> dict:
        return {"userId": user, "messageId": str(uuid.uuid4()), "timestamp": at.isoformat(), **body}

    out = []
    start = AS_OF - timedelta(days=400)
    for p in persons:
        out.append(msg(p.user, start, type="identify", traits={"age": p.age}))
        for n, (at, category, price, qty, coupon) in enumerate(p.orders):
            props: dict[str, Any] = {
                "order_id": f"{p.user}-{n}",
                "products": [
                    {
                        "product_id": category[:3],
                        "category": category,
                        "price": price,
                        "quantity": qty,
                    }
                ],
            }
            if coupon:
                props["coupon"] = "SAVE10"
            out.append(msg(p.user, at, type="track", event="Order Completed", properties=props))
        for n in range(p.opened):
            at = AS_OF - timedelta(days=10 + n)
            out.append(msg(p.user, at, type="track", event="Email Opened", properties={}))
        for n in range(p.clicked):
            at = AS_OF - timedelta(days=10 + n)
            out.append(msg(p.user, at, type="track", event="Email Link Clicked", properties={}))
        for at, score in p.nps:
            out.append(
                msg(
                    p.user,
                    at,
                    type="track",
                    event="NPS Survey Answered",
                    properties={"score": score},
                )
            )
    # someone who never ordered: no persona
    out.append(msg("visitor", start, type="identify", traits={"age": 99}))
    return out


class Shop:
    def __init__(self, url: str, persons: list[Person], compute: bool = True) -> None:
        self.keepers = Keepers.open(Settings(database_url=url), clock=lambda: INGESTED_AT)
        sent = messages(persons)
        result = self.keepers.ingest_messages(sent, source_id="test")
        assert not result.rejected and result.stored == len(sent)
        if compute:
            self.keepers.compute(as_of=AS_OF)
        with self.keepers.db.transaction() as tx:
            rows = tx.execute("SELECT customer_id, user_id FROM customers")
        self.users = dict(rows)

    def run(self, fn: Any, **options: Any) -> Any:
        with self.keepers.db.transaction() as tx:
            ctx = Context(tx=tx, definitions=load_definitions(tx).definitions, as_of=AS_OF)
            return fn(ctx, **options)

    def who(self, **cell: Any) -> list[str]:
        def listed(ctx: Context) -> list[dict]:
            key, build = personas.who(ctx, **cell)
            return ctx.rows(key, build)

        return sorted(self.users[r["customer_id"]] for r in self.run(listed))


@pytest.fixture(
    scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def shop(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Shop]:
    if request.param == "duckdb":
        url = str(tmp_path_factory.mktemp("personas") / "keepers.duckdb")
    else:
        url = create_database(
            request.getfixturevalue("postgres_server"), f"t_p_{uuid.uuid4().hex[:8]}"
        )
    opened = Shop(url, people())
    yield opened
    opened.keepers.close()


def test_features_match_a_computation_from_the_messages(shop: Shop) -> None:
    fitted = shop.run(personas.fit, k=3)
    users = [shop.users[int(c)] for c in fitted.customer_ids]
    expected = {p.user: p.expected() for p in people()}
    assert sorted(users) == sorted(expected)  # buyers only: not the visitor
    names = {f"cat_{i}": f"share:{c}" for i, c in enumerate(fitted.category_names.values())}
    for feature, values in fitted.raw.items():
        want = [expected[u][names.get(feature, feature)] for u in users]
        np.testing.assert_allclose(values, want, rtol=1e-9, atol=1e-6, err_msg=feature)


def test_three_kinds_of_customer_become_three_personas(shop: Shop) -> None:
    report = shop.run(personas.personas, k=3)
    assert report["customers"] == 60 and report["k"] == 3 and report["k_chosen_by"] == "given"
    members = {p["persona"]: shop.who(persona=p["persona"], k=3) for p in report["personas"]}
    assert sorted(tuple(sorted({u[0] for u in m})) for m in members.values()) == [
        ("a",),
        ("b",),
        ("c",),
    ]
    assert [p["customers"] for p in report["personas"]] == [20, 20, 20]
    kind = {p["persona"]: members[p["persona"]][0][0] for p in report["personas"]}
    by_kind = {kind[p["persona"]]: p for p in report["personas"]}
    orders = next(f for f in by_kind["a"]["features"] if f["feature"] == "orders")
    # 20 × 8 + 20 × 1 + 20 × 2 orders over 60 customers = 3.6667; the coffee regulars: 8
    assert (orders["mean"], orders["overall"]) == (8.0, 3.6667)
    assert "orders 2.2× the average (8.0 vs 3.7)" in by_kind["a"]["description"]
    deals = next(f for f in by_kind["c"]["features"] if f["feature"] == "deal_share")
    # every order of c is couponed, none of a's or b's: (20 × 1 + 40 × 0) / 60
    assert (deals["mean"], deals["overall"]) == (1.0, 0.3333)
    # named by the two strongest non-category traits and the category that stands out
    assert {k: p["name"] for k, p in by_kind.items()} == {
        "a": "Click-happy frequent Coffee & Tea fans",  # clicks 3.0×, orders 2.2×
        "b": "High-value big-basket Cameras & Photo fans",  # revenue 420 vs 214, AOV 420 vs 160.5
        "c": "Deal-seeking unhappy Pet Supplies fans",  # coupons 100 % vs 33 %, NPS 3.5 vs 6.5
    }
    assert "revenue 2.0× the average (420.0 vs 214.0)" in by_kind["b"]["description"]


def test_choosing_k_by_silhouette_finds_the_three_kinds(shop: Shop) -> None:
    report = shop.run(personas.personas)
    assert report["k_chosen_by"] == "silhouette"
    assert report["k"] == 3
    assert max(report["silhouette"].values()) == report["silhouette"]["3"]


def test_stage_mix_is_the_members_stage_at_as_of(shop: Shop) -> None:
    report = shop.run(personas.personas, k=3)
    with shop.keepers.db.transaction() as tx:  # compute ran as of AS_OF: its state is then
        stage = dict(tx.execute("SELECT customer_id, stage FROM customer_state"))
    by_user = {shop.users[c]: s for c, s in stage.items()}
    for p in report["personas"]:
        mix: dict[str, int] = {}
        for user in shop.who(persona=p["persona"], k=3):
            mix[by_user[user]] = mix.get(by_user[user], 0) + 1
        assert {s["stage"]: s["customers"] for s in p["stages"]} == mix


def test_same_data_same_personas_and_who_by_name(shop: Shop) -> None:
    first, second = shop.run(personas.personas, k=3), shop.run(personas.personas, k=3)
    assert first == second
    named = first["personas"][1]
    assert shop.who(persona=named["name"], k=3) == shop.who(persona=1, k=3)
    with pytest.raises(InvalidInput, match="no persona named"):
        shop.who(persona="Nobody", k=3)
    with pytest.raises(InvalidInput, match="between 0 and 2"):
        shop.who(persona=3, k=3)


def test_too_few_customers_is_a_clear_error(tmp_path: Any) -> None:
    few = Shop(str(tmp_path / "few.duckdb"), people()[:12], compute=False)
    try:
        with pytest.raises(InvalidInput, match="at least 50 customers with an order; there are 12"):
            few.run(personas.personas)
        with pytest.raises(InvalidInput, match="k must be 0"):
            few.run(personas.personas, k=1)
    finally:
        few.keepers.close()


def test_persona_in_rules_is_the_reports_persona_at_the_days_midnight(shop: Shop) -> None:
    report = shop.run(personas.personas)  # as of AS_OF, a midnight
    assert report["k"] == 3
    for p in report["personas"]:
        shop.keepers.lifecycle.segment_save(f"persona_{p['persona']}", f"persona == {p['persona']}")
    named = report["personas"][2]
    shop.keepers.lifecycle.segment_save("named", f'persona_name == "{named["name"]}"')
    shop.keepers.compute(as_of=AS_OF + timedelta(hours=10))
    with shop.keepers.db.transaction() as tx:
        rows = tx.execute("SELECT customer_id, segments FROM customer_state")
    inside = {
        key: sorted(shop.users[c] for c, s in rows if f",{key}," in s)
        for key in [f"persona_{p['persona']}" for p in report["personas"]] + ["named"]
    }
    for p in report["personas"]:
        assert inside[f"persona_{p['persona']}"] == shop.who(persona=p["persona"])
    assert inside["named"] == shop.who(persona=named["persona"])
    explained = shop.keepers.lifecycle.explain("visitor", as_of=AS_OF + timedelta(hours=10))
    assert explained["traits"]["persona"] is None  # never ordered: not clustered
