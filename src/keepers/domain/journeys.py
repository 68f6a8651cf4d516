"""Journeys as validated data: a trigger, who may enter, steps, and a goal.

A journey is what a marketer edits (YAML or JSON through the API and `keepers journeys
create FILE`); the journey engine interprets it set-based, nothing is generated per
customer. Saving checks everything that can be checked without the store — step ids are
unique, every `next`/`then`/`else` names a step, durations and weights make sense, every
loop contains a wait (so advancing can never spin) — and the service then checks the rules
against the lifecycle definitions and the email templates against the sandbox.

Steps run in list order unless a step says where to go (`next`, or a branch's `then` /
`else`); after the last step the customer leaves the journey ("completed").

```yaml
key: welcome
name: Welcome new customers
trigger: {stage_entered: conversion}  # or stage_exited, segment_entered, segment_exited,
                                      # event: "Cart Abandoned", rule: "orders >= 1 and …"
entry: {rule: "not unsubscribed", reentry: after_exit}   # never | after_exit | after_days
goal: {event: Order Completed, within_days: 30}
steps:
  - {id: hello, email: {subject: "Welcome {{ traits.first_name }}", html: "<p>Hi</p>"}}
  - {id: pause, wait: 3d}
  - {id: bought, branch: {rule: "orders >= 2", then: thanks, else: nudge}}
  - {id: nudge, email: {subject: "Still thinking?", html: "<p>…</p>"}, next: done}
  - {id: thanks, webhook: {url: "https://crm.example/hooks/thanks"}}
  - {id: done, exit: {}}
```
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keepers.domain.definitions import validation_message
from keepers.errors import InvalidInput

KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$")
UNIT_SECONDS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
ACTIONS = (
    "wait",
    "wait_until",
    "branch",
    "split",
    "holdout",
    "email",
    "webhook",
    "update_trait",
    "audience",
    "task",
    "exit",
)
CHANNELS = ("email", "webhook", "audience", "update_trait")  # steps that write an outbox row


def duration_seconds(text: str | int | float, field: str) -> float:
    """'3d', '12h', '30m', '2w' (or a number of seconds) as seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = DURATION.match(str(text))
        if not match:
            raise ValueError(f"{field}: '{text}' is not a duration (like 30m, 12h, 3d or 2w)")
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= 366 * 86400:
        raise ValueError(f"{field}: a duration must be more than 0 and at most a year")
    return seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Model):
    stage_entered: str | None = None
    stage_exited: str | None = None
    segment_entered: str | None = None
    segment_exited: str | None = None
    event: str | None = None
    rule: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of stage_entered, stage_exited, segment_entered, "
                f"segment_exited, event or rule (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k, v in self.model_dump().items() if v is not None)

    @property
    def value(self) -> str:
        return str(getattr(self, self.kind))


class Entry(_Model):
    rule: str | None = None
    reentry: Literal["never", "after_exit", "after_days"] = "after_exit"
    after_days: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _days(self) -> Entry:
        if (self.reentry == "after_days") != (self.after_days is not None):
            raise ValueError("after_days goes with reentry: after_days (and only with it)")
        return self


class Goal(_Model):
    event: str | None = None
    rule: str | None = None
    within_days: float = Field(default=30, gt=0, le=366)

    @model_validator(mode="after")
    def _one(self) -> Goal:
        if (self.event is None) == (self.rule is None):
            raise ValueError("a goal is an event or a rule (exactly one)")
        return self


class EmailAction(_Model):
    subject: str = Field(min_length=1)
    html: str = Field(min_length=1)
    text: str | None = None
    list: str = Field(default="marketing", pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    transactional: bool = False  # no unsubscribe header, no frequency cap; consent still needed


class WebhookAction(_Model):
    url: str
    body: dict[str, Any] | None = None  # JSON sent; default: the customer and the journey

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"'{value}' is not an http(s) URL")
        return value


class BranchAction(_Model):
    rule: str
    then: str
    else_: str = Field(alias="else")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WaitUntilAction(_Model):
    event: str | None = None
    rule: str | None = None
    timeout: str
    then: str | None = None  # where to go when it happens (default: the next step)
    timeout_next: str | None = None  # where to go on timeout (default: the next step)

    @model_validator(mode="after")
    def _check(self) -> WaitUntilAction:
        if (self.event is None) == (self.rule is None):
            raise ValueError("wait_until waits for an event or a rule (exactly one)")
        duration_seconds(self.timeout, "timeout")
        return self


