"""Dashboard pages for sales and advocacy: the deals board, one deal's MEDDIC scorecard, and
the referral programme (issue 7).

- `/deals` — open deals as columns per pipeline stage (a card per deal: account, amount,
  owner, qualification score, weakest element, and a warning mark when the next stage's
  gate is not met yet), the week's priorities (amount × score ÷ 100) and the pipeline
  report (open value by stage; win rate and cycle time by MEDDIC band).
- `/deals/{deal_id}` — the scorecard (status, evidence, who said it and when, next step per
  element), a form per element and a form to move the deal. A move the stage gate refuses
  answers the same page with status 400 and the service's message (what is missing).
- `/referrals` — the programme's numbers, the leaderboard (each referrer links to their
  customer page), the latest rewards and the fraud flags.

Every number comes from `keepers.sales` / `keepers.referrals`, the services the CLI and the
API call. The board needs two things those services answer per deal only — each deal's
element statuses (for the next stage's gate) and account names — so it reads both for all
open deals in one query (`_board_extras`) rather than calling `deal()` once per card.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from keepers.errors import KeepersError, NotFound
from keepers.sales.meddic import LABELS, STATUSES, band, describe_missing, missing_for
from keepers.sales.pipeline import Pipeline
from keepers.services.keepers import Keepers

BOARD_LIMIT = 500  # open deals on the board, most recently updated first
PRIORITIES = 10
LEADERBOARD = 20
REWARDS = 20
FLAGS = 50
READ, WRITE = "accounts.read", "deals.write"

Page = Callable[..., Response]
Gate = Callable[[Request, str], Response | None]


def add_sales_pages(
    router: APIRouter,
    keepers: Keepers,
    page: Page,
    posted: Callable[..., Any],
    gate: Gate | None = None,
    cache: Any = None,
) -> None:
    """Add the deals and referral pages to the dashboard's router. `gate`, when given,
    answers an unauthorised request before any service is called; `cache` (the
    dashboard's `ReportCache`), when given, keeps the referral page's numbers."""

    def stop(request: Request, permission: str) -> Response | None:
        return gate(request, permission) if gate is not None else None

    @router.get("/deals", response_class=HTMLResponse)
    def deals_board(request: Request) -> Response:
        if answer := stop(request, READ):
            return answer
        return page(request, "deals.html", READ, **_board(keepers))

    @router.get("/deals/{deal_id}", response_class=HTMLResponse)
    def deal_page(request: Request, deal_id: str) -> Response:
        if answer := stop(request, READ):
            return answer
        return page(request, "deal.html", READ, **_deal(keepers, deal_id))

    @router.post("/deals/{deal_id}/meddic", response_class=HTMLResponse)
    def set_element(
        request: Request,
        deal_id: str,
        element: str = Form(""),
        status: str = Form(""),
        evidence: str = Form(""),
        said_by: str = Form(""),
        said_at: str = Form(""),
        next_step: str = Form(""),
        csrf_token: str = Form(""),
    ) -> Response:
        principal = posted(request, csrf_token, WRITE)
        body = {
            "status": status,
            "evidence": evidence.strip() or None,
            "said_by": said_by.strip() or None,
            "said_at": said_at.strip() or None,
            "next_step": next_step.strip() or None,
        }
        try:
            keepers.sales.update_meddic(deal_id, element, body, principal.actor)
        except NotFound:
            raise
        except KeepersError as exc:
            failed = {"element": element, "message": exc.message}
            context = _deal(keepers, deal_id)
            return page(
                request, "deal.html", READ, **context, element_error=failed, status_code=400
            )
        return RedirectResponse(f"/deals/{quote(deal_id)}#el-{element}", 303)

    @router.post("/deals/{deal_id}/stage", response_class=HTMLResponse)
    def move(
        request: Request,
        deal_id: str,
        stage: str = Form(""),
        reason: str = Form(""),
        csrf_token: str = Form(""),
    ) -> Response:
        principal = posted(request, csrf_token, WRITE)
        try:
            keepers.sales.move_deal(deal_id, stage, principal.actor, reason.strip() or None)
        except NotFound:
            raise
        except KeepersError as exc:
            failed = {"stage": stage, "reason": reason, "message": exc.message, "code": exc.code}
            context = _deal(keepers, deal_id)
            return page(request, "deal.html", READ, **context, move_error=failed, status_code=400)
        return RedirectResponse(f"/deals/{quote(deal_id)}", 303)

    @router.get("/referrals", response_class=HTMLResponse)
    def referrals(request: Request) -> Response:
        if answer := stop(request, "reports.read"):
            return answer
        if cache is None:
            return page(request, "referrals.html", "reports.read", **_referrals(keepers))
        numbers = cache.kept(
            ("referrals",), lambda: _referrals(keepers), *_referral_version(keepers)
        )
        return page(request, "referrals.html", "reports.read", **numbers)


# --- the board ------------------------------------------------------------------------------


def _board(keepers: Keepers) -> dict[str, Any]:
    """Open deals in columns per pipeline stage, the priorities and the pipeline report:
    three service calls, one pipeline read per pipeline, one query for the extras."""
    sales = keepers.sales
    deals = sales.deals("open", limit=BOARD_LIMIT)
    priorities = sales.priorities(limit=PRIORITIES)
    report = sales.pipeline_report()
    keys = dict.fromkeys(
        [r["pipeline"] for r in report["by_stage"]] + [d["pipeline"] for d in deals]
    )
    pipelines = {key: Pipeline.model_validate(sales.pipeline(key)) for key in keys}
    statuses, accounts = _board_extras(keepers)
    for deal in [*deals, *priorities]:
        deal["account_name"] = accounts.get(deal["account_id"]) or deal["account_id"]
        deal["band"] = band(deal["score"] or 0.0)
        deal["weakest_label"] = LABELS.get(deal["weakest"] or "", deal["weakest"])
    for deal in deals:
        pipeline = pipelines[deal["pipeline"]]
        deal["next_gate"] = _next_gate(pipeline, deal, statuses.get(deal["deal_id"], {}))
    return {
        "boards": [_columns(p, deals, report["by_stage"]) for p in pipelines.values()],
        "open_deals": len(deals),
        "truncated": len(deals) >= BOARD_LIMIT,
        "priorities": priorities,
        "report": report,
        "chart": _value_chart(pipelines, report["by_stage"]),
    }


def _board_extras(keepers: Keepers) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Element statuses of every open deal and the names of their accounts, in one
    transaction (`SalesService` has these per deal only)."""
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            "SELECT m.deal_id, m.element, m.status FROM deal_meddic m "
            "JOIN deals d ON d.deal_id = m.deal_id WHERE d.status = 'open'"
        )
        names = tx.execute(
            "SELECT a.account_id, a.name FROM accounts a WHERE a.account_id IN "
            "(SELECT account_id FROM deals WHERE status = 'open')"
        )
    statuses: dict[str, dict[str, str]] = {}
    for deal_id, element, status in rows:
        statuses.setdefault(deal_id, {})[element] = status
    return statuses, {account: name for account, name in names if name}


