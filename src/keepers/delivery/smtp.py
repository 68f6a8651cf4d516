"""The SMTP channel: hand one composed message to a relay and say what happened as an
`Outcome`, so the outbox can decide between done, retry later, and give up (and stop mailing
an address that bounced hard).

Classification (RFC 5321 reply codes, RFC 3463 enhanced status codes):

    250 accepted                              → sent, reference = Message-ID
    4xx anywhere, refused/timed-out/dropped   → retry
    connection, TLS handshake hiccup
    5xx on RCPT or DATA, mailbox problem      → failed, suppress (5.1.x about the recipient,
                                                or 550/551/553 with no enhanced code)
    5xx policy/content (5.7.x, 5.6.x, …)      → failed, keep the address
    535 / 5xx on AUTH                         → failed, detail names SmtpSettings.username
    certificate not trusted, no STARTTLS/AUTH → failed, detail names the setting to fix

Delivery failures never raise; a malformed message (no From/To) or an event loop misuse is a
programming error and does.

A message is either a stdlib `EmailMessage` (flattened by aiosmtplib, envelope taken from
its From/To/Cc/Bcc) or an `OutgoingEmail` from `compose_bytes`: envelope and wire bytes
ready, sent as they are.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

import aiosmtplib

from keepers.delivery import Outcome
from keepers.delivery.email import OutgoingEmail
from keepers.errors import InvalidInput

__all__ = ["Message", "Security", "SmtpPool", "SmtpSettings", "classify_reply", "send", "send_sync"]

Message = EmailMessage | OutgoingEmail

Security = Literal["none", "starttls", "tls"]

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_MAX_DETAIL = 300


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the relay. `security`: "none" = plain SMTP (no STARTTLS attempted),
    "starttls" = STARTTLS required (port 587), "tls" = implicit TLS (port 465).
    `cert_bundle` is a PEM file of CAs to trust instead of the system store (a private relay,
    tests); `validate_certs=False` turns verification off and is meant for tests only.
    Credentials need TLS: a password is never sent in clear."""

    host: str
    port: int = 25
    security: Security = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    cert_bundle: str | None = None
    validate_certs: bool = True
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or any(c.isspace() for c in self.host):
            raise InvalidInput("host: must be a host name or address without spaces")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise InvalidInput("port: must be an integer")
        if not 1 <= self.port <= 65535:
            raise InvalidInput(f"port: {self.port} is not between 1 and 65535")
        if self.security not in ("none", "starttls", "tls"):
            raise InvalidInput(f"security: {self.security!r} is not 'none', 'starttls' or 'tls'")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
            raise InvalidInput("timeout: must be a number of seconds")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise InvalidInput(f"timeout: {self.timeout} is not a positive number of seconds")
        self._check_credentials()
        if self.cert_bundle is not None and not Path(self.cert_bundle).is_file():
            raise InvalidInput(f"cert_bundle: {self.cert_bundle!r} is not a readable file")

    def _check_credentials(self) -> None:
        if (self.username is None) != (self.password is None):
            raise InvalidInput("password: username and password go together; set both or neither")
        if self.username is not None and not self.username:
            raise InvalidInput("username: must not be empty")
        if self.username is not None and self.security == "none":
            raise InvalidInput(
                "username: SMTP authentication needs security 'starttls' or 'tls' "
                "(the password would travel in clear)"
            )


def _one_line(text: str) -> str:
    """Server text as one short line for `Outcome.detail`."""
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 1] + "…"


def _is_mailbox_problem(code: int, text: str) -> bool:
    """Whether a 5xx says the *recipient address* is bad (so mailing it again is pointless
    and hurts reputation) rather than the message or the sender. The enhanced code decides
    when present: 5.1.x is addressing, except 5.1.7/5.1.8 which are about the sender. Without
    one, 550 (mailbox unavailable), 551 (user not local) and 553 (mailbox name not allowed)."""
    enhanced = _ENHANCED.match(text)
    if enhanced:
        klass, subject, detail = enhanced.groups()
        return klass == "5" and subject == "1" and detail not in ("7", "8")
    return code in (550, 551, 553)


