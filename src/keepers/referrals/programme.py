"""The referral programme as data: reward rules, fraud checks, codes — validated, versioned.

Rules are data rather than code so a shop can change "10 USD after 30 days" to "500 points
after 14 days, at most 5 a month" without a release, and so every reward can say which
version of the rules it was opened under. The default is the issue's: the referrer earns
10 USD when the referred customer's first order is not refunded within 30 days, at most
10 rewards per referrer per calendar month, with every fraud check on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keepers.domain.definitions import validation_message
from keepers.errors import InvalidInput
from keepers.store.database import Tx

KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
CHECKS = ("own_code", "same_email", "same_device", "same_ip", "same_payment")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RewardRule(_Model):
    """One reward: who gets what when a referred customer's first order stays unrefunded.

    `window_days` is the refund window: the reward is pending from the order until the
    window ends, then earned — or void if the order was refunded inside it (`void_on`:
    any refund, or only a full one). `cap_per_month` limits rewards per referrer per
    calendar month (UTC) of the qualifying order; the ones over it are void ("cap")."""

    key: str = "first_order"
    beneficiary: Literal["referrer", "referred"] = "referrer"
    amount: float | None = Field(10.0, ge=0)
    currency: str | None = Field("USD", pattern=r"^[A-Z]{3}$")
    points: int | None = Field(None, ge=0)
    window_days: int = Field(30, ge=0, le=3650)
    min_order_value: float = Field(0.0, ge=0)
    cap_per_month: int | None = Field(10, ge=1)
    void_on: Literal["any_refund", "full_refund"] = "any_refund"

    @model_validator(mode="after")
    def _checked(self) -> RewardRule:
        if not KEY.match(self.key):
            raise ValueError("key: lowercase letters, digits and '_', starting with a letter")
        if self.points and "amount" not in self.model_fields_set:
            self.amount, self.currency = None, None  # "points: 500" alone means points only
        if (self.amount or 0) <= 0 and not self.points:
            raise ValueError("a reward needs an amount (with a currency) or points")
        if (self.amount or 0) > 0 and not self.currency:
            raise ValueError("currency: an amount needs a currency (ISO 4217, e.g. USD)")
        return self


class FraudChecks(_Model):
    """Which self-referral checks run. A shared IP also matches a household or an office
    behind one address, so shops whose customers refer family may switch `same_ip` off."""

    same_email: bool = True
    same_device: bool = True
    same_ip: bool = True
    same_payment: bool = True

    def enabled(self) -> list[str]:
        on = [name for name in CHECKS[1:] if getattr(self, name)]
        return ["own_code", *on]


class CodeSettings(_Model):
    """How generated codes look and whom `ensure_codes` gives one to by default."""

    style: Literal["deterministic", "random"] = "deterministic"
    length: int = Field(8, ge=6, le=16)
    for_customers: Literal["identified", "buyers", "all"] = "identified"
    link: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _link_has_code(self) -> CodeSettings:
        if self.link is not None and "{code}" not in self.link:
            raise ValueError("link: must contain {code}, e.g. https://shop.example/?ref={code}")
        return self


class Programme(_Model):
    """The whole programme. `announce`: when a referred customer's first order lands, send
    the referrer a `Referral Converted` event, which the built-in `referrals_made` trait
    counts (the default `loyalty` stage rule uses it) — for shops that do not send that
    event themselves. Off by default, so a shop that does is not counted twice."""

    rules: list[RewardRule] = Field(default_factory=lambda: [RewardRule()], max_length=20)
    fraud: FraudChecks = Field(default_factory=FraudChecks)
    codes: CodeSettings = Field(default_factory=CodeSettings)
    announce: bool = False

    @model_validator(mode="after")
    def _unique_keys(self) -> Programme:
        keys = [r.key for r in self.rules]
        if len(set(keys)) != len(keys):
            raise ValueError("rules: every rule needs its own key")
        return self


@dataclass(frozen=True)
class StoredProgramme:
    version: int  # 0: the defaults, never saved
    programme: Programme
    created_at: datetime | None
    actor: str
    # rule key → since when it is in force (None: since always). A rule added later only
    # rewards first orders from then on: adding one must not pay out for all of history.
    rule_since: dict[str, datetime | None] = field(default_factory=dict)

    def since(self, key: str) -> datetime | None:
        return self.rule_since.get(key)


def parse_programme(data: Any) -> Programme:
    """A programme from plain data (JSON or YAML); InvalidInput names the field."""
    if not isinstance(data, dict):
        raise InvalidInput("a referral programme is a mapping with rules, fraud and codes")
    try:
        return Programme.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


def load_programme(tx: Tx) -> StoredProgramme:
    """The programme in force: the latest saved version, else the defaults (version 0)."""
    rows = tx.execute(
        "SELECT version, CAST(body AS TEXT), created_at, actor FROM referral_programme_versions "
        "ORDER BY version"
    )
    if not rows:
        return StoredProgramme(0, Programme(), None, "default")
    since: dict[str, datetime | None] = {r.key: None for r in Programme().rules}
    for _, body, created_at, _ in rows:  # versions are few: read each rule's first one
        for rule in json.loads(body).get("rules", []):
            since.setdefault(rule.get("key", RewardRule().key), created_at)
    version, body, created_at, actor = rows[-1]
    return StoredProgramme(version, parse_programme(json.loads(body)), created_at, actor, since)


def save_programme(tx: Tx, programme: Programme, *, actor: str, now: datetime) -> tuple[int, bool]:
    """Store the programme as a new version unless it is unchanged; (version, saved)."""
    current = load_programme(tx)
    if current.version and current.programme == programme:
        return current.version, False
    body = programme.model_dump(mode="json")
    version = current.version + 1
    summary = "created" if version == 1 else f"replaces version {current.version}"
    tx.execute(
        "INSERT INTO referral_programme_versions VALUES (?, ?, ?, ?, ?)",
        [version, json.dumps(body), now, actor, summary],
    )
    return version, True
