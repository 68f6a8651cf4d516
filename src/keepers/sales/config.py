"""Stored sales configuration: pipelines and the lead-scoring model, one versioned JSON
document each. A store that has never saved one uses the built-in default, so a fresh
install (and the demo) works without setup, and saving the default changes nothing."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from keepers.errors import NotFound
from keepers.sales.lead_model import (
    DEFAULT_MODEL,
    LeadModel,
    default_lead_model,
    model_body,
    parse_lead_model,
)
from keepers.sales.pipeline import DEFAULT_PIPELINE, Pipeline, default_pipeline, parse_pipeline
from keepers.store.database import Tx


def _body(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def load_pipelines(tx: Tx) -> dict[str, Pipeline]:
    """Every pipeline by key; `default` is always there."""
    pipelines = {DEFAULT_PIPELINE: default_pipeline()}
    for key, body in tx.execute("SELECT pipeline, body FROM pipelines"):
        pipelines[key] = parse_pipeline(_body(body))
    return pipelines


def load_pipeline(tx: Tx, key: str) -> Pipeline:
    pipelines = load_pipelines(tx)
    if key not in pipelines:
        known = ", ".join(sorted(pipelines))
        raise NotFound(f"no pipeline '{key}' (pipelines: {known})")
    return pipelines[key]


def save_pipeline(tx: Tx, pipeline: Pipeline, *, actor: str, now: datetime) -> int:
    """Store a pipeline as its next version; returns the version (unchanged → same)."""
    body = pipeline.model_dump(mode="json", exclude_none=True)
    rows = tx.execute("SELECT version, body FROM pipelines WHERE pipeline = ?", [pipeline.key])
    if rows and _body(rows[0][1]) == body:
        return int(rows[0][0])
    version = int(rows[0][0]) + 1 if rows else 1
    tx.execute("DELETE FROM pipelines WHERE pipeline = ?", [pipeline.key])
    tx.execute(
        "INSERT INTO pipelines VALUES (?, ?, ?, ?, ?)",
        [pipeline.key, version, json.dumps(body), now, actor],
    )
    return version


def load_lead_model(tx: Tx) -> tuple[LeadModel, int]:
    """The lead model in force and its version (0: the built-in default)."""
    rows = tx.execute(
        "SELECT body, version FROM lead_score_models WHERE model = ?", [DEFAULT_MODEL]
    )
    if not rows:
        return default_lead_model(), 0
    return parse_lead_model(_body(rows[0][0])), int(rows[0][1])


def save_lead_model(tx: Tx, model: LeadModel, *, actor: str, now: datetime) -> int:
    body = model_body(model)
    current, version = load_lead_model(tx)
    if model_body(current) == body:
        return version
    tx.execute("DELETE FROM lead_score_models WHERE model = ?", [DEFAULT_MODEL])
    tx.execute(
        "INSERT INTO lead_score_models VALUES (?, ?, ?, ?, ?)",
        [DEFAULT_MODEL, version + 1, json.dumps(body), now, actor],
    )
    return version + 1
