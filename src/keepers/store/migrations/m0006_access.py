"""Access: people who log in, their sessions, API tokens with a role, the audit log, and
the hashes of erased customers' identifiers.

Why these shapes:
- `users` hold an argon2id hash (the PHC string, parameters included, so they can be raised
  later and old hashes re-hashed at the next login); `disabled_at` instead of a delete, so
  the audit log's actors keep meaning something;
- `sessions` are keyed by the SHA-256 of the session id: a leaked database (or backup)
  gives no usable cookie. Each carries its own CSRF token, an absolute expiry and a
  last-seen time for the idle timeout; disabling a user deletes its sessions;
- `api_tokens` follow the write keys: random, shown once, stored as SHA-256, with a role;
- `login_attempts` is what throttling counts (failures per email hash and per IP in a
  window); the email is hashed because people type passwords into the email field;
- `audit_log` is append-only by convention and chained: every row carries the hash of the
  previous one, so a changed or deleted row breaks the chain (`verify_audit_chain`);
- `erased_identities` keeps salted hashes of an erased customer's userIds, anonymousIds
  and emails, so re-ingestion of the same person is refused without keeping who they were.
"""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    j = d.json_type
    tables = [
        "CREATE SEQUENCE IF NOT EXISTS audit_seq START 1",
        """CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            created_by TEXT NOT NULL,
            disabled_at TIMESTAMPTZ)""",
        """CREATE TABLE sessions (
            session_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            last_seen_at TIMESTAMPTZ NOT NULL,
            ip TEXT)""",
        """CREATE TABLE api_tokens (
            token_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            created_by TEXT NOT NULL,
            revoked_at TIMESTAMPTZ)""",
        """CREATE TABLE login_attempts (
            email_hash TEXT NOT NULL,
            ip TEXT,
            attempted_at TIMESTAMPTZ NOT NULL,
            success BOOLEAN NOT NULL)""",
        f"""CREATE TABLE audit_log (
            audit_id BIGINT PRIMARY KEY,
            logged_at TIMESTAMPTZ NOT NULL,
            actor TEXT NOT NULL,
            role TEXT,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            detail {j},
            ip TEXT,
            prev_hash TEXT NOT NULL,
            row_hash TEXT NOT NULL)""",
        """CREATE TABLE erased_identities (
            value_hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            erased_at TIMESTAMPTZ NOT NULL,
            erased_by TEXT NOT NULL,
            PRIMARY KEY (value_hash, kind))""",
    ]
    if d.name != "postgres":
        return tables
    return [
        *tables,
        "CREATE INDEX sessions_user ON sessions (user_id)",
        "CREATE INDEX login_attempts_email ON login_attempts (email_hash, attempted_at)",
        "CREATE INDEX login_attempts_ip ON login_attempts (ip, attempted_at)",
        "CREATE INDEX audit_log_action ON audit_log (action, logged_at)",
    ]
