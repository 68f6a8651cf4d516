"""The audit log: who did what, as which role, to what, from where, when (UTC), with what
outcome (OWASP ASVS 16.2.1). Admins read it (`audit.read`).

Rows are chained: `row_hash = SHA-256(prev_hash ‖ the row's fields)`, so editing or deleting
a row breaks the chain at that row and `verify_audit_chain` says where. Writes are
serialised so the chain never forks: on PostgreSQL by an advisory lock held until commit,
on DuckDB (one owner process) by `audit_lock(db)` around the writing transaction.

Entries keep identifiers, never personal data: a customer is `customer:42`, not an email.
Text is cleaned of control characters, so no one can forge a line (ASVS 16.4.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from keepers.access.common import clean_text, utc
from keepers.store.database import Database, Tx

AUDIT_LOCK = 720_406  # PostgreSQL advisory lock serialising audit writes
GENESIS = "0" * 64
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_COLUMNS = (
    "audit_id, logged_at, actor, role, action, target, outcome, detail, ip, prev_hash, row_hash"
)


@contextlib.contextmanager
def audit_lock(db: Database) -> Iterator[None]:
    """Hold around a DuckDB transaction that writes audit rows (a no-op on PostgreSQL,
    where `write_audit` takes an advisory lock itself)."""
    if db.dialect.name == "postgres":
        yield
        return
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(db.url, threading.RLock())
    with lock:
        yield


def _canonical(detail: Any) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)


def _row_hash(prev_hash: str, fields: list[Any]) -> str:
    text = "\x1f".join("" if f is None else str(f) for f in fields)
    return hashlib.sha256((prev_hash + "\x1e" + text).encode()).hexdigest()


def write_audit(
    tx: Tx,
    *,
    actor: str,
    action: str,
    now: datetime,
    role: str | None = None,
    target: str | None = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    ip: str | None = None,
) -> int:
    """Append one entry in the caller's transaction; returns its id."""
    if tx.dialect.name == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", [AUDIT_LOCK])
    last = tx.execute("SELECT row_hash FROM audit_log ORDER BY audit_id DESC LIMIT 1")
    prev_hash = last[0][0] if last else GENESIS
    audit_id = tx.execute("SELECT nextval('audit_seq')")[0][0]
    fields = [
        audit_id,
        utc(now).isoformat(),
        clean_text(actor, 320),
        clean_text(role, 50) if role else None,
        clean_text(action, 100),
        clean_text(target, 500) if target else None,
        clean_text(outcome, 50),
        _canonical(detail) if detail is not None else None,
        clean_text(ip, 64) if ip else None,
    ]
    row_hash = _row_hash(prev_hash, fields)
    tx.execute(
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [fields[0], now, *fields[2:], prev_hash, row_hash],
    )
    return int(audit_id)


def _entry(row: tuple[Any, ...]) -> dict[str, Any]:
    detail = row[7]
    if isinstance(detail, str):
        detail = json.loads(detail)
    return {
        "audit_id": int(row[0]),
        "logged_at": utc(row[1]).isoformat(),
        "actor": row[2],
        "role": row[3],
        "action": row[4],
        "target": row[5],
        "outcome": row[6],
        "detail": detail,
        "ip": row[8],
    }


def list_audit(
    tx: Tx,
    *,
    limit: int = 100,
    action: str | None = None,
    actor: str | None = None,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first; `action` matches a prefix (`customer.` → export and erase), `before`
    pages back by id."""
    where, params = [], []
    if action:
        where.append("starts_with(action, ?)")
        params.append(action)
    if actor:
        where.append("actor = ?")
        params.append(actor)
    if before is not None:
        where.append("audit_id < ?")
        params.append(before)
    sql = f"SELECT {_COLUMNS} FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY audit_id DESC LIMIT ?"
    return [_entry(row) for row in tx.execute(sql, [*params, max(1, min(limit, 1000))])]


def verify_audit_chain(tx: Tx) -> dict[str, Any]:
    """Recompute the chain: `{"rows": n, "ok": bool, "broken_at": audit_id | None}`."""
    prev = GENESIS
    rows = tx.execute(f"SELECT {_COLUMNS} FROM audit_log ORDER BY audit_id")
    for row in rows:
        entry = _entry(row)
        fields = [
            entry["audit_id"],
            entry["logged_at"],
            entry["actor"],
            entry["role"],
            entry["action"],
            entry["target"],
            entry["outcome"],
            _canonical(entry["detail"]) if entry["detail"] is not None else None,
            entry["ip"],
        ]
        if row[9] != prev or _row_hash(prev, fields) != row[10]:
            return {"rows": len(rows), "ok": False, "broken_at": entry["audit_id"]}
        prev = row[10]
    return {"rows": len(rows), "ok": True, "broken_at": None}
