"""Signed webhooks (Standard Webhooks 1.0): sign, verify, and one delivery attempt.

Why Standard Webhooks: receivers already have verifiers for it in every language, and its
three headers carry exactly what at-least-once delivery needs. `webhook-id` stays the same
across retries so the receiver can deduplicate; `webhook-timestamp` is signed so an old
request cannot be replayed; `webhook-signature` is HMAC-SHA256 over `id.timestamp.body`.
It holds one `v1,<base64>` entry per secret, so during a secret rotation we sign with the
old and the new secret and a receiver holding either one accepts the request.

`deliver` makes one attempt and answers with an `Outcome`; the outbox owns retries, backoff
and disabling endpoints. Each retry should call `deliver` again with the same `webhook_id`
and a fresh timestamp. Status handling (reliability plan C2):

    2xx                   sent (reference = webhook-id)
    410 Gone              failed, disable=True (the receiver asked us to stop)
    408, 429              retry, retry_after from Retry-After (seconds or HTTP date)
    other 4xx             failed (the request is wrong and will stay wrong)
    3xx                   failed; redirects are never followed (a redirect could point at
                          an internal address after the destination was checked)
    5xx, timeout, network retry

SSRF guard (reliability plan C4, OWASP API7): the host is resolved once, *every* resolved
address is checked (IPv4 embedded in IPv6 is unwrapped first: IPv4-mapped, IPv4-compatible,
6to4, NAT64, Teredo), and the connection goes to that pinned address, so a second DNS answer
(rebinding) cannot redirect it. `allow_private=True` is the opt-in for self-hosted LAN
receivers; it skips the check but still pins.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets as _secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime

import httpx

from keepers.delivery import Outcome
from keepers.errors import InvalidInput

__all__ = [
    "Resolver",
    "deliver",
    "deliver_sync",
    "generate_secret",
    "headers",
    "is_forbidden_address",
    "parse_retry_after",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24-64 random bytes
RESPONSE_PEEK_BYTES = 1024  # how much of an error body goes into Outcome.detail
_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces: header-safe

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""`await resolver(host, port)` → the host's IP addresses as strings. A parameter so tests
can make a name resolve to loopback (or rebind) without touching real DNS."""


# --- signing ------------------------------------------------------------------------------


def generate_secret() -> str:
    """A new endpoint secret, `whsec_` + base64 of 32 random bytes (the spec's format, which
    every Standard Webhooks verifier accepts as is)."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_…` secret (the prefix is optional, as in the spec)."""
    if not isinstance(secret, str) or not secret:
        raise InvalidInput("secret must be a non-empty whsec_… string")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("secret is not valid base64 after the whsec_ prefix") from exc
    if not key:
        raise InvalidInput("secret must not be empty")
    return key


