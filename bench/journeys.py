"""Journey benchmark: set-based advancing (`JourneyService.advance`) and outbox delivery
(`JourneyService.deliver`) to a real SMTP server, with a plain-SQL reference.

Why it is built this way:

- The store is filled through the real path (`ingest_messages`, `compute`), in the order a
  live system sees it: N customers identify, the journey is saved, then every customer
  places one order, so the next compute moves all N into `conversion` and the change feed
  enrolls them. Setup is untimed.
- The journey is the README's shape: email → wait 1d → branch (`orders >= 2`: exit, else
  a nudge email) → exit. Nobody has two orders, so everyone takes the email branch.
- Three timed sections, each on a fixed fake clock so the figures do not drift:
  1. `advance()` at T0: enroll N customers, queue the first email (N outbox rows), move
     everyone to the wait;
  2. `deliver()` at T0: the N emails go to `keepers.testing.smtp.smtp_sink()` on loopback
     (aiosmtpd). By default the sink runs in a child process, as a relay would, so it does
     not take this process's GIL; `--sink thread` runs it in a thread here instead;
  3. `advance()` at T0 + 1 day + 1 min: wait → branch (rule) → nudge email (N outbox rows)
     → exit, four moves per enrollment.
- The reference, in the same run and the same store: a copy of the enrollments table, then
  one plain `UPDATE … SET step, due_at WHERE …` of those N rows and one `CREATE TABLE … AS
  SELECT` of N outbox-like rows (idempotency key, md5 Message-ID, payload), each in its own
  committed transaction. It is the least an enrollment's step can cost: one row update
  and one side-effect row, with no rules, no log and no checks.
- The email reference, in the same run and against the same sink: N copies of one
  ready-made message (each with its own Message-ID) sent by plain aiosmtplib over as many
  sessions as delivery uses, a group at a time like the outbox — no templates, no MIME
  building, no database. It is the most this machine's loopback SMTP round trips and sink
  allow right now (the sink parses every message it accepts, and shares the 2 cores):
  `emails_per_s` can approach it, not pass it, and comparing the two tells our cost from
  a busy machine.

Figures (all rates are per wall-clock second of the timed section):

- `enrollments_per_s`: (entered + moved) ÷ seconds of section 1 — the TickReport's counts,
  so one enrollment that enters and moves past the email counts twice;
- `enrollments_per_s_day2`: moved ÷ seconds of section 3;
- `emails_per_s`: messages the sink received ÷ seconds of section 2;
- `reference_emails_per_s`: N ÷ seconds of the email reference;
- `reference_update_rows_per_s`: N ÷ (UPDATE seconds + CREATE TABLE AS seconds): an
  enrollment per second if each needed only those two writes. Compare it with
  `enrollments_per_s` ÷ 2 (per enrollment) rather than with the headline.

Usage: python bench/journeys.py [--customers 20000] [--database duckdb|postgres]
[--sink process|thread] [--json].
Exit 0 whenever it measured (targets are reported, never asserted); 1 when it broke.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
BATCH = 5_000  # messages per ingest_messages call during setup
UNSUB = "<p><a href='{{ unsubscribe_url }}'>unsubscribe</a></p>"
JOURNEY = {
    "key": "bench_welcome",
    "name": "Benchmark welcome",
    "trigger": {"stage_entered": "conversion"},
    "steps": [
        {
            "id": "hello",
            "email": {
                "subject": "Welcome, {{ traits.first_name or 'friend' }}",
                "html": "<style>p{color:#333}</style><p>Thanks for order {{ orders }}!</p>" + UNSUB,
            },
        },
        {"id": "pause", "wait": "1d"},
        {"id": "again", "branch": {"rule": "orders >= 2", "then": "done", "else": "nudge"}},
        {
            "id": "nudge",
            "email": {"subject": "Still thinking?", "html": "<p>Come back</p>" + UNSUB},
            "next": "done",
        },
        {"id": "done", "exit": {}},
    ],
}
TARGETS = {"enrollments_per_s": 20_000, "emails_per_s": 300}


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays one JSON object."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark itself could not run → exit 1."""


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8])


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def timed(runs: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    """Wall seconds, this process's CPU seconds and how busy the machine was."""
    row: dict[str, Any] = {"name": name}
    busy0, cpu0, t0 = machine_cpu(), own_cpu_s(), time.perf_counter()
    yield row
    row["s"] = time.perf_counter() - t0
    busy1 = machine_cpu()
    row["cpu_s"] = round(own_cpu_s() - cpu0, 2)
    row["machine_busy_pct"] = round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1)
    runs.append(row)
    log(f"{name}: {row['s']:.3f} s")


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


