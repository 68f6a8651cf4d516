"""A sales pipeline as validated data: ordered stages, their MEDDIC gates, the mapping from a
CRM's stage names, and which framework (MEDDIC, MEDDICC, MEDDPICC) qualifies its deals.

Gates are data so a sales team changes its rules without a release: each open stage may
require elements at a minimum status, and gates add up along the pipeline — a deal moving to
`commit` must also meet `proposal`'s gate, so skipping a stage skips no requirement. Moving
back, and closing (won or lost), is never gated: a close is a fact, not a forecast.

```yaml
key: default
framework: meddic            # meddicc adds competition; meddpicc adds paper_process too
stages:
  - {key: discovery}
  - {key: qualification}
  - {key: proposal, gate: {identify_pain: identified, metrics: identified}}
  - {key: commit, gate: {economic_buyer: confirmed, champion: confirmed}}
  - {key: won, outcome: won}
  - {key: lost, outcome: lost}
crm_stages: {negotiation: commit, closed_won: won}   # CRM name → stage (case-insensitive)
weights: {economic_buyer: 2}                         # default 1 per element
```
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keepers.errors import InvalidInput
from keepers.sales.meddic import ALL_ELEMENTS, FRAMEWORKS

KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DEFAULT_PIPELINE = "default"
# Stage names of common CRMs (HubSpot's defaults, the demo shop's CRM) → default stages.
DEFAULT_CRM_STAGES: dict[str, str] = {
    "appointmentscheduled": "discovery",
    "renewal_review": "discovery",
    "qualifiedtobuy": "qualification",
    "demo": "qualification",
    "presentationscheduled": "qualification",
    "decisionmakerboughtin": "proposal",
    "proposal_sent": "proposal",
    "quote": "proposal",
    "negotiation": "commit",
    "contractsent": "commit",
    "closed_won": "won",
    "closedwon": "won",
    "closed_lost": "lost",
    "closedlost": "lost",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class PipelineStage(_Model):
    key: str
    label: str | None = None
    outcome: Literal["open", "won", "lost"] = "open"
    gate: dict[str, Literal["identified", "confirmed"]] = Field(default_factory=dict)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not KEY.match(value):
            raise ValueError(f"'{value}' is not a stage key (lowercase, digits, '_', '-')")
        return value


class Pipeline(_Model):
    """One pipeline; `requirements(stage)` is the cumulative gate of a stage."""

    key: str = DEFAULT_PIPELINE
    framework: Literal["meddic", "meddicc", "meddpicc"] = "meddic"
    stages: list[PipelineStage]
    crm_stages: dict[str, str] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not KEY.match(value):
            raise ValueError(f"'{value}' is not a pipeline key (lowercase, digits, '_', '-')")
        return value

    @model_validator(mode="after")
    def _check(self) -> Pipeline:
        keys = [s.key for s in self.stages]
        if len(set(keys)) != len(keys):
            raise ValueError("stages: stage keys must differ")
        outcomes = [s.outcome for s in self.stages]
        if "open" not in outcomes or outcomes.count("won") != 1 or outcomes.count("lost") != 1:
            raise ValueError("stages: need at least one open stage, one won and one lost stage")
        elements = set(FRAMEWORKS[self.framework])
        for stage in self.stages:
            if stage.gate and stage.outcome != "open":
                raise ValueError(f"stages.{stage.key}.gate: only open stages have gates")
            for element in stage.gate:
                if element not in elements:
                    raise ValueError(_unknown_element(f"stages.{stage.key}.gate", element, self))
        for name, target in self.crm_stages.items():
            if target not in keys:
                raise ValueError(f"crm_stages.{name}: no stage '{target}' in this pipeline")
        for element, weight in self.weights.items():
            if element not in elements:
                raise ValueError(_unknown_element("weights", element, self))
            if not 0 < weight <= 100:
                raise ValueError(f"weights.{element}: a weight is more than 0 and at most 100")
        return self

    @property
    def elements(self) -> tuple[str, ...]:
        return FRAMEWORKS[self.framework]

    def weight(self, element: str) -> float:
        return self.weights.get(element, 1.0)

    @property
    def weight_map(self) -> dict[str, float]:
        return {e: self.weight(e) for e in self.elements}

    def stage(self, key: str) -> PipelineStage:
        for stage in self.stages:
            if stage.key == key:
                return stage
        known = ", ".join(s.key for s in self.stages)
        raise InvalidInput(f"stage: no stage '{key}' in pipeline '{self.key}' (stages: {known})")

    @property
    def open_stages(self) -> list[str]:
        return [s.key for s in self.stages if s.outcome == "open"]

    def outcome_stage(self, outcome: str) -> str:
        return next(s.key for s in self.stages if s.outcome == outcome)

    def position(self, key: str) -> int:
        return [s.key for s in self.stages].index(key)

    def requirements(self, key: str) -> dict[str, str]:
        """The gate a deal must meet to enter stage `key`: every open stage's gate up to and
        including it (the strictest status wins when two gates name one element)."""
        needed: dict[str, str] = {}
        for stage in self.stages:
            if stage.outcome != "open":
                continue
            for element, status in stage.gate.items():
                if needed.get(element) != "confirmed":
                    needed[element] = status
            if stage.key == key:
                break
        return needed

    def crm_map(self) -> dict[str, str]:
        """CRM stage name (lowercase) → stage key: the stage keys themselves, then the
        mapping given."""
        mapping = {s.key: s.key for s in self.stages}
        mapping.update({name.strip().lower(): target for name, target in self.crm_stages.items()})
        return mapping


def _unknown_element(where: str, element: str, pipeline: Pipeline) -> str:
    hint = ""
    if element in ALL_ELEMENTS:
        hint = " (switch the framework to meddpicc to use it)"
    known = ", ".join(FRAMEWORKS[pipeline.framework])
    return f"{where}: '{element}' is not a {pipeline.framework} element{hint}; elements: {known}"


def default_pipeline(framework: str = "meddic") -> Pipeline:
    """discovery → qualification → proposal → commit → won / lost, with the gates of the
    issue: proposal needs identified pain and metrics, commit a confirmed economic buyer and
    champion."""
    return Pipeline(
        key=DEFAULT_PIPELINE,
        framework=framework,  # type: ignore[arg-type]
        stages=[
            PipelineStage(key="discovery", label="Discovery"),
            PipelineStage(key="qualification", label="Qualification"),
            PipelineStage(
                key="proposal",
                label="Proposal",
                gate={"identify_pain": "identified", "metrics": "identified"},
            ),
            PipelineStage(
                key="commit",
                label="Commit",
                gate={"economic_buyer": "confirmed", "champion": "confirmed"},
            ),
            PipelineStage(key="won", label="Won", outcome="won"),
            PipelineStage(key="lost", label="Lost", outcome="lost"),
        ],
        crm_stages=dict(DEFAULT_CRM_STAGES),
    )


def parse_pipeline(data: Any) -> Pipeline:
    """A pipeline from plain data (parsed YAML or JSON); InvalidInput names the field."""
    if not isinstance(data, dict):
        raise InvalidInput("a pipeline is a mapping with key, framework and stages")
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """The first problem pydantic found, prefixed with the field's path when it has one
    (whole-model checks name their field themselves)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