def _next_gate(
    pipeline: Pipeline, deal: dict[str, Any], statuses: dict[str, str]
) -> dict[str, Any] | None:
    """The next open stage and what its gate still misses (None in the last open stage, or
    a stage the pipeline no longer has) — the same rule as `SalesService.deal`."""
    stages = pipeline.open_stages
    if deal["stage"] not in stages or stages.index(deal["stage"]) + 1 >= len(stages):
        return None
    target = stages[stages.index(deal["stage"]) + 1]
    missing = missing_for(statuses, pipeline.requirements(target))
    return {
        "stage": target,
        "label": _label(pipeline, target),
        "ready": not missing,
        "missing": describe_missing(missing) or None,
    }


def _columns(
    pipeline: Pipeline, deals: list[dict[str, Any]], by_stage: list[dict[str, Any]]
) -> dict[str, Any]:
    """One pipeline's board: a column per open stage (plus any stage a deal sits in that the
    pipeline no longer has), each with its cards and open value per currency."""
    mine = [d for d in deals if d["pipeline"] == pipeline.key]
    stages = pipeline.open_stages + sorted({d["stage"] for d in mine} - set(pipeline.open_stages))
    columns = []
    for stage in stages:
        totals = [
            r
            for r in by_stage
            if r["pipeline"] == pipeline.key and r["stage"] == stage and r["deals"]
        ]
        columns.append(
            {
                "stage": stage,
                "label": _label(pipeline, stage),
                "deals": [d for d in mine if d["stage"] == stage],
                "totals": totals,
            }
        )
    return {"pipeline": pipeline.key, "framework": pipeline.framework, "columns": columns}


