"""A new user's journey through the lifecycle, from the command line and the REST API.

A small shop of 17 customers is loaded as Segment messages (fixed message ids, fixed
timestamps, a fixed ingest clock); `keepers compute`, `stages`, `explain`, `segments` and
`definitions` then run as a user runs them (typer's CliRunner, as in test_cli.py), and the
same operations go through `/api` on a live server. Every expected number below follows
from the dataset and the default definitions (README, "The lifecycle"); none was copied
from output.

The CLI computes at the wall clock, so the events are placed at whole-day offsets before
`NOW` (the start of the current hour, fixed when this module is imported). Every threshold
of the default rules (30, 90, 180, 365 days) is at least 9 days away from each offset and
each gap between orders below, so every stage today is the same whenever the suite runs;
the tests of past dates (as-of, backfill) derive theirs in comments.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from keepers.cli import app
from keepers.services.keepers import Keepers
from keepers.settings import Settings
from tests.helpers import rows, serving

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
KEEPERS = [sys.executable, "-m", "keepers.cli"]
runner = CliRunner()


# --- the dataset ----------------------------------------------------------------------------


def _ago(days: int) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def _shop() -> list[dict[str, Any]]:
    """17 customers; the comment on each group derives its stage from the default model
    (the first stage whose rule holds: churned, at_risk, reactivated, loyalty, retention,
    conversion, consideration, engagement, awareness)."""
    messages: list[dict[str, Any]] = []

    def add(**message: Any) -> None:
        messages.append({"messageId": f"lc-{len(messages) + 1:03d}", **message})

    def identify(user: str, days: int) -> None:
        add(
            type="identify",
            userId=user,
            traits={"email": f"{user}@example.com"},
            timestamp=_ago(days),
        )

    def order(user: str, days: int, revenue: float) -> None:
        properties = {"order_id": f"{user}-{days}", "revenue": revenue, "currency": "EUR"}
        add(
            type="track",
            userId=user,
            event="Order Completed",
            properties=properties,
            timestamp=_ago(days),
        )

    # awareness (2): anonymous visitors, one page view 40 days ago, nothing else.
    for anonymous in ("anon-1", "anon-2"):
        add(type="page", anonymousId=anonymous, name="Home", timestamp=_ago(40))
    # engagement (3): identified 50 days ago (rule: signed_up or identified or ...).
    for user in ("e1", "e2", "e3"):
        identify(user, 50)
    # consideration (2): identified 50 days ago, a "Product Added" 3 days ago
    # (count("Product Added", days=30) > 0); before that day they were in engagement.
    for user in ("c1", "c2"):
        identify(user, 50)
        add(
            type="track",
            userId=user,
            event="Product Added",
            properties={"product_id": "p1"},
            timestamp=_ago(3),
        )
    # conversion (3): one order 60 days ago (orders >= 1, 60 <= 180), revenue 40, 60, 120.
    for user, revenue in (("v1", 40), ("v2", 60), ("v3", 120)):
        identify(user, 100)
        order(user, 60, revenue)
    # retention (2): orders 150 and 60 days ago, 50 each (orders >= 2; the gap of 90 days
    # is not > 180, so not reactivated); revenue 100.
    for user in ("r1", "r2"):
        identify(user, 200)
        order(user, 150, 50)
        order(user, 60, 50)
    # loyalty (1): orders 120, 80 and 40 days ago, 100 each, NPS 10 39 days ago
    # (orders >= 3 and nps >= 9); revenue 300 → also "vip" and "promoters".
    identify("l1", 130)
    for days in (120, 80, 40):
        order("l1", days, 100)
    add(
        type="track",
        userId="l1",
        event="NPS Survey Answered",
        properties={"score": 10},
        timestamp=_ago(39),
    )
    # at_risk (2): one order 230 days ago (> 180, not > 365), revenue 80 and 150
    # (k2 is also "win_back": at risk with revenue >= 100).
    for user, revenue in (("k1", 80), ("k2", 150)):
        identify(user, 240)
        order(user, 230, revenue)
    # churned (1): one order 420 days ago, revenue 70, nothing since (> 365 and > 90).
    identify("x1", 430)
    order("x1", 420, 70)
    # reactivated (1): orders 300 and 20 days ago, 60 each (orders >= 2, 20 <= 90, the
    # gap of 280 > 180); before the second order it was at_risk.
    identify("z1", 310)
    order("z1", 300, 60)
    order("z1", 20, 60)
    return messages


MESSAGES = _shop()
CUSTOMERS = 17
FUNNEL_ORDER = [  # main path by `funnel`, then the side stages in evaluation order
    "awareness",
    "engagement",
    "consideration",
    "conversion",
    "retention",
    "loyalty",
    "churned",
    "at_risk",
    "reactivated",
]
STAGES_NOW = {
    "awareness": 2,
    "engagement": 3,
    "consideration": 2,
    "conversion": 3,
    "retention": 2,
    "loyalty": 1,
    "churned": 1,
    "at_risk": 2,
    "reactivated": 1,
}
# 25 days ago: c1/c2 had not added to a cart yet (engagement), z1 had not re-ordered
# (at_risk: 300 - 25 = 275 days since its order); everyone else as now.
STAGES_25_DAYS_AGO = STAGES_NOW | {
    "engagement": 5,
    "consideration": 0,
    "at_risk": 3,
    "reactivated": 0,
}
# vip: l1. active_30d: c1, c2 (cart, 3 days), z1 (order, 20 days). promoters: l1.
# win_back: k2 (at risk, 150). Nobody abandoned a cart or answered NPS <= 6.
SEGMENTS_NOW = {
    "vip": 1,
    "active_30d": 3,
    "cart_abandoners": 0,
    "promoters": 1,
    "detractors": 0,
    "win_back": 1,
}
# orders >= 2: r1, r2, l1, z1. revenue >= 100: v3 120, r1 100, r2 100, l1 300, k2 150, z1 120.
REPEAT_BUYERS = {"r1", "r2", "l1", "z1"}
BIG_SPENDERS = {"v3", "r1", "r2", "l1", "k2", "z1"}


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str) -> Settings:
    """As conftest's, without the server's scheduled compute (these tests run it)."""
    return Settings(database_url=database_url, compute_interval_s=0)


def load_shop(database_url: str) -> str:
    shop = Keepers.open(Settings(database_url=database_url), clock=lambda: NOW)
    try:
        report = shop.ingest_messages(MESSAGES, "lifecycle-test")
    finally:
        shop.close()
    assert report.stored == len(MESSAGES) and not report.rejected
    return database_url


@pytest.fixture
def shop(database_url: str) -> str:
    """The 17-customer shop in a fresh store of each kind, not computed yet."""
    return load_shop(database_url)


@pytest.fixture
def duckdb_shop(duckdb_url: str) -> str:
    """The shop in a DuckDB file only: for input checks that do not depend on the store."""
    return load_shop(duckdb_url)


def cli(*args: str, db: str):
    result = runner.invoke(app, [*args, "--db", db])
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


def cli_json(*args: str, db: str) -> Any:
    return json.loads(cli(*args, "--json", db=db).stdout)


def one_error_line(result) -> str:
    """The failure as a user sees it: one line on stderr, no traceback."""
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    opened = Keepers.open(Settings(database_url=database_url))
    try:
        return rows(opened, sql)
    finally:
        opened.close()


def stored_stages(database_url: str) -> dict[str, int]:
    return dict(query(database_url, "SELECT stage, count(*) FROM customer_state GROUP BY stage"))


def count(database_url: str, table: str) -> int:
    return query(database_url, f"SELECT count(*) FROM {table}")[0][0]


def day(days_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()


def export_definitions(path: Path, db: str) -> dict[str, Any]:
    cli("definitions", "export", str(path), db=db)
    return yaml.safe_load(path.read_text())


def stage_index(definitions: dict[str, Any], key: str) -> int:
    return [s["key"] for s in definitions["stage_model"]["stages"]].index(key)


# --- compute and stages -----------------------------------------------------------------------


def test_first_compute_puts_every_customer_in_the_stage_the_rules_give(shop):
    first = cli_json("compute", db=shop)
    assert (first["mode"], first["written"], first["customers"]) == ("full", True, CUSTOMERS)
    assert first["stage_moves"] == CUSTOMERS  # everyone enters a first stage
    assert first["stages"] == STAGES_NOW and first["segments"] == SEGMENTS_NOW

    stages = cli_json("stages", db=shop)
    assert [row["stage"] for row in stages["stages"]] == FUNNEL_ORDER
    assert {row["stage"]: row["customers"] for row in stages["stages"]} == STAGES_NOW
    assert stages["computed_at"] is not None
    assert {(m["from"], m["to"]): m["customers"] for m in stages["moves"]} == {
        ("(new)", stage): n for stage, n in STAGES_NOW.items()
    }

    second = cli_json("compute", db=shop)  # nothing new happened
    assert (second["mode"], second["stage_moves"], second["segment_changes"]) == (
        "incremental",
        0,
        0,
    )
    assert second["recomputed"] == 0 and second["stages"] == STAGES_NOW
    assert stored_stages(shop) == STAGES_NOW


def test_compute_as_of_a_past_date_reports_that_day_and_writes_nothing(shop):
    cli_json("compute", db=shop)
    runs, history, changes = (count(shop, t) for t in ("compute_runs", "stage_history", "changes"))

    past = cli_json("compute", "--as-of", day(25), db=shop)

    assert past["written"] is False and past["customers"] == CUSTOMERS
    assert past["as_of"].startswith(day(25))
    assert past["stages"] == STAGES_25_DAYS_AGO
    assert stored_stages(shop) == STAGES_NOW  # customer_state untouched
    assert (count(shop, "compute_runs"), count(shop, "stage_history")) == (runs, history)
    assert count(shop, "changes") == changes


def test_a_weekly_backfill_rebuilds_the_stage_history_without_change_records(shop):
    cli_json("compute", db=shop)
    # The first run: 17 stage entries and 6 segment entries (SEGMENTS_NOW) for automations.
    assert count(shop, "changes") == CUSTOMERS + sum(SEGMENTS_NOW.values())

    backfill = cli_json("compute", "--backfill", "--since", day(28), "--every", "week", db=shop)

    # Midnight 28, 21, 14, 7 and 0 days ago, then now: 6 steps.
    assert (backfill["steps"], backfill["every"]) == (6, "week")
    # At the first step all 17 exist (every first event is older than 28 days): 17 rows,
    # already in today's stages except c1, c2 and z1 (k1/k2: 230 - 28 = 202 days > 180,
    # x1: 392 > 365, l1's last order 12 days old).
    # z1's second order (20 days ago) makes it reactivated at the step 14 days ago, c1/c2's
    # cart (3 days ago) moves them engagement → consideration at midnight today: 3 more.
    assert backfill["stage_moves"] == 20
    assert count(shop, "stage_history") == 20
    assert backfill["stages"] == STAGES_NOW
    moves = {(m["from"], m["to"]): m["customers"] for m in cli_json("stages", db=shop)["moves"]}
    assert moves[("engagement", "consideration")] == 2
    assert moves[("at_risk", "reactivated")] == 1
    assert moves[("(new)", "engagement")] == 5 and moves[("(new)", "at_risk")] == 3
    # History only: automations must not replay the past, so `changes` gets nothing.
    assert count(shop, "changes") == CUSTOMERS + sum(SEGMENTS_NOW.values())


# --- explain ----------------------------------------------------------------------------------


def test_explain_lists_every_rule_with_the_values_that_decided(shop):
    cli_json("compute", db=shop)
    why = cli_json("explain", "l1", db=shop)

    assert why["exists"] is True and why["stage"] == "loyalty"
    assert why["customer"]["user_id"] == "l1" and why["customer"]["email"] == "l1@example.com"
    traits = why["traits"]
    assert (traits["orders"], traits["revenue"], traits["nps"]) == (3, 300.0, 10.0)
    assert (traits["days_since_last_order"], traits["previous_order_gap_days"]) == (40, 40)
    # Every stage rule, in evaluation order, with whether it holds for l1; loyalty is the
    # first that does (retention, conversion, engagement and awareness hold too).
    assert {rule["stage"]: rule["matched"] for rule in why["stage_rules"]} == {
        "churned": False,  # 40 days since the last order, not > 365
        "at_risk": False,  # 40, not > 180
        "reactivated": False,  # previous gap 40 days, not > 180
        "loyalty": True,
        "retention": True,
        "conversion": True,
        "consideration": False,  # no cart, checkout, views or trial
        "engagement": True,  # identified
        "awareness": True,
    }
    assert [r["stage"] for r in why["stage_rules"]][:4] == [
        "churned",
        "at_risk",
        "reactivated",
        "loyalty",
    ]
    loyalty = next(r for r in why["stage_rules"] if r["stage"] == "loyalty")
    assert loyalty["rule"] == "orders >= 3 and (referrals_made >= 1 or nps >= 9)"
    assert [(c["condition"], c["value"], c["reads"]) for c in loyalty["conditions"]] == [
        ("orders >= 3", True, {"orders": 3}),
        ("referrals_made >= 1", False, {"referrals_made": 0}),
        ("nps >= 9", True, {"nps": 10.0}),
    ]
    assert {s["segment"]: s["matched"] for s in why["segments"]} == {
        "vip": True,
        "active_30d": False,  # last active 39 days ago
        "cart_abandoners": False,
        "promoters": True,
        "detractors": False,
        "win_back": False,
    }

    by_email = cli_json("explain", "l1@example.com", db=shop)
    assert by_email["customer"] == why["customer"] and by_email["stage"] == "loyalty"
    # Before its second order, z1 was at risk (275 days since the first one).
    assert cli_json("explain", "z1", "--as-of", day(25), db=shop)["stage"] == "at_risk"


def test_explain_scores_shows_the_health_score_and_what_made_it(duckdb_shop, monkeypatch):
    from keepers.engine import scores as day_scores

    monkeypatch.setattr(day_scores, "_CACHE", {})  # nothing scored today in this process
    cli_json("compute", db=duckdb_shop)
    scores = cli_json("explain", "l1", "--scores", db=duckdb_shop)["scores"]
    parts = {p["component"]: p for p in scores["health"]}
    assert parts["frequency"]["value"] == 3  # l1's orders, read by `orders`
    assert parts["nps"]["value"] == 10.0
    known = [p for p in parts.values() if p["points"] is not None]
    mean = sum(p["points"] * p["weight"] for p in known) / sum(p["weight"] for p in known)
    assert scores["health_score"] == pytest.approx(mean, abs=0.06)
    assert "rfm_segment" in scores and "clv_12m" in scores  # with or without a model fitted
    shown = runner.invoke(app, ["explain", "l1", "--scores", "--db", duckdb_shop])
    assert shown.exit_code == 0, shown.output
    assert f"health_score = {scores['health_score']}" in shown.output
    assert "frequency: orders = 3" in shown.output
    assert "churn_risk, persona: scored once a day" in shown.output


def test_explaining_an_unknown_customer_is_one_readable_line(duckdb_shop):
    cli_json("compute", db=duckdb_shop)
    result = runner.invoke(app, ["explain", "nobody@example.com", "--db", duckdb_shop])
    assert result.exit_code in (1, 2)
    assert "no customer 'nobody@example.com'" in one_error_line(result)


# --- segments -----------------------------------------------------------------------------------


def test_a_segment_previewed_created_listed_shown_and_deleted(shop):
    cli_json("compute", db=shop)

    preview = cli_json("segments", "preview", "--rule", "orders >= 2", db=shop)
    assert (preview["customers"], preview["of"]) == (len(REPEAT_BUYERS), CUSTOMERS)
    assert {row["user_id"] for row in preview["sample"]} == REPEAT_BUYERS
    assert cli_json("definitions", "history", db=shop) == []  # nothing saved
    assert [s["key"] for s in cli_json("segments", "list", db=shop)] == list(SEGMENTS_NOW)

    created = cli_json("segments", "create", "big", "--rule", "revenue >= 100", db=shop)
    assert created["version"] == 1  # the first change to the default definitions
    assert created["segment"] == {"key": "big", "rule": "revenue >= 100"}
    assert created["compute"]["segments"]["big"] == len(BIG_SPENDERS)  # computed at once

    listed = {s["key"]: s for s in cli_json("segments", "list", db=shop)}
    assert (listed["big"]["rule"], listed["big"]["customers"]) == ("revenue >= 100", 6)
    shown = cli_json("segments", "show", "big", db=shop)
    assert shown["size"] == len(BIG_SPENDERS)
    assert {row["user_id"] for row in shown["sample"]} == BIG_SPENDERS

    deleted = cli("segments", "delete", "big", db=shop)
    assert "segment 'big' deleted (version 2)" in deleted.stdout
    assert "big" not in {s["key"] for s in cli_json("segments", "list", db=shop)}
    # Its members exited it, recorded.
    assert query(
        shop, "SELECT count(*) FROM segment_memberships WHERE segment = 'big' AND exited_at IS NULL"
    ) == [(0,)]
    assert query(shop, "SELECT count(*) FROM segment_memberships WHERE segment = 'big'") == [
        (len(BIG_SPENDERS),)
    ]
    gone = runner.invoke(app, ["segments", "show", "big", "--db", shop])
    assert gone.exit_code in (1, 2) and "no segment 'big'" in one_error_line(gone)


@pytest.mark.parametrize("command", ["create", "preview"])
def test_a_typo_in_a_segment_rule_suggests_the_field(duckdb_shop, command):
    key = ["big"] if command == "create" else []
    result = runner.invoke(
        app, ["segments", command, *key, "--rule", "ordrs >= 2", "--db", duckdb_shop]
    )
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "unknown field 'ordrs'" in line and "did you mean 'orders'" in line
    assert cli_json("definitions", "history", db=duckdb_shop) == []  # nothing saved


def test_a_typo_in_a_previewed_rule_does_not_name_an_internal_segment(duckdb_shop):
    result = runner.invoke(
        app, ["segments", "preview", "--rule", "ordrs >= 2", "--db", duckdb_shop]
    )
    assert result.exit_code == 2 and "p_preview" not in one_error_line(result)


def test_an_invalid_segment_key_is_refused_by_name(duckdb_shop):
    # A separate process: in this one, pydantic keeps the key's ValidationError (and the
    # frames holding the closed DuckDB connection) alive until exit, where DuckDB's
    # bindings then print "nanobind: leaked ..." under the test run.
    result = subprocess.run(
        [*KEEPERS, "segments", "create", "Bad-Key", "--rule", "orders >= 1", "--db", duckdb_shop],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert "'Bad-Key' is not a valid key" in line and "lowercase" in line
    assert cli_json("definitions", "history", db=duckdb_shop) == []


# --- definitions ------------------------------------------------------------------------------


def test_definitions_exported_edited_and_applied_become_a_new_version(shop, tmp_path):
    cli_json("compute", db=shop)
    path = tmp_path / "lifecycle.yaml"
    definitions = export_definitions(path, shop)
    assert path.read_text().startswith("# Keepers definitions, version 0\n")
    assert [s["key"] for s in definitions["stage_model"]["stages"]][:5] == [
        "churned",
        "at_risk",
        "reactivated",
        "loyalty",
        "retention",
    ]

    # Rename a label, add a segment, and put retention before loyalty: l1 (3 orders)
    # then matches retention first.
    stages = definitions["stage_model"]["stages"]
    stages[stage_index(definitions, "churned")]["label"] = "Lost"
    loyalty, retention = stage_index(definitions, "loyalty"), stage_index(definitions, "retention")
    stages[loyalty], stages[retention] = stages[retention], stages[loyalty]
    definitions["segments"].append({"key": "big", "rule": "revenue >= 100"})
    path.write_text(yaml.safe_dump(definitions, sort_keys=False))

    applied = cli_json("definitions", "apply", str(path), db=shop)
    assert applied["version"] == 1
    assert "stage 'churned' changed" in applied["summary"]
    assert "segment 'big' added" in applied["summary"]
    assert applied["compute"]["stage_moves"] == 1  # l1: loyalty → retention
    assert applied["compute"]["stages"] == STAGES_NOW | {"loyalty": 0, "retention": 3}
    assert applied["compute"]["segments"]["big"] == len(BIG_SPENDERS)

    shown = {row["stage"]: row for row in cli_json("stages", db=shop)["stages"]}
    assert shown["churned"]["label"] == "Lost"
    assert cli_json("explain", "l1", db=shop)["stage"] == "retention"

    history = cli_json("definitions", "history", db=shop)
    assert [(h["version"], h["actor"], h["summary"]) for h in history] == [
        (1, f"cli:{getpass.getuser()}", applied["summary"])
    ]
    assert datetime.fromisoformat(history[0]["at"]) >= NOW
    again = export_definitions(path, shop)
    assert path.read_text().startswith("# Keepers definitions, version 1\n")
    assert stage_index(again, "retention") < stage_index(again, "loyalty")


def test_the_summary_names_a_reorder_made_together_with_a_label_change(duckdb_shop, tmp_path):
    path = tmp_path / "lifecycle.yaml"
    definitions = export_definitions(path, duckdb_shop)
    stages = definitions["stage_model"]["stages"]
    stages[stage_index(definitions, "churned")]["label"] = "Lost"
    loyalty, retention = stage_index(definitions, "loyalty"), stage_index(definitions, "retention")
    stages[loyalty], stages[retention] = stages[retention], stages[loyalty]
    path.write_text(yaml.safe_dump(definitions, sort_keys=False))
    applied = cli_json("definitions", "apply", str(path), db=duckdb_shop)
    assert "reorder" in applied["summary"]


def _with_bad_at_risk_rule(tmp_path: Path, db: str, rule: str) -> Path:
    path = tmp_path / "lifecycle.yaml"
    definitions = export_definitions(path, db)
    definitions["stage_model"]["stages"][stage_index(definitions, "at_risk")]["rule"] = rule
    path.write_text(yaml.safe_dump(definitions, sort_keys=False))
    return path


def test_a_definitions_file_with_a_bad_rule_is_refused_and_nothing_changes(duckdb_shop, tmp_path):
    path = _with_bad_at_risk_rule(
        tmp_path, duckdb_shop, "orders >= 1 and days_since_last_ordr > 180"
    )
    result = runner.invoke(app, ["definitions", "apply", str(path), "--db", duckdb_shop])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "stage 'at_risk'" in line and "did you mean 'days_since_last_order'" in line
    assert cli_json("definitions", "history", db=duckdb_shop) == []


@pytest.mark.parametrize(
    ("rule", "column"),
    [
        pytest.param("orders >= 1 and days_since_last_order >", 39, id="syntax"),
        pytest.param(
            "orders >= 1 and days_since_last_ordr > 180",
            17,
            id="unknown-field",
        ),
    ],
)
def test_a_bad_rule_in_a_definitions_file_is_named_by_stage_and_position(
    duckdb_shop, tmp_path, rule, column
):
    path = _with_bad_at_risk_rule(tmp_path, duckdb_shop, rule)
    result = runner.invoke(app, ["definitions", "apply", str(path), "--db", duckdb_shop])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "stage 'at_risk'" in line and f"column {column}" in line


def test_an_invalid_yaml_file_is_one_readable_line(duckdb_shop, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stage_model:\n  stages: [\n  - key: x\n")
    result = runner.invoke(app, ["definitions", "apply", str(path), "--db", duckdb_shop])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert str(path) in line and "not valid YAML" in line
    assert cli_json("definitions", "history", db=duckdb_shop) == []


def test_an_invalid_yaml_file_says_where_the_mistake_is(duckdb_shop, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stage_model:\n  stages: [\n  - key: x\n")
    result = runner.invoke(app, ["definitions", "apply", str(path), "--db", duckdb_shop])
    assert result.exit_code == 2 and "line " in one_error_line(result)


# --- the REST API -----------------------------------------------------------------------------


@pytest.fixture
def api(live_server) -> Iterator[httpx.Client]:
    report = live_server.keepers.ingest_messages(MESSAGES, "lifecycle-test", received_at=NOW)
    assert report.stored == len(MESSAGES)
    headers = {"Authorization": f"Bearer {live_server.admin_token}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=120) as client:
        yield client


def test_the_rest_api_computes_stages_and_explains(api, live_server):
    for method, path in (("POST", "/api/compute"), ("GET", "/api/stages")):
        anonymous = httpx.request(method, live_server.url + path, json={})
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"

    computed = api.post("/api/compute", json={})
    assert computed.status_code == 200
    assert (computed.json()["mode"], computed.json()["stages"]) == ("full", STAGES_NOW)
    past = api.post("/api/compute", json={"as_of": f"{day(25)}T00:00:00Z"}).json()
    assert past["written"] is False and past["stages"] == STAGES_25_DAYS_AGO

    stages = api.get("/api/stages").json()["stages"]
    assert [(s["stage"], s["customers"]) for s in stages] == [
        (key, STAGES_NOW[key]) for key in FUNNEL_ORDER
    ]

    why = api.get("/api/customers/l1@example.com/explain").json()
    assert why["stage"] == "loyalty" and why["customer"]["user_id"] == "l1"
    assert next(r["stage"] for r in why["stage_rules"] if r["matched"]) == "loyalty"
    missing = api.get("/api/customers/nobody/explain")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    # a backfill from year 1 (a fuzzer found its 7-day windows falling off the calendar)
    for body in (
        {"as_of": "0020-01-01T00:00:00Z", "backfill_since": "0001-01-01T00:00:00Z"},
        {"as_of": "1899-12-31T23:59:59Z"},
    ):
        refused = api.post("/api/compute", json=body)
        assert refused.status_code == 400, refused.text
        assert "must not be before 1900-01-01" in refused.json()["message"]


def test_the_rest_api_saves_segments_and_definitions(api):
    api.post("/api/compute", json={}).raise_for_status()

    bad = api.put("/api/segments/big", json={"rule": "revenue >= 100 and ordrs >= 2"})
    assert bad.status_code == 422
    problem = bad.json()
    assert (problem["code"], problem["position"], problem["suggestion"]) == (
        "invalid_rule",
        19,  # where "ordrs" starts
        "orders",
    )
    assert "did you mean 'orders'" in problem["message"]

    preview = api.post("/api/segments/preview", json={"rule": "orders >= 2", "sample": 2})
    assert preview.status_code == 200
    assert (preview.json()["customers"], len(preview.json()["sample"])) == (4, 2)
    assert api.get("/api/definitions").json()["version"] == 0  # neither saved anything

    saved = api.put("/api/segments/big", json={"rule": "revenue >= 100"})
    assert saved.status_code == 200
    assert saved.json()["version"] == 1
    assert saved.json()["compute"]["segments"]["big"] == len(BIG_SPENDERS)

    current = api.get("/api/definitions").json()
    assert current["version"] == 1 and current["definitions"]["segments"][-1]["key"] == "big"
    body = current["definitions"]
    body["stage_model"]["stages"][stage_index(body, "churned")]["label"] = "Lost"
    replaced = api.put("/api/definitions", json={"definitions": body})
    assert replaced.status_code == 200
    assert (replaced.json()["version"], replaced.json()["summary"]) == (
        2,
        "stage 'churned' changed",
    )
    history = api.get("/api/definitions/history").json()
    assert [(h["version"], h["actor"]) for h in history] == [(2, "admin-token"), (1, "admin-token")]
    assert history[1]["summary"] == "segment 'big' created: revenue >= 100"


# --- a DuckDB file held by `keepers serve` ----------------------------------------------------


@pytest.fixture
def served_shop(duckdb_shop):
    """The computed shop, then a real `keepers serve` process holding its file."""
    cli_json("compute", db=duckdb_shop)
    with serving(duckdb_shop, KEEPERS_COMPUTE_INTERVAL_S="0"):
        yield duckdb_shop


def test_lifecycle_commands_on_a_served_file_go_through_the_server(served_shop):
    assert Path(served_shop + ".server.json").exists()  # the server holds the file

    def keepers(*args: str) -> Any:
        done = subprocess.run(
            [*KEEPERS, *args, "--json", "--db", served_shop], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    stages = keepers("stages")
    assert {s["stage"]: s["customers"] for s in stages["stages"]} == STAGES_NOW
    segments = keepers("segments", "list")
    assert {s["key"]: s["customers"] for s in segments} == SEGMENTS_NOW
