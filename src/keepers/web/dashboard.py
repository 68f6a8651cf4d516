"""The dashboard: server-rendered pages (Jinja2), htmx for interactions, ECharts for charts,
both vendored under /static (no CDN, works offline).

Every page reads the same services as the CLI and the API, so a number on a page is the
number `keepers report …` prints. Slow reports (CLV, personas, the overview's funnel and
churn panels) load after the page as htmx fragments, so the page itself answers fast.
Reports, stage counts and segment trends are kept until the next compute run
(`ReportCache`). Every number that counts customers links to the list of those customers
(`/reports/NAME/customers?…`, the report's own `who`).

Sign-in is a user's email and password (`keepers users create`), the same sessions as
`POST /api/login`: argon2id hashes, throttled failures, an HttpOnly SameSite cookie and a
CSRF token per session that every form and htmx request carries. Each page needs a
permission of the user's role (`keepers.access.roles`); a page the role may not open is a
403 page (audited), and pages are rendered with personal data masked for roles without
`customers.read_personal`. Every change made through a form is audited.
"""

from __future__ import annotations

import json
import threading
import time as time_module
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from keepers.access import CsrfFailed, Forbidden, LoginThrottled
from keepers.access.masking import mask_personal
from keepers.access.roles import ROLE_DESCRIPTIONS
from keepers.access.sessions import CSRF_HEADER, SESSION_COOKIE
from keepers.errors import InvalidInput, KeepersError, NotFound, Unauthorized
from keepers.services.access import AccessService, Principal
from keepers.services.keepers import Keepers
from keepers.web.access_api import clear_session_cookies, client_ip, set_session_cookies
from keepers.web.dashboard_sales import add_sales_pages
from keepers.web.permissions import REVENUE_REPORTS

HERE = Path(__file__).parent
REPORT_PAGES = {
    "funnel": "Funnel",
    "churn": "Churn & retention",
    "cohorts": "Cohorts",
    "rfm": "RFM",
    "health": "Health",
    "clv": "Lifetime value",
    "churn-risk": "Churn risk",
    "personas": "Personas",
    "cross-sell": "Cross-sell",
    "replenishment": "Replenishment",
    "lifecycle": "Active customers",
    "nps": "NPS",
}
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["tojson_safe"] = lambda v: Markup(  # JSON inside <script>
    json.dumps(v, default=str).replace("</", "<\\/").replace("<!--", "<\\!--")
)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 10 else f"{value:,.2f}"
    text = str(value)
    if len(text) > 19 and text[10:11] == "T" and text[:4].isdigit():
        return text[:16].replace("T", " ")
    return text


templates.env.filters["num"] = _num


