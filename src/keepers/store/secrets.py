"""Keys Keepers makes for itself and keeps in the store (unsubscribe-link and webhook
signing), so they survive restarts and are shared by every process on the same store."""

from __future__ import annotations

import secrets as random
from datetime import UTC, datetime

from keepers.store.database import Tx


def stored_secret(tx: Tx, name: str, make: str | None = None) -> str:
    """The secret called `name`, created (from `make`, else 32 random bytes as hex) on
    first use; the first writer wins when two processes race."""
    rows = tx.execute("SELECT value FROM secrets WHERE name = ?", [name])
    if rows:
        return rows[0][0]
    value = make or random.token_hex(32)
    tx.execute(
        "INSERT INTO secrets VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [name, value, datetime.now(UTC)],
    )
    return tx.execute("SELECT value FROM secrets WHERE name = ?", [name])[0][0]
