"""What a user may send about a deal: a new deal, a change to one, a MEDDIC element.

Validated here, before any SQL, so a bad field is refused with its name (`amount: …`) the
same way from the API, the CLI and Python. The Create / Update split follows the full-stack
FastAPI template: an update names only what changes; the stage moves through `move`, where
the gates are checked, never through an update."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keepers.errors import InvalidInput
from keepers.sales.pipeline import validation_message

DEAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class _DealFields(_Model):
    name: str | None = Field(default=None, max_length=300)
    deal_type: str | None = Field(default=None, max_length=100)
    account_id: str | None = Field(default=None, min_length=1, max_length=200)
    owner: str | None = Field(default=None, max_length=200)
    amount: float | None = Field(default=None, ge=0, le=1e13)
    currency: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")
    close_date: date | None = None

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value


class DealCreate(_DealFields):
    """A deal created in Keepers (`source: keepers`); `customer` is its main contact (id,
    userId or email); `stage` defaults to the pipeline's first stage."""

    deal_id: str | None = None
    pipeline: str = "default"
    stage: str | None = None
    customer: str | None = Field(default=None, min_length=1, max_length=320)

    @field_validator("deal_id")
    @classmethod
    def _deal_id(cls, value: str | None) -> str | None:
        if value is not None and not DEAL_ID.match(value):
            raise ValueError(f"'{value}' is not a deal id (letters, digits, '_.:@-', ≤ 128)")
        return value


class DealUpdate(_DealFields):
    """The fields to change; the ones left out stay as they are."""


class MeddicUpdate(_Model):
    """One scorecard element: its status, the evidence (what was said, by whom, when, the
    linked contact) and the next step. Left-out fields keep their current value."""

    status: Literal["unknown", "identified", "confirmed"]
    evidence: str | None = Field(default=None, max_length=4000)
    said_by: str | None = Field(default=None, max_length=300)
    said_at: datetime | None = None
    customer: str | None = Field(default=None, min_length=1, max_length=320)
    next_step: str | None = Field(default=None, max_length=1000)


def parse_record(kind: type[_Model], data: Any) -> Any:
    """`kind` from plain data; InvalidInput names the field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{kind.__name__}: expected a mapping of fields")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None
