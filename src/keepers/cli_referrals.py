"""`keepers referrals …`: the referral programme from the command line.

Like every command, these run on the store directly when it is free and through the
server's API (`/api/referrals/…`) while `keepers serve` holds the DuckDB file, with the same
answers either way; `--json` prints them for machines.

`referrals_app` is created before `keepers.cli` is imported: `keepers.cli` adds it as a
sub-command at its end, so whichever of the two modules is imported first, the other finds
what it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

referrals_app = typer.Typer(
    help="The referral programme: codes, attribution, rewards, fraud checks.",
    no_args_is_help=True,
)

from rich.table import Table  # noqa: E402

from keepers.cli import (  # noqa: E402
    DbOption,
    JsonOption,
    _cell,
    _existing,
    _print_json,
    _print_report,
    _settings,
    friendly_errors,
    out,
)
from keepers.errors import InvalidInput  # noqa: E402

LimitOption = Annotated[int, typer.Option("--limit", help="At most this many rows.")]
CustomerOption = Annotated[
    str | None, typer.Option("--customer", help="Customer id, user id or email.")
]


def _referrals(db: str | None, operation: str, **params: Any) -> Any:
    """One `ReferralService` operation, here or through the server holding the store."""
    from keepers.services.backends import LocalBackend, open_backend
    from keepers.services.referrals import ReferralService

    backend = open_backend(_existing(_settings(db)))
    try:
        if isinstance(backend, LocalBackend):
            keepers = backend.keepers
            service = ReferralService(keepers.db, keepers.clock, keepers.ingest_messages)
            return getattr(service, operation)(**params)
        method, path, query, body = _route(operation, params)
        return backend._call(method, path, params=query, json=body)  # type: ignore[attr-defined]
    finally:
        backend.close()


def _route(operation: str, p: dict[str, Any]) -> tuple[str, str, dict | None, dict | None]:
    """(method, path, query, body) of a referral operation in the REST API."""
    base = "/api/referrals"
    query = {k: v for k, v in p.items() if v is not None}
    routes: dict[str, tuple[str, str, dict | None, dict | None]] = {
        "sync": ("POST", f"{base}/sync", None, {"generate_codes": p.get("generate_codes")}),
        "metrics": ("GET", base, None, None),
        "programme": ("GET", f"{base}/programme", None, None),
        "set_programme": ("PUT", f"{base}/programme", None, {"programme": p.get("body")}),
        "codes": ("GET", f"{base}/codes", query, None),
        "ensure_codes": ("POST", f"{base}/codes/generate", None, {"for_customers": p.get("who")}),
        "set_code": ("POST", f"{base}/codes", None, query),
        "disable_code": (
            "DELETE",
            f"{base}/codes/{quote(str(p.get('code')), safe='')}",
            None,
            None,
        ),
        "rewards": ("GET", f"{base}/rewards", query, None),
        "pay": (
            "POST",
            f"{base}/rewards/pay",
            None,
            {
                "reward_ids": p.get("reward_ids"),
                "referrer": p.get("referrer"),
                "all": p.get("all_earned", False),
                "reference": p.get("reference"),
            },
        ),
        "void": ("POST", f"{base}/rewards/void", None, query),
        "leaderboard": ("GET", f"{base}/leaderboard", query, None),
        "fraud": ("GET", f"{base}/fraud", query, None),
    }
    return routes[operation]


@referrals_app.command("sync")
@friendly_errors
def referrals_sync(
    generate_codes: Annotated[
        bool,
        typer.Option("--generate-codes", help="Also give customers without a code one."),
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Bring codes, attribution, fraud checks and the reward ledger up to date (safe to
    run as often as you like: a second run changes nothing)."""
    result = _referrals(db, "sync", generate_codes=generate_codes)
    if as_json:
        _print_json(result)
        return
    r = result["rewards"]
    flags = sum(result["fraud_flags"].values()) + result["own_code_attempts"]
    out.print(
        f"codes: {result['codes']['adopted']} adopted, {result['codes']['generated']} generated; "
        f"{result['attributed']} customers attributed; {flags} fraud flags; rewards: "
        f"{r['opened']} opened, {r['earned']} earned, {r['voided_refunded']} void (refund), "
        f"{r['voided_fraud'] + r['flagged']} void (fraud), {r['capped']} over the cap"
    )


