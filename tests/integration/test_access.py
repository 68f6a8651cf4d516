"""Access and privacy against real parts: argon2id hashes, sessions and CSRF over real HTTP
(the real app from `create_app` plus the access router, served by uvicorn on a free port),
login throttling, API tokens with a role, every access route × every role, masking of
personal data, the chained audit log, and GDPR export and erasure on DuckDB and
PostgreSQL — down to the bytes of the DuckDB file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import uvicorn
from fastapi import Depends
from fastapi.routing import APIRoute
from pydantic import SecretStr
from typer.testing import CliRunner

from keepers.access import Forbidden, LoginThrottled, mask_personal
from keepers.access.gdpr import (
    address_hash,
    compact_if_pending,
    customer_columns,
    customer_family,
    drop_erased,
    erased_among,
    is_erased,
    pending_marker,
    personal_tables,
    sweep_after_erasure,
)
from keepers.access.masking import mask_email, mask_ip, mask_name, mask_phone
from keepers.access.roles import PERMISSIONS, ROLES, allowed, check_role
from keepers.access.throttle import ThrottlePolicy
from keepers.domain.events import normalize_message
from keepers.errors import InvalidInput, Unauthorized
from keepers.services.access import AccessService, Principal, cli_principal
from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.store.events import prepare_batch, write_events
from keepers.testing.postgres import free_port
from keepers.web.access_api import access_router, require

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
PASSWORD = "correct horse battery staple"
CANARY_EMAIL = "Canary.Person@Example.org"
CANARY_USER = "canary-user-7f3a9c41"
CANARY_ANON = "canary-anon-5be21d77"
CANARY_ANON2 = "canary-anon-second-91c0"
CANARY_OLD = "canary-old-login-33aa"
CANARY_PHONE = "+44 20 7946 0958"
CANARY_IP = "198.51.100.23"
CANARY_NAME = "Cassandra"
PERSONAL = [CANARY_EMAIL, CANARY_EMAIL.lower(), CANARY_PHONE, CANARY_IP, CANARY_NAME]
WELCOME = {
    "key": "welcome",
    "trigger": {"stage_entered": "conversion"},
    "steps": [
        {
            "id": "hello",
            "email": {"subject": "Hi", "html": "<a href='{{ unsubscribe_url }}'>unsubscribe</a>"},
        }
    ],
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": str(uuid.uuid4()), **fields}


def seed_canary(keepers: Keepers) -> None:
    """One customer with everything: two anonymous ids merged in, an alias, orders with
    lines, a refund, an account, consent, a suppressed address, journey rows, computed
    state, and a quarantined payload naming them; plus another customer who must stay."""
    ip = {"ip": CANARY_IP, "userAgent": "Mozilla/5.0"}
    traits = {
        "email": CANARY_EMAIL,
        "phone": CANARY_PHONE,
        "first_name": CANARY_NAME,
        "last_name": "Quill",
    }
    visit = message("page", anonymousId=CANARY_ANON2, name="Home", context=ip)
    assert keepers.ingest_messages([visit], "test").stored == 1  # a profile of its own
    first = [
        message("identify", userId=CANARY_USER, anonymousId=CANARY_ANON, traits=traits),
        message("identify", userId=CANARY_USER, anonymousId=CANARY_ANON2, context=ip),
        message("alias", previousId=CANARY_OLD, userId=CANARY_USER),
        message("group", userId=CANARY_USER, groupId="acme", traits={"name": "Acme"}),
        message("identify", userId="other-1", traits={"email": "other1@example.com"}),
    ]
    assert keepers.ingest_messages(first, "test").stored == len(first)
    keepers.journeys.save(WELCOME)
    products = [{"product_id": "p1", "price": 20.0}, {"product_id": "p2", "price": 10.0}]
    later = [
        message(
            "track",
            userId=CANARY_USER,
            event="Order Completed",
            properties={"order_id": "canary-order-1", "revenue": 30.0, "products": products},
        ),
        message(
            "track",
            userId=CANARY_USER,
            event="Order Refunded",
            properties={"order_id": "canary-order-1", "total": 10.0},
        ),
        message(
            "track",
            userId="other-1",
            event="Order Completed",
            properties={"order_id": "other-order-1", "revenue": 5.0, "products": products},
        ),
    ]
    assert keepers.ingest_messages(later, "test").stored == len(later)
    keepers.compute()
    keepers.journeys.run()
    keepers.journeys.set_consent(CANARY_USER, "marketing", "granted", source="test")
    with keepers.db.transaction() as tx:
        tx.execute(
            "INSERT INTO suppressions VALUES (?, 'email', 'hard bounce', ?)",
            [address_hash(CANARY_EMAIL), datetime.now(UTC)],
        )
        tx.execute(
            "INSERT INTO rejected_events VALUES ('test', ?, 'bad', 'bad input', ?)",
            [datetime.now(UTC), json.dumps({"userId": CANARY_USER, "x": 1})],
        )


def seed_sales_and_referrals(tx: Any, canary: int, other: int) -> None:
    """A deal whose contact is the canary, and a friend they referred (when the sales and
    referral tables exist in this tree)."""
    tables = {r[0] for r in tx.execute("SELECT table_name FROM information_schema.tables")}
    now = datetime.now(UTC)
    if "deals" in tables:
        tx.execute(
            "INSERT INTO deals (deal_id, name, pipeline, account_id, customer_id, amount, "
            "stage, status, created_at, updated_at, source) "
            "VALUES ('D-1', 'Acme renewal', 'default', 'acme', ?, 900.0, 'discovery', 'open', "
            "?, ?, 'test')",
            [canary, now, now],
        )
    if "referral_attributions" in tables:
        tx.execute(
            "INSERT INTO referral_attributions VALUES (?, ?, 'CANARY1', 'code', NULL, ?, ?, NULL)",
            [other, canary, now, now],
        )


def personal_tables_of(keepers: Keepers) -> list[str]:
    with keepers.db.transaction() as tx:
        return personal_tables(tx)


def rows(keepers: Keepers, sql: str, params: list[Any] | None = None) -> list[tuple]:
    with keepers.db.transaction() as tx:
        return tx.execute(sql, params or [])


def tables_mentioning(keepers: Keepers, needle: str) -> dict[str, int]:
    """Every base table with rows whose any column, as text, contains `needle`."""
    found = {}
    with keepers.db.transaction() as tx:
        tables = tx.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema = current_schema() AND table_catalog = current_database()"
        )
        for (table,) in tables:
            columns = tx.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND table_schema = current_schema()",
                [table],
            )
            match = " OR ".join(f'CAST("{c}" AS TEXT) ILIKE ?' for (c,) in columns)
            n = tx.execute(
                f'SELECT count(*) FROM "{table}" WHERE {match}', [f"%{needle}%"] * len(columns)
            )[0][0]
            if n:
                found[table] = n
    return found


@pytest.fixture
def access(keepers: Keepers) -> AccessService:
    return AccessService(keepers.db, keepers.clock)


ADMIN = cli_principal("cli:tests")


# --- roles and masking ------------------------------------------------------------------------


def test_roles_are_data_and_unknown_names_fail_closed() -> None:
    assert set(ROLES) == {"admin", "marketing", "sales", "finance", "support", "analyst"}
    assert all(perms <= set(PERMISSIONS) for perms in ROLES.values())
    assert ROLES["admin"] == frozenset(PERMISSIONS)
    assert allowed("marketing", "segments.write") and allowed("marketing", "journeys.write")
    assert allowed("sales", "deals.write") and allowed("finance", "revenue.read")
    assert allowed("finance", "customers.export") and not allowed("support", "customers.export")
    assert not any(allowed("analyst", p) for p in PERMISSIONS if not p.endswith(".read"))
    assert not allowed("admin", "no.such.permission") and not allowed("root", "users.manage")
    with pytest.raises(InvalidInput, match="role: unknown role 'root'"):
        check_role("root")


def test_personal_data_is_masked_by_kind_and_found_anywhere() -> None:
    assert mask_email("ann@example.com") == "a***@example.com"
    assert mask_name("Ann Smith") == "A*** S***"
    assert mask_phone(CANARY_PHONE) == "***58"
    assert mask_ip("203.0.113.7") == "203.0.x.x" and mask_ip("2001:db8::1") == "2001:0db8:x"
    row = {
        "customer_id": 7,
        "email": "ann@example.com",
        "traits": {"name": "Ann Smith", "plan": "pro", "phone": "0123 456 789"},
        "context": {"ip": "203.0.113.7", "page": {"url": "/x"}},
        "properties": {"note": "write to ann@example.com", "name": "Blue Mug"},
        "items": [{"name": "Tea", "email": None}],
    }
    masked = mask_personal(row)
    assert masked == {
        "customer_id": 7,
        "email": "a***@example.com",
        "traits": {"name": "A*** S***", "plan": "pro", "phone": "***89"},
        "context": {"ip": "203.0.x.x", "page": {"url": "/x"}},
        "properties": {"note": "write to a***@example.com", "name": "Blue Mug"},
        "items": [{"name": "Tea", "email": None}],
    }
    assert row["email"] == "ann@example.com"  # the input is not changed


# --- users, passwords, sessions, throttling (store level, both databases) ---------------------


def test_passwords_are_argon2id_hashes_and_never_stored_plain(keepers, access) -> None:
    created = access.create_user("Ann@Example.com", "support", PASSWORD, by=ADMIN)
    assert created["password"] is None and created["user"]["email"] == "ann@example.com"
    [(stored,)] = rows(keepers, "SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert tables_mentioning(keepers, PASSWORD) == {}
    generated = access.create_user("bob@example.com", "analyst", by=ADMIN)["password"]
    assert len(generated) >= 20 and access.login("bob@example.com", generated)["session"]
    with pytest.raises(InvalidInput, match="email: a user with this email already exists"):
        access.create_user("ANN@example.com", "analyst", PASSWORD, by=ADMIN)
    with pytest.raises(InvalidInput, match="password: use at least 12 characters"):
        access.create_user("cy@example.com", "analyst", "short", by=ADMIN)
    with pytest.raises(InvalidInput, match="email: not an email address"):
        access.create_user("not-an-email", "analyst", PASSWORD, by=ADMIN)


def test_wrong_password_unknown_and_disabled_users_get_the_same_refusal(access) -> None:
    access.create_user("ann@example.com", "support", PASSWORD, by=ADMIN)
    answers = []
    for email, password in [
        ("ann@example.com", PASSWORD + "!"),
        ("nobody@example.com", PASSWORD),
    ]:
        with pytest.raises(Unauthorized) as refused:
            access.login(email, password)
        answers.append(refused.value.message)
    assert access.login("ann@example.com", PASSWORD)["user"]["role"] == "support"
    access.disable_user("ann@example.com", by=ADMIN)
    with pytest.raises(Unauthorized) as refused:
        access.login("ann@example.com", PASSWORD)
    assert answers == [refused.value.message] * 2 == ["wrong email or password"] * 2


def test_login_is_throttled_per_email_and_per_ip_then_released(keepers) -> None:
    clock = Clock()
    policy = ThrottlePolicy(per_email=5, per_ip=8, window=timedelta(minutes=15))
    access = AccessService(keepers.db, clock, throttle=policy)
    access.create_user("ann@example.com", "support", PASSWORD, by=ADMIN)
    for _ in range(5):
        with pytest.raises(Unauthorized):
            access.login("ann@example.com", "wrong password!", ip="10.0.0.1")
    with pytest.raises(LoginThrottled) as throttled:
        access.login("ann@example.com", PASSWORD, ip="10.0.0.2")  # even the right password
    assert 0 < throttled.value.retry_after_s <= 15 * 60
    clock.advance(minutes=15, seconds=1)
    assert access.login("ann@example.com", PASSWORD, ip="10.0.0.2")["session"]
    for i in range(8):  # many accounts from one address
        with pytest.raises(Unauthorized):
            access.login(f"guess{i}@example.com", "wrong password!", ip="10.0.0.9")
    with pytest.raises(LoginThrottled):
        access.login("ann@example.com", PASSWORD, ip="10.0.0.9")
    assert access.login("ann@example.com", PASSWORD, ip="10.0.0.3")["session"]
    actions = [e["action"] for e in access.audit(action="login.")]
    assert actions.count("login.failure") == 13 and actions.count("login.throttled") == 2


def test_sessions_rotate_expire_and_end_with_the_user(keepers) -> None:
    clock = Clock()
    access = AccessService(keepers.db, clock)
    access.create_user("ann@example.com", "sales", PASSWORD, by=ADMIN)
    first = access.login("ann@example.com", PASSWORD)["session"]
    second = access.login("ann@example.com", PASSWORD, replaces=first)["session"]
    assert access.session_principal(first) is None
    assert access.session_principal(second).role == "sales"
    assert tables_mentioning(keepers, second) == {}  # stored hashed
    clock.advance(minutes=59)
    assert access.session_principal(second) is not None  # and touched: idle restarts
    clock.advance(minutes=59)
    assert access.session_principal(second) is not None
    clock.advance(hours=1, seconds=1)
    assert access.session_principal(second) is None  # idle
    third = access.login("ann@example.com", PASSWORD)["session"]
    for _ in range(14):  # active all the time (14 × 55 min), still ends after 12 h
        clock.advance(minutes=55)
        access.session_principal(third)
    assert access.session_principal(third) is None
    fourth = access.login("ann@example.com", PASSWORD)["session"]
    access.disable_user("ann@example.com", by=ADMIN)
    assert access.session_principal(fourth) is None


def test_api_tokens_are_hashed_shown_once_and_revoked_at_once(keepers, access) -> None:
    created = access.create_token("BI export", "analyst", by=ADMIN)
    assert created["token"].startswith("kp_") and len(created["token"]) >= 40
    assert tables_mentioning(keepers, created["token"]) == {}
    principal = access.token_principal(created["token"])
    assert (principal.role, principal.name) == ("analyst", "BI export")
    assert "token" not in access.list_tokens(by=ADMIN)[0]
    access.revoke_token(created["token_id"], by=ADMIN)
    assert access.token_principal(created["token"]) is None
    with pytest.raises(Forbidden):
        access.create_token("x", "admin", by=principal)


# --- the audit log ------------------------------------------------------------------------------


def test_audit_rows_for_users_exports_and_erasures_and_a_chain_that_shows_tampering(
    keepers, access
) -> None:
    seed_canary(keepers)
    access.create_user("ann@example.com", "support", PASSWORD, by=ADMIN, ip="10.1.2.3")
    access.export_customer(CANARY_USER, by=ADMIN)
    access.erase_customer(CANARY_USER, by=ADMIN, purge=False)
    entries = access.audit()
    assert [e["action"] for e in entries][:3] == [
        "customer.erase",
        "customer.export",
        "user.create",
    ]
    erase, export, create = entries[:3]
    assert create["actor"] == "cli:tests" and create["ip"] == "10.1.2.3"
    assert create["detail"] == {"email": "ann@example.com", "role": "support"}
    assert export["target"] == erase["target"] and re.fullmatch(r"customer:\d+", erase["target"])
    assert erase["detail"]["rows"] > 10 and erase["detail"]["identifiers"]["email"] == 1
    assert all(p.lower() not in json.dumps(entries).lower() for p in PERSONAL)
    assert access.verify_audit() == {"rows": 3, "ok": True, "broken_at": None}
    second = sorted(e["audit_id"] for e in entries)[1]
    with keepers.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = 'someone else' WHERE audit_id = ?", [second])
    assert access.verify_audit() == {"rows": 3, "ok": False, "broken_at": second}


def test_audit_text_cannot_forge_lines(access) -> None:
    forged = Principal(kind="cli", name="eve\r\n2026 admin did nothing\x1b[2J", role="admin")
    access.record(forged, "definitions.apply", "x\ny")
    [entry] = access.audit()
    assert "\n" not in entry["actor"] + entry["target"] and "\x1b" not in entry["actor"]
    assert entry["actor"] == "eve\\x0d\\x0a2026 admin did nothing\\x1b[2J"


# --- GDPR: export, erasure, re-ingestion ----------------------------------------------------


def test_export_has_every_row_about_the_customer_and_their_merged_profiles(keepers, access):
    seed_canary(keepers)
    data = access.export_customer(CANARY_EMAIL, by=ADMIN)
    json.dumps(data)  # JSON-ready
    tables = data["tables"]
    assert len(data["customers"]) == 2  # the anonymous visitor merged into them
    assert {r["event"] for r in tables["events"] if r["event"]} >= {
        "Order Completed",
        "Order Refunded",
    }
    assert len(tables["events"]) == 7  # page, 2 identify, alias, group, order, refund
    assert [o["order_id"] for o in tables["orders"]] == ["canary-order-1"]
    assert len(tables["order_items"]) == 2 and len(tables["refunds"]) == 1
    assert {i["value"] for i in tables["identities"]} >= {CANARY_USER, CANARY_ANON, CANARY_ANON2}
    [survivor] = [c for c in tables["customers"] if c["customer_id"] == data["customer_id"]]
    assert survivor["traits"]["phone"] == CANARY_PHONE and survivor["merged_into"] is None
    assert tables["consent"][0]["status"] == "granted" and len(tables["suppressions"]) == 1
    assert tables["customer_state"] and tables["stage_history"] and tables["outbox"]
    assert "other1@example.com" not in json.dumps(data) and "other-order-1" not in json.dumps(data)
    finance = Principal(kind="api_token", name="fin", role="finance", token_id="t")
    masked = json.dumps(access.export_customer(CANARY_USER, by=finance))
    assert all(p not in masked for p in PERSONAL) and "c***@example.org" in masked
    support = Principal(kind="api_token", name="sup", role="support", token_id="t")
    with pytest.raises(Forbidden):
        access.export_customer(CANARY_USER, by=support)


def test_erasure_removes_the_customer_from_every_table_and_keeps_suppression(keepers, access):
    seed_canary(keepers)
    with keepers.db.transaction() as tx:
        family = customer_family(
            tx,
            tx.execute("SELECT customer_id FROM customers WHERE user_id = ?", [CANARY_USER])[0][0],
        )
        tables = customer_columns(tx)
        other = tx.execute("SELECT customer_id FROM customers WHERE user_id = 'other-1'")[0][0]
        seed_sales_and_referrals(tx, family[0], other)
    assert personal_tables_of(keepers) == list(tables)
    assert len(family) == 2 and {"events", "outbox", "customer_state", "consent"} <= set(tables)
    others = rows(keepers, "SELECT count(*) FROM events WHERE user_id = 'other-1'")[0][0]
    result = access.erase_customer(CANARY_EMAIL, by=ADMIN)
    assert result["customers"] == family
    assert result["identifiers"] == {"user": 1, "anon": 3, "email": 1}  # the alias is an anon
    assert result["rows"]["events"] == 7 and result["suppressions_kept"] == 1
    in_list = ", ".join(str(c) for c in family)
    for table, columns in tables.items():
        for column, _ in columns:
            sql = f'SELECT count(*) FROM "{table}" WHERE "{column}" IN ({in_list})'
            assert rows(keepers, sql) == [(0,)], (table, column)
    if "deals" in tables:  # the deal is the company's: it stays, without its contact
        assert rows(keepers, "SELECT customer_id, amount FROM deals") == [(None, 900.0)]
        assert result["rows"]["deals.customer_id (cleared)"] == 1
    if "referral_attributions" in tables:  # whom they referred: gone with them
        assert result["rows"]["referral_attributions"] == 1
    for needle in ("canary", "cassandra", CANARY_PHONE, CANARY_IP):
        assert tables_mentioning(keepers, needle) == {}, needle
    assert rows(keepers, "SELECT count(*) FROM events WHERE user_id = 'other-1'")[0][0] == others
    assert rows(keepers, "SELECT count(*) FROM order_items WHERE order_id = 'other-order-1'") == [
        (2,)
    ]
    assert rows(keepers, "SELECT address_hash FROM suppressions") == [(address_hash(CANARY_EMAIL),)]
    hashes = rows(keepers, "SELECT value_hash, kind FROM erased_identities ORDER BY kind")
    assert [k for _, k in hashes] == ["anon", "anon", "anon", "email", "user"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h, _ in hashes)
    if keepers.database_kind == "postgres":
        assert "events" in result["storage"]["vacuumed"]
    else:
        assert result["storage"]["checkpointed"] and result["storage"]["compaction_pending"]
    with pytest.raises(Exception, match="no customer"):
        access.erase_customer(CANARY_USER, by=ADMIN)


def ingest_with_hook(keepers: Keepers, messages: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """What the ingest writer does once wired: drop erased people, then write."""
    now = datetime.now(UTC)
    batch = prepare_batch("test", [normalize_message(m, received_at=now) for m in messages])
    with keepers.db.transaction() as tx:
        return write_events(tx, drop_erased(tx, [batch]), [], now)


def test_erased_identifiers_are_refused_at_ingest(keepers, access) -> None:
    seed_canary(keepers)
    assert ingest_with_hook(keepers, [message("track", userId="x", event="e")])  # nobody erased
    access.erase_customer(CANARY_USER, by=ADMIN)
    with keepers.db.transaction() as tx:
        assert is_erased(tx, "user", CANARY_USER) and is_erased(tx, "anon", CANARY_ANON2)
        assert is_erased(tx, "email", " canary.person@EXAMPLE.org ")
        assert is_erased(tx, "user", CANARY_EMAIL.lower())  # a userId that is the email
        assert not is_erased(tx, "user", "other-1") and not is_erased(tx, "email", "a@b.example")
        assert erased_among(tx, [CANARY_OLD, "other-1"]) == {CANARY_OLD}
    again = [
        message("track", userId=CANARY_USER, event="Came Back"),
        message("page", anonymousId=CANARY_ANON, name="Home"),
        message("identify", userId="new-login", traits={"email": CANARY_EMAIL}),
        message("alias", previousId=CANARY_OLD, userId="fresh-id"),
        message("track", userId="other-1", event="Still Here"),
    ]
    stored = ingest_with_hook(keepers, again)
    assert {m for _, m in stored} == {again[-1]["messageId"]}
    for needle in ("canary", "new-login", "fresh-id"):
        assert tables_mentioning(keepers, needle) == {}, needle


def test_the_sweep_catches_what_a_racing_writer_stored(keepers, access) -> None:
    seed_canary(keepers)
    started = datetime.now(UTC) - timedelta(seconds=5)
    result = access.erase_customer(CANARY_USER, by=ADMIN, purge=False)
    # what a writer that started before the erasure committed could still store:
    now = datetime.now(UTC)
    late = [message("identify", userId=CANARY_USER, traits={"email": "x@example.com"})]
    batch = prepare_batch("test", [normalize_message(m, received_at=now) for m in late])
    with keepers.db.transaction() as tx:  # its transaction began before the erasure's commit
        assert write_events(tx, [batch], [], now)
    with keepers.db.transaction() as tx:
        tx.execute(
            "INSERT INTO rejected_events VALUES ('test', ?, 'store_error', 'x', ?)",
            [datetime.now(UTC), json.dumps({"user_id": CANARY_USER, "traits": None})],
        )
        again = sweep_after_erasure(tx, result["customers"], started)
    [(revived,)] = rows(
        keepers, "SELECT customer_id FROM customers WHERE user_id = ?", [CANARY_USER]
    )
    assert again == [revived] and revived not in result["customers"]
    assert tables_mentioning(keepers, "store_error") == {}


def test_duckdb_file_holds_no_byte_of_the_erased_customer(tmp_path) -> None:
    path = tmp_path / "keepers.duckdb"
    keepers = Keepers.open(Settings(database_url=str(path)))
    try:
        seed_canary(keepers)
        keepers.ingest_messages(  # enough other data for full blocks, not only shared ones
            [
                message("identify", userId=f"u{i}", traits={"email": f"p{i}@ex.org"})
                for i in range(3000)
            ],
            "test",
        )
        result = AccessService(keepers.db, keepers.clock).erase_customer(CANARY_USER, by=ADMIN)
        assert result["storage"]["checkpointed"]
        assert not Path(str(path) + ".wal").exists()  # checkpointed: nothing in the WAL
    finally:
        keepers.close()
    assert pending_marker(path).exists()
    assert compact_if_pending(path)["compacted"] and not pending_marker(path).exists()
    data = path.read_bytes()
    for needle in (CANARY_EMAIL, CANARY_EMAIL.lower(), CANARY_USER, CANARY_ANON, CANARY_ANON2):
        assert needle.encode() not in data, needle
    assert b"canary" not in data.lower()
    reopened = Keepers.open(Settings(database_url=str(path)))
    try:
        assert rows(reopened, "SELECT count(*) FROM customers WHERE user_id LIKE 'u%'") == [(3000,)]
        new = reopened.ingest_messages([message("identify", userId="after")], "test")
        assert new.stored == 1  # the sequences survived the rewrite: no id is reused
        assert rows(reopened, "SELECT max(customer_id) FROM customers") == rows(
            reopened, "SELECT customer_id FROM customers WHERE user_id = 'after'"
        )
    finally:
        reopened.close()


def test_compaction_waits_while_another_process_holds_the_file(tmp_path) -> None:
    path = tmp_path / "keepers.duckdb"
    Keepers.open(Settings(database_url=str(path))).close()
    pending_marker(path).write_text("pending\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; con = duckdb.connect({str(path)!r}); print('held', "
            "flush=True); time.sleep(3)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert compact_if_pending(path) is None and pending_marker(path).exists()
    finally:
        holder.wait(timeout=30)
    assert compact_if_pending(path)["compacted"] and not pending_marker(path).exists()


# --- over HTTP: the real app with the access router ----------------------------------------


@dataclass
class Served:
    url: str
    keepers: Keepers
    access: AccessService
    clock: Clock
    write_key: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def _paths(route: Any) -> set[str]:
    inner = getattr(route, "original_router", None) or getattr(route, "router", None)
    if inner is not None and inner is not route:
        return {p for r in inner.routes for p in _paths(r)}
    return {getattr(route, "path", "")}


@contextlib.contextmanager
def serve_with_access(settings: Settings) -> Iterator[Served]:
    """The real app on a free port, on a clock the test moves."""
    from keepers.web.app import create_app

    settings = settings.model_copy(update={"admin_token": SecretStr(ADMIN_TOKEN)})
    clock = Clock()
    keepers = Keepers.open(settings, clock=clock)
    app = create_app(settings, keepers)
    service = app.state.access_guard.service

    @app.get("/api/demo/segments")
    def demo_read(principal: Principal = Depends(require("segments.read"))) -> dict:
        return {"role": principal.role}

    @app.post("/api/demo/segments")
    def demo_write(principal: Principal = Depends(require("segments.write"))) -> dict:
        return {"role": principal.role}

    _, write_key = keepers.create_write_key("tests")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", keepers, service, clock, write_key)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        keepers.close()


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    with serve_with_access(settings) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_in(client: httpx.Client, email: str, password: str = PASSWORD, **kw: Any) -> httpx.Response:
    return client.post("/api/login", json={"email": email, "password": password}, **kw)


def session_headers(response: httpx.Response, csrf: bool = True) -> dict[str, str]:
    headers = {"Cookie": f"keepers_session={response.cookies['keepers_session']}"}
    if csrf:
        headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return headers


def test_login_sets_a_secure_httponly_lax_cookie_and_me_answers(served) -> None:
    served.access.create_user("ann@example.com", "marketing", PASSWORD, by=ADMIN)
    with served.client() as client:
        response = log_in(client, "ann@example.com")
        assert response.status_code == 200, response.text
        cookies = response.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("keepers_session="))
        csrf = next(c for c in cookies if c.startswith("keepers_csrf="))
        attributes = {a.strip().lower() for a in session.split(";")[1:]}
        assert {"httponly", "secure", "samesite=lax", "path=/", "max-age=43200"} <= attributes
        assert "httponly" not in csrf.lower() and "samesite=strict" in csrf.lower()
        me = client.get("/api/me", headers=session_headers(response, csrf=False)).json()
        assert me["role"] == "marketing" and "segments.write" in me["permissions"]
        assert me["csrf_token"] == response.json()["csrf_token"]
        form = client.post(
            "/api/login",
            data={"email": "ann@example.com", "password": PASSWORD, "next": "/dashboard"},
        )
        assert form.status_code == 303 and form.headers["location"] == "/dashboard"
        offsite = client.post(
            "/api/login",
            data={"email": "ann@example.com", "password": PASSWORD, "next": "//evil.example"},
        )
        assert offsite.status_code == 200
        wrong = log_in(client, "ann@example.com", "not the password")
        assert wrong.status_code == 401 and wrong.json()["message"] == "wrong email or password"
        assert client.post("/api/login", json={"email": "ann@example.com"}).status_code == 400
        assert client.post("/api/login", content=b"{not json").status_code == 400


def test_login_throttling_answers_429_with_retry_after(settings) -> None:
    # the default policy: 5 failures per email, 20 per address, in 15 minutes
    with serve_with_access(settings) as served, served.client() as client:
        served.access.create_user("ann@example.com", "support", PASSWORD, by=ADMIN)
        codes = [log_in(client, "ann@example.com", "wrong password!").status_code for _ in range(5)]
        assert codes == [401] * 5
        throttled = log_in(client, "ann@example.com")
        assert throttled.status_code == 429, throttled.text
        assert 1 <= int(throttled.headers["Retry-After"]) <= 900
        assert throttled.json()["code"] == "too_many_attempts"
        served.clock.advance(minutes=16)
        assert log_in(client, "ann@example.com").status_code == 200
        for i in range(20):
            log_in(client, f"nobody{i}@example.com", "wrong password!")
        assert log_in(client, "ann@example.com").status_code == 429  # this IP, any account


def test_csrf_is_required_on_changes_made_with_the_session_cookie(served) -> None:
    served.access.create_user("root@example.com", "admin", PASSWORD, by=ADMIN)
    with served.client() as client:
        login = log_in(client, "root@example.com")
        no_token = session_headers(login, csrf=False)
        token = login.json()["csrf_token"]
        body = {"name": "ci", "role": "analyst"}
        missing = client.post("/api/tokens", json=body, headers=no_token)
        assert missing.status_code == 403 and missing.json()["code"] == "csrf_failed"
        wrong = client.post(
            "/api/tokens", json=body, headers={**no_token, "X-CSRF-Token": "x" * 43}
        )
        assert wrong.status_code == 403
        cross = client.post(
            "/api/tokens",
            json=body,
            headers={**no_token, "X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"},
        )
        assert cross.status_code == 403
        right = client.post("/api/tokens", json=body, headers={**no_token, "X-CSRF-Token": token})
        assert right.status_code == 201, right.text
        assert client.get("/api/tokens", headers=no_token).status_code == 200  # reads need none
        assert client.post("/api/demo/segments", headers=no_token).status_code == 403
        assert client.post("/api/demo/segments", headers=session_headers(login)).status_code == 200
        form_logout = client.post("/api/logout", data={"csrf_token": token}, headers=no_token)
        assert form_logout.status_code == 204
        assert client.get("/api/me", headers=no_token).status_code == 401  # the session ended
        again = log_in(client, "root@example.com", headers=no_token)  # rotates: a new id
        assert again.cookies["keepers_session"] != login.cookies["keepers_session"]


def test_an_analyst_token_can_read_but_not_write_and_write_keys_open_nothing(served) -> None:
    analyst = served.access.create_token("BI", "analyst", by=ADMIN)["token"]
    marketing = served.access.create_token("CRM", "marketing", by=ADMIN)["token"]
    with served.client() as client:
        assert client.get("/api/demo/segments", headers=bearer(analyst)).json() == {
            "role": "analyst"
        }
        assert client.post("/api/demo/segments", headers=bearer(analyst)).status_code == 403
        assert (
            client.post(
                "/api/tokens", json={"name": "x", "role": "admin"}, headers=bearer(analyst)
            ).status_code
            == 403
        )
        assert client.post("/api/demo/segments", headers=bearer(marketing)).status_code == 200
        assert client.post("/api/demo/segments", headers=bearer(ADMIN_TOKEN)).status_code == 200
        assert client.get("/api/demo/segments", auth=(served.write_key, "")).status_code == 401
        assert client.get("/api/demo/segments").status_code == 401
        assert client.get("/api/demo/segments", headers=bearer("kp_nope")).status_code == 401
    denied = served.access.audit(action="access.denied")
    assert len(denied) == 2 and denied[0]["target"] == "POST /api/tokens"


# The authorisation matrix: every route of the access router, the permission it needs
# (None: any caller who is logged in; "public": anyone).
MATRIX = {
    ("POST", "/api/login"): "public",
    ("POST", "/api/logout"): None,
    ("GET", "/api/me"): None,
    ("GET", "/api/roles"): None,
    ("POST", "/api/users"): "users.manage",
    ("GET", "/api/users"): "users.manage",
    ("POST", "/api/users/{user}/disable"): "users.manage",
    ("POST", "/api/tokens"): "keys.manage",
    ("GET", "/api/tokens"): "keys.manage",
    ("DELETE", "/api/tokens/{token_id}"): "keys.manage",
    ("GET", "/api/audit"): "audit.read",
    ("GET", "/api/audit/verify"): "audit.read",
    ("GET", "/api/customers/{customer}/export"): "customers.export",
    ("DELETE", "/api/customers/{customer}"): "customers.erase",
}


def test_the_matrix_names_every_route_of_the_router(keepers) -> None:
    router = access_router(keepers, ADMIN_TOKEN)
    routes = {(m, r.path) for r in router.routes if isinstance(r, APIRoute) for m in r.methods}
    assert routes == set(MATRIX)


def test_every_route_times_every_role_is_allowed_or_refused_and_masked(served) -> None:
    seed_canary(served.keepers)
    victims = [message("identify", userId=f"victim-{i}") for i in range(20)]
    served.keepers.ingest_messages(victims, "test")
    callers: dict[str, dict[str, str]] = {"admin-token": bearer(ADMIN_TOKEN)}
    for role in ROLES:
        token = served.access.create_token(f"{role} token", role, by=ADMIN)["token"]
        callers[role] = bearer(token)
    served.access.create_user("support@example.com", "support", PASSWORD, by=ADMIN)
    counter = iter(range(10_000))

    def call(
        client: httpx.Client, method: str, path: str, headers: dict[str, str]
    ) -> httpx.Response:
        n = next(counter)
        if "{user}" in path:
            user = served.access.create_user(f"u{n}@example.com", "analyst", PASSWORD, by=ADMIN)
            path = path.replace("{user}", user["user"]["user_id"])
        if "{token_id}" in path:
            token = served.access.create_token(f"t{n}", "analyst", by=ADMIN)
            path = path.replace("{token_id}", token["token_id"])
        if method == "DELETE" and "{customer}" in path:
            path = path.replace("{customer}", f"victim-{n % 20}")
        path = path.replace("{customer}", CANARY_EMAIL)
        body = None
        if path == "/api/users":
            body = {"email": f"new{n}@example.com", "role": "analyst", "password": PASSWORD}
        elif path == "/api/tokens":
            body = {"name": f"n{n}", "role": "analyst"}
        elif path == "/api/login":
            body = {"email": "nobody@example.com", "password": "wrong password!"}
        return client.request(
            method, path, json=body if method == "POST" else None, headers=headers
        )

    mismatches = []
    with served.client() as client:
        login = log_in(client, "support@example.com")
        callers["support-session"] = session_headers(login)
        for (method, path), permission in MATRIX.items():
            for name, headers in callers.items():
                role = "admin" if name == "admin-token" else name.removesuffix("-session")
                response = call(client, method, path, headers)
                if permission == "public":
                    expected_ok = response.status_code != 403
                elif permission is None:
                    expected_ok = response.status_code < 400
                elif allowed(role, permission):
                    expected_ok = response.status_code < 400 or response.status_code == 404
                else:
                    expected_ok = response.status_code == 403
                if not expected_ok:
                    mismatches.append(
                        (method, path, name, response.status_code, response.text[:80])
                    )
                if not allowed(role, "customers.read_personal"):
                    leaked = [p for p in PERSONAL if p in response.text]
                    if leaked:
                        mismatches.append((method, path, name, "leaked", leaked))
                if name == "support-session" and path == "/api/logout":
                    login = log_in(client, "support@example.com")  # it ended: log in again
                    callers["support-session"] = session_headers(login)
            for anonymous in ({}, {"Authorization": "Basic " + _basic(served.write_key)}):
                response = call(client, method, path, anonymous)
                if permission != "public" and response.status_code != 401:
                    mismatches.append((method, path, "anonymous", response.status_code))
    assert mismatches == []


# Path parameters for the management API's routes in the matrix below.
FILL = {
    "{customer}": CANARY_EMAIL,
    "{name}": "rfm",
    "{key}": "welcome",
    "{deal_id}": "d-none",
    "{element}": "champion",
    "{code}": "NOCODE",
    "{key_id}": "wk-none",
}


def _effective_routes(app: Any) -> set[tuple[str, str]]:
    def walk(route: Any) -> Iterator[Any]:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            for r in inner.routes:
                yield from walk(r)
        else:
            yield route

    return {
        (m, r.path)
        for top in app.routes
        for r in walk(top)
        if isinstance(r, APIRoute) and r.path.startswith("/api/")
        for m in r.methods
    }


def test_every_management_route_has_a_permission_in_the_table(served) -> None:
    from keepers.web.app import create_app
    from keepers.web.permissions import ROUTE_PERMISSIONS

    app = create_app(served.keepers.settings, served.keepers)
    routes = _effective_routes(app) - {
        ("GET", "/api/demo/segments"),
        ("POST", "/api/demo/segments"),
    }
    assert routes == set(ROUTE_PERMISSIONS) | set(MATRIX)
    assert set(ROUTE_PERMISSIONS).isdisjoint(MATRIX)
    assert set(ROUTE_PERMISSIONS.values()) <= set(PERMISSIONS)


def test_every_management_route_times_every_role_is_refused_or_served_and_masked(served) -> None:
    """Every /api route × every role: a role without the route's permission gets 403
    (before anything runs: no body is even read), one with it never does, and no answer
    to a role without `customers.read_personal` carries the customer's personal data."""
    from keepers.web.permissions import ROUTE_PERMISSIONS

    seed_canary(served.keepers)
    served.keepers.compute(full=True)
    callers = {"admin-token": ("admin", bearer(ADMIN_TOKEN))}
    for role in ROLES:
        token = served.access.create_token(f"{role} token", role, by=ADMIN)["token"]
        callers[role] = (role, bearer(token))
    mismatches = []
    with served.client() as client:
        for (method, path), permission in sorted(ROUTE_PERMISSIONS.items()):
            url = path
            for hole, value in FILL.items():
                url = url.replace(hole, value)
            if path == "/api/reports/{name}/customers":
                url += "?segment=champions"
            for name, (role, headers) in callers.items():
                response = client.request(method, url, headers=headers)
                if allowed(role, permission):
                    ok = response.status_code not in (401, 403)
                else:
                    ok = response.status_code == 403 and permission in response.text
                if not ok:
                    mismatches.append((method, path, name, response.status_code))
                if not allowed(role, "customers.read_personal"):
                    leaked = [p for p in PERSONAL if p.lower() in response.text.lower()]
                    if leaked:
                        mismatches.append((method, path, name, "leaked", leaked))
            anonymous = client.request(method, url)
            with_write_key = client.request(method, url, auth=(served.write_key, ""))
            if (anonymous.status_code, with_write_key.status_code) != (401, 401):
                mismatches.append((method, path, "anonymous/write key", anonymous.status_code))
        # revenue reports need revenue.read on top of reports.read
        clv = {
            n: client.get("/api/reports/clv", headers=h).status_code
            for n, (_, h) in callers.items()
        }
        assert {n for n, code in clv.items() if code == 403} == {"marketing", "support"}
    assert mismatches == []


