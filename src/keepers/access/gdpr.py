"""GDPR: one customer's data as JSON (Art. 15 access, Art. 20 portability) and erasure
everywhere (Art. 17), with re-ingestion of the same person refused afterwards.

What "the customer" is: the profile asked for, followed to the profile it was merged into,
plus every profile merged into that one (anonymous visits, aliases). What "everywhere"
is: every table of the store with a `customer_id` column — found in the catalogue, so a
table added by a later migration (or the engine's `customer_state`) is included without
a change here — plus the customer's order lines and quarantined payloads that name them.

Erasure keeps, on purpose:
- `suppressions`: hashes of addresses that bounced or unsubscribed (unsalted SHA-256, so
  the outbox can check an address), so a re-collected address is still not mailed;
- `erased_identities`: salted SHA-256 hashes of the erased userIds, anonymousIds and
  emails (the salt is a per-store secret, so the hashes cannot be looked up in a
  dictionary of emails), which `drop_erased` uses to drop their new events at ingest;
- one audit row with the customer's number and row counts, no personal data.

Physically gone, not just invisible. PostgreSQL: the rows are deleted and the tables
vacuumed; WAL archives and backups age out on their own schedule (say so in your privacy
notice). DuckDB needs more, because a DELETE only marks rows in their row group (the
values stay in the file), freed blocks keep their old bytes, and small tables share
blocks. So, in order:
1. in the erasure's transaction, the customer's text and JSON columns are set to NULL
   before the rows are deleted, so the next checkpoint rewrites those columns without
   them (this touches only the customer's own rows: no conflict with the ingest writer);
2. `purge_storage` checkpoints (the WAL, which holds recent rows in plain text, is
   emptied) and overwrites every free block with random bytes;
3. what can still remain — bytes in the unused part of blocks shared by small tables,
   key columns (an identity's value is its primary key), and 12-byte prefixes of old
   min/max statistics — goes with `compact_duckdb_file`, which rewrites the whole file.
   It needs the file closed: the CLI's erase runs it at once; after an erasure through a
   running server a marker (`FILE.compact-pending`) asks for it at the next start
   (`compact_if_pending`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow as pa
import pyarrow.compute as pc

from keepers.access.audit import write_audit
from keepers.access.common import utc
from keepers.domain.events import Event
from keepers.errors import DatabaseLocked, InvalidInput, NotFound, StoreUnavailable
from keepers.store.database import Database, Tx
from keepers.store.events import IDENTITY_LOCK, EventBatch, prepare_batch
from keepers.store.secrets import stored_secret

EXPORT_FORMAT = "keepers.customer-export/1"
ERASURE_SALT = "erasure_salt"
KINDS = ("user", "anon", "email")
FILLER = "_kp_erasure_filler"
FIRST_TABLES = ("customers", "identities", "events", "orders")


# --- which rows belong to the customer --------------------------------------------------------


def _in(ids: list[int]) -> tuple[str, list[int]]:
    return f"customer_id IN ({', '.join('?' * len(ids))})", list(ids)


def customer_family(tx: Tx, customer_id: int) -> list[int]:
    """The surviving profile of `customer_id` first, then every profile merged into it
    (directly or through others). NotFound when there is no such customer."""
    root, seen = int(customer_id), set()
    while True:
        rows = tx.execute("SELECT merged_into FROM customers WHERE customer_id = ?", [root])
        if not rows:
            raise NotFound(f"no customer {customer_id}")
        if rows[0][0] is None or root in seen:
            break
        seen.add(root)
        root = int(rows[0][0])
    family, frontier = [root], [root]
    while frontier:
        found = tx.execute(
            "SELECT customer_id FROM customers "
            f"WHERE merged_into IN ({', '.join('?' * len(frontier))})",
            frontier,
        )
        frontier = [int(r[0]) for r in found if int(r[0]) not in family]
        family.extend(frontier)
    return family


def customer_columns(tx: Tx) -> dict[str, list[tuple[str, bool]]]:
    """Every base table of the store that points at customers, with those columns and
    whether each may be NULL: `customer_id` and `…_customer_id` (a referral's referrer,
    a reward's beneficiary). Customers first, then the event log, then by name."""
    rows = tx.execute(
        "SELECT c.table_name, c.column_name, c.is_nullable FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_catalog = c.table_catalog "
        "AND t.table_schema = c.table_schema AND t.table_name = c.table_name "
        "WHERE (c.column_name = 'customer_id' OR c.column_name LIKE '%\\_customer\\_id' "
        "ESCAPE '\\') AND t.table_type = 'BASE TABLE' "
        "AND t.table_schema = current_schema() AND t.table_catalog = current_database() "
        "ORDER BY c.table_name, c.ordinal_position"
    )
    found: dict[str, list[tuple[str, bool]]] = {}
    for table, column, nullable in rows:
        found.setdefault(table, []).append((column, nullable == "YES"))
    first = [n for n in FIRST_TABLES if n in found]
    return {n: found[n] for n in first + sorted(set(found) - set(first))}


def personal_tables(tx: Tx) -> list[str]:
    """Every base table of the store with rows about customers (see `customer_columns`)."""
    return list(customer_columns(tx))


def _about(columns: list[tuple[str, bool]], family: list[int]) -> tuple[str, list[int]]:
    """SQL matching rows that point at any of `family` through any of `columns`."""
    marks = ", ".join("?" * len(family))
    where = " OR ".join(f'"{column}" IN ({marks})' for column, _ in columns)
    return where, [c for _ in columns for c in family]


def _columns(tx: Tx, table: str) -> list[tuple[str, bool]]:
    """(name, is_json) of a table's columns, in order."""
    rows = tx.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = current_schema() "
        "AND table_catalog = current_database() ORDER BY ordinal_position",
        [table],
    )
    return [(name, str(kind).lower() in ("json", "jsonb")) for name, kind in rows]


