"""The `keepers` command line. Every command prints one readable line and exits non-zero on
bad input or a problem it cannot fix — never a traceback (set KEEPERS_DEBUG=1 to see one).

Exit codes: 0 success · 1 the store or server is unavailable / locked · 2 bad input
(including a customer, key or segment that does not exist) · 3 an import finished but some
rows were rejected (they are listed with line numbers).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keepers import __version__
from keepers.errors import InvalidInput, KeepersError, NotFound, RuleError
from keepers.settings import Settings, load_settings

app = typer.Typer(
    name="keepers",
    help="Keepers — self-hosted customer lifecycle management.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Write keys that sources use to send events.", no_args_is_help=True)
import_app = typer.Typer(help="Import existing data from files.", no_args_is_help=True)
segments_app = typer.Typer(
    help="Segments: named rules over traits, stages and events.", no_args_is_help=True
)
definitions_app = typer.Typer(
    help="The stage model, segments and traits as one versioned file.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(import_app, name="import")
app.add_typer(segments_app, name="segments")
app.add_typer(definitions_app, name="definitions")
clv_app = typer.Typer(
    help="Customer lifetime value models (BG/NBD, Pareto/NBD, Gamma-Gamma).", no_args_is_help=True
)
app.add_typer(clv_app, name="clv")
journeys_app = typer.Typer(
    help="Journeys: triggered sequences of waits, branches, emails and webhooks.",
    no_args_is_help=True,
)
app.add_typer(journeys_app, name="journeys")

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="DuckDB file path or postgresql:// URL "
        "[default: KEEPERS_DATABASE_URL or keepers.duckdb].",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
MapOption = Annotated[
    list[str] | None,
    typer.Option(
        "--map", help="Column mapping OURS=THEIRS, e.g. --map order_id='Order No'. Repeatable."
    ),
]
IMPORT_SOURCE = "import"


def friendly_errors(func: F) -> F:
    """Translate every failure into one line on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("KEEPERS_DEBUG"):
                raise
            code, message = _describe(exc)
            err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _describe(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, RuleError) and exc.source and "column" not in exc.message:
        return 2, f"{exc.message} (column {exc.position + 1} of: {exc.source})"
    if isinstance(exc, InvalidInput | NotFound):
        return 2, exc.message
    if isinstance(exc, KeepersError):
        return 1, exc.message
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        return 2, f"cannot read {exc.filename}: {exc.strerror}"
    if type(exc).__module__.startswith(("duckdb", "_duckdb")):
        return 1, f"the database could not be opened or read: {str(exc).splitlines()[0]}"
    return 1, f"unexpected {type(exc).__name__}: {exc} (set KEEPERS_DEBUG=1 for details)"


def _settings(db: str | None, **extra: Any) -> Settings:
    return load_settings(database_url=db, **extra)


def _existing(settings: Settings) -> Settings:
    """Read-only commands must not create an empty database at a mistyped path."""
    if not settings.is_postgres and not Path(settings.database_url).exists():
        raise InvalidInput(
            f"no database at {settings.database_url}; create one with `keepers demo`, "
            "`keepers serve` or `keepers import`, or point --db / KEEPERS_DATABASE_URL at it"
        )
    return settings


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


# --- serve / status / migrate ------------------------------------------------------------------


@app.command()
@friendly_errors
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8000].")] = None,
    db: DbOption = None,
) -> None:
    """Serve the tracking API (/v1), the management API (/api) and the docs (/docs)."""
    from keepers.services.keepers import Keepers

    settings = _settings(db, host=host, port=port)
    _serve(settings, Keepers.open(settings))


def _check_port_free(host: str, port: int, keepers: Any) -> None:
    """Say so in one line, before starting, when the address is taken."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            keepers.close()
            raise InvalidInput(
                f"cannot listen on {host}:{port} ({exc.strerror}); is Keepers already "
                "running there? Choose another port with --port or KEEPERS_PORT"
            ) from None


def _tune_gc() -> None:
    """Ingest parses hundreds of small dicts per request; with the default thresholds the
    cyclic GC runs constantly and rescans every long-lived object. Freeze what exists at
    startup and collect less often (measured in bench/ingest.py)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 50, 100)


FIRST_ADMIN = "admin@keepers.local"


