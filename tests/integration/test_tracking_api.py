"""The Segment-compatible tracking API over real HTTP, on DuckDB and PostgreSQL."""

from __future__ import annotations

import base64
import gzip
import threading
import uuid

import httpx
import orjson
import psycopg
import pytest

from keepers.store.events import IDENTITY_LOCK
from tests.conftest import start_live_server
from tests.helpers import rows, scalar

SINGLE_PATHS = {
    "/v1/identify": "identify",
    "/v1/track": "track",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/alias": "alias",
    "/v1/i": "identify",
    "/v1/t": "track",
    "/v1/p": "page",
    "/v1/s": "screen",
    "/v1/g": "group",
    "/v1/a": "alias",
}


def basic(key: str, colon: bool = True) -> dict[str, str]:
    raw = f"{key}:" if colon else key
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


def message(**extra) -> dict:
    return {
        "userId": "u1",
        "event": "Signed Up",
        "groupId": "acct-1",
        "previousId": "old-1",
        "messageId": str(uuid.uuid4()),
        **extra,
    }


@pytest.mark.parametrize(("path", "kind"), sorted(SINGLE_PATHS.items()))
def test_every_segment_path_stores_its_message_type(live_server, path, kind):
    msg = message()
    answer = httpx.post(live_server.url + path, json=msg, headers=basic(live_server.write_key))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True}
    stored = rows(
        live_server.keepers, "SELECT type FROM events WHERE message_id = ?", [msg["messageId"]]
    )
    assert stored == [(kind,)]


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b"])
def test_batch_paths_store_every_item(live_server, path):
    batch = [message(type="track"), message(type="identify"), message(type="page")]
    answer = httpx.post(
        live_server.url + path, json={"batch": batch}, headers=basic(live_server.write_key)
    )
    assert answer.status_code == 200
    assert scalar(live_server.keepers, "SELECT count(*) FROM events") == 3


