"""Webhook delivery against a real HTTP receiver on 127.0.0.1 that verifies every request
with the Standard Webhooks reference verifier (reliability plan C1-C4)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from keepers.delivery import webhooks
from keepers.delivery.webhooks import deliver, deliver_sync, generate_secret
from keepers.errors import InvalidInput

BODY = json.dumps({"type": "journey.step", "data": {"customer": "c-1", "amount": 12.5}}).encode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    error: str = ""


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


class Receiver:
    """Records every request, verifies it with `Webhook(secret).verify`, and answers with
    the next scripted reply for its path (200 once the script runs out)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.requests: list[Received] = []
        self.replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.lock = threading.Lock()
        self.url = ""

    def script(self, path: str, *replies: Reply) -> str:
        self.replies[path].extend(replies)
        return self.url + path

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        try:
            Webhook(self.secret).verify(body, headers)
            verified, error = True, ""
        except WebhookVerificationError as exc:
            verified, error = False, str(exc)
        with self.lock:
            self.requests.append(Received(path, headers, body, verified, error))
            queue = self.replies[path]
            return queue.popleft() if queue else Reply()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        reply = self.server.receiver.handle(self.path, dict(self.headers.items()), body)  # type: ignore[attr-defined]
        time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def secret() -> str:
    return generate_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    rec = Receiver(secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.receiver = rec  # type: ignore[attr-defined]
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def canary() -> Iterator[tuple[int, list[int]]]:
    """A TCP listener on 127.0.0.1 that counts connections: the SSRF guard must keep it 0."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    hits: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            hits.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1], hits
    stop.set()
    thread.join()
    sock.close()


def send(url: str, secrets: list[str], webhook_id: str = "msg_1", **options) -> webhooks.Outcome:
    options.setdefault("allow_private", True)  # the receiver lives on loopback
    return deliver_sync(url, BODY, webhook_id=webhook_id, secrets=secrets, **options)


def test_delivery_is_signed_sent_byte_identical_and_verified_by_the_reference(receiver, secret):
    before = int(time.time())
    outcome = send(receiver.url + "/hook", [secret], webhook_id="msg_abc")
    assert outcome.status == "sent"
    assert (outcome.code, outcome.reference) == (200, "msg_abc")
    (got,) = receiver.requests
    assert got.verified, got.error
    assert got.body == BODY
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["webhook-id"] == "msg_abc"
    assert headers["content-type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - before) <= 300
    webhooks.verify(secret, headers, got.body)  # our own receivers' verifier agrees


def test_rotation_signs_with_old_and_new_secret_and_either_verifies(receiver, secret):
    new = generate_secret()
    outcome = send(receiver.url + "/hook", [secret, new])
    assert outcome.status == "sent"
    (got,) = receiver.requests
    assert got.verified  # the receiver still holds the old secret
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(got.body, got.headers)  # a receiver that already switched
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(got.body, got.headers)  # anyone else: no


def test_a_body_changed_after_signing_does_not_verify(secret):
    signed = webhooks.headers([secret], "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"12.5", b"99.5"), signed)
    with pytest.raises(InvalidInput, match="webhook-signature"):
        webhooks.verify(secret, signed, BODY.replace(b"12.5", b"99.5"))


def test_outage_503_is_retried_then_sent_with_the_same_webhook_id(receiver, secret):
    url = receiver.script("/hook", Reply(503, body=b"down for maintenance"))
    first = send(url, [secret], webhook_id="msg_outage")
    assert (first.status, first.code, first.reference) == ("retry", 503, "msg_outage")
    assert "down for maintenance" in first.detail
    second = send(url, [secret], webhook_id="msg_outage")
    assert (second.status, second.code) == ("sent", 200)
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["msg_outage"] * 2
    assert all(r.verified for r in receiver.requests)


def test_410_gone_fails_and_asks_to_disable_the_endpoint(receiver, secret):
    outcome = send(receiver.script("/hook", Reply(410)), [secret])
    assert (outcome.status, outcome.code, outcome.disable) == ("failed", 410, True)


def test_429_retry_after_in_seconds_is_carried_in_the_outcome(receiver, secret):
    url = receiver.script("/hook", Reply(429, {"Retry-After": "120"}))
    outcome = send(url, [secret])
    assert (outcome.status, outcome.code, outcome.retry_after) == ("retry", 429, 120.0)
    assert not outcome.disable


def test_429_retry_after_as_http_date_becomes_seconds_from_now(receiver, secret):
    url = receiver.script(
        "/hook", Reply(429, {"Retry-After": formatdate(time.time() + 90, usegmt=True)})
    )
    outcome = send(url, [secret])
    assert outcome.status == "retry"
    assert outcome.retry_after is not None and 85 <= outcome.retry_after <= 91


def test_408_is_retried_without_a_wait_when_none_is_given(receiver, secret):
    outcome = send(receiver.script("/hook", Reply(408)), [secret])
    assert (outcome.status, outcome.code, outcome.retry_after) == ("retry", 408, None)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_fail_without_retry_and_show_the_receivers_message(receiver, secret, status):
    url = receiver.script("/hook", Reply(status, body=b'{"error": "unknown event type"}'))
    outcome = send(url, [secret])
    assert (outcome.status, outcome.code, outcome.disable) == ("failed", status, False)
    assert "unknown event type" in outcome.detail


def test_redirects_are_not_followed(receiver, secret):
    url = receiver.script("/hook", Reply(302, {"Location": receiver.url + "/elsewhere"}))
    outcome = send(url, [secret])
    assert (outcome.status, outcome.code) == ("failed", 302)
    assert "not followed" in outcome.detail and "/elsewhere" in outcome.detail
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_a_receiver_slower_than_the_timeout_is_a_retry(receiver, secret):
    url = receiver.script("/hook", Reply(200, delay=3.0))
    started = time.monotonic()
    outcome = send(url, [secret], timeout=0.5)
    assert outcome.status == "retry" and "timeout" in outcome.detail
    assert time.monotonic() - started < 2.0


def test_a_closed_port_is_a_network_error_and_a_retry(secret):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = send(f"http://127.0.0.1:{port}/hook", [secret])
    assert outcome.status == "retry" and "network error" in outcome.detail


def test_loopback_receiver_is_refused_without_the_private_opt_in(receiver, secret):
    outcome = send(receiver.url + "/hook", [secret], allow_private=False)
    assert outcome.status == "failed"
    assert "127.0.0.1" in outcome.detail and "private" in outcome.detail
    assert receiver.requests == []


SSRF_HOSTS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0.0.0.0",
    "[::1]",
    "[::]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[0:0:0:0:0:ffff:169.254.169.254]",
    "[::169.254.169.254]",
    "[2002:a9fe:a9fe::]",
    "[64:ff9b::a9fe:a9fe]",
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
    "169.254.169.254",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.0.1",
    "100.64.0.1",
    "[fd00::1]",
    "[fe80::1]",
    "[fe81::1]",
    "localhost",
    "foo.localhost",
]


@pytest.mark.parametrize("host", SSRF_HOSTS)
def test_private_and_wrapped_addresses_are_refused_before_connecting(canary, secret, host):
    port, hits = canary
    outcome = send(f"http://{host}:{port}/hook", [secret], allow_private=False, timeout=2)
    assert outcome.status == "failed" and outcome.detail.startswith("refused:")
    assert hits == []


def test_an_unparseable_octal_host_is_invalid_input(secret):
    with pytest.raises(InvalidInput, match="url"):
        send("http://0177.0.0.1/hook", [secret], allow_private=False)


def test_a_name_resolving_to_loopback_or_rebinding_is_refused(canary, secret):
    port, hits = canary

    async def resolver(host: str, _port: int) -> list[str]:
        return {"evil.test": ["127.0.0.1"], "rebind.test": ["93.184.216.34", "127.0.0.1"]}[host]

    for host in ("evil.test", "rebind.test"):
        outcome = send(f"http://{host}:{port}/x", [secret], allow_private=False, resolver=resolver)
        assert outcome.status == "failed" and "127.0.0.1" in outcome.detail
    assert hits == []


def test_the_connection_goes_to_the_resolved_address_with_the_original_host(receiver, secret):
    port = receiver.url.rsplit(":", 1)[1]
    resolved: list[str] = []

    async def resolver(host: str, _port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    outcome = send(f"http://hooks.example.test:{port}/hook", [secret], resolver=resolver)
    assert outcome.status == "sent"
    assert resolved == ["hooks.example.test"]
    (got,) = receiver.requests
    hosts = [v for k, v in got.headers.items() if k.lower() == "host"]
    assert hosts == [f"hooks.example.test:{port}"] and got.verified


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "example.com"])
def test_only_http_and_https_urls_are_accepted(secret, url):
    with pytest.raises(InvalidInput, match="url"):
        send(url, [secret])


def test_bad_secrets_and_ids_are_invalid_input(receiver, secret):
    with pytest.raises(InvalidInput, match="secrets"):
        send(receiver.url, [])
    with pytest.raises(InvalidInput, match="webhook_id"):
        send(receiver.url, [secret], webhook_id="has space")
    assert receiver.requests == []


def test_async_deliver_uses_the_callers_client(receiver, secret):
    async def run() -> webhooks.Outcome:
        async with httpx.AsyncClient() as client:
            return await deliver(
                receiver.url + "/hook",
                BODY,
                webhook_id="msg_async",
                secrets=[secret],
                client=client,
                allow_private=True,
            )

    outcome = asyncio.run(run())
    assert (outcome.status, outcome.reference) == ("sent", "msg_async")
    assert receiver.requests[0].verified


def test_our_verifier_rejects_stale_and_future_timestamps(secret):
    now = int(time.time())
    stale = webhooks.headers([secret], "msg_1", now - 301, BODY)
    with pytest.raises(InvalidInput, match="webhook-timestamp"):
        webhooks.verify(secret, stale, BODY, now=now)
    future = webhooks.headers([secret], "msg_1", now + 301, BODY)
    with pytest.raises(InvalidInput, match="webhook-timestamp"):
        webhooks.verify(secret, future, BODY, now=now)
    webhooks.verify(secret, webhooks.headers([secret], "msg_1", now - 299, BODY), BODY, now=now)
    with pytest.raises(InvalidInput, match="webhook-id"):
        webhooks.verify(secret, {"webhook-timestamp": str(now)}, BODY, now=now)


def test_generated_secrets_are_whsec_and_at_least_24_random_bytes():
    import base64

    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) >= 24
