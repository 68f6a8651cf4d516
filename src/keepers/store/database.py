"""A small seam over the two databases: DuckDB (embedded, one owner) and PostgreSQL.

Everything above this module speaks one SQL (the common subset both engines accept) with
`?` placeholders, plus the few differences collected in `Dialect` (the "query components"
idea from Prefect's server). Bulk data enters through `Tx.stage(name, arrow_table)`: DuckDB
scans the Arrow table in place; PostgreSQL copies it into a temporary table.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from keepers.errors import DatabaseLocked, StoreUnavailable


@dataclass(frozen=True)
class Dialect:
    """The SQL that differs between the engines."""

    name: str
    json_type: str

    def json_merge(self, left: str, right: str) -> str:
        """SQL merging two JSON objects; keys of `right` win."""
        if self.name == "postgres":
            return f"({left} || {right})"
        return f"json_merge_patch({left}, {right})"

    @property
    def message_key_type(self) -> str:
        return "UUID" if self.name == "postgres" else "UHUGEINT"

    def message_key(self, source: str, message: str) -> str:
        """SQL for the 128-bit dedupe key of (source, messageId): an MD5 of both.

        A 128-bit key indexes several times faster than the two strings in DuckDB's ART,
        and its collision chance is nil at any event volume."""
        both = f"{source} || chr(31) || {message}"
        if self.name == "postgres":
            return f"CAST(md5({both}) AS UUID)"
        return f"md5_number({both})"

    def series(self, count_param: str) -> str:
        """A FROM clause yielding `count` rows."""
        if self.name == "postgres":
            return f"generate_series(1, {count_param})"
        return f"range({count_param})"


DUCKDB = Dialect(name="duckdb", json_type="JSON")
POSTGRES = Dialect(name="postgres", json_type="JSONB")


class Tx(Protocol):
    """One open transaction."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def stage(self, name: str, table: pa.Table) -> None: ...

    def fetch_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table: ...


class Database(Protocol):
    """An opened store: transactions, and what it is."""

    dialect: Dialect
    url: str

    def transaction(self) -> Any: ...  # context manager yielding a Tx

    def close(self) -> None: ...


def open_database(url: str, *, duckdb_checkpoint_mb: int = 256) -> Database:
    """Open (and create when missing) the store named by a path or postgresql:// URL."""
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return PostgresDatabase(url.replace("postgresql+psycopg://", "postgresql://"))
    return DuckDBDatabase(url, checkpoint_mb=duckdb_checkpoint_mb)


# --- DuckDB ---------------------------------------------------------------------------------


class _DuckTx:
    dialect = DUCKDB

    def __init__(self, con: Any) -> None:
        self._con = con
        self._staged: list[str] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # Always fetch: an unfetched DuckDB result leaves the connection busy.
        return self._con.execute(sql, list(params)).fetchall()

    def fetch_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        if params:
            return self._con.execute(sql, list(params)).to_arrow_table()
        return self._con.sql(sql).to_arrow_table()  # no extra copy of the rows

    def stage(self, name: str, table: pa.Table) -> None:
        self._con.register(name, table)
        self._staged.append(name)

    def _unstage(self) -> None:
        # Unregistering costs more than the insert it served (2.5 ms a group, measured);
        # every statement re-stages what it reads, so a later register simply replaces.
        self._staged.clear()


class DuckDBDatabase:
    """The embedded store: one file, opened by one process (DuckDB's own file lock)."""

    dialect = DUCKDB

    def __init__(self, path: str, checkpoint_mb: int = 256) -> None:
        import duckdb

        self.url = str(Path(path))
        Path(self.url).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._root = duckdb.connect(
                self.url, config={"checkpoint_threshold": f"{checkpoint_mb}MB"}
            )
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise DatabaseLocked(_lock_message(self.url, str(exc))) from exc
            raise
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cursors: list[Any] = []

    def _connection(self) -> Any:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._root.cursor()
            con.execute("SET TimeZone = 'UTC'")  # timestamptz → timestamp casts stay in UTC
            with self._lock:
                self._cursors.append(con)
        return con

    @contextmanager
    def transaction(self) -> Iterator[_DuckTx]:
        con = self._connection()
        tx = _DuckTx(con)
        con.execute("BEGIN TRANSACTION")
        try:
            yield tx
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            tx._unstage()

    def close(self) -> None:
        with self._lock:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
        self._root.close()


