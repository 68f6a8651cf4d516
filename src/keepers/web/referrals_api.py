"""The referral programme under /api/referrals (admin token): sync, the rules, codes,
rewards (list, pay, void), leaderboard, totals, fraud flags, one customer's side.

Every route is one call of `ReferralService`, the same one the CLI uses, so the CLI can go
through a running server and get the same answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from keepers.services.keepers import Keepers
from keepers.services.referrals import ReferralService
from keepers.web.api import ERR, RESPONSES
from keepers.web.permissions import GuardedRoute, acting

NOT_FOUND = {404: {"description": "No such customer or reward.", **ERR}}
Limit = Query(100, ge=1, le=10_000)


class SyncBody(BaseModel):
    generate_codes: bool = Field(
        False, description="Also give customers without a code one (programme's `codes`)."
    )


class ProgrammeBody(BaseModel):
    programme: dict[str, Any] = Field(description="rules, fraud and codes; see GET first")


class CodeBody(BaseModel):
    customer: str = Field(min_length=1, max_length=200)
    code: str | None = Field(None, min_length=1, max_length=64)


class GenerateBody(BaseModel):
    for_customers: str | None = Field(None, pattern="^(identified|buyers|all)$")


class PayBody(BaseModel):
    reward_ids: list[str] | None = Field(None, max_length=10_000)
    referrer: str | None = Field(None, min_length=1, max_length=200)
    all: bool = Field(False, description="Pay every earned reward.")
    reference: str | None = Field(None, max_length=200, description="e.g. a payout batch id")


class VoidBody(BaseModel):
    reward_ids: list[str] = Field(min_length=1, max_length=10_000)
    reason: str = Field(min_length=1, max_length=500)


def referrals_router(keepers: Keepers, admin_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/api/referrals",
        tags=["referrals"],
        responses=RESPONSES,
        route_class=GuardedRoute,
    )
    service = ReferralService(keepers.db, keepers.clock, keepers.ingest_messages)

    @router.get("")
    def totals() -> dict[str, Any]:
        """Invites, referred and converted customers, their revenue, rewards, fraud flags."""
        return service.metrics()

    @router.post("/sync")
    async def sync(body: SyncBody) -> dict[str, Any]:
        """Bring codes, attribution, fraud checks and the reward ledger up to date."""
        return await asyncio.to_thread(service.sync, body.generate_codes)

    @router.get("/programme")
    def programme() -> dict[str, Any]:
        """The reward rules, fraud checks and code settings in force, with their version."""
        return service.programme()

    @router.put("/programme")
    def set_programme(body: ProgrammeBody) -> dict[str, Any]:
        """Replace the rules (validated first); saved as a new version."""
        return service.set_programme(body.programme, acting())

    @router.get("/codes", responses=NOT_FOUND)
    def codes(customer: str | None = None, limit: int = Limit) -> dict[str, Any]:
        """Codes with how many customers each brought, and share links when configured."""
        return service.codes(customer, limit)

    @router.post("/codes", responses=NOT_FOUND)
    def set_code(body: CodeBody) -> dict[str, Any]:
        """Give a customer a chosen code, or a generated one when none is given."""
        return service.set_code(body.customer, body.code)

    @router.post("/codes/generate")
    async def generate(body: GenerateBody) -> dict[str, Any]:
        """Give every customer of a kind without a code one (set-based)."""
        return await asyncio.to_thread(service.ensure_codes, body.for_customers)

    @router.delete("/codes/{code}")
    def disable(code: str) -> dict[str, Any]:
        """Stop a code from attributing new customers; its rewards stay."""
        return service.disable_code(code)

    @router.get("/rewards", responses=NOT_FOUND)
    def rewards(
        status: str | None = Query(None, pattern="^(pending|earned|paid|void)$"),
        referrer: str | None = None,
        limit: int = Limit,
    ) -> dict[str, Any]:
        """The reward ledger, newest first."""
        return service.rewards(status, referrer, limit)

    @router.post("/rewards/pay", responses=NOT_FOUND)
    def pay(body: PayBody) -> dict[str, Any]:
        """Mark earned rewards paid: named ones, a referrer's, or all (explicitly)."""
        return service.pay(body.reward_ids, body.referrer, body.all, body.reference)

    @router.post("/rewards/void", responses=NOT_FOUND)
    def void(body: VoidBody) -> dict[str, Any]:
        """Void unpaid rewards by hand, with a reason."""
        return service.void(body.reward_ids, body.reason)

    @router.get("/leaderboard")
    def leaderboard(limit: int = Query(20, ge=1, le=10_000)) -> dict[str, Any]:
        """Referrers ranked by converted friends, revenue brought, invites."""
        return service.leaderboard(limit)

    @router.get("/fraud")
    def fraud(limit: int = Limit) -> dict[str, Any]:
        """Fraud flags: the check, the shared value, both customers, the reward's status."""
        return service.fraud(limit)

    @router.get("/customers/{customer}", responses=NOT_FOUND)
    def customer(customer: str) -> dict[str, Any]:
        """One customer's codes, who referred them, whom they referred, their rewards."""
        return service.customer(customer)

    return router


__all__ = ["referrals_router"]
