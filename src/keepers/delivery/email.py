"""Email as Keepers sends it: user-editable templates rendered safely, a message that meets
the 2024 Gmail/Yahoo sender rules, and a DKIM signature that covers the unsubscribe headers.

The steps are separate functions so each can be tested and reused alone:

    render(template, variables)   → RenderedEmail   sandboxed Jinja2, CSS inlined, text part
    compose(rendered, ...)        → EmailMessage    headers once each, RFC 8058 one-click
    compose_bytes(rendered, ...)  → OutgoingEmail   the same message as wire bytes + envelope
    dkim_sign(message, ...)       → EmailMessage    relaxed/simple, List-Unsubscribe-Post in h=
    dkim_sign_bytes(data, ...)    → bytes           the same signature over wire bytes

`compose` builds a stdlib `EmailMessage` (every header parsed into an object, folded again
when flattened); `compose_bytes` writes the bytes `compose(...).as_bytes()` gives in one
pass, for the outbox, where building and flattening message objects was half the cost of
a send. Simple header values (printable ASCII that fits on a line) are written as is;
anything else (non-ASCII, long, odd syntax) is folded by the stdlib's own code, except the
few values its folding would garble (see `_folded`), which both write as encoded words.

`message_id` and `sign_unsubscribe` are pure functions of their inputs (an idempotency key, a
secret), so a retry carries the same Message-ID and unsubscribe link without storing anything.
Conventions: the shared interface notes, §3 "Email sending conventions".
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import functools
import hashlib
import hmac
import re
import traceback
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import quoprimime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, cast

import css_inline
import dkim
import html2text
from jinja2 import ChainableUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from keepers.errors import InvalidInput

__all__ = [
    "SIGNED_HEADERS",
    "EmailTemplate",
    "OutgoingEmail",
    "RenderedEmail",
    "TemplateError",
    "check",
    "compose",
    "compose_bytes",
    "dkim_sign",
    "dkim_sign_bytes",
    "message_id",
    "render",
    "sign_unsubscribe",
    "verify_unsubscribe",
]

# The policy aiosmtplib flattens EmailMessage objects with: composing, signing and sending
# all serialise the same way, so the bytes that were signed are the bytes that are sent.
POLICY = email.policy.SMTP

MAX_SOURCE = 256_000  # characters of template source per part
MAX_OUTPUT = {"subject": 998, "html": 1_000_000, "text": 1_000_000}  # rendered characters
MAX_SEQUENCE = 1_000_000  # longest string/list a template may build with `*`
MAX_POWER_BITS = 4096  # largest integer a template may build with `**`

# RFC 8058 §3.1: List-Unsubscribe and List-Unsubscribe-Post MUST be in h=. Headers listed
# but absent are still signed (as empty), so nobody can add them after signing.
SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
)

# Headers compose() owns; extra_headers may not set them (single-instance rules, and no
# smuggling extra recipients through Cc/Bcc).
RESERVED_HEADERS = frozenset(
    {
        *SIGNED_HEADERS,
        "cc",
        "bcc",
        "sender",
        "return-path",
        "received",
        "dkim-signature",
        "content-transfer-encoding",
    }
)

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Verbatim(str):
    """A header value the generator writes exactly as stored. The stdlib folds long
    unstructured values into RFC 2047 encoded words, which would mangle a long
    List-Unsubscribe URL and change signed header bytes; a value with `name` and `fold` is
    written as is by every email policy (`EmailPolicy._fold` defers to `value.fold`)."""

    name: str

    def __new__(cls, name: str, value: str) -> _Verbatim:
        obj = super().__new__(cls, value)
        obj.name = name
        return obj

    def __getnewargs__(self) -> tuple[str, str]:  # type: ignore[override]
        return (self.name, str(self))

    def fold(self, *, policy: email.policy.Policy) -> str:
        """The header line(s) as stored, with the policy's line separator."""
        value = str(self).replace("\r\n", "\n").replace("\n", policy.linesep)
        return f"{self.name}: {value}{policy.linesep}"


