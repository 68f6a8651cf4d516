"""Access and privacy: who may see and change what, and what happens to personal data.

- `roles`: roles and permissions as data; `allowed(role, permission)`.
- `masking`: personal data masked for roles without `customers.read_personal`.
- `passwords`, `users`, `sessions`, `throttle`: argon2id logins, cookie sessions with
  CSRF tokens, and login throttling.
- `tokens`: API tokens that carry a role (hashed, shown once).
- `audit`: the chained audit log.
- `gdpr`: export one customer, erase one customer everywhere, refuse their re-ingestion.

Errors raised here beyond `keepers.errors`:

    KeepersError
    ├── Forbidden            authenticated, but the role lacks the permission → HTTP 403
    │   └── CsrfFailed       a cookie-authenticated change without its CSRF token  → 403
    └── Overloaded
        └── LoginThrottled   too many failed logins for the email or IP → 429 + Retry-After

This package sits just above `store` (it writes its own tables, like `store` does) and
below `ingest`, whose writer calls `gdpr.drop_erased`.
"""

from __future__ import annotations

from keepers.errors import KeepersError, Overloaded


class Forbidden(KeepersError):
    """The caller is known, but its role may not do this."""

    code = "forbidden"
    http_status = 403


class CsrfFailed(Forbidden):
    """A state-changing request authenticated by the session cookie came without the
    session's CSRF token (or from another site)."""

    code = "csrf_failed"


class LoginThrottled(Overloaded):
    """Too many failed logins; `retry_after_s` says when to try again."""

    code = "too_many_attempts"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


from keepers.access.masking import PERSONAL_FIELDS, for_role, mask_personal  # noqa: E402
from keepers.access.roles import PERMISSIONS, ROLES, allowed, check_role  # noqa: E402

__all__ = [
    "PERMISSIONS",
    "PERSONAL_FIELDS",
    "ROLES",
    "CsrfFailed",
    "Forbidden",
    "LoginThrottled",
    "allowed",
    "check_role",
    "for_role",
    "mask_personal",
]
