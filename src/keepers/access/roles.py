"""Roles and permissions as data: which department may see and change what.

A permission is a `noun.verb` string; a role is a set of permissions. Routes ask
`allowed(role, permission)` and never test a role by name, so a new role is one entry here
and the authorisation matrix test covers it automatically.

Personal data (emails, names, phones, IPs) is shown only to roles holding
`customers.read_personal`; every other role sees it masked (see `keepers.access.masking`).
"""

from __future__ import annotations

from keepers.errors import InvalidInput

PERMISSIONS: dict[str, str] = {
    "customers.read": "see customer profiles, events, orders, stages and scores",
    "customers.read_personal": "see personal data (email, name, phone, IP) unmasked",
    "customers.write": "change one customer by hand (consent, traits)",
    "customers.export": "export customer data (one customer's GDPR export, lists)",
    "customers.erase": "erase a customer everywhere (GDPR Art. 17)",
    "segments.read": "see segments, their rules and members",
    "segments.write": "create, change and delete segments",
    "journeys.read": "see journeys, their stats and traces",
    "journeys.write": "create journeys, pause or resume them, run them now",
    "templates.write": "change email templates",
    "definitions.read": "see the stage model, traits and their history",
    "definitions.write": "change the stage model and traits; start a compute",
    "reports.read": "see lifecycle and analytics reports",
    "revenue.read": "see revenue, CLV and order values",
    "accounts.read": "see B2B accounts and deals",
    "accounts.write": "change B2B accounts",
    "deals.write": "create and move deals",
    "tasks.write": "create and close sales tasks",
    "leads.write": "change the lead-scoring model and rescore leads",
    "referrals.write": "change the referral programme and codes",
    "rewards.pay": "pay or void referral rewards",
    "ingest.write": "send events in bulk through the management API",
    "users.manage": "create and disable users",
    "keys.manage": "create and revoke write keys and API tokens",
    "audit.read": "read the audit log",
}

_READ = {"customers.read", "segments.read", "journeys.read", "definitions.read", "reports.read"}

ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset(PERMISSIONS),
    "marketing": frozenset(
        _READ
        | {"segments.write", "journeys.write", "templates.write", "customers.write"}
        | {"referrals.write"}
    ),
    "sales": frozenset(
        _READ
        | {"customers.read_personal", "accounts.read", "accounts.write", "deals.write"}
        | {"tasks.write", "leads.write", "revenue.read"}
    ),
    "finance": frozenset(
        _READ | {"revenue.read", "customers.export", "accounts.read", "rewards.pay"}
    ),
    "support": frozenset(_READ | {"customers.read_personal", "customers.write"}),
    "analyst": frozenset(_READ | {"revenue.read", "accounts.read"}),
}

ROLE_DESCRIPTIONS: dict[str, str] = {
    "admin": "everything, including users, keys, the audit log and erasure",
    "marketing": "segments, journeys and templates; personal data masked",
    "sales": "accounts, deals and tasks; sees contact details",
    "finance": "revenue, CLV and exports; personal data masked",
    "support": "customer pages with contact details; no exports",
    "analyst": "read-only; personal data masked",
}


def allowed(role: str, permission: str) -> bool:
    """Whether `role` holds `permission`. Unknown roles and permissions are simply not
    allowed (fail closed), so a typo in a route denies instead of opening it."""
    return permission in ROLES.get(role, frozenset())


def permissions_of(role: str) -> list[str]:
    """The role's permissions, sorted (for /api/me and the dashboard)."""
    return sorted(ROLES.get(role, frozenset()))


def check_role(role: str, field: str = "role") -> str:
    """A known role name, else InvalidInput naming the field and the choices."""
    cleaned = (role or "").strip().lower()
    if cleaned not in ROLES:
        raise InvalidInput(f"{field}: unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return cleaned


def check_permission(permission: str) -> str:
    """A known permission name; used when routes are declared, so typos fail at startup."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    return permission