def classify_reply(code: int, text: str, *, stage: str, reference: str | None) -> Outcome:
    """Turn one SMTP error reply into an Outcome (4xx retry, 5xx failed, suppress on
    recipient mailbox errors). `stage` ("RCPT", "DATA", …) goes into the detail."""
    detail = _one_line(f"{stage} {code} {text}")
    if 400 <= code < 500:
        return Outcome("retry", detail, code=code, reference=reference)
    if 500 <= code < 600:
        suppress = stage in ("RCPT", "DATA") and _is_mailbox_problem(code, text)
        return Outcome("failed", detail, code=code, reference=reference, suppress=suppress)
    # Not a 4xx/5xx (a misbehaving server): treat as transient; the outbox caps retries.
    return Outcome("retry", detail, code=code, reference=reference)


def _refused(exc: aiosmtplib.SMTPRecipientsRefused, reference: str | None) -> Outcome:
    """Every recipient refused: retry if any refusal was temporary (it may yet go through),
    else failed, suppressing only if every refusal was a mailbox error."""
    outcomes = [
        classify_reply(r.code, r.message, stage="RCPT", reference=reference) for r in exc.recipients
    ]
    for outcome in outcomes:
        if outcome.status == "retry":
            return outcome
    first = outcomes[0]
    return Outcome(
        "failed",
        first.detail,
        code=first.code,
        reference=reference,
        suppress=all(o.suppress for o in outcomes),
    )