def dashboard_router(
    keepers: Keepers,
    access: AccessService,
    *,
    cookie_secure: bool = True,
    cache: ReportCache | None = None,
) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    cache = cache or ReportCache(keepers)

    def who(request: Request) -> Principal | None:
        if not hasattr(request.state, "principal"):  # one session lookup per request
            cookie = request.cookies.get(SESSION_COOKIE)
            request.state.principal = access.session_principal(cookie)
        principal: Principal | None = request.state.principal
        return principal

    def gate(request: Request, permission: str) -> Response | None:
        """None when the signed-in user's role holds `permission`; else the answer to
        give instead: the sign-in page, or a 403 page. Called before any work is done."""
        principal = who(request)
        if principal is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", 303)
        if not principal.can(permission):
            return refuse(request, principal, permission)
        return None

    def refuse(request: Request, principal: Principal, permission: str) -> Response:
        access.record(
            principal,
            "access.denied",
            f"{request.method} {request.url.path}"[:300],
            outcome="denied",
            detail={"permission": permission},
            ip=client_ip(request),
        )
        return templates.TemplateResponse(
            request,
            "forbidden.html",
            {**_frame(request, principal), "permission": permission},
            status_code=403,
        )

    def page(
        request: Request, template: str, permission: str = "reports.read", **context: Any
    ) -> Response:
        """A page for a signed-in user whose role holds `permission` (else the sign-in
        page, or a 403 page), with personal data masked for roles that may not see it."""
        stop = gate(request, permission)
        if stop is not None:
            return stop
        principal = who(request)
        assert principal is not None  # gate() answered otherwise
        status = context.pop("status_code", 200)
        if not principal.can("customers.read_personal"):
            context = {k: _mask(v) for k, v in context.items()}
        return templates.TemplateResponse(
            request, template, {**_frame(request, principal), **context}, status_code=status
        )

    def posted(
        request: Request, csrf: str, permission: str = "definitions.write", *, audit: bool = True
    ) -> Principal:
        """The signed-in user making a change: the form's CSRF token (or htmx's
        X-CSRF-Token header) must be the session's, the request must not come from another
        site, and the role must hold `permission`; the change is audited."""
        principal = who(request)
        if principal is None:
            raise Unauthorized("the session has ended; sign in again")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise CsrfFailed("a change from another site is refused")
        principal.check_csrf(csrf or request.headers.get(CSRF_HEADER))
        if not principal.can(permission):
            access.record(
                principal,
                "access.denied",
                f"{request.method} {request.url.path}"[:300],
                outcome="denied",
                detail={"permission": permission},
                ip=client_ip(request),
            )
            raise Forbidden(f"the {principal.role} role may not do this (needs {permission})")
        if audit:
            access.record(
                principal,
                f"dashboard.{request.method.lower()}",
                f"{request.method} {request.url.path}"[:300],
                ip=client_ip(request),
            )
        return principal

    # --- sign-in ---------------------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(request, "login.html", {"next": _local(next)})

    @router.post("/login")
    def login_submit(
        request: Request,
        email: str = Form(""),
        password: str = Form(""),
        next: str = Form("/"),
    ) -> Response:
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise CsrfFailed("a sign-in from another site is refused")
        again = {"next": _local(next), "email": email}
        try:
            result = access.login(
                email,
                password,
                ip=client_ip(request),
                replaces=request.cookies.get(SESSION_COOKIE),
            )
        except LoginThrottled as exc:
            minutes = max(1, round(exc.retry_after_s / 60))
            error = f"Too many failed sign-ins. Try again in {minutes} minute(s)."
            headers = {"Retry-After": str(exc.retry_after_s)}
            return templates.TemplateResponse(
                request, "login.html", {**again, "error": error}, 429, headers
            )
        except (Unauthorized, InvalidInput):
            return templates.TemplateResponse(
                request, "login.html", {**again, "error": "Wrong email or password."}, 401
            )
        response = RedirectResponse(_local(next), 303)
        set_session_cookies(response, result, access.session_lifetime, secure=cookie_secure)
        return response

    @router.post("/logout")
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        principal = who(request)
        if principal is not None:
            principal.check_csrf(csrf_token)
            access.logout(request.cookies.get(SESSION_COOKIE, ""), ip=client_ip(request))
        response = RedirectResponse("/login", 303)
        clear_session_cookies(response, secure=cookie_secure)
        return response

    # --- overview ----------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request, as_of: str | None = None) -> Response:
        """Counts and stages at once; the funnel, churn and CLV panels load after the
        page (each is a report over the whole history: seconds at 1M customers the
        first time after a compute run)."""
        if stop := gate(request, "reports.read"):
            return stop
        _as_of(as_of)  # a bad date is refused here, not in three fragments
        return page(
            request,
            "overview.html",
            as_of=as_of or "",
            stages=cache.kept(("stages",), keepers.lifecycle.stages),
            status=keepers.status(),
        )

    @router.get("/fragments/overview-funnel", response_class=HTMLResponse)
    def funnel_fragment(request: Request, as_of: str | None = None) -> Response:
        if stop := gate(request, "reports.read"):
            return stop
        funnel = _try(lambda: cache.report("funnel", _as_of(as_of)))
        return page(request, "fragment_funnel.html", funnel=funnel)

    @router.get("/fragments/overview-churn", response_class=HTMLResponse)
    def churn_fragment(request: Request, as_of: str | None = None) -> Response:
        if stop := gate(request, "reports.read"):
            return stop
        churn = _try(lambda: cache.report("churn", _as_of(as_of)))  # the report page's own key
        return page(request, "fragment_churn.html", churn=churn)

    @router.get("/fragments/clv-by-stage", response_class=HTMLResponse)
    def clv_fragment(request: Request, as_of: str | None = None) -> Response:
        if stop := gate(request, "revenue.read"):
            return stop
        clv = _try(lambda: cache.report("clv", _as_of(as_of)))
        return page(request, "fragment_clv.html", "revenue.read", clv=clv, as_of=as_of or "")

    # --- customers ---------------------------------------------------------------------------

    @router.get("/customers", response_class=HTMLResponse)
    def customers(request: Request, q: str = "") -> Response:
        if stop := gate(request, "customers.read"):
            return stop
        rows = _search(keepers, q) if q.strip() else []
        name = "fragment_customers.html" if request.headers.get("HX-Request") else "customers.html"
        return page(request, name, "customers.read", q=q, rows=rows)

    @router.get("/customers/{reference}", response_class=HTMLResponse)
    def customer(request: Request, reference: str) -> Response:
        if stop := gate(request, "customers.read"):
            return stop
        return page(request, "customer.html", "customers.read", **_customer(keepers, reference))

    # --- segments ----------------------------------------------------------------------------

    @router.get("/segments", response_class=HTMLResponse)
    def segments(request: Request) -> Response:
        if stop := gate(request, "segments.read"):
            return stop
        return page(
            request,
            "segments.html",
            "segments.read",
            segments=keepers.lifecycle.segments_list(),
            trends=cache.kept(("segment_trends",), lambda: _segment_trends(keepers)),
        )

    @router.post("/segments/preview", response_class=HTMLResponse)
    def segment_preview(
        request: Request, rule: str = Form(""), csrf_token: str = Form("")
    ) -> Response:
        posted(request, csrf_token, "segments.read", audit=False)  # a preview changes nothing
        view = "fragment_preview.html"
        if not rule.strip():
            return page(request, view, "segments.read", preview=None, error=None)
        try:
            preview = keepers.lifecycle.segment_preview(rule, 10)
            return page(request, view, "segments.read", preview=preview, error=None)
        except KeepersError as exc:
            return page(request, view, "segments.read", preview=None, error=_rule_error(exc))

    @router.post("/segments", response_class=HTMLResponse)
    def segment_save(
        request: Request,
        key: str = Form(""),
        rule: str = Form(""),
        label: str = Form(""),
        csrf_token: str = Form(""),
    ) -> Response:
        principal = posted(request, csrf_token, "segments.write")
        try:
            keepers.lifecycle.segment_save(key, rule, label or None, None, principal.actor)
        except KeepersError as exc:
            return page(
                request,
                "segments.html",
                "segments.read",
                segments=keepers.lifecycle.segments_list(),
                trends=cache.kept(("segment_trends",), lambda: _segment_trends(keepers)),
                error=_rule_error(exc),
                form={"key": key, "rule": rule, "label": label},
                status_code=400,
            )
        return RedirectResponse("/segments", 303)

    # --- reports -----------------------------------------------------------------------------

    @router.get("/reports/{name}", response_class=HTMLResponse)
    def report(request: Request, name: str, as_of: str | None = None) -> Response:
        if name not in REPORT_PAGES:
            raise NotFound(f"no report page '{name}'")
        need = _report_permission(name)
        if stop := gate(request, need):
            return stop
        if name in ("clv", "personas", "churn-risk") and not request.headers.get("HX-Request"):
            return page(request, "report_lazy.html", need, name=name, as_of=as_of or "")
        options = dict(request.query_params)
        options.pop("as_of", None)
        result = _try(lambda: cache.report(name, _as_of(as_of), **options))
        template = "fragment_report.html" if request.headers.get("HX-Request") else "report.html"
        return page(request, template, need, name=name, result=result, as_of=as_of or "")

    @router.get("/reports/{name}/customers", response_class=HTMLResponse)
    def report_customers(request: Request, name: str, as_of: str | None = None) -> Response:
        need = _report_permission(name)
        if stop := gate(request, need) or gate(request, "customers.read"):
            return stop
        cell = {k: v for k, v in request.query_params.items() if k != "as_of"}
        result = keepers.lifecycle.report_who(name, _as_of(as_of), 200, **cell)
        return page(request, "who.html", need, name=name, result=result, cell=cell)

    # --- journeys ----------------------------------------------------------------------------

    @router.get("/journeys", response_class=HTMLResponse)
    def journeys(request: Request) -> Response:
        if stop := gate(request, "journeys.read"):
            return stop
        return page(request, "journeys.html", "journeys.read", journeys=keepers.journeys.list())

    @router.get("/journeys/{key}", response_class=HTMLResponse)
    def journey(request: Request, key: str, customer: str = "") -> Response:
        if stop := gate(request, "journeys.read"):
            return stop
        shown = keepers.journeys.show(key)
        stats = keepers.journeys.stats(key)
        trace = _try(lambda: keepers.journeys.trace(key, customer)) if customer else None
        graph = _journey_graph(shown["journey"], stats)
        return page(
            request,
            "journey.html",
            "journeys.read",
            key=key,
            shown=shown,
            stats=stats,
            graph=graph,
            customer=customer,
            trace=trace,
        )

    # --- settings ----------------------------------------------------------------------------

    @router.get("/settings", response_class=HTMLResponse)
    def settings_page(request: Request) -> Response:
        if stop := gate(request, "users.manage"):
            return stop
        return page(
            request, "settings.html", "users.manage", **_settings(keepers, access, who(request))
        )

    @router.post("/settings/users", response_class=HTMLResponse)
    def user_create(
        request: Request,
        email: str = Form(""),
        role: str = Form(""),
        csrf_token: str = Form(""),
    ) -> Response:
        principal = posted(request, csrf_token, "users.manage", audit=False)  # service audits
        context = _settings(keepers, access, principal)
        try:
            created = access.create_user(email, role, by=principal, ip=client_ip(request))
        except KeepersError as exc:
            return page(
                request,
                "settings.html",
                "users.manage",
                **context,
                user_error=str(exc),
                status_code=400,
            )
        context = _settings(keepers, access, principal)
        return page(request, "settings.html", "users.manage", **context, created=created)

    @router.post("/settings/users/{user_id}/disable", response_class=HTMLResponse)
    def user_disable(request: Request, user_id: str, csrf_token: str = Form("")) -> Response:
        principal = posted(request, csrf_token, "users.manage", audit=False)  # service audits
        access.disable_user(user_id, by=principal, ip=client_ip(request))
        return RedirectResponse("/settings", 303)

    add_sales_pages(router, keepers, page, posted, gate, cache)
    return router


