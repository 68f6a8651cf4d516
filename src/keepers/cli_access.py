"""`keepers users …`, `keepers tokens …` and `keepers customers export|erase`: access and
privacy from the command line.

These commands open the store directly (whoever can read the database file or URL is its
administrator, so they act as admin and are audited as `cli:<login name>`). While
`keepers serve` holds a DuckDB file they say so in one line; use the API then
(`/api/users`, `/api/tokens`, `/api/customers/{customer}/export`, `DELETE
/api/customers/{customer}`) with the admin token.

The three Typer apps are created before `keepers.cli` is imported, because `keepers.cli`
imports them back to add them as sub-commands (as `keepers.cli_sales` does), and `keepers
audit` adds itself to `keepers.cli.app`: whichever module is imported first, the other
finds what it needs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

users_app = typer.Typer(help="People who log in to the dashboard and API.", no_args_is_help=True)
tokens_app = typer.Typer(
    help="API tokens: like a login for scripts, with a role.", no_args_is_help=True
)
customers_app = typer.Typer(
    help="One customer's personal data: GDPR export and erasure.", no_args_is_help=True
)

from rich.table import Table  # noqa: E402

from keepers.cli import (  # noqa: E402
    DbOption,
    JsonOption,
    _actor,
    _existing,
    _print_json,
    _settings,
    app,
    friendly_errors,
    out,
)
from keepers.errors import InvalidInput  # noqa: E402


@contextmanager
def _access(db: str | None, *, must_exist: bool = True) -> Iterator[Any]:
    """The AccessService on the store (opened here, closed after)."""
    from keepers.services.access import AccessService
    from keepers.services.keepers import Keepers

    settings = _existing(_settings(db)) if must_exist else _settings(db)
    keepers = Keepers.open(settings)
    try:
        yield AccessService(keepers.db, keepers.clock)
    finally:
        keepers.close()


def _me() -> Any:
    from keepers.services.access import cli_principal

    return cli_principal(_actor())


# --- users ---------------------------------------------------------------------------------------


@users_app.command("create")
@friendly_errors
def users_create(
    email: Annotated[str, typer.Argument(help="The person's email; they log in with it.")],
    role: Annotated[
        str, typer.Option("--role", help="admin, marketing, sales, finance, support or analyst.")
    ],
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from standard input (one line)."),
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a user. Without --password-stdin a password is generated and shown once."""
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin: no password on standard input")
    with _access(db, must_exist=False) as access:
        result = access.create_user(email, role, password, by=_me())
    if as_json:
        _print_json(result)
        return
    user = result["user"]
    out.print(f"user {user['email']} ({user['role']}) created: {user['user_id']}", highlight=False)
    if result["password"]:
        out.print(
            f"password: [bold]{result['password']}[/bold]\nIt is shown only now; "
            "hand it over safely.",
            highlight=False,
        )


@users_app.command("list")
@friendly_errors
def users_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Users with their role, creation and whether they are disabled."""
    with _access(db) as access:
        users = access.list_users(by=_me())
    if as_json:
        _print_json(users)
        return
    table = Table("user id", "email", "role", "created", "by", "disabled")
    for user in users:
        table.add_row(
            user["user_id"],
            user["email"],
            user["role"],
            user["created_at"][:19],
            user["created_by"],
            (user["disabled_at"] or "")[:19],
        )
    out.print(table)


@friendly_errors
def audit(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many entries.")] = 50,
    action: Annotated[
        str | None, typer.Option(help="Only actions starting with this, e.g. 'user.'.")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the hash chain: was any entry changed?")
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The audit log, newest first: who changed what, when, from where (and refusals)."""
    with _access(db) as access:
        result: Any = access.verify_audit() if verify else access.audit(limit=limit, action=action)
    if as_json:
        _print_json(result)
        return
    if verify:
        state = "intact" if result["ok"] else f"CHANGED at entry {result['broken_at']}"
        out.print(f"{result['rows']:,} audit entries; hash chain {state}")
        if not result["ok"]:
            raise typer.Exit(1)
        return
    table = Table("when", "who", "role", "action", "target", "outcome")
    for e in result:
        table.add_row(
            e["logged_at"][:19], e["actor"], e["role"], e["action"], e["target"] or "", e["outcome"]
        )
    out.print(table)


