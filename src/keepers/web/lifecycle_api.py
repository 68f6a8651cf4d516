"""The lifecycle under /api: compute runs, stages, explanations, segments and definitions.

Every route is one call of `LifecycleService`, the same one the CLI uses, so the CLI can go
through a running server and get the same answers. Admin token required.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from keepers.services.keepers import Keepers
from keepers.web.api import ERR, RESPONSES
from keepers.web.permissions import GuardedRoute, acting, require_report

NOT_FOUND = {404: {"description": "No such customer or segment.", **ERR}}


class ComputeRequest(BaseModel):
    full: bool = Field(False, description="Recompute every customer's aggregates.")
    as_of: AwareDatetime | None = Field(
        None, description="Report the state at this moment instead of writing it."
    )
    backfill_since: AwareDatetime | None = Field(
        None, description="Rebuild stage history from this moment up to `as_of` or now."
    )
    every: str = Field("week", pattern="^(day|week|month)$")
    engine: str = Field("database", pattern="^(database|spark)$")


class SegmentBody(BaseModel):
    rule: str = Field(min_length=1, max_length=10_000)
    label: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2_000)


class PreviewBody(BaseModel):
    rule: str = Field(min_length=1, max_length=10_000)
    sample: int = Field(10, ge=0, le=1000)


class DefinitionsBody(BaseModel):
    definitions: dict[str, Any]


def lifecycle_router(keepers: Keepers, admin_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/api",
        tags=["lifecycle"],
        responses=RESPONSES,
        route_class=GuardedRoute,
    )
    service = keepers.lifecycle

    @router.post("/compute")
    async def compute(body: ComputeRequest) -> dict[str, Any]:
        """Run the engine now (incremental unless `full`), report a past state, or backfill."""
        return await asyncio.to_thread(
            service.compute, body.full, body.as_of, body.backfill_since, body.every, body.engine
        )

    @router.get("/stages")
    def stages() -> dict[str, Any]:
        """Customers per stage (funnel order) and the moves between stages."""
        return service.stages()

    @router.get("/customers/{customer}/explain", responses=NOT_FOUND)
    def explain(
        customer: str, as_of: AwareDatetime | None = None, scores: bool = False
    ) -> dict[str, Any]:
        """Traits, every stage rule in order and every segment, with the values that decided;
        with `scores=true` also every score (health with its components, P(alive), RFM,
        expected orders, CLV; churn risk and persona once the day's are computed)."""
        return service.explain(customer, as_of, scores)

    @router.get("/segments")
    def segments() -> list[dict[str, Any]]:
        return service.segments_list()

    @router.post("/segments/preview")
    def preview(body: PreviewBody) -> dict[str, Any]:
        """How many customers a rule selects now, and a sample, without saving it."""
        return service.segment_preview(body.rule, body.sample)

    @router.get("/segments/{key}", responses=NOT_FOUND)
    def segment(key: str) -> dict[str, Any]:
        return service.segment_show(key)

    @router.put("/segments/{key}")
    def save_segment(key: str, body: SegmentBody) -> dict[str, Any]:
        """Create or change a segment; its members are recomputed at once."""
        return service.segment_save(key, body.rule, body.label, body.description, acting())

    @router.delete("/segments/{key}", responses=NOT_FOUND)
    def delete_segment(key: str) -> dict[str, Any]:
        return service.segment_delete(key, acting())

    @router.get("/definitions")
    def definitions() -> dict[str, Any]:
        """The stage model, segments and traits in force, with their version."""
        return service.definitions_export()

    @router.put("/definitions")
    def apply_definitions(body: DefinitionsBody) -> dict[str, Any]:
        """Replace all definitions (validated first); recorded as a new version."""
        return service.definitions_apply(body.definitions, acting())

    @router.get("/definitions/history")
    def history() -> list[dict[str, Any]]:
        """Every saved version: who, when, what changed."""
        return service.definitions_history()

    @router.get("/reports/{name}", responses=NOT_FOUND)
    def report(name: str, request: Request, as_of: AwareDatetime | None = None) -> dict[str, Any]:
        """An analytics report: funnel, churn, retention, cohorts, lifecycle, rfm, health …
        Other query parameters are the report's options (period, periods, by, mode …)."""
        require_report(request.state.principal, name)
        return service.report(name, as_of, **_options(request, ("as_of",)))

    @router.get("/reports/{name}/customers", responses=NOT_FOUND)
    def report_customers(
        name: str,
        request: Request,
        as_of: AwareDatetime | None = None,
        limit: int = Query(100, ge=1, le=10_000),
    ) -> dict[str, Any]:
        """The customers behind one number of a report; the other query parameters name the
        cell (e.g. `segment=champions` for RFM, `in_period=2024-05&group=lost` for churn)."""
        require_report(request.state.principal, name)
        return service.report_who(name, as_of, limit, **_options(request, ("as_of", "limit")))

    return router


def _options(request: Request, taken: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k not in taken}


__all__ = ["lifecycle_router"]
