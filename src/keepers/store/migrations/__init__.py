"""Versioned schema migrations, run on DuckDB and PostgreSQL alike, never edited once landed.

Each migration is a module `mNNNN_name.py` with a docstring that says why and a
`statements(dialect) -> list[str]` function. `migrate()` applies what is missing, each
migration in its own transaction, and records it in `schema_migrations`.
"""

from __future__ import annotations

import importlib
import pkgutil
from datetime import UTC, datetime
from types import ModuleType

from keepers.store.database import Database


def _migrations() -> list[tuple[int, str, ModuleType]]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.append((int(info.name[1:5]), info.name[6:], module))
    return sorted(found)


def applied_versions(db: Database) -> set[int]:
    with db.transaction() as tx:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        return {row[0] for row in tx.execute("SELECT version FROM schema_migrations")}


def migrate(db: Database) -> list[str]:
    """Apply missing migrations in order; return the names applied."""
    done = applied_versions(db)
    applied = []
    for version, name, module in _migrations():
        if version in done:
            continue
        with db.transaction() as tx:
            for statement in module.statements(db.dialect):
                tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                [version, name, datetime.now(UTC)],
            )
        applied.append(f"{version:04d}_{name}")
    return applied


def latest_version() -> int:
    return max(version for version, _, _ in _migrations())