def _serve(settings: Settings, keepers: Any, login: tuple[str, str] | None = None) -> None:
    import uvicorn

    from keepers.services.access import AccessService, cli_principal
    from keepers.services.backends import write_server_info
    from keepers.web.app import create_app

    _check_port_free(settings.host, settings.port, keepers)
    access = AccessService(keepers.db, keepers.clock)
    if login is None and not access.has_users():  # the first start: one admin to sign in
        login = (FIRST_ADMIN, access.reset_user(FIRST_ADMIN, "admin", by=cli_principal("serve")))
    web = create_app(settings, keepers)
    _tune_gc()
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{shown}:{settings.port}"
    info = write_server_info(settings.database_url, url, web.state.admin_token)
    out.print(
        f"Keepers {__version__} serving {settings.database_url} on [bold]{url}[/bold] "
        f"(API docs: {url}/docs). Dashboard: {url}/"
        + (
            f" — sign in as [bold]{login[0]}[/bold] with the password [bold]{login[1]}[/bold] "
            "(shown once; manage people with `keepers users …`)."
            if login
            else " — sign in with your user (`keepers users create EMAIL --role ROLE`)."
        )
        + " Press Ctrl+C to stop.",
        highlight=False,
        soft_wrap=True,
    )
    try:
        uvicorn.run(web, host=settings.host, port=settings.port, log_level=settings.log_level)
    finally:
        keepers.close()
        if info is not None:
            info.unlink(missing_ok=True)


@app.command()
@friendly_errors
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Counts of customers, events, orders and revenue in the store."""
    from keepers.services.backends import open_backend

    backend = open_backend(_existing(_settings(db)))
    try:
        summary = backend.status()
    finally:
        backend.close()
    if as_json:
        _print_json(summary)
        return
    _summary_table(summary, "Keepers status")


def _summary_table(summary: dict[str, Any], title: str) -> None:
    out.print(f"[bold]{title}[/bold]", highlight=False)
    table = Table(show_header=False)
    for key, value in summary.items():
        shown = (
            "yes"
            if value is True
            else "no"
            if value is False
            else (
                f"{value:,.2f}"
                if isinstance(value, float)
                else (f"{value:,}" if isinstance(value, int) else str(value))
            )
        )
        table.add_row(key.replace("_", " "), shown)
    out.print(table)


@app.command()
@friendly_errors
def migrate(db: DbOption = None) -> None:
    """Bring the database schema up to date (every command also does this on open)."""
    from keepers.store import open_database
    from keepers.store.migrations import migrate as run_migrations

    database = open_database(_settings(db).database_url)
    try:
        applied = run_migrations(database)
    finally:
        database.close()
    out.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


# --- keys ---------------------------------------------------------------------------------------


@keys_app.command("create")
@friendly_errors
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who will use the key, e.g. 'web shop'.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a write key; it is shown once (only its hash is stored)."""
    from keepers.services.backends import open_backend

    if not name.strip():
        raise InvalidInput("--name must not be empty")
    backend = open_backend(_settings(db))
    try:
        created = backend.create_write_key(name.strip())
    finally:
        backend.close()
    if as_json:
        _print_json(created)
    else:
        out.print(
            f"write key for {created['name']!r} ({created['key_id']}): "
            f"[bold]{created['write_key']}[/bold]\nIt is shown only now; keep it.",
            highlight=False,
        )


@keys_app.command("list")
@friendly_errors
def keys_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List write keys (id, name, first characters, created, revoked)."""
    from keepers.services.backends import open_backend

    backend = open_backend(_existing(_settings(db)))
    try:
        keys = backend.list_write_keys()
    finally:
        backend.close()
    if as_json:
        _print_json(keys)
        return
    table = Table("key id", "name", "starts with", "created", "revoked")
    for key in keys:
        table.add_row(
            key["key_id"],
            key["name"],
            key["prefix"] + "…",
            key["created_at"],
            key["revoked_at"] or "",
        )
    out.print(table)


@keys_app.command("revoke")
@friendly_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id to revoke.")], db: DbOption = None
) -> None:
    """Revoke a write key; requests using it get 401 within a second."""
    from keepers.errors import NotFound
    from keepers.services.backends import LocalBackend
    from keepers.services.keepers import Keepers

    keepers = Keepers.open(_settings(db))
    try:
        if not keepers.revoke_write_key(key_id):
            raise NotFound(f"no active write key {key_id!r}")
        LocalBackend(keepers)._audit("key.revoke", f"key:{key_id}")
    finally:
        keepers.close()
    out.print(f"revoked {key_id}")


# --- import ---------------------------------------------------------------------------------------


def _run_import(
    kind: str, path: Path, chunks: Iterator[Any], db: str | None, as_json: bool
) -> None:
    from keepers.ingest.files import count_data_lines
    from keepers.services.backends import open_backend

    total = count_data_lines(path)
    backend = open_backend(_settings(db))
    stored = duplicates = rows = 0
    problems: list[tuple[int, str]] = []
    try:
        with _progress(as_json) as progress:
            task = progress.add_task(f"importing {kind}", total=total)
            for chunk in chunks:
                problems.extend((e.line, e.reason) for e in chunk.errors)
                if chunk.messages:
                    report = backend.ingest(chunk.messages, IMPORT_SOURCE)
                    stored += report.stored
                    duplicates += report.duplicates
                    problems.extend((chunk.lines[i], msg) for i, _, msg in report.rejected)
                rows += chunk.lines_read
                progress.advance(task, chunk.lines_read)
    finally:
        backend.close()
    problems.sort()
    _import_summary(kind, path, rows, stored, duplicates, problems, as_json)
    if problems:
        raise typer.Exit(3)


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )


def _import_summary(
    kind: str,
    path: Path,
    rows: int,
    stored: int,
    duplicates: int,
    problems: list[tuple[int, str]],
    as_json: bool,
) -> None:
    if as_json:
        _print_json(
            {
                "file": str(path),
                "kind": kind,
                "rows": rows,
                "stored": stored,
                "duplicates": duplicates,
                "rejected": [{"line": line, "reason": reason} for line, reason in problems],
            }
        )
        return
    out.print(
        f"{path}: {rows:,} rows read, {stored:,} {kind} messages stored, "
        f"{duplicates:,} already present, {len(problems):,} rows rejected",
        highlight=False,
    )
    for line, reason in problems[:50]:
        err.print(f"  line {line}: {reason}", highlight=False, markup=False)
    if len(problems) > 50:
        err.print(f"  … and {len(problems) - 50:,} more (use --json for all)")


@import_app.command("customers")
@friendly_errors
def import_customers(
    file: Annotated[Path, typer.Argument(help="CSV with one customer per row.")],
    mapping: MapOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import customers from CSV (id, email, names, phone, created_at, any other column)."""
    from keepers.ingest.files import parse_mapping, read_customers_csv

    chunks = read_customers_csv(file, parse_mapping(mapping or []))
    _run_import("customers", file, chunks, db, as_json)


