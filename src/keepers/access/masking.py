"""Mask personal data for roles that do not need it (OWASP ASVS 8.2.3, field-level access).

Masking works on plain data (dicts, lists, rows as dicts), so every read path — API answers,
exports, dashboard pages — can pass its result through one function before it leaves.
Two rules, applied together:
- a key named in `PERSONAL_FIELDS` (at any depth, e.g. `traits.email`, `context.ip`)
  has its value masked by kind: `ann@example.com` → `a***@example.com`, `Ann Smith` →
  `A*** S***`, `+44 20 7946 0958` → `***58`, `203.0.113.7` → `203.0.x.x`;
- any other string that contains an email address has the address masked, because
  personal data also hides in free-form properties (`recipient`, `note`, a userId).
Names are masked only where they name people (`first_name`, `last_name`, and `name` inside
`traits`), so a product's `name` in an order line stays readable.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from keepers.access.roles import allowed

EMAIL_FIELDS = frozenset({"email", "email_address", "emailAddress", "recipient"})
NAME_FIELDS = frozenset(
    {"first_name", "last_name", "firstName", "lastName", "full_name", "fullName", "username"}
    | {"said_by", "contact_name"}
)
PHONE_FIELDS = frozenset({"phone", "phone_number", "phoneNumber", "mobile"})
IP_FIELDS = frozenset({"ip", "ip_address", "ipAddress"})
ADDRESS_FIELDS = frozenset(
    {"address", "street", "postal_code", "postalCode", "zip", "birthday", "birth_date"}
)
#: every key whose value is personal data, wherever it appears
PERSONAL_FIELDS = EMAIL_FIELDS | NAME_FIELDS | PHONE_FIELDS | IP_FIELDS | ADDRESS_FIELDS
#: keys that hold a person's attributes, where `name` means the person's name
PERSON_CONTAINERS = frozenset({"traits", "customer", "profile", "user"})

_EMAIL = re.compile(r"([A-Za-z0-9._%+\-']+)@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
MASK = "***"


def mask_email(value: str) -> str:
    """`ann@example.com` → `a***@example.com`: the domain stays (useful for support and
    deliverability), the person does not."""
    return _EMAIL.sub(lambda m: f"{m.group(1)[:1]}{MASK}@{m.group(2)}", value)


def mask_name(value: str) -> str:
    """`Ann Smith` → `A*** S***`: initials only."""
    return " ".join(f"{part[:1]}{MASK}" for part in value.split()) or MASK


def mask_phone(value: str) -> str:
    """`+44 20 7946 0958` → `***58`: the last two digits, enough to tell two numbers apart."""
    digits = re.sub(r"\D", "", value)
    return f"{MASK}{digits[-2:]}" if len(digits) > 4 else MASK


def mask_ip(value: str) -> str:
    """`203.0.113.7` → `203.0.x.x`; IPv6 keeps its first two groups."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return MASK
    if address.version == 4:
        return ".".join([*str(address).split(".")[:2], "x", "x"])
    return ":".join(address.exploded.split(":")[:2]) + ":x"


def _mask_field(key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, dict | list):
        return MASK  # a structured address or list of phones: nothing of it is needed
    text = str(value)
    if key in EMAIL_FIELDS:
        return mask_email(text) if "@" in text else MASK
    if key in PHONE_FIELDS:
        return mask_phone(text)
    if key in IP_FIELDS:
        return mask_ip(text)
    if key in NAME_FIELDS or key == "name":
        return mask_name(text)
    return MASK


def mask_personal(data: Any, *, person: bool = False) -> Any:
    """A copy of `data` with personal data masked (the input is not changed). `person`
    says that `data` describes a person, so its `name` key is a person's name."""
    if isinstance(data, dict):
        masked = {}
        for key, value in data.items():
            name = str(key)
            if name in PERSONAL_FIELDS or (person and name == "name"):
                masked[key] = _mask_field(name, value)
            else:
                masked[key] = mask_personal(value, person=name in PERSON_CONTAINERS)
        return masked
    if isinstance(data, list | tuple):
        return [mask_personal(item, person=person) for item in data]
    if isinstance(data, str) and "@" in data:
        return mask_email(data)
    return data


def for_role(data: Any, role: str) -> Any:
    """`data` as `role` may see it: unchanged with `customers.read_personal`, else masked."""
    return data if allowed(role, "customers.read_personal") else mask_personal(data)
