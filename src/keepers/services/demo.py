"""Load the demo business: generate it and write it through the normal ingest path."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress

from keepers.domain.events import MessageRejected, normalize_message
from keepers.errors import InvalidInput, Overloaded
from keepers.ingest.writer import Job, JobResult
from keepers.services.access import AccessService, cli_principal
from keepers.services.keepers import Keepers
from keepers.settings import Settings

DEMO_SOURCE = "demo"
DEMO_LOGIN = "demo@keepers.local"  # an admin with a new password on every `keepers demo`
CHUNK = 5_000


def load_demo(
    settings: Settings, *, customers: int, seed: int, fresh: bool, progress: Progress
) -> tuple[Keepers, dict[str, Any], str | None]:
    """Open the store, load the demo once (idempotent), and return a summary."""
    if fresh:
        _remove_demo_database(settings)
    keepers = Keepers.open(settings)
    try:
        started = time.perf_counter()
        loaded = keepers.count_events_from(DEMO_SOURCE) > 0
        if not loaded:
            _generate_into(keepers, customers, seed, progress)
        keepers.sales.sync_from_events()  # deals and referrals are idempotent: rerun freely
        keepers.referrals.sync(generate_codes=True)
        lifecycle = _compute_lifecycle(keepers, rebuild_history=not loaded)
        summary = keepers.status()
        summary["demo_seconds"] = round(time.perf_counter() - started, 1)
        summary["demo_loaded_earlier"] = loaded
        summary["lifecycle"] = lifecycle
        with keepers.db.transaction() as tx:
            deals, open_deals = tx.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = 'open') FROM deals"
            )[0]
        summary["deals"] = {"deals": deals, "open": open_deals}
        summary["referrals"] = keepers.referrals.metrics()
        summary["headline"] = headline(keepers)
        summary["journeys"] = demo_journeys(keepers)
        access = AccessService(keepers.db, keepers.clock)
        summary["login"] = {
            "email": DEMO_LOGIN,
            "password": access.reset_user(DEMO_LOGIN, "admin", by=cli_principal("demo")),
        }
        names = {key.name for key in keepers.list_write_keys()}
        write_key = None if "demo" in names else keepers.create_write_key("demo")[1]
    except BaseException:
        keepers.close()
        raise
    return keepers, summary, write_key


def _compute_lifecycle(keepers: Keepers, *, rebuild_history: bool) -> dict[str, Any]:
    """Stages with a history: a weekly backfill over the demo's two years when it was just
    generated (funnels and time-in-stage work at once), else one incremental run."""
    service = keepers.lifecycle
    if rebuild_history:
        with keepers.db.transaction() as tx:
            first = tx.execute("SELECT min(timestamp) FROM events")[0][0]
        if first is not None:
            since = first.replace(hour=0, minute=0, second=0, microsecond=0)
            service.compute(backfill_since=since, every="week")
    service.compute()
    return service.stages()


EXAMPLES = Path(__file__).parents[3] / "examples" / "journeys"


def demo_journeys(keepers: Keepers) -> list[dict[str, Any]]:
    """The example journeys (from a source checkout), saved and run once: the demo shows
    enrollments, queued emails (waiting for an SMTP relay) and traces at once."""
    if not EXAMPLES.is_dir():
        return []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        keepers.journeys.save_file(path, actor="demo")
    keepers.journeys.run()
    return keepers.journeys.list()


def headline(keepers: Keepers) -> dict[str, Any]:
    """A handful of numbers from the analytics reports: what `keepers report` goes into."""
    service = keepers.lifecycle
    (month,) = service.report("churn", periods=1)["periods"]
    rfm = {s["segment"]: s["customers"] for s in service.report("rfm")["segments"]}
    health = service.report("health")
    return {
        "month": month["period"],
        "churn_rate": month["churn_rate"],
        "retention_rate": month["retention_rate"],
        "net_revenue_retention": month["net_revenue_retention"],
        "rfm_champions": rfm["champions"],
        "rfm_at_risk": rfm["at_risk"] + rfm["cant_lose"],
        "average_health": health["average"],
    }


def _remove_demo_database(settings: Settings) -> None:
    if settings.is_postgres:
        raise InvalidInput(
            "--fresh only works on a DuckDB file; drop the PostgreSQL "
            "database yourself if you mean it"
        )
    path = Path(settings.database_url)
    if not path.exists():
        return
    keepers = Keepers.open(settings)
    try:
        with keepers.db.transaction() as tx:
            other = tx.execute("SELECT count(*) FROM events WHERE source_id <> ?", [DEMO_SOURCE])[
                0
            ][0]
    finally:
        keepers.close()
    if other:
        raise InvalidInput(
            f"--fresh refused: {path} holds {other:,} events that are not demo "
            "data; use --db to pick another file"
        )
    path.unlink()
    Path(str(path) + ".wal").unlink(missing_ok=True)


def _generate_into(keepers: Keepers, customers: int, seed: int, progress: Progress) -> None:
    from keepers.demo.generator import generate

    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    writer = keepers.start_writer()
    pending: deque[Future[JobResult]] = deque()
    batch: list[Any] = []
    with progress:
        task = progress.add_task("generating the demo business", total=customers)
        for messages in generate(customers=customers, seed=seed, end=end):
            batch.extend(messages)
            progress.advance(task, 1 if _is_person(messages) else 0)
            if len(batch) >= CHUNK:
                _submit(writer, batch, pending)
                batch = []
        if batch:
            _submit(writer, batch, pending)
        while pending:
            pending.popleft().result()
        progress.update(task, completed=customers)


def _is_person(messages: list[Any]) -> bool:
    return not any(m.get("type") == "group" for m in messages[:3])


def _submit(writer: Any, messages: list[Any], pending: deque[Future[JobResult]]) -> None:
    received_at = datetime.now(UTC)
    events = []
    for message in messages:
        try:
            events.append(normalize_message(message, received_at=received_at))
        except MessageRejected as exc:  # the generator is tested to produce valid messages
            raise InvalidInput(f"demo generator produced an invalid message: {exc}") from exc
    job = Job(source_id=DEMO_SOURCE, events=events)
    while True:
        try:
            pending.append(writer.submit(job))
            break
        except Overloaded:  # nothing was queued: wait for the oldest commit, then resend
            pending.popleft().result()
    while pending and pending[0].done():
        pending.popleft().result()