CHURN_GROUPS = {
    "customers_at_start": "start",
    "customers_at_end": "end",
    "new": "new",
    "lost": "lost",
    "reactivated": "reactivated",
}


def _settings(
    keepers: Keepers, access: AccessService, principal: Principal | None
) -> dict[str, Any]:
    """Write keys, email delivery, users and roles, API tokens, the stage model and the
    audit log — each shown to the roles that may manage or read it."""
    s = keepers.settings
    assert principal is not None
    manage = principal.can("users.manage")
    return {
        "keys": keepers.list_write_keys() if principal.can("keys.manage") else [],
        "definitions": keepers.lifecycle.definitions_export(),
        "smtp": {
            "host": s.smtp_host or "not configured",
            "port": s.smtp_port,
            "security": s.smtp_security,
            "from": s.email_from,
            "consent mode": s.consent_mode,
            "frequency cap": s.frequency_cap,
            "quiet hours": s.quiet_hours or "none",
        },
        "users": access.list_users(by=principal) if manage else [],
        "tokens": access.list_tokens(by=principal) if principal.can("keys.manage") else [],
        "roles": ROLE_DESCRIPTIONS,
        "audit": access.audit(limit=50) if principal.can("audit.read") else [],
    }


NPS_CELLS = {"periods": "in_period", "by_stage": "stage", "by_segment": "segment"}
NPS_COLUMNS = ("responses", "promoters", "passives", "detractors", "nps")