# --- setup ------------------------------------------------------------------------------------


def messages(n: int) -> Iterator[list[dict[str, Any]]]:
    """Identify calls for customers c0 … c(n-1), in batches."""
    at = (T0 - timedelta(days=1)).isoformat()
    for start in range(0, n, BATCH):
        yield [
            {
                "type": "identify",
                "userId": f"c{i}",
                "messageId": str(uuid.uuid4()),
                "timestamp": at,
                "traits": {"email": f"c{i}@mail.example", "first_name": f"C{i}"},
            }
            for i in range(start, min(n, start + BATCH))
        ]


def orders(n: int) -> Iterator[list[dict[str, Any]]]:
    at = (T0 - timedelta(minutes=5)).isoformat()
    for start in range(0, n, BATCH):
        yield [
            {
                "type": "track",
                "userId": f"c{i}",
                "event": "Order Completed",
                "messageId": str(uuid.uuid4()),
                "timestamp": at,
                "properties": {"order_id": f"o{i}", "revenue": 30.0},
            }
            for i in range(start, min(n, start + BATCH))
        ]


def ingest(keepers: Any, batches: Iterator[list[dict[str, Any]]]) -> int:
    stored = 0
    for batch in batches:
        report = keepers.ingest_messages(batch, source_id="bench")
        if report.rejected:
            raise BenchError(f"ingest rejected messages: {report.rejected[:3]}")
        stored += report.stored
    return stored