def _lock_message(path: str, detail: str) -> str:
    pid = re.search(r"PID (\d+)", detail)
    owner = f" (process {pid.group(1)})" if pid else ""
    return (
        f"the database {path} is open in another Keepers process{owner}; "
        "stop that process, or run this command while `keepers serve` is running so it "
        "can go through the server"
    )


# --- PostgreSQL -----------------------------------------------------------------------------

_PG_TYPES = {
    pa.string(): "TEXT",
    pa.large_string(): "TEXT",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE PRECISION",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}


class _PgTx:
    dialect = POSTGRES

    def __init__(self, con: Any, staged: set[str]) -> None:
        self._con = con
        self._staged = staged  # temp tables this connection already has
        self.created: list[str] = []  # created in this transaction: gone if it rolls back

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._con.cursor() as cur:
            if params:
                cur.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
            else:
                cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def fetch_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        with self._con.cursor() as cur:
            if params:
                cur.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
            else:
                cur.execute(sql)
            names = [column.name for column in cur.description]
            rows = cur.fetchall()
        return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})

    def stage(self, name: str, table: pa.Table) -> None:
        """Copy an Arrow table into a temp table (created once per connection, emptied at
        every commit), as CSV written by Arrow: twice as fast as row-by-row COPY."""
        import pyarrow.csv as pacsv

        columns = ", ".join(f"{f.name} {_PG_TYPES[f.type]}" for f in table.schema)
        key = f"{name}({columns})"
        with self._con.cursor() as cur:
            if key not in self._staged:
                cur.execute(f"DROP TABLE IF EXISTS {name}")
                cur.execute(f"CREATE TEMP TABLE {name} ({columns}) ON COMMIT DELETE ROWS")
                self._staged.add(key)
                self.created.append(key)
            else:
                cur.execute(f"TRUNCATE {name}")
            sink = pa.BufferOutputStream()
            pacsv.write_csv(
                table, sink, pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
            )
            with cur.copy(f"COPY {name} FROM STDIN (FORMAT csv)") as copy:
                copy.write(sink.getvalue().to_pybytes())


class PostgresDatabase:
    """The production store; several processes may share it (writers serialise on locks)."""

    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._connections: list[Any] = []
        self._staged_by_connection: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._connection()  # fail now, with a clear error, when the server is unreachable

    def _connection(self) -> Any:
        import psycopg

        con = getattr(self._local, "con", None)
        if con is None or con.closed or con.broken:
            try:
                con = psycopg.connect(self.url, connect_timeout=10, autocommit=True)
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
            self._local.con = con
            with self._lock:
                self._connections.append(con)
                self._staged_by_connection[id(con)] = set()  # a new session has no temp tables
        return con

    def _begin(self) -> tuple[Any, Any]:
        """A connection inside a new transaction; a dead pooled connection is replaced once
        (safe: nothing has run yet)."""
        import psycopg

        for attempt in (1, 2):
            con = self._connection()
            block = con.transaction()
            try:
                block.__enter__()
                return con, block
            except psycopg.OperationalError as exc:
                con.close()
                if attempt == 2:
                    raise StoreUnavailable(f"PostgreSQL is not available: {exc}".strip()) from exc
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        import psycopg

        con, block = self._begin()
        staged = self._staged_by_connection.setdefault(id(con), set())
        tx = _PgTx(con, staged)
        try:
            yield tx
        except BaseException as exc:
            staged.difference_update(tx.created)
            with suppress(psycopg.Error):
                block.__exit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable(f"PostgreSQL is not taking writes: {exc}".strip()) from exc
            raise
        else:
            try:
                block.__exit__(None, None, None)
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"PostgreSQL did not commit: {exc}".strip()) from exc

    def close(self) -> None:
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
