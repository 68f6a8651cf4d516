"""RFM scores, expected orders and CLV as rule fields, equal to their reports.

A small shop is built by hand: a seeded crowd of BG/NBD-like buyers (enough for the models
to fit) plus customers made for the edge cases — twins with identical histories (equal
values must get equal scores), a first order tied in time with a second (the first order's
value must not depend on row order), a first order placed on the as-of day itself (scored
against the previous midnight's breakpoints, and on the quadrature side of the CLV
arithmetic), a weekly buyer with 79 repeat orders (the series side) and a visitor who never
ordered (no values). Segments read the fields; what they hold, what the engine computes for
every customer and what `keepers explain` shows must equal the `rfm` and `clv` reports for
the same moment — on DuckDB and PostgreSQL.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import ibis
import numpy as np
import pytest

from keepers.analytics import clv as clv_report
from keepers.analytics.base import Context
from keepers.domain.definitions import SegmentDefinition, default_definitions
from keepers.engine.compute import state_table
from keepers.engine.expectation import _reference, expectation_for
from keepers.engine.fitted import FIELDS as ALL_FIELDS
from keepers.engine.fitted import attach_models
from keepers.engine.plan import Plan
from keepers.engine.rfm import SEGMENT_KEYS
from keepers.engine.scores import SCORED_FIELDS
from keepers.errors import RuleError
from keepers.models.bgnbd import BGNBDModel
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import compute_transaction, load_definitions, store_definitions
from keepers.settings import Settings
from keepers.testing.postgres import create_database

# the fields these segments read (churn_risk and persona have tests of their own)
FIELDS = {k: v for k, v in ALL_FIELDS.items() if k not in SCORED_FIELDS}
AS_OF = datetime(2026, 6, 30, 15, 0, tzinfo=UTC)  # mid-afternoon: the fits are from midnight
# late evening, then just past midnight: new fits and breakpoints, while few customers' day
# counts tick over, so an incremental run that re-evaluated only them would go wrong
EVENING = datetime(2026, 6, 30, 23, 0, tzinfo=UTC)
LATER = datetime(2026, 7, 1, 0, 30, tzinfo=UTC)
START = datetime(2025, 1, 1, tzinfo=UTC)
SEGMENTS = {
    **{f"rfm_{key}": f'rfm_segment == "{key}"' for key in SEGMENT_KEYS},
    "r_top": "rfm_r == 5",
    "f_bottom": "rfm_f == 1",
    "m_high": "rfm_m >= 4",
    "valuable": "clv_12m > 60",
    "busy": "expected_orders_90d >= 0.5",
    "fading": "p_alive < 0.5 and rfm_f >= 2",
}


def crowd() -> dict[str, list[tuple[datetime, float]]]:
    """Poisson buying at a per-customer rate until a geometric drop-out."""
    rng = np.random.default_rng(11)
    out = {}
    for i in range(36):
        first = START + timedelta(days=int(rng.integers(0, 520)), hours=int(rng.integers(0, 23)))
        rate = rng.gamma(1.5, 1 / 6.0)  # orders a week
        drop = rng.beta(1.0, 4.0)
        orders, at = [(first, round(float(rng.gamma(4.0, 10.0)), 2))], first
        while True:
            at = at + timedelta(weeks=float(rng.exponential(1 / rate)))
            if at >= AS_OF - timedelta(days=1) or rng.random() < drop:
                break
            orders.append((at, round(float(rng.gamma(4.0, 10.0)), 2)))
        out[f"c{i:02d}"] = orders
    return out


def histories() -> dict[str, list[tuple[datetime, float]]]:
    day = timedelta(days=1)
    twin = [
        (datetime(2026, 3, 1, 10, tzinfo=UTC), 30.0),
        (datetime(2026, 5, 1, 10, tzinfo=UTC), 45.0),
    ]
    tied = datetime(2026, 1, 10, 9, tzinfo=UTC)
    weekly_start = datetime(2025, 1, 3, 18, tzinfo=UTC)
    return {
        **crowd(),
        "twin_a": twin,
        "twin_b": list(twin),
        "same_time": [(tied, 70.0), (tied, 20.0), (datetime(2026, 4, 2, 12, tzinfo=UTC), 40.0)],
        "today": [(AS_OF - 7 * timedelta(hours=1), 55.0)],
        "weekly": [(weekly_start + k * 7 * day, 12.0 + k % 5) for k in range(80)],
    }


LATER_ORDERS = {  # delivered after the evening compute: late ones of that day, and one new
    "c00": [(datetime(2026, 6, 30, 16, tzinfo=UTC), 80.0)],
    "c01": [(datetime(2026, 6, 30, 17, tzinfo=UTC), 120.0)],
    "c02": [(datetime(2026, 6, 30, 18, tzinfo=UTC), 95.0)],
    "twin_a": [(datetime(2026, 6, 30, 20, tzinfo=UTC), 25.0)],
    "weekly": [(datetime(2026, 6, 30, 21, tzinfo=UTC), 14.0)],
    "newcomer": [(datetime(2026, 7, 1, 0, 10, tzinfo=UTC), 35.0)],
}


def messages(orders: dict[str, list[tuple[datetime, float]]], tag: str) -> list[dict]:
    out = []
    for user, placed in orders.items():
        for n, (at, value) in enumerate(placed):
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "messageId": f"{tag}-{user}-{n}",
                    "timestamp": at.isoformat(),
                    "properties": {"order_id": f"{tag}-{user}-{n}", "revenue": value},
                }
            )
    return out


def browser_messages() -> list[dict]:
    return [
        {
            "type": "page",
            "userId": "browser",
            "name": "Home",
            "messageId": f"page-{n}",
            "timestamp": (START + timedelta(days=30 * n)).isoformat(),
        }
        for n in range(3)
    ]


def open_store(url: str) -> Keepers:
    keepers = Keepers.open(Settings(database_url=url), clock=lambda: AS_OF)
    sent = messages(histories(), "o") + browser_messages()
    assert keepers.ingest_messages(sent, source_id="test").stored == len(sent)
    definitions = default_definitions().model_copy(
        update={"segments": [SegmentDefinition(key=k, rule=r) for k, r in SEGMENTS.items()]}
    )
    with keepers.db.transaction() as tx:
        store_definitions(tx, definitions, actor="test", summary="rule fields", now=AS_OF)
    return keepers


def store_url(request: pytest.FixtureRequest, tmp_path_factory: Any) -> str:
    if request.param == "duckdb":
        return str(tmp_path_factory.mktemp("scores") / "keepers.duckdb")
    server = request.getfixturevalue("postgres_server")
    return create_database(server, f"t_scores_{uuid.uuid4().hex[:8]}")


BACKENDS = ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Keepers]:
    keepers = open_store(store_url(request, tmp_path_factory))
    report = keepers.compute(as_of=AS_OF)
    assert report.mode == "full"
    yield keepers
    keepers.close()


@pytest.fixture
def fresh(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Keepers]:
    keepers = open_store(store_url(request, tmp_path_factory))
    yield keepers
    keepers.close()


# --- reading both sides -----------------------------------------------------------------------


def users(keepers: Keepers) -> dict[int, str]:
    with keepers.db.transaction() as tx:
        return dict(tx.execute("SELECT customer_id, user_id FROM customers"))


def field_values(keepers: Keepers, as_of: datetime) -> dict[str, dict[str, Any]]:
    """Every customer's rule fields, as the compute evaluates them over the stored traits
    (the report's API rounds, so both sides are read at full precision)."""
    names = users(keepers)
    with compute_transaction(keepers.db) as tx:
        plan = Plan.build(load_definitions(tx).definitions)
        attach_models(tx, plan, as_of)
        t = plan.evaluate(state_table(plan), ibis.literal(as_of))
        query = t.select("customer_id", *FIELDS)
        rows = tx.execute(ibis.to_sql(query, dialect=tx.dialect.name))
    return {names[r[0]]: dict(zip(FIELDS, r[1:], strict=True)) for r in rows}


def rfm_report(keepers: Keepers, as_of: datetime) -> dict[str, dict[str, Any]]:
    rows = keepers.lifecycle.report_who("rfm", as_of, 1000)["rows"]
    return {r["user_id"]: r for r in rows}


def clv_values(keepers: Keepers, as_of: datetime) -> dict[str, dict[str, float]]:
    """The clv report's own per-customer table, before rounding for display."""
    names = users(keepers)
    with compute_transaction(keepers.db) as tx:
        ctx = Context(tx=tx, definitions=load_definitions(tx).definitions, as_of=as_of)
        fitted = clv_report._value(ctx, 90, 12, 0.01)
        assert fitted["warnings"] == []
        rows = tx.execute("SELECT customer_id, p_alive, expected_orders, clv FROM _kp_clv")
    return {names[c]: {"p_alive": p, "expected": e, "clv": v} for c, p, e, v in rows}


def members(keepers: Keepers, segment: str) -> set[str]:
    names = users(keepers)
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            "SELECT customer_id FROM customer_state WHERE strpos(segments, ?) > 0",
            [f",{segment},"],
        )
    return {names[r[0]] for r in rows}


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# --- the tests ----------------------------------------------------------------------------------