def test_write_key_in_the_body_with_text_plain_as_analytics_js_sends_it(live_server):
    body = orjson.dumps({**message(), "writeKey": live_server.write_key})
    answer = httpx.post(
        live_server.url + "/v1/t", content=body, headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 200


def test_basic_auth_without_the_trailing_colon_is_accepted(live_server):
    answer = httpx.post(
        live_server.url + "/v1/track",
        json=message(),
        headers=basic(live_server.write_key, colon=False),
    )
    assert answer.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic d3JvbmctOg=="},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer x"},
    ],
)
def test_missing_or_wrong_write_key_is_401_with_a_reason(live_server, headers):
    answer = httpx.post(live_server.url + "/v1/track", json=message(), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["code"] == "unauthorized" and "write key" in answer.json()["message"]
    assert scalar(live_server.keepers, "SELECT count(*) FROM events") == 0


def test_a_revoked_key_stops_working(live_server):
    keepers = live_server.keepers
    record, key = keepers.create_write_key("temporary")
    assert (
        httpx.post(live_server.url + "/v1/t", json=message(), headers=basic(key)).status_code == 200
    )
    keepers.revoke_write_key(record.key_id)
    assert (
        httpx.post(live_server.url + "/v1/t", json=message(), headers=basic(key)).status_code == 401
    )


def test_gzip_bodies_are_accepted(live_server):
    body = gzip.compress(orjson.dumps({"batch": [message(type="track")]}))
    answer = httpx.post(
        live_server.url + "/v1/batch",
        content=body,
        headers={
            **basic(live_server.write_key),
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        },
    )
    assert answer.status_code == 200


def test_cors_preflight_allows_the_headers_browsers_send(live_server):
    answer = httpx.options(
        live_server.url + "/v1/t",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "x-retry-count" in allowed


def test_a_resent_batch_is_acknowledged_and_stored_once(live_server):
    body = {"batch": [message(type="track") for _ in range(5)]}
    for retry in range(3):
        answer = httpx.post(
            live_server.url + "/v1/batch",
            json=body,
            headers={**basic(live_server.write_key), "X-Retry-Count": str(retry)},
        )
        assert answer.status_code == 200
    assert scalar(live_server.keepers, "SELECT count(*) FROM events") == 5


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/batch", b"{not json", 400, "invalid_json"),
        ("/v1/batch", b"", 400, "invalid_json"),
        (
            "/v1/batch",
            orjson.dumps({"batch": [{"type": "track", "event": "E"}] * 2501}),
            400,
            "too_many_events",
        ),
        (
            "/v1/batch",
            orjson.dumps(
                {
                    "batch": [
                        {
                            "type": "track",
                            "userId": "u",
                            "event": "E",
                            "properties": {"x": "y" * 40_000},
                        }
                    ]
                }
            ),
            413,
            "payload_too_large",
        ),
        (
            "/v1/batch",
            b'{"batch": ['
            + b",".join([b'{"type":"page","userId":"u","name":"' + b"x" * 5000 + b'"}'] * 110)
            + b"]}",
            413,
            "payload_too_large",
        ),
        (
            "/v1/track",
            orjson.dumps({"userId": "u", "event": "E", "p": "x" * 40_000}),
            413,
            "payload_too_large",
        ),
        ("/v1/track", orjson.dumps({"event": "E"}), 400, "no_user_anon_id"),
        ("/v1/track", orjson.dumps({"userId": "u"}), 400, "missing_field"),
        ("/v1/track", b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
        (
            "/v1/track",
            b'{"userId": "u", "event": "E", "properties": ' + b'{"a": ' * 300 + b"1" + b"}" * 301,
            400,
            "invalid_field",
        ),
    ],
)
def test_bad_input_gets_400_or_413_with_code_and_message(live_server, path, body, status, code):
    answer = httpx.post(live_server.url + path, content=body, headers=basic(live_server.write_key))
    assert answer.status_code == status
    assert answer.json()["code"] == code and answer.json()["message"]
    assert scalar(live_server.keepers, "SELECT count(*) FROM events") == 0


def test_a_gzip_bomb_is_refused_without_a_server_error(live_server):
    bomb = gzip.compress(b'{"batch": [' + b" " * 30_000_000 + b"]}")
    answer = httpx.post(
        live_server.url + "/v1/batch",
        content=bomb,
        headers={**basic(live_server.write_key), "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 413


def test_invalid_items_in_a_batch_are_listed_and_kept_for_inspection(live_server):
    batch = [message(type="track"), {"type": "track", "event": "no ids"}, message(type="page")]
    answer = httpx.post(
        live_server.url + "/v1/batch", json={"batch": batch}, headers=basic(live_server.write_key)
    )
    assert answer.status_code == 200
    assert answer.json()["rejected"] == [
        {
            "index": 1,
            "code": "no_user_anon_id",
            "message": "batch[1]: either 'userId' or 'anonymousId' is required",
        }
    ]
    assert scalar(live_server.keepers, "SELECT count(*) FROM events") == 2
    assert scalar(live_server.keepers, "SELECT count(*) FROM rejected_events") == 1


def test_analytics_js_settings_point_the_loader_back_at_this_server(live_server):
    answer = httpx.get(f"{live_server.url}/v1/projects/{live_server.write_key}/settings")
    assert answer.status_code == 200
    assert answer.json()["integrations"]["Segment.io"]["apiHost"].endswith("/v1")


def test_health_says_which_store_is_behind_the_server(live_server, database_url):
    answer = httpx.get(live_server.url + "/health").json()
    assert answer["status"] == "ok"
    assert answer["database"] == ("postgres" if database_url.startswith("postgresql") else "duckdb")


def test_management_api_needs_the_admin_token(live_server):
    assert httpx.get(live_server.url + "/api/status").status_code == 401
    answer = httpx.get(
        live_server.url + "/api/status",
        headers={"Authorization": f"Bearer {live_server.admin_token}"},
    )
    assert answer.status_code == 200 and answer.json()["events"] == 0


# --- PostgreSQL-only fault paths: the store going away and overload ------------------------


@pytest.fixture
def pg_live(postgres_server):
    from keepers.settings import Settings
    from keepers.testing.postgres import create_database

    url = create_database(postgres_server, "t_" + uuid.uuid4().hex[:12])
    live, server, thread = start_live_server(Settings(database_url=url, ingest_queue_events=100))
    yield live, url
    server.should_exit = True
    thread.join(timeout=20)
    live.keepers.close()


def test_a_database_refusing_connections_is_503_with_retry_after_and_then_recovers(pg_live):
    live, url = pg_live
    assert (
        httpx.post(live.url + "/v1/t", json=message(), headers=basic(live.write_key)).status_code
        == 200
    )
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        msg = message()
        failed = httpx.post(live.url + "/v1/t", json=msg, headers=basic(live.write_key))
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert failed.status_code == 503 and failed.headers["Retry-After"]
    assert failed.json()["code"] == "store_unavailable"
    retried = httpx.post(live.url + "/v1/t", json=msg, headers=basic(live.write_key))
    assert retried.status_code == 200  # what the client does on 503: retry, and it is stored
    assert (
        scalar(live.keepers, "SELECT count(*) FROM events WHERE message_id = ?", [msg["messageId"]])
        == 1
    )


def test_overload_is_429_with_retry_after_and_nothing_acknowledged_is_lost(pg_live):
    live, url = pg_live
    results: dict[str, int] = {}
    batch = {"batch": [message(type="track") for _ in range(100)]}
    with psycopg.connect(url, autocommit=True) as blocker:
        blocker.execute("SELECT pg_advisory_lock(%s)", [IDENTITY_LOCK])  # writer now waits

        def first() -> None:
            results["first"] = httpx.post(
                live.url + "/v1/batch", json=batch, timeout=30, headers=basic(live.write_key)
            ).status_code

        thread = threading.Thread(target=first)
        thread.start()
        while (
            scalar(
                live.keepers,
                "SELECT count(*) FROM pg_stat_activity WHERE "
                "wait_event_type = 'Lock' AND datname = current_database()",
            )
            == 0
        ):
            pass
        second = httpx.post(
            live.url + "/v1/batch",
            headers=basic(live.write_key),
            json={"batch": [message(type="track")]},
        )
        blocker.execute("SELECT pg_advisory_unlock(%s)", [IDENTITY_LOCK])
    thread.join(timeout=30)
    assert second.status_code == 429 and second.headers["Retry-After"]
    assert results["first"] == 200
    assert scalar(live.keepers, "SELECT count(*) FROM events") == 100


def test_a_batch_the_store_refuses_is_quarantined_not_lost_and_others_still_land(pg_live):
    live, url = pg_live
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.message_id = 'poison' THEN RAISE EXCEPTION 'refused by policy'; END IF; "
            "RETURN NEW; END $$"
        )
        admin.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW "
            "EXECUTE FUNCTION refuse_poison()"
        )
    poisoned = {"batch": [message(type="track", messageId="poison"), message(type="track")]}
    answer = httpx.post(live.url + "/v1/batch", json=poisoned, headers=basic(live.write_key))
    assert answer.status_code == 200 and answer.json()["quarantined"] == 2
    assert (
        scalar(
            live.keepers,
            "SELECT count(*) FROM rejected_events "
            "WHERE code = 'store_error' AND payload LIKE '%poison%'",
        )
        == 1
    )
    good = httpx.post(
        live.url + "/v1/batch",
        json={"batch": [message(type="track")]},
        headers=basic(live.write_key),
    )
    assert good.status_code == 200 and "quarantined" not in good.json()
    assert scalar(live.keepers, "SELECT count(*) FROM events") == 1


def test_an_email_trait_with_a_nul_character_does_not_break_the_store(live_server):
    msg = message(type="identify", traits={"email": "a\u0000b@example.com", "name": "x"})
    answer = httpx.post(
        live_server.url + "/v1/identify", json=msg, headers=basic(live_server.write_key)
    )
    assert answer.status_code == 200 and "quarantined" not in answer.json()
    assert scalar(live_server.keepers, "SELECT count(*) FROM events") == 1
