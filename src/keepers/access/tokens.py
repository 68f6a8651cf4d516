"""API tokens: like write keys (random, shown once, stored as SHA-256), but they carry a role
and open the management API with that role's permissions. Write keys stay ingest-only.

The `kp_` prefix lets secret scanners recognise a leaked token; 256 random bits leave
nothing to guess, so a fast hash at rest is enough (ASVS V11.5.1).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keepers.access.common import clean_text, digest, utc
from keepers.access.roles import check_role
from keepers.errors import InvalidInput
from keepers.store.database import Tx

TOKEN_PREFIX = "kp_"
_COLUMNS = "token_id, name, role, prefix, created_at, created_by, revoked_at"


@dataclass(frozen=True)
class ApiToken:
    token_id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "name": self.name,
            "role": self.role,
            "prefix": self.prefix,
            "created_at": utc(self.created_at).isoformat(),
            "created_by": self.created_by,
            "revoked_at": utc(self.revoked_at).isoformat() if self.revoked_at else None,
        }


def check_token_name(name: str, field: str = "name") -> str:
    cleaned = (name or "").strip() if isinstance(name, str) else ""
    if not cleaned or len(cleaned) > 200:
        raise InvalidInput(f"{field}: give a name of 1 to 200 characters")
    if clean_text(cleaned) != cleaned:
        raise InvalidInput(f"{field}: must not contain control characters")
    return cleaned


def create_api_token(
    tx: Tx, name: str, role: str, actor: str, now: datetime
) -> tuple[ApiToken, str]:
    """A new token; returns the record and the token itself, shown once."""
    name, role = check_token_name(name), check_role(role)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken("tok_" + secrets.token_hex(6), name, role, secret[:7], now, actor, None)
    tx.execute(
        "INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        [token.token_id, name, role, digest(secret), token.prefix, now, actor],
    )
    return token, secret


def read_api_token(tx: Tx, secret: str) -> ApiToken | None:
    """The active token with this secret, else None."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        [digest(secret)],
    )
    return ApiToken(*rows[0]) if rows else None


def list_api_tokens(tx: Tx) -> list[ApiToken]:
    rows = tx.execute(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at")
    return [ApiToken(*row) for row in rows]


def revoke_api_token(tx: Tx, token_id: str, now: datetime) -> bool:
    rows = tx.execute(
        "UPDATE api_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL "
        "RETURNING token_id",
        [now, token_id],
    )
    return bool(rows)