def _report_permission(name: str) -> str:
    return "revenue.read" if name in REVENUE_REPORTS else "reports.read"


def _frame(request: Request, principal: Principal) -> dict[str, Any]:
    """What every page's frame (nav, sign-out form) needs."""
    return {
        "user": principal.name,
        "role": principal.role,
        "can": principal.can,
        "csrf": principal.csrf_token or "",
        "reports": REPORT_PAGES,
        "path": request.url.path,
    }


def _mask(value: Any) -> Any:
    """Page data as a role without `customers.read_personal` may see it. Markup (charts,
    sparklines) carries no personal data and stays as it is."""
    if isinstance(value, Markup):
        return value
    return mask_personal(value)


def who_link(name: str, section: str, row: dict[str, Any], column: str) -> str | None:
    """The customer list behind one number of a report table, when there is one."""
    cell: dict[str, Any] | None = None
    if name in ("churn", "retention") and section == "periods" and column in CHURN_GROUPS:
        cell = {"in_period": row.get("period"), "group": CHURN_GROUPS[column]}
    elif name == "rfm" and section == "segments" and column == "customers":
        cell = {"segment": row.get("segment")}
    elif name in ("health", "clv", "churn-risk") and column == "customers" and "band" in row:
        cell = {"band": row["band"]}
    elif name == "clv" and section == "stages" and column == "customers":
        cell = {"stage": row.get("stage")}
    elif name == "personas" and section == "personas" and column == "customers":
        cell = {"persona": row.get("persona")}
    elif name == "cross-sell" and section == "pairs" and column == "support":
        cell = {"pair": f"{row.get('a')},{row.get('b')}"}
    elif name == "funnel" and section == "stages" and column == "reached":
        cell = {"stage": row.get("stage")}
    elif (
        name == "lifecycle"
        and section == "periods"
        and column in ("new", "returning", "resurrecting", "dormant")
    ):
        cell = {"in_period": row.get("period"), "status": column}
    elif name == "nps" and section in NPS_CELLS and column in NPS_COLUMNS:
        key = NPS_CELLS[section]  # the row's period, stage or segment
        cell = {key: row.get(key.removeprefix("in_"))}
        if column in ("promoters", "passives", "detractors"):
            cell["group"] = column
    if cell is None or any(v is None for v in cell.values()):
        return None
    return f"/reports/{name}/customers?{urlencode(cell)}"


