"""Definitions are checked when they are saved, so a compute never fails on a user's typo."""

from __future__ import annotations

import pytest

from keepers.domain.definitions import default_definitions, parse_definitions
from keepers.engine.plan import Plan
from keepers.errors import InvalidInput, RuleError


def with_segments(*segments: dict) -> dict:
    body = default_definitions().model_dump(mode="json", exclude_none=True)
    body["segments"] = list(segments)
    return body


def test_the_default_definitions_build_a_plan_with_every_stage_in_order():
    plan = Plan.build(default_definitions())
    assert [key for key, _, _ in plan.stage_rules][:3] == ["churned", "at_risk", "reactivated"]
    assert plan.order.index("stage") < plan.order.index("win_back")  # win_back reads `stage`


def test_segments_that_depend_on_each_other_in_a_circle_are_refused():
    body = with_segments(
        {"key": "a", "rule": 'in_segment("b")'},
        {"key": "b", "rule": 'in_segment("a") or orders > 1'},
    )
    with pytest.raises(RuleError, match="circle: a → b → a"):
        Plan.build(parse_definitions(body))


def test_a_stage_rule_reading_a_segment_that_reads_the_stage_is_a_circle():
    body = with_segments({"key": "loyal", "rule": 'stage == "loyalty"'})
    body["stage_model"]["stages"][0]["rule"] = 'in_segment("loyal")'
    with pytest.raises(RuleError, match="circle"):
        Plan.build(parse_definitions(body))


def test_an_unknown_segment_in_a_rule_names_the_known_ones():
    body = with_segments({"key": "vip", "rule": 'in_segment("vipp")'})
    with pytest.raises(RuleError, match="unknown segment 'vipp' \\(segments: vip\\)"):
        Plan.build(parse_definitions(body))


def test_a_stage_defined_twice_is_refused_with_its_key():
    body = default_definitions().model_dump(mode="json", exclude_none=True)
    body["stage_model"]["stages"].append(dict(body["stage_model"]["stages"][0]))
    with pytest.raises(InvalidInput, match="stage 'churned' is defined twice"):
        parse_definitions(body)


def test_a_user_trait_cannot_reuse_a_built_in_name():
    body = default_definitions().model_dump(mode="json", exclude_none=True)
    body["traits"] = [{"key": "orders", "aggregate": "count", "event": "Order Completed"}]
    with pytest.raises(InvalidInput, match="trait 'orders' is built in"):
        parse_definitions(body)