class SplitPath(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    weight: float = Field(gt=0)
    next: str


class HoldoutAction(_Model):
    share: float = Field(gt=0, lt=1)


class TraitAction(_Model):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    value: str | int | float | bool | None


class AudienceAction(_Model):
    platform: Literal["meta", "google"]
    audience_id: str = Field(min_length=1)
    action: Literal["add", "remove"] = "add"


class TaskAction(_Model):
    title: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    due_days: float = Field(default=1, ge=0)
    notes: str | None = None


class Step(_Model):
    id: str
    next: str | None = None
    wait: str | None = None
    wait_until: WaitUntilAction | None = None
    branch: BranchAction | None = None
    split: list[SplitPath] | None = None
    holdout: HoldoutAction | None = None
    email: EmailAction | None = None
    webhook: WebhookAction | None = None
    update_trait: TraitAction | None = None
    audience: AudienceAction | None = None
    task: TaskAction | None = None
    exit: dict[str, Any] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not STEP_ID.match(value):
            raise ValueError(f"'{value}' is not a step id (letters, digits, '_' and '-')")
        return value

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            raise ValueError(
                f"step '{self.id}' needs exactly one action of {', '.join(ACTIONS)} "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.wait is not None:
            duration_seconds(self.wait, f"step '{self.id}' wait")
        if self.split is not None:
            if len(self.split) < 2:
                raise ValueError(f"step '{self.id}': a split needs at least two paths")
            names = [p.name for p in self.split]
            if len(set(names)) != len(names):
                raise ValueError(f"step '{self.id}': split path names must differ")
        if self.next is not None and self.kind in ("branch", "split", "exit"):
            raise ValueError(f"step '{self.id}': a {self.kind} step says where to go itself")
        return self

    @property
    def kind(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) is not None)

    @property
    def wait_seconds(self) -> float:
        return duration_seconds(self.wait or "0", "wait") if self.wait else 0.0


class Journey(_Model):
    key: str
    name: str = ""
    description: str | None = None
    trigger: Trigger
    entry: Entry = Entry()
    goal: Goal | None = None
    steps: list[Step] = Field(min_length=1)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not KEY.match(value):
            raise ValueError(
                f"'{value}' is not a journey key (lowercase letters, digits, '_' and '-', "
                "starting with a letter)"
            )
        return value

    @model_validator(mode="after")
    def _graph(self) -> Journey:
        ids = [s.id for s in self.steps]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"steps: duplicate step id {', '.join(duplicated)}")
        known = set(ids)
        for step in self.steps:
            for target in self.targets(step):
                if target not in known:
                    raise ValueError(
                        f"step '{step.id}' goes to '{target}', which is not a step "
                        f"(steps: {', '.join(ids)})"
                    )
        self._no_instant_loops()
        return self

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def following(self, step: Step) -> str | None:
        """Where a step goes by default: its `next`, else the one after it (None: done)."""
        if step.next is not None:
            return step.next
        index = self.steps.index(step)
        return self.steps[index + 1].id if index + 1 < len(self.steps) else None

    def targets(self, step: Step) -> list[str]:
        """Every step this one can lead to."""
        if step.kind == "exit":
            return []
        if step.branch is not None:
            return [step.branch.then, step.branch.else_]
        if step.split is not None:
            return [p.next for p in step.split]
        default = self.following(step)
        out = [default] if default else []
        if step.wait_until is not None:
            out += [t for t in (step.wait_until.then, step.wait_until.timeout_next) if t]
        return out

    def _no_instant_loops(self) -> None:
        """Every cycle must pass a wait, or one advance could go round forever."""
        instant = {s.id: s for s in self.steps if s.kind not in ("wait", "wait_until")}
        state: dict[str, int] = {}

        def visit(step_id: str, path: list[str]) -> None:
            if state.get(step_id) == 2 or step_id not in instant:
                return
            if state.get(step_id) == 1:
                loop = " → ".join([*path[path.index(step_id) :], step_id])
                raise ValueError(f"steps loop without a wait: {loop}")
            state[step_id] = 1
            for target in self.targets(instant[step_id]):
                visit(target, [*path, step_id])
            state[step_id] = 2

        for step_id in instant:
            visit(step_id, [])

    def rules(self) -> list[tuple[str, str]]:
        """(where, rule) of every rule in the journey, for checking against the definitions."""
        out = []
        if self.trigger.rule:
            out.append(("trigger.rule", self.trigger.rule))
        if self.entry.rule:
            out.append(("entry.rule", self.entry.rule))
        if self.goal and self.goal.rule:
            out.append(("goal.rule", self.goal.rule))
        for step in self.steps:
            if step.branch:
                out.append((f"steps.{step.id}.branch.rule", step.branch.rule))
            if step.wait_until and step.wait_until.rule:
                out.append((f"steps.{step.id}.wait_until.rule", step.wait_until.rule))
        return out


def parse_journey(data: Any) -> Journey:
    """A journey from plain data (parsed YAML or JSON); InvalidInput names the field."""
    if not isinstance(data, dict):
        raise InvalidInput("a journey is a mapping with key, trigger and steps")
    try:
        return Journey.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None
