"""`p_alive` in rules and the CLV report, against `lifetimes` as the oracle.

A seeded shop of 80 customers with BG/NBD-like order histories goes in as Segment events.
The parameters Keepers fits must be those of an independent fit on the same summary; with
them, `lifetimes`' own P(alive) and expected purchases must equal what the rule engine's
SQL (`p_alive < 0.5` as a segment) and the report compute — in DuckDB and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter

from keepers.errors import InvalidInput
from keepers.models.bgnbd import fit_bgnbd
from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.testing.postgres import create_database

AS_OF = datetime(2026, 6, 30, 15, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 6, 30, tzinfo=UTC)
START = datetime(2025, 1, 1, tzinfo=UTC)
WEEK = timedelta(weeks=1)


def histories() -> dict[str, list[tuple[datetime, float]]]:
    """user → [(order time, value)]: Poisson buying at a per-customer rate until a
    geometric drop-out, the process BG/NBD describes."""
    rng = np.random.default_rng(7)
    out = {}
    for i in range(80):
        first = START + timedelta(days=int(rng.integers(0, 300)), hours=int(rng.integers(0, 23)))
        rate = rng.gamma(1.5, 1 / 6.0)  # orders a week
        drop = rng.beta(1.0, 4.0)
        orders, at = [(first, round(float(rng.gamma(4.0, 10.0)), 2))], first
        while True:
            at = at + timedelta(weeks=float(rng.exponential(1 / rate)))
            if at >= MIDNIGHT or rng.random() < drop:
                break
            orders.append((at, round(float(rng.gamma(4.0, 10.0)), 2)))
        out[f"c{i:02d}"] = orders
    return out


def summary() -> pd.DataFrame:
    """frequency (orders − 1), recency and T in weeks, at midnight of the as-of day."""
    rows = []
    for user, orders in histories().items():
        times = [t for t, _ in orders]
        rows.append(
            {
                "user": user,
                "frequency": len(times) - 1,
                "recency": (max(times) - min(times)) / WEEK,
                "T": (MIDNIGHT - min(times)) / WEEK,
                "T_now": (AS_OF - min(times)) / WEEK,
            }
        )
    return pd.DataFrame(rows).set_index("user")


def messages() -> list[dict]:
    out = []
    for user, orders in histories().items():
        for n, (at, value) in enumerate(orders):
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "messageId": str(uuid.uuid4()),
                    "timestamp": at.isoformat(),
                    "properties": {"order_id": f"{user}-{n}", "revenue": value},
                }
            )
    return out


@pytest.fixture(
    scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Keepers]:
    if request.param == "duckdb":
        url = str(tmp_path_factory.mktemp("clv") / "keepers.duckdb")
    else:
        server = request.getfixturevalue("postgres_server")
        url = create_database(server, f"t_clv_{uuid.uuid4().hex[:8]}")
    keepers = Keepers.open(Settings(database_url=url), clock=lambda: AS_OF)
    sent = messages()
    assert keepers.ingest_messages(sent, source_id="test").stored == len(sent)
    keepers.lifecycle.segment_save("fading", "p_alive < 0.5")
    keepers.lifecycle.compute(as_of=AS_OF)
    yield keepers
    keepers.close()


@pytest.fixture(scope="module")
def oracle() -> BetaGeoFitter:
    """lifetimes with the parameters of our own fit on the independent summary."""
    s = summary()
    fit = fit_bgnbd(s.frequency.to_numpy(), s.recency.to_numpy(), s["T"].to_numpy()).model
    bgf = BetaGeoFitter()
    bgf.params_ = pd.Series({"r": fit.r, "alpha": fit.alpha, "a": fit.a, "b": fit.b})
    return bgf


def users(keepers: Keepers) -> dict[int, str]:
    with keepers.db.transaction() as tx:
        return dict(tx.execute("SELECT customer_id, user_id FROM customers"))


def p_alive_now(bgf: BetaGeoFitter) -> pd.Series:
    s = summary()
    values = bgf.conditional_probability_alive(s.frequency, s.recency, s.T_now)
    return pd.Series(np.asarray(values, dtype=float), index=s.index)


def test_the_report_fits_the_summary_an_independent_fit_sees(
    store: Keepers, oracle: BetaGeoFitter
) -> None:
    report = store.lifecycle.report("clv", as_of=AS_OF)
    assert report["customers"] == 80
    assert report["repeat_buyers"] == int((summary().frequency > 0).sum())
    assert report["fitted_on_orders_before"] == MIDNIGHT.isoformat()
    for name in ("r", "alpha", "a", "b"):
        assert report["bgnbd"][name] == pytest.approx(oracle.params_[name], rel=1e-4)


def test_p_alive_in_a_rule_selects_whom_lifetimes_would(
    store: Keepers, oracle: BetaGeoFitter
) -> None:
    expected = p_alive_now(oracle)
    want = set(expected[expected < 0.5].index)
    assert 3 <= len(want) <= 77  # the threshold splits the shop: the test can tell
    members = store.lifecycle.report_who("clv", band="likely_gone", limit=1000)
    names = users(store)
    with store.db.transaction() as tx:
        rows = tx.execute(
            "SELECT customer_id FROM customer_state WHERE strpos(segments, ',fading,') > 0"
        )
    assert {names[r[0]] for r in rows} == want
    likely_gone = set(expected[expected < 0.3].index)
    assert {r["user_id"] for r in members["rows"]} == likely_gone


def test_explain_shows_the_same_p_alive(store: Keepers, oracle: BetaGeoFitter) -> None:
    expected = p_alive_now(oracle)
    for user in ("c00", "c01", expected.idxmin()):
        explained = store.lifecycle.explain(user, as_of=AS_OF)
        assert explained["traits"]["p_alive"] == pytest.approx(expected[user], abs=1e-9)


def test_expected_orders_and_bands_add_up(store: Keepers, oracle: BetaGeoFitter) -> None:
    s = summary()
    report = store.lifecycle.report("clv", as_of=AS_OF, horizon_days=91)
    horizon = 91 / 7
    want = oracle.conditional_expected_number_of_purchases_up_to_time(
        horizon, s.frequency, s.recency, s.T_now
    )
    assert report["totals"]["expected_orders"] == pytest.approx(float(np.sum(want)), abs=0.01)
    alive = p_alive_now(oracle)
    counts = {b["band"]: b["customers"] for b in report["bands"]}
    assert counts == {
        "alive": int((alive >= 0.7).sum()),
        "uncertain": int(((alive >= 0.3) & (alive < 0.7)).sum()),
        "likely_gone": int((alive < 0.3).sum()),
    }
    assert sum(r["customers"] for r in report["stages"]) == 80
    revenue = sum(v for orders in histories().values() for _, v in orders)
    assert report["totals"]["revenue"] == pytest.approx(revenue, abs=0.01)
    assert report["totals"]["clv"] > 0 and report["gamma_gamma"] is not None


def test_top_customers_by_clv(store: Keepers) -> None:
    top = store.lifecycle.report_who("clv", top=5)
    assert top["customers"] == 5
    everyone = store.lifecycle.report_who("clv", band="alive", limit=1000)["rows"]
    everyone += store.lifecycle.report_who("clv", band="uncertain", limit=1000)["rows"]
    everyone += store.lifecycle.report_who("clv", band="likely_gone", limit=1000)["rows"]
    best = sorted(r["clv"] for r in everyone)[-5:]
    assert sorted(r["clv"] for r in top["rows"]) == pytest.approx(best)


def test_too_few_buyers_is_a_clear_error_and_rules_stay_false(tmp_path: Any) -> None:
    keepers = Keepers.open(Settings(database_url=str(tmp_path / "k.duckdb")), clock=lambda: AS_OF)
    try:
        few = [m for m in messages() if m["userId"] in ("c00", "c01", "c02")]
        keepers.ingest_messages(few, source_id="test")
        keepers.lifecycle.segment_save("fading", "p_alive < 0.5 or p_alive >= 0.5")
        keepers.lifecycle.compute(as_of=AS_OF)
        assert keepers.lifecycle.segment_show("fading")["size"] == 0
        with pytest.raises(InvalidInput, match="the purchase model needs at least 10"):
            keepers.lifecycle.report("clv", as_of=AS_OF)
    finally:
        keepers.close()