def test_rfm_fields_equal_the_report_for_every_buyer(store: Keepers) -> None:
    fields = field_values(store, AS_OF)
    report = rfm_report(store, AS_OF)
    buyers = set(fields) - {"browser"}
    assert set(report) == buyers
    for user, row in report.items():
        got = fields[user]
        assert (got["rfm_r"], got["rfm_f"], got["rfm_m"], got["rfm_segment"]) == (
            row["r"],
            row["f"],
            row["m"],
            row["segment"],
        ), user
    assert all(fields["browser"][name] is None for name in FIELDS)
    # equal values, equal scores: the twins; every score is used
    twins = [tuple(report[u][k] for k in ("r", "f", "m", "segment")) for u in ("twin_a", "twin_b")]
    assert twins[0] == twins[1]
    assert {r["r"] for r in report.values()} == {1, 2, 3, 4, 5}
    assert report["today"]["recency_days"] == 0 and report["today"]["r"] == 5


def test_an_rfm_segment_holds_exactly_whom_the_report_lists(store: Keepers) -> None:
    champions = store.lifecycle.report_who("rfm", AS_OF, 1000, segment="champions")["rows"]
    assert len(champions) >= 2
    assert members(store, "rfm_champions") == {r["user_id"] for r in champions}
    seen = set()
    for key in SEGMENT_KEYS:
        listed = store.lifecycle.report_who("rfm", AS_OF, 1000, segment=key)["rows"]
        assert members(store, f"rfm_{key}") == {r["user_id"] for r in listed}, key
        seen |= {r["user_id"] for r in listed}
    assert len(seen) == len(users(store)) - 1  # every buyer is in one segment; not the visitor
    top = store.lifecycle.report_who("rfm", AS_OF, 1000, r=5)["rows"]
    assert members(store, "r_top") == {r["user_id"] for r in top}