# --- export -------------------------------------------------------------------------------------


def _jsonable(value: Any, is_json: bool) -> Any:
    if value is None:
        return None
    if is_json and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return str(value)  # a 128-bit message key: JSON readers lose precision past 2^53
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _rows(tx: Tx, table: str, where: str, params: list[Any]) -> list[dict[str, Any]]:
    columns = _columns(tx, table)
    rows = tx.execute(f'SELECT * FROM "{table}" WHERE {where} ORDER BY 1', params)
    return [
        {
            name: _jsonable(value, is_json)
            for (name, is_json), value in zip(columns, row, strict=True)
        }
        for row in rows
    ]


def _order_filter(family: list[int]) -> tuple[str, list[int]]:
    where, params = _in(family)
    return f"order_id IN (SELECT order_id FROM orders WHERE {where})", params


def export_customer(tx: Tx, customer_id: int) -> dict[str, Any]:
    """Every row about the customer, table by table, JSON-ready (timestamps in ISO 8601
    UTC, JSON columns as objects, 128-bit keys as strings). Tables with no rows are listed
    empty, so the export also shows what was looked at."""
    family = customer_family(tx, customer_id)
    tables = {
        table: _rows(tx, table, *_about(columns, family))
        for table, columns in customer_columns(tx).items()
    }
    tables["order_items"] = _rows(tx, "order_items", *_order_filter(family))
    emails = _identifiers(tx, family)["email"]
    tables["suppressions"] = _rows(
        tx,
        "suppressions",
        f"address_hash IN ({', '.join('?' * len(emails))})" if emails else "FALSE",
        [address_hash(e) for e in sorted(emails)],
    )
    return {
        "format": EXPORT_FORMAT,
        "customer_id": family[0],
        "customers": family,
        "generated_at": datetime.now(UTC).isoformat(),
        "tables": tables,
    }


# --- identifiers and their hashes --------------------------------------------------------------