templates.env.globals["who_link"] = who_link
templates.env.globals["v_rows"] = lambda named: [
    {"": key, **row} for key, row in named.items() if isinstance(row, dict)
]


WARM_REPORTS = ("funnel", "churn", "clv")  # what the overview reads, as of now


class ReportCache:
    """Reports "as of now" change only when a compute run changes the state: they are kept
    per (report, options, last compute run) — so a page answers from memory until the next
    run — and a past date is never cached twice in a row differently (it is keyed too).

    `kept` does the same for any other read that only a compute run changes (stage counts
    and moves, segment trends). One request computes a missing entry; requests for the
    same entry that arrive meanwhile wait for it instead of repeating the work (at 1M
    customers a cold report takes seconds of both cores)."""

    def __init__(self, keepers: Keepers, size: int = 64) -> None:
        self.keepers = keepers
        self.size = size
        self.kept_values: dict[tuple, Any] = {}
        self.last_used: float | None = None  # monotonic time a page last read a report
        self.pending: dict[tuple, Future] = {}
        self.lock = threading.Lock()

    def run(self) -> int:
        with self.keepers.db.transaction() as tx:
            return int(tx.execute("SELECT COALESCE(MAX(run_id), 0) FROM compute_runs")[0][0])

    def report(self, name: str, as_of: datetime | None, **options: Any) -> Any:
        self.last_used = time_module.monotonic()
        key = ("report", name, as_of, tuple(sorted(options.items())))
        return self.kept(key, lambda: self.keepers.lifecycle.report(name, as_of, **options))

    def warm(self, idle_s: float = 900.0) -> list[str]:
        """After a compute run: compute what the overview shows (stages, funnel, churn,
        CLV by stage) for the new run, then the day's churn-risk and persona scores and the
        customer page's query, so the next visitor does not wait for them — only while
        someone has used the dashboard in the last `idle_s` seconds. Returns what was
        warmed."""
        if self.last_used is None or time_module.monotonic() - self.last_used > idle_s:
            return []
        self.kept(("stages",), self.keepers.lifecycle.stages)
        warmed = ["stages"]
        for name in WARM_REPORTS:
            try:
                self.report(name, None)
            except KeepersError:
                continue  # e.g. no orders yet: the page shows the message itself
            warmed.append(name)
        warmed += [f"scores:{n}" for n in self.keepers.lifecycle.warm_scores()]
        # the customer page's query, compiled for the day's models (about 1–2 s, once)
        with self.keepers.db.transaction() as tx:
            anyone = tx.execute("SELECT min(customer_id) FROM customers")[0][0]
        if anyone is not None:
            self.keepers.lifecycle.explain(str(anyone), scores=True)
            warmed.append("customer page")
        return warmed

    def kept(self, key: tuple, build: Callable[[], Any], *version: Hashable) -> Any:
        """`build()`, computed once per compute run (and per `version`, for reads that
        other writes change too)."""
        key = (*key, self.run(), *version)
        with self.lock:
            if key in self.kept_values:
                return self.kept_values[key]
            waiting = self.pending.get(key)
            if waiting is None:
                self.pending[key] = Future()
        if waiting is not None:
            return waiting.result()
        try:
            result = build()
        except BaseException as exc:
            with self.lock:
                self.pending.pop(key).set_exception(exc)
            raise
        with self.lock:
            self.kept_values[key] = result
            while len(self.kept_values) > self.size:
                self.kept_values.pop(next(iter(self.kept_values)))
            self.pending.pop(key).set_result(result)
        return result