def test_clv_fields_equal_the_clv_report_within_one_millionth(store: Keepers) -> None:
    fields = field_values(store, AS_OF)
    report = clv_values(store, AS_OF)
    assert set(report) == {u for u in fields if u != "browser"}
    worst = 0.0
    for user, want in report.items():
        got = fields[user]
        assert got["p_alive"] == pytest.approx(want["p_alive"], rel=1e-9, abs=1e-12), user
        for field, key in (("expected_orders_90d", "expected"), ("clv_12m", "clv")):
            error = relative(got[field], want[key])
            assert error < 1e-6, (user, field, got[field], want[key])
            worst = max(worst, error)
    # the recipe's tolerance; measured: 1.3e-9 for a one-order customer right where the
    # series takes over from the quadrature, 1e-11 and less for everyone else
    assert worst < 1e-8, worst
    big = {u for u, v in report.items() if v["clv"] > 60}
    assert 3 <= len(big) < len(report) and members(store, "valuable") == big
    busy = {u for u, v in report.items() if v["expected"] >= 0.5}
    assert members(store, "busy") == busy


def test_explain_shows_the_fields_with_the_values_rules_see(store: Keepers) -> None:
    fields = field_values(store, AS_OF)
    for user in ("today", "weekly", "same_time"):
        explained = store.lifecycle.explain(user, as_of=AS_OF)
        for name in FIELDS:
            want = fields[user][name]
            got = explained["traits"][name]
            assert got == (pytest.approx(want, rel=1e-12) if isinstance(want, float) else want)
    visitor = store.lifecycle.explain("browser", as_of=AS_OF)["traits"]
    assert all(visitor[name] is None for name in FIELDS)


