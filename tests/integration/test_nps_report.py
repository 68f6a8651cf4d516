"""The NPS report on a hand-made set of answers whose every number was worked out by hand,
on DuckDB and PostgreSQL; and the `nps` trait driving a segment rule.

As of 2024-04-01 00:00 UTC, three monthly periods (January, February, March 2024):

| customer | answers (score, comment) | stage history | segment `vip` |
|---|---|---|---|
| p1 | 01-10 10 "Love it"; 02-05 9 "Great service" | conversion 01-01, loyalty 02-01 | 01-01 → |
| p2 | 01-15 6 "Too slow"; 01-20 9 "Fixed now" | conversion 01-01 | |
| p3 | 02-10 8 | retention 01-01 | 01-01 → 02-01 |
| p4 | 02-12 3 "Broken"; 03-03 7 "Better" | retention 01-01, at_risk 03-01 | |
| p5 | 03-08 0 "Awful"; 03-09 "n/a" (no valid score) | at_risk 01-01 | 03-01 → |
| p6 | 03-20 "9" (a numeric string) | – | |
| p7 | 2023-12-05 2 (before the window) | – | |
| p8 | 03-25 a comment without a score | – | |
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from keepers.analytics import nps
from keepers.services.keepers import Keepers

AS_OF = datetime(2024, 4, 1, tzinfo=UTC)
USERS = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]
ANSWERS: list[tuple[str, str, Any, str | None]] = [
    ("p1", "2024-01-10", 10, "Love it"),
    ("p1", "2024-02-05", 9, "Great service"),
    ("p2", "2024-01-15", 6, "Too slow"),
    ("p2", "2024-01-20", 9, "Fixed now"),
    ("p3", "2024-02-10", 8, None),
    ("p4", "2024-02-12", 3, "Broken"),
    ("p4", "2024-03-03", 7, "Better"),
    ("p5", "2024-03-08", 0, "Awful"),
    ("p5", "2024-03-09", "n/a", None),
    ("p6", "2024-03-20", "9", None),
    ("p7", "2023-12-05", 2, None),
    ("p8", "2024-03-25", None, "Where is my parcel?"),
]
HISTORY = {
    "p1": [("conversion", "2024-01-01"), ("loyalty", "2024-02-01")],
    "p2": [("conversion", "2024-01-01")],
    "p3": [("retention", "2024-01-01")],
    "p4": [("retention", "2024-01-01"), ("at_risk", "2024-03-01")],
    "p5": [("at_risk", "2024-01-01")],
}
VIP = [("p1", "2024-01-01", None), ("p3", "2024-01-01", "2024-02-01"), ("p5", "2024-03-01", None)]


def _at(day: str) -> datetime:
    return datetime.fromisoformat(f"{day}T12:00:00+00:00")


def _messages() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {
            "type": "identify",
            "messageId": f"id-{u}",
            "userId": u,
            "traits": {"email": f"{u}@example.com"},
            "timestamp": "2023-11-01T00:00:00Z",
        }
        for u in USERS
    ]
    for i, (user, day, score, comment) in enumerate(ANSWERS):
        properties: dict[str, Any] = {"survey_id": "nps-q1"}
        if score is not None:
            properties["score"] = score
        if comment is not None:
            properties["comment"] = comment
        messages.append(
            {
                "type": "track",
                "messageId": f"nps-{i}",
                "userId": user,
                "event": nps.NPS_EVENT,
                "properties": properties,
                "timestamp": _at(day).isoformat(),
            }
        )
    return messages


@pytest.fixture
def answered(keepers: Keepers) -> dict[str, int]:
    report = keepers.ingest_messages(_messages(), source_id="golden")
    assert not report.rejected
    with keepers.db.transaction() as tx:
        ids = dict(tx.execute("SELECT user_id, customer_id FROM customers"))
        for user, moves in HISTORY.items():
            previous = None
            for stage, day in moves:
                tx.execute(
                    "INSERT INTO stage_history VALUES (?, ?, ?, ?, 'golden', 1)",
                    [ids[user], previous, stage, _at(day)],
                )
                previous = stage
        for user, entered, exited in VIP:
            tx.execute(
                "INSERT INTO segment_memberships VALUES ('vip', ?, ?, ?, 1, NULL)",
                [ids[user], _at(entered), _at(exited) if exited else None],
            )
    return ids


def _report(keepers: Keepers, **options: Any) -> dict[str, Any]:
    return keepers.lifecycle.report("nps", AS_OF, period="month", periods=3, **options)


def _who(keepers: Keepers, **cell: Any) -> list[str]:
    result = keepers.lifecycle.report_who("nps", AS_OF, 100, period="month", periods=3, **cell)
    assert result["customers"] == len(result["rows"])
    return sorted(r["user_id"] for r in result["rows"])


def _counts(row: dict[str, Any]) -> tuple[int, int, int, int, float | None]:
    return (row["responses"], row["promoters"], row["passives"], row["detractors"], row["nps"])


def test_nps_by_period_counts_the_last_answer_per_customer(keepers, answered) -> None:
    result = _report(keepers)
    jan, feb, mar = result["periods"]
    assert [p["period"] for p in (jan, feb, mar)] == ["2024-01", "2024-02", "2024-03"]
    # January: p1 10 (promoter); p2 answered 6 then 9 — only the 9 counts: 2 promoters,
    # NPS (2 - 0) / 2 = +100.
    assert _counts(jan) == (2, 2, 0, 0, 100.0)
    # February: p1 9 promoter, p3 8 passive, p4 3 detractor: (1 - 1) / 3 = 0.
    assert _counts(feb) == (3, 1, 1, 1, 0.0)
    assert feb["promoters_share"] == round(1 / 3, 4)
    # March: p4 7 passive, p5 0 detractor (its later "n/a" is no score), p6 "9" promoter.
    assert _counts(mar) == (3, 1, 1, 1, 0.0)
    # The window: each customer's last valid answer in it — p1 9, p2 9, p3 8, p4 7, p5 0,
    # p6 9 (p7 answered before it, p8 without a score): 3 promoters, 2 passives,
    # 1 detractor → 100 × (3 - 1) / 6 = 33.3.
    assert _counts(result["overall"]) == (6, 3, 2, 1, 33.3)
    assert result["overall"]["average_score"] == round((9 + 9 + 8 + 7 + 0 + 9) / 6, 2)
    # 11 answers fall in the window (all but p7's); p5's "n/a" and p8's have no score.
    assert (result["answers"], result["ignored_answers"]) == (11, 2)


def test_nps_by_stage_uses_the_stage_at_the_time_of_the_answer(keepers, answered) -> None:
    stages = {r["stage"]: _counts(r) for r in _report(keepers)["by_stage"]}
    assert stages == {
        "loyalty": (1, 1, 0, 0, 100.0),  # p1 answered 02-05, in loyalty since 02-01
        "retention": (1, 0, 1, 0, 0.0),  # p3
        "conversion": (1, 1, 0, 0, 100.0),  # p2
        "at_risk": (2, 0, 1, 1, -50.0),  # p4 (at risk since 03-01, answered 03-03), p5
        None: (1, 1, 0, 0, 100.0),  # p6 has no stage history
    }
    assert _who(keepers, stage="at_risk") == ["p4", "p5"]


def test_nps_by_segment_uses_membership_at_the_time_of_the_answer(keepers, answered) -> None:
    segments = {r["segment"]: _counts(r) for r in _report(keepers)["by_segment"]}
    # p1 (promoter) and p5 (detractor) were VIPs when they answered; p3 had left on 02-01.
    assert segments == {"vip": (2, 1, 0, 1, 0.0)}
    assert _who(keepers, segment="vip") == ["p1", "p5"]


def test_the_who_lists_are_the_counted_customers(keepers, answered) -> None:
    assert _who(keepers, group="promoters") == ["p1", "p2", "p6"]
    assert _who(keepers, group="passives") == ["p3", "p4"]
    assert _who(keepers, group="detractors") == ["p5"]
    assert _who(keepers, group="detractors", in_period="2024-02") == ["p4"]
    assert _who(keepers, group="promoters", in_period="2024-01") == ["p1", "p2"]
    assert _who(keepers, in_period="2024-03") == ["p4", "p5", "p6"]
    rows = keepers.lifecycle.report_who(
        "nps", AS_OF, 100, period="month", periods=3, group="promoters", in_period="2024-01"
    )["rows"]
    assert {r["user_id"]: r["score"] for r in rows} == {"p1": 10.0, "p2": 9.0}


def test_feedback_samples_are_the_counted_comments_newest_first(keepers, answered) -> None:
    feedback = _report(keepers, samples=5)["feedback"]
    assert [r["comment"] for r in feedback["promoters"]] == ["Great service", "Fixed now"]
    assert [r["comment"] for r in feedback["passives"]] == ["Better"]
    assert [r["comment"] for r in feedback["detractors"]] == ["Awful"]
    assert _report(keepers, samples=1)["feedback"]["promoters"][0]["comment"] == "Great service"
    assert "feedback" not in _report(keepers, samples=0)


def test_quarters_and_bad_options(keepers, answered) -> None:
    result = keepers.lifecycle.report("nps", AS_OF, period="quarter", periods=1)
    assert result["periods"][0]["period"] == "2024-Q1"
    assert _counts(result["periods"][0]) == (6, 3, 2, 1, 33.3)
    for options, field in (
        ({"group": "fans"}, "group"),
        ({"group": "promoters", "in_period": "2023-01"}, "in_period"),
    ):
        with pytest.raises(Exception, match=field):
            keepers.lifecycle.report_who("nps", AS_OF, 10, period="month", periods=3, **options)
    with pytest.raises(Exception, match="samples"):
        _report(keepers, samples=99)
    with pytest.raises(Exception, match="by"):
        _report(keepers, by="colour")


def test_a_segment_rule_on_the_nps_trait_finds_the_detractors(keepers: Keepers) -> None:
    """Detractors raise an at-risk flag through the `nps` trait: each customer's last
    score ever. p5's last score is 0, p7's 2: both are detractors; p2 answered 6 but then
    9, p4 3 but then 7. (Without p5's "n/a": the engine's trait casts it with a plain CAST
    on PostgreSQL, which fails the compute.)"""
    messages = [m for m in _messages() if m.get("properties", {}).get("score") != "n/a"]
    assert not keepers.ingest_messages(messages, source_id="golden").rejected
    saved = keepers.lifecycle.segment_save("unhappy", "nps <= 6 and nps >= 0", label="At risk")
    assert saved["segment"]["key"] == "unhappy"
    members = keepers.lifecycle.segment_show("unhappy")
    with keepers.db.transaction() as tx:
        users = dict(tx.execute("SELECT customer_id, user_id FROM customers"))
        in_segment = sorted(
            users[c]
            for (c,) in tx.execute(
                "SELECT customer_id FROM segment_memberships WHERE segment = 'unhappy' "
                "AND exited_at IS NULL"
            )
        )
        built_in = sorted(
            users[c]
            for (c,) in tx.execute(
                "SELECT customer_id FROM segment_memberships WHERE segment = 'detractors' "
                "AND exited_at IS NULL"
            )
        )
    assert in_segment == ["p5", "p7"]
    assert built_in == ["p5", "p7"]  # the default `detractors: nps <= 6` segment
    assert members["key"] == "unhappy"
