"""The deals and referral pages over HTTP against the real app, on DuckDB and PostgreSQL:
a move the stage gate refuses answers 400 with what is missing (and moves nothing), the
forms refuse a missing, wrong or cross-site CSRF token, roles without the permission are
refused, and every page answers on an empty store."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from keepers.services.access import AccessService, cli_principal
from keepers.services.keepers import Keepers
from keepers.settings import Settings

PASSWORD = "integration test password"
SELLER = "sam.seller@example.com"
MARKETER = "mia.marketing@example.com"


@pytest.fixture
def store(settings: Settings) -> Iterator[tuple[TestClient, Keepers]]:
    """The app on a store with one open deal in discovery and two users; not signed in."""
    from keepers.web.app import create_app

    quiet = settings.model_copy(update={"compute_interval_s": 0, "journey_interval_s": 0})
    keepers = Keepers.open(quiet)
    access = AccessService(keepers.db, keepers.clock)
    access.create_user(SELLER, "sales", PASSWORD, by=cli_principal("tests"))
    access.create_user(MARKETER, "marketing", PASSWORD, by=cli_principal("tests"))
    body = {"deal_id": "d-1", "name": "Acme pilot", "amount": 5000, "currency": "EUR"}
    keepers.sales.create_deal(body, "tests")
    try:
        # https, so the client sends the Secure session cookies back
        yield TestClient(create_app(quiet, keepers), base_url="https://testserver"), keepers
    finally:
        keepers.close()


def sign_in(client: TestClient, email: str = SELLER) -> str:
    """Sign in through the form; the CSRF token the pages carry."""
    answer = client.post(
        "/login", data={"email": email, "password": PASSWORD, "next": "/"}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/").text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no csrf_token field on the page"
    return found.group(1)


def stage_of(keepers: Keepers, deal_id: str = "d-1") -> str:
    return str(keepers.sales.deal(deal_id)["stage"])


def test_a_refused_gate_answers_400_with_what_is_missing(store) -> None:
    client, keepers = store
    csrf = sign_in(client)
    form = {"stage": "proposal", "csrf_token": csrf}
    refused = client.post("/deals/d-1/stage", data=form, follow_redirects=False)
    assert refused.status_code == 400
    assert "text/html" in refused.headers["content-type"]
    assert "identify_pain must be identified (is unknown)" in refused.text
    assert "metrics must be identified (is unknown)" in refused.text
    assert 'id="move-error"' in refused.text and 'id="scorecard"' in refused.text  # the page
    assert stage_of(keepers) == "discovery"
    for element in ("identify_pain", "metrics"):
        meddic = {"element": element, "status": "identified", "csrf_token": csrf}
        saved = client.post("/deals/d-1/meddic", data=meddic, follow_redirects=False)
        assert saved.status_code == 303
    moved = client.post("/deals/d-1/stage", data=form, follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/deals/d-1"
    assert stage_of(keepers) == "proposal"
    history = keepers.sales.deal("d-1")["history"]
    assert history[-1]["actor"] == f"user:{SELLER}"
    assert "16.7" in client.get("/deals/d-1").text  # two identified of six: 2 × 8.33


def test_a_bad_element_or_status_answers_400_and_an_unknown_deal_404(store) -> None:
    client, _ = store
    csrf = sign_in(client)
    bad = {"element": "budget", "status": "confirmed", "csrf_token": csrf}
    answer = client.post("/deals/d-1/meddic", data=bad)
    assert answer.status_code == 400 and "is not a meddic element" in answer.text
    bad = {"element": "champion", "status": "maybe", "csrf_token": csrf}
    assert client.post("/deals/d-1/meddic", data=bad).status_code == 400
    assert client.get("/deals/nope").status_code == 404
    gone = {"stage": "won", "csrf_token": csrf}
    assert client.post("/deals/nope/stage", data=gone).status_code == 404


@pytest.mark.parametrize("path", ["/deals/d-1/stage", "/deals/d-1/meddic"])
def test_the_forms_refuse_a_missing_wrong_or_cross_site_csrf_token(store, path) -> None:
    client, keepers = store
    csrf = sign_in(client)
    form = {"stage": "lost", "element": "champion", "status": "confirmed"}
    for token, headers in [
        (None, {}),
        ("not-the-token", {}),
        (csrf, {"sec-fetch-site": "cross-site"}),
    ]:
        data = form if token is None else {**form, "csrf_token": token}
        answer = client.post(path, data=data, headers=headers, follow_redirects=False)
        assert answer.status_code == 403, (token, headers)
        assert answer.json()["code"] == "csrf_failed"
    deal = keepers.sales.deal("d-1")
    assert deal["stage"] == "discovery" and deal["score"] == 0.0  # nothing changed


def test_signed_out_visitors_and_roles_without_the_permission_are_refused(store) -> None:
    client, keepers = store
    answer = client.get("/deals", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Fdeals"
    assert client.post("/deals/d-1/stage", data={"stage": "lost"}).status_code == 401
    csrf = sign_in(client, MARKETER)
    assert client.get("/deals").status_code == 403
    assert client.get("/deals/d-1").status_code == 403
    assert client.get("/referrals").status_code == 200  # reports.read
    form = {"stage": "lost", "csrf_token": csrf}
    assert client.post("/deals/d-1/stage", data=form).status_code == 403
    assert stage_of(keepers) == "discovery"


def test_the_pages_answer_on_a_store_without_history(store) -> None:
    client, _ = store
    sign_in(client)
    board = client.get("/deals")
    assert board.status_code == 200
    assert 'data-stage="discovery"' in board.text and "Acme pilot" in board.text
    assert 'href="/deals/d-1"' in board.text
    assert client.get("/deals/d-1").status_code == 200
    referrals = client.get("/referrals")
    assert referrals.status_code == 200 and "no referrals yet" in referrals.text
    assert client.get("/reports/nps").status_code == 200
