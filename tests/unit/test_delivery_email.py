"""Email building: sandboxed templates, the message Gmail/Yahoo want from bulk senders
(interfaces.md §3), deterministic Message-IDs, signed unsubscribe tokens and a DKIM
signature that covers the RFC 8058 headers."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from datetime import UTC, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keepers.delivery.email import (
    EmailTemplate,
    RenderedEmail,
    TemplateError,
    check,
    compose,
    dkim_sign,
    message_id,
    render,
    sign_unsubscribe,
    verify_unsubscribe,
)
from keepers.errors import InvalidInput

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SECRET = b"0123456789abcdef0123456789abcdef"
UNSUBSCRIBE = "https://keepers.example.com/u/abc"


def _compose(rendered: RenderedEmail | None = None, **overrides) -> email.message.EmailMessage:
    arguments = {
        "sender": "Keepers News <news@example.com>",
        "to": "Ann Smith <ann@example.org>",
        "message_id": message_id("journey-1:step-2:customer-3", "example.com"),
        "unsubscribe_url": UNSUBSCRIBE,
        "list_id": "news.example.com",
        "now": NOW,
    }
    arguments.update(overrides)
    rendered = rendered or RenderedEmail("Hello Ann", "<p>Hello <b>Ann</b></p>", "Hello Ann\n")
    return compose(rendered, **arguments)


def _parsed(message: email.message.EmailMessage) -> email.message.EmailMessage:
    """The message as a receiver sees it: parsed back from the bytes on the wire."""
    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)


# --- rendering -------------------------------------------------------------------------------


def test_render_substitutes_variables_and_inlines_css():
    template = EmailTemplate(
        subject="Welcome, {{ name }}",
        html="<style>p.lead { color: #123456 }</style><p class='lead'>Hi {{ name }}</p>",
    )
    rendered = render(template, {"name": "Ann"})
    assert rendered.subject == "Welcome, Ann"
    assert "Hi Ann" in rendered.html
    assert re.search(r"<p[^>]*style=\"color: #123456;?\"", rendered.html)
    assert "<style>" not in rendered.html  # inlined, not left for clients that drop it


def test_html_is_autoescaped_but_subject_and_text_are_plain_text():
    template = EmailTemplate(
        subject="{{ name }} & co", html="<p>{{ name }}</p>", text="Hi {{ name }}\n"
    )
    rendered = render(template, {"name": "<script>alert(1)</script>"})
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert rendered.subject == "<script>alert(1)</script> & co"  # no &lt; in a subject line
    assert rendered.text == "Hi <script>alert(1)</script>\n"


def test_undefined_variables_render_empty_even_when_chained():
    template = EmailTemplate(subject="Hi {{ name }}!", html="<p>[{{ traits.plan.tier }}]</p>")
    rendered = render(template, {})
    assert rendered.subject == "Hi !"
    assert "[]" in rendered.html


def test_nested_values_are_reachable():
    template = EmailTemplate(subject="{{ traits.plan }}", html="<p>{{ traits['plan'] }}</p>")
    rendered = render(template, {"traits": {"plan": "pro"}})
    assert rendered.subject == "pro"
    assert "<p>pro</p>" in rendered.html


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ name.__class__.__base__ }}",
        "{% set x = [] %}{{ x.append(1) }}",  # the immutable sandbox: no mutation
    ],
)
def test_sandbox_escapes_are_template_errors(source):
    with pytest.raises(TemplateError) as caught:
        render(EmailTemplate(subject="s", html=f"<p>ok</p>\n{source}"), {"name": "Ann"})
    assert caught.value.part == "html"
    assert caught.value.line == 2
    assert "html line 2" in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10000000 }}",
        "{% for i in range(100000) %}{{ 'abcdefghijk' }}{% endfor %}",
        "{{ 2 ** 100000 }}",
    ],
)
def test_output_is_bounded(source):
    with pytest.raises(TemplateError, match="html"):
        render(EmailTemplate(subject="s", html=source), {})


def test_syntax_error_names_the_part_and_line():
    template = EmailTemplate(subject="fine", html="<p>one</p>\n<p>two</p>\n{% if %}\n")
    with pytest.raises(TemplateError) as caught:
        render(template, {})
    assert (caught.value.part, caught.value.line) == ("html", 3)
    assert str(caught.value).startswith("template html line 3:")
    assert isinstance(caught.value, InvalidInput)  # → HTTP 400 at the edge


def test_runtime_error_names_the_part_and_line():
    template = EmailTemplate(subject="s", html="<p>x</p>", text="one\ntwo\n{{ 1 / 0 }}\n")
    with pytest.raises(TemplateError) as caught:
        render(template, {})
    assert (caught.value.part, caught.value.line) == ("text", 3)
    assert "ZeroDivisionError" in str(caught.value)


def test_check_reports_unknown_top_level_names_only():
    template = EmailTemplate(
        subject="{{ first_name }}, your {{ traits.plan }} plan",
        html="{% for item in cart.items %}{{ item.name }}{% endfor %}{{ coupon }}"
        "{% for i in range(3) %}{{ i }}{% endfor %}",
        text="{{ unsubscribe_url }}",
    )
    known = {"first_name", "traits", "cart", "unsubscribe_url"}
    assert check(template, known) == ["coupon"]  # not item (loop), range (global), traits.plan
    assert check(template, set()) == ["cart", "coupon", "first_name", "traits", "unsubscribe_url"]


def test_check_raises_on_syntax_errors_with_part_and_line():
    with pytest.raises(TemplateError) as caught:
        check(EmailTemplate(subject="Hi {{ name ", html="<p></p>"), {"name"})
    assert (caught.value.part, caught.value.line) == ("subject", 1)


def test_text_part_is_derived_from_html_when_the_template_has_none():
    template = EmailTemplate(
        subject="s",
        html="<h1>Sale</h1><p>Save <b>20%</b> at <a href='https://shop.example'>shop</a></p>",
    )
    text = render(template, {}).text
    assert "Sale" in text and "20%" in text and "https://shop.example" in text
    assert "<p>" not in text and "<b>" not in text


def test_explicit_text_part_is_used_as_written():
    template = EmailTemplate(subject="s", html="<p>html version</p>", text="text {{ n }}\n")
    assert render(template, {"n": 1}).text == "text 1\n"


def test_template_fields_are_validated():
    with pytest.raises(InvalidInput, match=r"^html:"):
        EmailTemplate(subject="s", html=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"^text:"):
        EmailTemplate(subject="s", html="", text="x" * 300_000)


# --- headers ---------------------------------------------------------------------------------


def test_subject_newlines_cannot_inject_headers():
    template = EmailTemplate(subject="Hi {{ name }}", html="<p>x</p>")
    name = "Ann\r\nBcc: victim@example.net\nX-Evil: 1\u2028Cc: b@example.net"
    rendered = render(template, {"name": name})
    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    received = _parsed(_compose(rendered))
    assert received["Bcc"] is None and received["X-Evil"] is None and received["Cc"] is None
    assert received.get_all("Subject") == [
        "Hi Ann Bcc: victim@example.net X-Evil: 1 Cc: b@example.net"
    ]


def test_compose_rejects_line_breaks_in_subject_and_extra_headers():
    with pytest.raises(InvalidInput, match=r"^subject:"):
        _compose(RenderedEmail("Hi\r\nBcc: x@example.net", "<p></p>", ""))
    with pytest.raises(InvalidInput, match=r"^extra_headers\[X-Campaign\]:"):
        _compose(extra_headers={"X-Campaign": "spring\r\nBcc: x@example.net"})
    with pytest.raises(InvalidInput, match=r"^extra_headers:"):
        _compose(extra_headers={"Bcc": "x@example.net"})  # no extra recipients that way
    with pytest.raises(InvalidInput, match=r"^extra_headers:"):
        _compose(extra_headers={"Bad Name": "x"})


def test_compose_sets_single_instance_headers_once_and_rfc8058_headers():
    message = _compose(reply_to="help@example.com", extra_headers={"X-Campaign": "spring"})
    received = _parsed(message)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
        assert len(received.get_all(name)) == 1, name
    assert received["From"].addresses[0].addr_spec == "news@example.com"
    assert received["To"].addresses[0].addr_spec == "ann@example.org"
    assert received["Date"].datetime == NOW
    assert received["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["List-Id"] == "<news.example.com>"
    assert received["Reply-To"] == "help@example.com"
    assert received["X-Campaign"] == "spring"


def test_compose_builds_multipart_alternative_with_text_then_html():
    message = _compose(RenderedEmail("Grüße", "<p>Grüße, Ann</p>", "Grüße, Ann\n"))
    received = _parsed(message)
    assert received.get_content_type() == "multipart/alternative"
    parts = list(received.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Grüße, Ann\r\n"  # CRLF on the wire
    assert parts[1].get_content().strip() == "<p>Grüße, Ann</p>"
    assert received["Subject"] == "Grüße"
    # 7-bit safe on the wire, so no relay re-encodes the body (which would break DKIM)
    assert all(byte < 128 for byte in message.as_bytes())


def test_compose_without_unsubscribe_url_has_no_unsubscribe_headers():
    received = _parsed(_compose(unsubscribe_url=None, list_id=None))
    assert received["List-Unsubscribe"] is None
    assert received["List-Unsubscribe-Post"] is None
    assert received["List-Id"] is None


def test_long_unsubscribe_url_is_written_verbatim():
    url = "https://keepers.example.com/u/" + sign_unsubscribe(SECRET, "c" * 120, "newsletter")
    raw = _compose(unsubscribe_url=url).as_bytes()
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in raw  # not folded into =?utf-8?q?
    assert _parsed(_compose(unsubscribe_url=url))["List-Unsubscribe"] == f"<{url}>"


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("sender", {"sender": "a@example.com, b@example.com"}),
        ("sender", {"sender": "not an address"}),
        ("sender", {"sender": "news@"}),
        ("sender", {"sender": "@example.com"}),
        ("sender", {"sender": "news@localhost"}),
        ("sender", {"sender": "news@example.com\r\nBcc: x@example.net"}),
        ("to", {"to": "ann@exa mple.org"}),
        ("to", {"to": "ann@example.org, bob@example.org"}),
        ("reply_to", {"reply_to": "help"}),
        ("message_id", {"message_id": "no-angle-brackets@example.com"}),
        ("unsubscribe_url", {"unsubscribe_url": "http://example.com/u/1"}),
        ("unsubscribe_url", {"unsubscribe_url": "https://example.com/u/1> , <mailto:x"}),
        ("list_id", {"list_id": "news letter"}),
        ("now", {"now": datetime(2026, 3, 2)}),
    ],
)
def test_compose_rejects_bad_input_naming_the_field(field, overrides):
    with pytest.raises(InvalidInput) as caught:
        _compose(**overrides)
    assert caught.value.message.startswith(f"{field}:")


# --- Message-ID --------------------------------------------------------------------------------


def test_message_id_is_deterministic_and_rfc5322_shaped():
    first = message_id("journey-1:step-2:customer-3", "example.com")
    assert first == message_id("journey-1:step-2:customer-3", "Example.COM")  # a retry
    assert first != message_id("journey-1:step-2:customer-4", "example.com")
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", first)
    assert email.policy.default.header_factory("Message-ID", first).defects == ()


@pytest.mark.parametrize(("key", "domain"), [("", "example.com"), ("k", "bad domain"), ("k", "x")])
def test_message_id_rejects_bad_input(key, domain):
    with pytest.raises(InvalidInput, match=r"^(key|domain):"):
        message_id(key, domain)


# --- unsubscribe tokens ------------------------------------------------------------------------


def test_unsubscribe_token_round_trips_and_is_url_safe():
    token = sign_unsubscribe(SECRET, "cust_42", "newsletter")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    assert "cust_42" not in token and "newsletter" not in token
    assert verify_unsubscribe(SECRET, token) == ("cust_42", "newsletter")
    assert verify_unsubscribe(SECRET, sign_unsubscribe(SECRET, "ü/ö?&", "a.b")) == ("ü/ö?&", "a.b")


def test_tampered_or_foreign_unsubscribe_tokens_are_rejected():
    token = sign_unsubscribe(SECRET, "cust_42", "newsletter")
    other = sign_unsubscribe(SECRET, "cust_43", "newsletter")
    payload, mac = token.split(".")
    forged = [
        other.split(".")[0] + "." + mac,  # someone else's customer id with my signature
        payload + "." + other.split(".")[1],
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token[:-4],
        payload,
        "",
        "garbage",
        "!!!.???",
        token + "." + mac,
        "a" * 5000,
        sign_unsubscribe(b"another secret of 32 bytes......", "cust_42", "newsletter"),
    ]
    for bad in forged:
        with pytest.raises(InvalidInput, match=r"^token:"):
            verify_unsubscribe(SECRET, bad)


def test_unsubscribe_secret_must_be_long_enough():
    with pytest.raises(InvalidInput, match=r"^secret:"):
        sign_unsubscribe(b"short", "c", "l")


# --- DKIM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    """A 2048-bit RSA key (Gmail's recommendation) and its DNS TXT record."""
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


def _signature_tags(raw: bytes) -> dict[str, str]:
    signed = email.message_from_bytes(raw, policy=email.policy.compat32)
    value = re.sub(r"\s+", "", signed["DKIM-Signature"])
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_dkim_signature_verifies_and_covers_the_unsubscribe_headers(dkim_key):
    private_pem, record = dkim_key
    url = "https://keepers.example.com/u/" + sign_unsubscribe(SECRET, "c" * 80, "newsletter")
    message = _compose(RenderedEmail("Grüße, Ann", "<p>Grüße</p>", "Grüße\n"), unsubscribe_url=url)
    signed = dkim_sign(message, selector="k2026", domain="example.com", private_key_pem=private_pem)
    raw = signed.as_bytes()
    assert dkim.verify(raw, dnsfunc=_dns(record))
    tags = _signature_tags(raw)
    assert (tags["d"], tags["s"], tags["c"], tags["a"]) == (
        "example.com",
        "k2026",
        "relaxed/simple",
        "rsa-sha256",
    )
    covered = tags["h"].split(":")
    for name in ("from", "to", "subject", "date", "message-id"):
        assert name in covered
    assert "list-unsubscribe" in covered and "list-unsubscribe-post" in covered
    assert signed["Message-ID"] == message["Message-ID"]


def test_dkim_signature_breaks_when_the_message_is_changed(dkim_key):
    private_pem, record = dkim_key
    raw = dkim_sign(
        _compose(), selector="k2026", domain="example.com", private_key_pem=private_pem
    ).as_bytes()
    for before, after in [
        (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x"),
        (b"Subject: Hello Ann", b"Subject: Hello Bob"),
        (b"Hello Ann\r\n", b"Hello Bob\r\n"),
        # absent signed headers are signed as absent: adding one later breaks the signature
        (b"\r\nFrom: ", b"\r\nReply-To: attacker@example.net\r\nFrom: "),
    ]:
        assert before in raw
        assert not dkim.verify(raw.replace(before, after, 1), dnsfunc=_dns(record))


def test_dkim_sign_rejects_bad_keys_and_names(dkim_key):
    private_pem, _ = dkim_key
    with pytest.raises(InvalidInput, match=r"^private_key_pem:"):
        dkim_sign(_compose(), selector="k", domain="example.com", private_key_pem=b"nonsense")
    garbled = private_pem.replace(private_pem[60:80], b"A" * 20)
    with pytest.raises(InvalidInput, match=r"^private_key_pem:"):
        dkim_sign(_compose(), selector="k", domain="example.com", private_key_pem=garbled)
    with pytest.raises(InvalidInput, match=r"^selector:"):
        dkim_sign(_compose(), selector="bad selector", domain="example.com", private_key_pem=b"")
    with pytest.raises(InvalidInput, match=r"^domain:"):
        dkim_sign(_compose(), selector="k", domain="not a domain", private_key_pem=private_pem)