def test_both_sides_of_the_expected_orders_arithmetic_are_exercised(store: Keepers) -> None:
    with store.db.transaction() as tx:
        plan = Plan.build(load_definitions(tx).definitions)
        attach_models(tx, plan, AS_OF)
    e = plan.models.expectation
    assert e is not None and e.nodes  # this shop's parameters need the quadrature somewhere
    assert e.series_from <= 79  # the weekly buyer is on the series side; `today` on the other
    assert e.error < 1e-8


def test_a_misspelt_field_is_refused_with_its_position(store: Keepers) -> None:
    for rule, wrong, close in (
        ('orders > 1 and rfm_segmnt == "champions"', "rfm_segmnt", "rfm_segment"),
        ("clv_12n > 100", "clv_12n", "clv_12m"),
        ("expected_orders_90 >= 1", "expected_orders_90", "expected_orders_90d"),
    ):
        with pytest.raises(RuleError) as caught:
            store.lifecycle.segment_save("typo", rule)
        error = caught.value
        assert f"unknown field '{wrong}'; did you mean '{close}'?" in error.message
        assert (error.position, error.length) == (rule.index(wrong), len(wrong))
    assert "typo" not in {s["key"] for s in store.lifecycle.segments_list()}


@pytest.mark.parametrize("fresh", BACKENDS, indirect=True)
def test_incremental_compute_after_new_orders_agrees_with_a_full_one(fresh: Keepers) -> None:
    assert fresh.compute(as_of=EVENING).mode == "full"
    before = rounded_fields(fresh, EVENING)
    sent = messages(LATER_ORDERS, "later")
    assert fresh.ingest_messages(sent, source_id="test").stored == len(sent)
    report = fresh.compute(as_of=LATER)
    assert report.mode == "incremental" and report.recomputed == len(LATER_ORDERS)
    state, fields = snapshot(fresh), rounded_fields(fresh, LATER)
    untouched = set(before) - set(LATER_ORDERS)
    rescored = {u for u in untouched if before[u]["rfm_segment"] != fields[u]["rfm_segment"]}
    assert rescored  # new breakpoints moved customers who bought nothing: the run must see it
    full = fresh.compute(as_of=LATER, full=True)
    assert full.mode == "full"
    assert (full.stage_moves, full.segment_changes) == (0, 0)
    assert snapshot(fresh) == state
    assert rounded_fields(fresh, LATER) == fields
    # and what the segments hold is still what the reports say on the new day
    champions = fresh.lifecycle.report_who("rfm", LATER, 1000, segment="champions")["rows"]
    assert members(fresh, "rfm_champions") == {r["user_id"] for r in champions}
    report_clv = clv_values(fresh, LATER)
    assert members(fresh, "valuable") == {u for u, v in report_clv.items() if v["clv"] > 60}


def rounded_fields(keepers: Keepers, as_of: datetime) -> dict[str, dict[str, Any]]:
    values = field_values(keepers, as_of)
    return {u: {k: _rounded(v) for k, v in row.items()} for u, row in values.items()}


def snapshot(keepers: Keepers) -> dict[int, tuple]:
    """Every stored trait, stage and segment list, by customer (floats rounded to 9 digits:
    sums may be added up in another order)."""
    with keepers.db.transaction() as tx:
        rows = tx.execute("SELECT * FROM customer_state")
        columns = [c for c in _columns(tx) if c not in ("stage_since", "stage_cause")]
        index = {c: i for i, c in enumerate(_columns(tx))}
    return {r[index["customer_id"]]: tuple(_rounded(r[index[c]]) for c in columns) for r in rows}


def _columns(tx: Any) -> list[str]:
    if tx.dialect.name == "postgres":
        rows = tx.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = "
            "'customer_state' AND table_schema = current_schema() ORDER BY ordinal_position"
        )
    else:
        rows = tx.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'customer_state' "
            "ORDER BY column_index"
        )
    return [r[0] for r in rows]


def _rounded(value: Any) -> Any:
    return round(value, 9) if isinstance(value, float) and math.isfinite(value) else value


