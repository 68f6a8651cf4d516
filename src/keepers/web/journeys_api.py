"""Journeys under /api (admin token), and the public pages email links point at.

Public, no login (RFC 8058): `POST /u/{token}` is the one-click unsubscribe a mailbox
provider sends (`List-Unsubscribe=One-Click`, form-encoded or multipart — the body is not
needed, the signed token says who and which list); it answers 200 directly, never a
redirect. `GET /u/{token}` is for people: it shows the preferences page and changes
nothing (link scanners prefetch GETs); its form posts back to the same URL.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import AwareDatetime, BaseModel, Field

from keepers.errors import InvalidInput
from keepers.services.keepers import Keepers
from keepers.web.api import ERR, RESPONSES
from keepers.web.permissions import GuardedRoute, acting

PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
NOT_FOUND = {404: {"description": "No such journey or customer.", **ERR}}


class StatusBody(BaseModel):
    status: str = Field(pattern="^(active|paused|archived)$")


class SimulateBody(BaseModel):
    since: AwareDatetime = Field(description="Replay history from this moment up to now.")
    step_days: float = Field(1.0, gt=0, le=366, description="The simulated clock's step.")


class ConsentBody(BaseModel):
    customer: str = Field(min_length=1, max_length=200)
    list: str = Field("marketing", pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    channel: str = Field("email", pattern="^(email|audience)$")
    status: str = Field(pattern="^(granted|withdrawn)$")
    source: str = Field("api", max_length=200)


def journeys_router(keepers: Keepers, admin_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/api",
        tags=["journeys"],
        responses=RESPONSES,
        route_class=GuardedRoute,
    )

    @router.get("/journeys")
    def journeys() -> list[dict[str, Any]]:
        """Every journey with its version, status and enrollment counts."""
        return keepers.journeys.list()

    @router.post("/journeys")
    def save(body: dict[str, Any]) -> dict[str, Any]:
        """Create a journey, or a new version of one (customers in it finish on theirs)."""
        return keepers.journeys.save(body, acting())

    @router.get("/journeys/{key}", responses=NOT_FOUND)
    def show(key: str) -> dict[str, Any]:
        return keepers.journeys.show(key)

    @router.put("/journeys/{key}/status", responses=NOT_FOUND)
    def status(key: str, body: StatusBody) -> dict[str, Any]:
        """Pause (nobody enters, nobody moves on), resume or archive a journey."""
        return keepers.journeys.set_status(key, body.status)

    @router.get("/journeys/{key}/stats", responses=NOT_FOUND)
    def stats(key: str) -> dict[str, Any]:
        return keepers.journeys.stats(key)

    @router.get("/journeys/{key}/trace/{customer}", responses=NOT_FOUND)
    def trace(key: str, customer: str) -> dict[str, Any]:
        """Why a customer did or did not get this journey's messages: every decision."""
        return keepers.journeys.trace(key, customer)

    @router.post("/journeys/{key}/simulate", responses=NOT_FOUND)
    async def simulate(key: str, body: SimulateBody) -> dict[str, Any]:
        """What the journey would have done had it been live since a date: who would have
        entered, their paths, what each step would have queued. Sends and writes nothing."""
        return await asyncio.to_thread(keepers.journeys.simulate, key, body.since, body.step_days)

    @router.post("/journeys/run")
    async def run() -> dict[str, Any]:
        """Advance every journey and deliver what is due, now."""
        return await asyncio.to_thread(keepers.journeys.run)

    @router.put("/consent", responses=NOT_FOUND)
    def consent(body: ConsentBody) -> dict[str, Any]:
        """Record a customer's consent (or its withdrawal) for a list and channel."""
        return keepers.journeys.set_consent(
            body.customer, body.list, body.status, channel=body.channel, source=body.source
        )

    return router


def mail_router(keepers: Keepers) -> APIRouter:
    router = APIRouter(
        tags=["email links"],
        responses={
            400: {"description": "Not a valid link.", **ERR},
            404: {"description": "The link's customer no longer exists.", **ERR},
            422: {"description": "A field is invalid.", **ERR},
        },
    )

    @router.post("/u/{token}", response_class=PlainTextResponse)
    async def one_click(token: str, request: Request) -> PlainTextResponse:
        """RFC 8058 one-click unsubscribe (and the preferences form): 200, no redirect."""
        form = await _form(request)
        choice = form.get("subscribe")
        if choice == "yes":
            await asyncio.to_thread(keepers.journeys.resubscribe, token)
            return PlainTextResponse("You are subscribed again.")
        message = request.query_params.get("m")
        await asyncio.to_thread(keepers.journeys.unsubscribe, token, message=message)
        return PlainTextResponse("You are unsubscribed. No more emails from this list.")

    @router.get("/o/{token}", response_class=Response)
    def opened(token: str) -> Response:
        """The open pixel: records 'Email Opened', answers a 1×1 transparent GIF."""
        keepers.journeys.track(token, "open")
        return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})

    @router.get("/c/{token}", response_class=RedirectResponse, status_code=302)
    def clicked(token: str) -> RedirectResponse:
        """A tracked link: records 'Email Link Clicked', then goes where the email pointed."""
        url = keepers.journeys.track(token, "click")
        if not url:
            raise InvalidInput("token: not a click link")
        return RedirectResponse(url, status_code=302)

    @router.get("/u/{token}", response_class=HTMLResponse)
    def preferences(token: str) -> HTMLResponse:
        """The preferences page; reading it changes nothing."""
        prefs = keepers.journeys.preferences(token)
        current = prefs["lists"].get(prefs["list"], "subscribed")
        state = "unsubscribed" if current == "withdrawn" else "subscribed"
        safe = html.escape
        page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Email preferences</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 3rem auto">
<h1>Email preferences</h1>
<p>{safe(prefs["email"])} is <strong>{state}</strong> to <em>{safe(prefs["list"])}</em>.</p>
<form method="post">
<button name="subscribe" value="no" type="submit">Unsubscribe</button>
<button name="subscribe" value="yes" type="submit">Stay subscribed</button>
</form></body></html>"""
        return HTMLResponse(page)

    return router


async def _form(request: Request) -> dict[str, str]:
    """The posted fields, whichever encoding (urlencoded or multipart), or none."""
    kind = request.headers.get("content-type", "")
    if "form" not in kind:
        return {}
    try:
        form = await request.form()
    except Exception as exc:  # a malformed body: the token alone is enough to unsubscribe
        raise InvalidInput(f"body: not a form ({exc})") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


__all__ = ["journeys_router", "mail_router"]
