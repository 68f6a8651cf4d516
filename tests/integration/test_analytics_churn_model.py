"""The churn-risk model on a hand-made history: snapshots (features and labels) must equal a
brute-force computation from the messages, the out-of-time validation must use the right
periods, and steady customers must come out low-risk, quitters high.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from keepers.analytics import churn_model
from keepers.analytics.base import Context
from keepers.errors import InvalidInput
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import load_definitions
from keepers.settings import Settings
from keepers.testing.postgres import create_database

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def history() -> dict[str, tuple[list[datetime], list[datetime]]]:
    """user → (activity times, order times). s*: active every 2 days to the end, an order a
    month; q*: active every 6 days until they stop, 04-10 … 06-27, one order in January."""
    out = {}
    for i in range(40):
        steady = [START + 2 * n * DAY + i * timedelta(hours=1) for n in range(90)]
        out[f"s{i:02d}"] = (steady, [START + 30 * m * DAY + DAY for m in range(6)])
        stop = datetime(2026, 4, 10, tzinfo=UTC) + 2 * i * DAY
        sparse = [START + 6 * n * DAY for n in range(60) if START + 6 * n * DAY <= stop]
        out[f"q{i:02d}"] = (sparse, [START + 3 * DAY])
    return out


def messages() -> list[dict]:
    out = []
    for user, (active, orders) in history().items():
        for at in active:
            out.append(_track(user, at, "Product Viewed", {}))
        for n, at in enumerate(orders):
            props = {"order_id": f"{user}-{n}", "revenue": 20.0}
            out.append(_track(user, at, "Order Completed", props))
    return out


def _track(user: str, at: datetime, event: str, props: dict) -> dict:
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "properties": props,
    }


def brute_force(t: datetime, h: timedelta) -> dict[str, dict[str, float]]:
    """Each customer in the snapshot at t, straight from the history (orders are events)."""
    out = {}
    for user, (active, orders) in history().items():
        times = sorted(active + orders)
        seen = [x for x in times if x <= t]
        if not seen or seen[-1] <= t - 90 * DAY:
            continue
        bought = [x for x in orders if x <= t]

        def within(days: int, seen: list[datetime] = seen) -> list[datetime]:
            return [x for x in seen if x > t - days * DAY]

        out[user] = {
            "days_since_active": (t - seen[-1]) / DAY,
            "tenure_days": (t - seen[0]) / DAY,
            "days_since_order": (t - max(bought)) / DAY if bought else (t - seen[0]) / DAY,
            "events_7d": len(within(7)),
            "events_30d": len(within(30)),
            "events_90d": len(within(90)),
            "events": len(seen),
            "active_days_30d": len({x.date() for x in within(30)}),
            "orders": len(bought),
            "orders_90d": len([x for x in bought if x > t - 90 * DAY]),
            "revenue": 20.0 * len(bought),
            "emails_opened_30d": 0,
            "churned": not any(t < x <= t + h for x in times),
        }
    return out


@pytest.fixture(
    scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Keepers]:
    if request.param == "duckdb":
        url = str(tmp_path_factory.mktemp("churn") / "keepers.duckdb")
    else:
        server = request.getfixturevalue("postgres_server")
        url = create_database(server, f"t_churn_{uuid.uuid4().hex[:8]}")
    keepers = Keepers.open(Settings(database_url=url), clock=lambda: AS_OF + 30 * DAY)
    sent = messages()
    assert keepers.ingest_messages(sent, source_id="test").stored == len(sent)
    yield keepers
    keepers.close()


def run(keepers: Keepers, fn: Any, **options: Any) -> Any:
    with keepers.db.transaction() as tx:
        ctx = Context(tx=tx, definitions=load_definitions(tx).definitions, as_of=AS_OF)
        return fn(ctx, **options)


def test_snapshots_match_a_brute_force_computation(store: Keepers) -> None:
    scored = run(store, churn_model.fit)
    with store.db.transaction() as tx:
        users = dict(tx.execute("SELECT customer_id, user_id FROM customers"))
    h = timedelta(days=30)
    for snap, t in ((scored.train, AS_OF - 2 * h), (scored.test, AS_OF - h)):
        want = brute_force(t, h)
        got = [users[int(c)] for c in snap.customer_ids]
        assert sorted(got) == sorted(want)
        for i, name in enumerate(churn_model.FEATURES):
            if name == "nps":
                assert np.isnan(snap.x[:, i]).all()  # nobody answered
                continue
            expected = [want[u][name] for u in got]
            np.testing.assert_allclose(snap.x[:, i], expected, atol=1e-6, err_msg=name)
        assert snap.churned.tolist() == [want[u]["churned"] for u in got]


def test_out_of_time_validation_reports_sizes_and_auc(store: Keepers) -> None:
    report = run(store, churn_model.churn_risk)
    h = timedelta(days=30)
    train, test = brute_force(AS_OF - 2 * h, h), brute_force(AS_OF - h, h)
    assert report["training"]["cutoff"] == "2026-05-01T00:00:00+00:00"
    assert report["validation"]["cutoff"] == "2026-05-31T00:00:00+00:00"
    assert report["training"]["customers"] == len(train)
    assert report["training"]["churned"] == sum(r["churned"] for r in train.values())
    assert report["validation"]["customers"] == len(test)
    assert report["validation"]["churned"] == sum(r["churned"] for r in test.values())
    # the quitters are sparse before they stop: easy to tell apart, better than recency alone
    assert report["validation"]["auc"] >= 0.95
    assert report["validation"]["auc"] >= report["validation"]["auc_recency_only"]


def test_steady_customers_are_low_risk_and_who_lists_a_band(store: Keepers) -> None:
    def listed(ctx: Context, band: str) -> list[dict]:
        key, build = churn_model.who(ctx, band=band)
        return ctx.rows(key, build)

    with store.db.transaction() as tx:
        users = dict(tx.execute("SELECT customer_id, user_id FROM customers"))
    high = {users[r["customer_id"]] for r in run(store, listed, band="high")}
    low = {users[r["customer_id"]] for r in run(store, listed, band="low")}
    assert {f"s{i:02d}" for i in range(40)} <= low
    assert high and all(u.startswith("q") for u in high)
    with pytest.raises(InvalidInput, match="band must be one of"):
        run(store, listed, band="extreme")


def test_too_little_history_is_a_clear_error(store: Keepers) -> None:
    with store.db.transaction() as tx:
        ctx = Context(tx=tx, definitions=load_definitions(tx).definitions, as_of=START + 20 * DAY)
        with pytest.raises(
            InvalidInput, match="the training snapshot at 2025-11-22 has 0 active customers"
        ):
            churn_model.churn_risk(ctx)


# --- churn_risk in stage and segment rules ---------------------------------------------------


def members(keepers: Keepers, segment: str) -> set[int]:
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            "SELECT customer_id FROM customer_state WHERE strpos(segments, ?) > 0",
            [f",{segment},"],
        )
    return {r[0] for r in rows}


def test_churn_risk_in_rules_is_the_reports_risk_at_the_days_midnight(
    store: Keepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keepers.engine import scores

    calls = []
    scorer = scores._SCORERS["churn_risk"]
    monkeypatch.setitem(
        scores._SCORERS,
        "churn_risk",
        scores.Scorer(scorer.name, scorer.fields, lambda *a: calls.append(a) or scorer.score(*a)),
    )
    monkeypatch.setattr(scores, "_CACHE", {})
    store.lifecycle.segment_save("risky", "churn_risk >= 0.6")
    store.lifecycle.segment_save("calm", "churn_risk < 0.3")
    during = AS_OF + timedelta(hours=15)  # a run that afternoon reads the midnight's scores
    store.compute(as_of=during)
    fitted = run(store, churn_model.fit)  # the report's model as of AS_OF, that midnight
    risk = dict(zip(fitted.now.customer_ids.tolist(), fitted.risk.tolist(), strict=True))
    high = {c for c, r in risk.items() if r >= 0.6}
    low = {c for c, r in risk.items() if r < 0.3}
    assert high and low
    assert members(store, "risky") == high
    assert members(store, "calm") == low
    explained = store.lifecycle.explain("s00", as_of=during)
    with store.db.transaction() as tx:
        s00 = tx.execute("SELECT customer_id FROM customers WHERE user_id = 's00'")[0][0]
    assert explained["traits"]["churn_risk"] == pytest.approx(risk[s00], rel=1e-12)
    # later that day, nothing new before midnight: the day's scores are reused, not refitted
    fits = len(calls)
    store.compute(as_of=during + timedelta(hours=2))
    assert len(calls) == fits
    # the next day is scored again, from its own midnight
    store.compute(as_of=during + timedelta(days=1))
    assert len(calls) == fits + 1 and calls[-1][2] == AS_OF + DAY


def test_without_enough_history_churn_risk_is_missing_and_explain_says_why(
    tmp_path: Any,
) -> None:
    keepers = Keepers.open(Settings(database_url=str(tmp_path / "k.duckdb")), clock=lambda: AS_OF)
    try:
        few = [_track("a", AS_OF - 5 * DAY, "Product Viewed", {})]
        keepers.ingest_messages(few, source_id="test")
        keepers.lifecycle.segment_save("risky", "churn_risk >= 0 or churn_risk < 0")
        assert keepers.lifecycle.segment_show("risky")["size"] == 0
        explained = keepers.lifecycle.explain("a", as_of=AS_OF)
        assert explained["traits"]["churn_risk"] is None
        assert "a churn model needs at least 50" in explained["missing"]["churn_risk"]
    finally:
        keepers.close()
