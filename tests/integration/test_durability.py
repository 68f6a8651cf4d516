"""A 2xx means durable: kill -9 the server in the middle of ingest, restart it, and every
acknowledged event is there exactly once (reliability plan A1, on a real DuckDB file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import duckdb
import httpx

from keepers.testing.postgres import free_port

KEEPERS = [sys.executable, "-m", "keepers.cli"]


def start_server(db: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [*KEEPERS, "serve", "--db", db, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def sender(url: str, key: str, acked: list[str], sent: list[str], stop: threading.Event) -> None:
    with httpx.Client(auth=(key, ""), timeout=10) as client:
        while not stop.is_set():
            ids = [str(uuid.uuid4()) for _ in range(50)]
            sent.extend(ids)
            batch = [
                {
                    "type": "track",
                    "userId": f"u{n % 17}",
                    "event": "Product Viewed",
                    "messageId": mid,
                    "properties": {"n": n},
                }
                for n, mid in enumerate(ids)
            ]
            try:
                answer = client.post(url + "/v1/batch", json={"batch": batch})
            except httpx.HTTPError:
                continue  # the server died mid-request: outcome unknown, not acknowledged
            if answer.status_code == 200:
                acked.extend(ids)


def test_events_acknowledged_before_a_kill_9_survive_the_restart(tmp_path):
    db = str(tmp_path / "crash.duckdb")
    created = subprocess.run(
        [*KEEPERS, "keys", "create", "--name", "c", "--json", "--db", db],
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.split('"write_key": "')[1].split('"')[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    sent: list[str] = []
    for _round in range(3):
        server = start_server(db, port)
        stop = threading.Event()
        threads = [
            threading.Thread(target=sender, args=(url, key, acked, sent, stop)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        before = len(acked)  # kill mid-load: once this round has acknowledgements
        deadline = time.monotonic() + 20  # (a busy machine answers the first ones late)
        while len(acked) < before + 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(server.pid, signal.SIGKILL)  # no shutdown, no checkpoint
        server.wait()
        stop.set()
        for thread in threads:
            thread.join()
    assert len(acked) > 1000  # the server really was under load when it died
    with duckdb.connect(db) as con:  # opening replays the write-ahead log
        stored = [row[0] for row in con.execute("SELECT message_id FROM events").fetchall()]
    assert set(acked) - set(stored) == set()  # nothing acknowledged is lost
    assert len(stored) == len(set(stored))  # and nothing is stored twice
    assert set(stored) <= set(sent)  # nothing appears that was not sent
