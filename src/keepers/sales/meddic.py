"""MEDDIC qualification as pure logic: the elements, their statuses, the score, the weakest
element and what a stage gate still misses.

MEDDIC was created at PTC in the 1990s by Dick Dunkel and Jack Napoli: a deal is worth a
seller's time when its Metrics, Economic buyer, Decision criteria, Decision process,
Identified pain and Champion are known. MEDDICC adds Competition, MEDDPICC also the Paper
process (legal and procurement steps to signature). Each element of a deal has a status:

    unknown     nobody has asked yet
    identified  we have an answer, from our side (a name, a hypothesis, a number)
    confirmed   the buyer has confirmed it (the economic buyer agreed to the metric …)

**Qualification score** (0–100), over the elements of the pipeline's framework:

    value(unknown) = 0, value(identified) = 0.5, value(confirmed) = 1
    score = 100 × Σₑ wₑ · value(statusₑ) ÷ Σₑ wₑ          (wₑ = the element's weight, default 1)

so with MEDDIC's six equal weights an identified element adds 8.33 points and a confirmed
one 16.67. **Weakest element**: the one with the largest gap wₑ · (1 − value(statusₑ)) —
confirming it would add the most points; ties go to the framework order (metrics first);
none when every element is confirmed. The SQL in `keepers.sales.deals` computes the same
numbers set-based; `tests/unit/test_meddic.py` pins both to hand-checked cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Framework = Literal["meddic", "meddicc", "meddpicc"]
Status = Literal["unknown", "identified", "confirmed"]

FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "meddic": (
        "metrics",
        "economic_buyer",
        "decision_criteria",
        "decision_process",
        "identify_pain",
        "champion",
    ),
    "meddicc": (
        "metrics",
        "economic_buyer",
        "decision_criteria",
        "decision_process",
        "identify_pain",
        "champion",
        "competition",
    ),
    "meddpicc": (
        "metrics",
        "economic_buyer",
        "decision_criteria",
        "decision_process",
        "paper_process",
        "identify_pain",
        "champion",
        "competition",
    ),
}
ALL_ELEMENTS: tuple[str, ...] = FRAMEWORKS["meddpicc"]
STATUSES: tuple[str, ...] = ("unknown", "identified", "confirmed")
STATUS_VALUE: dict[str, float] = {"unknown": 0.0, "identified": 0.5, "confirmed": 1.0}
LABELS: dict[str, str] = {
    "metrics": "Metrics",
    "economic_buyer": "Economic buyer",
    "decision_criteria": "Decision criteria",
    "decision_process": "Decision process",
    "paper_process": "Paper process",
    "identify_pain": "Identify pain",
    "champion": "Champion",
    "competition": "Competition",
}
# What to do next about an element when the seller has not written a next step themselves.
SUGGESTED_NEXT_STEP: dict[str, str] = {
    "metrics": "agree the KPI and the number the buyer expects to move",
    "economic_buyer": "find and meet the person with final budget authority",
    "decision_criteria": "get the buyer's evaluation criteria in writing",
    "decision_process": "map the steps, people and dates to a decision",
    "paper_process": "walk through legal, security and procurement steps to signature",
    "identify_pain": "name the business pain and what it costs them",
    "champion": "find an insider with influence who sells for you, and test them",
    "competition": "learn which alternatives (including doing nothing) they weigh",
}
# Completeness bands of the qualification score, for reports: (lowest score, name).
BANDS: tuple[tuple[float, str], ...] = ((70.0, "high"), (40.0, "medium"), (0.0, "low"))
BAND_RANGES: dict[str, str] = {"high": "70–100", "medium": "40–69", "low": "0–39"}


def elements_of(framework: str) -> tuple[str, ...]:
    """The elements a framework scores, in their conventional order."""
    return FRAMEWORKS[framework]


def qualification_score(
    statuses: Mapping[str, str], elements: tuple[str, ...], weights: Mapping[str, float]
) -> float:
    """100 × Σ w·value ÷ Σ w over `elements`; a missing status counts as unknown.
    Unrounded: bands and rankings use this value, displays round it to one decimal."""
    total = sum(weights.get(e, 1.0) for e in elements)
    if total <= 0:
        return 0.0
    got = sum(weights.get(e, 1.0) * STATUS_VALUE[statuses.get(e, "unknown")] for e in elements)
    return 100.0 * got / total


def weakest_element(
    statuses: Mapping[str, str], elements: tuple[str, ...], weights: Mapping[str, float]
) -> str | None:
    """The element whose confirmation would add the most points (framework order breaks
    ties); None when all are confirmed."""
    best, best_gap = None, 0.0
    for element in elements:
        gap = weights.get(element, 1.0) * (1.0 - STATUS_VALUE[statuses.get(element, "unknown")])
        if gap > best_gap:
            best, best_gap = element, gap
    return best


def missing_for(
    statuses: Mapping[str, str], requirements: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """What a stage gate still misses: (element, required status, current status), in the
    order of the requirements. A confirmed element satisfies "identified" too."""
    missing = []
    for element, required in requirements.items():
        current = statuses.get(element, "unknown")
        if STATUS_VALUE[current] < STATUS_VALUE[required]:
            missing.append((element, required, current))
    return missing


def describe_missing(missing: list[tuple[str, str, str]]) -> str:
    """'economic_buyer must be confirmed (is identified), champion must be …'."""
    return ", ".join(f"{e} must be {required} (is {current})" for e, required, current in missing)


def band(score: float) -> str:
    """The completeness band of a qualification score: high ≥ 70, medium ≥ 40, else low."""
    return next(name for lowest, name in BANDS if score >= lowest)
