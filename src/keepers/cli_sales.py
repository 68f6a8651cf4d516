"""`keepers deals …` and `keepers leads …`: the sales commands, in the house style of
`keepers.cli` (one readable line on failure, `--json` for machines, Rich tables for people).

They open the store directly (`Keepers.open`) and close it when done. The two Typer apps are
created before `keepers.cli` is imported, because `keepers.cli` imports them back to add
them as sub-commands: whichever module is imported first, the other finds what it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

deals_app = typer.Typer(
    help="Deals: MEDDIC scorecards, gated pipeline stages, priorities, pipeline report.",
    no_args_is_help=True,
)
leads_app = typer.Typer(
    help="Lead scores: fit plus decayed engagement; MQL and SQL.", no_args_is_help=True
)

from rich.table import Table  # noqa: E402

from keepers.cli import (  # noqa: E402
    DbOption,
    JsonOption,
    _actor,
    _cell,
    _existing,
    _moment,
    _print_json,
    _print_report,
    _settings,
    friendly_errors,
    out,
)
from keepers.errors import InvalidInput  # noqa: E402
from keepers.services.sales import SalesService  # noqa: E402

DealId = Annotated[str, typer.Argument(help="The deal id (the CRM's deal_id).")]
LimitOption = Annotated[int, typer.Option("--limit", help="At most this many rows.")]


@contextmanager
def _service(db: str | None) -> Iterator[SalesService]:
    from keepers.services.keepers import Keepers

    keepers = Keepers.open(_existing(_settings(db)))
    try:
        yield SalesService(keepers.db, keepers.clock, keepers.ingest_messages)
    finally:
        keepers.close()


def _emit(result: Any, as_json: bool) -> bool:
    """Print JSON when asked; True when done."""
    if as_json:
        _print_json(result)
    return as_json


def _deals_table(rows: list[dict[str, Any]], title: str, *, ranked: bool = False) -> None:
    columns = ["deal", "account", "owner", "stage", "amount", "score", "weakest", "next step"]
    table = Table(*(["#", *columns, "priority"] if ranked else columns), title=title)
    for row in rows:
        cells = [
            row["deal_id"],
            row["account_id"] or "",
            row["owner"] or "",
            row["stage"] + (" ⚠" if row.get("gate_missing") else ""),
            _money(row),
            f"{row['score']:.1f}",
            row["weakest"] or "–",
            row["next_step"] or "",
        ]
        table.add_row(*([str(row["rank"]), *cells, _cell(row["priority"])] if ranked else cells))
    out.print(table)


def _money(row: dict[str, Any]) -> str:
    if row.get("amount") is None:
        return "–"
    return f"{row['amount']:,.0f} {row.get('currency') or ''}".strip()


@deals_app.command("sync")
@friendly_errors
def deals_sync(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Bring deals and their stage history up to date from the CRM's Deal events (safe
    to rerun: the same events change nothing)."""
    with _service(db) as sales:
        result = sales.sync_from_events()
    if _emit(result, as_json):
        return
    out.print(
        f"{result['crm_events']:,} CRM events: {result['deals_created']:,} deals created, "
        f"{result['deals_updated']:,} updated, {result['history_rows']:,} stage moves recorded, "
        f"{result['contacts_converted']:,} contacts of won accounts marked converted"
    )
    if result["unmapped_stages"]:
        out.print(
            "CRM stages with no pipeline stage (deals put in the first stage; map them with "
            f"crm_stages): {', '.join(result['unmapped_stages'])}"
        )
    if result["conflicts"]:
        out.print(f"{result['conflicts']} CRM deal ids belong to deals created in Keepers: kept")


