"""The journey pages and API over HTTP, on a live server: RFC 8058 one-click unsubscribe
(POST, no login, no redirect, either form encoding), a preferences page that a GET never
changes, and the journeys API with its errors."""

from __future__ import annotations

import uuid

import httpx
import pytest

from keepers.journeys.outbox import unsubscribe_url

WELCOME = {
    "key": "welcome",
    "trigger": {"stage_entered": "conversion"},
    "steps": [
        {
            "id": "hello",
            "email": {"subject": "Hi", "html": "<a href='{{ unsubscribe_url }}'>unsubscribe</a>"},
        }
    ],
}


@pytest.fixture
def customer(live_server) -> tuple[int, str]:
    keepers = live_server.keepers
    message = {
        "type": "identify",
        "userId": "ada",
        "messageId": str(uuid.uuid4()),
        "traits": {"email": "ada@mail.example"},
    }
    assert keepers.ingest_messages([message], "t").stored == 1
    with keepers.db.transaction() as tx:
        customer_id = tx.execute("SELECT customer_id FROM customers WHERE user_id = 'ada'")[0][0]
    url = unsubscribe_url(keepers.journeys.delivery_config(), customer_id, "marketing")
    return customer_id, "/u/" + url.rsplit("/", 1)[1]


def consent_rows(live_server) -> list[tuple]:
    with live_server.keepers.db.transaction() as tx:
        return tx.execute("SELECT list, channel, status, source FROM consent")


def test_get_shows_preferences_and_changes_nothing(live_server, customer) -> None:
    _, path = customer
    page = httpx.get(live_server.url + path)
    assert page.status_code == 200 and "ada@mail.example" in page.text
    assert '<form method="post">' in page.text
    assert consent_rows(live_server) == []


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart", "empty"])
def test_one_click_post_unsubscribes_without_redirect(live_server, customer, encoding) -> None:
    _, path = customer
    if encoding == "urlencoded":
        response = httpx.post(live_server.url + path, data={"List-Unsubscribe": "One-Click"})
    elif encoding == "multipart":
        response = httpx.post(
            live_server.url + path, files={"List-Unsubscribe": (None, "One-Click")}
        )
    else:
        response = httpx.post(live_server.url + path)
    assert response.status_code == 200 and not response.is_redirect
    assert consent_rows(live_server) == [
        ("marketing", "email", "withdrawn", "one-click unsubscribe")
    ]


def test_the_preferences_form_can_resubscribe(live_server, customer) -> None:
    _, path = customer
    httpx.post(live_server.url + path, data={"List-Unsubscribe": "One-Click"})
    again = httpx.post(live_server.url + path, data={"subscribe": "yes"})
    assert again.status_code == 200
    assert consent_rows(live_server)[0][2] == "granted"


def test_a_forged_link_is_refused(live_server, customer) -> None:
    _, path = customer
    forged = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
    for response in (httpx.post(live_server.url + forged), httpx.get(live_server.url + forged)):
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_input"
    assert consent_rows(live_server) == []


def test_the_journeys_api(live_server) -> None:
    headers = {"Authorization": f"Bearer {live_server.admin_token}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as api:
        saved = api.post("/api/journeys", json=WELCOME)
        assert saved.status_code == 200 and saved.json()["version"] == 1
        assert [j["journey"] for j in api.get("/api/journeys").json()] == ["welcome"]
        bad = api.post("/api/journeys", json={**WELCOME, "steps": []})
        assert bad.status_code == 400 and "steps" in bad.json()["message"]
        paused = api.put("/api/journeys/welcome/status", json={"status": "paused"})
        assert paused.json()["status"] == "paused"
        assert api.get("/api/journeys/nope/stats").status_code == 404
        run = api.post("/api/journeys/run")
        assert run.status_code == 200 and run.json()["advance"]["entered"] == 0


def test_tracked_links_redirect_only_where_signed(live_server, customer) -> None:
    from keepers.delivery.tracking import sign_link

    secret = live_server.keepers.journeys.delivery_config().secret
    click = sign_link(secret, "<ref@shop.example>", "https://shop.example/sale")
    response = httpx.get(f"{live_server.url}/c/{click}")
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example/sale"
    pixel = httpx.get(f"{live_server.url}/o/{sign_link(secret, '<ref@shop.example>')}")
    assert pixel.status_code == 200 and pixel.content.startswith(b"GIF89a")
    evil = sign_link(b"x" * 32, "<r>", "https://evil.example")
    forged = click.split(".")[0] + "." + evil.split(".")[1]
    assert httpx.get(f"{live_server.url}/c/{forged}").status_code == 400