def prepare(keepers: Any, n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """N identified customers, the journey saved, then one order each (untimed setup)."""
    with timed(runs, "setup: identify + compute"):
        identified = ingest(keepers, messages(n))
        keepers.compute()
    saved = keepers.journeys.save(JOURNEY)
    with timed(runs, "setup: orders + compute"):
        ordered = ingest(keepers, orders(n))
        report = keepers.compute()
    with keepers.db.transaction() as tx:
        converted = tx.execute(
            "SELECT count(DISTINCT customer_id) FROM changes WHERE kind = 'stage_entered' "
            "AND name = 'conversion'"
        )[0][0]
    if converted != n:
        raise BenchError(f"{converted} of {n} customers entered conversion; expected all")
    return {
        "identified": identified,
        "orders": ordered,
        "journey": saved,
        "compute": getattr(report, "to_dict", lambda: str(report))(),
    }


# --- reference ----------------------------------------------------------------------------------


def reference(keepers: Any, n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Plain SQL on the same store: UPDATE N enrollment rows, CREATE TABLE AS N outbox-like
    rows, each committed. Works on copies so the measured state is left alone."""
    db = keepers.db
    with db.transaction() as tx:
        tx.execute("DROP TABLE IF EXISTS bench_ref_enrollments")
        tx.execute("DROP TABLE IF EXISTS bench_ref_outbox")
        tx.execute("CREATE TABLE bench_ref_enrollments AS SELECT * FROM enrollments")
    due = T0 + timedelta(days=2)
    with timed(runs, "reference: UPDATE enrollments") as update, db.transaction() as tx:
        tx.execute(
            "UPDATE bench_ref_enrollments SET step = 'again', due_at = ?, moves = moves + 1 "
            "WHERE journey = ? AND version = 1 AND step = 'done'",
            [due, JOURNEY["key"]],
        )
    key = "CAST(enrollment_id AS TEXT) || ':hello:' || CAST(moves AS TEXT)"
    with timed(runs, "reference: CREATE TABLE AS outbox rows") as ctas, db.transaction() as tx:
        tx.execute(
            "CREATE TABLE bench_ref_outbox AS SELECT row_number() OVER (ORDER BY enrollment_id) "
            f"AS outbox_id, {key} AS idem_key, enrollment_id, customer_id, journey, version, "
            "'hello' AS step, 'email' AS channel, ? AS payload, 'pending' AS state, 0 AS attempts, "
            f"CAST(? AS TIMESTAMPTZ) AS next_attempt_at, '<' || md5({key}) || '@shop.example>' "
            "AS reference FROM bench_ref_enrollments",
            [json.dumps(JOURNEY["steps"][0]["email"]), T0],
        )
    with db.transaction() as tx:
        updated = tx.execute("SELECT count(*) FROM bench_ref_enrollments WHERE step = 'again'")[0][
            0
        ]
        created = tx.execute("SELECT count(*) FROM bench_ref_outbox")[0][0]
        tx.execute("DROP TABLE bench_ref_enrollments")
        tx.execute("DROP TABLE bench_ref_outbox")
    if updated != n or created != n:
        raise BenchError(f"reference touched {updated} / {created} rows, expected {n}")
    seconds = update["s"] + ctas["s"]
    return {
        "reference_update_rows_per_s": rate(n, seconds),
        "reference_update_s": round(update["s"], 4),
        "reference_ctas_s": round(ctas["s"], 4),
        "reference_update_only_rows_per_s": rate(n, update["s"]),
        "reference_ctas_only_rows_per_s": rate(n, ctas["s"]),
    }


def email_reference(port: int, n: int, sessions: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The transport alone (see the module docstring): N copies of one message built once
    with the stdlib, a new Message-ID each, sent over `sessions` open sessions in groups
    of `sessions`, like `deliver()` with no rendering and no database."""
    from email.message import EmailMessage

    import aiosmtplib

    template = EmailMessage()
    template["From"] = "Shop <hello@shop.example>"
    template["To"] = "ref@mail.example"
    template["Subject"] = "Welcome, friend"
    template["Message-ID"] = "<MESSAGE-ID>"
    template.set_content("Thanks for order 1!\n", cte="quoted-printable")
    template.add_alternative(
        "<p style='color: #333'>Thanks for order 1!</p>", subtype="html", cte="quoted-printable"
    )
    data = template.as_bytes(policy=template.policy.clone(linesep="\r\n"))
    copies = [data.replace(b"<MESSAGE-ID>", f"<ref{i}@shop.example>".encode()) for i in range(n)]

    async def send_all() -> None:
        clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(sessions)]
        for client in clients:
            await client.connect()
        for start in range(0, n, sessions):
            group = copies[start : start + sessions]
            await asyncio.gather(
                *(
                    client.sendmail("hello@shop.example", ["ref@mail.example"], message)
                    for client, message in zip(clients, group, strict=False)
                )
            )
        for client in clients:
            await client.quit()

    with timed(runs, "reference: SMTP transport only") as row:
        asyncio.run(send_all())
    seconds = row["s"]
    row["s"] = round(seconds, 4)
    return {"reference_emails_per_s": rate(n, seconds), "reference_emails_s": round(seconds, 3)}


# --- the run ------------------------------------------------------------------------------------


def store(kind: str, workdir: Path) -> AbstractContextManager[str]:
    """A DuckDB file in `workdir`, or one database on a fresh, durable PostgreSQL server."""
    if kind == "duckdb":
        return nullcontext(str(workdir / "bench.duckdb"))

    @contextmanager
    def postgres() -> Iterator[str]:
        from keepers.testing.postgres import create_database, throwaway_postgres

        with throwaway_postgres(durable=True) as server:
            yield create_database(server, "bench_journeys")

    return postgres()


def _sink_child(conn: Any) -> None:
    """In the child: run the sink, answer each request with the Message-IDs received."""
    from keepers.testing.smtp import smtp_sink

    with smtp_sink() as sink:
        conn.send(sink.port)
        while conn.recv() != "stop":
            with sink.lock:
                conn.send([m["Message-ID"] for m in sink.messages])


@contextmanager
def sink_running(where: str) -> Iterator[tuple[int, Callable[[], list[str]]]]:
    """`smtp_sink()` in a child process (like a real relay, it does not share this
    process's GIL) or in a thread here; yields its port and a reader of the Message-IDs it
    accepted, in order."""
    if where == "thread":
        from keepers.testing.smtp import smtp_sink

        with smtp_sink() as sink:
            yield sink.port, lambda: [m["Message-ID"] for m in sink.messages]
        return
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_sink_child, args=(theirs,), daemon=True)
    child.start()
    try:
        if not ours.poll(60):
            raise BenchError("the SMTP sink process did not start")

        def read() -> list[str]:
            ours.send("ids")
            return ours.recv()

        yield ours.recv(), read
        ours.send("stop")
        child.join(timeout=10)
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def measure(
    keepers: Any, clock: Clock, accepted: Callable[[], list[str]], n: int
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    setup = prepare(keepers, n, runs)
    service = keepers.journeys
    with timed(runs, "advance: enroll + first pass") as enroll:
        first = service.advance(T0)
    with timed(runs, "deliver: first email") as deliver:
        delivered = service.deliver(T0)
    ids = accepted()
    received = len(ids)
    clock.now = T0 + timedelta(days=1, minutes=1)
    with timed(runs, "advance: day 2 (wait, branch, email, exit)") as day2:
        second = service.advance(clock.now)
    checks = {
        "entered": first.entered,
        "queued_first": first.queued,
        "queued_day2": second.queued,
        "received": received,
        "distinct_message_ids": len(set(ids)),
    }
    if first.entered != n or received != n or second.queued != n:
        raise BenchError(f"the journey did not run as expected: {checks}")
    ref = reference(keepers, n, runs)
    enroll_s, deliver_s, day2_s = enroll["s"], deliver["s"], day2["s"]
    return {
        "enrollments_per_s": rate(first.entered + first.moved, enroll_s),
        "enrollments_per_s_day2": rate(second.moved, day2_s),
        "emails_per_s": rate(received, deliver_s),
        **ref,
        "enrolled_customers_per_s": rate(first.entered, enroll_s),
        "advance_first_s": round(enroll_s, 3),
        "advance_day2_s": round(day2_s, 3),
        "deliver_s": round(deliver_s, 3),
        "first_pass": first.to_dict(),
        "day2_pass": second.to_dict(),
        "delivery": delivered.to_dict(),
        "checks": checks,
        "setup": setup,
        "runs": [{**r, "s": round(r["s"], 4)} for r in runs],
    }


def source_digest() -> str:
    """Ties a figure to the code measured (the tree is shared and changes under us)."""
    digest = hashlib.sha256()
    for name in ("journeys/engine.py", "journeys/outbox.py", "services/journeys.py"):
        digest.update((ROOT / "src" / "keepers" / name).read_bytes())
    return digest.hexdigest()[:12]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    from keepers.services.keepers import Keepers
    from keepers.settings import Settings

    with (
        tempfile.TemporaryDirectory(prefix="keepers-bench-") as tmp,
        sink_running(args.sink) as (port, accepted),
        store(args.database, Path(tmp)) as url,
    ):
        clock = Clock(T0)
        settings = Settings(
            database_url=url,
            smtp_host="127.0.0.1",
            smtp_port=port,
            email_from="Shop <hello@shop.example>",
            public_url="https://shop.example",
            quiet_hours="",
            frequency_cap=0,
        )
        keepers = Keepers.open(settings, clock=clock)
        try:
            figures = measure(keepers, clock, accepted, args.customers)
            sessions = keepers.journeys.delivery_config().concurrency
        finally:
            keepers.close()
        transport = email_reference(port, args.customers, sessions, figures["runs"])
        received = len(accepted()) - args.customers
        if received != args.customers:
            raise BenchError(f"the email reference got {received} of {args.customers} through")
    return {
        "enrollments_per_s": figures.pop("enrollments_per_s"),
        "emails_per_s": figures.pop("emails_per_s"),
        **transport,
        "database": args.database,
        "customers": args.customers,
        "sink": args.sink,
        "targets": TARGETS,
        **figures,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "environment": {
            "python": platform.python_version(),
            "duckdb": duckdb.__version__,
            "cpus": os.cpu_count(),
            "source_sha256": source_digest(),
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--database", choices=("duckdb", "postgres"), default="duckdb")
    parser.add_argument(
        "--sink",
        choices=("process", "thread"),
        default="process",
        help="run the SMTP sink in a child process (default) or in a thread of this one",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.customers < 1:
        log("--customers must be at least 1")
        return 1
    try:
        result = run(args)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        print(
            f"{result['database']}, {result['customers']:,} customers: "
            f"{result['enrollments_per_s']:,} enrollments/s (target "
            f"{TARGETS['enrollments_per_s']:,}), {result['emails_per_s']:,} emails/s (target "
            f"{TARGETS['emails_per_s']}; transport alone {result['reference_emails_per_s']:,}), "
            f"reference {result['reference_update_rows_per_s']:,} rows/s"
        )
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
