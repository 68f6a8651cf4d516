"""Referral codes: picked up from the shop, generated for customers without one, or set.

A code is what a referred friend types or clicks (`?ref=CODE`), so it is short, upper-case
and unambiguous: generated codes are hexadecimal (no O/0 or I/1 to confuse). Deterministic
codes are the first characters of md5(secret salt, round, customer id): the same customer
gets the same code on every store rebuild, yet nobody can derive a code from a customer id
without the salt (kept in the store's `secrets`). Codes already in use elsewhere are
adopted from the identify trait `referral_code`, which is how the demo shop (and most shops
with their own referral widget) hand them over.

Generation is set-based: one INSERT per round for every customer still without a code;
a code that collides (with a stored code or within the round) is retried in the next round
with another salt, so a handful of rounds settle any number of customers.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from keepers.errors import InvalidInput
from keepers.referrals.programme import CodeSettings
from keepers.referrals.sql import CODE_PATTERN, code_of, json_text
from keepers.store.database import Tx
from keepers.store.secrets import stored_secret

ROUNDS = 8
WHO = {
    "identified": "c.user_id IS NOT NULL",
    "buyers": "EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id)",
    "all": "TRUE",
}
_VALID = re.compile(r"^[A-Z0-9_-]{3,32}$")


def normalise_code(text: str) -> str:
    """A code as stored (upper-case, trimmed), or InvalidInput naming the field."""
    code = str(text).strip().upper()
    if not _VALID.match(code):
        raise InvalidInput(
            f"code: '{text}' is not a referral code (3–32 letters, digits, '-' or '_')"
        )
    return code


def adopt_trait_codes(tx: Tx, now: datetime) -> dict[str, int]:
    """Store the `referral_code` identify trait of every customer as their code.

    A code two customers both claim goes to the one seen first (lowest id); the other is
    counted as a conflict. Codes that are not valid codes are skipped."""
    trait = code_of(json_text("c.traits", "referral_code"))
    claimed = (
        f"SELECT {trait} AS code, c.customer_id FROM customers c "
        f"WHERE c.merged_into IS NULL AND {json_text('c.traits', 'referral_code')} IS NOT NULL"
    )
    fresh = (
        f"SELECT code, min(customer_id) AS customer_id FROM ({claimed}) t "
        f"WHERE code SIMILAR TO '{CODE_PATTERN}' "
        "AND NOT EXISTS (SELECT 1 FROM referral_codes r WHERE r.code = t.code) GROUP BY code"
    )
    added = tx.execute(
        f"INSERT INTO referral_codes SELECT code, customer_id, 'trait', ?, NULL FROM ({fresh}) f "
        "RETURNING code",
        [now],
    )
    conflicts = tx.execute(
        f"SELECT count(*) FROM ({claimed}) t JOIN referral_codes r ON r.code = t.code "
        "WHERE r.customer_id <> t.customer_id"
    )[0][0]
    return {"adopted": len(added), "conflicts": int(conflicts)}


def ensure_codes(
    tx: Tx,
    now: datetime,
    settings: CodeSettings,
    who: str | None = None,
    *,
    only: int | None = None,
) -> dict[str, int]:
    """Give every customer in `who` (identified, buyers, all) without an active code one;
    `only` narrows it to one customer id."""
    who = who or settings.for_customers
    if who not in WHO:
        raise InvalidInput(f"for: expected one of {', '.join(WHO)}, not '{who}'")
    salt = (
        stored_secret(tx, "referral_code_salt")
        if settings.style == "deterministic"
        else secrets.token_hex(16)
    )
    wanted = (
        f"SELECT c.customer_id FROM customers c WHERE c.merged_into IS NULL AND {WHO[who]} "
        f"{'' if only is None else f'AND c.customer_id = {int(only)} '}"
        "AND NOT EXISTS (SELECT 1 FROM referral_codes r "
        "WHERE r.customer_id = c.customer_id AND r.disabled_at IS NULL)"
    )
    created = 0
    for round_no in range(ROUNDS):
        length = settings.length + max(0, round_no - 2)  # longer codes if collisions persist
        candidate = (
            f"SELECT customer_id, upper(substr(md5(? || ':{round_no}:' || "
            f"CAST(customer_id AS TEXT)), 1, {length})) AS code FROM ({wanted}) w"
        )
        unique = (
            f"SELECT code, min(customer_id) AS customer_id FROM ({candidate}) c "
            "WHERE NOT EXISTS (SELECT 1 FROM referral_codes r WHERE r.code = c.code) "
            "GROUP BY code HAVING count(*) = 1"
        )
        rows = tx.execute(
            f"INSERT INTO referral_codes SELECT code, customer_id, 'generated', ?, NULL "
            f"FROM ({unique}) u RETURNING code",
            [now, salt],  # in the order the placeholders appear
        )
        created += len(rows)
        if not tx.execute(f"SELECT count(*) FROM ({wanted}) w")[0][0]:
            break
    return {"generated": created}


def set_code(tx: Tx, customer_id: int, code: str, now: datetime) -> str:
    """Give one customer a chosen code (a vanity code, or one from another system)."""
    code = normalise_code(code)
    owner = tx.execute("SELECT customer_id FROM referral_codes WHERE code = ?", [code])
    if owner and owner[0][0] != customer_id:
        raise InvalidInput(f"code: '{code}' already belongs to customer {owner[0][0]}")
    if not owner:
        tx.execute(
            "INSERT INTO referral_codes VALUES (?, ?, 'manual', ?, NULL)", [code, customer_id, now]
        )
    return code


def disable_code(tx: Tx, code: str, now: datetime) -> bool:
    """Stop a code from attributing new customers; rewards already opened stay."""
    rows = tx.execute(
        "UPDATE referral_codes SET disabled_at = ? WHERE code = ? AND disabled_at IS NULL "
        "RETURNING code",
        [now, normalise_code(code)],
    )
    return bool(rows)
