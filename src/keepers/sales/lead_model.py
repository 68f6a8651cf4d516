"""Lead scoring as validated data: fit rules, engagement rules with time decay, thresholds.

**Fit** says how well a customer matches who the business sells to (demographic and
firmographic). It is a small rule set over the traits `identify` and `group` calls sent —
a rule names a trait of the customer (`source: customer`) or of any account they belong to
(`source: account`), one test, and the points it gives:

    equals: "US"            the trait equals the value (text case-insensitively; numbers as numbers)
    in: [CEO, CTO]          the trait equals one of the values
    range: {min: 50, max: 1000}    min ≤ trait < max (numbers; either bound may be left out)
    exists: true            the trait is present (any value)

(Keepers' rule language is not used here: its compiler reads a customer's traits only through
the lifecycle definitions, and account traits not at all.)

**Engagement** counts what the customer did recently. Each rule matches events by name
and/or type and gives `points` per event, decayed exponentially with the event's age:

    engagement_rule = Σ_events points · 0.5^(age_days ÷ half_life_days)    (capped at `cap`)

so with a 7-day half-life an event from 7 days ago counts half and one from 14 days a
quarter. Events older than `window_days` (or after the moment scored) are not read.

**Score** = fit + engagement. A customer is a marketing-qualified lead (MQL) when
score ≥ `mql`, and a sales-qualified lead (SQL) when score ≥ `sql` *and* fit ≥
`sql_min_fit` (engagement alone does not make someone worth a seller's call).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keepers.errors import InvalidInput
from keepers.sales.pipeline import validation_message

RULE_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
TRAIT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62}){0,3}$")
DEFAULT_MODEL = "default"
Value = str | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Range(_Model):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError("a range's min must be below its max")
        return self


class FitRule(_Model):
    key: str
    label: str | None = None
    source: Literal["customer", "account"] = "customer"
    trait: str
    equals: Value | None = None
    in_: list[Value] | None = Field(default=None, alias="in", min_length=1)
    range: Range | None = None
    exists: Literal[True] | None = None
    points: float = Field(ge=-1000, le=1000)

    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, populate_by_name=True
    )

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not RULE_KEY.match(value):
            raise ValueError(f"'{value}' is not a rule key (lowercase, digits, '_', '-')")
        return value

    @field_validator("trait")
    @classmethod
    def _trait(cls, value: str) -> str:
        if not TRAIT_PATH.match(value):
            raise ValueError(f"'{value}' is not a trait name (letters, digits, '_', dots)")
        return value

    @model_validator(mode="after")
    def _one_test(self) -> FitRule:
        given = [n for n in ("equals", "in_", "range", "exists") if getattr(self, n) is not None]
        if len(given) != 1:
            names = ", ".join(g.rstrip("_") for g in given) or "none"
            raise ValueError(
                f"fit rule '{self.key}' needs exactly one of equals, in, range, exists "
                f"(got {names})"
            )
        return self

    @property
    def test(self) -> str:
        tests = ("equals", "in_", "range", "exists")
        return next(n.rstrip("_") for n in tests if getattr(self, n) is not None)

    def values(self) -> list[Value]:
        """The values an equals/in rule accepts."""
        if self.equals is not None:
            return [self.equals]
        return list(self.in_ or [])


class EngagementRule(_Model):
    key: str
    label: str | None = None
    event: str | None = Field(default=None, min_length=1, max_length=200)
    type: Literal["track", "page", "screen", "identify", "group"] | None = None
    points: float = Field(ge=-1000, le=1000)
    cap: float | None = Field(default=None, gt=0)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not RULE_KEY.match(value):
            raise ValueError(f"'{value}' is not a rule key (lowercase, digits, '_', '-')")
        return value

    @model_validator(mode="after")
    def _matches(self) -> EngagementRule:
        if self.event is None and self.type is None:
            raise ValueError(f"engagement rule '{self.key}' needs an event, a type or both")
        return self


class Engagement(_Model):
    half_life_days: float = Field(default=14, gt=0, le=3650)
    window_days: float = Field(default=180, gt=0, le=3650)
    rules: list[EngagementRule] = Field(default_factory=list)


class Thresholds(_Model):
    mql: float = 30
    sql: float = 60
    sql_min_fit: float = 0

    @model_validator(mode="after")
    def _order(self) -> Thresholds:
        if self.sql < self.mql:
            raise ValueError("thresholds: sql must be at least mql")
        return self


class LeadModel(_Model):
    """A lead-scoring model: fit rules, engagement, thresholds."""

    fit: list[FitRule] = Field(default_factory=list)
    engagement: Engagement = Field(default_factory=Engagement)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @model_validator(mode="after")
    def _unique(self) -> LeadModel:
        keys = [r.key for r in self.fit] + [r.key for r in self.engagement.rules]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"rule keys must differ (repeated: {', '.join(duplicates)})")
        return self

    def level(self, fit: float, engagement: float) -> str:
        """none, mql or sql for these points (the same test as the SQL)."""
        score = fit + engagement
        t = self.thresholds
        if score >= t.sql and fit >= t.sql_min_fit:
            return "sql"
        return "mql" if score >= t.mql else "none"


def default_lead_model() -> LeadModel:
    """A B2B default that fits the demo business: company size and role for fit; sign-up,
    trial, product use and email clicks for engagement, halving every 14 days."""
    return parse_lead_model(
        {
            "fit": [
                {
                    "key": "mid_market",
                    "source": "account",
                    "trait": "employees",
                    "range": {"min": 50, "max": 1000},
                    "points": 20,
                },
                {
                    "key": "enterprise",
                    "source": "account",
                    "trait": "employees",
                    "range": {"min": 1000},
                    "points": 25,
                },
                {
                    "key": "decision_maker",
                    "trait": "title",
                    "in": ["CEO", "CTO", "Founder", "Head of Marketing", "VP Marketing"],
                    "points": 15,
                },
                {"key": "has_company", "trait": "company", "exists": True, "points": 5},
            ],
            "engagement": {
                "half_life_days": 14,
                "window_days": 180,
                "rules": [
                    {"key": "signed_up", "event": "Signed Up", "points": 10},
                    {"key": "trial", "event": "Trial Started", "points": 15},
                    {"key": "demo_request", "event": "Demo Requested", "points": 25},
                    {"key": "reports", "event": "Report Created", "points": 3, "cap": 15},
                    {"key": "invites", "event": "Invite Sent", "points": 5, "cap": 15},
                    {"key": "pages", "type": "page", "points": 1, "cap": 10},
                    {"key": "email_clicks", "event": "Email Link Clicked", "points": 2, "cap": 10},
                    {"key": "unsubscribed", "event": "Unsubscribed", "points": -10},
                ],
            },
            "thresholds": {"mql": 30, "sql": 60, "sql_min_fit": 20},
        }
    )


def parse_lead_model(data: Any) -> LeadModel:
    """A lead model from plain data; InvalidInput names the field."""
    if not isinstance(data, dict):
        raise InvalidInput("a lead model is a mapping with fit, engagement and thresholds")
    try:
        return LeadModel.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


def model_body(model: LeadModel) -> dict[str, Any]:
    """The model as plain data, as a user would write it (`in`, not `in_`)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
