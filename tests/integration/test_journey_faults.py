"""Journeys under faults, with real parts only: a worker process killed with SIGKILL in the
middle of delivery and restarted (reliability plan B1), and an SMTP relay answering
`421 4.3.2` for a while (B3) next to a mailbox that answers `550 5.1.1`.

The SMTP server is `keepers.testing.smtp.smtp_sink()` (aiosmtpd on loopback); the worker
is `journey_worker.py` in a subprocess on a DuckDB file. What the sink recorded is the
ground truth for what customers received; the outbox says what Keepers believes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.testing.smtp import SmtpSink, smtp_sink

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
WORKER = Path(__file__).with_name("journey_worker.py")
UNSUB = "<p><a href='{{ unsubscribe_url }}'>unsubscribe</a></p>"
SENDER = "Shop <hello@shop.example>"
TWO_EMAILS = {
    "key": "two_emails",
    "trigger": {"stage_entered": "conversion"},
    "steps": [
        {"id": "hello", "email": {"subject": "Welcome", "html": "<p>Hello</p>" + UNSUB}},
        {"id": "pause", "wait": "1h"},
        {"id": "second", "email": {"subject": "How is it?", "html": "<p>Again</p>" + UNSUB}},
    ],
}
ONE_EMAIL = {
    "key": "one_email",
    "trigger": {"stage_entered": "conversion"},
    "steps": [{"id": "hello", "email": {"subject": "Welcome", "html": "<p>Hi</p>" + UNSUB}}],
}
KILLS = 5
LEASE_S = 0.5  # the workers' outbox lease; restarts are minutes apart on the fake clock
RESTART_EVERY = timedelta(minutes=20)  # the 4th start is past the 1 h wait
OUTAGE = "421 4.3.2 try later"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def address(user: str) -> str:
    return f"{user}@mail.example"


def identify(user: str, at: datetime) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "traits": {"email": address(user)},
    }


def order(user: str, at: datetime) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "properties": {"order_id": f"{user}-1", "revenue": 30.0},
    }


def settings(db: Path, sink: SmtpSink) -> Settings:
    return Settings(
        database_url=str(db),
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        email_from=SENDER,
        public_url="https://shop.example",
        quiet_hours="",
        frequency_cap=0,
    )


def ingest(keepers: Keepers, messages: list[dict[str, Any]]) -> None:
    assert keepers.ingest_messages(messages, source_id="t").stored == len(messages)
    keepers.compute()


def enter_conversion(keepers: Keepers, now: datetime, users: list[str]) -> None:
    """One order each: the compute moves them into conversion, which the stage-triggered
    journeys enroll from (saved before, so the change feed has them)."""
    ingest(keepers, [order(u, now - timedelta(minutes=5)) for u in users])


def outbox(keepers: Keepers) -> list[dict[str, Any]]:
    names = ["email", "step", "state", "attempts", "reference", "created_at", "sent_at"]
    with keepers.db.transaction() as tx:
        found = tx.execute(
            "SELECT c.email, o.step, o.state, o.attempts, o.reference, o.created_at, o.sent_at "
            "FROM outbox o JOIN customers c ON c.customer_id = o.customer_id "
            "ORDER BY o.outbox_id"
        )
    return [dict(zip(names, row, strict=True)) for row in found]


def received(sink: SmtpSink) -> list[tuple[str, str, str]]:
    """(recipient, step, Message-ID) of every accepted message, in arrival order."""
    with sink.lock:
        return [
            (m["To"], m["X-Keepers-Journey"].rsplit("/", 1)[1], m["Message-ID"])
            for m in sink.messages
        ]


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as running:
        yield running


# --- kill -9 mid-delivery -------------------------------------------------------------------


@contextmanager
def worker(db: Path, sink: SmtpSink, now: datetime, log: Path) -> Iterator[Any]:
    """`journey_worker.py` on `db` at the fake time `now`; killed and reaped on the way out
    whatever happens (DuckDB lets one process at a time hold the file)."""
    env = {
        **os.environ,
        "KEEPERS_DATABASE_URL": str(db),
        "KEEPERS_SMTP_HOST": "127.0.0.1",
        "KEEPERS_SMTP_PORT": str(sink.port),
        "KEEPERS_EMAIL_FROM": SENDER,
        "KEEPERS_PUBLIC_URL": "https://shop.example",
        "KEEPERS_QUIET_HOURS": "",
        "KEEPERS_FREQUENCY_CAP": "0",
        "KEEPERS_TEST_NOW": now.isoformat(),
        "KEEPERS_TEST_LEASE_S": str(LEASE_S),
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            env=env,
            cwd=db.parent,  # no keepers.toml or .env from the working tree
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def kill_after(
    process: Any, sink: SmtpSink, step: str, deliveries: int, pause: float, log: Path
) -> None:
    """SIGKILL `process` once the sink has accepted `deliveries` more messages of `step`,
    `pause` seconds later (0 lands right after an acceptance, before it can be recorded)."""
    seen, count = len(sink.messages), 0
    deadline = time.monotonic() + 60
    while count < deliveries:
        assert process.poll() is None, f"the worker stopped by itself:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no deliveries for 60 s:\n{log.read_text()}"
        time.sleep(0.002)
        with sink.lock:
            new = sink.messages[seen:]
        seen += len(new)
        count += sum(m["X-Keepers-Journey"].endswith(f"/{step}") for m in new)
    time.sleep(pause)
    assert process.poll() is None, f"the worker stopped by itself:\n{log.read_text()}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_a_worker_killed_mid_delivery_loses_no_step_and_duplicates_at_most_one_per_kill(
    tmp_path: Path, sink: SmtpSink
) -> None:
    db = tmp_path / "keepers.duckdb"
    users = [f"u{i:03d}" for i in range(200)]
    keepers = Keepers.open(settings(db, sink), clock=Clock(T0))
    try:
        ingest(keepers, [identify(u, T0 - timedelta(days=1)) for u in users])
        keepers.journeys.save(TWO_EMAILS)  # before the orders: the change feed enrolls them
        enter_conversion(keepers, T0, users)
    finally:
        keepers.close()

    rng = random.Random(20260302)
    for k in range(KILLS):
        now = T0 + k * RESTART_EVERY
        step = "hello" if now < T0 + timedelta(hours=1) else "second"  # what is being sent
        log = tmp_path / f"worker{k}.log"
        with worker(db, sink, now, log) as process:
            pause = rng.choice([0.0, rng.uniform(0, 0.02)])
            kill_after(process, sink, step, rng.randint(1, 40), pause, log)
    keepers = Keepers.open(settings(db, sink), clock=Clock(T0 + KILLS * RESTART_EVERY))
    try:
        # the last restart is an ordinary run, default delivery settings (5 min lease)
        keepers.journeys.run()
        assert keepers.journeys.run()["delivery"]["claimed"] == 0
        rows = outbox(keepers)
        with keepers.db.transaction() as tx:
            statuses = dict(tx.execute("SELECT status, count(*) FROM enrollments GROUP BY 1"))
    finally:
        keepers.close()
    got = received(sink)
    reference = {(r["email"], r["step"]): r["reference"] for r in rows}

    # 0 lost steps: one outbox row per customer and step, all sent, every journey finished,
    # and every customer's mailbox has both emails
    assert len(rows) == len(reference) == 2 * len(users)
    assert {r["state"] for r in rows} == {"sent"}
    assert statuses == {"completed": len(users)}
    assert {(to, step) for to, step, _ in got} == set(reference)
    # a resent message carries the Message-ID fixed when its row was queued
    assert all(mid == reference[(to, step)] for to, step, mid in got)
    # the worker sends one message at a time, so a kill can catch at most one message
    # accepted by the relay but not yet recorded as sent
    copies = Counter(got)
    duplicates = len(got) - len(copies)
    assert duplicates <= KILLS, f"{duplicates} duplicates after {KILLS} kills"
    attempts = {r["reference"]: r["attempts"] for r in rows}
    assert all(attempts[mid] >= n for (_, _, mid), n in copies.items())
    # step 2 only after step 1: in every mailbox, in the outbox, and the wait was honoured
    first = {}
    for index, (to, step, _) in enumerate(got):
        first.setdefault((to, step), index)
    assert all(first[(address(u), "hello")] < first[(address(u), "second")] for u in users)
    by_key = {(r["email"], r["step"]): r for r in rows}
    for u in users:
        hello, second = by_key[(address(u), "hello")], by_key[(address(u), "second")]
        assert hello["sent_at"] <= second["sent_at"]
        assert second["created_at"] >= hello["created_at"] + timedelta(hours=1)


# --- SMTP 421 outage and a 550 --------------------------------------------------------------


def test_a_421_outage_delivers_each_message_once_after_it_and_a_550_is_final(
    tmp_path: Path, sink: SmtpSink
) -> None:
    clock = Clock(T0)
    early = [f"a{i}" for i in range(12)]  # enter during the outage
    late = [f"b{i}" for i in range(6)]  # enter after it
    sink.refuse[address("a0")] = "550 5.1.1 <a0@mail.example>: user unknown"
    keepers = Keepers.open(settings(tmp_path / "keepers.duckdb", sink), clock=clock)
    try:
        ingest(keepers, [identify(u, T0 - timedelta(days=1)) for u in early + late])
        keepers.journeys.save(ONE_EMAIL)
        enter_conversion(keepers, clock.now, early)

        sink.outage = OUTAGE
        first = keepers.journeys.run()["delivery"]
        assert (first["retried"], first["failed"], first["sent"]) == (len(early) - 1, 1, 0)
        keepers.journeys.run()  # before the backoff ends: nothing is tried again
        assert sink.attempts == len(early) - 1
        clock.now += timedelta(seconds=31)  # past the first backoff (30 s)
        second = keepers.journeys.run()["delivery"]
        assert (second["retried"], second["claimed"]) == (len(early) - 1, len(early) - 1)
        assert not sink.messages

        sink.outage = None
        clock.now += timedelta(seconds=61)  # past the second backoff (60 s)
        enter_conversion(keepers, clock.now, late)
        third = keepers.journeys.run()
        assert third["advance"]["entered"] == len(late)
        assert third["delivery"]["sent"] == len(early) - 1 + len(late)
        for _ in range(3):  # later rounds, far past any backoff: nothing more goes out
            clock.now += timedelta(hours=6)
            assert keepers.journeys.run()["delivery"]["claimed"] == 0
        rows = {r["email"]: r for r in outbox(keepers)}
        with keepers.db.transaction() as tx:
            suppressed = tx.execute("SELECT count(*) FROM suppressions")[0][0]
    finally:
        keepers.close()

    got = received(sink)
    # every address but the bad one got its message exactly once, with the queued Message-ID
    assert sorted(to for to, _, _ in got) == sorted(address(u) for u in early[1:] + late)
    assert all(mid == rows[to]["reference"] for to, _, mid in got)
    assert len({mid for _, _, mid in got}) == len(got)
    # two 421s then a 250 for those caught by the outage; one attempt for the others
    assert {u: rows[address(u)]["attempts"] for u in early[1:]} == dict.fromkeys(early[1:], 3)
    assert {u: rows[address(u)]["attempts"] for u in late} == dict.fromkeys(late, 1)
    assert sink.attempts == 3 * (len(early) - 1) + len(late)
    # the 550 was final at once: one attempt, failed, suppressed, never tried again
    bad = rows[address("a0")]
    assert (bad["state"], bad["attempts"], suppressed) == ("failed", 1, 1)
    assert {r["state"] for e, r in rows.items() if e != address("a0")} == {"sent"}
