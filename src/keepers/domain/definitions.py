"""Lifecycle definitions as validated data: traits, segments and the stage model.

Definitions are what a business edits (through the API, the CLI or a YAML file kept in git);
the engine interprets them, nothing is generated per customer. A definition is checked
when it is saved — every rule parses and refers only to known fields, functions and
segments, and segments do not depend on each other in a circle — so a compute never fails
on a user's typo.

The default lifecycle model follows DESIGN.md: awareness → engagement → consideration →
conversion → retention → loyalty/advocacy, with the ways back (at risk, churned) and
reactivated. Stages are evaluated in list order and the first whose rule holds wins, so the
"way back" stages come first; `funnel` gives each main-path stage its place in the funnel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from keepers.errors import InvalidInput, RuleError

KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
KEY_HELP = "lowercase letters, digits and '_', starting with a letter"


@dataclass(frozen=True)
class BuiltinTrait:
    """A trait every customer has, computed from the event log, orders and refunds."""

    key: str
    type: Literal["number", "string", "bool", "timestamp"]
    description: str


BUILTIN_TRAITS: tuple[BuiltinTrait, ...] = (
    BuiltinTrait("events", "number", "events of any kind"),
    BuiltinTrait("page_views", "number", "page and screen calls"),
    BuiltinTrait("first_seen_at", "timestamp", "time of the first event"),
    BuiltinTrait("last_seen_at", "timestamp", "time of the last event"),
    BuiltinTrait(
        "last_active_at", "timestamp", "time of the last event the customer did (not passive)"
    ),
    BuiltinTrait("days_since_first_seen", "number", "whole days since the first event"),
    BuiltinTrait("days_since_last_seen", "number", "whole days since the last event"),
    BuiltinTrait("days_since_last_active", "number", "whole days since the last non-passive event"),
    BuiltinTrait("identified", "bool", "has a userId (signed up or logged in)"),
    BuiltinTrait("signed_up", "bool", "sent 'Signed Up'"),
    BuiltinTrait("trial_started", "bool", "sent 'Trial Started'"),
    BuiltinTrait("orders", "number", "orders placed"),
    BuiltinTrait("revenue", "number", "sum of order revenue (else total)"),
    BuiltinTrait("average_order_value", "number", "revenue / orders"),
    BuiltinTrait("first_order_at", "timestamp", "time of the first order"),
    BuiltinTrait("last_order_at", "timestamp", "time of the last order"),
    BuiltinTrait("days_since_first_order", "number", "whole days since the first order"),
    BuiltinTrait("days_since_last_order", "number", "whole days since the last order"),
    BuiltinTrait(
        "previous_order_gap_days",
        "number",
        "whole days between the last order and the one before it",
    ),
    BuiltinTrait("refunds", "number", "refunds received"),
    BuiltinTrait("refunded_amount", "number", "sum of refunded amounts"),
    BuiltinTrait("net_revenue", "number", "revenue minus refunded amounts"),
    BuiltinTrait("emails_opened", "number", "'Email Opened' events"),
    BuiltinTrait("emails_clicked", "number", "'Email Link Clicked' events"),
    BuiltinTrait("unsubscribed", "bool", "sent 'Unsubscribed'"),
    BuiltinTrait("nps", "number", "score of the last 'NPS Survey Answered'"),
    BuiltinTrait("referrals_made", "number", "'Referral Converted' events: friends brought in"),
    BuiltinTrait(
        "p_alive",
        "number",
        "probability the customer is still buying (BG/NBD on everyone's orders); none before "
        "the first order",
    ),
    BuiltinTrait(
        "rfm_r",
        "number",
        "recency score 1-5 (5 = most recent), quintiles of every buyer as the rfm report; "
        "none before the first order",
    ),
    BuiltinTrait("rfm_f", "number", "frequency score 1-5 (orders), as the rfm report"),
    BuiltinTrait("rfm_m", "number", "monetary score 1-5 (order value), as the rfm report"),
    BuiltinTrait(
        "rfm_segment",
        "string",
        "the rfm report's segment: champions, loyal, potential_loyalists, new, promising, "
        "need_attention, about_to_sleep, at_risk, cant_lose, hibernating, lost",
    ),
    BuiltinTrait(
        "expected_orders_90d",
        "number",
        "orders expected in the next 90 days (BG/NBD), as the clv report",
    ),
    BuiltinTrait(
        "clv_12m",
        "number",
        "predicted revenue of the next 12 months, discounted 1 %/month (BG/NBD × "
        "Gamma-Gamma), as the clv report",
    ),
    BuiltinTrait(
        "churn_risk",
        "number",
        "probability 0-1 of no activity in the next 30 days, as the churn-risk report at the "
        "day's midnight UTC; none without activity in the 90 days before it",
    ),
    BuiltinTrait(
        "persona",
        "number",
        "the personas report's persona (0 = the largest) at the day's midnight UTC; none "
        "before the first order",
    ),
    BuiltinTrait("persona_name", "string", "the name the personas report gave that persona"),
)
BUILTIN_KEYS = frozenset(t.key for t in BUILTIN_TRAITS)

# Events a system sends about a customer rather than the customer doing something: they
# do not make a customer "active".
DEFAULT_PASSIVE_EVENTS = ("Email Delivered", "Email Sent", "Email Bounced", "Email Dropped")

AGGREGATES = ("count", "sum", "avg", "min", "max", "first", "last", "distinct")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_key(value: str) -> str:
    if not KEY.match(value):
        raise ValueError(f"'{value}' is not a valid key: use {KEY_HELP}")
    return value


class TraitDefinition(_Model):
    """A user-defined aggregation over events, e.g. `Product Viewed` in the last 30 days."""

    key: str
    label: str | None = None
    aggregate: Literal["count", "sum", "avg", "min", "max", "first", "last", "distinct"]
    event: str | None = Field(None, description="event name; all events when empty")
    property: str | None = Field(None, description="dotted path inside properties")
    where: str | None = Field(None, description="a rule over the event's fields")
    days: int | None = Field(None, ge=1, le=3650, description="window: only the last N days")

    _key = field_validator("key")(_check_key)

    def value_type(self) -> str:
        """The rule-language type of the trait's value."""
        if self.aggregate in ("count", "distinct", "sum", "avg", "min", "max"):
            return "number"
        return "any"


