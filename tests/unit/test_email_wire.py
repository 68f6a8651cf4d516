"""`compose_bytes`: the outbox's fast path writes the bytes `compose` (stdlib EmailMessage,
SMTP policy) would, and what it writes reads back right with the stdlib parser — non-ASCII
subjects and display names as RFC 2047 encoded words, long headers folded, UTF-8 bodies
quoted-printable — and still carries a DKIM signature that verifies."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from datetime import UTC, datetime, timedelta

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepers.delivery.email import (
    OutgoingEmail,
    RenderedEmail,
    compose,
    compose_bytes,
    dkim_sign,
    dkim_sign_bytes,
    message_id,
    sign_unsubscribe,
)
from keepers.errors import InvalidInput

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SECRET = b"0123456789abcdef0123456789abcdef"
LONG_URL = "https://keepers.example.com/u/" + sign_unsubscribe(SECRET, "c" * 120, "newsletter")
BOUNDARY = re.compile(rb"={15}\d{19}==")
DEFAULTS = {
    "sender": "Keepers News <news@example.com>",
    "to": "Ann Smith <ann@example.org>",
    "message_id": message_id("journey-1:step-2:customer-3", "example.com"),
    "unsubscribe_url": "https://keepers.example.com/u/abc",
    "list_id": "news.example.com",
    "extra_headers": {"X-Keepers-Journey": "welcome/hello"},
    "now": NOW,
}
PLAIN = RenderedEmail("Hello Ann", "<p>Hello <b>Ann</b></p>", "Hello Ann\n")


def both(rendered: RenderedEmail, **overrides: object) -> tuple[bytes, OutgoingEmail]:
    """(stdlib bytes, fast message) for the same arguments."""
    arguments = {**DEFAULTS, **overrides}
    return compose(rendered, **arguments).as_bytes(), compose_bytes(rendered, **arguments)


def same_bytes(reference: bytes, fast: bytes) -> bool:
    """Equal but for the MIME boundary (random in the stdlib, derived from the id here)."""
    return BOUNDARY.sub(b"B", reference) == BOUNDARY.sub(b"B", fast)


def received(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def header_block(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


CASES = {
    "ascii": (PLAIN, {}),
    "customer address, no display name": (PLAIN, {"to": "c17@Mail.Example"}),
    "non-ascii subject and bodies": (
        RenderedEmail("Grüße, Ann", "<p>Grüße, Ann</p>", "Grüße, Ann\n"),
        {},
    ),
    "long subject is folded": (
        RenderedEmail("A subject line " * 8 + "end", "<p>x</p>", "x\n"),
        {},
    ),
    "long non-ascii subject is folded into encoded words": (
        RenderedEmail("Ünïcödé — ☃ " * 12, "<p>x</p>", "x\n"),
        {},
    ),
    "non-ascii display names": (
        PLAIN,
        {"sender": "Jörg’s Shop <shop@example.com>", "to": "Zoë Åström <zoe@example.org>"},
    ),
    "display names with specials": (
        PLAIN,
        {"sender": '"Smith, J." <j@example.com>', "to": "Ann (work) <ann@example.org>"},
    ),
    "idn domain and reply-to": (
        PLAIN,
        {"to": "ann@bücher.example", "reply_to": "Help Desk <help@example.com>"},
    ),
    "transactional: no list headers": (PLAIN, {"unsubscribe_url": None, "list_id": None}),
    "long unsubscribe url stays verbatim": (PLAIN, {"unsubscribe_url": LONG_URL}),
    "long and odd extra headers": (
        PLAIN,
        {"extra_headers": {"X-Campaign": "spring " * 20, "X-Odd": "=?utf-8?q?x?= (c) <a>"}},
    ),
    "encoded-word lookalike in the subject": (
        RenderedEmail("=?utf-8?q?not_decoded?= hi", "<p>x</p>", "x"),
        {},
    ),
    "empty subject and bodies": (RenderedEmail("", "", ""), {}),
    "bodies with long lines, trailing spaces, CR, NEL and dots": (
        RenderedEmail(
            "s",
            "<p>" + "word " * 60 + "</p>  \r\n.\n" + "é" * 100,
            "trailing  \r\nbare\rcr\x85nel Å …\n.\n=3D\n\n",
        ),
        {},
    ),
    "other date": (PLAIN, {"now": datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)}),
}


@pytest.mark.parametrize(("rendered", "overrides"), CASES.values(), ids=CASES.keys())
def test_compose_bytes_writes_what_compose_writes(rendered, overrides):
    reference, fast = both(rendered, **overrides)
    assert same_bytes(reference, fast.data)
    assert fast.data.isascii()  # 7-bit on the wire: no relay re-encodes it
    for line in header_block(fast.data):
        assert len(line) <= 78 or line.startswith(b"List-Unsubscribe: <https://")


@pytest.mark.parametrize(("rendered", "overrides"), CASES.values(), ids=CASES.keys())
def test_what_compose_bytes_writes_reads_back(rendered, overrides):
    arguments = {**DEFAULTS, **overrides}
    fast = compose_bytes(rendered, **arguments)
    message = received(fast.data)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
        assert len(message.get_all(name)) == 1, name
    assert message["Subject"] == rendered.subject
    assert message["Date"].datetime == arguments["now"]
    assert message["Message-ID"] == arguments["message_id"] == fast.message_id
    (sender,) = message["From"].addresses
    (recipient,) = message["To"].addresses
    assert (sender.addr_spec, recipient.addr_spec) == (fast.sender, fast.recipients[0])
    expected_names = {"Jörg’s Shop", "Zoë Åström", "Smith, J.", "Ann Smith", "Ann", "Keepers News"}
    assert {sender.display_name, recipient.display_name} - {""} <= expected_names
    if arguments["unsubscribe_url"]:
        assert message["List-Unsubscribe"] == f"<{arguments['unsubscribe_url']}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Id"] == f"<{arguments['list_id']}>"
    else:
        assert message["List-Unsubscribe"] is None and message["List-Id"] is None
    for name, value in arguments["extra_headers"].items():
        assert message[name] == value
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    for part, text in ((plain, rendered.text), (html, rendered.html)):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part["MIME-Version"] is None
        assert part.get_content().replace("\r\n", "\n") == _lines(text)


def _lines(text: str) -> str:
    """What a text part carries: the lines of `text` (split the way bytes.splitlines does,
    so CR and CRLF end lines, U+0085 does not), each ending in a newline."""
    return "".join(line.decode() + "\n" for line in text.encode().splitlines()) or "\n"


def test_the_envelope_is_the_bare_addresses():
    fast = compose_bytes(PLAIN, **{**DEFAULTS, "to": "Ann <Ann.Smith+news@Example.ORG>"})
    assert fast.sender == "news@example.com"
    assert fast.recipients == ("Ann.Smith+news@example.org",)


def test_the_same_row_gives_the_same_bytes_and_others_another_boundary():
    first = compose_bytes(PLAIN, **DEFAULTS)
    assert compose_bytes(PLAIN, **DEFAULTS) == first  # a retry at the same time
    other = compose_bytes(PLAIN, **{**DEFAULTS, "message_id": message_id("k2", "example.com")})
    assert BOUNDARY.findall(first.data)[0] != BOUNDARY.findall(other.data)[0]
    later = compose_bytes(PLAIN, **{**DEFAULTS, "now": NOW + timedelta(hours=1)})
    assert BOUNDARY.findall(first.data)[0] == BOUNDARY.findall(later.data)[0]


def test_as_message_flattens_to_the_same_bytes():
    fast = compose_bytes(RenderedEmail("Grüße", "<p>Grüße</p>", "Grüße\n"), **DEFAULTS)
    message = fast.as_message()
    assert message.as_bytes(policy=email.policy.SMTP) == fast.data
    assert message["Message-ID"] == fast.message_id


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("sender", {"sender": "a@example.com, b@example.com"}),
        ("sender", {"sender": None}),
        ("to", {"to": "ann@exa mple.org"}),
        ("to", {"to": "ann@localhost"}),
        ("to", {"to": "ann..smith@example.org"}),
        ("to", {"to": "ann@example.org\r\nBcc: x@example.net"}),
        ("to", {"to": "ännä@example.org"}),
        ("message_id", {"message_id": "no-brackets@example.com"}),
        ("unsubscribe_url", {"unsubscribe_url": "http://example.com/u/1"}),
        ("extra_headers", {"extra_headers": {"Bcc": "x@example.net"}}),
        ("now", {"now": datetime(2026, 3, 2)}),
    ],
)
def test_compose_bytes_rejects_what_compose_rejects(field, overrides):
    for build in (compose, compose_bytes):
        with pytest.raises(InvalidInput) as caught:
            build(PLAIN, **{**DEFAULTS, **overrides})
        assert caught.value.message.startswith(f"{field}:")


# --- any text, any names -----------------------------------------------------------------

# Words of printable ASCII (the fast path, around the 78-character line limit), any ASCII,
# and anything at all.
WORDS = st.lists(st.from_regex(r"[!-~]{1,14}", fullmatch=True), max_size=12).map(" ".join)
ONE_LINE = st.one_of(
    WORDS,
    st.from_regex(r"[ -~]{0,100}", fullmatch=True),
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=120).filter(
        lambda s: len(s.splitlines()) <= 1
    ),
)
BODY = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)
NAME = st.one_of(
    st.lists(st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True), max_size=6).map(" ".join),
    st.from_regex(r"[A-Za-z0-9 .,'\"]{0,40}", fullmatch=True),
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"),
        max_size=40,
    ),
)
LOCAL = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_-]{1,10}){0,2}", fullmatch=True
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=ONE_LINE, text=BODY, html=BODY, name=NAME, local=LOCAL, extra=ONE_LINE)
def test_any_text_and_names_come_out_as_compose_writes_them(
    subject, text, html, name, local, extra
):
    rendered = RenderedEmail(subject, html, text)
    to = f"{name} <{local}@example.org>" if name.strip() else f"{local}@example.org"
    arguments = {**DEFAULTS, "to": to, "extra_headers": {"X-Note": extra}}
    try:
        reference = compose(rendered, **arguments).as_bytes()
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as caught:
            compose_bytes(rendered, **arguments)
        assert caught.value.message == exc.message
        return
    fast = compose_bytes(rendered, **arguments)
    assert same_bytes(reference, fast.data)
    message = received(fast.data)
    assert message["Subject"] == subject
    assert message["X-Note"] == extra
    assert message["To"].addresses[0].addr_spec == f"{local}@example.org"


# --- DKIM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)


def _dns(record: bytes):
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"k2026._domainkey.example.com." else None

    return lookup


@pytest.mark.parametrize(
    "rendered",
    [PLAIN, RenderedEmail("Grüße, Zoë — " * 6, "<p>Grüße</p>" * 50, "Grüße\n" * 50)],
    ids=["ascii", "non-ascii and folded"],
)
def test_dkim_signed_wire_bytes_verify_and_read_back(dkim_key, rendered):
    private_pem, record = dkim_key
    arguments = {**DEFAULTS, "to": "Zoë Åström <zoe@example.org>", "unsubscribe_url": LONG_URL}
    fast = compose_bytes(rendered, **arguments)
    signed = dkim_sign_bytes(
        fast.data, selector="k2026", domain="example.com", private_key_pem=private_pem
    )
    assert signed.endswith(fast.data) and signed.startswith(b"DKIM-Signature: ")
    assert dkim.verify(signed, dnsfunc=_dns(record))
    tags = dict(
        tag.split("=", 1)
        for tag in re.sub(r"\s+", "", received(signed)["DKIM-Signature"]).split(";")
        if tag
    )
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "subject"} <= set(
        tags["h"].split(":")
    )
    message = received(signed)
    assert message["Subject"] == rendered.subject
    assert message["To"].addresses[0].display_name == "Zoë Åström"
    assert not dkim.verify(signed.replace(b"List-Unsubscribe-Post: ", b"X: "), dnsfunc=_dns(record))


def test_dkim_sign_bytes_signs_what_dkim_sign_signs(dkim_key):
    private_pem, record = dkim_key
    message = compose(PLAIN, **DEFAULTS)
    by_message = dkim_sign(
        message, selector="k2026", domain="example.com", private_key_pem=private_pem
    ).as_bytes()
    by_bytes = dkim_sign_bytes(
        message.as_bytes(), selector="k2026", domain="example.com", private_key_pem=private_pem
    )
    assert dkim.verify(by_message, dnsfunc=_dns(record))
    assert dkim.verify(by_bytes, dnsfunc=_dns(record))
    # the same signed header list and body hash; only t= (and so b=) may differ
    tag = re.compile(rb"\b(h|bh)=([^;]+);")
    assert tag.findall(by_message.replace(b"\r\n", b"")) == tag.findall(
        by_bytes.replace(b"\r\n", b"")
    )


def test_dkim_sign_bytes_rejects_bad_keys_and_names(dkim_key):
    private_pem, _ = dkim_key
    data = compose_bytes(PLAIN, **DEFAULTS).data
    for field, arguments in [
        ("private_key_pem", {"private_key_pem": b"nonsense"}),
        ("selector", {"selector": "bad selector"}),
        ("domain", {"domain": "not a domain"}),
    ]:
        with pytest.raises(InvalidInput, match=rf"^{field}:"):
            dkim_sign_bytes(
                data,
                **{"selector": "k2026", "domain": "example.com", "private_key_pem": private_pem}
                | arguments,
            )