def address_hash(address: str) -> str:
    """The suppression list's hash of an address (the same as the outbox's)."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def normalise(kind: str, value: str) -> str:
    """The form an identifier is hashed in: emails trimmed and lower-cased, ids verbatim."""
    if kind not in KINDS:
        raise InvalidInput(f"kind: one of {', '.join(KINDS)}, not {kind!r}")
    return value.strip().lower() if kind == "email" else value


def _hasher(tx: Tx) -> Callable[[str], str]:
    """Salted SHA-256 with the store's own secret: the list cannot be reversed with a
    dictionary of known emails, yet the same value always gives the same hash."""
    base = hashlib.sha256(_salt(tx).encode())

    def hashed(value: str) -> str:
        h = base.copy()
        h.update(value.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    return hashed


def _identifiers(tx: Tx, family: list[int]) -> dict[str, set[str]]:
    """Every userId, anonymousId and email the customer was known by."""
    where, params = _in(family)
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for kind, value in tx.execute(f"SELECT kind, value FROM identities WHERE {where}", params):
        found["user" if kind == "user" else "anon"].add(value)
    sources = [
        f"SELECT user_id, anonymous_id, email, traits->>'email' FROM customers WHERE {where}",
        f"SELECT DISTINCT user_id, anonymous_id, NULL, traits->>'email' FROM events WHERE {where}",
    ]
    for sql in sources:
        for user_id, anonymous_id, *emails in tx.execute(sql, params):
            found["user"].update([user_id] if user_id else [])
            found["anon"].update([anonymous_id] if anonymous_id else [])
            found["email"].update(
                normalise("email", e) for e in emails if isinstance(e, str) and e.strip()
            )
    return found


def is_erased(tx: Tx, kind: str, value: str) -> bool:
    """Whether this userId / anonymousId / email belonged to an erased customer. Any kind
    matches any kind: a userId that is an email address is caught either way."""
    if not isinstance(value, str) or not value:
        return False
    return bool(erased_among(tx, [normalise(kind, value)]))


def _salt(tx: Tx) -> str:
    return stored_secret(tx, ERASURE_SALT)


def _hash_sql(tx: Tx, column: str) -> str:
    """SQL computing `_hasher`'s hash of `column` (the salt is the first parameter), so a
    whole ingest group is checked in the engine, not value by value in Python."""
    if tx.dialect.name == "postgres":
        return f"encode(sha256(convert_to(CAST(? AS TEXT) || {column}, 'UTF8')), 'hex')"
    return f"sha256(CAST(? AS VARCHAR) || {column})"


def _erased_in_stage(tx: Tx, values: pa.Array) -> set[str]:
    tx.stage("stage_identifiers", pa.table({"value": values}))
    rows = tx.execute(
        "SELECT DISTINCT s.value FROM stage_identifiers s JOIN erased_identities e "
        f"ON e.value_hash = {_hash_sql(tx, 's.value')}",
        [_salt(tx)],
    )
    return {r[0] for r in rows}


def erased_among(tx: Tx, values: Iterable[str]) -> set[str]:
    """Those of `values` that belonged to an erased customer (one query for all)."""
    wanted = sorted({v for v in values if isinstance(v, str) and v})
    if not wanted:
        return set()
    return _erased_in_stage(tx, pa.array(wanted, pa.string()))


def _event_identifiers(event: Event) -> set[str]:
    ids = {event.user_id, event.anonymous_id, event.previous_id}
    for email in _event_emails(event):
        ids.add(email)
    return {i for i in ids if i}


def _event_emails(event: Event) -> list[str]:
    found = []
    for traits in (event.traits, (event.context or {}).get("traits")):
        email = traits.get("email") if isinstance(traits, dict) else None
        if isinstance(email, str) and email.strip():
            found.append(normalise("email", email))
    return found


def _group_identifiers(batches: list[EventBatch]) -> pa.Array:
    """Every identifier in the group: the id columns straight from the prepared Arrow
    tables, plus the few alias ids and identify emails, deduplicated."""
    extra = []
    for batch in batches:
        for event in batch.events:
            if event.previous_id:
                extra.append(event.previous_id)
            if event.traits or event.context:
                extra.extend(_event_emails(event))
    parts = [
        chunk
        for batch in batches
        for name in ("user_id", "anonymous_id")
        for chunk in batch.table.column(name).chunks
    ]
    values = pa.chunked_array([*parts, pa.array(extra, pa.string())], pa.string())
    return pc.unique(pc.drop_null(values).combine_chunks())


def drop_erased(tx: Tx, batches: list[EventBatch]) -> list[EventBatch]:
    """The ingest hook: the batches without events of erased people (by userId,
    anonymousId, alias previousId or identify email). Call it in the writer's transaction
    before `write_events`. While nobody was ever erased it costs one indexed lookup per
    group; after that, one hash join of the group's distinct ids (set-based). Dropped
    events are acknowledged like duplicates and stored nowhere."""
    if not batches:
        return batches
    if tx.dialect.name == "postgres":  # the same lock as the writers and the erasure
        tx.execute("SELECT pg_advisory_xact_lock(?)", [IDENTITY_LOCK])
    if not tx.execute("SELECT 1 FROM erased_identities LIMIT 1"):
        return batches
    erased = _erased_in_stage(tx, _group_identifiers(batches))
    if not erased:
        return batches
    kept = []
    for batch in batches:
        events = [e for e in batch.events if not (_event_identifiers(e) & erased)]
        if len(events) == len(batch.events):
            kept.append(batch)
        elif events:
            kept.append(prepare_batch(batch.source_id, events))
    return kept


def _record_erased(
    tx: Tx, identifiers: dict[str, set[str]], actor: str, now: datetime
) -> dict[str, int]:
    hashed = _hasher(tx)
    counts = {}
    for kind in KINDS:
        values = sorted(identifiers[kind])
        counts[kind] = len(values)
        for value in values:
            tx.execute(
                "INSERT INTO erased_identities VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [hashed(value), kind, now, actor[:320]],
            )
    return counts


# --- erasure ------------------------------------------------------------------------------------


def _count(tx: Tx, table: str, where: str, params: list[Any]) -> int:
    return int(tx.execute(f'SELECT count(*) FROM "{table}" WHERE {where}', params)[0][0])


def _scrubbable(tx: Tx, table: str) -> list[str]:
    """DuckDB: the nullable text and JSON columns of a table that no key or index uses —
    the ones an UPDATE can blank before the DELETE."""
    keyed = set()
    for (columns,) in tx.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE table_name = ? "
        "AND database_name = current_database() "
        "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
        [table],
    ):
        keyed.update(columns)
    for (expressions,) in tx.execute(
        "SELECT expressions FROM duckdb_indexes() WHERE table_name = ? "
        "AND database_name = current_database()",
        [table],
    ):
        keyed.update(name for name, _ in _columns(tx, table) if name in str(expressions))
    rows = tx.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema() AND table_catalog = current_database() "
        "AND is_nullable = 'YES' AND data_type IN ('VARCHAR', 'JSON')",
        [table],
    )
    return [r[0] for r in rows if r[0] not in keyed]


def _delete(tx: Tx, table: str, where: str, params: list[Any]) -> int:
    """Delete the rows matching `where`. On DuckDB their text and JSON columns are first set
    to NULL: a DELETE only marks rows in a row group (their values stay in it, readable in
    the file), while an UPDATE makes the next checkpoint rewrite those columns without
    the old values (the old blocks are then overwritten by `purge_storage`)."""
    if tx.dialect.name != "duckdb":
        count = _count(tx, table, where, params)
        if count:
            tx.execute(f'DELETE FROM "{table}" WHERE {where}', params)
        return count
    rowids = [r[0] for r in tx.execute(f'SELECT rowid FROM "{table}" WHERE {where}', params)]
    if not rowids:
        return 0
    tx.stage("stage_erased_rows", pa.table({"rid": pa.array(rowids, pa.int64())}))
    rows = "rowid IN (SELECT rid FROM stage_erased_rows)"  # `where` may read blanked columns
    columns = _scrubbable(tx, table)
    if columns:
        blank = ", ".join(f'"{c}" = NULL' for c in columns)
        tx.execute(f'UPDATE "{table}" SET {blank} WHERE {rows}')
    tx.execute(f'DELETE FROM "{table}" WHERE {rows}')
    return len(rowids)


def _unlink(tx: Tx, table: str, column: str, family: list[int]) -> int:
    """Clear a nullable pointer to the customer (a deal stays, without its contact)."""
    where = f'"{column}" IN ({", ".join("?" * len(family))})'
    count = _count(tx, table, where, family)
    if count:
        tx.execute(f'UPDATE "{table}" SET "{column}" = NULL WHERE {where}', family)
    return count


def _delete_everything(
    tx: Tx, family: list[int], identifiers: dict[str, set[str]]
) -> dict[str, int]:
    """Rows whose NOT NULL customer column points at the family are deleted; nullable
    pointers (a deal's contact) are cleared, and the row kept."""
    deleted = {"order_items": _delete(tx, "order_items", *_order_filter(family))}
    for table, columns in customer_columns(tx).items():
        required = [c for c in columns if not c[1]]
        deleted[table] = _delete(tx, table, *_about(required, family)) if required else 0
        for column, nullable in columns:
            if nullable:
                deleted[f"{table}.{column} (cleared)"] = _unlink(tx, table, column, family)
    needles = sorted({json.dumps(v) for values in identifiers.values() for v in values})[:200]
    if needles:
        match = " OR ".join("position(? IN payload) > 0" for _ in needles)
        deleted["rejected_events"] = _delete(tx, "rejected_events", match, needles)
    return deleted


def erase_customer(
    tx: Tx,
    customer_id: int,
    actor: str,
    *,
    now: datetime | None = None,
    role: str | None = None,
    ip: str | None = None,
) -> dict[str, Any]:
    """Erase the customer (and every profile merged into it) from every table, the event
    log included; record salted hashes of their identifiers so re-ingestion is refused;
    keep suppression hashes; audit it. Run `purge_storage(db)` after the commit."""
    now = now or datetime.now(UTC)
    if tx.dialect.name == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", [IDENTITY_LOCK])
    family = customer_family(tx, customer_id)
    identifiers = _identifiers(tx, family)
    recorded = _record_erased(tx, identifiers, actor, now)
    deleted = _delete_everything(tx, family, identifiers)
    emails = sorted(identifiers["email"])
    kept = (
        _count(
            tx,
            "suppressions",
            f"address_hash IN ({', '.join('?' * len(emails))})",
            [address_hash(e) for e in emails],
        )
        if emails
        else 0
    )
    result = {
        "customer_id": family[0],
        "customers": family,
        "identifiers": recorded,
        "rows": {table: n for table, n in deleted.items() if n},
        "suppressions_kept": kept,
        "erased_at": utc(now).isoformat(),
    }
    write_audit(
        tx,
        actor=actor,
        role=role,
        action="customer.erase",
        target=f"customer:{family[0]}",
        detail={"customers": family, "rows": sum(deleted.values()), "identifiers": recorded},
        ip=ip,
        now=now,
    )
    return result


def sweep_after_erasure(tx: Tx, family: list[int], since: datetime) -> list[int]:
    """Run after the erasure committed: delete rows a writer stored for the erased
    profiles while the erasure ran (DuckDB transactions are optimistic) and quarantined
    payloads of erased people received since `since`, and return the customers created
    since then under an erased identifier, to be erased in turn."""
    _delete_everything(tx, family, {kind: set() for kind in KINDS})
    _sweep_rejected(tx, since)
    rows = tx.execute(
        "SELECT DISTINCT kind, value, customer_id FROM identities WHERE created_at >= ?",
        [since],
    )
    erased = erased_among(tx, {value for _, value, _ in rows})
    return sorted({int(customer) for _, value, customer in rows if value in erased})


def _payload_identifiers(payload: str | None) -> set[str]:
    try:
        data = json.loads(payload or "{}")
    except ValueError:
        return set()
    if not isinstance(data, dict):
        return set()
    found = set()
    for key in ("user_id", "userId", "anonymous_id", "anonymousId", "previous_id", "previousId"):
        if isinstance(data.get(key), str):
            found.add(data[key])
    for traits in (data.get("traits"), (data.get("context") or {}).get("traits")):
        email = traits.get("email") if isinstance(traits, dict) else None
        if isinstance(email, str) and email.strip():
            found.add(normalise("email", email))
    return found


def _sweep_rejected(tx: Tx, since: datetime) -> None:
    """Quarantined events of erased people (a writer that failed while the erasure ran)."""
    recent = tx.execute(
        "SELECT DISTINCT payload FROM rejected_events WHERE received_at >= ? "
        "AND payload IS NOT NULL",
        [since],
    )
    by_payload = {p: _payload_identifiers(p) for (p,) in recent}
    erased = erased_among(tx, {v for ids in by_payload.values() for v in ids})
    doomed = [p for p, ids in by_payload.items() if ids & erased]
    for start in range(0, len(doomed), 100):
        chunk = doomed[start : start + 100]
        _delete(tx, "rejected_events", f"payload IN ({', '.join('?' * len(chunk))})", chunk)


# --- storage ------------------------------------------------------------------------------------


def _checkpoint(db: Database) -> None:
    with db.transaction() as tx:
        tx.execute("FORCE CHECKPOINT")  # waits for running writers, then empties the WAL


def purge_storage(db: Database, tables: Iterable[str] = ()) -> dict[str, Any]:
    """After an erasure commits: make the deleted bytes unrecoverable from the database
    files. DuckDB: checkpoint, fill every free block with random bytes (freed blocks keep
    their old contents otherwise), drop the filler, checkpoint. PostgreSQL: VACUUM the
    tables on a separate connection (VACUUM cannot run inside a transaction)."""
    if db.dialect.name == "duckdb":
        return _purge_duckdb(db)
    return _vacuum_postgres(db, tables)


def _free_blocks(db: Database) -> tuple[int, int]:
    with db.transaction() as tx:
        rows = tx.execute(
            "SELECT free_blocks, block_size FROM pragma_database_size() "
            "WHERE database_name = current_database()"
        )
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def _purge_duckdb(db: Database, rounds: int = 4) -> dict[str, Any]:
    _checkpoint(db)
    overwritten = 0
    try:
        for _ in range(rounds):
            free, block_size = _free_blocks(db)
            if not free:
                break
            rows = max(1024, free * block_size // 16)  # 32 random bytes a row: 2x the space
            with db.transaction() as tx:
                tx.execute(
                    f"CREATE OR REPLACE TABLE {FILLER} AS SELECT "
                    "unhex(md5(random()::VARCHAR) || md5(random()::VARCHAR)) AS x FROM range(?)",
                    [rows],
                )
            overwritten += free
            _checkpoint(db)
    finally:
        with db.transaction() as tx:
            tx.execute(f"DROP TABLE IF EXISTS {FILLER}")
        _checkpoint(db)
    return {
        "checkpointed": True,
        "free_blocks_overwritten": overwritten,
        "compaction_pending": _mark_pending(db),
    }


def _vacuum_postgres(db: Database, tables: Iterable[str]) -> dict[str, Any]:
    import psycopg

    names = [t for t in dict.fromkeys(tables) if t.replace("_", "").isalnum()]
    if not names:
        return {"vacuumed": []}
    try:
        with psycopg.connect(db.url, autocommit=True, connect_timeout=10) as con:
            con.execute(f"VACUUM {', '.join(names)}")
    except psycopg.Error as exc:
        return {"vacuumed": [], "error": str(exc).splitlines()[0]}
    return {"vacuumed": names}


def pending_marker(path: str | Path) -> Path:
    return Path(str(path) + ".compact-pending")


def _mark_pending(db: Database) -> bool:
    """Ask for a compaction at the next start (a file: it must be read before the database
    is opened). Holds a time stamp only."""
    marker = pending_marker(db.url)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(datetime.now(UTC).isoformat() + "\n")
    except OSError:
        return False
    return True


def compact_if_pending(path: str | Path) -> dict[str, Any] | None:
    """Compact a closed DuckDB file when an erasure asked for it; None when nothing was
    pending. Call before opening the store (`Keepers.open`)."""
    marker = pending_marker(path)
    if not marker.exists() or not Path(path).exists():
        return None
    try:
        result = compact_duckdb_file(path)
    except DatabaseLocked:
        return None  # a server holds the file: it compacts at its own next start
    marker.unlink(missing_ok=True)
    return result


def compact_duckdb_file(path: str | Path) -> dict[str, Any]:
    """Rewrite a DuckDB file that no process has open into a fresh one (COPY FROM DATABASE:
    tables, sequences, indexes), check every table's row count, then replace the file
    atomically. Nothing of deleted rows, freed blocks or stale metadata survives in it.
    The old file's disk blocks are the file system's to reuse."""
    import duckdb

    source = Path(path)
    target = source.with_name(source.name + ".compact")
    if Path(str(source) + ".wal").exists():
        raise StoreUnavailable(f"{source} has a write-ahead log: open and close it first")
    target.unlink(missing_ok=True)
    before = source.stat().st_size
    con = duckdb.connect(str(target))
    try:
        name = con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        quoted = str(source).replace("'", "''")
        try:
            con.execute(f"ATTACH '{quoted}' AS kp_source (READ_ONLY)")
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise DatabaseLocked(f"{source} is open in another process") from exc
            raise
        con.execute(f'COPY FROM DATABASE kp_source TO "{name}"')
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'kp_source'"
            ).fetchall()
        ]
        for table in tables:
            old = con.execute(f'SELECT count(*) FROM kp_source."{table}"').fetchone()
            new = con.execute(f'SELECT count(*) FROM "{name}"."{table}"').fetchone()
            if old != new:
                raise StoreUnavailable(f"compaction of {source} lost rows in {table}; kept it")
        con.execute("DETACH kp_source")
    except BaseException:
        con.close()
        target.unlink(missing_ok=True)
        raise
    con.close()
    _fsync(target)
    os.replace(target, source)
    _fsync(source.parent)
    return {"compacted": True, "bytes_before": before, "bytes_after": source.stat().st_size}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
