"""Deals, MEDDIC and lead scoring against real stores (DuckDB and PostgreSQL): stage gates,
score formulas and priorities on hand-checked numbers, the CRM sync run twice, win rate by
MEDDIC band on a hand-made history, decayed lead scores, won deals converting an account's
contacts in the lifecycle — and the same through the REST router and the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from keepers.errors import InvalidInput, NotFound
from keepers.services.keepers import Keepers
from keepers.services.sales import SalesService
from keepers.settings import Settings
from keepers.testing.postgres import create_database

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[Keepers, Clock]]:
    if request.param == "duckdb":
        url = str(tmp_path / "keepers.duckdb")
    else:
        url = create_database(
            request.getfixturevalue("postgres_server"), f"t_s_{uuid.uuid4().hex[:8]}"
        )
    clock = Clock(T0)
    keepers = Keepers.open(Settings(database_url=url), clock=clock)
    yield keepers, clock
    keepers.close()


def sales_of(keepers: Keepers) -> SalesService:
    return SalesService(keepers.db, keepers.clock, keepers.ingest_messages)


def identify(user: str, at: datetime, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "messageId": f"id-{user}-{at.isoformat()}",
        "timestamp": at.isoformat(),
        "traits": {"email": f"{user}@acme.example", **traits},
    }


def group(user: str, account: str, at: datetime, **traits: Any) -> dict[str, Any]:
    return {
        "type": "group",
        "userId": user,
        "groupId": account,
        "messageId": f"g-{user}-{account}",
        "timestamp": at.isoformat(),
        "traits": traits,
    }


def track(
    user: str, event: str, at: datetime, props: dict | None = None, account: str | None = None
) -> dict[str, Any]:
    message = {
        "type": "track",
        "userId": user,
        "event": event,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "properties": props or {},
    }
    if account:
        message["context"] = {"groupId": account}
    return message


def page(user: str, at: datetime) -> dict[str, Any]:
    return {
        "type": "page",
        "userId": user,
        "name": "Pricing",
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "properties": {"path": "/pricing"},
    }


def ingest(keepers: Keepers, messages: list[dict[str, Any]]) -> None:
    report = keepers.ingest_messages(messages, "t")
    assert report.rejected == [] and report.stored == len(messages)


def confirm(sales: SalesService, deal: str, *elements: str, status: str = "confirmed") -> None:
    for element in elements:
        sales.update_meddic(deal, element, {"status": status}, "test")


ALL = ("metrics", "economic_buyer", "decision_criteria", "decision_process")
ALL += ("identify_pain", "champion")


# --- stage gates ---------------------------------------------------------------------------------


def test_stage_gates_refuse_a_move_naming_each_missing_element(store):
    keepers, _ = store
    sales = sales_of(keepers)
    sales.create_deal({"deal_id": "d-1", "amount": 10_000, "currency": "EUR"}, "test")
    assert sales.deal("d-1")["stage"] == "discovery"

    with pytest.raises(InvalidInput) as refused:
        sales.move_deal("d-1", "proposal")
    assert refused.value.code == "stage_gate"
    assert refused.value.message == (
        "stage: deal 'd-1' cannot move to proposal: identify_pain must be identified "
        "(is unknown), metrics must be identified (is unknown)"
    )

    confirm(sales, "d-1", "identify_pain", "metrics", status="identified")
    assert sales.move_deal("d-1", "proposal")["moved"]

    sales.update_meddic("d-1", "economic_buyer", {"status": "identified"}, "test")
    with pytest.raises(InvalidInput) as refused:
        sales.move_deal("d-1", "commit")
    assert refused.value.message.endswith(
        "cannot move to commit: economic_buyer must be confirmed (is identified), "
        "champion must be confirmed (is unknown)"
    )
    assert sales.deal("d-1")["stage"] == "proposal"  # a refused move changes nothing

    confirm(sales, "d-1", "economic_buyer", "champion")
    assert sales.move_deal("d-1", "commit")["stage"] == "commit"
    # moving back and closing are never gated
    confirm(sales, "d-1", "champion", status="unknown")
    assert sales.move_deal("d-1", "qualification")["moved"]
    lost = sales.move_deal("d-1", "lost", reason="budget cut")
    assert lost["status"] == "lost"
    shown = sales.deal("d-1")
    assert shown["lost_reason"] == "budget cut" and shown["closed_at"] == T0.isoformat()
    assert [h["to_stage"] for h in shown["history"]] == [
        "discovery",
        "proposal",
        "commit",
        "qualification",
        "lost",
    ]


def test_a_deal_cannot_be_created_past_a_gate_and_bad_input_names_the_field(store):
    keepers, _ = store
    sales = sales_of(keepers)
    with pytest.raises(InvalidInput, match="cannot move to commit: identify_pain"):
        sales.create_deal({"deal_id": "d-2", "stage": "commit"})
    with pytest.raises(InvalidInput, match=r"^stage: no stage 'closing'"):
        sales.create_deal({"deal_id": "d-2", "stage": "closing"})
    with pytest.raises(InvalidInput, match=r"^amount"):
        sales.create_deal({"deal_id": "d-2", "amount": "lots"})
    sales.create_deal({"deal_id": "d-2"})
    with pytest.raises(InvalidInput, match=r"^deal_id: a deal 'd-2' exists already"):
        sales.create_deal({"deal_id": "d-2"})
    with pytest.raises(InvalidInput, match=r"^element: 'paper_process' is not a meddic element"):
        sales.update_meddic("d-2", "paper_process", {"status": "identified"})
    with pytest.raises(NotFound):
        sales.move_deal("nope", "commit")
    with pytest.raises(InvalidInput, match=r"^status"):
        sales.deals(status="maybe")


# --- the score in SQL --------------------------------------------------------------------------


def test_scores_in_sql_match_the_hand_checked_formula(store):
    keepers, _ = store
    sales = sales_of(keepers)
    for deal in ("a", "b", "c"):
        sales.create_deal({"deal_id": deal, "amount": 1000})
    confirm(sales, "a", "metrics")
    sales.update_meddic("a", "economic_buyer", {"status": "identified"})
    confirm(sales, "b", *ALL)

    scores = {d["deal_id"]: (d["score"], d["weakest"]) for d in sales.deals()}
    assert scores == {
        "a": (25.0, "decision_criteria"),  # (1 + 0.5) / 6 × 100; gap 1 first in order
        "b": (100.0, None),
        "c": (0.0, "metrics"),
    }
    assert sales.deal("a")["score"] == 25.0 and sales.deal("a")["weakest"] == "decision_criteria"

    body = sales.pipeline()
    body["weights"] = {"economic_buyer": 2}
    assert sales.save_pipeline(body)["version"] == 1
    scores = {d["deal_id"]: (d["score"], d["weakest"]) for d in sales.deals()}
    # (1 + 2 × 0.5) / 7 × 100 = 28.57; economic_buyer's gap 1 ties and comes first
    assert scores["a"] == (28.6, "economic_buyer")

    body["framework"], body["weights"] = "meddpicc", {}
    sales.save_pipeline(body)
    scores = {d["deal_id"]: (d["score"], d["weakest"]) for d in sales.deals()}
    assert scores["a"] == (18.8, "decision_criteria")  # 1.5 / 8 = 18.75
    assert scores["b"] == (75.0, "paper_process")  # 6 of 8 confirmed


def test_priorities_rank_open_deals_by_amount_times_score(store):
    keepers, _ = store
    sales = sales_of(keepers)
    deals = {"A": 10_000, "B": 3_000, "C": 50_000, "D": 20_000, "W": 99_000}
    for deal, amount in deals.items():
        sales.create_deal({"deal_id": deal, "amount": amount, "owner": "dana"})
    confirm(sales, "A", "metrics")
    sales.update_meddic("A", "economic_buyer", {"status": "identified"})  # 25 → 2,500
    confirm(sales, "B", *ALL)  # 100 → 3,000
    sales.update_meddic(  # 8.33 → 1,666.67
        "D", "metrics", {"status": "identified", "next_step": "call the CFO on Monday"}
    )
    confirm(sales, "W", *ALL)
    sales.move_deal("W", "won")  # closed: not a priority

    ranked = sales.priorities()
    assert [(d["deal_id"], d["priority"]) for d in ranked] == [
        ("B", 3000.0),
        ("A", 2500.0),
        ("D", 1666.67),
        ("C", 0.0),
    ]
    assert ranked[0]["weakest"] is None and ranked[0]["next_step"] is None
    assert ranked[1]["next_step"] == "get the buyer's evaluation criteria in writing"
    # D's weakest is economic_buyer (metrics' gap is only 0.5), with the suggested step;
    # a seller's own next step is shown when it is for the weakest element
    assert ranked[2]["weakest"] == "economic_buyer"
    sales.update_meddic("D", "economic_buyer", {"status": "unknown", "next_step": "ask Ana"})
    assert sales.priorities(limit=3)[2]["next_step"] == "ask Ana"
    assert sales.priorities(owner="someone else") == []


# --- sync from CRM events ----------------------------------------------------------------------


def crm_history(t: datetime) -> list[dict[str, Any]]:
    base = {
        "deal_id": "deal-1",
        "deal_name": "Acme new business",
        "deal_type": "new_business",
        "amount": 6000.0,
        "currency": "usd",
        "close_date": "2026-04-01",
        "owner": "Dana",
    }
    lost = {"deal_id": "deal-2", "amount": 1200, "owner": "Marcus"}
    return [
        identify("ann", t - 40 * DAY),
        identify("bob", t - 40 * DAY),
        group("ann", "acct-1", t - 40 * DAY, name="Acme", employees=120),
        group("bob", "acct-1", t - 40 * DAY, name="Acme", employees=120),
        track("ann", "Deal Created", t - 30 * DAY, {**base, "stage": "qualification"}, "acct-1"),
        track("ann", "Deal Stage Changed", t - 25 * DAY, {**base, "stage": "demo"}, "acct-1"),
        track(
            "ann",
            "Deal Stage Changed",
            t - 20 * DAY,
            {**base, "stage": "negotiation", "amount": 7000.0},
            "acct-1",
        ),
        track("bob", "Deal Created", t - 10 * DAY, {**lost, "stage": "Qualification"}),
        track("bob", "Deal Stage Changed", t - 8 * DAY, {**lost, "stage": "pilot"}),
        track(
            "bob",
            "Deal Lost",
            t - 5 * DAY,
            {**lost, "stage": "closed_lost", "lost_reason": "no budget"},
        ),
    ]


def table(keepers: Keepers, sql: str) -> list[tuple]:
    with keepers.db.transaction() as tx:
        return sorted(tx.execute(sql), key=repr)


def test_sync_from_crm_events_is_idempotent(store):
    keepers, _ = store
    sales = sales_of(keepers)
    ingest(keepers, crm_history(T0))
    first = sales.sync_from_events()
    assert first["crm_events"] == 6
    assert first["deals_created"] == 2 and first["history_rows"] == 6
    assert first["unmapped_stages"] == ["pilot"]
    deals = table(keepers, "SELECT * FROM deals")
    history = table(keepers, "SELECT * FROM deal_stage_history")

    again = sales.sync_from_events()
    assert again["deals_created"] == 0 and again["deals_updated"] == 0
    assert again["history_rows"] == 0 and again["contacts_converted"] == 0
    assert table(keepers, "SELECT * FROM deals") == deals
    assert table(keepers, "SELECT * FROM deal_stage_history") == history

    one = sales.deal("deal-1")
    assert (one["stage"], one["crm_stage"], one["status"]) == ("commit", "negotiation", "open")
    assert one["amount"] == 7000.0 and one["currency"] == "USD"  # the latest value wins
    assert one["account_id"] == "acct-1" and one["close_date"] == "2026-04-01"
    assert one["created_at"] == (T0 - 30 * DAY).isoformat()
    assert one["account_contacts"] == 2
    assert [(h["from_stage"], h["to_stage"]) for h in one["history"]] == [
        (None, "qualification"),
        ("qualification", "qualification"),  # demo is a qualification step
        ("qualification", "commit"),
    ]
    two = sales.deal("deal-2")
    assert (two["stage"], two["status"], two["lost_reason"]) == ("lost", "lost", "no budget")
    assert two["closed_at"] == (T0 - 5 * DAY).isoformat()
    # the CRM moved deal-1 to commit without a confirmed economic buyer: the list shows it
    listed = {d["deal_id"]: d for d in sales.deals(status="all")}
    assert listed["deal-1"]["gate_missing"].startswith("identify_pain must be identified")


def test_a_move_in_keepers_holds_until_a_later_crm_event(store):
    keepers, clock = store
    sales = sales_of(keepers)
    ingest(keepers, crm_history(T0 - 2 * DAY))
    sales.sync_from_events()
    sales.move_deal("deal-1", "lost", reason="went dark")
    assert sales.sync_from_events()["deals_updated"] == 0
    assert sales.deal("deal-1")["stage"] == "lost"

    clock.now = T0 + DAY
    won = {"deal_id": "deal-1", "stage": "closed_won", "amount": 7500}
    ingest(keepers, [track("ann", "Deal Won", T0 + DAY / 2, won, "acct-1")])
    assert sales.sync_from_events()["deals_updated"] == 1
    deal = sales.deal("deal-1")
    assert (deal["stage"], deal["status"], deal["lost_reason"]) == ("won", "won", None)
    assert deal["name"] == "Acme new business"  # carried from an earlier event


def test_a_deal_created_in_keepers_is_not_overwritten_by_the_crm(store):
    keepers, _ = store
    sales = sales_of(keepers)
    sales.create_deal({"deal_id": "deal-2", "amount": 5})
    ingest(keepers, crm_history(T0))
    result = sales.sync_from_events()
    assert result["conflicts"] == 1 and result["deals_created"] == 1
    assert sales.deal("deal-2")["amount"] == 5.0
    assert [h["source"] for h in sales.deal("deal-2")["history"]] == ["keepers"]


# --- reports -----------------------------------------------------------------------------------


def test_win_rate_and_cycle_time_by_meddic_band(store):
    keepers, clock = store
    sales = sales_of(keepers)
    # (deal, days from creation to close, outcome, confirmed elements)
    history = [
        ("h1", 10, "won", 6),  # high band: score 100
        ("h2", 20, "won", 6),
        ("m1", 30, "won", 3),  # medium: 3 of 6 confirmed = 50
        ("m2", 5, "lost", 3),
        ("l1", 8, "lost", 0),  # low: 0
        ("l2", 12, "lost", 1),  # 16.7
        ("o1", None, "open", 6),  # open: not in the win rate
    ]
    for deal, days, outcome, confirmed in history:
        clock.now = T0
        sales.create_deal({"deal_id": deal, "amount": 1000, "currency": "EUR"})
        confirm(sales, deal, *ALL[:confirmed])
        if days is not None:
            clock.now = T0 + days * DAY
            sales.move_deal(deal, outcome)
    report = sales.pipeline_report()
    bands = {b["band"]: b for b in report["by_meddic_band"]}
    assert bands["high"] | {} == {
        "band": "high",
        "score_range": "70–100",
        "closed": 2,
        "won": 2,
        "lost": 0,
        "win_rate": 1.0,
        "median_cycle_days": 15.0,  # median of 10 and 20 days
        "median_days_to_close": 15.0,
    }
    assert (bands["medium"]["win_rate"], bands["medium"]["median_cycle_days"]) == (0.5, 30.0)
    assert bands["medium"]["median_days_to_close"] == 17.5  # 5 and 30
    assert (bands["low"]["closed"], bands["low"]["win_rate"]) == (2, 0.0)
    assert bands["low"]["median_cycle_days"] is None  # nothing won
    stages = {(s["stage"], s["currency"]): s for s in report["by_stage"]}
    assert stages[("discovery", "EUR")]["deals"] == 1
    assert stages[("discovery", "EUR")]["qualified_amount"] == 1000.0  # score 100
    assert stages[("commit", None)]["deals"] == 0


# --- won deals in the lifecycle ----------------------------------------------------------------


def set_conversion_rule(keepers: Keepers, rule: str) -> None:
    body = keepers.lifecycle.definitions_export()["definitions"]
    for stage in body["stage_model"]["stages"]:
        if stage["key"] == "conversion":
            stage["rule"] = rule
    keepers.lifecycle.definitions_apply(body, actor="test")


def stages_of(keepers: Keepers) -> dict[str, str]:
    rows = table(
        keepers,
        "SELECT c.user_id, s.stage FROM customer_state s "
        "JOIN customers c ON c.customer_id = s.customer_id",
    )
    return dict(rows)


def test_won_deals_convert_the_accounts_contacts_through_stage_rules(store):
    keepers, _ = store
    sales = sales_of(keepers)
    ingest(keepers, crm_history(T0 - DAY))
    won = {"deal_id": "deal-1", "stage": "closed_won"}
    ingest(keepers, [track("ann", "Deal Won", T0 - DAY / 2, won, "acct-1")])
    keepers.compute()
    assert set(stages_of(keepers).values()) != {"conversion"}

    # the CRM's own event is an event like any other: it converts the contact it names
    set_conversion_rule(keepers, 'orders >= 1 or count("Deal Won") >= 1')
    assert stages_of(keepers) == {"ann": "conversion", "bob": "engagement"}

    # the sync marks every contact of the won account, once
    assert sales.sync_from_events()["contacts_converted"] == 2
    assert sales.sync_from_events()["contacts_converted"] == 0
    set_conversion_rule(keepers, 'orders >= 1 or count("Account Deal Won") >= 1')
    assert stages_of(keepers) == {"ann": "conversion", "bob": "conversion"}
    rows = table(keepers, "SELECT count(*) FROM events WHERE event = 'Account Deal Won'")
    assert rows == [(2,)]


# --- lead scoring ------------------------------------------------------------------------------

LEAD_MODEL = {
    "fit": [
        {"key": "ceo", "trait": "title", "in": ["ceo", "Founder"], "points": 20},
        {
            "key": "mid_market",
            "source": "account",
            "trait": "employees",
            "range": {"min": 50, "max": 1000},
            "points": 10,
        },
        {"key": "usa", "trait": "address.country", "equals": "US", "points": 3},
    ],
    "engagement": {
        "half_life_days": 7,
        "window_days": 30,
        "rules": [
            {"key": "trial", "event": "Trial Started", "points": 10},
            {"key": "demo", "event": "Demo Requested", "points": 30},
            {"key": "pages", "type": "page", "points": 1, "cap": 2},
        ],
    },
    "thresholds": {"mql": 30, "sql": 35, "sql_min_fit": 25},
}


def test_lead_scores_decay_and_thresholds_on_hand_computed_numbers(store):
    keepers, clock = store
    sales = sales_of(keepers)
    assert sales.save_lead_model(LEAD_MODEL)["version"] == 1
    ingest(
        keepers,
        [
            identify("ceo", T0 - 60 * DAY, title="CEO", address={"country": "us"}),
            identify("fan", T0 - 60 * DAY, title="Analyst"),
            identify("new", T0 - 60 * DAY, title="Founder"),
            group("ceo", "acct-1", T0 - 60 * DAY, employees=120),
            group("fan", "acct-2", T0 - 60 * DAY, employees=20000),
            track("ceo", "Trial Started", T0 - 7 * DAY),  # 10 × 0.5 = 5
            track("ceo", "Trial Started", T0 - 14 * DAY),  # 10 × 0.25 = 2.5
            track("ceo", "Trial Started", T0 - 40 * DAY),  # outside the 30-day window
            track("ceo", "Trial Started", T0 + DAY),  # after the moment scored
            *[page("ceo", T0) for _ in range(5)],  # 5 × 1, capped at 2
            track("fan", "Demo Requested", T0),  # 30
            track("fan", "Trial Started", T0),  # 10
        ],
    )
    result = sales.score_leads()
    assert (result["scored"], result["mql"], result["sql"]) == (3, 1, 1)
    assert (result["newly_mql"], result["newly_sql"], result["events_sent"]) == (2, 1, 3)

    leads = {r["user_id"]: r for r in sales.leads("all")}
    # ceo: fit 20 (title) + 10 (120 employees) + 3 (US) = 33; engagement 5 + 2.5 + 2 = 9.5
    assert (leads["ceo"]["fit"], leads["ceo"]["engagement"], leads["ceo"]["score"]) == (
        33.0,
        9.5,
        42.5,
    )
    assert leads["ceo"]["level"] == "sql"
    # fan: 40 points of engagement but no fit: marketing-qualified only
    assert (leads["fan"]["fit"], leads["fan"]["score"], leads["fan"]["level"]) == (0.0, 40.0, "mql")
    assert (leads["new"]["score"], leads["new"]["level"]) == (20.0, "none")
    assert [r["user_id"] for r in sales.leads("sql")] == ["ceo"]
    assert [r["user_id"] for r in sales.leads()] == ["ceo", "fan"]

    why = sales.lead("ceo@acme.example")
    assert [(f["rule"], f["points"]) for f in why["fit_rules"]] == [
        ("ceo", 20.0),
        ("mid_market", 10.0),
        ("usa", 3.0),
    ]
    assert [(e["rule"], e["events"], e["points"]) for e in why["engagement_rules"]] == [
        ("trial", 2, 7.5),
        ("pages", 5, 2.0),
    ]
    assert (why["score"], why["level"]) == (42.5, "sql")

    # a week later every old event counts half as much; the trial sent "tomorrow" now
    # counts too; nobody is announced twice
    clock.now = T0 + 7 * DAY
    later = sales.score_leads()
    assert (later["newly_mql"], later["newly_sql"], later["events_sent"]) == (0, 0, 0)
    ceo = {r["user_id"]: r for r in sales.leads("all")}["ceo"]
    # trials 14, 21 and 6 days old; the pages 7 days old: 5 × 0.5 = 2.5, capped at 2
    expected = 10 * 2 ** (-14 / 7) + 10 * 2 ** (-21 / 7) + 10 * 2 ** (-6 / 7) + 2
    assert ceo["engagement"] == round(expected, 2)
    assert ceo["sql_at"] == T0.isoformat()  # when it first turned sales-qualified
    events = table(
        keepers, "SELECT event, count(*) FROM events WHERE source_id = 'sales' GROUP BY 1"
    )
    assert events == [("Lead Marketing Qualified", 2), ("Lead Sales Qualified", 1)]


def test_a_bad_lead_model_or_level_is_refused_naming_the_field(store):
    keepers, _ = store
    sales = sales_of(keepers)
    with pytest.raises(InvalidInput, match=r"^engagement\.half_life_days"):
        sales.save_lead_model({"engagement": {"half_life_days": -1}})
    with pytest.raises(InvalidInput, match=r"^level"):
        sales.leads("hot")
    with pytest.raises(NotFound):
        sales.lead("nobody@nowhere.example")
    assert sales.lead_model()["version"] == 0  # the built-in default


# --- REST and CLI ------------------------------------------------------------------------------

TOKEN = "test-admin-token"


@pytest.fixture
def client(store) -> Iterator[tuple[TestClient, Keepers]]:
    from keepers.web.responses import install_error_handlers
    from keepers.web.sales_api import sales_router

    keepers, _ = store
    app = FastAPI()
    app.state.keepers, app.state.admin_token = keepers, TOKEN  # what the guard reads
    install_error_handlers(app)
    app.include_router(sales_router(keepers, TOKEN))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client, keepers


def test_the_rest_api_runs_the_same_gates_and_scores(client):
    api, _ = client
    created = api.post("/api/deals", json={"deal_id": "r-1", "amount": 900, "currency": "eur"})
    assert created.status_code == 201 and created.json()["stage"] == "discovery"
    refused = api.put("/api/deals/r-1/stage", json={"stage": "commit"})
    assert refused.status_code == 400
    assert refused.json()["code"] == "stage_gate"
    assert "economic_buyer must be confirmed (is unknown)" in refused.json()["message"]

    for element in ALL:
        answer = api.put(
            f"/api/deals/r-1/meddic/{element}",
            json={"status": "confirmed", "evidence": "said so", "said_by": "Ana (CFO)"},
        )
        assert answer.status_code == 200
    assert answer.json()["score"] == 100.0
    assert api.put("/api/deals/r-1/stage", json={"stage": "commit"}).json()["moved"]
    assert api.patch("/api/deals/r-1", json={"amount": 1200}).json()["changed"] == ["amount"]

    shown = api.get("/api/deals/r-1").json()
    assert (shown["stage"], shown["amount"], shown["score"]) == ("commit", 1200.0, 100.0)
    assert shown["scorecard"][0]["said_by"] == "Ana (CFO)"
    assert api.get("/api/deals/priorities").json()[0]["priority"] == 1200.0
    assert api.get("/api/deals", params={"status": "all"}).json()[0]["deal_id"] == "r-1"
    assert "by_meddic_band" in api.get("/api/deals/pipeline").json()
    assert api.post("/api/deals/sync").json()["crm_events"] == 0

    assert api.get("/api/deals/nope").status_code == 404
    assert api.put("/api/deals/r-1/meddic/champion", json={"status": "sure"}).status_code == 422
    assert api.put("/api/deals/r-1/meddic/chess", json={"status": "confirmed"}).status_code == 400
    assert api.get("/api/deals", headers={"Authorization": "Bearer wrong"}).status_code == 401

    pipeline = api.get("/api/pipelines/default").json()
    pipeline["framework"] = "meddpicc"
    assert api.put("/api/pipelines/default", json=pipeline).json()["version"] == 1
    assert api.put("/api/pipelines/other", json=pipeline).status_code == 400
    assert api.get("/api/pipelines/other").status_code == 404

    assert api.put("/api/leads/model", json=LEAD_MODEL).json()["version"] == 1
    assert api.get("/api/leads/model").json()["model"]["fit"][0]["in"] == ["ceo", "Founder"]
    assert api.post("/api/leads/score").json()["scored"] == 0
    assert api.get("/api/leads", params={"level": "sql"}).json() == []
    assert api.get("/api/leads/nobody").status_code == 404


@pytest.fixture
def cli_app() -> typer.Typer:
    from keepers.cli_sales import deals_app, leads_app

    app = typer.Typer()
    app.add_typer(deals_app, name="deals")
    app.add_typer(leads_app, name="leads")
    return app


def test_the_cli_syncs_lists_refuses_and_scores(tmp_path, cli_app):
    path = str(tmp_path / "keepers.duckdb")
    keepers = Keepers.open(Settings(database_url=path))
    ingest(keepers, crm_history(datetime.now(UTC)))
    keepers.close()
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(cli_app, [*args, "--db", path])
        return result

    synced = run("deals", "sync", "--json")
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output)["deals_created"] == 2
    assert "pilot" in run("deals", "sync").output  # the unmapped CRM stage is named

    listed = json.loads(run("deals", "list", "--status", "all", "--json").output)
    assert {d["deal_id"] for d in listed} == {"deal-1", "deal-2"}

    closed = run("deals", "move", "deal-1", "won")  # closing is never gated
    assert closed.exit_code == 0 and "commit → won" in closed.output
    reopened = run("deals", "move", "deal-2", "commit")
    assert reopened.exit_code == 2
    assert "cannot move to commit: identify_pain must be identified" in reopened.output

    set_one = run("deals", "meddic", "deal-2", "champion", "confirmed", "--said-by", "Bob")
    assert set_one.exit_code == 0 and "score 16.7" in set_one.output
    card = json.loads(run("deals", "meddic", "deal-2", "--json").output)
    assert [e["status"] for e in card if e["element"] == "champion"] == ["confirmed"]
    assert run("deals", "meddic", "deal-2", "champion").exit_code == 2
    assert run("deals", "show", "nope").exit_code == 2
    assert run("deals", "priorities", "--json").exit_code == 0
    assert "by meddic band" in run("deals", "pipeline").output

    scored = json.loads(run("leads", "score", "--json").output)
    assert scored["scored"] >= 1
    explained = json.loads(run("leads", "score", "--customer", "ann", "--json").output)
    assert explained["fit"] == 20.0  # the default model: her account has 120 employees
    assert run("leads", "list", "--level", "all", "--json").exit_code == 0
    assert run("leads", "list", "--level", "hot").exit_code == 2
