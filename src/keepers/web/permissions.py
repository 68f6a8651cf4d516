"""Who may call which management route: the authorisation matrix as data, and the route
class that enforces it.

Every `/api/*` route of the management API is built by `GuardedRoute`, which looks its
(method, path) up in `ROUTE_PERMISSIONS` when the app is built — a route missing from the
table fails at startup, never open at run time. For each request it then:

1. authenticates the caller (`AccessGuard.authenticate`: admin token, API token, or the
   session cookie with its CSRF token on changes) — 401 without credentials; write keys
   open nothing here, they only ingest;
2. checks the permission — 403 and an `access.denied` audit row when the role lacks it;
3. masks personal data in the JSON answer for roles without `customers.read_personal`
   (`keepers.access.masking`), whatever the route returned;
4. writes an audit row for every change that succeeded (POST, PUT, PATCH, DELETE): who,
   which route, the path, the status — no bodies, so no personal data.

Routes that are public by design (tracking `/v1`, unsubscribe and tracking links, login)
do not use this class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from keepers.access import Forbidden
from keepers.access.masking import mask_personal
from keepers.access.roles import check_permission
from keepers.web.access_api import UNSAFE_METHODS, _guard_of, client_ip

R, W = "reports.read", "definitions.write"

#: (method, path) → the permission the caller's role needs
ROUTE_PERMISSIONS: dict[tuple[str, str], str] = {
    # store, keys, bulk ingest
    ("GET", "/api/status"): R,
    ("POST", "/api/keys"): "keys.manage",
    ("GET", "/api/keys"): "keys.manage",
    ("DELETE", "/api/keys/{key_id}"): "keys.manage",
    ("POST", "/api/ingest"): "ingest.write",
    ("GET", "/api/rejected"): "ingest.write",
    # lifecycle, segments, definitions, reports
    ("POST", "/api/compute"): W,
    ("GET", "/api/stages"): R,
    ("GET", "/api/customers/{customer}/explain"): "customers.read",
    ("GET", "/api/segments"): "segments.read",
    ("POST", "/api/segments/preview"): "segments.read",
    ("GET", "/api/segments/{key}"): "segments.read",
    ("PUT", "/api/segments/{key}"): "segments.write",
    ("DELETE", "/api/segments/{key}"): "segments.write",
    ("GET", "/api/definitions"): "definitions.read",
    ("PUT", "/api/definitions"): W,
    ("GET", "/api/definitions/history"): "definitions.read",
    ("GET", "/api/reports/{name}"): R,
    ("GET", "/api/reports/{name}/customers"): R,
    # journeys and consent
    ("GET", "/api/journeys"): "journeys.read",
    ("POST", "/api/journeys"): "journeys.write",
    ("GET", "/api/journeys/{key}"): "journeys.read",
    ("PUT", "/api/journeys/{key}/status"): "journeys.write",
    ("GET", "/api/journeys/{key}/stats"): "journeys.read",
    ("GET", "/api/journeys/{key}/trace/{customer}"): "journeys.read",
    ("POST", "/api/journeys/{key}/simulate"): "journeys.read",  # writes nothing
    ("POST", "/api/journeys/run"): "journeys.write",
    ("PUT", "/api/consent"): "customers.write",
    # sales
    ("POST", "/api/deals/sync"): "deals.write",
    ("GET", "/api/deals"): "accounts.read",
    ("POST", "/api/deals"): "deals.write",
    ("GET", "/api/deals/priorities"): "accounts.read",
    ("GET", "/api/deals/pipeline"): "accounts.read",
    ("GET", "/api/deals/{deal_id}"): "accounts.read",
    ("PATCH", "/api/deals/{deal_id}"): "deals.write",
    ("PUT", "/api/deals/{deal_id}/stage"): "deals.write",
    ("PUT", "/api/deals/{deal_id}/meddic/{element}"): "deals.write",
    ("GET", "/api/pipelines/{key}"): "accounts.read",
    ("PUT", "/api/pipelines/{key}"): "deals.write",
    ("POST", "/api/leads/score"): "leads.write",
    ("GET", "/api/leads"): "accounts.read",
    ("GET", "/api/leads/model"): "accounts.read",
    ("PUT", "/api/leads/model"): "leads.write",
    ("GET", "/api/leads/{customer}"): "accounts.read",
    # referrals
    ("GET", "/api/referrals"): R,
    ("POST", "/api/referrals/sync"): "referrals.write",
    ("GET", "/api/referrals/programme"): R,
    ("PUT", "/api/referrals/programme"): "referrals.write",
    ("GET", "/api/referrals/codes"): R,
    ("POST", "/api/referrals/codes"): "referrals.write",
    ("POST", "/api/referrals/codes/generate"): "referrals.write",
    ("DELETE", "/api/referrals/codes/{code}"): "referrals.write",
    ("GET", "/api/referrals/rewards"): R,
    ("POST", "/api/referrals/rewards/pay"): "rewards.pay",
    ("POST", "/api/referrals/rewards/void"): "rewards.pay",
    ("GET", "/api/referrals/leaderboard"): R,
    ("GET", "/api/referrals/fraud"): R,
    ("GET", "/api/referrals/customers/{customer}"): "customers.read",
}

_ACTOR: ContextVar[str] = ContextVar("keepers_actor", default="api")


def acting() -> str:
    """Who is making the current request, as histories and the audit log name them
    (`user:ann@example.com`, `token:…:CRM`, `admin-token`)."""
    return _ACTOR.get()


#: reports that show revenue or value per customer: they also need `revenue.read`
REVENUE_REPORTS = frozenset({"clv"})


def permission_of(method: str, path: str) -> str:
    try:
        return check_permission(ROUTE_PERMISSIONS[(method, path)])
    except KeyError:
        raise RuntimeError(
            f"{method} {path} has no permission in keepers.web.permissions.ROUTE_PERMISSIONS"
        ) from None


class GuardedRoute(APIRoute):
    """An `/api` route that authenticates, authorises, masks and audits (module doc)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        [method] = kwargs.get("methods") or ["GET"]  # one per route: the table's key
        self.permission = permission_of(method.upper(), path)  # before super() builds the handler
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        permission, path = self.permission, self.path

        async def guarded(request: Request) -> Response:
            guard = _guard_of(request)
            principal = await guard.authenticate(request)
            if not principal.can(permission):
                await run_in_threadpool(
                    guard.service.record,
                    principal,
                    "access.denied",
                    f"{request.method} {request.url.path}"[:300],
                    outcome="denied",
                    detail={"permission": permission},
                    ip=client_ip(request),
                )
                raise Forbidden(f"the {principal.role} role may not do this (needs {permission})")
            request.state.principal = principal
            _ACTOR.set(principal.actor)  # copied into the worker thread of a sync route
            response = await handler(request)
            if request.method in UNSAFE_METHODS and response.status_code < 400:
                await run_in_threadpool(
                    guard.service.record,
                    principal,
                    f"api.{request.method.lower()}",
                    f"{request.method} {request.url.path}"[:300],
                    detail={"route": path, "status": response.status_code},
                    ip=client_ip(request),
                )
            if not principal.can("customers.read_personal"):
                response = _masked(response)
            return response

        return guarded


def _masked(response: Response) -> Response:
    """The JSON answer with personal data masked (other answers pass unchanged)."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return response
    body = getattr(response, "body", None)
    if not body:
        return response
    masked = json.dumps(mask_personal(json.loads(body)), ensure_ascii=False).encode()
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(masked, response.status_code, headers, media_type="application/json")


def require_report(principal: Any, name: str) -> None:
    """Revenue reports are for roles that may see revenue."""
    if name in REVENUE_REPORTS and not principal.can("revenue.read"):
        raise Forbidden(f"the {principal.role} role may not see the {name} report (revenue.read)")
