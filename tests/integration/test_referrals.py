"""The referral programme on DuckDB and PostgreSQL: attribution end-to-end through the live
tracking API with the official Segment client, the reward rules on hand-checked cases,
every fraud check on a crafted attempt, identity merges, and idempotent syncs.

Times are pinned: the service's clock is set by each test, and every event carries its
own timestamp, so each expected status and moment below can be checked by hand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from segment.analytics import Client
from typer.testing import CliRunner

from keepers.errors import InvalidInput, NotFound
from keepers.referrals import normalise_email
from keepers.services.keepers import Keepers
from keepers.services.referrals import ReferralService
from keepers.settings import Settings
from keepers.testing.postgres import free_port
from tests.helpers import rows

JAN = datetime(2024, 1, 10, 12, tzinfo=UTC)  # the referred friends' first orders
DAY = timedelta(days=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _iso(moment: datetime) -> str:
    return moment.isoformat()


_counter = iter(range(1_000_000))


def identify(user: str, at: datetime, context: dict | None = None, **traits: Any) -> dict:
    return {
        "type": "identify",
        "userId": user,
        "traits": traits,
        "timestamp": _iso(at),
        "context": context or {},
        "messageId": f"m-{next(_counter)}",
    }


def track(
    user: str | None,
    event: str,
    at: datetime,
    properties: dict | None = None,
    context: dict | None = None,
    anonymous_id: str | None = None,
) -> dict:
    message = {
        "type": "track",
        "event": event,
        "properties": properties or {},
        "context": context or {},
        "timestamp": _iso(at),
        "messageId": f"m-{next(_counter)}",
    }
    if user is not None:
        message["userId"] = user
    if anonymous_id is not None:
        message["anonymousId"] = anonymous_id
    return message


def page(user: str | None, at: datetime, url: str, anonymous_id: str | None = None) -> dict:
    message = {
        "type": "page",
        "name": "Home",
        "properties": {"url": url},
        "timestamp": _iso(at),
        "messageId": f"m-{next(_counter)}",
    }
    if user is not None:
        message["userId"] = user
    if anonymous_id is not None:
        message["anonymousId"] = anonymous_id
    return message


def order(user: str, order_id: str, at: datetime, value: float = 50.0, **extra: Any) -> dict:
    return track(user, "Order Completed", at, {"order_id": order_id, "revenue": value, **extra})


def refund(user: str, order_id: str, at: datetime, total: float | None = None) -> dict:
    properties: dict[str, Any] = {"order_id": order_id}
    if total is not None:
        properties["total"] = total
    return track(user, "Order Refunded", at, properties)


def referrer(user: str = "ann", code: str = "ANN1", email: str | None = None) -> list[dict]:
    return [
        identify(user, JAN - 30 * DAY, email=email or f"{user}@example.com", referral_code=code)
    ]


def friend(
    user: str,
    code: str = "ann1",
    *,
    email: str | None = None,
    order_id: str | None = None,
    ordered_at: datetime = JAN,
    value: float = 50.0,
    context: dict | None = None,
) -> list[dict]:
    """A friend who signs up with a code two days before their first order."""
    signed = ordered_at - 2 * DAY
    return [
        identify(user, signed, context=context, email=email or f"{user}@example.org"),
        track(user, "Signed Up", signed, {"referral_code": code}, context),
        order(user, order_id or f"o-{user}", ordered_at, value),
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock(JAN + 60 * DAY)


@pytest.fixture
def referrals(keepers: Keepers, clock: Clock) -> ReferralService:
    return ReferralService(keepers.db, clock)


def send(keepers: Keepers, *groups: list[dict]) -> None:
    messages = [m for group in groups for m in group]
    report = keepers.ingest_messages(messages, source_id="test")
    assert not report.rejected, report.rejected


def ledger(keepers: Keepers) -> dict[str, tuple[Any, ...]]:
    """reward id → (status, reason, earned_at, referrer user, referred user)."""
    found = rows(
        keepers,
        "SELECT r.reward_id, r.status, r.reason, r.earned_at, b.user_id, d.user_id "
        "FROM referral_rewards r JOIN customers b ON b.customer_id = r.referrer_customer_id "
        "JOIN customers d ON d.customer_id = r.referred_customer_id",
    )
    return {r[0]: tuple(r[1:]) for r in found}


def statuses(keepers: Keepers) -> dict[str, tuple[str, str | None]]:
    return {k: (v[0], v[1]) for k, v in ledger(keepers).items()}


def attributions(keepers: Keepers) -> dict[str, tuple[str, str, str]]:
    """referred user → (referrer user, code, how)."""
    found = rows(
        keepers,
        "SELECT d.user_id, b.user_id, a.code, a.how FROM referral_attributions a "
        "JOIN customers b ON b.customer_id = a.referrer_customer_id "
        "JOIN customers d ON d.customer_id = a.referred_customer_id",
    )
    return {r[0]: (r[1], r[2], r[3]) for r in found}


def flags(keepers: Keepers) -> set[tuple[str, str, str]]:
    """(referred user, referrer user, check)."""
    found = rows(
        keepers,
        "SELECT d.user_id, b.user_id, f.check_name FROM referral_fraud_flags f "
        "JOIN customers b ON b.customer_id = f.referrer_customer_id "
        "JOIN customers d ON d.customer_id = f.referred_customer_id",
    )
    return {tuple(r) for r in found}


# --- end to end through the tracking API ---------------------------------------------------


@pytest.fixture
def referral_server(settings: Settings) -> Iterator[tuple[str, str, str, Keepers]]:
    """`keepers serve` on a free port: (url, write key, admin token, keepers)."""
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
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", write_key, app.state.admin_token, keepers
    server.should_exit = True
    thread.join(timeout=20)
    keepers.close()


def test_attribution_end_to_end_through_the_tracking_api_with_the_segment_client(
    referral_server,
) -> None:
    url, write_key, token, keepers = referral_server
    errors: list[Exception] = []
    client = Client(write_key, host=url, max_retries=1, on_error=lambda e, b: errors.append(e))
    now = datetime.now(UTC) - timedelta(minutes=10)  # the server's clock must be past it all
    before = now - timedelta(hours=2)
    client.identify("ann", {"email": "ann@example.com", "referral_code": "ANN1"}, timestamp=before)
    # bob: the code as a property of his sign-up
    client.identify("bob", {"email": "bob@example.org"}, timestamp=now)
    client.track("bob", "Signed Up", {"referral_code": "ann1"}, timestamp=now)
    # cat: analytics.js' context.referrer on her identify
    referral = {"referrer": {"type": "referral", "id": "ANN1"}}
    client.identify("cat", {"email": "cat@example.org"}, context=referral, timestamp=now)
    # dan: browsed anonymously through the shared link, then signed up (merging the visit)
    client.page(
        None,
        None,
        "Home",
        {"url": "https://shop.example/?utm_source=x&ref=ANN1"},
        anonymous_id="visitor-dan",
        timestamp=now,
    )
    client.identify("dan", {"email": "dan@example.org"}, anonymous_id="visitor-dan", timestamp=now)
    # eve: uses the code from ann's own phone — a self-referral on the same device
    same_phone = {"device": {"id": "phone-ann"}}
    client.track("ann", "Product Viewed", {"product_id": "p1"}, context=same_phone, timestamp=now)
    client.identify("eve", {"email": "eve@example.org"}, context=same_phone, timestamp=now)
    client.track("eve", "Signed Up", {"referral_code": "ANN1"}, context=same_phone, timestamp=now)
    later = now + timedelta(minutes=1)
    for user in ("bob", "cat", "dan", "eve"):
        props = {"order_id": f"o-{user}", "revenue": 40.0, "currency": "USD"}
        client.track(user, "Order Completed", props, timestamp=later)
    client.flush()
    client.join()
    assert errors == []

    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    rules = {"rules": [{"window_days": 0}]}  # no refund window: rewards earn at once
    assert api.put("/api/referrals/programme", json={"programme": rules}).json()["saved"]
    synced = api.post("/api/referrals/sync", json={}).json()
    assert synced["attributed"] == 4 and synced["codes"]["adopted"] == 1
    assert attributions(keepers) == {
        "bob": ("ann", "ANN1", "property"),
        "cat": ("ann", "ANN1", "context"),
        "dan": ("ann", "ANN1", "link"),
        "eve": ("ann", "ANN1", "property"),
    }
    assert flags(keepers) == {("eve", "ann", "same_device")}
    rewards = api.get("/api/referrals/rewards").json()
    assert rewards["statuses"] == {"pending": 0, "earned": 3, "paid": 0, "void": 1}
    void = [r for r in rewards["rows"] if r["status"] == "void"]
    assert [(r["referred_user_id"], r["reason"]) for r in void] == [("eve", "fraud: same_device")]
    board = api.get("/api/referrals/leaderboard").json()["rows"]
    assert (board[0]["user_id"], board[0]["converted"], board[0]["earned_amount"]) == ("ann", 4, 30)
    assert board[0]["revenue"] == 160.0 and board[0]["flagged"] == 1
    paid = api.post("/api/referrals/rewards/pay", json={"referrer": "ann", "reference": "b-1"})
    assert paid.json()["paid"] == 3
    totals = api.get("/api/referrals").json()
    assert (totals["referred"], totals["converted"]) == (4, 4)
    assert totals["referred_by"] == {"context": 1, "link": 1, "property": 2}
    assert api.get("/api/referrals/fraud").json()["checks"] == {"same_device": 1}
    assert api.get("/api/referrals/customers/dan").json()["referred_by"]["how"] == "link"
    again = api.post("/api/referrals/sync", json={}).json()
    assert again["attributed"] == 0 and again["rewards"]["opened"] == 0
    assert (
        api.get("/api/referrals/rewards", params={"status": "paid"}).json()["statuses"]["paid"] == 3
    )
    assert api.get("/api/referrals/rewards", params={"status": "lost"}).status_code == 422
    assert api.get("/api/referrals/customers/nobody").status_code == 404
    assert api.get("/api/referrals/customers/²").status_code == 404  # a digit int() refuses
    assert (
        api.post("/api/referrals/sync", json={}, headers={"Authorization": ""}).status_code == 401
    )


# --- attribution --------------------------------------------------------------------------


def test_the_earliest_code_before_the_first_order_wins(keepers, referrals) -> None:
    send(
        keepers,
        referrer("ann", "ANN1"),
        referrer("zoe", "ZOE1"),
        # gus saw zoe's link first (as an anonymous visitor), then signed up with ann's code
        [page(None, JAN - 5 * DAY, "https://shop.example/?ref=zoe1", anonymous_id="v-gus")],
        [identify("gus", JAN - 3 * DAY, email="gus@example.org") | {"anonymousId": "v-gus"}],
        friend("gus", "ANN1"),
        # hal bought first and used a code only afterwards: not a referred new customer
        [order("hal", "o-hal", JAN - 10 * DAY)],
        [track("hal", "Signed Up", JAN, {"referral_code": "ANN1"})],
        # ivy used a code nobody has; joe only got ann's own "Referral Sent" properties
        friend("ivy", "NOPE1"),
        [track("ann", "Referral Sent", JAN, {"referral_code": "ANN1"})],
    )
    result = referrals.sync()
    assert attributions(keepers) == {"gus": ("zoe", "ZOE1", "link")}
    assert result["attributed"] == 1 and result["own_code_attempts"] == 0
    assert referrals.metrics()["invites"] == 1


def test_a_disabled_code_attributes_nobody_new(keepers, referrals, clock) -> None:
    send(keepers, referrer("ann", "ANN1"), friend("bob", "ANN1"))
    referrals.sync()
    clock.now = JAN - 20 * DAY  # disabled before cat signs up
    assert referrals.disable_code("ann1") == {"code": "ANN1", "disabled": True}
    clock.now = JAN + 60 * DAY
    send(keepers, friend("cat", "ANN1"))
    referrals.sync()
    assert set(attributions(keepers)) == {"bob"}
    with pytest.raises(InvalidInput, match="code"):
        referrals.disable_code("no spaces allowed")


def test_codes_are_adopted_generated_once_and_set_by_hand(keepers, referrals) -> None:
    send(
        keepers,
        referrer("ann", "ANN1"),
        [identify(u, JAN, email=f"{u}@example.org") for u in ("bob", "cat", "dan")],
        [track(None, "Product Viewed", JAN, anonymous_id="visitor-1")],
    )
    assert referrals.ensure_codes() == {"adopted": 1, "conflicts": 0, "generated": 3}
    assert referrals.ensure_codes("all")["generated"] == 1  # the anonymous visitor too
    assert referrals.ensure_codes("all")["generated"] == 0
    codes = {r["user_id"]: r["code"] for r in referrals.codes()["rows"]}
    assert codes["ann"] == "ANN1"
    generated = [c for u, c in codes.items() if u != "ann"]
    assert all(len(c) == 8 and c.isalnum() and c == c.upper() for c in generated)
    assert len(set(codes.values())) == len(codes)
    assert referrals.set_code("bob", "bobby-2024") == {
        "customer_id": referrals.codes("bob")["rows"][0]["customer_id"],
        "code": "BOBBY-2024",
    }
    with pytest.raises(InvalidInput, match="already belongs"):
        referrals.set_code("cat", "BOBBY-2024")
    with pytest.raises(NotFound):
        referrals.set_code("nobody", "X-123")


def test_identity_merges_move_codes_and_rewards_to_the_surviving_profile(
    keepers, referrals
) -> None:
    send(keepers, referrer("ann-old", "ANN1"), friend("bob", "ANN1"))
    referrals.sync()
    send(
        keepers,
        [identify("ann-new", JAN + 30 * DAY, email="ann@example.net")],
        [
            {
                "type": "alias",
                "previousId": "ann-old",
                "userId": "ann-new",
                "messageId": "al-1",
                "timestamp": _iso(JAN + 31 * DAY),
            }
        ],
    )
    result = referrals.sync()
    assert result["merged_profiles"] == 1
    assert attributions(keepers) == {"bob": ("ann-new", "ANN1", "property")}
    assert {k: v[3] for k, v in ledger(keepers).items()} == {"first_order:o-bob": "ann-new"}
    assert referrals.codes("ann-new")["rows"][0]["code"] == "ANN1"
    before = ledger(keepers)
    assert referrals.sync()["merged_profiles"] == 0
    assert ledger(keepers) == before


# --- reward rules --------------------------------------------------------------------------


def test_reward_rules_on_hand_checked_cases(keepers, referrals, clock) -> None:
    """First orders 01-10 12:00 (window: 30 days, so until 02-09 12:00), as of 03-10:

    - bob: never refunded → earned at the end of the window, 02-09 12:00;
    - cat: refunded 02-05 (day 26, inside the window) → void, refunded;
    - dan: refunded 02-09 12:00 exactly (the window's end is not inside it) → earned;
    - eve: refunded 02-10 (day 31) → earned, the refund came too late to matter;
    - fay: her first order 03-01 → pending until 03-31 12:00;
    - gus: a second order refunded 01-20 — only the first order counts → earned.
    """
    clock.now = datetime(2024, 3, 10, tzinfo=UTC)
    send(
        keepers,
        referrer(),
        friend("bob"),
        friend("cat"),
        [refund("cat", "o-cat", datetime(2024, 2, 5, tzinfo=UTC))],
        friend("dan"),
        [refund("dan", "o-dan", JAN + 30 * DAY)],
        friend("eve"),
        [refund("eve", "o-eve", datetime(2024, 2, 10, tzinfo=UTC))],
        friend("fay", ordered_at=datetime(2024, 3, 1, 12, tzinfo=UTC)),
        friend("gus"),
        [order("gus", "o-gus-2", JAN + DAY), refund("gus", "o-gus-2", JAN + 10 * DAY)],
    )
    result = referrals.sync()
    assert result["rewards"] == {
        "opened": 6,
        "capped": 0,
        "flagged": 0,
        "voided_fraud": 0,
        "voided_refunded": 1,
        "voided_duplicates": 0,
        "earned": 4,
    }
    end = datetime(2024, 2, 9, 12, tzinfo=UTC)
    assert ledger(keepers) == {
        "first_order:o-bob": ("earned", None, end, "ann", "bob"),
        "first_order:o-cat": ("void", "refunded", None, "ann", "cat"),
        "first_order:o-dan": ("earned", None, end, "ann", "dan"),
        "first_order:o-eve": ("earned", None, end, "ann", "eve"),
        "first_order:o-fay": ("pending", None, None, "ann", "fay"),
        "first_order:o-gus": ("earned", None, end, "ann", "gus"),
    }
    clock.now = datetime(2024, 3, 31, 12, tzinfo=UTC)  # fay's window ends
    assert referrals.sync()["rewards"]["earned"] == 1
    assert ledger(keepers)["first_order:o-fay"][:3] == ("earned", None, clock.now)


def test_a_late_refund_inside_the_window_voids_an_earned_reward(keepers, referrals, clock) -> None:
    clock.now = datetime(2024, 3, 1, tzinfo=UTC)
    send(keepers, referrer(), friend("bob"))
    referrals.sync()
    assert statuses(keepers) == {"first_order:o-bob": ("earned", None)}
    # the refund of 02-01 (inside the window) reaches Keepers only now
    send(keepers, [refund("bob", "o-bob", datetime(2024, 2, 1, tzinfo=UTC))])
    assert referrals.sync()["rewards"]["voided_refunded"] == 1
    assert statuses(keepers) == {"first_order:o-bob": ("void", "refunded")}


def test_the_monthly_cap_voids_rewards_over_it(keepers, referrals) -> None:
    """Cap 2 a month: ann's friends' first orders on 01-10, 01-11 and 01-12 open two
    rewards and void the third; a fourth on 02-01 is in a new month."""
    programme = {"rules": [{"cap_per_month": 2}]}
    assert referrals.set_programme(programme, "test") == {"version": 1, "saved": True}
    send(
        keepers,
        referrer(),
        friend("bob", ordered_at=JAN),
        friend("cat", ordered_at=JAN + DAY),
        friend("dan", ordered_at=JAN + 2 * DAY),
        friend("eve", ordered_at=datetime(2024, 2, 1, tzinfo=UTC)),
    )
    assert referrals.sync()["rewards"]["capped"] == 1
    assert statuses(keepers) == {
        "first_order:o-bob": ("earned", None),
        "first_order:o-cat": ("earned", None),
        "first_order:o-dan": ("void", "cap: 2 a month"),
        "first_order:o-eve": ("earned", None),
    }
    assert ("dan", "ann", "cap") in flags(keepers)
    # a later sync finds a fifth January friend: still over the cap
    send(keepers, friend("fay", ordered_at=JAN + 3 * DAY))
    referrals.sync()
    assert statuses(keepers)["first_order:o-fay"] == ("void", "cap: 2 a month")


def test_rules_as_data_points_minimum_full_refunds_and_two_sided(keepers, referrals, clock) -> None:
    clock.now = JAN - 40 * DAY  # the rules are in force before the friends' orders
    programme = {
        "rules": [
            {
                "key": "referrer_points",
                "points": 500,
                "min_order_value": 20,
                "void_on": "full_refund",
            },
            {
                "key": "friend_credit",
                "beneficiary": "referred",
                "amount": 5,
                "currency": "EUR",
                "cap_per_month": None,
            },
        ]
    }
    referrals.set_programme(programme)
    clock.now = JAN + 60 * DAY
    send(
        keepers,
        referrer(),
        friend("bob", value=50),
        [refund("bob", "o-bob", JAN + DAY, total=10)],  # partial: not void for full_refund
        friend("cat", value=50),
        [refund("cat", "o-cat", JAN + DAY, total=50)],  # full
        friend("dan", value=15),  # under the minimum for points
    )
    referrals.sync()
    found = rows(
        keepers,
        "SELECT reward_id, status, amount, currency, points, b.user_id FROM referral_rewards r "
        "JOIN customers b ON b.customer_id = r.beneficiary_customer_id ORDER BY reward_id",
    )
    assert found == [
        ("friend_credit:o-bob", "void", 5.0, "EUR", None, "bob"),
        ("friend_credit:o-cat", "void", 5.0, "EUR", None, "cat"),
        ("friend_credit:o-dan", "earned", 5.0, "EUR", None, "dan"),
        ("referrer_points:o-bob", "earned", None, None, 500, "ann"),
        ("referrer_points:o-cat", "void", None, None, 500, "ann"),
    ]
    assert referrals.programme()["version"] == 1
    with pytest.raises(InvalidInput, match=r"rules\.0\.window_days"):
        referrals.set_programme({"rules": [{"window_days": -1}]})
    with pytest.raises(InvalidInput, match="amount"):
        referrals.set_programme({"rules": [{"amount": 0}]})
    with pytest.raises(InvalidInput, match="link"):
        referrals.set_programme({"codes": {"link": "https://shop.example/"}})


def test_a_rule_added_later_does_not_pay_for_the_past(keepers, referrals, clock) -> None:
    """bob bought on 01-10 under the default rule; a `friend_credit` rule saved on 02-01
    rewards only first orders from then on (cat's on 02-10), while `first_order` — in force
    since always — keeps rewarding both."""
    send(keepers, referrer(), friend("bob"))
    referrals.sync()
    clock.now = datetime(2024, 2, 1, tzinfo=UTC)
    both = {"rules": [{}, {"key": "friend_credit", "beneficiary": "referred", "amount": 5}]}
    assert referrals.set_programme(both)["version"] == 1
    clock.now = JAN + 60 * DAY
    send(keepers, friend("cat", ordered_at=datetime(2024, 2, 10, tzinfo=UTC)))
    referrals.sync()
    assert sorted(statuses(keepers)) == [
        "first_order:o-bob",
        "first_order:o-cat",
        "friend_credit:o-cat",
    ]


def test_paying_and_voiding_follow_the_state_machine(keepers, referrals, clock) -> None:
    clock.now = JAN + 40 * DAY
    send(
        keepers, referrer(), friend("bob"), friend("cat"), friend("dan", ordered_at=JAN + 35 * DAY)
    )
    referrals.sync()
    assert statuses(keepers)["first_order:o-dan"] == ("pending", None)
    with pytest.raises(InvalidInput, match="first_order:o-dan is pending"):
        referrals.pay(["first_order:o-bob", "first_order:o-dan"])
    assert statuses(keepers)["first_order:o-bob"] == ("earned", None)  # nothing changed
    with pytest.raises(NotFound, match="first_order:o-zed"):
        referrals.pay(["first_order:o-zed"])
    with pytest.raises(InvalidInput, match="reward_ids"):
        referrals.pay()
    paid = referrals.pay(["first_order:o-bob"], reference="batch-7")
    assert {k: v for k, v in paid["rewards"][0].items() if k != "customer_id"} == {
        "reward_id": "first_order:o-bob",
        "amount": 10.0,
        "currency": "USD",
        "points": None,
    }
    with pytest.raises(InvalidInput, match="is paid"):
        referrals.void(["first_order:o-bob"], "changed my mind")
    with pytest.raises(InvalidInput, match="reason"):
        referrals.void(["first_order:o-cat"], " ")
    assert referrals.void(["first_order:o-dan"], "test order")["voided"] == 1
    assert referrals.pay(all_earned=True)["paid"] == 1  # cat
    assert statuses(keepers) == {
        "first_order:o-bob": ("paid", None),
        "first_order:o-cat": ("paid", None),
        "first_order:o-dan": ("void", "manual: test order"),
    }
    clock.now = JAN + 90 * DAY
    referrals.sync()  # settling never touches paid or void rewards
    assert statuses(keepers)["first_order:o-dan"] == ("void", "manual: test order")


# --- fraud ----------------------------------------------------------------------------------


def test_each_fraud_check_catches_its_crafted_attempt(keepers, referrals) -> None:
    """Each friend shares one thing with ann; kim shares nothing and is paid normally."""
    send(
        keepers,
        referrer("ann", "ANN1", email="Ann.Smith@gmail.com"),
        [
            track(
                "ann",
                "Product Viewed",
                JAN - 20 * DAY,
                {},
                {"ip": "203.0.113.7", "device": {"id": "dev-ann"}},
            )
        ],
        [order("ann", "o-ann", JAN - 20 * DAY, payment_fingerprint="card-ann")],
        # the same Gmail mailbox: dots, +tag and googlemail.com do not make a new person
        friend("bob", email="annsmith+deal@googlemail.com"),
        # the same device id on the friend's sign-up
        friend("cat", context={"device": {"id": "dev-ann"}}),
        # the same IP address
        friend("dan", context={"ip": "203.0.113.7"}),
        # the same card on the friend's first order
        [
            identify("eve", JAN - 2 * DAY, email="eve@example.org"),
            track("eve", "Signed Up", JAN - 2 * DAY, {"referral_code": "ANN1"}),
            order("eve", "o-eve", JAN, payment_fingerprint="card-ann"),
        ],
        # ann typing her own code into a checkout
        [track("ann", "Coupon Entered", JAN - 10 * DAY, {"referral_code": "ANN1"})],
        friend("kim", context={"ip": "198.51.100.1", "device": {"id": "dev-kim"}}),
    )
    result = referrals.sync()
    assert result["fraud_flags"] == {
        "same_device": 1,
        "same_email": 1,
        "same_ip": 1,
        "same_payment": 1,
    }
    assert result["own_code_attempts"] == 1
    assert flags(keepers) == {
        ("bob", "ann", "same_email"),
        ("cat", "ann", "same_device"),
        ("dan", "ann", "same_ip"),
        ("eve", "ann", "same_payment"),
        ("ann", "ann", "own_code"),
    }
    assert statuses(keepers) == {
        "first_order:o-bob": ("void", "fraud: same_email"),
        "first_order:o-cat": ("void", "fraud: same_device"),
        "first_order:o-dan": ("void", "fraud: same_ip"),
        "first_order:o-eve": ("void", "fraud: same_payment"),
        "first_order:o-kim": ("earned", None),
    }
    assert "ann" not in attributions(keepers)  # her own code attributes nothing
    listed = referrals.fraud()["rows"]
    shared = {r["referred_user_id"]: r["detail"] for r in listed}
    assert shared["bob"] == "annsmith@gmail.com" and shared["dan"] == "203.0.113.7"
    assert {r["reward_status"] for r in listed if r["check_name"] != "own_code"} == {"void"}


def test_a_check_switched_off_flags_nothing_and_a_late_flag_voids_an_earned_reward(
    keepers, referrals
) -> None:
    referrals.set_programme({"fraud": {"same_ip": False}})
    send(
        keepers,
        referrer(),
        [track("ann", "Product Viewed", JAN - 20 * DAY, {}, {"ip": "203.0.113.7"})],
        friend("bob", context={"ip": "203.0.113.7"}),  # a household: allowed now
        friend("cat"),
    )
    referrals.sync()
    assert statuses(keepers) == {
        "first_order:o-bob": ("earned", None),
        "first_order:o-cat": ("earned", None),
    }
    referrals.pay(["first_order:o-bob"])
    # later events show both friends on ann's device: cat's earned reward is voided,
    # bob's paid one stays paid (money has left) and the flag is there for review
    send(
        keepers,
        [track("ann", "Product Viewed", JAN + 50 * DAY, {}, {"device": {"id": "dev-ann"}})],
        [
            track(u, "Product Viewed", JAN + 51 * DAY, {}, {"device": {"id": "dev-ann"}})
            for u in ("bob", "cat")
        ],
    )
    assert referrals.sync()["rewards"]["voided_fraud"] == 1
    assert statuses(keepers) == {
        "first_order:o-bob": ("paid", None),
        "first_order:o-cat": ("void", "fraud: same_device"),
    }
    assert {f for f in flags(keepers) if f[2] == "same_device"} == {
        ("bob", "ann", "same_device"),
        ("cat", "ann", "same_device"),
    }


def test_email_normalisation_in_sql_matches_python(keepers) -> None:
    from keepers.referrals.sql import normalised_email

    samples = [
        "Ann.Smith+x@GMAIL.com",
        "a.n.n@googlemail.com",
        "ann+@example.com",
        "a.b@example.com",
        "nobody",
        "@example.com",
        "x@y@z",
        " Ann@Example.COM ",
    ]
    with keepers.db.transaction() as tx:
        for sample in samples:
            sql = normalised_email("CAST(? AS TEXT)")
            found = tx.execute(f"SELECT {sql}", [sample] * sql.count("?"))[0][0]
            assert found == normalise_email(sample), sample
    assert normalise_email("Ann.Smith+x@GMAIL.com") == "annsmith@gmail.com"
    assert normalise_email("a.b+c@example.com") == "a.b@example.com"


def test_sync_on_a_store_without_emails_codes_or_orders(keepers, referrals) -> None:
    """Columns holding only NULLs (no email anywhere yet) once broke DuckDB's binder on
    the email check; a sync on such a store simply finds nothing."""
    send(
        keepers,
        [track("u1", "Viewed", JAN, {}, {"ip": "1.2.3.4", "device": {"id": "d"}})],
        [track(None, "Viewed", JAN, {}, anonymous_id="v1")],
    )
    with keepers.db.transaction() as tx:  # an attribution whose customers have no email
        tx.execute("INSERT INTO referral_codes VALUES ('U1', 1, 'manual', ?, NULL)", [JAN])
    result = referrals.sync()
    assert result["attributed"] == 0 and result["fraud_flags"] == {}
    assert referrals.metrics()["referred"] == 0


# --- idempotence ------------------------------------------------------------------------------


def test_syncing_twice_gives_the_same_ledger(keepers, referrals, clock) -> None:
    send(
        keepers,
        referrer(),
        friend("bob"),
        friend("cat"),
        [refund("cat", "o-cat", JAN + DAY)],
        friend("dan", context={"device": {"id": "d-1"}}),
        [track("ann", "Viewed", JAN, {}, {"device": {"id": "d-1"}})],
        friend("eve", ordered_at=JAN + 55 * DAY),
    )
    first = referrals.sync(generate_codes=True)
    tables = ("referral_codes", "referral_attributions", "referral_rewards", "referral_fraud_flags")

    def snapshot() -> dict[str, list]:
        return {t: sorted(map(repr, rows(keepers, f"SELECT * FROM {t}"))) for t in tables}

    before = snapshot()
    second = referrals.sync(generate_codes=True)
    assert snapshot() == before
    assert first["attributed"] == 4 and second["attributed"] == 0
    assert second["codes"] == {"adopted": 0, "conflicts": 0, "generated": 0}
    assert set(second["rewards"].values()) == {0} and second["fraud_flags"] == {}
    assert statuses(keepers) == {
        "first_order:o-bob": ("earned", None),
        "first_order:o-cat": ("void", "refunded"),
        "first_order:o-dan": ("void", "fraud: same_device"),
        "first_order:o-eve": ("pending", None),
    }


def test_announced_conversions_make_the_referrer_an_advocate(keepers, clock) -> None:
    """With `announce`, Keepers sends ann a `Referral Converted` event per friend who
    bought (not for a flagged pair), once; the lifecycle counts it in `referrals_made`."""
    referrals = ReferralService(keepers.db, clock, keepers.ingest_messages)
    referrals.set_programme({"announce": True})
    send(
        keepers,
        referrer(),
        [track("ann", "Viewed", JAN - 20 * DAY, {}, {"device": {"id": "d-ann"}})],
        friend("bob"),
        friend("cat", context={"device": {"id": "d-ann"}}),  # flagged: not announced
        [
            identify("dan", JAN, email="dan@example.org"),
            track("dan", "Signed Up", JAN, {"referral_code": "ANN1"}),
        ],  # no order yet
    )
    assert referrals.sync()["announced"] == 1
    assert referrals.sync()["announced"] == 0
    events = rows(
        keepers,
        "SELECT e.timestamp, c.user_id FROM events e JOIN customers c "
        "ON c.customer_id = e.customer_id WHERE e.event = 'Referral Converted'",
    )
    assert [(t.astimezone(UTC), u) for t, u in events] == [(JAN, "ann")]
    keepers.compute(full=True)
    made = rows(
        keepers,
        "SELECT c.user_id, s.referrals_made FROM customer_state s JOIN customers c "
        "ON c.customer_id = s.customer_id WHERE c.user_id = 'ann'",
    )
    assert made == [("ann", 1)]
    assert attributions(keepers)["bob"] == ("ann", "ANN1", "property")  # not re-attributed


def test_the_servers_scheduled_tick_syncs_referrals_before_it_computes(settings) -> None:
    """`keepers serve` runs no command: its compute tick syncs the programme first, so
    the announced conversion is in the very compute that follows."""
    from keepers.services.scheduler import ComputeScheduler

    keepers = Keepers.open(settings, Clock(JAN + 60 * DAY))
    try:
        keepers.referrals.set_programme({"announce": True})
        send(keepers, referrer(), friend("bob"))
        ComputeScheduler(keepers, 0).tick()
        assert statuses(keepers) == {"first_order:o-bob": ("earned", None)}
        made = rows(
            keepers,
            "SELECT c.user_id, s.referrals_made FROM customer_state s JOIN customers c "
            "ON c.customer_id = s.customer_id WHERE c.user_id = 'ann'",
        )
        assert made == [("ann", 1)]
    finally:
        keepers.close()


# --- numbers and the command line ---------------------------------------------------------


def test_leaderboard_and_metrics(keepers, referrals) -> None:
    send(
        keepers,
        referrer("ann", "ANN1"),
        referrer("zoe", "ZOE1"),
        [track("ann", "Referral Sent", JAN - 9 * DAY, {"referral_code": "ANN1"}) for _ in "abc"],
        [track("zoe", "Referral Sent", JAN - 9 * DAY, {"referral_code": "ZOE1"})],
        friend("bob", "ANN1", value=30),
        [order("bob", "o-bob-2", JAN + DAY, 20)],
        friend("cat", "ANN1", value=10),
        [refund("cat", "o-cat", JAN + DAY, total=10)],
        friend("dan", "ZOE1", value=100),
        [
            identify("eve", JAN, email="eve@example.org"),
            track("eve", "Signed Up", JAN, {"referral_code": "ZOE1"}),
        ],  # no order yet
    )
    referrals.sync()
    board = referrals.leaderboard()["rows"]
    assert [
        (r["rank"], r["user_id"], r["invites"], r["referred"], r["converted"]) for r in board
    ] == [
        (1, "ann", 3, 2, 2),
        (2, "zoe", 1, 2, 1),
    ]
    assert (board[0]["revenue"], board[0]["earned_amount"]) == (60.0, 10.0)
    assert (board[1]["revenue"], board[1]["earned_amount"]) == (100.0, 10.0)
    totals = referrals.metrics()
    assert (totals["invites"], totals["referrers"], totals["referred"], totals["converted"]) == (
        4,
        2,
        4,
        3,
    )
    assert totals["conversion_rate"] == 0.75 and totals["converted_per_invite"] == 0.75
    assert (totals["revenue_from_referred"], totals["refunded_from_referred"]) == (160.0, 10.0)
    customer = referrals.customer("bob")
    assert customer["referred_by"]["code"] == "ANN1" and customer["referred"] == 0


def test_the_command_line(keepers, referrals, settings, tmp_path) -> None:
    import json

    from keepers.cli_referrals import referrals_app

    send(keepers, referrer(), friend("bob"), friend("cat"))
    keepers.close()  # the CLI opens the store itself
    db = ["--db", settings.database_url]
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(referrals_app, [*args, *db, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert run("sync")["attributed"] == 2
    assert [r["user_id"] for r in run("leaderboard")["rows"]] == ["ann"]
    assert run("rewards", "--status", "earned")["statuses"]["earned"] == 2
    assert run("pay", "first_order:o-bob", "--reference", "r-1")["paid"] == 1
    assert run("void", "first_order:o-cat", "--reason", "test")["voided"] == 1
    assert run("fraud")["rows"] == []
    assert run("metrics")["converted"] == 2
    assert run("codes", "--generate", "--for", "all")["generated"] == 2
    assert run("codes", "--customer", "bob", "--set", "BOB-1")["code"] == "BOB-1"
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - points: 100\n")
    assert run("programme", "--set", str(rules))["version"] == 1
    assert run("programme")["programme"]["rules"][0]["points"] == 100
    bad = runner.invoke(referrals_app, ["pay", "first_order:o-cat", *db])
    assert bad.exit_code == 2 and "only earned rewards can be paid" in bad.output
    missing = runner.invoke(referrals_app, ["rewards", "--referrer", "nobody", *db])
    assert missing.exit_code == 2 and "no customer 'nobody'" in missing.output


def test_no_input_makes_the_referral_api_fail(duckdb_url) -> None:
    """Schemathesis over the referral routes: never a 5xx, every status documented."""
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import status_code_conformance

    from keepers.web.app import create_app

    token = "fuzz-token"
    opened = Keepers.open(Settings(database_url=duckdb_url))
    try:
        send(opened, referrer(), friend("bob"))
        app = create_app(Settings(database_url=duckdb_url, admin_token=token), opened)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [op.ok() for op in schema.get_all_operations() if "/referrals" in op.ok().path]
        assert len(operations) >= 14
        for operation in operations:

            @given(case=operation.as_strategy())
            @hypothesis_settings(
                max_examples=15,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def check(case) -> None:
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {token}"},
                    checks=[not_a_server_error, status_code_conformance],
                )

            check()
    finally:
        opened.close()
