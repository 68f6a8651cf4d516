"""The sales and advocacy pages in a real browser: Debian's Chromium through Playwright,
against a real server started here on the small demo business, signed in as a user of the
sales role. The demo's own deals are all closed, so a few open deals are added through the
sales service (created in Keepers, moved through their gates) before the server starts.
The deals board is saved to `docs/screenshots/deals.png`."""

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
from keepers.services.keepers import Keepers
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
PASSWORD = "browser test password"
SELLER = "sally.seller@example.com"
MARKETER = "mo.marketing@example.com"
# (deal id, name, account, stage, amount, MEDDIC elements set before moving there)
OPEN_DEALS = [
    ("web-1", "Irongate expansion", "acct-0001", "discovery", 12_000, {}),
    ("web-2", "Riverpeak analytics add-on", "acct-0002", "qualification", 8_500, {}),
    ("web-3", "Blueleaf renewal 2027", "acct-0003", "qualification", 5_200, {}),
    (
        "web-4",
        "Cedarpeak platform",
        "acct-0004",
        "proposal",
        30_000,
        {"identify_pain": "confirmed", "metrics": "identified"},
    ),
    (
        "web-5",
        "Irongate robotics fleet",
        "acct-0001",
        "commit",
        54_000,
        {
            "identify_pain": "confirmed",
            "metrics": "confirmed",
            "economic_buyer": "confirmed",
            "champion": "confirmed",
        },
    ),
]


def add_open_deals(keepers: Keepers) -> None:
    """Open deals in every open stage, each entering its stage through the gates."""
    sales = keepers.sales
    for deal_id, name, account, stage, amount, elements in OPEN_DEALS:
        body = {"deal_id": deal_id, "name": name, "account_id": account, "amount": amount}
        sales.create_deal({**body, "currency": "USD", "owner": "Priya Raman"}, "tests")
        for element, status in elements.items():
            sales.update_meddic(deal_id, element, {"status": status, "said_by": "CFO"}, "tests")
        if stage != "discovery":
            sales.move_deal(deal_id, stage, "tests")


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[str]:
    from keepers.web.app import create_app

    folder = tmp_path_factory.mktemp("sales")
    settings = Settings(
        database_url=str(folder / "demo.duckdb"),
        admin_token="browser-test-admin-token",
        compute_interval_s=0,
        journey_interval_s=0,
    )
    quiet = Progress(disable=True)
    keepers, _, _ = load_demo(settings, customers=300, seed=7, fresh=True, progress=quiet)
    access = AccessService(keepers.db, keepers.clock)
    access.create_user(SELLER, "sales", PASSWORD, by=cli_principal("tests"))
    access.create_user(MARKETER, "marketing", PASSWORD, by=cli_principal("tests"))
    add_open_deals(keepers)
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


def sign_in(page: Page, email: str = SELLER) -> None:
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Overview")


def card(page: Page, stage: str, name: str) -> Any:
    return page.locator(f".column[data-stage='{stage}'] .deal-card", has_text=name)


def test_the_board_shows_open_deals_per_stage_with_priorities_and_the_report(page: Page) -> None:
    sign_in(page)
    page.click("nav >> text=Deals")
    expect(page.locator("h1")).to_contain_text("5 open")
    for deal_id, name, _, stage, _, _ in OPEN_DEALS:
        expect(card(page, stage, name)).to_have_attribute("href", f"/deals/{deal_id}")
    expect(page.locator(".column[data-stage='qualification'] .deal-card")).to_have_count(2)
    proposal = card(page, "proposal", "Cedarpeak platform")
    expect(proposal).to_contain_text("Cedarpeak Systems")  # the account's name
    expect(proposal).to_contain_text("30,000 USD")
    expect(proposal).to_contain_text("Priya Raman")
    expect(proposal.locator(".score")).to_have_text("25")  # 1 + 0.5 of 6 elements
    expect(proposal).to_contain_text("weakest: Economic buyer")
    warning = proposal.locator(".gate-warn")  # commit needs a confirmed buyer and champion
    expect(warning).to_have_attribute("title", re.compile("economic_buyer must be confirmed"))
    expect(card(page, "discovery", "Irongate expansion").locator(".gate-warn")).to_have_count(0)
    first = page.locator("#priorities tr").nth(1)
    expect(first).to_contain_text("Irongate robotics fleet")  # 54,000 × 66.7 ÷ 100
    expect(page.locator("#pipeline-report")).to_contain_text("Commit")
    expect(page.locator("#bands tr", has_text="low")).to_contain_text("20%")  # 1 of 5 won
    expect(page.locator("#stagevalue svg")).to_be_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "deals.png"), full_page=True)