# --- the arithmetic alone, against the Python model ---------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        (0.243, 4.414, 0.793, 2.426),  # CDNOW's published fit (weeks)
        (0.0819, 0.55, 0.22, 11.7),  # frequent buyers who rarely drop out: many nodes
        (1.5, 6.0, 1.2, 4.0),
        (2.0, 30.0, 0.75, 0.75),  # the series alone suffices
        (0.2, 0.3, 3.5, 0.5),
    ],
)
def test_expected_orders_arithmetic_matches_the_python_model(params: tuple) -> None:
    model = BGNBDModel(*params)
    e = expectation_for(model)
    assert not isinstance(e, str), e
    rng = np.random.default_rng(5)
    x = np.floor(np.exp(rng.uniform(0.0, np.log(300.0), 20_000))) - 1.0
    age = np.exp(rng.uniform(np.log(1e-3), np.log(2000.0), 20_000))
    age[:2000] = 0.0  # a first order just now: the largest s
    weeks = rng.choice([90 / 7, *(4.345 * k for k in range(1, 13))], 20_000)
    s = weeks / (model.alpha + age)
    easy = (x >= e.series_from) | (s <= e.series_below)
    got = np.where(easy, e.series(x, s), e.quadrature(x, s) if e.nodes else np.nan)
    want = _reference(model, x, s)
    assert np.max(np.abs(got / want - 1.0)) < 1e-8


def test_parameters_no_recipe_reaches_leave_the_fields_missing_with_a_reason() -> None:
    assert "undefined for a = 1" in expectation_for(BGNBDModel(0.5, 4.0, 1.0, 3.0))


def test_a_shop_too_small_for_the_models_still_has_rfm_and_says_why_clv_is_missing(
    tmp_path: Any,
) -> None:
    keepers = Keepers.open(Settings(database_url=str(tmp_path / "k.duckdb")), clock=lambda: AS_OF)
    try:
        few = {u: h for u, h in histories().items() if u in ("twin_a", "same_time", "weekly")}
        keepers.ingest_messages(messages(few, "o"), source_id="test")
        keepers.lifecycle.segment_save("valuable", "clv_12m > 0 or clv_12m <= 0")
        # three buyers with 1, 2 and 79 repeat orders: breakpoints at positions 1 2 2 3
        # (⌈k·3/5⌉) are 2 3 3 80 orders, so the weekly buyer's 80 scores 4
        keepers.lifecycle.segment_save("top", "rfm_f == 4")
        assert keepers.lifecycle.segment_show("valuable")["size"] == 0
        assert {m["user_id"] for m in keepers.lifecycle.segment_show("top")["sample"]} == {"weekly"}
        explained = keepers.lifecycle.explain("weekly", as_of=AS_OF)
        assert explained["traits"]["clv_12m"] is None and explained["traits"]["rfm_f"] == 4
        assert "fewer than 10 buyers" in explained["missing"]["clv_12m"]
        assert "rfm_f" not in explained["missing"]
    finally:
        keepers.close()


def test_explain_with_scores_shows_every_score_when_no_rule_reads_them(
    store: Keepers, tmp_path: Any
) -> None:
    """A shop on the default definitions (no rule reads these fields): the customer page's
    scores equal what the rules of `store` (same data) evaluate, and the health score is the
    weighted mean of the points it lists."""
    plain = Keepers.open(Settings(database_url=str(tmp_path / "k.duckdb")), clock=lambda: AS_OF)
    try:
        sent = messages(histories(), "o") + browser_messages()
        plain.ingest_messages(sent, source_id="test")
        fields = field_values(store, AS_OF)
        for user in ("weekly", "twin_a", "browser"):
            without = plain.lifecycle.explain(user, as_of=AS_OF)
            assert "scores" not in without and "p_alive" not in without["traits"]
            scores = plain.lifecycle.explain(user, as_of=AS_OF, scores=True)["scores"]
            for name in FIELDS:
                want = fields[user][name]
                got = scores[name]
                # expected orders and CLV: NumPy here, SQL within 1e-8 of it in the rules
                assert got == (pytest.approx(want, rel=1e-8) if isinstance(want, float) else want)
            parts = [p for p in scores["health"] if p["points"] is not None]
            assert parts
            mean = sum(p["points"] * p["weight"] for p in parts) / sum(p["weight"] for p in parts)
            assert scores["health_score"] == pytest.approx(mean, abs=0.06)  # points shown to 0.1
        weekly = plain.lifecycle.explain("weekly", as_of=AS_OF, scores=True)["scores"]
        frequency = next(p for p in weekly["health"] if p["component"] == "frequency")
        orders = plain.lifecycle.explain("weekly", as_of=AS_OF)["traits"]["orders"]
        assert frequency["value"] == orders == 78  # weekly since 2025-01-03, to AS_OF
    finally:
        plain.close()
