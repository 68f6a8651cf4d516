"""Login, logout, users, API tokens, the audit log and GDPR over HTTP, and `require`, the
dependency that every management route can use to say which permission it needs.

Who can call `/api/*` (`authenticate`):
- `Authorization: Bearer <admin token>` — the server's admin token: role admin;
- `Authorization: Bearer kp_…` — an API token: its role;
- the `keepers_session` cookie from `POST /api/login` — the user's role; a state-changing
  request (POST, PUT, PATCH, DELETE) must also carry the session's CSRF token in the
  `X-CSRF-Token` header or the `csrf_token` form field, and must not come from another
  site (`Sec-Fetch-Site: cross-site` is refused).
Write keys (HTTP Basic) open nothing here: they only ingest.

Missing or wrong credentials → 401; a role without the permission → 403 (and an
`access.denied` audit row); too many failed logins → 429 with `Retry-After`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from keepers.access import CsrfFailed, Forbidden
from keepers.access.roles import PERMISSIONS, ROLE_DESCRIPTIONS, ROLES, check_permission
from keepers.access.sessions import (
    COOKIE_ATTRIBUTES,
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
)
from keepers.errors import InvalidInput, Unauthorized
from keepers.services.access import ADMIN_TOKEN, AccessService, Principal
from keepers.services.keepers import Keepers

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input; the message names the field.", **ERR},
    401: {"description": "Not logged in, or a wrong token.", **ERR},
    403: {"description": "The role may not do this, or the CSRF token is missing.", **ERR},
    422: {"description": "A field is invalid.", **ERR},
}
_bearer = HTTPBearer(auto_error=False, description="The admin token or an API token (kp_…).")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="From /api/login.")


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


class AccessGuard:
    """Turns a request's credentials into a `Principal` and checks permissions."""

    def __init__(self, service: AccessService, admin_token: str | None) -> None:
        self.service = service
        self.admin_token = admin_token

    async def authenticate(self, request: Request) -> Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if self.admin_token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return ADMIN_TOKEN
            principal = await run_in_threadpool(self.service.token_principal, token)
            if principal is None:
                raise Unauthorized("invalid or revoked bearer token")
            return principal
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal = await run_in_threadpool(self.service.session_principal, cookie)
            if principal is None:
                raise Unauthorized("the session has ended; log in again")
            if request.method in UNSAFE_METHODS:
                await self._check_csrf(request, principal)
            return principal
        raise Unauthorized("log in (POST /api/login), or send 'Authorization: Bearer <token>'")

    async def _check_csrf(self, request: Request, principal: Principal) -> None:
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise CsrfFailed("a change from another site is refused")
        presented = request.headers.get(CSRF_HEADER)
        content_type = request.headers.get("content-type", "")
        if not presented and content_type.startswith(FORM_TYPES):
            value = (await request.form()).get(CSRF_FIELD)
            presented = value if isinstance(value, str) else None
        principal.check_csrf(presented)

    def require(self, permission: str) -> Callable[..., Awaitable[Principal]]:
        """A FastAPI dependency: the caller's principal, if its role holds `permission`."""
        check_permission(permission)

        async def dependency(
            request: Request,
            _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
            _session: Annotated[str | None, Depends(_cookie)],
        ) -> Principal:
            principal = await self.authenticate(request)
            if not principal.can(permission):
                await run_in_threadpool(
                    self.service.record,
                    principal,
                    "access.denied",
                    f"{request.method} {request.url.path}"[:300],
                    outcome="denied",
                    detail={"permission": permission},
                    ip=client_ip(request),
                )
                raise Forbidden(f"the {principal.role} role may not do this (needs {permission})")
            request.state.principal = principal
            return principal

        return dependency

    def any_user(self) -> Callable[..., Awaitable[Principal]]:
        """A dependency for routes every authenticated caller may use (/api/me)."""

        async def dependency(
            request: Request,
            _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
            _session: Annotated[str | None, Depends(_cookie)],
        ) -> Principal:
            principal = await self.authenticate(request)
            request.state.principal = principal
            return principal

        return dependency


def _guard_of(request: Request) -> AccessGuard:
    state = request.app.state
    guard = getattr(state, "access_guard", None)
    if guard is None:
        keepers = state.keepers
        guard = state.access_guard = AccessGuard(
            AccessService(keepers.db, keepers.clock), getattr(state, "admin_token", None)
        )
    return guard


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """`Depends(require("segments.write"))` on any route of an app made by `create_app`:
    accepts the admin token, an API token or a session (+ CSRF on changes) and returns the
    principal; 401 without credentials, 403 without the permission."""
    check_permission(permission)

    async def dependency(
        request: Request,
        _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        _session: Annotated[str | None, Depends(_cookie)],
    ) -> Principal:
        inner = _guard_of(request).require(permission)
        return await inner(request, _bearer_token, _session)

    return dependency