@import_app.command("orders")
@friendly_errors
def import_orders(
    file: Annotated[Path, typer.Argument(help="CSV, one row per order or per line item.")],
    mapping: MapOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import orders from CSV; rows sharing an order id are line items of one order."""
    from keepers.ingest.files import parse_mapping, read_orders_csv

    chunks = read_orders_csv(file, parse_mapping(mapping or []))
    _run_import("orders", file, chunks, db, as_json)


@import_app.command("events")
@friendly_errors
def import_events(
    file: Annotated[Path, typer.Argument(help="JSON lines, one Segment message per line.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import Segment-spec events from a JSON-lines file."""
    from keepers.ingest.files import read_events_jsonl

    _run_import("events", file, read_events_jsonl(file), db, as_json)


# --- demo -----------------------------------------------------------------------------------------


@app.command()
@friendly_errors
def demo(
    customers: Annotated[
        int, typer.Option(min=10, max=5_000_000, help="How many customers to generate.")
    ] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same business.")] = 7,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the API afterwards.")
    ] = True,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Delete earlier demo data first (only when the database holds nothing else).",
        ),
    ] = False,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8000].")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Generate the demo shop into the database, print a summary, then serve it."""
    from keepers.errors import DatabaseLocked
    from keepers.services.demo import load_demo

    settings = _settings(db, host=host, port=port)
    _tune_gc()
    try:
        keepers, summary, write_key = load_demo(
            settings, customers=customers, seed=seed, fresh=fresh, progress=_progress(as_json)
        )
    except DatabaseLocked:
        raise DatabaseLocked(
            f"{settings.database_url} is in use by a running Keepers server (perhaps an "
            "earlier `make demo`); stop it with Ctrl+C, or give this demo its own file with --db"
        ) from None
    login = summary.pop("login")
    if as_json:
        _print_json({**summary, "write_key": write_key, "login": login})
    else:
        lifecycle, numbers = summary.pop("lifecycle"), summary.pop("headline")
        journeys = summary.pop("journeys", [])
        deals, referrals = summary.pop("deals"), summary.pop("referrals")
        _summary_table(summary, f"Demo business ({customers:,} customers, seed {seed})")
        _stages_tables(lifecycle)
        _headline(numbers)
        out.print(
            f"deals: {deals['deals']:,} ({deals['open']:,} open); referrals: "
            f"{referrals['referred']:,} customers referred by {referrals['referrers']:,} "
            f"referrers, {referrals['converted']:,} bought — see `keepers deals priorities`, "
            "`keepers referrals leaderboard`, `keepers report nps`",
            highlight=False,
        )
        for j in journeys:
            out.print(
                f"journey [bold]{j['journey']}[/bold]: {j['entered']:,} entered, "
                f"{j['active']:,} active (emails wait for KEEPERS_SMTP_HOST)",
                highlight=False,
            )
        if write_key:
            out.print(f"write key 'demo': [bold]{write_key}[/bold] (shown once)", highlight=False)
        out.print(
            f"dashboard login: [bold]{login['email']}[/bold] / [bold]{login['password']}[/bold]",
            highlight=False,
        )
    if serve_after:
        _serve(settings, keepers, (login["email"], login["password"]))
    else:
        keepers.close()