class _SignedPolicy(email.policy.EmailPolicy):
    """Parses every header verbatim, so a signed message re-serialises to its signed bytes."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = sourcelines[0].split(":", 1)
        value = value.lstrip(" \t") + "".join(sourcelines[1:])
        return (name, _Verbatim(name, value.rstrip("\r\n")))


_SIGNED_POLICY = _SignedPolicy(linesep="\r\n")


class TemplateError(InvalidInput):
    """A template part that does not parse, touches something the sandbox forbids, fails
    while rendering or renders too much. `part` is "subject", "html" or "text"; `line` the
    1-based template line when known, so an editor can point at it."""

    code = "invalid_template"

    def __init__(self, part: str, line: int | None, reason: str) -> None:
        where = f"{part} line {line}" if line is not None else part
        super().__init__(f"template {where}: {reason}")
        self.part = part
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class EmailTemplate:
    """An email template as users edit it: Jinja2 sources for subject and HTML body, and an
    optional plain-text body (derived from the HTML when absent)."""

    subject: str
    html: str
    text: str | None = None

    def __post_init__(self) -> None:
        for part, source in self.parts().items():
            if not isinstance(source, str):
                raise InvalidInput(f"{part}: must be a string, not {type(source).__name__}")
            if len(source) > MAX_SOURCE:
                raise InvalidInput(f"{part}: template longer than {MAX_SOURCE} characters")

    def parts(self) -> dict[str, str]:
        """The present parts by name, in the order they are rendered."""
        found = {"subject": self.subject, "html": self.html}
        if self.text is not None:
            found["text"] = self.text
        return found


@dataclass(frozen=True)
class RenderedEmail:
    """What a template rendered to: a one-line subject, inlined HTML, and a text part."""

    subject: str
    html: str
    text: str


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, stricter in two ways: a forbidden attribute raises at once
    (the stock sandbox returns an Undefined that renders as "" until used further, which
    would hide `{{ ''.__class__ }}` instead of reporting it), and `*` / `**` cannot build
    huge strings or integers in one step, before the streamed output size check sees them."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_SEQUENCE:
                    raise SecurityError(f"'*' would build more than {MAX_SEQUENCE} items")
        integers = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and integers and max(left.bit_length(), 1) * right > MAX_POWER_BITS:
            raise SecurityError(f"'**' would build an integer over {MAX_POWER_BITS} bits")
        return super().call_binop(context, operator, left, right)


@functools.cache
def _environment() -> _Sandbox:
    """The one environment, built on first use (nothing at import time). Autoescaping is
    decided per template name: HTML is escaped, subject and text are plain text."""
    return _Sandbox(
        autoescape=lambda name: name == "html",
        undefined=ChainableUndefined,  # {{ traits.plan }} renders "" when traits is missing
        keep_trailing_newline=True,
    )


@functools.lru_cache(maxsize=128)
def _compiled(part: str, source: str) -> Any:
    """Compile one part once; journeys render the same template for many customers."""
    env = _environment()
    try:
        code = env.compile(source, name=part, filename=f"<{part}>")
    except TemplateSyntaxError as exc:
        raise TemplateError(part, exc.lineno, exc.message or "syntax error") from None
    return env.template_class.from_code(env, code, env.make_globals(None))


def _error_line(part: str, exc: BaseException) -> int | None:
    """The template line an exception came from: Jinja rewrites tracebacks so frames of the
    template carry its filename and template line numbers."""
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == f"<{part}>":
            line = lineno
    return line


def _render_part(part: str, source: str, variables: dict[str, Any]) -> str:
    """Render with a streamed size check, so a loop cannot build gigabytes of output."""
    template = _compiled(part, source)
    limit = MAX_OUTPUT[part]
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(variables):
            size += len(chunk)
            if size > limit:
                raise TemplateError(part, None, f"renders to more than {limit} characters")
            chunks.append(chunk)
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(part, _error_line(part, exc), f"not allowed: {exc}") from None
    except Exception as exc:  # any failure inside a user template is the template's fault
        raise TemplateError(part, _error_line(part, exc), f"{type(exc).__name__}: {exc}") from None
    return "".join(chunks)


def _one_line(text: str) -> str:
    """Collapse all whitespace (CR, LF, U+2028 …) to single spaces and drop control
    characters: a subject can never start a new header line."""
    return _CONTROL.sub("", " ".join(text.split()))


def _inline_css(html: str) -> str:
    """Gmail and Outlook drop <style> blocks in many views; inline them. Remote stylesheets
    are never fetched (a template must not make the server issue requests)."""
    inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
    try:
        inlined = inliner.inline(html)
    except (css_inline.InlineError, ValueError) as exc:
        raise TemplateError("html", None, f"CSS could not be inlined: {exc}") from None
    if len(inlined) > MAX_OUTPUT["html"]:
        raise TemplateError("html", None, f"more than {MAX_OUTPUT['html']} characters inlined")
    return inlined


def _text_from_html(html: str) -> str:
    """A readable plain-text alternative (multipart/alternative wants one; spam filters
    score HTML-only mail). Links stay as Markdown-style `[label](url)`."""
    converter = html2text.HTML2Text()
    converter.ignore_images = True
    converter.body_width = 78
    return converter.handle(html).strip() + "\n"


def render(template: EmailTemplate, variables: Mapping[str, Any]) -> RenderedEmail:
    """Render a user-edited template for one customer. Undefined variables render empty
    (a missing trait should not stop a journey); everything else that goes wrong raises
    TemplateError naming the part and line."""
    context = dict(variables)
    subject = _one_line(_render_part("subject", template.subject, context))
    html = _render_part("html", template.html, context)
    if template.text is not None:
        text = _render_part("text", template.text, context)
    else:
        text = _text_from_html(html)
    return RenderedEmail(subject=subject, html=_inline_css(html), text=text)


def check(template: EmailTemplate, known: set[str]) -> list[str]:
    """Names a template uses that are neither in `known` nor Jinja globals (`range`, …),
    sorted: shown when a template is saved, since at send time they would render empty.
    Only top-level names count: `{{ traits.plan }}` needs `traits`. Syntax errors raise."""
    env = _environment()
    used: set[str] = set()
    for part, source in template.parts().items():
        try:
            tree = env.parse(source, name=part)
        except TemplateSyntaxError as exc:
            raise TemplateError(part, exc.lineno, exc.message or "syntax error") from None
        used |= meta.find_undeclared_variables(tree)
    return sorted(used - set(known) - set(env.globals))


def _hostname(field: str, value: str) -> str:
    """An ASCII (IDNA) host name with at least two labels, lower-cased."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: must be a domain name, not {type(value).__name__}")
    try:
        ascii_name = value.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidInput(f"{field}: {value!r} is not a valid domain name") from None
    labels = ascii_name.split(".")
    if (
        len(labels) < 2
        or len(ascii_name) > 253
        or not all(_HOST_LABEL.fullmatch(x) for x in labels)
    ):
        raise InvalidInput(f"{field}: {value!r} is not a valid domain name")
    return ascii_name


