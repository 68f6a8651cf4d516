"""Access use cases behind one object: users, logins and sessions, API tokens, the audit log,
and the GDPR export and erasure. Plain data in, plain data out; every change is one
transaction that also writes its audit row.

Every method that acts for someone takes `by`, the `Principal` doing it, and checks its
permission here too — the web layer checks first, this is the second lock on the door.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keepers.access import CsrfFailed, Forbidden, LoginThrottled
from keepers.access.audit import audit_lock, list_audit, verify_audit_chain, write_audit
from keepers.access.common import check_email, utc
from keepers.access.gdpr import (
    erase_customer,
    export_customer,
    purge_storage,
    sweep_after_erasure,
)
from keepers.access.masking import for_role
from keepers.access.passwords import (
    check_password,
    generate_password,
    hash_password,
    needs_rehash,
    verify_password,
)
from keepers.access.roles import allowed, check_role, permissions_of
from keepers.access.sessions import (
    IDLE_TIMEOUT,
    SESSION_LIFETIME,
    create_session,
    delete_session,
    purge_expired_sessions,
    read_session,
)
from keepers.access.throttle import (
    DEFAULT_POLICY,
    ThrottlePolicy,
    prune_attempts,
    record_attempt,
    retry_after,
)
from keepers.access.tokens import (
    create_api_token,
    list_api_tokens,
    read_api_token,
    revoke_api_token,
)
from keepers.access.users import (
    create_user,
    disable_user,
    find_user,
    list_users,
    read_user_for_login,
    set_password_hash,
)
from keepers.engine.compute import COMPUTE_LOCK
from keepers.errors import InvalidInput, NotFound, Unauthorized
from keepers.services.lifecycle import compute_transaction, resolve_customer
from keepers.store.database import Database

LOGIN_FAILED = "wrong email or password"


@dataclass(frozen=True)
class Principal:
    """Who is asking: a logged-in user, an API token, the admin token, or the CLI."""

    kind: str  # "session" | "api_token" | "admin_token" | "cli"
    name: str
    role: str
    user_id: str | None = None
    token_id: str | None = None
    csrf_token: str | None = field(default=None, repr=False)

    def can(self, permission: str) -> bool:
        return allowed(self.role, permission)

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        if self.kind == "session":
            return f"user:{self.name}"
        if self.kind == "api_token":
            return f"token:{self.token_id}:{self.name}"
        return self.name

    def public(self) -> dict[str, Any]:
        answer = {
            "kind": self.kind,
            "name": self.name,
            "role": self.role,
            "user_id": self.user_id,
            "token_id": self.token_id,
            "permissions": permissions_of(self.role),
        }
        if self.csrf_token:
            answer["csrf_token"] = self.csrf_token
        return answer

    def check_csrf(self, presented: str | None) -> None:
        """For session principals: the request's CSRF token must be the session's."""
        if self.kind != "session":
            return
        if (
            not presented
            or not self.csrf_token
            or not hmac.compare_digest(presented.encode(), self.csrf_token.encode())
        ):
            raise CsrfFailed(
                "this change needs the session's CSRF token in the X-CSRF-Token header "
                "or the csrf_token form field"
            )


ADMIN_TOKEN = Principal(kind="admin_token", name="admin-token", role="admin")


def cli_principal(actor: str) -> Principal:
    """The person at the terminal: whoever can read the store's file or URL is its admin."""
    return Principal(kind="cli", name=actor, role="admin")


