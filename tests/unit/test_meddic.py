"""MEDDIC scoring, weakest element, gates and the lead model's thresholds as pure logic,
pinned to hand-checked numbers (the SQL versions are pinned to the same numbers in
tests/integration/test_sales.py)."""

from __future__ import annotations

import pytest

from keepers.errors import InvalidInput
from keepers.sales.lead_model import default_lead_model, parse_lead_model
from keepers.sales.meddic import (
    band,
    describe_missing,
    elements_of,
    missing_for,
    qualification_score,
    weakest_element,
)
from keepers.sales.pipeline import default_pipeline, parse_pipeline
from keepers.sales.records import DealCreate, MeddicUpdate, parse_record

MEDDIC = elements_of("meddic")
EQUAL: dict[str, float] = {}


def test_an_empty_scorecard_scores_zero_and_its_weakest_element_is_metrics():
    assert qualification_score({}, MEDDIC, EQUAL) == 0.0
    assert weakest_element({}, MEDDIC, EQUAL) == "metrics"  # framework order breaks ties


def test_score_is_the_weighted_share_of_status_values():
    statuses = {"metrics": "confirmed", "economic_buyer": "identified"}
    # (1 + 0.5) / 6 × 100 = 25
    assert qualification_score(statuses, MEDDIC, EQUAL) == pytest.approx(25.0)
    # economic buyer weighs 2: (1 + 2 × 0.5) / 7 × 100 = 28.571…
    weights = {"economic_buyer": 2.0}
    assert qualification_score(statuses, MEDDIC, weights) == pytest.approx(200 / 7)


def test_everything_confirmed_scores_one_hundred_with_no_weakest_element():
    statuses = dict.fromkeys(MEDDIC, "confirmed")
    assert qualification_score(statuses, MEDDIC, EQUAL) == pytest.approx(100.0)
    assert weakest_element(statuses, MEDDIC, EQUAL) is None


def test_weakest_element_is_the_largest_weighted_gap():
    statuses = {"metrics": "confirmed", "economic_buyer": "identified"}
    # gaps: metrics 0, economic_buyer 0.5, the others 1 → decision_criteria comes first
    assert weakest_element(statuses, MEDDIC, EQUAL) == "decision_criteria"
    # economic_buyer weighs 2: its gap 2 × 0.5 = 1 ties the others and comes first in order
    assert weakest_element(statuses, MEDDIC, {"economic_buyer": 2.0}) == "economic_buyer"
    # weighs 3: gap 1.5 beats every other
    statuses["decision_criteria"] = "unknown"
    assert weakest_element(statuses, MEDDIC, {"economic_buyer": 3.0}) == "economic_buyer"


def test_meddpicc_scores_eight_elements():
    elements = elements_of("meddpicc")
    assert elements[4] == "paper_process" and elements[-1] == "competition"
    statuses = {"metrics": "confirmed", "economic_buyer": "identified"}
    assert qualification_score(statuses, elements, EQUAL) == pytest.approx(18.75)  # 1.5 / 8


def test_bands_split_at_forty_and_seventy():
    assert [band(s) for s in (0, 39.9, 40, 69.99, 70, 100)] == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]


def test_commit_gate_adds_up_the_gates_before_it():
    pipeline = default_pipeline()
    assert pipeline.requirements("qualification") == {}
    assert pipeline.requirements("proposal") == {
        "identify_pain": "identified",
        "metrics": "identified",
    }
    assert pipeline.requirements("commit") == {
        "identify_pain": "identified",
        "metrics": "identified",
        "economic_buyer": "confirmed",
        "champion": "confirmed",
    }


def test_missing_names_element_required_and_current_status():
    requirements = default_pipeline().requirements("commit")
    statuses = {
        "identify_pain": "confirmed",  # confirmed satisfies "identified"
        "metrics": "identified",
        "economic_buyer": "identified",
    }
    missing = missing_for(statuses, requirements)
    assert missing == [
        ("economic_buyer", "confirmed", "identified"),
        ("champion", "confirmed", "unknown"),
    ]
    assert describe_missing(missing) == (
        "economic_buyer must be confirmed (is identified), champion must be confirmed (is unknown)"
    )


def test_default_pipeline_maps_the_demo_crm_stages():
    mapping = default_pipeline().crm_map()
    assert mapping["demo"] == "qualification"
    assert mapping["negotiation"] == "commit"
    assert mapping["closed_won"] == "won" and mapping["closed_lost"] == "lost"
    assert mapping["proposal"] == "proposal"  # a stage key maps to itself


def _pipeline_body(**change):
    body = default_pipeline().model_dump(mode="json")
    body.update(change)
    return body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"framework": "spin"}, "framework"),
        ({"weights": {"paper_process": 2}}, "switch the framework to meddpicc"),
        ({"weights": {"metrics": 0}}, "weights.metrics"),
        ({"crm_stages": {"negotiation": "closing"}}, "crm_stages.negotiation: no stage 'closing'"),
        ({"stages": [{"key": "only"}]}, "one won and one lost stage"),
    ],
)
def test_a_bad_pipeline_is_refused_naming_the_field(change, message):
    with pytest.raises(InvalidInput) as caught:
        parse_pipeline(_pipeline_body(**change))
    assert message in caught.value.message


def test_a_gate_on_competition_needs_a_framework_that_has_it():
    stages = _pipeline_body()["stages"]
    stages[3]["gate"] = {"competition": "identified"}
    with pytest.raises(InvalidInput, match=r"stages\.commit\.gate: 'competition'"):
        parse_pipeline(_pipeline_body(stages=stages))
    assert parse_pipeline(_pipeline_body(stages=stages, framework="meddicc")).framework == "meddicc"


def test_lead_levels_follow_the_thresholds():
    model = parse_lead_model({"thresholds": {"mql": 30, "sql": 60, "sql_min_fit": 20}})
    assert model.level(0, 29.9) == "none"
    assert model.level(0, 30) == "mql"
    assert model.level(10, 70) == "mql"  # enough points, not enough fit for a seller
    assert model.level(20, 40) == "sql"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"fit": [{"key": "x", "trait": "title", "points": 5}]}, "exactly one of equals"),
        ({"fit": [{"key": "x", "trait": "a b", "exists": True, "points": 5}]}, "fit.0.trait"),
        ({"engagement": {"half_life_days": 0}}, "engagement.half_life_days"),
        ({"engagement": {"rules": [{"key": "r", "points": 1}]}}, "needs an event, a type"),
        ({"thresholds": {"mql": 50, "sql": 40}}, "sql must be at least mql"),
    ],
)
def test_a_bad_lead_model_is_refused_naming_the_field(body, message):
    with pytest.raises(InvalidInput) as caught:
        parse_lead_model(body)
    assert message in caught.value.message


def test_the_default_lead_model_is_valid_and_round_trips():
    model = default_lead_model()
    body = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert parse_lead_model(body) == model
    assert {r.test for r in model.fit} == {"range", "in", "exists"}


def test_deal_and_element_input_name_the_bad_field():
    with pytest.raises(InvalidInput, match="amount"):
        parse_record(DealCreate, {"amount": -5})
    with pytest.raises(InvalidInput, match="deal_id"):
        parse_record(DealCreate, {"deal_id": "has space"})
    with pytest.raises(InvalidInput, match="status"):
        parse_record(MeddicUpdate, {"status": "validated"})
    assert parse_record(DealCreate, {"currency": "eur"}).currency == "EUR"
