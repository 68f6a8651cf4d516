"""Which day counts can change a rule's outcome: an incremental run evaluates only the
customers whose "days since" values crossed one of them since the previous run."""

from __future__ import annotations

import pytest

from keepers.domain.definitions import (
    Definitions,
    SegmentDefinition,
    StageDefinition,
    StageModel,
    default_definitions,
)
from keepers.engine.plan import Plan


def plan_with(*rules: str, stage: str = "true") -> Plan:
    segments = [SegmentDefinition(key=f"s{i}", rule=rule) for i, rule in enumerate(rules)]
    stages = StageModel(stages=[StageDefinition(key="all", rule=stage)])
    return Plan.build(Definitions(stage_model=stages, segments=segments))


@pytest.mark.parametrize(
    ("rule", "points"),
    [
        # d > 180 flips when d goes 180 → 181; d >= 180 when 179 → 180
        ("days_since_last_order > 180", {181}),
        ("days_since_last_order >= 180", {180}),
        ("days_since_last_order < 30", {30}),
        ("days_since_last_order <= 30", {31}),
        # whole day counts: > 2.5 means >= 3; == 2.5 never holds, so never flips
        ("days_since_last_order > 2.5", {3}),
        ("days_since_last_order <= 2.5", {3}),
        ("days_since_last_order == 2.5", set()),
        # == 10 turns true at 10 and false again at 11
        ("days_since_last_order == 10", {10, 11}),
        ("days_since_last_order != 10", {10, 11}),
        # the number on the left: 90 >= d is d <= 90
        ("90 >= days_since_last_order", {91}),
        ("-1 < days_since_last_order", {0}),
        ("days_since_last_order in [3, 5]", {3, 4, 5, 6}),
        ("days_since_last_order not in [7]", {7, 8}),
        # two thresholds on one count, joined by and/or/not
        ("not (days_since_last_order > 7 and days_since_last_order <= 14)", {8, 15}),
    ],
)
def test_comparisons_with_numbers_give_the_day_counts_that_matter(
    rule: str, points: set[int]
) -> None:
    assert plan_with(rule).tick_points() == {"last_order_at": frozenset(points)}


@pytest.mark.parametrize(
    "rule",
    [
        "days_since_last_order * 2 > 9",  # arithmetic: any day can matter
        "days_since_last_order > orders",  # compared with a field
        "days_since_last_order > days_since_first_seen",
    ],
)
def test_other_uses_of_a_count_make_every_day_matter(rule: str) -> None:
    assert plan_with(rule).tick_points()["last_order_at"] is None


def test_null_checks_never_change_with_time_and_unused_counts_are_left_out() -> None:
    assert plan_with("days_since_last_order is null", "orders > 2").tick_points() == {}


def test_days_since_calls_and_stage_rules_count_too() -> None:
    plan = plan_with('days_since("Product Viewed") <= 7', stage="days_since_first_seen > 30")
    (column,) = [c for c in plan.tick_points() if c != "first_seen_at"]
    assert plan.tick_points() == {"first_seen_at": frozenset({31}), column: frozenset({8})}


def test_a_rule_reading_the_health_score_makes_its_day_counts_matter_every_day() -> None:
    # the default health score reads days_since_last_active (recency, 0–120 days)
    assert "last_active_at" not in plan_with("orders > 1").tick_points()
    assert plan_with("health_score >= 50").tick_points() == {"last_active_at": None}


def test_the_default_definitions() -> None:
    assert Plan.build(default_definitions()).tick_points() == {
        "last_order_at": frozenset({91, 181, 366}),
        "last_active_at": frozenset({31, 91}),
    }
