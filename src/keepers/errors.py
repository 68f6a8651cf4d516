"""One error root for Keepers, translated once per edge (HTTP status, CLI exit line).

KeepersError                  base; `code` is a stable machine-readable name
├── InvalidInput              bad input from a user or client      → HTTP 400, CLI exit 2
│   ├── PayloadTooLarge       over a size limit                    → HTTP 413
│   ├── ImportFileError       a whole file cannot be imported      → CLI exit 2
│   └── RuleError             a rule that does not parse or check  → HTTP 422, with position
├── Unauthorized              missing or wrong write key / token   → HTTP 401
├── NotFound                  no such object                       → HTTP 404
├── Overloaded                too much pending work; retry later   → HTTP 429 + Retry-After
├── StoreUnavailable          the store cannot take writes now     → HTTP 503 + Retry-After
└── DatabaseLocked            another process owns the DuckDB file → CLI exit 1 with what to do
"""

from __future__ import annotations


class KeepersError(Exception):
    """Base of every error Keepers raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(KeepersError):
    code = "invalid_input"
    http_status = 400


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"
    http_status = 413


class ImportFileError(InvalidInput, ValueError):
    """A whole file cannot be imported (unreadable, empty, required column missing)."""

    code = "import_file_error"


class RuleError(InvalidInput):
    """A rule (stage, segment, trait filter) that does not parse or refers to something
    unknown. `position` is the 0-based offset into `source`, `length` how many characters
    are wrong, `suggestion` a close known name when there is one."""

    code = "invalid_rule"
    http_status = 422

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        position: int = 0,
        length: int = 1,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.position = position
        self.length = max(1, length)
        self.suggestion = suggestion

    def pointer(self) -> str:
        """The rule with a caret line under the offending span, for terminals and logs."""
        return f"{self.source}\n{' ' * self.position}{'^' * self.length}"


class Unauthorized(KeepersError):
    code = "unauthorized"
    http_status = 401


class NotFound(KeepersError):
    code = "not_found"
    http_status = 404


class Overloaded(KeepersError):
    code = "overloaded"
    http_status = 429
    retry_after_s = 1


class StoreUnavailable(KeepersError):
    code = "store_unavailable"
    http_status = 503
    retry_after_s = 2


class DatabaseLocked(KeepersError):
    code = "database_locked"
