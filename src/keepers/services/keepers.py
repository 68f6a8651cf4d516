"""The use cases of Keepers, behind one object that the web app, the CLI and workers share.

`Keepers.open(settings)` opens the store and brings its schema up to date; everything else
is a method that runs one unit of work. Time is a parameter (`clock`) so tests can pin it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keepers.domain.events import MessageRejected, normalize_message
from keepers.engine.compute import ComputeReport
from keepers.errors import Overloaded, Unauthorized
from keepers.ingest.writer import GroupCommitWriter, Job, JobResult, commit_jobs, utcnow
from keepers.services import lifecycle
from keepers.services.journeys import JourneyService
from keepers.services.referrals import ReferralService
from keepers.services.sales import SalesService
from keepers.settings import Settings
from keepers.store import Database, open_database
from keepers.store.events import Rejection
from keepers.store.keys import (
    WriteKey,
    create_write_key,
    hash_key,
    list_write_keys,
    read_write_key_by_hash,
    revoke_write_key,
)
from keepers.store.migrations import migrate
from keepers.store.reads import count_summary, list_rejected_events

KEY_CACHE_SECONDS = 1.0  # a revoked key stops working within this long


@dataclass
class IngestReport:
    """What happened to a list of messages: stored, already there, or rejected (by index)."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


class Keepers:
    """One opened Keepers store and the operations on it."""

    def __init__(self, settings: Settings, db: Database, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self._writer: GroupCommitWriter | None = None
        self._keys: dict[str, tuple[float, str | None]] = {}
        self._keys_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings, clock: Callable[[], datetime] = utcnow) -> Keepers:
        db = open_database(
            settings.database_url, duckdb_checkpoint_mb=settings.duckdb_checkpoint_mb
        )
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        return cls(settings, db, clock)

    @property
    def database_kind(self) -> str:
        return self.db.dialect.name

    # --- lifecycle of the background writer ------------------------------------------------

    def start_writer(self) -> GroupCommitWriter:
        if self._writer is None:
            self._writer = GroupCommitWriter(
                self.db,
                max_group_events=self.settings.commit_max_events,
                max_pending_events=self.settings.ingest_queue_events,
                clock=self.clock,
            )
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.db.close()

    # --- write keys ---------------------------------------------------------------------------

    def create_write_key(self, name: str) -> tuple[WriteKey, str]:
        with self.db.transaction() as tx:
            return create_write_key(tx, name, self.clock())

    def list_write_keys(self) -> list[WriteKey]:
        with self.db.transaction() as tx:
            return list_write_keys(tx)

    def revoke_write_key(self, key_id: str) -> bool:
        with self.db.transaction() as tx:
            revoked = revoke_write_key(tx, key_id, self.clock())
        with self._keys_lock:
            self._keys.clear()
        return revoked

    def authenticate(self, write_key: str | None) -> str:
        """The source id (key id) of a valid write key, else Unauthorized."""
        if not write_key:
            raise Unauthorized(
                "missing write key: send it as the HTTP Basic username or as 'writeKey' in the body"
            )
        digest = hash_key(write_key)
        now = time.monotonic()
        with self._keys_lock:
            cached = self._keys.get(digest)
        if cached is None or now - cached[0] > KEY_CACHE_SECONDS:
            with self.db.transaction() as tx:
                record = read_write_key_by_hash(tx, digest)
            cached = (now, record.key_id if record else None)
            with self._keys_lock:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                self._keys[digest] = cached
        if cached[1] is None:
            raise Unauthorized("invalid write key")
        return cached[1]

    # --- ingest -------------------------------------------------------------------------------

    def submit_job(self, job: Job) -> JobResult:
        """Write one job durably: through the group-commit writer when running, else directly."""
        if self._writer is not None:
            return self._writer.submit(job).result()
        return commit_jobs(self.db, [job], self.clock())[0]

    def ingest_messages(
        self,
        messages: Iterable[Any],
        source_id: str,
        *,
        quarantine: bool = False,
        received_at: datetime | None = None,
    ) -> IngestReport:
        """Validate and store Segment messages (imports, demo, management API)."""
        received_at = received_at or self.clock()
        job = Job(source_id=source_id, events=[])
        report = IngestReport()
        for index, message in enumerate(messages):
            try:
                job.events.append(normalize_message(message, received_at=received_at))
            except MessageRejected as exc:
                report.rejected.append((index, exc.code, exc.message))
                if quarantine:
                    job.rejected.append(
                        Rejection(source_id, received_at, exc.code, exc.message, None)
                    )
        if job.events or job.rejected:
            result = self._submit_with_backpressure(job)
            report.stored, report.duplicates = result.stored, result.duplicates
        return report

    def _submit_with_backpressure(self, job: Job) -> JobResult:
        delay = 0.01
        while True:
            try:
                return self.submit_job(job)
            except Overloaded:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)  # an overloaded submit queued nothing: resend

    # --- lifecycle ----------------------------------------------------------------------------

    def compute(
        self,
        *,
        full: bool = False,
        as_of: datetime | None = None,
        emit_changes: bool = True,
        engine: str = "database",
    ) -> ComputeReport:
        """Bring traits, stages and segments up to date (incrementally unless `full`)."""
        return lifecycle.compute(
            self.db,
            as_of=as_of or self.clock(),
            full=full,
            emit_changes=emit_changes,
            engine=engine,
            spark_master=self.settings.spark_master,
            spark_driver_memory=self.settings.spark_driver_memory,
        )

    @property
    def lifecycle(self) -> lifecycle.LifecycleService:
        spark = (self.settings.spark_master, self.settings.spark_driver_memory)
        return lifecycle.LifecycleService(self.db, self.clock, spark)

    @property
    def journeys(self) -> JourneyService:
        return JourneyService(self.db, self.settings, self.clock, self.ingest_messages)

    @property
    def sales(self) -> SalesService:
        """Deals, MEDDIC, pipelines and lead scores; won accounts and newly qualified leads
        become events through `ingest_messages`."""
        return SalesService(self.db, self.clock, self.ingest_messages)

    @property
    def referrals(self) -> ReferralService:
        """Codes, attribution, the reward ledger, fraud checks and the leaderboard;
        conversions are announced as `Referral Converted` events through `ingest_messages`."""
        return ReferralService(self.db, self.clock, self.ingest_messages)

    # --- reads ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self.db.transaction() as tx:
            summary = count_summary(tx)
        return {**summary, "database": self.database_kind}

    def rejected_events(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.db.transaction() as tx:
            return list_rejected_events(tx, limit)

    def count_events_from(self, source_id: str) -> int:
        with self.db.transaction() as tx:
            return tx.execute("SELECT count(*) FROM events WHERE source_id = ?", [source_id])[0][0]