def _certificate_problem(exc: BaseException) -> bool:
    """aiosmtplib wraps TLS errors in its own; look down the cause chain."""
    seen: BaseException | None = exc
    for _ in range(10):  # chains are short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _classify_exception(exc: Exception, settings: SmtpSettings, reference: str | None) -> Outcome:
    """Map an aiosmtplib failure to an Outcome; the order matters (subclasses first)."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        if 400 <= exc.code < 500:
            return classify_reply(exc.code, exc.message, stage="AUTH", reference=reference)
        detail = _one_line(
            f"AUTH {exc.code} {exc.message}: the relay rejected the credentials; "
            f"check SmtpSettings.username ({settings.username!r}) and password"
        )
        return Outcome("failed", detail, code=exc.code, reference=reference)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return _refused(exc, reference)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
        stage = {
            aiosmtplib.SMTPRecipientRefused: "RCPT",
            aiosmtplib.SMTPSenderRefused: "MAIL",
            aiosmtplib.SMTPDataError: "DATA",
            aiosmtplib.SMTPHeloError: "EHLO",
        }.get(type(exc), "SMTP")
        return classify_reply(exc.code, exc.message, stage=stage, reference=reference)
    if _certificate_problem(exc):
        detail = _one_line(
            f"TLS certificate of {settings.host} not trusted ({exc}); "
            "set SmtpSettings.cert_bundle to the relay's CA"
        )
        return Outcome("failed", detail, reference=reference)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):  # e.g. SMTPUTF8 needed, not offered
        return Outcome("failed", _one_line(str(exc)), reference=reference)
    # Refused connections, timeouts, disconnects, TLS handshake hiccups, odd replies.
    return Outcome("retry", _one_line(f"{type(exc).__name__}: {exc}"), reference=reference)


def _reference(message: Message) -> str | None:
    """The Message-ID, the id a later bounce or a duplicate is matched by."""
    if isinstance(message, OutgoingEmail):
        return message.message_id
    header = message["Message-ID"]
    return str(header).strip() if header is not None else None


async def _transmit(client: aiosmtplib.SMTP, message: Message) -> tuple[dict, str]:
    """One mail transaction (MAIL, RCPT, DATA) on an open session. Wire bytes go as they
    are, with the MAIL options aiosmtplib's send_message would use (BODY=8BITMIME when
    offered; the addresses are ASCII, so never SMTPUTF8)."""
    if isinstance(message, OutgoingEmail):
        options = ["BODY=8BITMIME"] if client.supports_extension("8bitmime") else []
        return await client.sendmail(
            message.sender, list(message.recipients), message.data, mail_options=options
        )
    return await client.send_message(message)


class _Misconfigured(Exception):
    """The relay cannot do what the settings ask (no STARTTLS, no AUTH): an operator must
    change SmtpSettings, so retrying the message would not help."""


async def _session(settings: SmtpSettings) -> aiosmtplib.SMTP:
    """A connected, greeted, secured and logged-in client."""
    client = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        use_tls=settings.security == "tls",
        start_tls=False,
        validate_certs=settings.validate_certs,
        cert_bundle=settings.cert_bundle,
        timeout=settings.timeout,
        local_hostname=settings.local_hostname,
    )
    await client.connect()
    try:
        await client.ehlo()
        if settings.security == "starttls":
            if not client.supports_extension("starttls"):
                raise _Misconfigured("the relay does not offer STARTTLS")
            await client.starttls()
            await client.ehlo()
        if settings.username is not None and settings.password is not None:
            if not client.supports_extension("auth"):
                raise _Misconfigured("the relay does not offer AUTH")
            await client.login(settings.username, settings.password)
    except BaseException:
        client.close()
        raise
    return client


class SmtpPool:
    """Open SMTP sessions kept between messages, so a batch pays one connection and one
    handshake (TLS, AUTH) per session instead of per message. Use from one event loop; the
    caller bounds concurrency (each concurrent send takes a session of its own)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.idle: list[aiosmtplib.SMTP] = []

    async def send(self, message: Message) -> Outcome:
        reference = _reference(message)
        reused = bool(self.idle)
        try:
            client = self.idle.pop() if reused else await _session(self.settings)
        except _Misconfigured as exc:
            detail = f"{self.settings.host}:{self.settings.port}: {exc}; check SmtpSettings"
            return Outcome("failed", _one_line(detail), reference=reference)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return _classify_exception(exc, self.settings, reference)
        try:
            refused, reply = await _transmit(client, message)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError) as exc:
            client.close()
            if reused:  # the relay closed an idle session: one fresh try, nothing was sent
                return await self.send(message)
            return _classify_exception(exc, self.settings, reference)
        except aiosmtplib.SMTPException as exc:
            outcome = _classify_exception(exc, self.settings, reference)
            try:
                await client.rset()
                self.idle.append(client)
            except (aiosmtplib.SMTPException, OSError):
                client.close()
            return outcome
        self.idle.append(client)
        detail = _one_line(f"250 {reply}")
        if refused:
            detail = _one_line(f"{detail}; refused: {', '.join(sorted(refused))}")
        return Outcome("sent", detail, code=250, reference=reference)

    async def close(self) -> None:
        while self.idle:
            client = self.idle.pop()
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def _deliver(message: Message, settings: SmtpSettings) -> tuple[dict, str]:
    """One SMTP session step by step, so each failure is known by where it happened rather
    than by parsing aiosmtplib's messages. Returns (refused recipients, final reply)."""
    client = await _session(settings)
    try:
        refused, reply = await _transmit(client, message)
    except BaseException:
        client.close()
        raise
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()  # the message was accepted; a failed QUIT does not change that
    return refused, reply


async def send(message: Message, settings: SmtpSettings) -> Outcome:
    """Deliver one message to the relay in `settings` (envelope from From, recipients from
    To/Cc/Bcc). Every delivery failure becomes an Outcome; the Message-ID is the reference
    either way, so the outbox can match later bounces to this attempt."""
    reference = _reference(message)
    try:
        refused, reply = await _deliver(message, settings)
    except _Misconfigured as exc:
        detail = f"{settings.host}:{settings.port}: {exc}; check SmtpSettings.security/username"
        return Outcome("failed", _one_line(detail), reference=reference)
    except (aiosmtplib.SMTPException, OSError) as exc:  # OSError: TLS, sockets, DNS
        return _classify_exception(exc, settings, reference)
    detail = _one_line(f"250 {reply}")
    if refused:  # some recipients accepted: sent, but say who was not
        detail = _one_line(f"{detail}; refused: {', '.join(sorted(refused))}")
    return Outcome("sent", detail, code=250, reference=reference)


def send_sync(message: Message, settings: SmtpSettings) -> Outcome:
    """`send` for synchronous callers (CLI, a worker thread). Not for use inside a running
    event loop: await `send` there."""
    return asyncio.run(send(message, settings))