class AccessService:
    """Users, sessions, tokens, audit and GDPR on one store."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        *,
        throttle: ThrottlePolicy = DEFAULT_POLICY,
        session_lifetime: timedelta = SESSION_LIFETIME,
        idle_timeout: timedelta = IDLE_TIMEOUT,
    ) -> None:
        self.db = db
        self.clock = clock
        self.throttle = throttle
        self.session_lifetime = session_lifetime
        self.idle_timeout = idle_timeout

    def _tx(self) -> Any:
        return self.db.transaction()

    @staticmethod
    def _require(by: Principal, permission: str) -> None:
        if not by.can(permission):
            raise Forbidden(f"the {by.role} role may not do this (needs {permission})")

    # --- audit ---------------------------------------------------------------------------------

    def record(
        self,
        by: Principal,
        action: str,
        target: str | None = None,
        *,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
        ip: str | None = None,
    ) -> None:
        """Write one audit row in its own transaction (for routes that change things
        elsewhere: definitions, journeys, keys, and refused requests)."""
        with audit_lock(self.db), self._tx() as tx:
            write_audit(
                tx,
                actor=by.actor,
                role=by.role,
                action=action,
                target=target,
                outcome=outcome,
                detail=detail,
                ip=ip,
                now=self.clock(),
            )

    def audit(
        self,
        *,
        limit: int = 100,
        action: str | None = None,
        actor: str | None = None,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        with self._tx() as tx:
            return list_audit(tx, limit=limit, action=action, actor=actor, before=before)

    def verify_audit(self) -> dict[str, Any]:
        with self._tx() as tx:
            return verify_audit_chain(tx)

    # --- users -----------------------------------------------------------------------------------

    def create_user(
        self,
        email: str,
        role: str,
        password: str | None = None,
        *,
        by: Principal,
        ip: str | None = None,
    ) -> dict[str, Any]:
        """A new user. Without a password one is generated and returned — only here."""
        self._require(by, "users.manage")
        email, role = check_email(email), check_role(role)
        generated = password is None
        password = generate_password() if password is None else check_password(password)
        password_hash = hash_password(password)  # slow on purpose: outside the transaction
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            user = create_user(tx, email, role, password_hash, by.actor, now)
            write_audit(
                tx,
                actor=by.actor,
                role=by.role,
                action="user.create",
                target=f"user:{user.user_id}",
                detail={"email": email, "role": role},
                ip=ip,
                now=now,
            )
        return {"user": user.public(), "password": password if generated else None}

    def has_users(self) -> bool:
        with self._tx() as tx:
            return bool(tx.execute("SELECT 1 FROM users LIMIT 1"))

    def reset_user(self, email: str, role: str, *, by: Principal) -> str:
        """Create `email` with `role`, or give the existing user `role` and enable it, and
        set a new generated password, returned once (the demo's login). Audited."""
        self._require(by, "users.manage")
        email, role = check_email(email), check_role(role)
        password = generate_password()
        password_hash = hash_password(password)
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            user = find_user(tx, email)
            if user is None:
                user = create_user(tx, email, role, password_hash, by.actor, now)
            else:
                set_password_hash(tx, user.user_id, password_hash)
                tx.execute(
                    "UPDATE users SET role = ?, disabled_at = NULL WHERE user_id = ?",
                    [role, user.user_id],
                )
                tx.execute("DELETE FROM sessions WHERE user_id = ?", [user.user_id])
            write_audit(
                tx,
                actor=by.actor,
                role=by.role,
                action="user.reset",
                target=f"user:{user.user_id}",
                detail={"email": email, "role": role},
                now=now,
            )
        return password

    def list_users(self, *, by: Principal) -> list[dict[str, Any]]:
        self._require(by, "users.manage")
        with self._tx() as tx:
            return [user.public() for user in list_users(tx)]

    def disable_user(
        self, reference: str, *, by: Principal, ip: str | None = None
    ) -> dict[str, Any]:
        """Disable a user (by id or email); its sessions end at once."""
        self._require(by, "users.manage")
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            user = find_user(tx, reference)
            if user is None:
                raise NotFound(f"no user {reference!r}")
            changed = disable_user(tx, user.user_id, now)
            if changed:
                write_audit(
                    tx,
                    actor=by.actor,
                    role=by.role,
                    action="user.disable",
                    target=f"user:{user.user_id}",
                    ip=ip,
                    now=now,
                )
            user = find_user(tx, user.user_id)
        return {"user": user.public() if user else None, "changed": changed}

    # --- login and sessions ------------------------------------------------------------------

    def login(
        self, email: str, password: str, *, ip: str | None = None, replaces: str | None = None
    ) -> dict[str, Any]:
        """Check a password and open a session: `{"session": id for the cookie,
        "csrf_token", "expires_at", "user"}`. Throttled → LoginThrottled (429); wrong
        email, wrong password or disabled user → the same Unauthorized (401)."""
        email = check_email(email)
        if not isinstance(password, str) or not password:
            raise InvalidInput("password: required")
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            wait = retry_after(tx, email, ip, now, self.throttle)
            found = read_user_for_login(tx, email)
            if wait is not None:
                self._login_audit(tx, found, "login.throttled", "denied", ip, now)
        if wait is not None:
            raise LoginThrottled(f"too many failed logins; try again in {wait} s", wait)
        user, stored = found if found else (None, None)
        active = user is not None and user.active
        ok = verify_password(stored if active else None, password)
        session = None
        with audit_lock(self.db), self._tx() as tx:
            record_attempt(tx, email, ip, ok, now)
            if not (ok and user is not None and stored is not None):
                self._login_audit(tx, found, "login.failure", "denied", ip, now)
            else:
                if replaces:
                    delete_session(tx, replaces)  # a new id at every login
                session, token = create_session(tx, user.user_id, now, ip, self.session_lifetime)
                if needs_rehash(stored):
                    set_password_hash(tx, user.user_id, hash_password(password))
                self._login_audit(tx, found, "login.success", "ok", ip, now)
                prune_attempts(tx, now)
                purge_expired_sessions(tx, now, self.idle_timeout)
        if session is None or user is None:
            raise Unauthorized(LOGIN_FAILED)
        return {
            "session": token,
            "csrf_token": session.csrf_token,
            "expires_at": utc(session.expires_at).isoformat(),
            "user": user.public(),
        }

    @staticmethod
    def _login_audit(
        tx: Any, found: Any, action: str, outcome: str, ip: str | None, now: datetime
    ) -> None:
        user = found[0] if found else None
        write_audit(
            tx,
            actor=f"user:{user.email}" if user else "unknown",
            role=user.role if user else None,
            action=action,
            target=f"user:{user.user_id}" if user else None,
            outcome=outcome,
            ip=ip,
            now=now,
        )

    def logout(self, session: str, *, ip: str | None = None) -> bool:
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            found = read_session(tx, session, now, self.idle_timeout)
            ended = delete_session(tx, session)
            if found:
                write_audit(
                    tx,
                    actor=f"user:{found[1].email}",
                    role=found[1].role,
                    action="logout",
                    target=f"user:{found[1].user_id}",
                    ip=ip,
                    now=now,
                )
        return ended

    def session_principal(self, session: str | None) -> Principal | None:
        """The user behind a session cookie, or None (unknown, expired, idle, disabled)."""
        if not session:
            return None
        with self._tx() as tx:
            found = read_session(tx, session, self.clock(), self.idle_timeout)
        if found is None:
            return None
        live, user = found
        return Principal(
            kind="session",
            name=user.email,
            role=user.role,
            user_id=user.user_id,
            csrf_token=live.csrf_token,
        )

    def token_principal(self, secret: str | None) -> Principal | None:
        """The API token's principal, or None (unknown or revoked: at once, no cache)."""
        if not secret:
            return None
        with self._tx() as tx:
            token = read_api_token(tx, secret)
        if token is None:
            return None
        return Principal(
            kind="api_token", name=token.name, role=token.role, token_id=token.token_id
        )

    # --- API tokens -----------------------------------------------------------------------------

    def create_token(
        self, name: str, role: str, *, by: Principal, ip: str | None = None
    ) -> dict[str, Any]:
        """A new API token with a role; the token is in this answer only."""
        self._require(by, "keys.manage")
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            token, secret = create_api_token(tx, name, role, by.actor, now)
            write_audit(
                tx,
                actor=by.actor,
                role=by.role,
                action="token.create",
                target=f"token:{token.token_id}",
                detail={"name": token.name, "role": token.role},
                ip=ip,
                now=now,
            )
        return {**token.public(), "token": secret}

    def list_tokens(self, *, by: Principal) -> list[dict[str, Any]]:
        self._require(by, "keys.manage")
        with self._tx() as tx:
            return [token.public() for token in list_api_tokens(tx)]

    def revoke_token(self, token_id: str, *, by: Principal, ip: str | None = None) -> None:
        self._require(by, "keys.manage")
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            if not revoke_api_token(tx, token_id, now):
                raise NotFound(f"no active API token {token_id!r}")
            write_audit(
                tx,
                actor=by.actor,
                role=by.role,
                action="token.revoke",
                target=f"token:{token_id}",
                ip=ip,
                now=now,
            )

    # --- GDPR ----------------------------------------------------------------------------------

    def export_customer(
        self, reference: str, *, by: Principal, ip: str | None = None
    ) -> dict[str, Any]:
        """One customer's data (id, userId, anonymousId or email), audited, and masked
        unless the role may read personal data."""
        self._require(by, "customers.export")
        now = self.clock()
        with audit_lock(self.db), self._tx() as tx:
            data = export_customer(tx, resolve_customer(tx, reference))
            masked = not by.can("customers.read_personal")
            write_audit(
                tx,
                actor=by.actor,
                role=by.role,
                action="customer.export",
                target=f"customer:{data['customer_id']}",
                detail={
                    "rows": sum(len(rows) for rows in data["tables"].values()),
                    "masked": masked,
                },
                ip=ip,
                now=now,
            )
        return for_role(data, by.role)

    def erase_customer(
        self, reference: str, *, by: Principal, ip: str | None = None, purge: bool = True
    ) -> dict[str, Any]:
        """Erase a customer everywhere (see `keepers.access.gdpr`), catch anything a writer
        stored for them meanwhile, then make the bytes unrecoverable (`purge`)."""
        self._require(by, "customers.erase")
        started = self.clock()
        with self._erasure_tx() as tx:
            result = erase_customer(
                tx, resolve_customer(tx, reference), by.actor, now=started, role=by.role, ip=ip
            )
        erased: list[int] = list(result["customers"])  # the survivor first
        for _ in range(3):  # a writer that raced the erasure; each pass is short
            with self._erasure_tx() as tx:
                more = sweep_after_erasure(tx, erased, started - timedelta(minutes=1))
                more = [c for c in more if c not in erased]
                for customer in more:
                    again = erase_customer(tx, customer, by.actor, role=by.role, ip=ip)
                    erased.extend(c for c in again["customers"] if c not in erased)
            if not more:
                break
        result["customers"] = erased
        if purge:
            tables = sorted({name.split(".")[0] for name in result["rows"]})
            result["storage"] = purge_storage(self.db, tables)
        return result

    @contextmanager
    def _erasure_tx(self) -> Iterator[Any]:
        """A transaction no compute runs beside (a compute could write the customer's
        state back), holding the audit lock."""
        with ExitStack() as stack:
            stack.enter_context(audit_lock(self.db))
            tx = stack.enter_context(compute_transaction(self.db))
            if self.db.dialect.name == "postgres":
                tx.execute("SELECT pg_advisory_xact_lock(?)", [COMPUTE_LOCK])
            yield tx
