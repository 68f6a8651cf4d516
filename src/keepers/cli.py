"""The `keepers` command line. Every command prints one readable line and exits non-zero on
bad input or a problem it cannot fix — never a traceback (set KEEPERS_DEBUG=1 to see one).

Exit codes: 0 success · 1 the store or server is unavailable / locked · 2 bad input
· 3 an import finished but some rows were rejected (they are listed with line numbers).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keepers import __version__
from keepers.errors import InvalidInput, KeepersError
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
app.add_typer(keys_app, name="keys")
app.add_typer(import_app, name="import")

out = Console()
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
    if isinstance(exc, InvalidInput):
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


def _serve(settings: Settings, keepers: Any) -> None:
    import uvicorn

    from keepers.services.backends import write_server_info
    from keepers.web.app import create_app

    _check_port_free(settings.host, settings.port, keepers)
    web = create_app(settings, keepers)
    _tune_gc()
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{shown}:{settings.port}"
    info = write_server_info(settings.database_url, url, web.state.admin_token)
    out.print(
        f"Keepers {__version__} serving {settings.database_url} on [bold]{url}[/bold] "
        f"(API docs: {url}/docs). Press Ctrl+C to stop.",
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
    from keepers.services.keepers import Keepers

    keepers = Keepers.open(_settings(db))
    try:
        if not keepers.revoke_write_key(key_id):
            raise NotFound(f"no active write key {key_id!r}")
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
    if as_json:
        _print_json({**summary, "write_key": write_key})
    else:
        _summary_table(summary, f"Demo business ({customers:,} customers, seed {seed})")
        if write_key:
            out.print(f"write key 'demo': [bold]{write_key}[/bold] (shown once)", highlight=False)
    if serve_after:
        _serve(settings, keepers)
    else:
        keepers.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
