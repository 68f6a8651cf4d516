"""Ibis expressions to SQL, compiled once per process.

Ibis compiles a query in about 0.3 s — longer than DuckDB runs most of them — so each query
is compiled once per (key, dialect) with sentinel times in place of the real moments, which
are then swapped in as literals on every run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ibis

from keepers.store.database import Tx

SENTINELS = (
    datetime(2999, 12, 30, 23, 58, 57, 654321, tzinfo=UTC),
    datetime(2999, 11, 29, 22, 57, 56, 543210, tzinfo=UTC),
    datetime(2999, 10, 28, 21, 56, 55, 432109, tzinfo=UTC),
    datetime(2999, 9, 27, 20, 55, 54, 321098, tzinfo=UTC),
)
_TEMPLATES: dict[tuple[Hashable, str], str] = {}


def compiled_sql(
    tx: Tx, key: Hashable, build: Callable[..., Any], moments: Sequence[datetime]
) -> str:
    """The SQL of `build(*moments)` (each moment an Ibis timestamp literal) for this
    transaction's dialect. `key` must identify everything about `build` except the moments."""
    if len(moments) > len(SENTINELS):
        raise ValueError(f"at most {len(SENTINELS)} moments per query")
    dialect = tx.dialect.name
    template = _TEMPLATES.get((key, dialect))
    if template is None:
        sentinels = SENTINELS[: len(moments)]
        template = ibis.to_sql(build(*map(ibis.literal, sentinels)), dialect=dialect)
        for index, sentinel in enumerate(sentinels):
            template = template.replace(timestamp_sql(sentinel, dialect), _token(index))
        if dialect == "duckdb":
            template = _DUCKDB_EPOCH.sub(r"(EPOCH_US(\1) / 1000000.0)", template)
        if "2999" in template or any(_token(i) not in template for i in range(len(moments))):
            # never expected; compile per run rather than risk a wrong time
            return ibis.to_sql(build(*map(ibis.literal, moments)), dialect=dialect)
        _TEMPLATES[(key, dialect)] = template
    for index, moment in enumerate(moments):
        # PostgreSQL's EXTRACT(epoch FROM timestamptz) is only stable, so it would be
        # evaluated again on every row: a moment's epoch goes in as a number
        epoch = EPOCH_SQL.get(dialect)
        if epoch:
            template = template.replace(epoch.format(_token(index)), _epoch_literal(moment))
        literal = f"CAST('{moment.astimezone(UTC).isoformat()}' AS TIMESTAMPTZ)"
        template = template.replace(_token(index), literal)
    return template


# Ibis writes a column's epoch_seconds() on DuckDB as EPOCH(CAST(col AS TIMESTAMP)); the
# cast goes through the session time zone for every row (a quarter of a second of CPU a
# full run). The exact integer microseconds divided once give the same double.
_DUCKDB_EPOCH = re.compile(r'EPOCH\(CAST\(("[^"]+"(?:\."[^"]+")*) AS TIMESTAMP\)\)')
EPOCH_SQL = {"postgres": "EXTRACT('epoch' FROM {})"}  # how Ibis writes epoch_seconds()
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_literal(moment: datetime) -> str:
    """The exact epoch seconds of a moment as a SQL number (microseconds included)."""
    since = moment - _UNIX
    seconds = Decimal(since.days * 86_400 + since.seconds) + Decimal(since.microseconds) / 10**6
    return f"({seconds:f})"


def _token(index: int) -> str:
    return f"\x00moment{index}\x00"


def timestamp_sql(moment: datetime, dialect: str) -> str:
    """How Ibis writes a timestamp literal in a dialect."""
    select = ibis.to_sql(ibis.literal(moment).name("x"), dialect=dialect)
    return select.strip().removeprefix("SELECT").strip().removesuffix('AS "x"').strip()
