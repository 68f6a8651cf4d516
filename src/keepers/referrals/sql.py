"""The few SQL pieces the referral statements share, written once for DuckDB and PostgreSQL.

Both engines read JSON with `->` / `->>` the same way and both have `split_part`, `md5`,
`SIMILAR TO`, `UPDATE … FROM` and `RETURNING`; only extracting a regular-expression group
differs. Email normalisation has a Python twin (`normalise_email`) so tests and people can
see what the SQL does.
"""

from __future__ import annotations

from keepers.store.database import Dialect

CODE_PATTERN = "[A-Z0-9_-]{3,32}"  # SIMILAR TO: the whole code must match
# `?ref=` or `&ref=`; the question mark is written \x3F because PostgreSQL statements turn
# every literal "?" into a placeholder
REF_PATTERN = r"[\x3F&]ref=([A-Za-z0-9_-]+)"
GMAIL = ("gmail.com", "googlemail.com")


def json_text(column: str, *path: str) -> str:
    """A JSON value as text: `column->'a'->>'b'` (paths are constants, never user input)."""
    head = "".join(f"->'{part}'" for part in path[:-1])
    return f"({column}{head}->>'{path[-1]}')"


def code_of(expression: str) -> str:
    """Codes compare case-insensitively: stored and looked up upper-case, trimmed."""
    return f"upper(trim({expression}))"


def regex_group(d: Dialect, expression: str, pattern: str) -> str:
    """The first group of `pattern` in `expression`, NULL when it does not match."""
    if d.name == "postgres":
        return f"substring({expression} from '{pattern}')"
    return f"NULLIF(regexp_extract({expression}, '{pattern}', 1), '')"


def normalised_email(column: str) -> str:
    """SQL twin of `normalise_email`. (No `WHEN column IS NULL` branch: DuckDB 2.0 fails
    to bind such a CASE when the column holds only NULLs; NULL falls through to NULL.)"""
    email = f"lower(trim({column}))"
    local = f"split_part(split_part({email}, '@', 1), '+', 1)"
    domain = f"split_part({email}, '@', 2)"
    gmail = ", ".join(f"'{g}'" for g in GMAIL)
    return (
        f"CASE WHEN {local} = '' OR {domain} = '' THEN NULL "
        f"WHEN {domain} IN ({gmail}) THEN replace({local}, '.', '') || '@gmail.com' "
        f"ELSE {local} || '@' || {domain} END"
    )


def normalise_email(email: str | None) -> str | None:
    """One mailbox, however it is written: lower case, no `+tag` (most providers deliver
    `ann+x@` to `ann@`), and for Gmail no dots and `googlemail.com` = `gmail.com` — the
    usual tricks to sign up twice and refer oneself."""
    if email is None:
        return None
    parts = email.strip().lower().split("@")
    local = parts[0].split("+", 1)[0]
    domain = parts[1] if len(parts) > 1 else ""
    if not domain or not local:
        return None
    if domain in GMAIL:
        return local.replace(".", "") + "@gmail.com"
    return f"{local}@{domain}"
