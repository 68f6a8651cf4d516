"""Password hashing with argon2id (OWASP Password Storage Cheat Sheet; ASVS V11.4.2).

The parameters are argon2-cffi's RFC 9106 "low memory" profile — 64 MiB, 3 passes,
4 lanes — well above OWASP's minimum (19 MiB, t = 2) and about 0.1 s per check on a
2-core machine: slow for a guesser, unnoticeable for a person. The PHC string stored
(`$argon2id$v=19$m=65536,t=3,p=4$…`) carries its parameters, so they can be raised later
and `needs_rehash` tells the login to upgrade an old hash.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from keepers.errors import InvalidInput

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte "password" is a cheap denial of service


@lru_cache(maxsize=1)
def hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4, hash_len=32)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hasher().hash(secrets.token_urlsafe(16))


def check_password(password: str, field: str = "password") -> str:
    """A password good enough to store, else InvalidInput naming the field."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"{field}: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"{field}: at most {MAX_PASSWORD_LENGTH} characters")
    if "\x00" in password:
        raise InvalidInput(f"{field}: must not contain NUL characters")
    return password


def hash_password(password: str) -> str:
    """The argon2id PHC string for a checked password."""
    return hasher().hash(check_password(password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether `password` matches. With no stored hash (unknown or disabled user) a dummy
    hash is checked anyway, so the answer takes as long as for a real user and response
    times do not reveal which emails have accounts."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        password = ""
    try:
        return hasher().verify(stored_hash or _dummy_hash(), password) and bool(stored_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether a stored hash uses weaker parameters than today's and should be upgraded."""
    try:
        return hasher().check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


def generate_password() -> str:
    """A random password (144 bits) for `keepers users create` without one."""
    return secrets.token_urlsafe(18)