app.command("audit")(audit)


@users_app.command("disable")
@friendly_errors
def users_disable(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Disable a user: they cannot log in, and their sessions end now."""
    with _access(db) as access:
        result = access.disable_user(user, by=_me())
    if as_json:
        _print_json(result)
        return
    done = "disabled" if result["changed"] else "was already disabled:"
    out.print(f"{done} {result['user']['email']}", highlight=False)


# --- API tokens ----------------------------------------------------------------------------------


@tokens_app.command("create")
@friendly_errors
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="What uses it, e.g. 'BI export'.")],
    role: Annotated[str, typer.Option("--role", help="The role it acts with.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API token with a role; it is shown once (only its hash is stored)."""
    with _access(db, must_exist=False) as access:
        result = access.create_token(name, role, by=_me())
    if as_json:
        _print_json(result)
        return
    out.print(
        f"API token {result['name']!r} ({result['token_id']}, role {result['role']}): "
        f"[bold]{result['token']}[/bold]\nIt is shown only now; send it as "
        "'Authorization: Bearer <token>'.",
        highlight=False,
    )


@tokens_app.command("list")
@friendly_errors
def tokens_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """API tokens: id, name, role, first characters, created, revoked."""
    with _access(db) as access:
        tokens = access.list_tokens(by=_me())
    if as_json:
        _print_json(tokens)
        return
    table = Table("token id", "name", "role", "starts with", "created", "revoked")
    for token in tokens:
        table.add_row(
            token["token_id"],
            token["name"],
            token["role"],
            token["prefix"] + "…",
            token["created_at"][:19],
            (token["revoked_at"] or "")[:19],
        )
    out.print(table)


@tokens_app.command("revoke")
@friendly_errors
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token id (tok_…).")],
    db: DbOption = None,
) -> None:
    """Revoke an API token; requests using it get 401 at once."""
    with _access(db) as access:
        access.revoke_token(token_id, by=_me())
    out.print(f"revoked {token_id}")


# --- customers: GDPR -----------------------------------------------------------------------------

CustomerArg = Annotated[str, typer.Argument(help="Customer id, userId, anonymousId or email.")]


@customers_app.command("export")
@friendly_errors
def customers_export(
    customer: CustomerArg,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write to this file (readable by you only)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Everything stored about one customer, as JSON (GDPR access and portability)."""
    with _access(db) as access:
        data = access.export_customer(customer, by=_me())
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    rows = sum(len(rows) for rows in data["tables"].values())
    out.print(f"customer {data['customer_id']}: {rows:,} rows written to {output}")


@customers_app.command("erase")
@friendly_errors
def customers_erase(
    customer: CustomerArg,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact/--no-compact",
            help="DuckDB: rewrite the file afterwards so no byte of the customer remains.",
        ),
    ] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase a customer from every table, the event log included (GDPR erasure). Their
    userIds, anonymousIds and emails are refused at ingest from now on."""
    from keepers.access.gdpr import compact_if_pending

    if not yes:
        raise InvalidInput("erasing cannot be undone: add --yes to confirm")
    settings = _existing(_settings(db))
    with _access(db) as access:
        result = access.erase_customer(customer, by=_me())
    if compact and not settings.is_postgres:
        result["storage"]["compacted"] = compact_if_pending(settings.database_url) is not None
    if as_json:
        _print_json(result)
        return
    rows = sum(result["rows"].values())
    ids = result["identifiers"]
    out.print(
        f"erased customer {result['customer_id']} ({len(result['customers'])} profile(s)): "
        f"{rows:,} rows; {ids['user']} userId(s), {ids['anon']} anonymousId(s) and "
        f"{ids['email']} email(s) are refused from now on; "
        f"{result['suppressions_kept']} suppression(s) kept",
        highlight=False,
    )