# --- request bodies ---------------------------------------------------------------------------


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    role: str = Field(min_length=1, max_length=50)
    password: str | None = Field(None, min_length=1, max_length=1024)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    role: str = Field(min_length=1, max_length=50)


LOGIN_BODY = {
    "type": "object",
    "required": ["email", "password"],
    "properties": {
        "email": {"type": "string", "maxLength": 320},
        "password": {"type": "string", "maxLength": 1024},
        "next": {"type": "string", "description": "Form logins: a local path to go to."},
    },
}


async def _login_fields(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(FORM_TYPES):
        form = await request.form()
        data: Any = {k: v for k, v in form.items() if isinstance(v, str)}
    else:
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            raise InvalidInput("the body is neither a form nor JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("send an object with 'email' and 'password'")
    for field in ("email", "password"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise InvalidInput(f"{field}: required")
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _local_path(target: str | None) -> str | None:
    """Only a path on this server (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def access_router(
    keepers: Keepers,
    admin_token: str | None = None,
    *,
    service: AccessService | None = None,
    cookie_secure: bool = True,
) -> APIRouter:
    """Login and logout for scripts and pages (`/api/login`, `/api/logout`; the dashboard's
    own `/login` form can call `AccessService.login` and `set_session_cookies`), and the
    access API. `cookie_secure=False` only for plain-HTTP development: browsers then send
    the session over the network unencrypted."""
    service = service or AccessService(keepers.db, keepers.clock)
    guard = AccessGuard(service, admin_token)
    router = APIRouter(responses=AUTH_RESPONSES)
    signed_in = guard.any_user()

    def can(permission: str) -> Any:
        return Depends(guard.require(permission))

    @router.post(
        "/api/login",
        tags=["access"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": LOGIN_BODY},
                    "application/x-www-form-urlencoded": {"schema": LOGIN_BODY},
                },
            }
        },
        responses={
            200: {"description": "Logged in; the session cookie is set."},
            303: {"description": "Form login with `next`: logged in, go there."},
            400: {"description": "Email or password missing.", **ERR},
            429: {"description": "Too many failed logins; see Retry-After.", **ERR},
        },
    )
    async def login(request: Request) -> Response:
        """Log in with email and password (JSON or a form). Sets `keepers_session`
        (HttpOnly, Secure, SameSite=Lax) and `keepers_csrf`; answers the CSRF token."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise CsrfFailed("a login from another site is refused")
        fields = await _login_fields(request)
        result = await run_in_threadpool(
            service.login,
            fields["email"],
            fields["password"],
            ip=client_ip(request),
            replaces=request.cookies.get(SESSION_COOKIE),
        )
        body = {k: result[k] for k in ("user", "csrf_token", "expires_at")}
        target = _local_path(fields.get("next"))
        response: Response = (
            RedirectResponse(target, status_code=303) if target else JSONResponse(body)
        )
        set_session_cookies(response, result, service.session_lifetime, secure=cookie_secure)
        return response

    @router.post("/api/logout", tags=["access"], status_code=204)
    async def logout(request: Request, principal: Principal = Depends(signed_in)) -> Response:
        """End the session (CSRF token required, like every change) and clear the cookies."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if principal.kind == "session" and cookie:
            await run_in_threadpool(service.logout, cookie, ip=client_ip(request))
        response = Response(status_code=204)
        clear_session_cookies(response, secure=cookie_secure)
        return response

    @router.get("/api/me", tags=["access"])
    def whoami(principal: Principal = Depends(signed_in)) -> dict[str, Any]:
        """Who this is, the role and its permissions (and the session's CSRF token)."""
        return principal.public()

    @router.get("/api/roles", tags=["access"])
    def roles(principal: Principal = Depends(signed_in)) -> dict[str, Any]:
        """Every role with its permissions, and what each permission allows."""
        return {
            "roles": {
                name: {"description": ROLE_DESCRIPTIONS[name], "permissions": sorted(perms)}
                for name, perms in ROLES.items()
            },
            "permissions": PERMISSIONS,
        }

    @router.post("/api/users", tags=["access"], status_code=201)
    def create_user(
        request: Request, body: UserCreate, by: Principal = can("users.manage")
    ) -> dict[str, Any]:
        """A new user; without a password one is generated and shown in this answer only."""
        return service.create_user(
            body.email, body.role, body.password, by=by, ip=client_ip(request)
        )

    @router.get("/api/users", tags=["access"])
    def users(by: Principal = can("users.manage")) -> list[dict[str, Any]]:
        return service.list_users(by=by)

    @router.post(
        "/api/users/{user}/disable",
        tags=["access"],
        responses={404: {"description": "No such user.", **ERR}},
    )
    def disable_user(
        request: Request, user: str, by: Principal = can("users.manage")
    ) -> dict[str, Any]:
        """Disable a user (id or email): it cannot log in and its sessions end now."""
        return service.disable_user(user, by=by, ip=client_ip(request))

    @router.post("/api/tokens", tags=["access"], status_code=201)
    def create_token(
        request: Request, body: TokenCreate, by: Principal = can("keys.manage")
    ) -> dict[str, Any]:
        """A new API token with a role; the token is shown in this answer only."""
        return service.create_token(body.name, body.role, by=by, ip=client_ip(request))

    @router.get("/api/tokens", tags=["access"])
    def tokens(by: Principal = can("keys.manage")) -> list[dict[str, Any]]:
        return service.list_tokens(by=by)

    @router.delete(
        "/api/tokens/{token_id}",
        tags=["access"],
        status_code=204,
        responses={404: {"description": "No such active token.", **ERR}},
    )
    def revoke_token(
        request: Request, token_id: str, by: Principal = can("keys.manage")
    ) -> Response:
        service.revoke_token(token_id, by=by, ip=client_ip(request))
        return Response(status_code=204)

    @router.get("/api/audit", tags=["access"])
    def audit(
        by: Principal = can("audit.read"),
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        action: Annotated[str | None, Query(max_length=100)] = None,
        actor: Annotated[str | None, Query(max_length=320)] = None,
        before: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[dict[str, Any]]:
        """Audit entries, newest first (`action` is a prefix, `before` an audit id)."""
        return service.audit(limit=limit, action=action, actor=actor, before=before)

    @router.get("/api/audit/verify", tags=["access"])
    def verify_audit(by: Principal = can("audit.read")) -> dict[str, Any]:
        """Recompute the audit log's hash chain: where was it changed, if anywhere."""
        return service.verify_audit()

    @router.get(
        "/api/customers/{customer}/export",
        tags=["access"],
        responses={404: {"description": "No such customer.", **ERR}},
    )
    def export(
        request: Request, customer: str, by: Principal = can("customers.export")
    ) -> dict[str, Any]:
        """Everything stored about one customer (id, userId, anonymousId or email) as JSON
        (GDPR Art. 15/20); masked for roles without `customers.read_personal`."""
        return service.export_customer(customer, by=by, ip=client_ip(request))

    @router.delete(
        "/api/customers/{customer}",
        tags=["access"],
        responses={404: {"description": "No such customer.", **ERR}},
    )
    def erase(
        request: Request, customer: str, by: Principal = can("customers.erase")
    ) -> dict[str, Any]:
        """Erase a customer everywhere, the event log included (GDPR Art. 17); their
        identifiers are refused at ingest from now on. Answers what was deleted."""
        return service.erase_customer(customer, by=by, ip=client_ip(request))

    return router


def set_session_cookies(
    response: Response, login: dict[str, Any], lifetime: timedelta, *, secure: bool = True
) -> None:
    """Put a session from `AccessService.login` on a response: `keepers_session` (HttpOnly,
    Secure, SameSite=Lax, Path=/) and `keepers_csrf` (readable by the page's scripts, for
    the X-CSRF-Token header; SameSite=Strict). For the dashboard's login form too."""
    max_age = int(lifetime.total_seconds())
    attributes = {**COOKIE_ATTRIBUTES, "secure": secure}
    response.set_cookie(SESSION_COOKIE, login["session"], max_age=max_age, **attributes)
    response.set_cookie(
        CSRF_COOKIE,
        login["csrf_token"],
        max_age=max_age,
        **{**attributes, "httponly": False, "samesite": "strict"},
    )


def clear_session_cookies(response: Response, *, secure: bool = True) -> None:
    attributes = {**COOKIE_ATTRIBUTES, "secure": secure}
    response.delete_cookie(SESSION_COOKIE, **attributes)
    response.delete_cookie(CSRF_COOKIE, **{**attributes, "httponly": False, "samesite": "strict"})