def message_id(key: str, domain: str) -> str:
    """A Message-ID derived from the send's idempotency key, `<32 hex@domain>` (RFC 5322
    msg-id). A retry of the same send gets the same id, so a receiver (or we) can recognise a
    duplicate, without storing the id first."""
    if not isinstance(key, str) or not key:
        raise InvalidInput("key: an idempotency key is required")
    digest = hashlib.sha256(b"keepers-message-id\x00" + key.encode()).hexdigest()[:32]
    return f"<{digest}@{_hostname('domain', domain)}>"


_UNSUBSCRIBE_CONTEXT = b"keepers-unsubscribe-v1\x00"  # keeps these MACs apart from others
_MAX_TOKEN = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise InvalidInput("secret: must be at least 16 random bytes")


def sign_unsubscribe(secret: bytes, customer_id: str, list_id: str) -> str:
    """An unsubscribe token for the RFC 8058 URL: recipient and list, HMAC-SHA256 signed, URL
    safe. It needs no storage and cannot be forged or pointed at another customer. It is
    signed, not encrypted: do not put anything secret in the ids."""
    _check_secret(secret)
    for field, value in (("customer_id", customer_id), ("list_id", list_id)):
        if not isinstance(value, str) or not value or "\x00" in value or len(value) > 256:
            raise InvalidInput(f"{field}: must be 1-256 characters without NUL")
    payload = customer_id.encode() + b"\x00" + list_id.encode()
    mac = hmac.new(secret, _UNSUBSCRIBE_CONTEXT + payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_unsubscribe(secret: bytes, token: str) -> tuple[str, str]:
    """(customer_id, list_id) from a token made by `sign_unsubscribe`; anything else (cut,
    edited, signed with another secret, garbage) raises InvalidInput naming the token."""
    _check_secret(secret)
    bad = InvalidInput("token: not a valid unsubscribe token")
    if not isinstance(token, str) or len(token) > _MAX_TOKEN or token.count(".") != 1:
        raise bad
    try:
        payload, mac = (_unb64(x) for x in token.split("."))
    except (binascii.Error, ValueError):
        raise bad from None
    expected = hmac.new(secret, _UNSUBSCRIBE_CONTEXT + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise bad
    try:
        customer_id, list_id = payload.decode().split("\x00")
    except ValueError:  # bad UTF-8 or wrong number of parts (only possible with the secret)
        raise bad from None
    return customer_id, list_id


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.-]+)")


