"""The few SQL expressions that differ between DuckDB and PostgreSQL in the sales queries:
reading a number or a date out of JSON text without failing on bad values, and seconds
since the epoch as a double (PostgreSQL's EXTRACT answers numeric, DuckDB's a double)."""

from __future__ import annotations

from keepers.store.database import Tx


def number_sql(tx: Tx, text: str) -> str:
    """A text expression as a number, NULL when it is not one (never an error)."""
    if tx.dialect.name == "postgres":
        pattern = r"'^\s*[-+]{0,1}[0-9]+(\.[0-9]*){0,1}([eE][-+]{0,1}[0-9]+){0,1}\s*$'"
        return f"(CASE WHEN {text} ~ {pattern} THEN CAST({text} AS DOUBLE PRECISION) END)"
    return f"TRY_CAST({text} AS DOUBLE)"


def date_sql(tx: Tx, text: str) -> str:
    """The date at the start of an ISO date or time text, NULL when there is none."""
    if tx.dialect.name == "postgres":
        return (
            f"(CASE WHEN {text} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}' "
            f"THEN CAST(substr({text}, 1, 10) AS DATE) END)"
        )
    return f"TRY_CAST(substr({text}, 1, 10) AS DATE)"


def epoch_sql(expr: str) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {expr}) AS DOUBLE PRECISION)"
