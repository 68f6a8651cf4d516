"""Journeys end to end against real parts: events in, compute, a stage-triggered journey,
emails received by a real SMTP server (aiosmtpd) with their headers checked, a signed
webhook, waits, branches, goals, consent and bounces — on DuckDB and PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keepers.errors import InvalidInput
from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.testing.postgres import create_database
from keepers.testing.smtp import SmtpSink, smtp_sink

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
UNSUB = "<p>Bye? <a href='{{ unsubscribe_url }}'>unsubscribe</a></p>"
WELCOME = {
    "key": "welcome",
    "name": "Welcome first-time buyers",
    "trigger": {"stage_entered": "conversion"},
    "entry": {"rule": "orders >= 1"},
    "goal": {"event": "Order Completed", "within_days": 30},
    "steps": [
        {
            "id": "hello",
            "email": {
                "subject": "Welcome, {{ traits.first_name or 'friend' }}",
                "html": "<style>p{color:#333}</style><p>Thanks for order {{ orders }}!</p>"
                "<p><a href='https://shop.example/new?x=1&amp;y=2'>New in</a></p>" + UNSUB,
            },
        },
        {"id": "pause", "wait": "2d"},
        {"id": "again", "branch": {"rule": "orders >= 2", "then": "thanks", "else": "nudge"}},
        {
            "id": "nudge",
            "email": {"subject": "Still thinking?", "html": "<p>Come back</p>" + UNSUB},
            "next": "done",
        },
        {"id": "thanks", "email": {"subject": "Thanks again", "html": "<p>x</p>" + UNSUB}},
        {"id": "done", "exit": {}},
    ],
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def identify(user: str, email: str, at: datetime, **traits: Any) -> dict:
    return {
        "type": "identify",
        "userId": user,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "traits": {"email": email, **traits},
    }


def order(user: str, at: datetime, n: int) -> dict:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "properties": {"order_id": f"{user}-{n}", "revenue": 30.0},
    }


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as running:
        yield running


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def shop(request: pytest.FixtureRequest, tmp_path: Any, sink: SmtpSink) -> Iterator[tuple]:
    if request.param == "duckdb":
        url = str(tmp_path / "keepers.duckdb")
    else:
        url = create_database(
            request.getfixturevalue("postgres_server"), f"t_j_{uuid.uuid4().hex[:8]}"
        )
    clock = Clock(T0)
    settings = Settings(
        database_url=url,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        email_from="Shop <hello@shop.example>",
        public_url="https://shop.example",
        quiet_hours="",
        webhook_allow_private=True,
    )
    keepers = Keepers.open(settings, clock=clock)
    users = [f"u{i}" for i in range(6)]
    sent = [
        identify(u, f"{u}@mail.example", T0 - timedelta(days=1), first_name=u.upper())
        for u in users
    ]
    assert keepers.ingest_messages(sent, source_id="t").stored == len(sent)
    keepers.compute()
    yield keepers, clock, sink
    keepers.close()


def buy(keepers: Keepers, clock: Clock, users: list[str], n: int = 0) -> None:
    msgs = [order(u, clock.now - timedelta(minutes=5), n) for u in users]
    assert keepers.ingest_messages(msgs, source_id="t").stored == len(msgs)
    keepers.compute()


def test_a_stage_triggered_journey_sends_real_email_once(shop: tuple) -> None:
    keepers, clock, sink = shop
    saved = keepers.journeys.save(WELCOME)
    assert saved == {"journey": "welcome", "version": 1, "changed": True, "summary": "created"}
    buy(keepers, clock, ["u0", "u1", "u2"])
    result = keepers.journeys.run()
    assert result["advance"]["entered"] == 3
    assert result["delivery"]["sent"] == 3
    mails = {m["To"]: m for m in sink.messages}
    assert set(mails) == {"u0@mail.example", "u1@mail.example", "u2@mail.example"}
    mail = mails["u0@mail.example"]
    assert mail["Subject"] == "Welcome, U0"
    assert mail["From"] == "Shop <hello@shop.example>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"].startswith("<https://shop.example/u/")
    html = mail.get_body(("html",)).get_content()
    assert 'style="color: #333' in html or 'style="color:#333' in html  # CSS inlined
    assert "https://shop.example/u/" in html and "Thanks for order 1!" in html
    assert mail.get_body(("plain",)) is not None
    # links go through the click endpoint, an open pixel is added, unsubscribe stays as is
    clicks = re.findall(r'href="https://shop\.example/c/([^"]+)"', html)
    pixels = re.findall(r'src="https://shop\.example/o/([^"]+)"', html)
    assert len(clicks) == 1 and len(pixels) == 1
    assert keepers.journeys.track(clicks[0], "click") == "https://shop.example/new?x=1&y=2"
    assert keepers.journeys.track(pixels[0], "open") is None
    hello = keepers.journeys.stats("welcome")["steps"]["hello"]
    assert (hello["opened"], hello["clicked"], hello["messages_sent"]) == (1, 1, 3)
    trace = keepers.journeys.trace("welcome", "u0")
    assert [m["reference"] for m in trace["messages"]] == [mail["Message-ID"]]
    # running again sends nothing new: the enrollment waits, the outbox row is sent
    again = keepers.journeys.run()
    assert again["delivery"]["claimed"] == 0 and len(sink.messages) == 3
    # two days later: u1 bought again (thanks), the others get the nudge
    clock.now = T0 + timedelta(days=2, minutes=1)
    buy(keepers, clock, ["u1"], n=1)
    keepers.journeys.run()
    subjects = sorted((m["To"], m["Subject"]) for m in sink.messages[3:])
    assert subjects == [
        ("u0@mail.example", "Still thinking?"),
        ("u2@mail.example", "Still thinking?"),
    ]
    stats = keepers.journeys.stats("welcome")
    assert stats["statuses"] == {"goal": 1, "exited": 2}  # u1 reached the goal and left
    assert stats["goal_reached"] == 1


def test_unsubscribe_while_queued_and_a_hard_bounce(shop: tuple) -> None:
    keepers, clock, sink = shop
    sink.refuse["u4@mail.example"] = "550 5.1.1 <u4@mail.example>: user unknown"
    keepers.journeys.save(WELCOME)
    buy(keepers, clock, ["u3", "u4", "u5"])
    advanced = keepers.journeys.advance()
    assert advanced.queued == 3
    # u3 unsubscribes (one-click, from an earlier mail's link) while the message is queued
    token = _token(keepers, "u3")
    keepers.journeys.unsubscribe(token)
    delivered = keepers.journeys.deliver()
    assert (delivered.sent, delivered.blocked, delivered.failed) == (1, 1, 1)
    assert [m["To"] for m in sink.messages] == ["u5@mail.example"]
    trace = keepers.journeys.trace("welcome", "u3")
    assert "consent withdrawn for list 'marketing'" in trace["answer"]
    with keepers.db.transaction() as tx:
        suppressed = tx.execute("SELECT count(*) FROM suppressions")[0][0]
    assert suppressed == 1
    # a bounced address is not tried again by a later journey message
    clock.now += timedelta(days=2, minutes=1)
    keepers.journeys.run()
    assert [m["Subject"] for m in sink.to("u5@mail.example")][-1] == "Still thinking?"
    assert sink.attempts == 2  # DATA only for u5's two mails: u4 is refused at RCPT once
    assert not sink.to("u4@mail.example")
    nudge = keepers.journeys.trace("welcome", "u4")["messages"][-1]
    assert (nudge["step"], nudge["state"]) == ("nudge", "blocked")
    assert "suppressed" in nudge["last_error"]


def test_smtp_outage_is_retried_with_the_same_message_id(shop: tuple) -> None:
    keepers, clock, sink = shop
    keepers.journeys.save(WELCOME)
    buy(keepers, clock, ["u0"])
    sink.outage = "421 4.3.2 Service not available, try later"
    first = keepers.journeys.run()
    assert first["delivery"]["retried"] == 1 and not sink.messages
    sink.outage = None
    clock.now += timedelta(minutes=1)  # past the first backoff (30 s)
    second = keepers.journeys.run()
    assert second["delivery"]["sent"] == 1
    trace = keepers.journeys.trace("welcome", "u0")
    assert trace["messages"][0]["attempts"] == 2
    assert sink.messages[0]["Message-ID"] == trace["messages"][0]["reference"]


def test_bad_journeys_are_refused_naming_the_field(shop: tuple) -> None:
    keepers, _, _ = shop
    bad_stage = {**WELCOME, "trigger": {"stage_entered": "converted"}}
    with pytest.raises(InvalidInput, match=r"trigger.stage_entered: no stage 'converted'"):
        keepers.journeys.save(bad_stage)
    loop = {**WELCOME, "steps": [{"id": "a", "branch": {"rule": "true", "then": "a", "else": "a"}}]}
    with pytest.raises(InvalidInput, match="loop without a wait"):
        keepers.journeys.save(loop)
    unknown_rule = {**WELCOME, "entry": {"rule": "ordrs >= 1"}}
    with pytest.raises(InvalidInput, match=r"entry.rule: unknown field 'ordrs'"):
        keepers.journeys.save(unknown_rule)
    no_unsub = {**WELCOME, "steps": [{"id": "x", "email": {"subject": "s", "html": "<p>hi</p>"}}]}
    with pytest.raises(InvalidInput, match="visible unsubscribe link"):
        keepers.journeys.save(no_unsub)
    missing_target = {**WELCOME, "steps": [{"id": "x", "wait": "1d", "next": "nowhere"}]}
    with pytest.raises(InvalidInput, match="goes to 'nowhere'"):
        keepers.journeys.save(missing_target)


def _token(keepers: Keepers, user: str) -> str:
    from keepers.journeys.outbox import unsubscribe_url

    config = keepers.journeys.delivery_config()
    with keepers.db.transaction() as tx:
        customer_id = tx.execute("SELECT customer_id FROM customers WHERE user_id = ?", [user])[0][
            0
        ]
    return unsubscribe_url(config, customer_id, "marketing").rsplit("/", 1)[1]


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "examples" / "journeys").glob("*.yaml")), ids=str
)
def test_the_example_journeys_are_valid(path: Path, tmp_path: Any) -> None:
    keepers = Keepers.open(Settings(database_url=str(tmp_path / "k.duckdb")))
    try:
        saved = keepers.journeys.save_file(path)
        assert saved["version"] == 1 and saved["journey"] == path.stem
    finally:
        keepers.close()


def test_quiet_hours_reschedule_and_the_frequency_cap_blocks(tmp_path: Any) -> None:
    two = {
        "key": "two",
        "trigger": {"stage_entered": "conversion"},
        "steps": [
            {"id": "first", "email": {"subject": "One", "html": UNSUB}},
            {"id": "gap", "wait": "1h"},
            {"id": "second", "email": {"subject": "Two", "html": UNSUB}},
        ],
    }
    with smtp_sink() as sink:
        clock = Clock(T0)  # 10:00 UTC = 05:00 in New York (EST): inside 21-8
        settings = Settings(
            database_url=str(tmp_path / "k.duckdb"),
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            quiet_hours="21-8",
            frequency_cap=1,
        )
        keepers = Keepers.open(settings, clock=clock)
        try:
            ny = identify(
                "ny", "ny@mail.example", T0 - timedelta(days=1), timezone="America/New_York"
            )
            keepers.ingest_messages([ny], "t")
            keepers.compute()
            keepers.journeys.save(two)
            buy(keepers, clock, ["ny"])
            first = keepers.journeys.run()["delivery"]
            assert (first["rescheduled"], first["sent"]) == (1, 0) and not sink.messages
            trace = keepers.journeys.trace("two", "ny")
            assert (
                trace["messages"][0]["last_error"] == "quiet hours until 2026-03-02T13:00:00+00:00"
            )
            clock.now = datetime(2026, 3, 2, 13, 0, 30, tzinfo=UTC)  # both emails due now
            later = keepers.journeys.run()["delivery"]  # "one", then "two": over the cap
            assert (later["sent"], later["blocked"]) == (1, 1) and len(sink.messages) == 1
            assert sink.messages[0]["Subject"] == "One"
            second = keepers.journeys.trace("two", "ny")["messages"][-1]
            assert second["state"] == "blocked" and "frequency cap" in second["last_error"]
        finally:
            keepers.close()


def test_bounces_and_unsubscribes_count_against_the_step(shop: tuple) -> None:
    keepers, clock, sink = shop
    sink.refuse["u1@mail.example"] = "550 5.1.1 user unknown"
    keepers.journeys.save(WELCOME)
    buy(keepers, clock, ["u0", "u1"])
    keepers.journeys.run()
    link = sink.to("u0@mail.example")[0]["List-Unsubscribe"].strip("<>")
    token, query = link.rsplit("/", 1)[1].split("?m=")
    from urllib.parse import unquote

    keepers.journeys.unsubscribe(token, message=unquote(query))
    hello = keepers.journeys.stats("welcome")["steps"]["hello"]
    assert (hello["bounced"], hello["unsubscribed"], hello["messages_sent"]) == (1, 1, 1)


def test_the_smtp_pool_keeps_one_session_for_many_messages() -> None:
    import asyncio

    from keepers.delivery.email import EmailTemplate, compose, message_id, render
    from keepers.delivery.smtp import SmtpPool, SmtpSettings

    rendered = render(EmailTemplate("Hi", "<p>hi</p>"), {})
    messages = [
        compose(
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

        async def send_all() -> list[Any]:
            pool = SmtpPool(SmtpSettings(host="127.0.0.1", port=sink.port))
            try:
                return [await pool.send(m) for m in messages]
            finally:
                await pool.close()

        outcomes = asyncio.run(send_all())
    assert [o.status for o in outcomes] == ["sent", "sent", "failed", "sent", "sent"]
    assert outcomes[2].suppress and len(sink.messages) == 4
    assert sink.sessions == 1  # one connection and greeting, a refusal included


def test_a_long_outage_keeps_each_customers_messages_in_step_order(shop: tuple) -> None:
    keepers, clock, sink = shop
    quick = {
        **WELCOME,
        "key": "quick",
        "goal": None,
        "steps": [
            {"id": "one", "email": {"subject": "One", "html": UNSUB}},
            {"id": "gap", "wait": "10m"},
            {"id": "two", "email": {"subject": "Two", "html": UNSUB}},
        ],
    }
    keepers.journeys.save({k: v for k, v in quick.items() if v is not None})
    buy(keepers, clock, ["u0"])
    sink.outage = "421 4.3.2 try later"
    for _ in range(6):  # two hours of outage: "two" is due long before "one" gets through
        clock.now += timedelta(minutes=20)
        keepers.journeys.run()
    sink.outage = None
    for _ in range(3):
        clock.now += timedelta(hours=7)
        keepers.journeys.run()
    assert [m["Subject"] for m in sink.to("u0@mail.example")] == ["One", "Two"]
