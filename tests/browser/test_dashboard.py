"""The dashboard in a real browser: Debian's Chromium through Playwright, against a real
server started here on a small demo business. Sign in with the demo login, open every page,
find a customer, create a segment and see its live count, open a journey; a page a role may
not open is refused and personal data is masked for roles that may not see it; screenshots
are saved under `docs/screenshots/` (the README shows the overview)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from rich.progress import Progress

from keepers.services.access import AccessService, cli_principal
from keepers.services.demo import load_demo
from keepers.settings import Settings
from keepers.testing.postgres import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--headless",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SHOTS = Path(__file__).parents[2] / "docs" / "screenshots"
TOKEN = "browser-test-admin-token"
JOURNEY = """
key: welcome
name: Welcome first-time buyers
trigger: {stage_entered: conversion}
steps:
  - {id: hello, email: {subject: Hi, html: "<a href='{{ unsubscribe_url }}'>unsubscribe</a>"}}
  - {id: pause, wait: 3d}
  - {id: done, exit: {}}
"""


PASSWORD = "browser test password"
PEOPLE = {"support": "sam@example.com", "marketing": "mia@example.com"}
LOGIN: dict[str, str] = {}  # the demo's admin login, set by the server fixture


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[str]:
    from keepers.web.app import create_app

    folder = tmp_path_factory.mktemp("dash")
    settings = Settings(
        database_url=str(folder / "demo.duckdb"),
        admin_token=TOKEN,
        compute_interval_s=0,
        journey_interval_s=0,
    )
    quiet = Progress(disable=True)
    keepers, summary, _ = load_demo(settings, customers=300, seed=7, fresh=True, progress=quiet)
    LOGIN.update(summary["login"])
    admin = cli_principal("tests")
    access = AccessService(keepers.db, keepers.clock)
    for role, email in PEOPLE.items():
        access.create_user(email, role, PASSWORD, by=admin)
    journey = folder / "welcome.yaml"
    journey.write_text(JOURNEY)
    keepers.journeys.save_file(journey)
    app = create_app(settings, keepers)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=20)
    keepers.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=server)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 500 else None,
    )
    yield opened
    context.close()
    assert errors == [], errors


def sign_in(page: Page, email: str | None = None, password: str = PASSWORD) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.fill("#email", email or LOGIN["email"])
    page.fill("#password", password if email else LOGIN["password"])
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Overview")


def test_a_wrong_password_is_refused(page: Page) -> None:
    page.goto("/login")
    page.fill("#email", LOGIN["email"])
    page.fill("#password", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_have_text("Wrong email or password.")
    page.goto("/customers")
    assert "/login" in page.url


def test_every_page_opens_and_the_overview_draws_its_charts(page: Page) -> None:
    sign_in(page)
    expect(page.locator("#funnel svg")).to_be_visible()
    expect(page.locator("#flows svg")).to_be_visible()
    expect(page.locator("#clvchart svg")).to_be_visible(timeout=30_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
    for path, heading in [
        ("/customers", "Customers"),
        ("/segments", "Segments"),
        ("/reports/cohorts", "Cohorts"),
        ("/reports/rfm", "RFM"),
        ("/reports/churn", "Churn"),
        ("/reports/health", "Health"),
        ("/reports/funnel", "Funnel"),
        ("/reports/cross-sell", "Cross-sell"),
        ("/reports/replenishment", "Replenishment"),
        ("/journeys", "Journeys"),
        ("/settings", "Settings"),
    ]:
        page.goto(path)
        expect(page.locator("h1")).to_contain_text(heading)
    page.goto("/reports/clv")
    expect(page.locator("table").first).to_be_visible(timeout=30_000)
    page.goto("/reports/cohorts")
    expect(page.locator("#heat svg")).to_be_visible()
    page.screenshot(path=str(SHOTS / "cohorts.png"), full_page=True)


def test_find_a_customer_and_open_their_page(page: Page) -> None:
    sign_in(page)
    page.goto("/customers")
    page.fill("input[name=q]", "@")
    first = page.locator("#results a").first
    expect(first).to_be_visible()
    first.click()
    expect(page.locator("h2", has_text="Why this stage")).to_be_visible()
    expect(page.locator("h1 .badge")).not_to_be_empty()
    # the scores with what made them: every health component, and the health card
    expect(page.locator("#health-parts tr")).to_have_count(6)  # a header and 5 components
    expect(page.locator("#score-health_score")).to_be_visible()


def test_create_a_segment_with_a_live_count(page: Page) -> None:
    sign_in(page)
    page.goto("/segments")
    page.fill("textarea[name=rule]", "ordrs >= 2")
    expect(page.locator("#preview .error")).to_contain_text("unknown field 'ordrs'")
    page.fill("textarea[name=rule]", "orders >= 2")
    count = page.locator("#preview-count")
    expect(count).to_be_visible()
    expected = count.inner_text()
    page.fill("input[name=key]", "repeat_buyers")
    page.click("#segment-form button[type=submit]")
    row = page.locator("tr", has_text="repeat_buyers")
    expect(row).to_contain_text(expected)


def test_a_number_opens_the_customers_behind_it(page: Page) -> None:
    sign_in(page)
    page.goto("/reports/rfm")
    page.locator("a[href*='/reports/rfm/customers?segment=']").first.click()
    expect(page.locator("h1")).to_contain_text("customers")
    expect(page.locator("td a[href^='/customers/']").first).to_be_visible()


def test_open_a_journey(page: Page) -> None:
    sign_in(page)
    page.goto("/journeys")
    page.click("text=Welcome first-time buyers")
    expect(page.locator("#flow svg")).to_be_visible()
    page.fill("input[name=customer]", "nobody@example.com")
    page.click("text=Trace")
    expect(page.locator(".error")).to_contain_text("no customer")


def test_posts_without_the_csrf_token_are_refused(page: Page, server: str) -> None:
    sign_in(page)
    answer = page.request.post(f"{server}/segments", form={"key": "x", "rule": "orders >= 1"})
    assert answer.status == 403
    assert answer.json()["code"] == "csrf_failed"


def test_a_page_the_role_may_not_open_is_refused(page: Page) -> None:
    sign_in(page, PEOPLE["support"])
    expect(page.locator("nav")).not_to_contain_text("Settings")
    answer = page.goto("/settings")
    assert answer is not None and answer.status == 403
    expect(page.locator("h1")).to_have_text("Not allowed")
    expect(page.locator("main")).to_contain_text("users.manage")
    page.screenshot(path=str(SHOTS / "forbidden.png"))


def test_personal_data_is_masked_for_marketing_and_shown_to_support(page: Page) -> None:
    sign_in(page, PEOPLE["marketing"])
    page.goto("/customers")
    page.fill("input[name=q]", "@")
    first = page.locator("#results a").first
    expect(first).to_be_visible()
    href = first.get_attribute("href")
    assert href
    page.goto(href)
    masked = page.locator("main").inner_text()
    assert "***@" in masked
    page.context.clear_cookies()
    sign_in(page, PEOPLE["support"])
    page.goto(href)
    shown = page.locator("main").inner_text()
    assert "***@" not in shown and "@" in shown


def test_admins_add_users_and_read_the_audit_log(page: Page) -> None:
    sign_in(page)
    page.goto("/settings")
    page.fill("#add-user input[name=email]", "new.analyst@example.com")
    page.select_option("#add-user select[name=role]", "analyst")
    page.click("#add-user button[type=submit]")
    expect(page.locator("#new-password")).not_to_be_empty()
    expect(page.locator("#users")).to_contain_text("new.analyst@example.com")
    expect(page.locator("#audit")).to_contain_text("user.create")
