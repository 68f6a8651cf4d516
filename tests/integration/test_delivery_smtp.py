"""The SMTP channel against a real SMTP server (aiosmtpd on a free loopback port): what
arrives, and how each kind of refusal or failure becomes an Outcome for the outbox."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keepers.delivery.email import (
    EmailTemplate,
    compose,
    compose_bytes,
    dkim_sign,
    dkim_sign_bytes,
    message_id,
    render,
    sign_unsubscribe,
)
from keepers.delivery.smtp import SmtpSettings, classify_reply, send, send_sync
from keepers.errors import InvalidInput

HOST = "127.0.0.1"
USER, PASSWORD = "keepers", "s3cret-pass"
SELECTOR, DOMAIN = "k2026", "example.com"

# Recipients whose local part picks the server's reply: at RCPT, or at DATA (after RCPT).
RCPT_REPLIES = {
    "gone": "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
    "nodomain": "553 5.1.2 Domain does not exist",
    "policy": "550 5.7.1 Recipient rejected by policy",
    "busy": "451 4.3.0 Mailbox temporarily unavailable, try again later",
}
DATA_REPLIES = {
    "spamcheck": "554 5.7.1 Message rejected as spam",
    "moved": "550 5.1.1 Mailbox moved, address no longer valid",
    "greylist": "450 4.7.1 Greylisted, try again in 5 minutes",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Recorder:
    """An aiosmtpd handler that answers per recipient and keeps what it accepted."""

    envelopes: list[Envelope] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = RCPT_REPLIES.get(address.split("@")[0])
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            if rcpt.split("@")[0] in DATA_REPLIES:
                return DATA_REPLIES[rcpt.split("@")[0]]
        self.envelopes.append(envelope)
        return "250 2.0.0 Ok: queued as 1234"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        """Accepts one user; handled=False lets aiosmtpd answer 535 itself."""
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((mechanism, login))
        return AuthResult(success=(login, password) == (USER, PASSWORD), handled=False)


@contextmanager
def smtp_server(recorder: Recorder, **options: Any) -> Iterator[int]:
    """A real aiosmtpd server on a free loopback port, for the duration of the block."""
    port = free_port()
    controller = Controller(recorder, hostname=HOST, port=port, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def plain_port(recorder: Recorder) -> Iterator[int]:
    with smtp_server(recorder) as port:
        yield port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (P-256, quick to make). It is its own CA, so
    the client trusts it through SmtpSettings.cert_bundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keepers test relay")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "relay.pem", folder / "relay.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


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


def a_message(to: str = "ann@example.org", key: bytes | None = None) -> EmailMessage:
    """A message as the outbox would send it: rendered, composed, optionally signed."""
    template = EmailTemplate(
        subject="Your {{ plan }} plan, {{ name }}",
        html="<style>h1 { color: #0a7 }</style><h1>Grüße, {{ name }}</h1>"
        "<p>Thanks for staying with us.</p>"
        "<p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>",
    )
    url = "https://keepers.example.com/u/" + sign_unsubscribe(b"k" * 32, "cust_42", "news")
    rendered = render(template, {"name": "Ann", "plan": "Pro", "unsubscribe_url": url})
    message = compose(
        rendered,
        sender="Keepers News <news@example.com>",
        to=to,
        message_id=message_id(f"journey-1:step-1:{to}", DOMAIN),
        unsubscribe_url=url,
        list_id="news.example.com",
    )
    if key is None:
        return message
    return dkim_sign(message, selector=SELECTOR, domain=DOMAIN, private_key_pem=key)


# --- delivery ---------------------------------------------------------------------------------


def test_message_arrives_byte_intact_with_headers_and_both_parts(recorder, plain_port, dkim_key):
    private_pem, record = dkim_key
    message = a_message(key=private_pem)
    outcome = send_sync(message, SmtpSettings(HOST, plain_port, timeout=5))

    assert outcome.status == "sent" and outcome.code == 250
    assert outcome.reference == message["Message-ID"]
    (envelope,) = recorder.envelopes
    assert envelope.mail_from == "news@example.com"
    assert envelope.rcpt_tos == ["ann@example.org"]
    raw = envelope.original_content
    assert raw.rstrip(b"\r\n") == message.as_bytes().rstrip(b"\r\n")  # byte for byte

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    assert dkim.verify(raw, dnsfunc=dns)  # what arrived still carries a valid signature
    received = email.message_from_bytes(raw, policy=email.policy.default)
    assert received["Subject"] == "Your Pro plan, Ann"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["List-Unsubscribe"].startswith("<https://keepers.example.com/u/")
    plain, html = received.iter_parts()
    assert "Grüße, Ann" in plain.get_content()
    assert 'style="color: #0a7' in html.get_content() and "Grüße, Ann" in html.get_content()


def test_wire_bytes_arrive_byte_intact_and_still_verify(recorder, plain_port, dkim_key):
    """What the outbox sends: `compose_bytes` (here with a non-ASCII subject and display
    names) signed with `dkim_sign_bytes`, handed over as an OutgoingEmail."""
    private_pem, record = dkim_key
    rendered = render(
        EmailTemplate(subject="Grüße, {{ name }} — dein Plan", html="<h1>Grüße, {{ name }}</h1>"),
        {"name": "Zoë"},
    )
    outgoing = compose_bytes(
        rendered,
        sender="Jörg’s Shop <news@example.com>",
        to="Zoë Åström <zoe@example.org>",
        message_id=message_id("journey-1:step-1:zoe", DOMAIN),
        unsubscribe_url="https://keepers.example.com/u/" + sign_unsubscribe(b"k" * 32, "z", "n"),
        list_id="news.example.com",
    )
    signed = dkim_sign_bytes(
        outgoing.data, selector=SELECTOR, domain=DOMAIN, private_key_pem=private_pem
    )
    outcome = send_sync(replace(outgoing, data=signed), SmtpSettings(HOST, plain_port, timeout=5))

    assert (outcome.status, outcome.code, outcome.reference) == ("sent", 250, outgoing.message_id)
    (envelope,) = recorder.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == ("news@example.com", ["zoe@example.org"])
    assert envelope.original_content.rstrip(b"\r\n") == signed.rstrip(b"\r\n")

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    assert dkim.verify(envelope.original_content, dnsfunc=dns)
    received = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert received["Subject"] == "Grüße, Zoë — dein Plan"
    assert received["From"].addresses[0].display_name == "Jörg’s Shop"
    assert received["To"].addresses[0].display_name == "Zoë Åström"
    plain, html = received.iter_parts()
    assert "Grüße, Zoë" in plain.get_content() and "<h1>Grüße, Zoë</h1>" in html.get_content()


def test_async_send_delivers_from_an_event_loop(recorder, plain_port):
    message = a_message()
    outcome = asyncio.run(send(message, SmtpSettings(HOST, plain_port, timeout=5)))
    assert (outcome.status, outcome.code) == ("sent", 250)
    assert len(recorder.envelopes) == 1


@pytest.mark.parametrize(
    ("local", "status", "code", "suppress"),
    [
        ("gone", "failed", 550, True),  # 5.1.1 user unknown: hard bounce
        ("nodomain", "failed", 553, True),  # 5.1.2 bad domain
        ("policy", "failed", 550, False),  # 5.7.1: about us or the content, not the address
        ("busy", "retry", 451, False),
    ],
)
def test_recipient_refusals_become_outcomes(recorder, plain_port, local, status, code, suppress):
    outcome = send_sync(a_message(to=f"{local}@example.org"), SmtpSettings(HOST, plain_port))
    assert (outcome.status, outcome.code, outcome.suppress) == (status, code, suppress)
    assert outcome.detail.startswith(f"RCPT {code}")
    assert outcome.reference is not None
    assert recorder.envelopes == []


@pytest.mark.parametrize(
    ("local", "status", "code", "suppress"),
    [
        ("spamcheck", "failed", 554, False),
        ("moved", "failed", 550, True),
        ("greylist", "retry", 450, False),
    ],
)
def test_refusals_after_data_become_outcomes(recorder, plain_port, local, status, code, suppress):
    outcome = send_sync(a_message(to=f"{local}@example.org"), SmtpSettings(HOST, plain_port))
    assert (outcome.status, outcome.code, outcome.suppress) == (status, code, suppress)
    assert outcome.detail.startswith(f"DATA {code}")


def test_server_down_is_retried():
    port = free_port()  # nothing listens there any more
    started = time.monotonic()
    outcome = send_sync(a_message(), SmtpSettings(HOST, port, timeout=5))
    assert outcome.status == "retry" and outcome.code is None
    assert time.monotonic() - started < 2  # refused at once, not a timeout


def test_server_that_never_answers_times_out_and_is_retried():
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)  # the kernel completes the handshake; nobody sends a greeting
        port = listener.getsockname()[1]
        started = time.monotonic()
        outcome = send_sync(a_message(), SmtpSettings(HOST, port, timeout=0.3))
    assert outcome.status == "retry"
    assert "Timeout" in outcome.detail
    assert time.monotonic() - started < 2


def test_server_that_hangs_up_is_retried():
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)

        def hang_up() -> None:
            connection, _ = listener.accept()
            connection.sendall(b"220 relay ready\r\n")
            connection.recv(1024)  # EHLO …
            connection.close()  # … and gone

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        outcome = send_sync(a_message(), SmtpSettings(HOST, listener.getsockname()[1], timeout=2))
        thread.join(timeout=2)
    assert outcome.status == "retry"
    assert "Disconnected" in outcome.detail


# --- TLS and authentication -------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_with_authentication(recorder, certificate, server_tls, mechanism):
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    options = {
        "tls_context": server_tls,
        "require_starttls": True,  # the server refuses anything before STARTTLS
        "auth_required": True,
        "authenticator": recorder.authenticate,
        "auth_exclude_mechanism": [other],
    }
    with smtp_server(recorder, **options) as port:
        settings = SmtpSettings(
            HOST, port, "starttls", USER, PASSWORD, timeout=5, cert_bundle=str(certificate[0])
        )
        outcome = send_sync(a_message(), settings)
        assert outcome.status == "sent", outcome.detail
        assert recorder.logins == [(mechanism, USER)]
        assert len(recorder.envelopes) == 1

        wrong = SmtpSettings(
            HOST, port, "starttls", USER, "wrong", timeout=5, cert_bundle=str(certificate[0])
        )
        outcome = send_sync(a_message(), wrong)
    assert (outcome.status, outcome.code, outcome.suppress) == ("failed", 535, False)
    assert "SmtpSettings.username" in outcome.detail and repr(USER) in outcome.detail
    assert "wrong" not in outcome.detail  # never echo the password
    assert len(recorder.envelopes) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_implicit_tls_with_authentication(recorder, certificate, server_tls):
    # aiosmtpd only counts STARTTLS as "TLS" for auth_require_tls; with implicit TLS the
    # whole connection is encrypted, so the check is switched off rather than the test.
    options = {
        "ssl_context": server_tls,
        "auth_required": True,
        "auth_require_tls": False,
        "authenticator": recorder.authenticate,
    }
    with smtp_server(recorder, **options) as port:
        settings = SmtpSettings(
            HOST, port, "tls", USER, PASSWORD, timeout=5, cert_bundle=str(certificate[0])
        )
        outcome = send_sync(a_message(), settings)
    assert outcome.status == "sent", outcome.detail
    assert len(recorder.envelopes) == 1
    assert recorder.envelopes[0].rcpt_tos == ["ann@example.org"]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_untrusted_certificate_fails_naming_cert_bundle(recorder, server_tls, security):
    if security == "tls":
        options: dict[str, Any] = {"ssl_context": server_tls}
    else:
        options = {"tls_context": server_tls, "require_starttls": True}
    with smtp_server(recorder, **options) as port:
        outcome = send_sync(a_message(), SmtpSettings(HOST, port, security, timeout=5))
    assert outcome.status == "failed"
    assert "SmtpSettings.cert_bundle" in outcome.detail
    assert recorder.envelopes == []


def test_starttls_required_but_not_offered_fails_naming_security(recorder, plain_port):
    outcome = send_sync(a_message(), SmtpSettings(HOST, plain_port, "starttls", timeout=5))
    assert outcome.status == "failed"
    assert "STARTTLS" in outcome.detail and "SmtpSettings.security" in outcome.detail
    assert recorder.envelopes == []  # never fell back to plain text


# --- settings and classification --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_name", "arguments"),
    [
        ("host", {"host": ""}),
        ("host", {"host": "smtp example.com"}),
        ("port", {"host": "h", "port": 0}),
        ("port", {"host": "h", "port": "25"}),
        ("security", {"host": "h", "security": "ssl"}),
        ("timeout", {"host": "h", "timeout": 0}),
        ("timeout", {"host": "h", "timeout": float("nan")}),
        ("password", {"host": "h", "security": "tls", "username": "u"}),
        ("username", {"host": "h", "username": "u", "password": "p"}),  # in clear: refused
        ("cert_bundle", {"host": "h", "cert_bundle": "/no/such/file.pem"}),
    ],
)
def test_settings_reject_bad_values_naming_the_field(field_name, arguments):
    with pytest.raises(InvalidInput) as caught:
        SmtpSettings(**arguments)
    assert caught.value.message.startswith(f"{field_name}:")


def test_settings_do_not_show_the_password():
    settings = SmtpSettings("smtp.example.com", 587, "starttls", "u", "hunter2")
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("code", "text", "stage", "status", "suppress"),
    [
        (550, "Requested action not taken: mailbox unavailable", "RCPT", "failed", True),
        (551, "User not local", "RCPT", "failed", True),
        (552, "5.2.2 Mailbox full", "RCPT", "failed", False),
        (553, "5.1.7 Bad sender address syntax", "MAIL", "failed", False),
        (550, "5.1.8 Sender domain does not exist", "RCPT", "failed", False),
        (550, "5.7.515 Access denied, sending domain does not meet authentication", "DATA",
         "failed", False),
        (554, "5.6.0 Message content rejected", "DATA", "failed", False),
        (421, "4.7.0 Too many connections", "SMTP", "retry", False),
    ],
)  # fmt: skip
def test_reply_codes_are_classified(code, text, stage, status, suppress):
    outcome = classify_reply(code, text, stage=stage, reference="<x@example.com>")
    assert (outcome.status, outcome.suppress, outcome.code) == (status, suppress, code)
    assert outcome.reference == "<x@example.com>"