class SegmentDefinition(_Model):
    """A named rule; customers enter when it becomes true and exit when it stops."""

    key: str
    label: str | None = None
    rule: str
    description: str | None = None

    _key = field_validator("key")(_check_key)


class StageDefinition(_Model):
    key: str
    label: str | None = None
    rule: str
    funnel: int | None = Field(
        None,
        ge=1,
        description="place on the main path (1 = top of the funnel); none for side stages",
    )
    description: str | None = None

    _key = field_validator("key")(_check_key)


class StageModel(_Model):
    """Stages in evaluation order: the first whose rule holds is the customer's stage."""

    stages: list[StageDefinition] = Field(min_length=1)
    passive_events: list[str] = Field(default_factory=lambda: list(DEFAULT_PASSIVE_EVENTS))

    @field_validator("stages")
    @classmethod
    def _unique(cls, stages: list[StageDefinition]) -> list[StageDefinition]:
        _no_duplicates("stage", (s.key for s in stages))
        return stages

    def keys(self) -> list[str]:
        return [s.key for s in self.stages]

    def funnel_order(self) -> list[str]:
        """Main-path stages top to bottom, then the side stages in evaluation order."""
        main = sorted((s for s in self.stages if s.funnel), key=lambda s: s.funnel or 0)
        side = [s for s in self.stages if not s.funnel]
        return [s.key for s in main + side]


class HealthComponent(_Model):
    """One signal of the health score: a number from traits, scored linearly from `worst`
    (0 points) to `best` (100 points) and clamped; either may be the larger. A customer
    without a value (no NPS answer, say) is scored on the other components."""

    key: str
    label: str | None = None
    value: str = Field(description="a number from traits in the rule language, e.g. `orders`")
    best: float
    worst: float
    weight: float = Field(gt=0)

    _key = field_validator("key")(_check_key)

    @model_validator(mode="after")
    def _distinct_ends(self) -> HealthComponent:
        if self.best == self.worst:
            raise ValueError(f"health component '{self.key}': best and worst must differ")
        return self


class HealthModel(_Model):
    """A weighted score 0–100 of how a customer relationship is doing."""

    components: list[HealthComponent] = Field(min_length=1)

    @field_validator("components")
    @classmethod
    def _unique_components(cls, components: list[HealthComponent]) -> list[HealthComponent]:
        _no_duplicates("health component", (c.key for c in components))
        return components


def default_health() -> HealthModel:
    """Recency, frequency, email engagement, NPS and refunds. Support and payment signals
    join once a business sends them: define a trait such as `count("Ticket Created",
    days=90)` and add a component on it."""
    return HealthModel(
        components=[
            HealthComponent(
                key="recency", value="days_since_last_active", best=0, worst=120, weight=30
            ),
            HealthComponent(key="frequency", value="orders", best=8, worst=0, weight=25),
            HealthComponent(
                key="engagement",
                label="email engagement",
                value="emails_opened + 2 * emails_clicked",
                best=20,
                worst=0,
                weight=15,
            ),
            HealthComponent(
                key="nps", label="NPS answer", value="nps", best=10, worst=0, weight=20
            ),
            HealthComponent(
                key="refunds",
                label="refunds (support signal)",
                value="refunds",
                best=0,
                worst=3,
                weight=10,
            ),
        ]
    )


