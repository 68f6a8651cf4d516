"""The demo shop generator: deterministic, Segment-shaped, and behaviourally rich.

Most tests share one generated shop (2,000 customers) and check that the behaviour the
analytics rely on is really there: merges of anonymous history, BTYD-like buying, refunds,
email fatigue, NPS, referrals, replenishment, co-purchase affinity and B2B deals.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keepers.demo.generator import DemoCatalog, default_catalog, generate

END = datetime(2025, 6, 1, tzinfo=UTC)
START = END - timedelta(days=2 * 365.25)
CUSTOMERS = 2_000


def _ts(message: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(message["timestamp"])


@dataclass
class Shop:
    """One generated shop, indexed the way the assertions need it."""

    lists: list[list[dict[str, Any]]]
    messages: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    orders: dict[str, list[tuple[datetime, dict]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    channels: dict[str, str] = field(default_factory=dict)  # userId -> acquisition_channel

    def __post_init__(self) -> None:
        self.messages = [m for batch in self.lists for m in batch]
        for m in self.messages:
            if m["type"] == "track":
                self.events[m["event"]].append(m)
                if m["event"] == "Order Completed":
                    self.orders[m["userId"]].append((_ts(m), m["properties"]))
            elif m["type"] == "identify" and "acquisition_channel" in m["traits"]:
                self.channels[m["userId"]] = m["traits"]["acquisition_channel"]
        for history in self.orders.values():
            history.sort(key=lambda item: item[0])


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop(list(generate(CUSTOMERS, seed=11, end=END)))


def _dump(customers: int, seed: int, end: datetime = END) -> str:
    return json.dumps(list(generate(customers, seed=seed, end=end)), sort_keys=False)


# -- determinism and message shape ---------------------------------------------------------


def test_same_seed_gives_byte_identical_output() -> None:
    assert _dump(300, seed=5) == _dump(300, seed=5)


def test_different_seed_gives_different_output() -> None:
    assert _dump(300, seed=5) != _dump(300, seed=6)


def test_different_end_moves_the_whole_history() -> None:
    later = END + timedelta(days=30)
    stamps = [m["timestamp"] for batch in generate(200, seed=5, end=later) for m in batch]
    assert max(stamps) > END.isoformat()


def test_every_message_has_type_ids_and_a_timestamp_inside_the_window(shop: Shop) -> None:
    for m in shop.messages:
        assert m["type"] in {"identify", "track", "page", "group"}
        assert m["userId"] or m["anonymousId"]
        assert m["integrations"] == {}
        assert isinstance(m["context"], dict)
        stamp = _ts(m)
        assert stamp.utcoffset() == timedelta(0)
        assert m["timestamp"].endswith("+00:00")
        assert START <= stamp < END


def test_message_ids_are_unique_and_at_most_100_characters(shop: Shop) -> None:
    ids = [m["messageId"] for m in shop.messages]
    assert len(ids) == len(set(ids))
    assert max(len(i) for i in ids) <= 100


def test_messages_within_each_list_are_in_time_order(shop: Shop) -> None:
    for batch in shop.lists:
        stamps = [_ts(m) for m in batch]
        assert stamps == sorted(stamps)


def test_type_specific_fields_are_present(shop: Shop) -> None:
    for m in shop.messages:
        if m["type"] == "track":
            assert m["event"] and isinstance(m["properties"], dict)
        elif m["type"] == "page":
            assert m["name"]
            assert {"path", "url", "title", "referrer"} <= m["properties"].keys()
        elif m["type"] == "group":
            assert m["groupId"].startswith("acct-")
            assert {"name", "industry", "employees", "plan", "website"} <= m["traits"].keys()
        else:
            assert m["userId"] and isinstance(m["traits"], dict)


def test_volume_is_25_to_50_messages_per_customer(shop: Shop) -> None:
    assert 25 <= len(shop.messages) / CUSTOMERS <= 50


def test_default_end_is_today_at_midnight_utc() -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    stamps = [_ts(m) for batch in generate(50, seed=1) for m in batch]
    assert max(stamps) < today
    assert min(stamps) >= today - timedelta(days=2 * 365.25)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        generate(-1)
    with pytest.raises(ValueError):
        generate(10, years=0)


# -- identity ------------------------------------------------------------------------------


def test_anonymous_history_is_followed_by_an_identify_with_both_ids(shop: Shop) -> None:
    merged = 0
    for batch in shop.lists:
        first_known = next((i for i, m in enumerate(batch) if m["userId"]), None)
        if not first_known:  # never identified, or nothing anonymous left in the window
            continue
        anonymous = {m["anonymousId"] for m in batch[:first_known]}
        identify = batch[first_known]
        assert identify["type"] == "identify"
        assert identify["anonymousId"] in anonymous
        assert identify["userId"].startswith("u-")
        merged += 1
    assert merged > CUSTOMERS // 2


def test_some_visitors_never_identify(shop: Shop) -> None:
    anonymous_only = [b for b in shop.lists if not any(m["userId"] for m in b)]
    assert len(anonymous_only) > CUSTOMERS * 0.1
    assert all(m["type"] in {"page", "track"} for b in anonymous_only for m in b)


def test_identify_traits_describe_the_person(shop: Shop) -> None:
    first = [
        m for m in shop.messages if m["type"] == "identify" and "acquisition_channel" in m["traits"]
    ]
    assert len(first) > CUSTOMERS // 2
    for m in first:
        traits = m["traits"]
        assert {"email", "first_name", "last_name", "name", "country", "city", "age"} <= set(traits)
        assert {"created_at", "email_opt_in", "interests", "price_sensitivity"} <= set(traits)
        assert 18 <= traits["age"] <= 80
    assert len({m["traits"]["email"] for m in first}) == len(first)
    assert {m["traits"]["price_sensitivity"] for m in first} == {"low", "medium", "high"}


def test_first_touches_carry_utm_campaigns(shop: Shop) -> None:
    campaigns = [m["context"]["campaign"] for m in shop.messages if "campaign" in m["context"]]
    mediums = {c["medium"] for c in campaigns}
    assert {"cpc", "social", "affiliate", "email"} <= mediums


def test_signups_grow_over_time(shop: Shop) -> None:
    middle = START + (END - START) / 2
    signups = [_ts(m) for m in shop.events["Signed Up"]]
    assert sum(t >= middle for t in signups) > 1.3 * sum(t < middle for t in signups)


# -- orders --------------------------------------------------------------------------------


def test_order_ids_are_unique(shop: Shop) -> None:
    ids = [m["properties"]["order_id"] for m in shop.events["Order Completed"]]
    assert len(ids) > CUSTOMERS
    assert len(ids) == len(set(ids))


def test_revenue_is_line_total_minus_discount_and_total_adds_shipping_and_tax(
    shop: Shop,
) -> None:
    for m in shop.events["Order Completed"]:
        p = m["properties"]
        lines = sum(item["price"] * item["quantity"] for item in p["products"])
        assert p["revenue"] == pytest.approx(lines - p["discount"], abs=0.011)
        assert p["total"] == pytest.approx(p["revenue"] + p["shipping"] + p["tax"], abs=0.011)
        assert p["revenue"] > 0
        for item in p["products"]:
            assert {"product_id", "sku", "name", "category", "price", "quantity"} <= set(item)


def test_coupons_are_used_sometimes_and_currency_is_mostly_usd(shop: Shop) -> None:
    props = [m["properties"] for m in shop.events["Order Completed"]]
    with_coupon = sum("coupon" in p for p in props)
    assert 0.03 * len(props) < with_coupon < 0.4 * len(props)
    currencies = Counter(p["currency"] for p in props)
    assert set(currencies) == {"USD", "EUR"}
    assert currencies["EUR"] < 0.25 * len(props)


def test_many_carts_are_abandoned(shop: Shop) -> None:
    assert len(shop.events["Checkout Started"]) > 1.1 * len(shop.events["Order Completed"])
    carts = {m["properties"]["cart_id"] for m in shop.events["Product Added"]}
    assert len(carts) > 1.3 * len(shop.events["Order Completed"])


def test_there_are_one_time_and_repeat_buyers(shop: Shop) -> None:
    counts = Counter(len(history) for history in shop.orders.values())
    buyers = sum(counts.values())
    assert counts[1] > 0.2 * buyers
    assert sum(n for k, n in counts.items() if k >= 5) > 0.1 * buyers


def test_some_customers_last_ordered_long_before_end(shop: Shop) -> None:
    lapsed = [u for u, h in shop.orders.items() if END - h[-1][0] > timedelta(days=365)]
    assert len(lapsed) > 0.05 * len(shop.orders)


def test_some_lapsed_customers_come_back_after_a_long_gap(shop: Shop) -> None:
    def longest_gap(history: list[tuple[datetime, dict]]) -> timedelta:
        times = [t for t, _ in history]
        return max((b - a for a, b in itertools.pairwise(times)), default=timedelta(0))

    returned = [u for u, h in shop.orders.items() if longest_gap(h) > timedelta(days=180)]
    assert len(returned) > 0.02 * len(shop.orders)


def test_refunds_are_a_few_percent_of_orders_and_follow_their_order(shop: Shop) -> None:
    ordered = {m["properties"]["order_id"]: _ts(m) for m in shop.events["Order Completed"]}
    refunds = shop.events["Order Refunded"]
    assert 0.02 < len(refunds) / len(ordered) < 0.06
    for m in refunds:
        placed = ordered[m["properties"]["order_id"]]
        assert timedelta(days=1) < _ts(m) - placed < timedelta(days=14)
        assert m["properties"]["currency"] in {"USD", "EUR"}


def test_channels_differ_in_conversion(shop: Shop) -> None:
    def conversion(channels: set[str]) -> float:
        users = [u for u, c in shop.channels.items() if c in channels]
        return sum(u in shop.orders for u in users) / len(users)

    assert conversion({"referral", "email"}) > conversion({"social", "affiliate"}) + 0.15


# -- catalogue, affinity and replenishment -------------------------------------------------


def test_catalog_has_categories_prices_and_consumables() -> None:
    catalog = default_catalog()
    assert isinstance(catalog, DemoCatalog)
    assert 60 <= len(catalog.products) <= 120
    assert 7 <= len(catalog.categories) <= 10
    assert len({p.product_id for p in catalog.products}) == len(catalog.products)
    assert len({p.sku for p in catalog.products}) == len(catalog.products)
    consumables = catalog.consumables()
    assert len(consumables) >= 15
    assert all(p.reorder_days and p.reorder_days > 0 for p in consumables)
    assert all(catalog.get(c) for p in catalog.products for c in p.companions)


def test_companion_products_are_bought_together(shop: Shop) -> None:
    catalog = default_catalog()
    baskets = [
        {line["product_id"] for line in p["products"]}
        for history in shop.orders.values()
        for _, p in history
        if len(p["products"]) > 1
    ]
    seen = Counter(pid for basket in baskets for pid in basket)
    observed = expected = 0.0
    for basket in baskets:
        for pid in basket:
            observed += sum(c in basket for c in catalog.get(pid).companions)
    for pid, n in seen.items():
        expected += sum(n * seen[c] / len(baskets) for c in catalog.get(pid).companions)
    assert observed > 4 * expected


def test_consumables_are_reordered_at_a_regular_personal_interval(shop: Shop) -> None:
    catalog = default_catalog()
    variations, means = [], defaultdict(list)
    for history in shop.orders.values():
        bought = defaultdict(list)
        for t, p in history:
            for line in p["products"]:
                bought[line["product_id"]].append(t)
        for pid, times in bought.items():
            if len(times) < 4 or not catalog.get(pid).consumable:
                continue
            gaps = [(b - a).total_seconds() / 86400 for a, b in itertools.pairwise(times)]
            variations.append(statistics.pstdev(gaps) / statistics.mean(gaps))
            means[pid].append(statistics.mean(gaps))
    assert len(variations) > 100
    assert statistics.median(variations) < 0.15
    # the interval is personal: customers re-ordering the same product differ
    spread = [max(m) / min(m) for m in means.values() if len(m) >= 5]
    assert spread and statistics.median(spread) > 1.3


# -- engagement: email, NPS, referrals ----------------------------------------------------


def test_email_events_follow_the_email_spec(shop: Shop) -> None:
    for name in ("Email Delivered", "Email Opened", "Email Link Clicked", "Unsubscribed"):
        assert shop.events[name], name
        for m in shop.events[name][:200]:
            keys = {"email_id", "email_subject", "campaign_id", "campaign_name"}
            assert keys <= m["properties"].keys()
    delivered = {m["properties"]["email_id"] for m in shop.events["Email Delivered"]}
    assert all(m["properties"]["email_id"] in delivered for m in shop.events["Email Opened"])


def test_unsubscribes_stop_newsletters(shop: Shop) -> None:
    unsubscribed = {m["userId"]: _ts(m) for m in shop.events["Unsubscribed"]}
    assert len(unsubscribed) > 10
    for m in shop.events["Email Delivered"]:
        when = unsubscribed.get(m["userId"])
        if when is not None and m["properties"]["campaign_id"] != "welcome":
            assert _ts(m) < when


def test_disengaged_customers_open_fewer_emails(shop: Shop) -> None:
    opened = {m["properties"]["email_id"] for m in shop.events["Email Opened"]}
    rates: dict[str, list[bool]] = {"engaged": [], "lapsed": []}
    for m in shop.events["Email Delivered"]:
        history = shop.orders.get(m["userId"])
        sent = _ts(m)
        before = [t for t, _ in history or [] if t <= sent]
        if not before:
            continue
        after = any(t > sent for t, _ in history)
        if sent - before[-1] <= timedelta(days=30):
            rates["engaged"].append(m["properties"]["email_id"] in opened)
        elif sent - before[-1] > timedelta(days=240) and not after:
            rates["lapsed"].append(m["properties"]["email_id"] in opened)
    engaged = sum(rates["engaged"]) / len(rates["engaged"])
    lapsed = sum(rates["lapsed"]) / len(rates["lapsed"])
    assert engaged > 1.4 * lapsed


def test_nps_has_promoters_and_detractors(shop: Shop) -> None:
    scores = [m["properties"]["score"] for m in shop.events["NPS Survey Answered"]]
    assert len(scores) > 100
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores)
    assert sum(s >= 9 for s in scores) > 0.15 * len(scores)
    assert sum(s <= 6 for s in scores) > 0.1 * len(scores)
    comments = [m for m in shop.events["NPS Survey Answered"] if "comment" in m["properties"]]
    assert 0 < len(comments) < len(scores)


def test_repeat_buyers_score_higher_than_one_time_buyers(shop: Shop) -> None:
    def mean_score(keep: Any) -> float:
        scores = [
            m["properties"]["score"]
            for m in shop.events["NPS Survey Answered"]
            if keep(len(shop.orders[m["userId"]]))
        ]
        return statistics.mean(scores)

    assert mean_score(lambda n: n >= 3) > mean_score(lambda n: n == 1) + 0.6


def test_scores_after_a_refund_are_lower(shop: Shop) -> None:
    refunded = defaultdict(list)
    for m in shop.events["Order Refunded"]:
        refunded[m["userId"]].append(_ts(m))
    refunded_orders = {m["properties"]["order_id"] for m in shop.events["Order Refunded"]}
    after, others = [], []
    for m in shop.events["NPS Survey Answered"]:
        hit = m["properties"]["order_id"] in refunded_orders or any(
            t <= _ts(m) for t in refunded[m["userId"]]
        )
        (after if hit else others).append(m["properties"]["score"])
    assert len(after) > 10
    assert statistics.mean(after) < statistics.mean(others) - 1.0


def test_referral_codes_belong_to_existing_customers(shop: Shop) -> None:
    owners = {
        m["traits"]["referral_code"]: m["userId"]
        for m in shop.messages
        if m["type"] == "identify" and "referral_code" in m["traits"]
    }
    sent = shop.events["Referral Sent"]
    assert sent and all(owners[m["properties"]["referral_code"]] == m["userId"] for m in sent)
    referred = [m for m in shop.events["Signed Up"] if "referral_code" in m["properties"]]
    assert len(referred) > 10
    for m in referred:
        code = m["properties"]["referral_code"]
        assert code in owners and owners[code] != m["userId"]
        assert m["context"]["referrer"] == {"type": "referral", "id": code}


def test_referrers_are_rewarded_when_the_friend_orders(shop: Shop) -> None:
    orders = {m["properties"]["order_id"]: m for m in shop.events["Order Completed"]}
    converted = shop.events["Referral Converted"]
    assert len(converted) > 5
    for m in converted:
        order = orders[m["properties"]["order_id"]]
        assert order["userId"] == m["properties"]["referred_user_id"] != m["userId"]
        assert _ts(m) > _ts(order)


def test_referred_customers_sign_up_after_the_referral_was_sent(shop: Shop) -> None:
    first_sent: dict[str, datetime] = {}
    for m in shop.events["Referral Sent"]:
        code = m["properties"]["referral_code"]
        first_sent[code] = min(first_sent.get(code, _ts(m)), _ts(m))
    for batch in shop.lists:
        signed = [m for m in batch if m.get("event") == "Signed Up"]
        if signed and "referral_code" in signed[0]["properties"]:
            assert _ts(batch[0]) > first_sent[signed[0]["properties"]["referral_code"]]


# -- B2B -----------------------------------------------------------------------------------


def test_accounts_are_about_one_and_a_half_percent_and_at_least_three() -> None:
    groups = {m["groupId"] for b in generate(20, seed=2, end=END) for m in b if "groupId" in m}
    assert len(groups) == 3


def test_accounts_have_contacts_trials_and_deals(shop: Shop) -> None:
    groups = {m["groupId"] for m in shop.messages if m["type"] == "group"}
    assert 0.01 * CUSTOMERS <= len(groups) <= 0.02 * CUSTOMERS
    trials = {m["context"]["groupId"] for m in shop.events["Trial Started"]}
    assert trials == groups
    for name in ("Account Created", "Trial Ended", "Deal Created", "Deal Stage Changed"):
        assert shop.events[name], name
    assert shop.events["Deal Won"] and shop.events["Deal Lost"]
    contacts = Counter(
        m["context"]["groupId"] for m in shop.events["Signed Up"] if "groupId" in m["context"]
    )
    assert max(contacts.values()) > 1


def test_deal_events_carry_the_deal_properties(shop: Shop) -> None:
    deal_events = ("Deal Created", "Deal Stage Changed", "Deal Won", "Deal Lost")
    for name in deal_events:
        for m in shop.events[name]:
            p = m["properties"]
            assert {"deal_id", "amount", "currency", "stage", "close_date", "owner"} <= set(p)
            assert m["userId"] and m["context"]["groupId"].startswith("acct-")
            datetime.strptime(p["close_date"], "%Y-%m-%d")
    won = {m["properties"]["deal_id"] for m in shop.events["Deal Won"]}
    lost = {m["properties"]["deal_id"] for m in shop.events["Deal Lost"]}
    assert not won & lost
    created = {m["properties"]["deal_id"] for m in shop.events["Deal Created"]}
    assert won | lost <= created


def test_b2b_contacts_have_a_plan_and_a_company(shop: Shop) -> None:
    b2b = [m for m in shop.messages if m["type"] == "identify" and "company" in m["traits"]]
    assert b2b
    for m in b2b:
        assert m["traits"]["plan"] == "trial"
        assert m["traits"]["company"]["id"] == m["context"]["groupId"]
        assert m["anonymousId"]
