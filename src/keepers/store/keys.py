"""Write keys: random, shown once, stored as SHA-256 hashes (a leaked database leaks no key)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from keepers.store.database import Tx

KEY_PREFIX = "wk_"


@dataclass(frozen=True)
class WriteKey:
    key_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(write_key: str) -> str:
    return hashlib.sha256(write_key.encode("utf-8", "surrogatepass")).hexdigest()


def create_write_key(tx: Tx, name: str, now: datetime) -> tuple[WriteKey, str]:
    """A new key (192 random bits); returns the record and the key itself, shown once."""
    secret = KEY_PREFIX + secrets.token_urlsafe(24)
    record = WriteKey(
        key_id="key_" + secrets.token_hex(6),
        name=name,
        prefix=secret[:7],
        created_at=now,
        revoked_at=None,
    )
    tx.execute(
        "INSERT INTO write_keys VALUES (?, ?, ?, ?, ?, NULL)",
        [record.key_id, name, hash_key(secret), record.prefix, now],
    )
    return record, secret


def read_write_key_by_hash(tx: Tx, key_hash: str) -> WriteKey | None:
    rows = tx.execute(
        "SELECT key_id, name, prefix, created_at, revoked_at FROM write_keys "
        "WHERE key_hash = ? AND revoked_at IS NULL",
        [key_hash],
    )
    return WriteKey(*rows[0]) if rows else None


def list_write_keys(tx: Tx) -> list[WriteKey]:
    rows = tx.execute(
        "SELECT key_id, name, prefix, created_at, revoked_at FROM write_keys ORDER BY created_at"
    )
    return [WriteKey(*row) for row in rows]


def revoke_write_key(tx: Tx, key_id: str, now: datetime) -> bool:
    rows = tx.execute(
        "UPDATE write_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL "
        "RETURNING key_id",
        [now, key_id],
    )
    return bool(rows)
