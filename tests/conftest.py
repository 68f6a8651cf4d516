"""Shared fixtures: real stores (DuckDB file, a throwaway PostgreSQL server started here),
and a live Keepers server on a free loopback port."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.testing.postgres import create_database, free_port, throwaway_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL server for the whole run (or KEEPERS_TEST_POSTGRES_URL if given)."""
    given = os.environ.get("KEEPERS_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["duckdb", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty store of each kind."""
    if request.param == "duckdb":
        return str(tmp_path / "keepers.duckdb")
    server = request.getfixturevalue("postgres_server")
    return create_database(server, "t_" + uuid.uuid4().hex[:12])


@pytest.fixture
def duckdb_url(tmp_path) -> str:
    return str(tmp_path / "keepers.duckdb")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


@pytest.fixture
def keepers(settings: Settings) -> Iterator[Keepers]:
    opened = Keepers.open(settings)
    yield opened
    opened.close()


@dataclass
class LiveServer:
    url: str
    write_key: str
    keepers: Keepers
    admin_token: str


def start_live_server(settings: Settings) -> tuple[LiveServer, uvicorn.Server, threading.Thread]:
    from keepers.web.app import create_app

    keepers = Keepers.open(settings)
    _, write_key = keepers.create_write_key("tests")
    app = create_app(settings, keepers)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    live = LiveServer(f"http://127.0.0.1:{port}", write_key, keepers, app.state.admin_token)
    return live, server, thread


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """`keepers serve` in a thread on a free port, with a write key."""
    live, server, thread = start_live_server(settings)
    yield live
    server.should_exit = True
    thread.join(timeout=20)
    live.keepers.close()
