"""Login throttling: too many failures for one email or from one IP → 429 + Retry-After.

Counting failures in the store (not in memory) makes the limit hold across restarts and
across several PostgreSQL-backed servers. Failures before the email's last successful
login do not count. Throttled attempts are not recorded and not checked against the
password, so a guesser learns nothing while throttled and cannot extend the lock forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from keepers.access.common import digest, utc
from keepers.store.database import Tx


@dataclass(frozen=True)
class ThrottlePolicy:
    per_email: int = 5  # failures per email in `window` (OWASP ASVS 6.3.1: ≤ 100/h)
    per_ip: int = 20  # failures from one address in `window` (many accounts, one attacker)
    window: timedelta = timedelta(minutes=15)


DEFAULT_POLICY = ThrottlePolicy()


def email_key(email: str) -> str:
    """What is stored for an attempted email: a hash, since people sometimes type their
    password into the email field."""
    return digest("login:" + (email or "").strip().lower())


def record_attempt(tx: Tx, email: str, ip: str | None, success: bool, now: datetime) -> None:
    tx.execute(
        "INSERT INTO login_attempts VALUES (?, ?, ?, ?)",
        [email_key(email), (ip or "")[:64] or None, now, success],
    )


def retry_after(
    tx: Tx, email: str, ip: str | None, now: datetime, policy: ThrottlePolicy = DEFAULT_POLICY
) -> int | None:
    """Seconds until a login for this email from this IP may be tried again, or None
    when it may be tried now."""
    since = now - policy.window
    key = email_key(email)
    last_ok = tx.execute(
        "SELECT max(attempted_at) FROM login_attempts WHERE email_hash = ? AND success",
        [key],
    )[0][0]
    start = max(since, utc(last_ok)) if last_ok else since
    waits = [
        _wait(tx, "email_hash = ?", key, start, policy.per_email, policy.window, now),
        _wait(tx, "ip = ?", ip, since, policy.per_ip, policy.window, now) if ip else None,
    ]
    found = [w for w in waits if w is not None]
    return max(found) if found else None


def _wait(
    tx: Tx,
    where: str,
    value: str | None,
    start: datetime,
    limit: int,
    window: timedelta,
    now: datetime,
) -> int | None:
    """When `limit` failures are in the window, the wait until the oldest of the last
    `limit` leaves it (then one more try is allowed)."""
    rows = tx.execute(
        f"SELECT attempted_at FROM login_attempts WHERE {where} AND NOT success "
        "AND attempted_at > ? ORDER BY attempted_at DESC LIMIT ?",
        [value, start, limit],
    )
    if len(rows) < limit:
        return None
    lifted = utc(rows[-1][0]) + window
    return max(1, math.ceil((lifted - now).total_seconds()))


def prune_attempts(tx: Tx, now: datetime, keep: timedelta = timedelta(days=1)) -> None:
    """Forget attempts older than any window (they only matter for throttling)."""
    tx.execute("DELETE FROM login_attempts WHERE attempted_at < ?", [now - keep])
