"""Login sessions and their CSRF tokens (OWASP ASVS V7; CSRF Prevention Cheat Sheet).

- The session id is 256 random bits in a cookie `keepers_session` with `HttpOnly` (no
  script can read it), `Secure` (never sent over plain HTTP), `SameSite=Lax` (not sent on
  cross-site POSTs) and `Path=/`. Only its SHA-256 is stored.
- Every login makes a new id (no session fixation); logout, expiry (absolute
  `SESSION_LIFETIME`, idle `IDLE_TIMEOUT`) and disabling the user end it.
- Each session has its own CSRF token. A state-changing request authenticated by the
  cookie must echo it in the `X-CSRF-Token` header or the `csrf_token` form field
  (synchronizer token; the `keepers_csrf` cookie carries the same value for pages' scripts,
  and cross-site requests cannot read it).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from keepers.access.common import digest
from keepers.access.users import User
from keepers.store.database import Tx

SESSION_COOKIE = "keepers_session"
CSRF_COOKIE = "keepers_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_LIFETIME = timedelta(hours=12)
IDLE_TIMEOUT = timedelta(hours=1)
TOUCH_EVERY = timedelta(minutes=1)  # last-seen is written at most this often per session
#: attributes of the session cookie (Starlette `set_cookie` names)
COOKIE_ATTRIBUTES = {"httponly": True, "secure": True, "samesite": "lax", "path": "/"}


@dataclass(frozen=True)
class Session:
    session_hash: str
    user_id: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime


def create_session(
    tx: Tx,
    user_id: str,
    now: datetime,
    ip: str | None = None,
    lifetime: timedelta = SESSION_LIFETIME,
) -> tuple[Session, str]:
    """A new session; returns it and the session id for the cookie (never stored)."""
    token = secrets.token_urlsafe(32)
    session = Session(digest(token), user_id, secrets.token_urlsafe(32), now, now + lifetime, now)
    tx.execute(
        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            session.session_hash,
            user_id,
            session.csrf_token,
            now,
            session.expires_at,
            now,
            (ip or "")[:64] or None,
        ],
    )
    return session, token


def read_session(
    tx: Tx, token: str, now: datetime, idle: timedelta = IDLE_TIMEOUT
) -> tuple[Session, User] | None:
    """The live session for a cookie value and its (active) user, else None. Touches
    `last_seen_at` so an idle timeout counts from the last request."""
    if not token or len(token) > 200:
        return None
    rows = tx.execute(
        "SELECT s.session_hash, s.user_id, s.csrf_token, s.created_at, s.expires_at, "
        "s.last_seen_at, u.email, u.role, u.created_at, u.created_by "
        "FROM sessions s JOIN users u ON u.user_id = s.user_id "
        "WHERE s.session_hash = ? AND u.disabled_at IS NULL AND s.expires_at > ? "
        "AND s.last_seen_at > ?",
        [digest(token), now, now - idle],
    )
    if not rows:
        return None
    row = rows[0]
    session = Session(*row[:6])
    user = User(session.user_id, row[6], row[7], row[8], row[9], None)
    if now - session.last_seen_at >= TOUCH_EVERY:
        tx.execute(
            "UPDATE sessions SET last_seen_at = ? WHERE session_hash = ?",
            [now, session.session_hash],
        )
    return session, user


def delete_session(tx: Tx, token: str) -> bool:
    rows = tx.execute(
        "DELETE FROM sessions WHERE session_hash = ? RETURNING user_id", [digest(token)]
    )
    return bool(rows)


def delete_user_sessions(tx: Tx, user_id: str) -> int:
    return len(tx.execute("DELETE FROM sessions WHERE user_id = ? RETURNING 1", [user_id]))


def purge_expired_sessions(tx: Tx, now: datetime, idle: timedelta = IDLE_TIMEOUT) -> None:
    tx.execute("DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?", [now, now - idle])


def csrf_matches(session: Session, presented: str | None) -> bool:
    """Whether the token sent with a request is this session's (constant-time compare)."""
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), session.csrf_token.encode())