def _address(field: str, value: str) -> str:
    """One mailbox, normalised (`Name <local@domain>`). Rejects lists, groups, missing parts,
    non-ASCII local parts (they would need SMTPUTF8 and change the signed bytes) and line
    breaks."""
    return _mailbox(field, value)[0]


def _mailbox(field: str, value: str) -> tuple[str, str]:
    """(`_address` normalised form, bare `local@domain` for the SMTP envelope). A plain
    `local@domain` (a dot-atom local part, the common case: a customer's address) is checked
    with one regex; anything else goes through the stdlib address parser."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: {value!r} is not an email address")
    plain = _PLAIN_ADDRESS.fullmatch(value)
    if plain is not None and "=?" not in value:
        spec = f"{plain[1]}@{_hostname(field, plain[2])}"
        return spec, spec
    return _parsed_mailbox(field, value)


@functools.lru_cache(maxsize=1024)
def _parsed_mailbox(field: str, value: str) -> tuple[str, str]:
    """The stdlib-parsed mailbox; cached, as the sender is the same for every message."""
    if not value.strip() or _CONTROL.search(value):
        raise InvalidInput(f"{field}: {value!r} is not an email address")
    try:
        parsed = POLICY.header_factory("to", value)  # an address-list header parser
        addresses, defects = parsed.addresses, parsed.defects
    except Exception:  # the stdlib parser raises IndexError and friends on some garbage
        raise InvalidInput(f"{field}: {value!r} is not an email address") from None
    if len(addresses) != 1:
        raise InvalidInput(f"{field}: exactly one address is allowed, got {len(addresses)}")
    (address,) = addresses
    if defects or not address.username or not address.username.isascii():
        raise InvalidInput(f"{field}: {value!r} is not an email address")
    if not (_DOT_ATOM.fullmatch(address.username) or address.username.startswith('"')):
        raise InvalidInput(f"{field}: {value!r} is not an email address")
    domain = _hostname(field, address.domain)
    normalised = Address(address.display_name, address.username, domain)
    return str(normalised), normalised.addr_spec


def _https_url(field: str, value: str) -> str:
    """RFC 8058 needs an HTTPS URI; angle brackets, spaces and controls would break out of
    the `<…>` in the header, and the header line must stay under 998 characters."""
    if not isinstance(value, str) or len(value) > 900 or not _URL_CHARS.fullmatch(value):
        raise InvalidInput(f"{field}: not a valid URL")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidInput(f"{field}: must be an https:// URL (RFC 8058)")
    return value


def _header_value(field: str, value: str) -> str:
    """Header values are one line: no CR/LF, no other controls, no Unicode line breaks."""
    if not isinstance(value, str) or _CONTROL.search(value) or len(value.splitlines()) > 1:
        raise InvalidInput(f"{field}: header values must be one line without control characters")
    return value


def _extra_headers(extra: Mapping[str, str] | None) -> list[tuple[str, str]]:
    found = []
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidInput(f"extra_headers: {name!r} is not a header name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidInput(f"extra_headers: {name} is set by compose, not by callers")
        found.append((name, _header_value(f"extra_headers[{name}]", value)))
    return found


def _msg_id(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"<[!-;=?-~]+@[!-;=?-Z^-~]+>", value):
        raise InvalidInput(f"message_id: {value!r} is not <id@domain> (use message_id())")
    return value


@dataclass(frozen=True)
class OutgoingEmail:
    """A composed message as it goes on the wire: the SMTP envelope (`sender` is the From
    address, `recipients` the To address, both bare `local@domain`) and the exact bytes
    (CRLF line ends, 7-bit). `message_id` is the Message-ID, the delivery reference."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str

    def as_message(self) -> EmailMessage:
        """The message parsed back with every header kept verbatim, so that flattening it
        gives `data` again."""
        return cast(EmailMessage, email.message_from_bytes(self.data, policy=_SIGNED_POLICY))


