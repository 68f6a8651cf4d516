"""People who log in: email, role, argon2id hash; disabled rather than deleted, so the audit
log's actors keep meaning something."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keepers.access.common import check_email, utc
from keepers.access.roles import check_role
from keepers.errors import InvalidInput
from keepers.store.database import Tx

_COLUMNS = "user_id, email, role, created_at, created_by, disabled_at"


@dataclass(frozen=True)
class User:
    user_id: str
    email: str
    role: str
    created_at: datetime
    created_by: str
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    def public(self) -> dict[str, Any]:
        """JSON-ready, without the hash."""
        return {
            "user_id": self.user_id,
            "email": self.email,
            "role": self.role,
            "created_at": utc(self.created_at).isoformat(),
            "created_by": self.created_by,
            "disabled_at": utc(self.disabled_at).isoformat() if self.disabled_at else None,
        }


def create_user(
    tx: Tx, email: str, role: str, password_hash: str, actor: str, now: datetime
) -> User:
    """A new user; InvalidInput when the email is taken (by an active or disabled user)."""
    email, role = check_email(email), check_role(role)
    if tx.execute("SELECT 1 FROM users WHERE email = ?", [email]):
        raise InvalidInput("email: a user with this email already exists")
    user = User("usr_" + secrets.token_hex(8), email, role, now, actor, None)
    tx.execute(
        "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, NULL)",
        [user.user_id, email, role, password_hash, now, actor],
    )
    return user


def read_user(tx: Tx, user_id: str) -> User | None:
    rows = tx.execute(f"SELECT {_COLUMNS} FROM users WHERE user_id = ?", [user_id])
    return User(*rows[0]) if rows else None


def read_user_for_login(tx: Tx, email: str) -> tuple[User, str] | None:
    """The user with this email and its password hash (None when unknown)."""
    rows = tx.execute(
        f"SELECT {_COLUMNS}, password_hash FROM users WHERE email = ?",
        [email.strip().lower()],
    )
    return (User(*rows[0][:6]), rows[0][6]) if rows else None


def find_user(tx: Tx, reference: str) -> User | None:
    """A user by id or email (what a CLI or admin types)."""
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM users WHERE user_id = ? OR email = ?",
        [reference.strip(), reference.strip().lower()],
    )
    return User(*rows[0]) if rows else None


def list_users(tx: Tx) -> list[User]:
    return [User(*row) for row in tx.execute(f"SELECT {_COLUMNS} FROM users ORDER BY email")]


def disable_user(tx: Tx, user_id: str, now: datetime) -> bool:
    """Disable a user and end all its sessions at once (ASVS 7.4.2)."""
    rows = tx.execute(
        "UPDATE users SET disabled_at = ? WHERE user_id = ? AND disabled_at IS NULL "
        "RETURNING user_id",
        [now, user_id],
    )
    tx.execute("DELETE FROM sessions WHERE user_id = ?", [user_id])
    return bool(rows)


def set_password_hash(tx: Tx, user_id: str, password_hash: str) -> None:
    tx.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", [password_hash, user_id])