def test_personal_data_reaches_roles_that_need_it_and_is_masked_for_the_rest(served) -> None:
    seed_canary(served.keepers)
    served.keepers.compute(full=True)
    tokens = {
        role: served.access.create_token(role, role, by=ADMIN)["token"]
        for role in ("support", "marketing")
    }
    with served.client() as client:
        path = f"/api/customers/{CANARY_USER}/explain"
        support = client.get(path, headers=bearer(tokens["support"]))
        marketing = client.get(path, headers=bearer(tokens["marketing"]))
    assert support.status_code == marketing.status_code == 200
    email = CANARY_EMAIL.lower()  # as the store keeps it
    assert email in support.text  # support needs to see who they talk to
    assert email not in marketing.text and mask_email(email) in marketing.text


def test_changes_through_the_api_are_audited_with_who_made_them(served) -> None:
    token = served.access.create_token("CRM", "marketing", by=ADMIN)
    with served.client() as client:
        response = client.put(
            "/api/segments/big_spenders",
            json={"rule": "revenue >= 100"},
            headers=bearer(token["token"]),
        )
        assert response.status_code == 200, response.text
        refused = client.put(
            "/api/definitions", json={"definitions": {}}, headers=bearer(token["token"])
        )
        assert refused.status_code == 403
    entries = served.access.audit(limit=10)
    change = next(e for e in entries if e["action"] == "api.put")
    assert change["target"] == "PUT /api/segments/big_spenders"
    assert change["actor"] == f"token:{token['token_id']}:CRM" and change["role"] == "marketing"
    assert any(
        e["action"] == "access.denied" and e["target"] == "PUT /api/definitions" for e in entries
    )
    history = served.keepers.lifecycle.definitions_history()
    assert history[-1]["actor"] == f"token:{token['token_id']}:CRM"