TREND_WEEKS = 8


def _segment_trends(keepers: Keepers) -> dict[str, dict[str, Any]]:
    """Members of every segment at the end of each of the last 8 weeks (from the stays in
    `segment_memberships`, one query), with a small SVG line for the list."""
    now = datetime.now(UTC)
    moments = [now - timedelta(weeks=TREND_WEEKS - 1 - i) for i in range(TREND_WEEKS)]
    values = ", ".join(
        f"({i}, CAST('{m.isoformat()}' AS TIMESTAMPTZ))" for i, m in enumerate(moments)
    )
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            f"SELECT m.segment, w.idx, count(*) FROM segment_memberships m "
            f"JOIN (VALUES {values}) AS w(idx, moment) ON m.entered_at <= w.moment "
            "AND (m.exited_at IS NULL OR m.exited_at > w.moment) GROUP BY 1, 2"
        )
    series: dict[str, list[int]] = {}
    for segment, idx, n in rows:
        series.setdefault(segment, [0] * TREND_WEEKS)[int(idx)] = int(n)
    return {key: {"counts": counts, "svg": _sparkline(counts)} for key, counts in series.items()}


def _sparkline(counts: list[int], width: int = 96, height: int = 22) -> Markup:
    top = max(max(counts), 1)
    step = width / max(len(counts) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (height - 4) * c / top:.1f}" for i, c in enumerate(counts)
    )
    return Markup(
        f'<svg width="{width}" height="{height}" role="img" aria-label="trend">'
        f'<polyline fill="none" stroke="#2f6fed" stroke-width="1.5" points="{points}"/></svg>'
    )