@deals_app.command("list")
@friendly_errors
def deals_list(
    status: Annotated[str, typer.Option("--status", help="open, won, lost or all.")] = "open",
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    limit: LimitOption = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deals with their qualification score, weakest element and next step (⚠: the stage's
    gate is not met, e.g. after a move in the CRM)."""
    with _service(db) as sales:
        rows = sales.deals(status, stage, owner, account, limit)
    if not _emit(rows, as_json):
        _deals_table(rows, f"{len(rows)} {status} deals")


@deals_app.command("show")
@friendly_errors
def deals_show(deal_id: DealId, db: DbOption = None, as_json: JsonOption = False) -> None:
    """A deal: its scorecard with evidence, score, weakest element, what the next stage's
    gate needs, and its stage history."""
    with _service(db) as sales:
        deal = sales.deal(deal_id)
    if _emit(deal, as_json):
        return
    out.print(
        f"[bold]{deal['deal_id']}[/bold] {deal['name'] or ''} — {deal['stage']} ({deal['status']})"
        f", {_money(deal)}, owner {deal['owner'] or '–'}, account {deal['account_id'] or '–'}"
    )
    _print_scorecard(deal)
    gate = deal["next_stage"]
    if gate:
        verdict = "ready" if gate["ready"] else f"needs {gate['missing']}"
        out.print(f"next stage {gate['stage']}: {verdict}")
    _print_report({"history": deal["history"]})


def _print_scorecard(deal: dict[str, Any]) -> None:
    table = Table(
        "element",
        "status",
        "evidence",
        "said by",
        "when",
        "next step",
        title=f"{deal['framework'].upper()} score {deal['score']:.1f} ({deal['band']}); "
        f"weakest: {deal['weakest'] or 'none'}",
    )
    for e in deal["scorecard"]:
        table.add_row(
            e["label"],
            e["status"],
            e["evidence"] or "",
            e["said_by"] or "",
            _cell(e["said_at"]),
            e["next_step"] or "",
        )
    out.print(table)


@deals_app.command("move")
@friendly_errors
def deals_move(
    deal_id: DealId,
    stage: Annotated[str, typer.Argument(help="The stage to move to (won and lost close it).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why it was lost.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move a deal to a stage. A stage gate that is not met refuses the move and names
    every missing element (exit 2)."""
    with _service(db) as sales:
        result = sales.move_deal(deal_id, stage, _actor(), reason)
    if _emit(result, as_json):
        return
    if not result["moved"]:
        out.print(f"deal {deal_id} is already in {stage}")
        return
    out.print(f"deal {deal_id}: {result['from_stage']} → {result['stage']} ({result['status']})")


@deals_app.command("meddic")
@friendly_errors
def deals_meddic(
    deal_id: DealId,
    element: Annotated[
        str | None, typer.Argument(help="metrics, economic_buyer, … (leave out to show).")
    ] = None,
    status: Annotated[str | None, typer.Argument(help="unknown, identified or confirmed.")] = None,
    evidence: Annotated[str | None, typer.Option("--evidence", help="What was said.")] = None,
    said_by: Annotated[str | None, typer.Option("--said-by", help="Who said it.")] = None,
    said_at: Annotated[
        str | None, typer.Option("--said-at", help="When (date or ISO time).")
    ] = None,
    contact: Annotated[
        str | None, typer.Option("--contact", help="The contact it links to (id, userId, email).")
    ] = None,
    next_step: Annotated[str | None, typer.Option("--next-step", help="What to do next.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a deal's MEDDIC scorecard, or set one element: `keepers deals meddic D-7
    champion confirmed --evidence "…" --said-by "Ana (CFO)" --contact ana@acme.com`."""
    if element is not None and status is None:
        raise InvalidInput("status: give the element's status (unknown, identified, confirmed)")
    with _service(db) as sales:
        if element is None:
            deal = sales.deal(deal_id)
            if not _emit(deal["scorecard"], as_json):
                _print_scorecard(deal)
            return
        body = {
            "status": status,
            "evidence": evidence,
            "said_by": said_by,
            "said_at": _moment(said_at, "--said-at"),
            "customer": contact,
            "next_step": next_step,
        }
        result = sales.update_meddic(
            deal_id, element, {k: v for k, v in body.items() if v is not None}, _actor()
        )
    if _emit(result, as_json):
        return
    out.print(
        f"deal {deal_id}: {element} is {result['status']}; score {result['score']:.1f}, "
        f"weakest {result['weakest'] or 'none'}"
    )


@deals_app.command("priorities")
@friendly_errors
def deals_priorities(
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner.")] = None,
    limit: LimitOption = 20,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where sales should spend time this week: open deals by amount × qualification score
    ÷ 100, each with its weakest element and next step."""
    with _service(db) as sales:
        rows = sales.priorities(owner, limit)
    if not _emit(rows, as_json):
        _deals_table(rows, "Priorities: amount × score ÷ 100", ranked=True)


@deals_app.command("pipeline")
@friendly_errors
def deals_pipeline(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Open pipeline value by stage; win rate and median cycle time by MEDDIC band."""
    with _service(db) as sales:
        report = sales.pipeline_report()
    if not _emit(report, as_json):
        _print_report(report)


@leads_app.command("score")
@friendly_errors
def leads_score(
    customer: Annotated[
        str | None,
        typer.Option("--customer", help="Explain this customer's points instead (no write)."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score every customer (fit + engagement with time decay) and store it; customers who
    reach MQL or SQL for the first time get a `Lead … Qualified` event."""
    with _service(db) as sales:
        result = sales.lead(customer) if customer else sales.score_leads()
    if _emit(result, as_json):
        return
    if customer:
        out.print(
            f"customer {result['customer_id']}: score {result['score']:.2f} = fit "
            f"{result['fit']:.2f} + engagement {result['engagement']:.2f} → {result['level']}"
        )
        _print_report({"fit": result["fit_rules"], "engagement": result["engagement_rules"]})
        return
    out.print(
        f"scored {result['scored']:,} customers: {result['mql']:,} MQL, {result['sql']:,} SQL "
        f"({result['newly_mql']:,} new MQL, {result['newly_sql']:,} new SQL)"
    )


@leads_app.command("list")
@friendly_errors
def leads_list(
    level: Annotated[
        str, typer.Option("--level", help="sql, mql, qualified (either) or all.")
    ] = "qualified",
    limit: LimitOption = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Customers by their last lead score (from `keepers leads score`), best first."""
    with _service(db) as sales:
        rows = sales.leads(level, limit)
    if _emit(rows, as_json):
        return
    table = Table("customer", "email", "fit", "engagement", "score", "level", "SQL since")
    for r in rows:
        table.add_row(
            str(r["customer_id"]),
            r["email"] or r["user_id"] or "",
            _cell(r["fit"]),
            _cell(r["engagement"]),
            _cell(r["score"]),
            r["level"],
            _cell(r["sql_at"]),
        )
    out.print(table)


__all__ = ["deals_app", "leads_app"]
