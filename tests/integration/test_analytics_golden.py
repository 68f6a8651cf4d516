"""Churn, retention, cohorts, the active-customer lifecycle view, RFM and the funnel on a
small business whose every number was worked out by hand (see each test's comments), on
DuckDB and PostgreSQL.

Six customers, amounts in euros, as of 2024-04-01 00:00 UTC, monthly periods:

| customer | orders | stage history | other activity |
|---|---|---|---|
| c1 | 01-05 €10, 02-10 €20, 03-15 €30 | conversion 01-05, retention 02-10 | |
| c2 | 01-10 €40 | conversion 01-10, churned 02-20 | `Email Delivered` 03-05 (passive) |
| c3 | 02-05 €50 | conversion 02-05 | |
| c4 | 2023-12-01 €60, 03-10 €70 | conversion 2023-12-01, churned 01-15, reactivated 03-10 | |
| c5 | – | awareness 01-01 | page views 01-01, 03-02 |
| c6 | 03-20 €80 | conversion 03-20 | |
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from keepers.services.keepers import Keepers

AS_OF = datetime(2024, 4, 1, tzinfo=UTC)
ORDERS = {
    "c1": [("2024-01-05", 10.0), ("2024-02-10", 20.0), ("2024-03-15", 30.0)],
    "c2": [("2024-01-10", 40.0)],
    "c3": [("2024-02-05", 50.0)],
    "c4": [("2023-12-01", 60.0), ("2024-03-10", 70.0)],
    "c5": [],
    "c6": [("2024-03-20", 80.0)],
}
HISTORY = {
    "c1": [("conversion", "2024-01-05"), ("retention", "2024-02-10")],
    "c2": [("conversion", "2024-01-10"), ("churned", "2024-02-20")],
    "c3": [("conversion", "2024-02-05")],
    "c4": [("conversion", "2023-12-01"), ("churned", "2024-01-15"), ("reactivated", "2024-03-10")],
    "c5": [("awareness", "2024-01-01")],
    "c6": [("conversion", "2024-03-20")],
}
FIRST_SEEN = {u: (ORDERS[u] or [("2024-01-01", 0)])[0][0] for u in ORDERS}  # sign-up day
OTHER_EVENTS = [
    ("c2", "Email Delivered", "2024-03-05"),
    ("c5", None, "2024-01-01"),
    ("c5", None, "2024-03-02"),
]


def _at(day: str) -> str:
    return f"{day}T12:00:00Z"


def _messages() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for user in ORDERS:  # identify first: customer ids 1 … 6 in order
        messages.append(
            {
                "type": "identify",
                "messageId": f"id-{user}",
                "userId": user,
                "traits": {"email": f"{user}@example.com"},
                "timestamp": _at(FIRST_SEEN[user]),
            }
        )
        for i, (day, amount) in enumerate(ORDERS[user]):
            messages.append(
                {
                    "type": "track",
                    "messageId": f"o-{user}-{i}",
                    "userId": user,
                    "event": "Order Completed",
                    "properties": {"order_id": f"{user}-{i}", "revenue": amount},
                    "timestamp": _at(day),
                }
            )
    for i, (user, event, day) in enumerate(OTHER_EVENTS):
        message = {"messageId": f"e-{i}", "userId": user, "timestamp": _at(day)}
        if event is None:
            message.update(type="page", name="Home")
        else:
            message.update(type="track", event=event)
        messages.append(message)
    return messages


@pytest.fixture
def shop(keepers: Keepers) -> dict[str, int]:
    report = keepers.ingest_messages(_messages(), source_id="golden")
    assert not report.rejected and report.stored == len(_messages())
    with keepers.db.transaction() as tx:
        ids = dict(tx.execute("SELECT user_id, customer_id FROM customers"))
        assert [ids[u] for u in ORDERS] == [1, 2, 3, 4, 5, 6]
        for user, moves in HISTORY.items():
            previous = None
            for stage, day in moves:
                tx.execute(
                    "INSERT INTO stage_history VALUES (?, ?, ?, ?, ?, 1)",
                    [ids[user], previous, stage, datetime.fromisoformat(_at(day)), "golden"],
                )
                previous = stage
    return ids


def _report(keepers: Keepers, name: str, **options: Any) -> dict[str, Any]:
    return keepers.lifecycle.report(name, AS_OF, **options)


def _who(keepers: Keepers, name: str, **cell: Any) -> list[str]:
    result = keepers.lifecycle.report_who(name, AS_OF, 100, **cell)
    assert result["customers"] == len(result["rows"])
    return sorted(r["user_id"] for r in result["rows"])


def test_churn_and_retention_by_hand(keepers: Keepers, shop: dict[str, int]) -> None:
    result = _report(keepers, "churn", period="month", periods=2)
    feb, mar = result["periods"]
    assert (feb["period"], mar["period"]) == ("2024-02", "2024-03")
    # February: at its start c1, c2 are customers (c4 is churned); at its end c1 and c3
    # (c2 churned on 02-20); c3 is new, c2 lost. churn 1/2, retention (2 - 1)/2.
    assert {k: feb[k] for k in ("customers_at_start", "customers_at_end", "new", "lost")} == {
        "customers_at_start": 2,
        "customers_at_end": 2,
        "new": 1,
        "lost": 1,
    }
    assert feb["reactivated"] == 0
    assert feb["churn_rate"] == 0.5 and feb["retention_rate"] == 0.5
    # March: start c1, c3; end c1, c3, c4 (reactivated 03-10), c6 (new). churn 0,
    # retention (4 - 1)/2 = 1.5 — the CRR formula counts the comeback as retained.
    assert (mar["customers_at_start"], mar["customers_at_end"]) == (2, 4)
    assert (mar["new"], mar["lost"], mar["reactivated"]) == (1, 0, 1)
    assert mar["churn_rate"] == 0.0 and mar["retention_rate"] == 1.5
    # Revenue: Jan 50 (c1 10, c2 40), Feb 70 (c1 20, c3 50), Mar 180 (c1 30, c4 70, c6 80).
    # NRR Feb = c1's Feb 20 / Jan 50; NRR Mar = (c1 30 + c3 0) / Feb 70.
    assert (feb["revenue"], mar["revenue"]) == (70.0, 180.0)
    assert feb["net_revenue_retention"] == 0.4
    assert mar["net_revenue_retention"] == round(30 / 70, 6)
    assert _who(keepers, "churn", in_period="2024-02", group="lost") == ["c2"]
    assert _who(keepers, "churn", in_period="2024-03", group="reactivated") == ["c4"]
    assert _who(keepers, "churn", in_period="2024-03", group="end") == ["c1", "c3", "c4", "c6"]
    assert _report(keepers, "retention", periods=2)["periods"] == result["periods"]


def test_cohort_matrix_by_hand(keepers: Keepers, shop: dict[str, int]) -> None:
    rows = {r["cohort"]: r for r in _report(keepers, "cohorts")["cohorts"]}
    # 2023-12: c4 orders in months 0 and 3; 2024-01: c1 (0, 1, 2) and c2 (0);
    # 2024-02: c3; 2024-03: c6. Columns run to April 2024, the as-of month.
    assert rows["2023-12"]["retention"] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert rows["2024-01"]["retention"] == [1.0, 0.5, 0.5, 0.0]
    assert rows["2024-01"]["customers"] == 2
    assert rows["2024-02"]["retention"] == [1.0, 0.0, 0.0]
    assert rows["2024-03"]["retention"] == [1.0, 0.0]
    rolling = {r["cohort"]: r for r in _report(keepers, "cohorts", mode="rolling")["cohorts"]}
    assert rolling["2023-12"]["retention"] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert rolling["2024-01"]["retention"] == [1.0, 0.5, 0.5, 0.0]
    assert _who(keepers, "cohorts", cohort="2024-01", offset=1) == ["c1"]
    quarters = {r["cohort"]: r for r in _report(keepers, "cohorts", period="quarter")["cohorts"]}
    # 2023-Q4: c4, again in Q1; 2024-Q1: c1, c2, c3, c6 — none in Q2 yet
    assert quarters["2023-Q4"]["retention"] == [1.0, 1.0, 0.0]
    assert quarters["2024-Q1"]["retention"] == [1.0, 0.0]


def test_active_customer_lifecycle_by_hand(keepers: Keepers, shop: dict[str, int]) -> None:
    feb, mar = _report(keepers, "lifecycle", periods=2)["periods"]
    # February: c1 (active in January) returning, c3 new; c2 and c5 went quiet: dormant.
    assert {k: feb[k] for k in ("new", "returning", "resurrecting", "dormant")} == {
        "new": 1,
        "returning": 1,
        "resurrecting": 0,
        "dormant": -2,
    }
    # March: c1 returning, c6 new, c4 (December) and c5 (January) resurrecting, c3 dormant;
    # c2's `Email Delivered` is passive and does not count.
    assert {k: mar[k] for k in ("new", "returning", "resurrecting", "dormant")} == {
        "new": 1,
        "returning": 1,
        "resurrecting": 2,
        "dormant": -1,
    }
    assert mar["active"] == 4
    assert _who(keepers, "lifecycle", in_period="2024-03", status="resurrecting") == ["c4", "c5"]


def test_rfm_scores_by_hand(keepers: Keepers, shop: dict[str, int]) -> None:
    # Breakpoints: the five buyers at midnight 04-01 (the as-of moment), b_k = the value at
    # position k of 5 (⌈k·5/5⌉); score = 1 + breakpoints strictly below the value.
    # Days since the last order (orders at noon): c1 16, c2 81, c3 55, c4 21, c6 11; scored
    # as −days, b = −81 −55 −21 −16 → R: c2 1, c3 2, c4 3, c1 4, c6 5. Orders 1 1 1 2 3,
    # b = 1 1 1 2 → one order scores 1 (equal values, equal scores), c4's 2 scores 4, c1's 3
    # scores 5. Spend: c2 40, c3 50, c1 60, c6 80, c4 130 → M 1 … 5 in that order. c6, one
    # recent order, is a new customer.
    rows = {r["user_id"]: r for r in keepers.lifecycle.report_who("rfm", AS_OF, 100)["rows"]}
    scores = {u: (r["r"], r["f"], r["m"], r["segment"]) for u, r in rows.items()}
    assert scores == {
        "c1": (4, 5, 3, "loyal"),
        "c2": (1, 1, 1, "lost"),
        "c3": (2, 1, 2, "hibernating"),
        "c4": (3, 4, 5, "loyal"),
        "c6": (5, 1, 4, "new"),
    }
    assert rows["c2"]["recency_days"] == 81
    summary = {s["segment"]: s for s in _report(keepers, "rfm")["segments"]}
    assert summary["loyal"]["customers"] == 2 and summary["loyal"]["avg_monetary"] == 95.0
    assert summary["champions"]["customers"] == 0
    assert _report(keepers, "rfm")["grid"]["customers"][0][0] == 1  # c2: R1 F1


def test_funnel_by_hand(keepers: Keepers, shop: dict[str, int]) -> None:
    result = _report(keepers, "funnel")
    stages = {s["stage"]: s for s in result["stages"]}
    # Everyone reached awareness; c5 never got further; the five buyers passed
    # engagement and consideration on the way to conversion; only c1 reached retention.
    assert [stages[k]["reached"] for k in stages] == [6, 5, 5, 5, 1, 0]
    assert stages["awareness"]["conversion_rate"] == round(5 / 6, 6)
    assert stages["conversion"]["conversion_rate"] == 0.2
    assert stages["conversion"]["median_days_to_next"] == 36.0  # c1: 01-05 → 02-10
    assert result["overall_conversion"] == 0.0
    in_stage = {s["stage"]: s for s in result["time_in_stage"]}
    # conversion stays: c1 36 days, c2 41, c4 45 (completed); c3 and c6 still there
    assert in_stage["conversion"]["completed_stays"] == 3
    assert in_stage["conversion"]["median_days_in_stage"] == 41.0
    assert in_stage["conversion"]["current"] == 2
    assert in_stage["churned"]["median_days_in_stage"] == 55.0  # c4: 01-15 → 03-10
    assert _who(keepers, "funnel", stage="conversion", status="dropped") == [
        "c2",
        "c3",
        "c4",
        "c6",
    ]


def test_reports_as_of_an_earlier_date_see_only_what_was_known(
    keepers: Keepers, shop: dict[str, int]
) -> None:
    early = keepers.lifecycle.report("churn", datetime(2024, 3, 1, tzinfo=UTC), periods=1)
    (feb,) = early["periods"]
    assert (feb["customers_at_start"], feb["lost"], feb["churn_rate"]) == (2, 1, 0.5)
    cohorts = keepers.lifecycle.report("cohorts", datetime(2024, 2, 1, tzinfo=UTC))
    assert [c["cohort"] for c in cohorts["cohorts"]] == ["2023-12", "2024-01"]


def test_report_mistakes_name_the_option(keepers: Keepers, shop: dict[str, int]) -> None:
    from keepers.errors import InvalidInput

    with pytest.raises(InvalidInput, match="has no option period"):
        _report(keepers, "rfm", period="month")
    with pytest.raises(InvalidInput, match="unknown report 'nope'"):
        _report(keepers, "nope")
    with pytest.raises(InvalidInput, match="period must be one of"):
        _report(keepers, "churn", period="fortnight")
    with pytest.raises(InvalidInput, match="offset must be a whole number"):
        keepers.lifecycle.report_who("cohorts", AS_OF, 10, cohort="2024-01", offset="one")
    with pytest.raises(InvalidInput, match="stage 'nowhere' is not on the main path"):
        keepers.lifecycle.report_who("funnel", AS_OF, 10, stage="nowhere")


def test_reports_over_the_api(live_server: Any) -> None:
    import httpx

    keepers = live_server.keepers
    report = keepers.ingest_messages(_messages(), source_id="golden")
    assert not report.rejected
    headers = {"Authorization": f"Bearer {live_server.admin_token}"}
    query = {"as_of": AS_OF.isoformat(), "periods": "2"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as http:
        cohorts = http.get("/api/reports/cohorts", params={"as_of": AS_OF.isoformat()})
        assert cohorts.status_code == 200, cohorts.text
        rows = {r["cohort"]: r["retention"] for r in cohorts.json()["cohorts"]}
        assert rows["2024-01"] == [1.0, 0.5, 0.5, 0.0]
        who = http.get(
            "/api/reports/cohorts/customers",
            params={"as_of": AS_OF.isoformat(), "cohort": "2024-01", "offset": "1"},
        )
        assert who.status_code == 200, who.text
        assert [r["user_id"] for r in who.json()["rows"]] == ["c1"]
        bad = http.get("/api/reports/rfm", params={**query})
        assert bad.status_code == 400 and "periods" in bad.json()["message"]
        unknown = http.get("/api/reports/nope")
        assert unknown.status_code == 400 and "unknown report" in unknown.json()["message"]
        assert http.get("/api/reports/rfm").status_code == 200
        assert (
            http.get("/api/reports/rfm", headers={"Authorization": "Bearer x"}).status_code == 401
        )


def test_report_command(duckdb_url: str) -> None:
    import json

    from typer.testing import CliRunner

    from keepers.cli import app
    from keepers.settings import Settings

    keepers = Keepers.open(Settings(database_url=duckdb_url))
    try:
        assert not keepers.ingest_messages(_messages(), source_id="golden").rejected
    finally:
        keepers.close()
    runner = CliRunner()
    args = ["report", "cohorts", "--as-of", "2024-04-01", "--db", duckdb_url]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "2024-01" in shown.stdout and "retention" in shown.stdout
    listed = runner.invoke(app, [*args, "--who", "cohort=2024-01", "--who", "offset=1", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["user_id"] for r in json.loads(listed.stdout)["rows"]] == ["c1"]
    wrong = runner.invoke(app, ["report", "rfm", "--period", "month", "--db", duckdb_url])
    assert wrong.exit_code == 2
    assert "has no option period" in wrong.stderr and "Traceback" not in wrong.output
