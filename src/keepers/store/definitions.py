"""Versioned definitions: every save is a new version with who, when and what changed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keepers.store.database import Tx


@dataclass(frozen=True)
class DefinitionVersion:
    version: int
    body: dict[str, Any]
    created_at: datetime
    actor: str
    summary: str


def read_definitions(tx: Tx, version: int | None = None) -> DefinitionVersion | None:
    """The current (or a given) version, or None when nothing was ever saved."""
    where = "WHERE version = ?" if version is not None else ""
    rows = tx.execute(
        f"SELECT version, CAST(body AS TEXT), created_at, actor, summary FROM definition_versions "
        f"{where} ORDER BY version DESC LIMIT 1",
        [version] if version is not None else [],
    )
    if not rows:
        return None
    number, body, created_at, actor, summary = rows[0]
    return DefinitionVersion(number, json.loads(body), created_at, actor, summary)


def save_definitions(
    tx: Tx, body: dict[str, Any], *, actor: str, summary: str, now: datetime
) -> int:
    """Store a new version and return its number."""
    latest = tx.execute("SELECT COALESCE(MAX(version), 0) FROM definition_versions")[0][0]
    version = int(latest) + 1
    tx.execute(
        f"INSERT INTO definition_versions VALUES (?, CAST(? AS {tx.dialect.json_type}), ?, ?, ?)",
        [version, json.dumps(body), now, actor, summary],
    )
    return version


def list_definition_versions(tx: Tx, limit: int = 50) -> list[DefinitionVersion]:
    rows = tx.execute(
        "SELECT version, created_at, actor, summary FROM definition_versions "
        "ORDER BY version DESC LIMIT ?",
        [limit],
    )
    return [DefinitionVersion(v, {}, at, actor, summary) for v, at, actor, summary in rows]