def _value_chart(pipelines: dict[str, Pipeline], by_stage: list[dict[str, Any]]) -> dict:
    """Open and score-weighted value per stage, for the bar chart."""
    several = len(pipelines) > 1
    currencies = {r["currency"] for r in by_stage if r["currency"]}
    names = []
    for r in by_stage:
        name = _label(pipelines[r["pipeline"]], r["stage"]) if r["pipeline"] in pipelines else ""
        name = f"{r['pipeline']} · {name}" if several else name
        names.append(f"{name} ({r['currency']})" if len(currencies) > 1 else name)
    return {
        "stages": names,
        "amount": [r["amount"] for r in by_stage],
        "qualified": [r["qualified_amount"] for r in by_stage],
    }


def _label(pipeline: Pipeline, stage: str) -> str:
    found = next((s for s in pipeline.stages if s.key == stage), None)
    return (found.label if found and found.label else stage).replace("_", " ")


# --- one deal -------------------------------------------------------------------------------


def _deal(keepers: Keepers, deal_id: str) -> dict[str, Any]:
    """A deal with its scorecard, and the stages it may be moved to with what each gate
    still misses."""
    sales = keepers.sales
    deal = sales.deal(deal_id)
    pipeline = Pipeline.model_validate(sales.pipeline(deal["pipeline"]))
    statuses = {row["element"]: row["status"] for row in deal["scorecard"]}
    moves = []
    for stage in pipeline.stages:
        if stage.key == deal["stage"]:
            continue
        missing = missing_for(statuses, pipeline.requirements(stage.key))
        gated = stage.outcome == "open" and _forward(pipeline, deal["stage"], stage.key)
        moves.append(
            {
                "stage": stage.key,
                "label": _label(pipeline, stage.key),
                "outcome": stage.outcome,
                "missing": describe_missing(missing) if gated and missing else None,
            }
        )
    with keepers.db.transaction() as tx:
        found = tx.execute("SELECT name FROM accounts WHERE account_id = ?", [deal["account_id"]])
    return {
        "deal": deal,
        "account_name": (found[0][0] if found else None) or deal["account_id"],
        "stage_label": _label(pipeline, deal["stage"]) if deal["stage"] else "",
        "weakest_label": LABELS.get(deal["weakest"] or "", deal["weakest"]),
        "moves": moves,
        "statuses": STATUSES,
    }


def _forward(pipeline: Pipeline, current: str | None, target: str) -> bool:
    """Whether moving from `current` to `target` is a move the gates apply to (forward, or
    reopening a closed deal) — the rule of `keepers.sales.deals.gate_refusal`."""
    known = {s.key: s for s in pipeline.stages}
    if current not in known or known[current].outcome != "open":
        return True
    return pipeline.position(target) > pipeline.position(current)


# --- referrals ------------------------------------------------------------------------------


def _referral_version(keepers: Keepers) -> tuple[Any, ...]:
    """What changes the referral page between two compute runs: the programme's tables
    (a sync, a code, a payout, a void, new rules) and the audit log's head (an erasure
    must not leave a referrer's email on the page). Orders and `Referral Sent` events
    count from the next compute run, like every report. Small tables only: a few ms, where
    the page's own numbers scan every event and order (about 0.3 s at 10M events)."""
    with keepers.db.transaction() as tx:
        counts = tx.execute(
            "SELECT (SELECT count(*) FROM referral_codes), "
            "(SELECT count(disabled_at) FROM referral_codes), "
            "(SELECT count(*) FROM referral_attributions), "
            "(SELECT count(*) FROM referral_fraud_flags), "
            "(SELECT max(version) FROM referral_programme_versions), "
            "(SELECT max(audit_id) FROM audit_log)"
        )[0]
        rewards = tx.execute(
            "SELECT status, count(*) FROM referral_rewards GROUP BY status ORDER BY status"
        )
    return (*counts, *(tuple(r) for r in rewards))


def _referrals(keepers: Keepers) -> dict[str, Any]:
    service = keepers.referrals
    return {
        "metrics": service.metrics(),
        "leaderboard": service.leaderboard(LEADERBOARD)["rows"],
        "rewards": service.rewards(limit=REWARDS),
        "fraud": service.fraud(limit=FLAGS),
        "programme": service.programme(),
    }