@dataclass(frozen=True)
class _Headers:
    """The top-level headers compose writes, in order, and the envelope addresses."""

    fields: list[tuple[str, str]]
    sender: str
    recipient: str


def _headers(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: str,
    message_id: str,
    unsubscribe_url: str | None,
    list_id: str | None,
    reply_to: str | None,
    extra_headers: Mapping[str, str] | None,
    now: datetime | None,
) -> _Headers:
    """Check every input and build the header list shared by compose and compose_bytes."""
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        raise InvalidInput("now: must be timezone-aware")
    sender_value, sender_spec = _mailbox("sender", sender)
    to_value, to_spec = _mailbox("to", to)
    headers = [
        ("From", sender_value),
        ("To", to_value),
        ("Subject", _header_value("subject", rendered.subject)),
        ("Date", format_datetime(when.astimezone(UTC))),
        ("Message-ID", _msg_id(message_id)),
    ]
    if reply_to is not None:
        headers.append(("Reply-To", _address("reply_to", reply_to)))
    if list_id is not None:
        if not isinstance(list_id, str) or not _DOT_ATOM.fullmatch(list_id) or "." not in list_id:
            raise InvalidInput(f"list_id: {list_id!r} is not like 'newsletter.example.com'")
        headers.append(("List-Id", f"<{list_id}>"))
    if unsubscribe_url is not None:
        url = _https_url("unsubscribe_url", unsubscribe_url)
        headers.append(("List-Unsubscribe", _Verbatim("List-Unsubscribe", f"<{url}>")))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    headers.extend(_extra_headers(extra_headers))
    return _Headers(headers, sender_spec, to_spec)


