"""The outbox's email path end to end against the real SMTP sink (aiosmtpd): a journey
email with a non-ASCII subject and sender name, DKIM-signed by the worker, arrives with
its headers, both parts and a signature that verifies; the SMTP pool takes the wire-form
messages the outbox builds, one session for many, refusals classified as before."""

from __future__ import annotations

import asyncio
import base64
import email.policy
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keepers.delivery.email import RenderedEmail, compose_bytes, message_id
from keepers.delivery.smtp import SmtpPool, SmtpSettings
from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.testing.smtp import SmtpSink, smtp_sink

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SELECTOR, DOMAIN = "k2026", "shop.example"
JOURNEY = {
    "key": "gruesse",
    "name": "Welcome",
    "trigger": {"stage_entered": "conversion"},
    "steps": [
        {
            "id": "hello",
            "email": {
                "subject": "Grüße, {{ traits.first_name }} — danke für Bestellung {{ orders }}",
                "html": "<style>p{color:#333}</style><p>Schön, dass du da bist, "
                "{{ traits.first_name }}!</p>"
                "<p><a href='{{ unsubscribe_url }}'>Abmelden</a></p>",
            },
        },
        {"id": "done", "exit": {}},
    ],
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as running:
        yield running


def _event(kind: str, user: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "userId": user,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        **fields,
    }


def test_a_journey_email_arrives_signed_with_non_ascii_headers(
    tmp_path: Path, sink: SmtpSink, dkim_key: tuple[Path, bytes]
) -> None:
    key_file, record = dkim_key
    clock = Clock(T0)
    settings = Settings(
        database_url=str(tmp_path / "keepers.duckdb"),
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        email_from="Jörg’s Laden <hello@shop.example>",
        public_url="https://shop.example",
        quiet_hours="",
        dkim_selector=SELECTOR,
        dkim_domain=DOMAIN,
        dkim_private_key_file=str(key_file),
    )
    keepers = Keepers.open(settings, clock=clock)
    try:
        people = {"u0": "Zoë", "u1": "Ann"}
        identified = [
            _event(
                "identify",
                user,
                T0 - timedelta(days=1),
                traits={"email": f"{user}@mail.example", "first_name": name},
            )
            for user, name in people.items()
        ]
        assert keepers.ingest_messages(identified, source_id="t").stored == 2
        keepers.compute()
        keepers.journeys.save(JOURNEY)
        orders = [
            _event(
                "track",
                user,
                T0 - timedelta(minutes=5),
                event="Order Completed",
                properties={"order_id": f"{user}-1", "revenue": 30.0},
            )
            for user in people
        ]
        assert keepers.ingest_messages(orders, source_id="t").stored == 2
        keepers.compute()
        result = keepers.journeys.run(T0)
        assert result["delivery"]["sent"] == 2
        trace = keepers.journeys.trace("gruesse", "u0")
    finally:
        keepers.close()

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    (mail,) = sink.to("u0@mail.example")
    assert mail["Subject"] == "Grüße, Zoë — danke für Bestellung 1"
    assert mail["From"].addresses[0].display_name == "Jörg’s Laden"
    assert mail["Message-ID"] == trace["messages"][0]["reference"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"].startswith("<https://shop.example/u/")
    assert mail["X-Keepers-Journey"] == "gruesse/hello"
    plain, html = mail.iter_parts()
    assert "Schön, dass du da bist, Zoë!" in plain.get_content()
    assert 'style="color: #333' in html.get_content()
    # The sink keeps the parsed message; written back with its header lines as they came,
    # it is the bytes that arrived, and the signature over them verifies.
    raw = mail.as_bytes(policy=email.policy.SMTP.clone(refold_source="none"))
    assert dkim.verify(raw, dnsfunc=dns)
    assert "list-unsubscribe-post" in str(mail["DKIM-Signature"]).replace(" ", "")


def test_the_pool_sends_wire_messages_over_one_session_and_classifies_refusals() -> None:
    rendered = RenderedEmail("Grüße", "<p>Grüße</p>", "Grüße\n")
    messages = [
        compose_bytes(
            rendered,
            sender="Shop <hello@shop.example>",
            to=f"p{i}@mail.example",
            message_id=message_id(f"k{i}", "shop.example"),
            unsubscribe_url=None,
            list_id=None,
        )
        for i in range(5)
    ]
    with smtp_sink() as sink:
        sink.refuse["p2@mail.example"] = "550 5.1.1 user unknown"
        sink.refuse["p3@mail.example"] = "451 4.3.0 try again later"

        async def send_all() -> list[Any]:
            pool = SmtpPool(SmtpSettings(host="127.0.0.1", port=sink.port))
            try:
                return [await pool.send(m) for m in messages]
            finally:
                await pool.close()

        outcomes = asyncio.run(send_all())
    assert [o.status for o in outcomes] == ["sent", "sent", "failed", "retry", "sent"]
    assert [o.reference for o in outcomes] == [m.message_id for m in messages]
    assert outcomes[2].suppress and not outcomes[3].suppress
    assert sink.sessions == 1
    assert [m["To"] for m in sink.messages] == [
        "p0@mail.example",
        "p1@mail.example",
        "p4@mail.example",
    ]
    assert all(m["Subject"] == "Grüße" for m in sink.messages)