class Definitions(_Model):
    """Everything the engine needs: the stage model, segments and user-defined traits, and
    the health score built on them."""

    stage_model: StageModel
    segments: list[SegmentDefinition] = Field(default_factory=list)
    traits: list[TraitDefinition] = Field(default_factory=list)
    health: HealthModel = Field(default_factory=default_health)

    @field_validator("segments")
    @classmethod
    def _unique_segments(cls, segments: list[SegmentDefinition]) -> list[SegmentDefinition]:
        _no_duplicates("segment", (s.key for s in segments))
        return segments

    @field_validator("traits")
    @classmethod
    def _unique_traits(cls, traits: list[TraitDefinition]) -> list[TraitDefinition]:
        _no_duplicates("trait", (t.key for t in traits))
        for trait in traits:
            if trait.key in BUILTIN_KEYS:
                raise ValueError(f"trait '{trait.key}' is built in; choose another key")
            if trait.aggregate != "count" and not trait.property:
                raise ValueError(f"trait '{trait.key}': {trait.aggregate} needs a property")
        return traits

    def segment(self, key: str) -> SegmentDefinition | None:
        return next((s for s in self.segments if s.key == key), None)


def _no_duplicates(what: str, keys: Iterable[str]) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{what} '{key}' is defined twice")
        seen.add(key)


def parse_definitions(data: Any) -> Definitions:
    """Definitions from plain data (YAML, JSON, TOML), with one readable error line."""
    return _validated(Definitions, data)


def parse_segment(data: dict[str, Any]) -> SegmentDefinition:
    """One segment from plain data; absent (None) fields take their defaults."""
    return _validated(SegmentDefinition, {k: v for k, v in data.items() if v is not None})


def _validated(model: type[_Model], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """The first problem pydantic found, naming the field by its path."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "definitions"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def default_definitions() -> Definitions:
    """The default lifecycle model of DESIGN.md and a few segments most shops want."""

    def stage(key: str, label: str, rule: str, funnel: int | None, why: str) -> StageDefinition:
        return StageDefinition(key=key, label=label, rule=rule, funnel=funnel, description=why)

    stages = [
        stage(
            "churned",
            "Churned",
            "orders >= 1 and days_since_last_order > 365 and days_since_last_active > 90",
            None,
            "a buyer with no order for a year and no activity for 90 days",
        ),
        stage(
            "at_risk",
            "At risk",
            "orders >= 1 and days_since_last_order > 180",
            None,
            "a buyer whose last order is more than 180 days old",
        ),
        stage(
            "reactivated",
            "Reactivated",
            "orders >= 2 and days_since_last_order <= 90 and previous_order_gap_days > 180",
            None,
            "ordered again after a gap long enough to have been at risk",
        ),
        stage(
            "loyalty",
            "Loyalty & advocacy",
            "orders >= 3 and (referrals_made >= 1 or nps >= 9)",
            6,
            "a repeat buyer who refers friends or is an NPS promoter",
        ),
        stage("retention", "Retention", "orders >= 2", 5, "a repeat buyer"),
        stage("conversion", "Conversion", "orders >= 1", 4, "placed a first order"),
        stage(
            "consideration",
            "Consideration",
            'count("Product Added", days=30) > 0 or count("Checkout Started", days=30) > 0'
            ' or count("Product Viewed", days=30) >= 3 or trial_started',
            3,
            "shopping in the last 30 days (cart, checkout, several product views) or a trial",
        ),
        stage(
            "engagement",
            "Engagement",
            "signed_up or identified or emails_clicked > 0",
            2,
            "signed up, identified, or clicked an email",
        ),
        stage("awareness", "Awareness", "true", 1, "known, anonymous or not, no engagement yet"),
    ]
    segments = [
        SegmentDefinition(
            key="vip",
            label="VIP",
            rule="orders >= 3 and revenue >= 300",
            description="repeat buyers who spent 300 or more",
        ),
        SegmentDefinition(
            key="active_30d",
            label="Active in the last 30 days",
            rule="days_since_last_active <= 30",
        ),
        SegmentDefinition(
            key="cart_abandoners",
            label="Abandoned a cart this week",
            rule='count("Checkout Started", days=7) > count("Order Completed", days=7)',
        ),
        SegmentDefinition(key="promoters", label="NPS promoters", rule="nps >= 9"),
        SegmentDefinition(key="detractors", label="NPS detractors", rule="nps <= 6"),
        SegmentDefinition(
            key="win_back",
            label="Win back",
            rule='stage in ["at_risk", "churned"] and revenue >= 100',
            description="valuable customers on the way out",
        ),
    ]
    return Definitions(stage_model=StageModel(stages=stages), segments=segments)


__all__ = [
    "AGGREGATES",
    "BUILTIN_KEYS",
    "BUILTIN_TRAITS",
    "DEFAULT_PASSIVE_EVENTS",
    "BuiltinTrait",
    "Definitions",
    "RuleError",
    "SegmentDefinition",
    "StageDefinition",
    "StageModel",
    "TraitDefinition",
    "default_definitions",
    "parse_definitions",
    "parse_segment",
]