def _basic(write_key: str) -> str:
    import base64

    return base64.b64encode(f"{write_key}:".encode()).decode()


def test_erase_over_http_is_audited_and_the_customer_is_gone(served) -> None:
    seed_canary(served.keepers)
    with served.client() as client:
        response = client.delete(f"/api/customers/{CANARY_USER}", headers=bearer(ADMIN_TOKEN))
        assert response.status_code == 200, response.text
        assert response.json()["identifiers"]["email"] == 1
        assert (
            client.get(
                f"/api/customers/{CANARY_USER}/export", headers=bearer(ADMIN_TOKEN)
            ).status_code
            == 404
        )
        entries = client.get("/api/audit?action=customer.", headers=bearer(ADMIN_TOKEN)).json()
        assert entries[0]["action"] == "customer.erase" and entries[0]["actor"] == "admin-token"


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    from keepers.cli_access import customers_app, tokens_app, users_app

    root = typer.Typer()
    root.add_typer(users_app, name="users")
    root.add_typer(tokens_app, name="tokens")
    root.add_typer(customers_app, name="customers")
    return root


def test_cli_users_and_tokens(cli, duckdb_url) -> None:
    runner = CliRunner()
    db = ["--db", duckdb_url]
    made = runner.invoke(cli, ["users", "create", "Ann@Example.com", "--role", "sales", *db])
    assert made.exit_code == 0, made.output
    password = re.search(r"password: (\S+)", made.output).group(1)
    typed = runner.invoke(
        cli,
        ["users", "create", "bo@example.com", "--role", "analyst", "--password-stdin", *db],
        input=PASSWORD + "\n",
    )
    assert typed.exit_code == 0 and "password:" not in typed.output
    bad = runner.invoke(cli, ["users", "create", "cy@example.com", "--role", "root", *db])
    assert bad.exit_code == 2 and "role: unknown role 'root'" in bad.output
    listed = json.loads(runner.invoke(cli, ["users", "list", "--json", *db]).output)
    assert [(u["email"], u["role"]) for u in listed] == [
        ("ann@example.com", "sales"),
        ("bo@example.com", "analyst"),
    ]
    assert runner.invoke(cli, ["users", "disable", "ann@example.com", *db]).exit_code == 0
    token = json.loads(
        runner.invoke(
            cli, ["tokens", "create", "--name", "BI", "--role", "finance", "--json", *db]
        ).output
    )
    assert token["token"].startswith("kp_")
    shown = runner.invoke(cli, ["tokens", "list", *db]).output
    assert token["token_id"] in shown and token["token"] not in shown
    assert runner.invoke(cli, ["tokens", "revoke", token["token_id"], *db]).exit_code == 0
    again = runner.invoke(cli, ["tokens", "revoke", token["token_id"], *db])
    assert again.exit_code == 2 and "no active API token" in again.output
    keepers = Keepers.open(Settings(database_url=duckdb_url))
    try:
        access = AccessService(keepers.db, keepers.clock)
        with pytest.raises(Unauthorized):
            access.login("ann@example.com", password)  # disabled
        assert access.login("bo@example.com", PASSWORD)["user"]["role"] == "analyst"
        actions = {e["action"] for e in access.audit()}
        assert {"user.create", "user.disable", "token.create", "token.revoke"} <= actions
    finally:
        keepers.close()


