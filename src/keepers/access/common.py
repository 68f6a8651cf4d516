"""Small helpers shared by the access modules: hashing secrets, checking emails, making text
safe for logs."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from keepers.errors import InvalidInput

_EMAIL = re.compile(r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def digest(secret: str) -> str:
    """SHA-256 of a random secret (session id, API token). A fast hash is right here: the
    secrets are ≥ 128 random bits, so there is nothing to guess (unlike passwords)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_email(email: str, field: str = "email") -> str:
    """A normalised (trimmed, lower-case) email address, else InvalidInput naming the field."""
    cleaned = (email or "").strip().lower() if isinstance(email, str) else ""
    if not cleaned or len(cleaned) > 320 or not _EMAIL.match(cleaned):
        raise InvalidInput(f"{field}: not an email address")
    return cleaned


def clean_text(value: object, limit: int = 500) -> str:
    """`value` as one line of printable text: control characters (CR, LF, ANSI escapes)
    become `\\xNN`, so nobody can forge audit lines or terminal output (ASVS 16.4.1)."""
    text = str(value)[:limit]
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def utc(moment: datetime) -> datetime:
    """A moment in UTC (PostgreSQL answers in the session's zone, DuckDB in UTC)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