def _check_id_and_timestamp(webhook_id: str, timestamp: int) -> None:
    if not isinstance(webhook_id, str) or not _WEBHOOK_ID.match(webhook_id):
        raise InvalidInput("webhook_id must be 1-255 printable ASCII characters without spaces")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise InvalidInput("timestamp must be a non-negative integer (Unix seconds)")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`: one signature entry.

    The body is signed as the exact bytes that will be sent; re-serialising JSON between
    signing and sending would break verification at the receiver."""
    _check_id_and_timestamp(webhook_id, timestamp)
    if not isinstance(body, bytes | bytearray):
        raise InvalidInput("body must be bytes (the exact bytes that are sent)")
    signed = f"{webhook_id}.{timestamp}.".encode() + bytes(body)
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The four request headers, with one signature per secret (space-separated), so a
    receiver mid-rotation verifies with whichever secret it holds."""
    if isinstance(secrets, str) or not secrets:
        raise InvalidInput("secrets must be a non-empty list of whsec_… secrets")
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, webhook_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: int = 300,
    *,
    now: int | None = None,
) -> None:
    """Check a request our own receivers got; raise `InvalidInput` naming the bad header.

    The timestamp must lie within `tolerance` seconds of `now` in either direction, so a
    captured request cannot be replayed later; any one `v1` entry may match (rotation)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if not lowered.get(name):
            raise InvalidInput(f"{name} header is missing", code="invalid_signature")
    raw_ts = lowered["webhook-timestamp"]
    if not raw_ts.isascii() or not raw_ts.isdigit():
        raise InvalidInput("webhook-timestamp header is not an integer", code="invalid_signature")
    timestamp, current = int(raw_ts), int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance:
        which = "too old" if timestamp < current else "in the future"
        raise InvalidInput(f"webhook-timestamp header is {which}", code="invalid_signature")
    expected = sign(secret, lowered["webhook-id"], timestamp, body)
    for entry in lowered["webhook-signature"].split():
        if entry.startswith("v1,") and hmac.compare_digest(entry, expected):
            return
    raise InvalidInput("webhook-signature header does not match", code="invalid_signature")


# --- SSRF guard ---------------------------------------------------------------------------

_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address can route to: string-prefix checks miss these
    (the Plunk PR #449 bypasses)."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found.extend(ip.teredo)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 or ip in _IPV4_TRANSLATED or any(ip in n for n in _NAT64):
        found.append(low32)  # IPv4-compatible ::a.b.c.d, SIIT, NAT64
    return found


def is_forbidden_address(address: str) -> bool:
    """True when `address` (or an IPv4 address wrapped in it) is not a public unicast
    address: loopback, private, shared (CGNAT), link-local, multicast, reserved."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates.extend(_embedded_ipv4(ip))
    return any(
        not c.is_global or c.is_multicast or any(c in n for n in _FORBIDDEN_NETWORKS)
        for c in candidates
    )


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Refused(Exception):
    """The destination is not allowed (SSRF guard); becomes a `failed` Outcome."""


async def _pinned_address(url: httpx.URL, allow_private: bool, resolver: Resolver) -> str:
    """Resolve once and return the address to connect to, or raise `_Refused`."""
    host = url.host
    if not allow_private and (host == "localhost" or host.endswith(".localhost")):
        raise _Refused(f"{host} is a loopback name (allow_private is off)")
    addresses = list(await resolver(host, url.port or _default_port(url)))
    if not addresses:
        raise OSError(f"{host} did not resolve to any address")
    if not allow_private:
        bad = [a for a in addresses if is_forbidden_address(a)]
        if bad:
            raise _Refused(
                f"{host} resolves to {bad[0]}, a private, loopback or link-local address "
                "(allow_private is off)"
            )
    return addresses[0].split("%", 1)[0]  # a zone id cannot go into a URL


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput(f"url is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInput("url must be an absolute http:// or https:// URL")
    return parsed


# --- delivery -----------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110
    §10.2.3). None when absent or unreadable, so the outbox falls back to its backoff."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _classify(response: httpx.Response, peek: str, webhook_id: str) -> Outcome:
    code = response.status_code
    said = f"endpoint answered HTTP {code}"
    if 200 <= code < 300:
        return Outcome("sent", f"accepted with HTTP {code}", code, webhook_id)
    if 300 <= code < 400:
        where = response.headers.get("location", "nowhere")[:200]
        detail = f"{said} redirect to {where}; redirects are not followed"
        return Outcome("failed", detail, code, webhook_id)
    if code == 410:
        detail = f"{said} Gone; disable this endpoint"
        return Outcome("failed", detail, code, webhook_id, disable=True)
    extra = f": {peek}" if peek else ""
    if code in (408, 429) or code >= 500:
        wait = parse_retry_after(response.headers.get("retry-after"))
        hint = f" (retry after {wait:g}s)" if wait is not None else ""
        return Outcome("retry", f"{said}{hint}{extra}", code, webhook_id, retry_after=wait)
    return Outcome("failed", f"{said}{extra}", code, webhook_id)


async def _peek(response: httpx.Response) -> str:
    """The start of an error body for the detail line, read without decompression and
    capped: a hostile receiver must not make us read megabytes (plan C5)."""
    if 200 <= response.status_code < 300:
        return ""
    chunks, size = [], 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= RESPONSE_PEEK_BYTES:
            break
    text = b"".join(chunks)[:RESPONSE_PEEK_BYTES].decode("utf-8", "replace")
    return " ".join(text.split())[:200]


async def _attempt(
    client: httpx.AsyncClient,
    url: httpx.URL,
    body: bytes,
    request_headers: dict[str, str],
    timeout: httpx.Timeout,
    allow_private: bool,
    resolver: Resolver,
    webhook_id: str,
) -> Outcome:
    address = await _pinned_address(url, allow_private, resolver)
    request = client.build_request(
        "POST",
        url.copy_with(host=address),
        content=body,
        headers={**request_headers, "host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": url.host},
        timeout=timeout,
    )
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        return _classify(response, await _peek(response), webhook_id)
    finally:
        await response.aclose()


async def deliver(
    url: str,
    body: bytes,
    *,
    webhook_id: str,
    secrets: Sequence[str],
    timestamp: int | None = None,
    client: httpx.AsyncClient | None = None,
    connect_timeout: float = 3.0,
    timeout: float = 30.0,
    allow_private: bool = False,
    resolver: Resolver | None = None,
) -> Outcome:
    """POST `body` to `url`, signed with every secret in `secrets`; one attempt → `Outcome`.

    `timeout` bounds the whole attempt (resolve, connect, send, read), not each read, so a
    receiver dripping one byte a second cannot hold a worker. Bad arguments (scheme other
    than http/https, empty secrets, bad webhook_id) raise `InvalidInput`; anything the
    network or the receiver does becomes an Outcome. A caller's `client` should be built
    with `trust_env=False`: an environment proxy would defeat the address pinning."""
    parsed = _parse_url(url)
    if not isinstance(body, bytes | bytearray):
        raise InvalidInput("body must be bytes (the exact bytes that were signed)")
    body = bytes(body)
    ts = int(time.time()) if timestamp is None else timestamp
    request_headers = {
        **headers(secrets, webhook_id, ts, body),
        "accept-encoding": "identity",
        "user-agent": "Keepers-Webhooks/1",
    }
    limits = httpx.Timeout(timeout, connect=connect_timeout)
    own = client is None
    http = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
    try:
        async with asyncio.timeout(timeout):
            return await _attempt(
                http,
                parsed,
                body,
                request_headers,
                limits,
                allow_private,
                resolver or _system_resolver,
                webhook_id,
            )
    except _Refused as exc:
        return Outcome("failed", f"refused: {exc}", reference=webhook_id)
    except (TimeoutError, httpx.TimeoutException):
        return Outcome("retry", f"no answer within {timeout:g}s (timeout)", reference=webhook_id)
    except (httpx.TransportError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        return Outcome("retry", f"network error: {reason}", reference=webhook_id)
    finally:
        if own:
            await http.aclose()


def deliver_sync(
    url: str,
    body: bytes,
    *,
    webhook_id: str,
    secrets: Sequence[str],
    timestamp: int | None = None,
    connect_timeout: float = 3.0,
    timeout: float = 30.0,
    allow_private: bool = False,
    resolver: Resolver | None = None,
) -> Outcome:
    """`deliver` for synchronous callers (CLI "send test webhook", sync workers). It runs
    its own event loop, so it cannot be called from inside one; async code awaits
    `deliver` instead. It takes no client: an AsyncClient is bound to the loop it was
    first used in."""
    return asyncio.run(
        deliver(
            url,
            body,
            webhook_id=webhook_id,
            secrets=secrets,
            timestamp=timestamp,
            connect_timeout=connect_timeout,
            timeout=timeout,
            allow_private=allow_private,
            resolver=resolver,
        )
    )