@referrals_app.command("codes")
@friendly_errors
def referrals_codes(
    customer: CustomerOption = None,
    set_code: Annotated[
        str | None,
        typer.Option("--set", help="With --customer: give them this code (or 'new')."),
    ] = None,
    generate: Annotated[
        bool, typer.Option("--generate", help="Give every customer without a code one.")
    ] = False,
    who: Annotated[
        str | None,
        typer.Option("--for", help="With --generate: identified, buyers or all customers."),
    ] = None,
    disable: Annotated[
        str | None, typer.Option("--disable", help="Stop this code from attributing anyone.")
    ] = None,
    limit: LimitOption = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Referral codes with how many customers each brought; generate, set or disable."""
    if set_code is not None:
        if customer is None:
            raise InvalidInput("--set needs --customer: whose code is it?")
        code = None if set_code.lower() == "new" else set_code
        result = _referrals(db, "set_code", customer=customer, code=code)
    elif generate:
        result = _referrals(db, "ensure_codes", who=who)
    elif disable is not None:
        result = _referrals(db, "disable_code", code=disable)
    else:
        result = _referrals(db, "codes", customer=customer, limit=limit)
    if as_json:
        _print_json(result)
        return
    if "rows" not in result:
        out.print("  ".join(f"{k}: {_cell(v)}" for k, v in result.items()))
        return
    _rows(result["rows"], ("code", "customer_id", "user_id", "source", "referred", "link"))
    out.print(f"{result['codes']:,} codes in all")


@referrals_app.command("leaderboard")
@friendly_errors
def referrals_leaderboard(
    limit: Annotated[int, typer.Option("--limit", help="How many referrers.")] = 20,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Referrers ranked by friends who bought, then the revenue those friends brought."""
    result = _referrals(db, "leaderboard", limit=limit)
    if as_json:
        _print_json(result)
        return
    columns = ("rank", "user_id", "code", "invites", "referred", "converted", "revenue")
    _rows(result["rows"], (*columns, "earned_amount", "currency", "flagged"))


@referrals_app.command("rewards")
@friendly_errors
def referrals_rewards(
    status: Annotated[
        str | None, typer.Option("--status", help="pending, earned, paid or void.")
    ] = None,
    referrer: Annotated[
        str | None, typer.Option("--referrer", help="Only this referrer's rewards.")
    ] = None,
    limit: LimitOption = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The reward ledger, newest first: status, reason, amounts, the moments it moved."""
    result = _referrals(db, "rewards", status=status, referrer=referrer, limit=limit)
    if as_json:
        _print_json(result)
        return
    out.print("  ".join(f"{k}: {v:,}" for k, v in result["statuses"].items()))
    columns = ("reward_id", "status", "reason", "referrer_user_id", "referred_user_id")
    _rows(result["rows"], (*columns, "amount", "currency", "points", "eligible_at"))


@referrals_app.command("pay")
@friendly_errors
def referrals_pay(
    reward_ids: Annotated[
        list[str] | None, typer.Argument(help="Reward ids to mark paid.", show_default=False)
    ] = None,
    referrer: Annotated[
        str | None, typer.Option("--referrer", help="Pay all of this referrer's earned rewards.")
    ] = None,
    all_earned: Annotated[bool, typer.Option("--all", help="Pay every earned reward.")] = False,
    reference: Annotated[
        str | None, typer.Option("--reference", help="Payout reference, e.g. a batch id.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mark earned rewards paid (after you paid them: Keepers moves no money)."""
    result = _referrals(
        db,
        "pay",
        reward_ids=reward_ids or None,
        referrer=referrer,
        all_earned=all_earned,
        reference=reference,
    )
    if as_json:
        _print_json(result)
        return
    out.print(f"{result['paid']} rewards marked paid")
    _rows(result["rewards"], ("reward_id", "customer_id", "amount", "currency", "points"))


@referrals_app.command("void")
@friendly_errors
def referrals_void(
    reward_ids: Annotated[list[str], typer.Argument(help="Reward ids to void.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept on each reward.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Void pending or earned rewards by hand."""
    result = _referrals(db, "void", reward_ids=reward_ids, reason=reason)
    if as_json:
        _print_json(result)
        return
    out.print(f"{result['voided']} rewards void: {', '.join(result['reward_ids'])}")


@referrals_app.command("fraud")
@friendly_errors
def referrals_fraud(
    limit: LimitOption = 100, db: DbOption = None, as_json: JsonOption = False
) -> None:
    """Fraud flags: own code, same email, device, IP or payment fingerprint, cap."""
    result = _referrals(db, "fraud", limit=limit)
    if as_json:
        _print_json(result)
        return
    out.print("  ".join(f"{k}: {v:,}" for k, v in result["checks"].items()) or "no flags")
    columns = ("check_name", "detail", "referred_user_id", "referrer_user_id", "reward_status")
    _rows(result["rows"], columns)


@referrals_app.command("metrics")
@friendly_errors
def referrals_metrics(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Programme totals: invites, referred, converted, revenue, rewards by status."""
    result = _referrals(db, "metrics")
    if as_json:
        _print_json(result)
        return
    _print_report(result)


@referrals_app.command("programme")
@friendly_errors
def referrals_programme(
    set_file: Annotated[
        Path | None, typer.Option("--set", help="Save new rules from a YAML or JSON file.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The reward rules, fraud checks and code settings in force — or new ones saved."""
    if set_file is not None:
        import yaml

        try:
            body = yaml.safe_load(set_file.read_text())
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{set_file.name} is not valid YAML or JSON: {exc}") from None
        result = _referrals(db, "set_programme", body=body, actor="cli")
    else:
        result = _referrals(db, "programme")
    if as_json or set_file is None:
        _print_json(result)
        return
    out.print(
        f"programme version {result['version']}" + ("" if result["saved"] else " (unchanged)")
    )


def _rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    shown = [c for c in columns if any(c in r for r in rows)] or list(columns)
    table = Table(*shown)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in shown))
    out.print(table)