def _local(target: str) -> str:
    """Only same-site paths after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _as_of(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        day = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"as_of: '{text}' is not a date (YYYY-MM-DD)") from None
    if day.tzinfo is None:
        day = datetime.combine(day.date(), time(23, 59, 59), UTC)
    return day


def _try(call: Callable[[], Any]) -> Any:
    """A report, or its error message for the page (no history yet, too few buyers …)."""
    try:
        return call()
    except KeepersError as exc:
        return {"error": exc.message}


def _rule_error(exc: KeepersError) -> dict[str, Any]:
    return {
        "message": exc.message,
        "source": getattr(exc, "source", ""),
        "position": getattr(exc, "position", 0),
        "length": max(getattr(exc, "length", 1), 1),
    }


SEARCH_SQL = {  # (first name, last name, traits as text)
    "duckdb": (
        "json_extract_string(c.traits, '$.first_name')",
        "json_extract_string(c.traits, '$.last_name')",
        "CAST(c.traits AS TEXT)",
    ),
    "postgres": ("c.traits->>'first_name'", "c.traits->>'last_name'", "c.traits::text"),
}
ESCAPED_IN_JSON = frozenset(' %_"\\/')  # plus non-printable and non-ASCII characters


def _search(keepers: Keepers, q: str) -> list[dict[str, Any]]:
    """Customers whose id or user id is `q`, or whose email or name contains it (any case),
    the first 50 by id.

    Every customer is read, and parsing names out of the traits JSON is most of the cost
    (about 0.4 s at 1M named customers). When `q` can only match inside one name (no
    space, no LIKE wildcard) and is written the same in JSON text (printable ASCII without
    quotes, backslashes or slashes: traits are written by orjson or the database, which
    escape only those), a name that contains it leaves it in the lowercased traits text
    too; that cheaper test runs first and only the rows it lets through are parsed. Same
    answer, a miss costs about a third less."""
    text = q.strip()
    pattern = f"%{text.lower()}%"
    first, last, traits = SEARCH_SQL[keepers.database_kind]
    named = f"lower(COALESCE({first}, '') || ' ' || COALESCE({last}, '')) LIKE ?"
    params = [text, text, pattern]
    if text.isascii() and text.isprintable() and not ESCAPED_IN_JSON & set(text):
        named = f"(lower({traits}) LIKE ? AND {named})"
        params.append(pattern)
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            f"SELECT c.customer_id, c.user_id, c.email, {first}, {last} FROM customers c "
            "WHERE c.merged_into IS NULL AND (CAST(c.customer_id AS TEXT) = ? OR "
            f"c.user_id = ? OR lower(c.email) LIKE ? OR {named}) ORDER BY c.customer_id LIMIT 50",
            [*params, pattern],
        )
    return [
        {"customer_id": c, "user_id": u, "email": e, "name": " ".join(x for x in (f, n) if x)}
        for c, u, e, f, n in rows
    ]


def _customer(keepers: Keepers, reference: str) -> dict[str, Any]:
    explained = keepers.lifecycle.explain(reference, scores=True)
    customer_id = explained["customer"]["customer_id"]
    with keepers.db.transaction() as tx:
        events = tx.execute(
            "SELECT timestamp, type, event FROM events WHERE customer_id = ? "
            "ORDER BY timestamp DESC LIMIT 50",
            [customer_id],
        )
        orders = tx.execute(
            "SELECT order_id, ordered_at, revenue, total, currency FROM orders "
            "WHERE customer_id = ? ORDER BY ordered_at DESC LIMIT 50",
            [customer_id],
        )
        enrollments = tx.execute(
            "SELECT journey, version, status, step, entered_at FROM enrollments "
            "WHERE customer_id = ? ORDER BY entered_at DESC LIMIT 20",
            [customer_id],
        )
        messages = tx.execute(
            "SELECT journey, step, channel, state, sent_at, last_error FROM outbox "
            "WHERE customer_id = ? ORDER BY outbox_id DESC LIMIT 20",
            [customer_id],
        )
        consent = tx.execute(
            "SELECT list, channel, status, source, changed_at FROM consent WHERE customer_id = ?",
            [customer_id],
        )
    segments = [s["segment"] for s in explained.get("segments", []) if s["matched"]]
    return {
        "explained": explained,
        "customer_id": customer_id,
        "segments": segments,
        "events": events,
        "orders": orders,
        "enrollments": enrollments,
        "messages": messages,
        "consent": consent,
    }


def _journey_graph(journey: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Nodes (steps with their counts) and edges (where each step can lead) for ECharts."""
    steps = journey["steps"]
    ids = [s["id"] for s in steps]
    nodes, links = [], []
    for index, step in enumerate(steps):
        kind = next(k for k in step if k not in ("id", "next"))
        counts = stats["steps"].get(step["id"], {})
        reached = sum(n for d, n in counts.items() if not d.startswith("messages_"))
        nodes.append({"name": step["id"], "kind": kind, "value": reached, "x": 120 * index, "y": 0})
        targets: list[str] = []
        if kind == "branch":
            targets = [step["branch"]["then"], step["branch"]["else"]]
        elif kind == "split":
            targets = [p["next"] for p in step["split"]]
        elif kind != "exit":
            following = step.get("next") or (ids[index + 1] if index + 1 < len(ids) else None)
            targets = [t for t in (following,) if t]
            wait = step.get("wait_until") or {}
            targets += [t for t in (wait.get("then"), wait.get("timeout_next")) if t]
        links += [{"source": step["id"], "target": t} for t in dict.fromkeys(targets)]
    return {"nodes": nodes, "links": links}