# --- lifecycle ------------------------------------------------------------------------------------


def _moment(value: str | None, option: str) -> datetime | None:
    """A date or ISO time from the command line, in UTC when no zone is given."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(
            f"{option}: '{value}' is not a date; use YYYY-MM-DD or an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _actor() -> str:
    """Who made a change from the command line, for the definitions' history."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _lifecycle(db: str | None, operation: str, **params: Any) -> Any:
    from keepers.services.backends import open_backend

    backend = open_backend(_existing(_settings(db)))
    try:
        return backend.lifecycle(operation, **params)
    finally:
        backend.close()


@app.command()
@friendly_errors
def compute(
    full: Annotated[
        bool, typer.Option("--full", help="Recompute every customer, not only what changed.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Show the state at this date (YYYY-MM-DD or ISO time); writes nothing."
        ),
    ] = None,
    backfill: Annotated[
        bool, typer.Option("--backfill", help="Rebuild stage history from --since to now.")
    ] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="Where a backfill starts (YYYY-MM-DD).")
    ] = None,
    every: Annotated[
        str, typer.Option("--every", help="Backfill step: day, week or month.")
    ] = "week",
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="database (DuckDB/PostgreSQL itself) or spark (KEEPERS_SPARK_MASTER)."
        ),
    ] = "database",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compute traits, stages and segments (incremental by default)."""
    if backfill and since is None:
        raise InvalidInput("--backfill needs --since DATE (where the history should start)")
    if since is not None and not backfill:
        raise InvalidInput("--since only applies with --backfill")
    params: dict[str, Any] = {"full": full, "as_of": _moment(as_of, "--as-of")}
    if engine != "database":
        params["engine"] = engine
    if backfill:
        params.update(backfill_since=_moment(since, "--since"), every=every)
    result = _lifecycle(db, "compute", **params)
    if as_json:
        _print_json(result)
        return
    _compute_summary(result)


def _compute_summary(result: dict[str, Any]) -> None:
    if "steps" in result:
        title = f"Backfill from {result['since'][:10]}, every {result['every']}"
        facts = {k: result[k] for k in ("steps", "stage_moves", "segment_changes")}
    elif not result.get("written"):
        title = f"State as of {result['as_of']} (nothing written)"
        facts = {"customers": result["customers"]}
    else:
        title = f"Compute run {result['run_id']} ({result['mode']})"
        keys = ("customers", "recomputed", "stage_moves", "segment_changes", "seconds")
        facts = {k: result[k] for k in keys}
    _summary_table(facts, title)
    _counts_table("stage", result["stages"])
    if result.get("segments"):
        _counts_table("segment", result["segments"])


def _counts_table(what: str, counts: dict[str, int]) -> None:
    table = Table(what, "customers")
    for key, n in counts.items():
        table.add_row(key, f"{n:,}")
    out.print(table)


@app.command()
@friendly_errors
def stages(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Customers per lifecycle stage, in funnel order, and the moves between stages."""
    result = _lifecycle(db, "stages")
    if as_json:
        _print_json(result)
        return
    _stages_tables(result)


def _stages_tables(result: dict[str, Any]) -> None:
    table = Table("stage", "label", "customers", "share", title="Lifecycle stages")
    for row in result["stages"]:
        table.add_row(row["stage"], row["label"], f"{row['customers']:,}", f"{row['share']:.1%}")
    out.print(table)
    if result["moves"]:
        moves = Table("from", "to", "customers", title="Stage moves (all time)")
        for move in result["moves"][:25]:
            moves.add_row(move["from"], move["to"], f"{move['customers']:,}")
        out.print(moves)


