"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from keepers.engine.compute import ComputeReport
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import load_definitions, segment_sizes, stage_counts
from keepers.testing.postgres import free_port


def rows(keepers: Keepers, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with keepers.db.transaction() as tx:
        return tx.execute(sql, params or [])


def scalar(keepers: Keepers, sql: str, params: list[Any] | None = None) -> Any:
    return rows(keepers, sql, params)[0][0]


def assert_counts_carried(keepers: Keepers, report: ComputeReport) -> None:
    """The stage counts, segment sizes and customer total a run reports (an incremental
    run adds its moves to the previous run's) equal a count of the tables."""
    with keepers.db.transaction() as tx:
        definitions = load_definitions(tx).definitions
        assert report.stages == stage_counts(tx, definitions), f"stage counts, run {report}"
        assert report.segments == segment_sizes(tx, definitions), f"segment sizes, run {report}"
        total = tx.execute("SELECT count(*) FROM customer_state")[0][0]
    assert report.customers == total


def track(user_id: str | None = None, event: str = "Product Viewed", **extra: Any) -> dict:
    message = {
        "type": "track",
        "userId": user_id,
        "event": event,
        "messageId": extra.pop("messageId", str(uuid.uuid4())),
    }
    message.update(extra)
    return message


KEEPERS_CLI = [sys.executable, "-m", "keepers.cli"]


@contextlib.contextmanager
def serving(db: str, **env: str) -> Iterator[str]:
    """A real `keepers serve` process holding `db` (extra KEEPERS_* settings in `env`);
    yields its URL once /health answers, and stops it with Ctrl+C afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [*KEEPERS_CLI, "serve", "--port", str(port)],
        env={**os.environ, "KEEPERS_DATABASE_URL": db, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
