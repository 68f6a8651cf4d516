"""The `keepers` command line, as a user runs it, on a DuckDB file (and PostgreSQL where it
differs): status, keys, imports (idempotent, bad rows by line), and a locked database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from keepers.cli import app
from tests.helpers import serving

runner = CliRunner()
KEEPERS = [sys.executable, "-m", "keepers.cli"]


def run(*args: str):
    return runner.invoke(app, list(args))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_status_json_has_the_documented_counts(database_url):
    assert run("keys", "create", "--name", "x", "--db", database_url).exit_code == 0
    result = run("status", "--json", "--db", database_url)
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert {"customers", "events", "orders"} <= status.keys()
    assert status["events"] == 0


def test_keys_create_json_prints_the_write_key(duckdb_url):
    result = run("keys", "create", "--name", "web shop", "--json", "--db", duckdb_url)
    assert result.exit_code == 0
    created = json.loads(result.stdout)
    assert created["write_key"].startswith("wk_") and len(created["write_key"]) > 30
    listed = json.loads(run("keys", "list", "--json", "--db", duckdb_url).stdout)
    assert [k["name"] for k in listed] == ["web shop"]
    assert created["write_key"] not in json.dumps(listed)  # only a prefix is ever shown again


def test_status_of_a_missing_database_is_one_readable_line(tmp_path):
    result = run("status", "--db", str(tmp_path / "nope.duckdb"))
    assert result.exit_code == 2
    assert "no database at" in result.stderr and "Traceback" not in result.output


def test_importing_a_missing_file_is_one_readable_line(duckdb_url, tmp_path):
    result = run("import", "orders", str(tmp_path / "missing.csv"), "--db", duckdb_url)
    assert result.exit_code == 2
    assert "missing.csv" in result.stderr and "Traceback" not in result.output


def test_customers_import_twice_creates_no_duplicates(database_url, tmp_path):
    csv = write(
        tmp_path / "customers.csv",
        "id,email,first_name,plan\nc1,ann@example.com,Ann,pro\nc2,bob@example.com,Bob,free\n",
    )
    first = run("import", "customers", str(csv), "--db", database_url, "--json")
    second = run("import", "customers", str(csv), "--db", database_url, "--json")
    assert first.exit_code == 0 and second.exit_code == 0
    assert json.loads(first.stdout)["stored"] == 2
    assert json.loads(second.stdout) | {"file": None} == {
        "file": None,
        "kind": "customers",
        "rows": 2,
        "stored": 0,
        "duplicates": 2,
        "rejected": [],
    }
    status = json.loads(run("status", "--json", "--db", database_url).stdout)
    assert status["customers"] == 2 and status["events"] == 2


def test_orders_import_with_a_column_mapping_and_line_items(duckdb_url, tmp_path):
    csv = write(
        tmp_path / "orders.csv",
        "Order No;Customer;Date;SKU;Price;Qty\n"
        "A-1;c1;2025-01-05;mug;4.50;2\n"
        "A-2;c2;2025-01-06;tea;3.00;1\n"
        "A-1;c1;2025-01-05;cup;1.00;1\n",
    )
    command = [
        "import",
        "orders",
        str(csv),
        "--db",
        duckdb_url,
        "--json",
        "--map",
        "order_id=Order No",
        "--map",
        "customer_id=Customer",
    ]
    result = run(*command)
    assert result.exit_code == 0, result.output
    status = json.loads(run("status", "--json", "--db", duckdb_url).stdout)
    assert (status["orders"], status["order_items"], status["revenue"]) == (2, 3, 13.0)
    again = run(*command)
    assert json.loads(again.stdout)["stored"] == 0
    assert json.loads(run("status", "--json", "--db", duckdb_url).stdout)["orders"] == 2


def test_bad_rows_are_reported_by_line_and_good_rows_kept(duckdb_url, tmp_path):
    csv = write(
        tmp_path / "orders.csv",
        "order_id,customer_id,ordered_at,price\n"
        "1,c1,2025-01-05,10\n"
        "2,c1,not a date,10\n"
        "3,c2,2025-01-07,ten\n"
        "4,c2,2025-01-08,5\n",
    )
    result = run("import", "orders", str(csv), "--db", duckdb_url)
    assert result.exit_code == 3
    assert "line 3:" in result.stderr and "ordered_at" in result.stderr
    assert "line 4:" in result.stderr and "price" in result.stderr
    assert json.loads(run("status", "--json", "--db", duckdb_url).stdout)["orders"] == 2


def test_events_jsonl_import_rejects_spec_violations_by_line(duckdb_url, tmp_path):
    jsonl = write(
        tmp_path / "events.jsonl",
        "\n".join(
            [
                json.dumps(
                    {
                        "type": "track",
                        "userId": "u1",
                        "event": "Signed Up",
                        "timestamp": "2024-06-01T10:00:00Z",
                    }
                ),
                "{broken json",
                json.dumps({"type": "track", "event": "No ids"}),
                json.dumps(
                    {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}}
                ),
            ]
        )
        + "\n",
    )
    result = run("import", "events", str(jsonl), "--db", duckdb_url, "--json")
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    assert report["stored"] == 2
    assert [r["line"] for r in report["rejected"]] == [2, 3]
    assert "userId" in report["rejected"][1]["reason"]
    again = json.loads(run("import", "events", str(jsonl), "--db", duckdb_url, "--json").stdout)
    assert again["stored"] == 0 and again["duplicates"] == 2


@pytest.fixture
def served_duckdb(tmp_path):
    """A real `keepers serve` process holding a DuckDB file."""
    db = str(tmp_path / "served.duckdb")
    with serving(db) as url:
        yield db, url


def test_commands_on_a_database_held_by_the_server_go_through_it(served_duckdb, tmp_path):
    db, url = served_duckdb
    created = subprocess.run(
        [*KEEPERS, "keys", "create", "--name", "s", "--json", "--db", db],
        capture_output=True,
        text=True,
        check=True,
    )
    key = json.loads(created.stdout)["write_key"]
    assert (
        httpx.post(
            url + "/v1/track", auth=(key, ""), json={"userId": "u", "event": "E"}
        ).status_code
        == 200
    )
    csv = write(tmp_path / "c.csv", "id,email\nc9,c9@example.com\n")
    imported = subprocess.run(
        [*KEEPERS, "import", "customers", str(csv), "--db", db, "--json"],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    status = subprocess.run(
        [*KEEPERS, "status", "--json", "--db", db], capture_output=True, text=True, check=True
    )
    assert json.loads(status.stdout)["events"] == 2


def test_a_database_locked_by_a_foreign_process_gets_a_clear_message(tmp_path):
    db = str(tmp_path / "locked.duckdb")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; "
            f"c = duckdb.connect({db!r}); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = subprocess.run(
            [*KEEPERS, "keys", "create", "--name", "x", "--db", db], capture_output=True, text=True
        )
    finally:
        holder.kill()
    assert result.returncode == 1
    assert "open in another Keepers process" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serving_on_a_port_in_use_is_one_readable_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*KEEPERS, "serve", "--db", str(tmp_path / "p.duckdb"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr and "leaked" not in result.stderr


def test_a_second_demo_on_a_served_database_says_what_to_do(served_duckdb):
    db, _ = served_duckdb
    result = subprocess.run(
        [*KEEPERS, "demo", "--no-serve", "--customers", "10", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "in use by a running Keepers server" in result.stderr and "--db" in result.stderr


def test_demo_prints_headline_numbers_from_the_reports(tmp_path):
    db = str(tmp_path / "demo.duckdb")
    result = run("demo", "--no-serve", "--customers", "300", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    headline = json.loads(result.stdout)["headline"]
    churn = json.loads(run("report", "churn", "--periods", "1", "--json", "--db", db).stdout)
    (month,) = churn["periods"]
    assert headline["month"] == month["period"]
    assert headline["churn_rate"] == month["churn_rate"]
    health = json.loads(run("report", "health", "--json", "--db", db).stdout)
    assert headline["average_health"] == health["average"]