def compose(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: str,
    message_id: str,
    unsubscribe_url: str | None,
    list_id: str | None,
    reply_to: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """Build the message a mailbox provider accepts from a bulk sender (interfaces.md §3.1):
    multipart/alternative text + HTML, From/To/Subject/Date/Message-ID once each, one address
    in From, and with `unsubscribe_url` both RFC 8058 headers (`List-Unsubscribe` and
    `List-Unsubscribe-Post: List-Unsubscribe=One-Click`). `list_id` becomes `List-Id:
    <list_id>` (RFC 2919, e.g. "newsletter.example.com"). Parts are quoted-printable so
    relays never re-encode them (which would break the DKIM body hash). `now` is a parameter
    so tests and retries control the Date. `compose_bytes` gives the same message as bytes,
    much faster."""
    headers = _headers(
        rendered,
        sender=sender,
        to=to,
        message_id=message_id,
        unsubscribe_url=unsubscribe_url,
        list_id=list_id,
        reply_to=reply_to,
        extra_headers=extra_headers,
        now=now,
    )
    message = EmailMessage(policy=POLICY)
    for name, value in headers.fields:
        if not isinstance(value, _Verbatim):
            line = _folded(name, value)
            if line != _stdlib_folded(name, value):  # would not read back: see _folded
                value = _Verbatim(name, line[len(name) + 2 : -2])
        message[name] = value
    message.set_content(rendered.text, subtype="plain", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    for part in message.iter_parts():
        del part["MIME-Version"]  # set_content adds it to each part; only the top needs it
    return message


def compose_bytes(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: str,
    message_id: str,
    unsubscribe_url: str | None,
    list_id: str | None,
    reply_to: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> OutgoingEmail:
    """`compose`, written straight to the bytes `compose(...).as_bytes()` gives (same
    checks, headers, folding, RFC 2047 encoded words, quoted-printable parts, MIME layout),
    without building message objects. The MIME boundary is derived from the Message-ID
    instead of drawn at random, so a retry sends the same body."""
    headers = _headers(
        rendered,
        sender=sender,
        to=to,
        message_id=message_id,
        unsubscribe_url=unsubscribe_url,
        list_id=list_id,
        reply_to=reply_to,
        extra_headers=extra_headers,
        now=now,
    )
    boundary = _boundary(message_id)
    text = _quoted_printable(rendered.text)
    html = _quoted_printable(rendered.html)
    chunks = [_header_line(name, value) for name, value in headers.fields]
    chunks += [
        "MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n',
        f"\r\n--{boundary}\r\n",
        _PART_HEADERS.format(subtype="plain"),
        text,
        f"\r\n--{boundary}\r\n",
        _PART_HEADERS.format(subtype="html"),
        html,
        f"\r\n--{boundary}--\r\n",
    ]
    data = "".join(chunks).encode("ascii")
    return OutgoingEmail(headers.sender, (headers.recipient,), data, message_id)


# What the stdlib writes for a text part set with cte="quoted-printable" (without the
# MIME-Version compose deletes), and the structured header names of its header registry:
# those are folded by the stdlib unless a simple pattern below says how they come out.
_PART_HEADERS = (
    'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
)
_STRUCTURED = frozenset(
    {
        "date",
        "resent-date",
        "orig-date",
        "sender",
        "resent-sender",
        "to",
        "resent-to",
        "cc",
        "resent-cc",
        "bcc",
        "resent-bcc",
        "from",
        "resent-from",
        "reply-to",
        "mime-version",
        "content-type",
        "content-disposition",
        "content-transfer-encoding",
        "message-id",
    }
)
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[a-z0-9-]+(?:\.[a-z0-9-]+)+"
# Values the stdlib folds to themselves when the line fits: words of printable ASCII with
# single spaces (unstructured), a bare address or one with an alphanumeric display name,
# a plain msg-id, and the Date format_datetime writes.
_SIMPLE = {
    "text": re.compile(r"[!-~]+(?: [!-~]+)*"),
    "from": re.compile(rf"(?:[A-Za-z0-9]+(?: [A-Za-z0-9]+)* <{_ADDR_SPEC}>|{_ADDR_SPEC})"),
    "message-id": re.compile(r"<[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)*@[a-z0-9-]+(?:\.[a-z0-9-]+)+>"),
    "date": re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"),
}
_SIMPLE["to"] = _SIMPLE["reply-to"] = _SIMPLE["from"]


def _header_line(name: str, value: str) -> str:
    """One header line (or folded lines) exactly as the SMTP policy writes it."""
    if isinstance(value, _Verbatim):
        return value.fold(policy=POLICY)
    if len(name) + 2 + len(value) <= _MAX_LINE and "=?" not in value:
        key = name.lower()
        simple = _SIMPLE.get(key) or (None if key in _STRUCTURED else _SIMPLE["text"])
        if simple is not None and simple.fullmatch(value):
            return f"{name}: {value}\r\n"
    return _folded(name, value)


@functools.lru_cache(maxsize=1024)
def _folded(name: str, value: str) -> str:
    """The stdlib's own folding (RFC 2047 encoded words for non-ASCII, line wrapping at 78),
    except where it would not read back as `value`: when it splits a long non-ASCII text
    into several encoded words it sometimes leaves a space *between* two of them, which RFC
    2047 §6.2 tells readers to drop ("a — b" reads "a— b"), and it writes text that looks
    like an encoded word as is (a reader decodes it). Such unstructured values are written
    wholly as encoded words, split only between characters."""
    folded = _stdlib_folded(name, value)
    if name.lower() in _STRUCTURED or _reads_back(name, folded, value):
        return folded
    encoded = Header(value, "utf-8", _MAX_LINE, name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n"


@functools.lru_cache(maxsize=1024)
def _stdlib_folded(name: str, value: str) -> str:
    return POLICY.header_factory(name, value).fold(policy=POLICY)


def _reads_back(name: str, folded: str, value: str) -> bool:
    """Whether a reader (the stdlib parser, which decodes unstructured headers by RFC 2047)
    gets `value` back from the folded header line(s)."""
    unfolded = "".join(folded.split(":", 1)[1].lstrip(" \t").splitlines())
    return str(POLICY.header_factory(name, unfolded)) == value


_MAX_LINE = POLICY.max_line_length or 78
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _quoted_printable(text: str) -> str:
    """A text part's body as `set_content(text, cte="quoted-printable")` stores it and the
    generator writes it: UTF-8, lines split as bytes.splitlines does, quoted-printable
    wrapped at 78, CRLF line ends."""
    lines = text.encode("utf-8").splitlines()
    encoded = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), _MAX_LINE)
    return "\r\n".join(_NEWLINE.split(encoded))


def _boundary(message_id: str) -> str:
    """A MIME boundary in the stdlib's shape (15 '=', 19 digits, '=='). It cannot occur in
    a quoted-printable body, where every '=' starts an escape or a soft line break."""
    digest = hashlib.sha256(b"keepers-boundary\x00" + message_id.encode()).digest()
    return f"==============={int.from_bytes(digest[:8], 'big') % 10**19:019d}=="


def dkim_sign(
    message: EmailMessage, *, selector: str, domain: str, private_key_pem: bytes
) -> EmailMessage:
    """Add a DKIM-Signature (rsa-sha256, relaxed header / simple body) covering
    SIGNED_HEADERS, which include both unsubscribe headers as RFC 8058 §3.1 requires (many
    MTAs do not sign List-Unsubscribe-Post by default). Returns a new message parsed from the
    signed bytes with headers kept verbatim (reading one gives its raw, possibly folded or
    encoded text), so what aiosmtplib sends is exactly what was signed."""
    _check_dkim(selector, domain, private_key_pem)
    if message["From"] is None:
        raise InvalidInput("message: has no From header to sign")
    data = message.as_bytes(policy=POLICY)
    signed_bytes = dkim_sign_bytes(
        data, selector=selector, domain=domain, private_key_pem=private_key_pem
    )
    signed = cast(EmailMessage, email.message_from_bytes(signed_bytes, policy=_SIGNED_POLICY))
    if signed.as_bytes(policy=POLICY) != signed_bytes:  # would break the signature
        raise RuntimeError("the signed message does not re-serialise to the signed bytes")
    return signed


def dkim_sign_bytes(data: bytes, *, selector: str, domain: str, private_key_pem: bytes) -> bytes:
    """`dkim_sign` for a message already in wire form (`OutgoingEmail.data`): the same
    DKIM-Signature header, prepended to `data`."""
    signing_domain = _check_dkim(selector, domain, private_key_pem)
    try:
        signature = dkim.sign(
            data,
            selector.encode(),
            signing_domain.encode(),
            private_key_pem,
            canonicalize=(b"relaxed", b"simple"),
            signature_algorithm=b"rsa-sha256",
            include_headers=[h.encode() for h in SIGNED_HEADERS],
        )
    except dkim.DKIMException as exc:
        raise InvalidInput(f"private_key_pem: cannot sign with this key ({exc})") from None
    return signature + data


def _check_dkim(selector: str, domain: str, private_key_pem: bytes) -> str:
    """Validate the signing parameters; returns the signing domain (IDNA, lower case)."""
    if not isinstance(selector, str) or not all(
        _HOST_LABEL.fullmatch(label) for label in selector.lower().split(".")
    ):
        raise InvalidInput(f"selector: {selector!r} is not a DKIM selector (host labels)")
    signing_domain = _hostname("domain", domain)
    if not isinstance(private_key_pem, bytes) or b"PRIVATE KEY" not in private_key_pem:
        raise InvalidInput("private_key_pem: must be a PEM private key (bytes)")
    return signing_domain