def test_cli_exports_then_erases_and_compacts(cli, duckdb_url, tmp_path) -> None:
    keepers = Keepers.open(Settings(database_url=duckdb_url))
    seed_canary(keepers)
    keepers.close()
    runner = CliRunner()
    out = tmp_path / "canary.json"
    exported = runner.invoke(
        cli, ["customers", "export", CANARY_EMAIL, "-o", str(out), "--db", duckdb_url]
    )
    assert exported.exit_code == 0, exported.output
    assert (os.stat(out).st_mode & 0o777) == 0o600
    assert json.loads(out.read_text())["tables"]["orders"][0]["order_id"] == "canary-order-1"
    refused = runner.invoke(cli, ["customers", "erase", CANARY_USER, "--db", duckdb_url])
    assert refused.exit_code == 2 and "--yes" in refused.output
    erased = runner.invoke(
        cli, ["customers", "erase", CANARY_USER, "--yes", "--json", "--db", duckdb_url]
    )
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.output)["storage"]["compacted"] is True
    data = Path(duckdb_url).read_bytes()
    assert CANARY_EMAIL.lower().encode() not in data and CANARY_USER.encode() not in data
    missing = runner.invoke(cli, ["customers", "erase", CANARY_USER, "--yes", "--db", duckdb_url])
    assert missing.exit_code == 2 and "no customer" in missing.output
