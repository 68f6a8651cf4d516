"""Deals, MEDDIC scorecards, pipelines and lead scores under /api (admin token).

Every route is one call of `SalesService`, the same one the CLI uses. A stage move that a
gate refuses answers 400 with code `stage_gate` and a message naming each missing element
and its status, e.g. `stage: deal 'd-7' cannot move to commit: economic_buyer must be
confirmed (is identified), champion must be confirmed (is unknown)`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from keepers.errors import InvalidInput
from keepers.sales.lead_model import LeadModel
from keepers.sales.pipeline import Pipeline
from keepers.sales.records import DealCreate, DealUpdate, MeddicUpdate
from keepers.services.keepers import Keepers
from keepers.services.sales import SalesService
from keepers.web.api import ERR, RESPONSES
from keepers.web.permissions import GuardedRoute, acting

DEAL_NOT_FOUND = {404: {"description": "No such deal, pipeline or customer.", **ERR}}
CUSTOMER_NOT_FOUND = {404: {"description": "No such customer.", **ERR}}
Limit = Query(100, ge=1, le=10_000)


class MoveBody(BaseModel):
    stage: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(None, max_length=1000, description="Why it was lost.")


def _sales(keepers: Keepers) -> SalesService:
    """The service on this store, sending won-account and qualified-lead events through
    the same ingest path as the tracking API."""
    return SalesService(keepers.db, keepers.clock, keepers.ingest_messages)


def sales_router(keepers: Keepers, admin_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/api",
        tags=["sales"],
        responses=RESPONSES,
        route_class=GuardedRoute,
    )
    service = _sales(keepers)

    @router.post("/deals/sync")
    async def sync() -> dict[str, Any]:
        """Deals and their history from the CRM's `Deal …` events; safe to rerun."""
        return await asyncio.to_thread(service.sync_from_events)

    @router.get("/deals")
    def deals(
        status: Literal["open", "won", "lost", "all"] = "open",
        stage: str | None = Query(None, max_length=64),
        owner: str | None = Query(None, max_length=200),
        account: str | None = Query(None, max_length=200),
        limit: int = Limit,
    ) -> list[dict[str, Any]]:
        """Deals with qualification score, weakest element, next step and gate gaps."""
        return service.deals(status, stage, owner, account, limit)

    @router.post("/deals", status_code=201, responses=DEAL_NOT_FOUND)
    def create(body: DealCreate) -> dict[str, Any]:
        """Create a deal (it enters its stage through the same gates as a move)."""
        return service.create_deal(body.model_dump(exclude_unset=True), acting())

    @router.get("/deals/priorities")
    def priorities(
        owner: str | None = Query(None, max_length=200), limit: int = Query(20, ge=1, le=10_000)
    ) -> list[dict[str, Any]]:
        """Open deals ranked by amount × qualification score ÷ 100, with the weakest
        element and the next step of each."""
        return service.priorities(owner, limit)

    @router.get("/deals/pipeline")
    def pipeline_report() -> dict[str, Any]:
        """Open value by stage; win rate and median cycle time by MEDDIC band."""
        return service.pipeline_report()

    @router.get("/deals/{deal_id}", responses=DEAL_NOT_FOUND)
    def show(deal_id: str) -> dict[str, Any]:
        """A deal with its scorecard, history and what the next stage's gate needs."""
        return service.deal(deal_id)

    @router.patch("/deals/{deal_id}", responses=DEAL_NOT_FOUND)
    def update(deal_id: str, body: DealUpdate) -> dict[str, Any]:
        """Change a deal's fields; the stage changes through `PUT …/stage`."""
        return service.update_deal(deal_id, body.model_dump(exclude_unset=True))

    @router.put("/deals/{deal_id}/stage", responses=DEAL_NOT_FOUND)
    def move(deal_id: str, body: MoveBody) -> dict[str, Any]:
        """Move a deal to a stage; 400 `stage_gate` names what the gate misses."""
        return service.move_deal(deal_id, body.stage, acting(), body.reason)

    @router.put("/deals/{deal_id}/meddic/{element}", responses=DEAL_NOT_FOUND)
    def meddic(deal_id: str, element: str, body: MeddicUpdate) -> dict[str, Any]:
        """Set one scorecard element: status, evidence, who said it and when, the linked
        contact, the next step."""
        return service.update_meddic(
            deal_id, element, body.model_dump(exclude_unset=True), acting()
        )

    @router.get("/pipelines/{key}", responses=DEAL_NOT_FOUND)
    def pipeline(key: str) -> dict[str, Any]:
        """A pipeline: stages, gates, CRM stage names, framework and weights."""
        return service.pipeline(key)

    @router.put("/pipelines/{key}")
    def save_pipeline(key: str, body: Pipeline) -> dict[str, Any]:
        """Save a pipeline as its next version (the key in the body must match)."""
        data = body.model_dump(mode="json", exclude_none=True)
        if data["key"] != key:
            raise InvalidInput(f"key: the body names pipeline '{data['key']}', the path '{key}'")
        return service.save_pipeline(data, acting())

    @router.post("/leads/score")
    async def score() -> dict[str, Any]:
        """Score every customer now (fit + decayed engagement) and store the scores."""
        return await asyncio.to_thread(service.score_leads)

    @router.get("/leads")
    def leads(
        level: Literal["sql", "mql", "qualified", "all"] = "qualified", limit: int = Limit
    ) -> list[dict[str, Any]]:
        """Customers by their stored lead score, best first."""
        return service.leads(level, limit)

    @router.get("/leads/model")
    def lead_model() -> dict[str, Any]:
        return service.lead_model()

    @router.put("/leads/model")
    def save_lead_model(body: LeadModel) -> dict[str, Any]:
        """Save the lead-scoring model (fit rules, engagement rules, thresholds)."""
        return service.save_lead_model(
            body.model_dump(mode="json", by_alias=True, exclude_none=True), acting()
        )

    @router.get("/leads/{customer}", responses=CUSTOMER_NOT_FOUND)
    def lead(customer: str) -> dict[str, Any]:
        """Why a customer has their lead score: each rule that gave points, and how many."""
        return service.lead(customer)

    return router


__all__ = ["sales_router"]