@app.command()
@friendly_errors
def explain(
    customer: Annotated[str, typer.Argument(help="Customer id, userId, anonymousId or email.")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Explain the state at this date.")
    ] = None,
    scores: Annotated[
        bool,
        typer.Option(
            "--scores",
            help="Also every score: health with its components, P(alive), RFM, CLV, "
            "expected orders.",
        ),
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Why a customer is in their stage and segments: every rule with the values it read."""
    result = _lifecycle(
        db, "explain", customer=customer, as_of=_moment(as_of, "--as-of"), scores=scores
    )
    if as_json:
        _print_json(result)
        return
    who = result["customer"]
    name = who["email"] or who["user_id"] or who["anonymous_id"]
    if not result["exists"]:
        out.print(f"customer {who['customer_id']} ({name}) had no activity by {result['as_of']}")
        return
    out.print(
        f"[bold]{name}[/bold] (customer {who['customer_id']}) is in stage "
        f"[bold]{result['stage']}[/bold] as of {result['as_of'][:19]}",
        highlight=False,
    )
    for field, why in result.get("missing", {}).items():
        out.print(f"[yellow]{field} has no value on this day: {why}[/yellow]", highlight=False)
    for rule in result["stage_rules"]:
        _print_rule(rule["stage"], rule)
        if rule["matched"]:
            break
    out.print("[bold]segments[/bold]")
    for rule in result["segments"]:
        _print_rule(rule["segment"], rule)
    if "scores" in result:
        _print_scores(result["scores"])


def _print_scores(scores: dict[str, Any]) -> None:
    out.print(f"[bold]scores[/bold]\n health_score = {scores['health_score']}")
    for part in scores["health"]:
        out.print(
            f"   {part['label']}: {part['rule']} = {part['value']} → {part['points']} points "
            f"(weight {part['weight']:g})",
            highlight=False,
        )
    for name, value in scores.items():
        if name not in ("health_score", "health"):
            out.print(f" {name} = {value}", highlight=False)
    if "churn_risk" not in scores:
        out.print(
            " churn_risk, persona: scored once a day when a rule or the dashboard needs them "
            "(`keepers report churn-risk`, `keepers report personas` show them now)",
            highlight=False,
        )


def _print_rule(name: str, rule: dict[str, Any]) -> None:
    mark = "[green]✓[/green]" if rule["matched"] else "[red]✗[/red]"
    out.print(f" {mark} {name}: {rule['rule']}", highlight=False)
    for term in rule["conditions"]:
        reads = ", ".join(f"{k} = {v}" for k, v in term["reads"].items())
        value = {True: "true", False: "false", None: "unknown"}.get(term["value"], term["value"])
        out.print(f"     {term['condition']} → {value}" + (f"  ({reads})" if reads else ""))


@segments_app.command("list")
@friendly_errors
def segments_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every segment with its rule and current size."""
    result = _lifecycle(db, "segments_list")
    if as_json:
        _print_json(result)
        return
    table = Table("segment", "customers", "rule")
    for row in result:
        table.add_row(row["key"], f"{row['customers']:,}", row["rule"])
    out.print(table)


@segments_app.command("show")
@friendly_errors
def segments_show(
    key: Annotated[str, typer.Argument(help="The segment key.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A segment's definition, size and most recent members."""
    result = _lifecycle(db, "segment_show", key=key)
    if as_json:
        _print_json(result)
        return
    out.print(f"[bold]{result['key']}[/bold]: {result['rule']} — {result['size']:,} customers")
    _sample_table(result["sample"])


def _sample_table(sample: list[dict[str, Any]]) -> None:
    if not sample:
        return
    table = Table(*sample[0].keys())
    for row in sample:
        table.add_row(*(str(v) if v is not None else "" for v in row.values()))
    out.print(table)


RuleOption = Annotated[str, typer.Option("--rule", help='A rule, e.g. "orders >= 2".')]


@segments_app.command("create")
@friendly_errors
def segments_create(
    key: Annotated[str, typer.Argument(help="Key: lowercase letters, digits, '_'.")],
    rule: RuleOption,
    label: Annotated[str | None, typer.Option(help="A name for people.")] = None,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create or change a segment; members are computed at once."""
    result = _lifecycle(
        db,
        "segment_save",
        key=key,
        rule=rule,
        label=label,
        description=description,
        actor=_actor(),
    )
    if as_json:
        _print_json(result)
        return
    size = result["compute"]["segments"].get(key, 0)
    out.print(f"{result['summary']} (version {result['version']}): {size:,} customers")


@segments_app.command("delete")
@friendly_errors
def segments_delete(
    key: Annotated[str, typer.Argument(help="The segment key.")],
    db: DbOption = None,
) -> None:
    """Delete a segment; its members exit it (recorded)."""
    result = _lifecycle(db, "segment_delete", key=key, actor=_actor())
    out.print(f"{result['summary']} (version {result['version']})")


@segments_app.command("preview")
@friendly_errors
def segments_preview(
    rule: RuleOption,
    sample: Annotated[int, typer.Option(min=0, max=1000, help="How many to show.")] = 10,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """How many customers a rule selects right now, and a sample — nothing is saved."""
    result = _lifecycle(db, "segment_preview", rule=rule, sample=sample)
    if as_json:
        _print_json(result)
        return
    out.print(f"{result['customers']:,} of {result['of']:,} customers match: {rule}")
    _sample_table(result["sample"])


@definitions_app.command("export")
@friendly_errors
def definitions_export(
    file: Annotated[
        Path | None, typer.Argument(help="Write to this YAML file instead of the screen.")
    ] = None,
    db: DbOption = None,
) -> None:
    """The definitions in force, as YAML (keep it in git; change it; apply it)."""
    import yaml

    result = _lifecycle(db, "definitions_export")
    text = f"# Keepers definitions, version {result['version']}\n" + yaml.safe_dump(
        result["definitions"], sort_keys=False, allow_unicode=True, width=100
    )
    if file is None:
        sys.stdout.write(text)
    else:
        file.write_text(text)
        out.print(f"wrote version {result['version']} to {file}")


@definitions_app.command("apply")
@friendly_errors
def definitions_apply(
    file: Annotated[Path, typer.Argument(help="A YAML (or JSON) definitions file.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a definitions file, save it as a new version and recompute what it affects."""
    import yaml

    try:
        body = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{file}: not valid YAML: {' '.join(str(exc).split())}") from None
    result = _lifecycle(db, "definitions_apply", body=body, actor=_actor())
    if as_json:
        _print_json(result)
        return
    out.print(f"version {result['version']}: {result['summary']}")


@definitions_app.command("history")
@friendly_errors
def definitions_history(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every saved version of the definitions: who, when, what changed."""
    result = _lifecycle(db, "definitions_history")
    if as_json:
        _print_json(result)
        return
    table = Table("version", "at", "by", "what")
    for row in result:
        table.add_row(str(row["version"]), row["at"][:19], row["actor"], row["summary"])
    out.print(table)


# --- reports -------------------------------------------------------------------------------------

REPORT_NAMES = (
    "funnel|churn|retention|cohorts|lifecycle|rfm|clv|health|churn-risk|personas|cross-sell|"
    "replenishment"
)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    found = {}
    for value in values or []:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{option} takes KEY=VALUE, not '{value}'")
        found[key.strip().replace("-", "_")] = text.strip()
    return found


@app.command()
@friendly_errors
def report(
    name: Annotated[str, typer.Argument(help=f"Which report: {REPORT_NAMES}.")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Report as of this date or time (UTC).")
    ] = None,
    period: Annotated[
        str | None, typer.Option(help="Period length: week, month or quarter.")
    ] = None,
    periods: Annotated[int | None, typer.Option(help="How many periods back.")] = None,
    by: Annotated[
        str | None, typer.Option(help="funnel: group by none, cohort or channel.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="cohorts: recurring (default) or rolling.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Another report option, KEY=VALUE. Repeatable."),
    ] = None,
    who: Annotated[
        list[str] | None,
        typer.Option(
            "--who",
            help="List the customers behind a number, e.g. --who segment=champions. Repeatable.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="With --who: at most this many customers.")] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Analytics reports, now or as of a past date, and the customers behind each number."""
    options = {"period": period, "periods": periods, "by": by, "mode": mode}
    options.update(_pairs(option, "--option"))
    options = {k: v for k, v in options.items() if v is not None}
    moment = _moment(as_of, "--as-of")
    if who:
        cell = {**options, **_pairs(who, "--who")}
        result = _lifecycle(db, "report_who", name=name, as_of=moment, limit=limit, **cell)
    else:
        result = _lifecycle(db, "report", name=name, as_of=moment, **options)
    if as_json:
        _print_json(result)
        return
    _print_report(result)


def _headline(numbers: dict[str, Any]) -> None:
    table = Table("", "", title=f"Headline numbers ({numbers['month']}; more: keepers report)")
    for key, value in numbers.items():
        if key != "month":
            table.add_row(key.replace("_", " "), _cell(value))
    out.print(table)


def _print_report(result: dict[str, Any], title: str = "") -> None:
    """Any report for people: its scalars on a line, each list of rows as a table, each
    nested section the same way under its name."""
    scalars = {k: v for k, v in result.items() if not isinstance(v, list | dict) and v is not None}
    if scalars:
        line = "  ".join(f"{k}: {_cell(v)}" for k, v in scalars.items())
        out.print(f"[bold]{title}[/bold]  {line}" if title else line)
    for key, value in result.items():
        name = f"{title} {key}".strip().replace("_", " ")
        if isinstance(value, dict) and value:
            if all(isinstance(v, dict) for v in value.values()):  # named rows
                value = [{"": k, **v} for k, v in value.items()]
            elif any(isinstance(v, list | dict) for v in value.values()):
                _print_report(value, name)
                continue
            else:
                value = [value]
        if isinstance(value, list) and value and isinstance(value[0], dict):
            columns = [c for c in value[0] if not isinstance(value[0][c], dict)]
            table = Table(*columns, title=name)
            for row in value:
                table.add_row(*(_cell(row.get(c)) for c in columns))
            out.print(table)


def _cell(value: Any) -> str:
    """One value in a few characters: numbers rounded, moments to the minute, a list of
    rows as 'label number' pairs."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 10 else f"{value:,.2f}"
    if isinstance(value, str) and len(value) > 19 and value[10:11] == "T" and value[:4].isdigit():
        return value[:16].replace("T", " ")
    if isinstance(value, list):
        return ", ".join(_labelled(v) if isinstance(v, dict) else _cell(v) for v in value)
    return str(value)


def _labelled(row: dict[str, Any]) -> str:
    label = next((v for v in row.values() if isinstance(v, str)), "")
    number = next((v for v in row.values() if isinstance(v, int | float)), None)
    return f"{label} {_cell(number)}".strip()


# --- journeys ------------------------------------------------------------------------------------


def _journeys(db: str | None, operation: str, **params: Any) -> Any:
    from keepers.services.backends import open_backend

    backend = open_backend(_existing(_settings(db)))
    try:
        return backend.journeys(operation, **params)
    finally:
        backend.close()


JourneyKey = Annotated[str, typer.Argument(help="The journey key.")]


@journeys_app.command("create")
@friendly_errors
def journeys_create(
    file: Annotated[Path, typer.Argument(help="Journey file (YAML or JSON).")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a journey from a file, or save a new version when it changed (customers
    already in it finish on their version)."""
    from keepers.services.journeys import read_journey_file

    result = _journeys(db, "save", body=read_journey_file(file), actor=_actor())
    if as_json:
        _print_json(result)
        return
    verb = "saved" if result["changed"] else "unchanged:"
    out.print(
        f"journey {result['journey']} {verb} version {result['version']} ({result['summary']})"
    )


@journeys_app.command("list")
@friendly_errors
def journeys_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every journey with its version, status, trigger and how many entered."""
    result = _journeys(db, "list")
    if as_json:
        _print_json(result)
        return
    table = Table("journey", "version", "status", "trigger", "entered", "active", "goal")
    for row in result:
        trigger = ", ".join(f"{k}: {v}" for k, v in row["trigger"].items())
        table.add_row(
            row["journey"],
            str(row["version"]),
            row["status"],
            trigger,
            f"{row['entered']:,}",
            f"{row['active']:,}",
            f"{row['goal']:,}",
        )
    out.print(table)


@journeys_app.command("show")
@friendly_errors
def journeys_show(key: JourneyKey, db: DbOption = None, as_json: JsonOption = False) -> None:
    """A journey's definition and its versions."""
    result = _journeys(db, "show", key=key)
    if as_json:
        _print_json(result)
        return
    import yaml

    out.print(f"[bold]{key}[/bold] version {result['version']} ({result['status']})")
    out.print(yaml.safe_dump(result["journey"], sort_keys=False), highlight=False)
    for v in result["versions"]:
        out.print(f"  v{v['version']} {v['at'][:16]} {v['actor']}: {v['summary']}")


@journeys_app.command("status")
@friendly_errors
def journeys_status(
    key: JourneyKey,
    status: Annotated[str, typer.Argument(help="active, paused or archived.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pause a journey (nobody enters or moves on), resume it, or archive it."""
    result = _journeys(db, "set_status", key=key, status=status)
    if as_json:
        _print_json(result)
        return
    out.print(f"journey {key} is {result['status']}")


@journeys_app.command("run")
@friendly_errors
def journeys_run(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Advance every journey and deliver what is due now (the server does this on its own
    every KEEPERS_JOURNEY_INTERVAL_S)."""
    result = _journeys(db, "run")
    if as_json:
        _print_json(result)
        return
    a, d = result["advance"], result.get("delivery", {})
    out.print(
        f"entered {a['entered']}, skipped {a['skipped']}, moved {a['moved']}, queued "
        f"{a['queued']}, goals {a['goals']}; delivered {d.get('sent', 0)}, retrying "
        f"{d.get('retried', 0)}, failed {d.get('failed', 0)}, blocked {d.get('blocked', 0)}"
    )


@journeys_app.command("trace")
@friendly_errors
def journeys_trace(
    key: JourneyKey,
    customer: Annotated[str, typer.Argument(help="Customer id, user id, email or anonymous id.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Why a customer did (or did not) get this journey's messages: every decision."""
    result = _journeys(db, "trace", key=key, customer=customer)
    if as_json:
        _print_json(result)
        return
    out.print(f"[bold]{key}[/bold] for customer {result['customer_id']}: {result['answer']}")
    table = Table("at", "step", "decision", "detail")
    for row in result["log"]:
        table.add_row(_cell(row["at"]), row["step"] or "", row["decision"], row["detail"] or "")
    out.print(table)
    if result["messages"]:
        _print_report({"messages": result["messages"]})


@journeys_app.command("simulate")
@friendly_errors
def journeys_simulate(
    key: JourneyKey,
    since: Annotated[
        str, typer.Option("--since", help="Replay from this date (YYYY-MM-DD or ISO time) to now.")
    ],
    step_days: Annotated[
        float, typer.Option("--step-days", help="The simulated clock's step, in days.")
    ] = 1.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """What a journey would have done since a date, sending and writing nothing: who would
    have entered, their paths, the messages each step would have queued."""
    moment = _moment(since, "--since")
    result = _journeys(db, "simulate", key=key, since=moment, step_days=step_days)
    if as_json:
        _print_json(result)
        return
    facts = ("entered", "customers", "goal_reached", "still_active", "messages")
    summary = {k: result[k] for k in facts}
    summary.update({f"skipped: {reason}": n for reason, n in result["skipped"].items()})
    _summary_table(
        summary,
        f"{key} v{result['version']} replayed from {_cell(result['since'])} to "
        f"{_cell(result['until'])}, every {result['step_days']:g} day(s); nothing sent",
    )
    steps = Table("step", "reached", "queued", "paths")
    for step, row in result["by_step"].items():
        paths = ", ".join(f"{name} {n:,}" for name, n in row.get("paths", {}).items())
        steps.add_row(step, f"{row['reached']:,}", _cell(row.get("queued")), paths)
    out.print(steps)
    sample = Table("customer", "entered", "status", "path")
    for row in result["sample"]:
        who = row["user_id"] or row["email"] or str(row["customer_id"])
        sample.add_row(who, _cell(row["entered_at"]), row["status"], " → ".join(row["path"]))
    out.print(sample)
    for note in result["notes"]:
        out.print(f"note: {note}", highlight=False)


@journeys_app.command("stats")
@friendly_errors
def journeys_stats(key: JourneyKey, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Entered, statuses, goal reached, holdout uplift, and counts per step."""
    result = _journeys(db, "stats", key=key)
    if as_json:
        _print_json(result)
        return
    _print_report(result)


@app.command()
@friendly_errors
def consent(
    customer: Annotated[str, typer.Argument(help="Customer id, user id or email.")],
    status: Annotated[str, typer.Option(help="granted or withdrawn.")],
    list_id: Annotated[str, typer.Option("--list", help="The email list.")] = "marketing",
    channel: Annotated[str, typer.Option(help="email or audience.")] = "email",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record a customer's consent (or its withdrawal) for a list and channel."""
    result = _journeys(
        db,
        "set_consent",
        customer=customer,
        list_id=list_id,
        status=status,
        channel=channel,
        source="cli",
    )
    if as_json:
        _print_json(result)
        return
    out.print(f"customer {result['customer_id']}: {channel} consent for {list_id} {status}")


# --- clv -----------------------------------------------------------------------------------------


@clv_app.command("fit")
@friendly_errors
def clv_fit(
    transactions: Annotated[Path, typer.Option(help="Transaction CSV: one row per purchase.")],
    calibration_end: Annotated[
        str, typer.Option(help="Last day of the calibration period (YYYY-MM-DD).")
    ],
    time_unit: Annotated[str, typer.Option(help="days, weeks or months.")] = "weeks",
    customer_col: Annotated[str, typer.Option(help="Column with the customer id.")] = "customer_id",
    date_col: Annotated[str, typer.Option(help="Column with the purchase date.")] = "date",
    amount_col: Annotated[str, typer.Option(help="Column with the purchase amount.")] = "amount",
    horizon: Annotated[
        float, typer.Option(help="Prediction horizon in time units, for expected purchases.")
    ] = 52.0,
    as_json: JsonOption = False,
) -> None:
    """Fit BG/NBD, Pareto/NBD and Gamma-Gamma to a raw transaction file."""
    from keepers.services.clv import fit_transactions

    result = fit_transactions(
        transactions,
        calibration_end=calibration_end,
        time_unit=time_unit,
        customer_col=customer_col,
        date_col=date_col,
        amount_col=amount_col,
        horizon=horizon,
    )
    if as_json:
        _print_json(result)
        return
    out.print(f"{result['customers']:,} customers, {result['repeat_buyers']:,} repeat buyers")
    for model in ("bgnbd", "pareto_nbd", "gamma_gamma"):
        params = result.get(model)
        if params:
            shown = ", ".join(f"{k} = {v:.4g}" for k, v in params.items() if k in PARAM_NAMES)
            out.print(f"{model}: {shown}")


PARAM_NAMES = {"r", "alpha", "a", "b", "s", "beta", "p", "q", "v"}


# --- sales: `keepers deals …`, `keepers leads …` (their module imports the helpers above) ---

from keepers.cli_sales import deals_app, leads_app  # noqa: E402

app.add_typer(deals_app, name="deals")
app.add_typer(leads_app, name="leads")

# --- referrals: `keepers referrals …` ---

from keepers.cli_referrals import referrals_app  # noqa: E402

app.add_typer(referrals_app, name="referrals")

# --- access: `keepers users …`, `keepers tokens …`, `keepers customers export|erase` ---

from keepers.cli_access import customers_app, tokens_app, users_app  # noqa: E402

app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(customers_app, name="customers")
# `keepers audit` registers itself (keepers.cli_access), so either module can be imported
# first


def main() -> None:
    app()


if __name__ == "__main__":
    main()