def test_a_deal_shows_six_meddic_elements_and_setting_one_changes_the_score(page: Page) -> None:
    sign_in(page)
    page.goto("/deals")
    card(page, "qualification", "Blueleaf renewal 2027").click()
    expect(page.locator("h1")).to_contain_text("Blueleaf renewal 2027")
    rows = page.locator("#scorecard tr[data-element]")
    expect(rows).to_have_count(6)
    for label in ["Metrics", "Economic buyer", "Decision criteria", "Decision process"]:
        expect(page.locator("#scorecard")).to_contain_text(label)
    expect(page.locator("#deal-score b")).to_have_text("0.0")
    champion = page.locator("#el-champion")
    champion.locator("summary").click()
    champion.locator("select[name=status]").select_option("confirmed")
    champion.locator("textarea[name=evidence]").fill("Head of ops will present to the board")
    champion.locator("input[name=said_by]").fill("Noor Haddad")
    champion.locator("input[name=said_at]").fill("2026-11-02")
    champion.locator("input[name=next_step]").fill("book the board meeting")
    champion.locator("button[type=submit]").click()
    expect(page.locator("#deal-score b")).to_have_text("16.7")
    champion = page.locator("#el-champion")
    expect(champion.locator(".status")).to_have_text("confirmed")
    expect(champion).to_contain_text("Head of ops will present to the board")
    expect(champion).to_contain_text("Noor Haddad")
    expect(champion).to_contain_text("2026-11-02")
    expect(champion).to_contain_text("book the board meeting")


def test_a_gated_move_is_refused_with_the_missing_elements_named(page: Page) -> None:
    sign_in(page)
    page.goto("/deals/web-2")
    expect(page.locator("#next-gate")).to_contain_text("identify_pain must be identified")
    page.select_option("#move-form select[name=stage]", "commit")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#move-form button[type=submit]")
    assert answer.value.status == 400
    error = page.locator("#move-error")
    for missing in ["identify_pain", "metrics", "economic_buyer", "champion"]:
        expect(error).to_contain_text(f"{missing} must be")
    expect(page.locator("h1 .badge").first).to_have_text("Qualification")  # not moved
    page.select_option("#move-form select[name=stage]", "discovery")  # moving back: no gate
    page.click("#move-form button[type=submit]")
    expect(page.locator("h1 .badge").first).to_have_text("Discovery")
    expect(page.locator("#history")).to_contain_text("user:" + SELLER)


def test_the_referral_leaderboard_links_its_first_referrer_to_their_page(page: Page) -> None:
    sign_in(page)
    page.click("nav >> text=Referrals")
    expect(page.locator("h1")).to_have_text("Referrals")
    metrics = page.locator("#referral-metrics")
    expect(metrics).to_contain_text("invites sent")
    expect(metrics).to_contain_text("revenue from referred customers")
    expect(page.locator("#reward-totals")).to_contain_text("earned")
    expect(page.locator("#rewards tr").nth(1).locator(".status")).not_to_be_empty()
    expect(page.locator("#fraud h2")).to_have_text("Fraud flags")
    first = page.locator("#leaderboard tr").nth(1).locator("a").first
    href = first.get_attribute("href")
    assert href is not None and re.fullmatch(r"/customers/\d+", href)
    first.click()
    expect(page).to_have_url(re.compile(re.escape(href) + "$"))
    expect(page.locator("h2", has_text="Why this stage")).to_be_visible()


def test_the_nps_number_opens_the_customers_who_answered(page: Page) -> None:
    sign_in(page)
    page.click("nav >> text=NPS")
    expect(page.locator("h1")).to_contain_text("NPS")
    number = page.locator("#nps-number a")
    expect(number).to_have_text(re.compile(r"^[+-]\d+\.\d$"))
    expect(page.locator("#npschart svg")).to_be_visible()
    responses = page.locator("#nps-overall .card").nth(1).locator("b").inner_text()
    number.click()
    expect(page.locator("h1")).to_contain_text(f"{responses} customers")
    expect(page.locator("h1")).to_contain_text("in_period = all")
    expect(page.locator("td a[href^='/customers/']").first).to_be_visible()


def test_a_role_without_accounts_sees_no_deals(page: Page) -> None:
    sign_in(page, MARKETER)
    expect(page.locator("nav")).not_to_contain_text("Deals")
    expect(page.locator("nav")).to_contain_text("Referrals")
    answer = page.goto("/deals")
    assert answer is not None and answer.status == 403
