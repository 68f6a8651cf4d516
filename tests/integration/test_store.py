"""The store on DuckDB and PostgreSQL: identities, merges, dedupe, orders, accounts."""

from __future__ import annotations

import json
import threading

from keepers.store.migrations import latest_version, migrate
from tests.helpers import rows, scalar, track


def ingest(keepers, *messages, source="test"):
    return keepers.ingest_messages(list(messages), source)


def customer_of(keepers, message_id):
    return scalar(keepers, "SELECT customer_id FROM events WHERE message_id = ?", [message_id])


def test_migrations_are_recorded_and_running_them_again_changes_nothing(keepers):
    assert migrate(keepers.db) == []
    versions = rows(keepers, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions[-1][0] == latest_version()


def test_a_resent_batch_is_acknowledged_and_stored_once(keepers):
    batch = [track("u1", messageId="m1"), track("u1", messageId="m2")]
    first = ingest(keepers, *batch)
    again = ingest(keepers, *batch)
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (0, 2)
    assert scalar(keepers, "SELECT count(*) FROM events") == 2


def test_the_same_message_id_twice_in_one_batch_is_stored_once(keepers):
    report = ingest(keepers, track("u1", messageId="m1"), track("u1", messageId="m1"))
    assert report.stored == 1 and report.duplicates == 1


def test_the_same_message_id_from_two_sources_is_two_events(keepers):
    ingest(keepers, track("u1", messageId="m1"), source="a")
    ingest(keepers, track("u1", messageId="m1"), source="b")
    assert scalar(keepers, "SELECT count(*) FROM events") == 2


def test_identify_merges_the_anonymous_history_into_the_new_customer(keepers):
    ingest(
        keepers,
        {"type": "page", "anonymousId": "a1", "messageId": "p1"},
        {"type": "track", "anonymousId": "a1", "event": "Product Viewed", "messageId": "p2"},
    )
    ingest(
        keepers,
        {
            "type": "identify",
            "userId": "u1",
            "anonymousId": "a1",
            "messageId": "i1",
            "traits": {"email": " Ann@Example.com ", "name": "Ann"},
        },
    )
    assert customer_of(keepers, "p1") == customer_of(keepers, "i1")
    row = rows(
        keepers, "SELECT user_id, anonymous_id, email FROM customers WHERE merged_into IS NULL"
    )
    assert row == [("u1", "a1", "ann@example.com")]


def test_an_anonymous_profile_meeting_an_existing_user_is_merged_into_it(keepers):
    ingest(
        keepers,
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "i0",
            "traits": {"plan": "pro"},
            "timestamp": "2025-05-01T00:00:00Z",
        },
    )
    ingest(
        keepers,
        {
            "type": "page",
            "anonymousId": "a2",
            "messageId": "p1",
            "timestamp": "2025-01-01T00:00:00Z",
        },
        track(None, anonymousId="a2", messageId="p2", event="Product Added"),
    )
    absorbed = customer_of(keepers, "p1")
    ingest(keepers, {"type": "identify", "userId": "u1", "anonymousId": "a2", "messageId": "i1"})
    survivor = customer_of(keepers, "i0")
    assert customer_of(keepers, "p1") == customer_of(keepers, "p2") == survivor != absorbed
    assert (
        scalar(keepers, "SELECT merged_into FROM customers WHERE customer_id = ?", [absorbed])
        == survivor
    )
    assert scalar(keepers, "SELECT count(*) FROM customers WHERE merged_into IS NULL") == 1
    history = rows(keepers, "SELECT min(timestamp) FROM events WHERE customer_id = ?", [survivor])[
        0
    ][0]
    assert (history.year, history.month) == (2025, 1)  # the anonymous history counts


def test_a_shared_device_does_not_merge_two_known_users(keepers):
    ingest(
        keepers, {"type": "identify", "userId": "alice", "anonymousId": "device", "messageId": "i1"}
    )
    ingest(
        keepers, {"type": "identify", "userId": "bob", "anonymousId": "device", "messageId": "i2"}
    )
    assert customer_of(keepers, "i1") != customer_of(keepers, "i2")
    assert scalar(keepers, "SELECT count(*) FROM customers WHERE merged_into IS NULL") == 2


def test_alias_merges_the_previous_id_into_the_user(keepers):
    ingest(keepers, track("old-id", messageId="t1"), track("new-id", messageId="t2"))
    ingest(
        keepers, {"type": "alias", "previousId": "old-id", "userId": "new-id", "messageId": "a1"}
    )
    assert customer_of(keepers, "t1") == customer_of(keepers, "t2") == customer_of(keepers, "a1")


def test_merge_within_one_batch_creates_a_single_customer(keepers):
    ingest(
        keepers,
        {"type": "page", "anonymousId": "a1", "messageId": "p1"},
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i1"},
        track("u1", messageId="t1"),
    )
    assert scalar(keepers, "SELECT count(*) FROM customers") == 1


def test_identify_traits_merge_with_later_values_winning(keepers):
    ingest(
        keepers,
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "i1",
            "traits": {"plan": "free", "city": "Oslo"},
        },
    )
    ingest(
        keepers, {"type": "identify", "userId": "u1", "messageId": "i2", "traits": {"plan": "pro"}}
    )
    traits = scalar(keepers, "SELECT traits FROM customers")
    loaded = json.loads(traits) if isinstance(traits, str) else traits
    assert loaded == {"plan": "pro", "city": "Oslo"}


def test_order_completed_becomes_an_order_with_line_items(keepers):
    order = track(
        "u1",
        event="Order Completed",
        messageId="o1",
        timestamp="2025-03-01T10:00:00Z",
        properties={
            "order_id": "A-1",
            "total": 34,
            "revenue": 30,
            "currency": "EUR",
            "products": [
                {"product_id": "p1", "price": 10, "quantity": 2},
                {"product_id": "p2", "price": 10},
            ],
        },
    )
    ingest(keepers, order)
    ingest(keepers, order)  # resent: no second order
    assert rows(keepers, "SELECT order_id, revenue, total, currency FROM orders") == [
        ("A-1", 30.0, 34.0, "EUR")
    ]
    assert rows(
        keepers, "SELECT line_no, product_id, quantity FROM order_items ORDER BY line_no"
    ) == [(1, "p1", 2.0), (2, "p2", 1.0)]


def test_the_same_order_id_in_a_second_message_does_not_duplicate_the_order(keepers):
    props = {"order_id": "A-1", "revenue": 10, "products": [{"product_id": "p1", "price": 10}]}
    ingest(
        keepers,
        track("u1", event="Order Completed", messageId="o1", properties=props),
        track("u1", event="Order Completed", messageId="o2", properties=props),
    )
    assert scalar(keepers, "SELECT count(*) FROM orders") == 1
    assert scalar(keepers, "SELECT count(*) FROM order_items") == 1


def test_refunds_count_against_net_revenue_even_when_they_arrive_first(keepers):
    ingest(
        keepers,
        track(
            "u1", event="Order Refunded", messageId="r1", properties={"order_id": "A-1", "total": 4}
        ),
    )
    ingest(
        keepers,
        track(
            "u1",
            event="Order Completed",
            messageId="o1",
            properties={"order_id": "A-1", "revenue": 10},
        ),
        track(
            "u1",
            event="Order Completed",
            messageId="o2",
            properties={"order_id": "A-2", "revenue": 5},
        ),
    )
    status = keepers.status()
    assert status["revenue"] == 15 and status["net_revenue"] == 11
    assert status["refunded_orders"] == 1


def test_group_links_customers_to_an_account(keepers):
    ingest(
        keepers,
        {
            "type": "group",
            "userId": "u1",
            "groupId": "acme",
            "messageId": "g1",
            "traits": {"name": "Acme", "employees": 40},
        },
        track("u2", event="Trial Started", messageId="t1", context={"groupId": "acme"}),
    )
    assert rows(keepers, "SELECT account_id, name FROM accounts") == [("acme", "Acme")]
    assert scalar(keepers, "SELECT count(*) FROM account_members WHERE account_id = 'acme'") == 2


def test_account_created_names_the_account_as_the_b2b_saas_spec_says(keepers):
    ingest(
        keepers,
        track(
            "u1",
            event="Account Created",
            messageId="a1",
            properties={"account_name": "Initech"},
            context={"groupId": "acct-9"},
        ),
    )
    assert rows(keepers, "SELECT account_id, name FROM accounts") == [("acct-9", "Initech")]


def test_strings_with_nul_characters_are_stored_without_error(keepers):
    report = ingest(
        keepers,
        track(
            "u1", messageId="n1", properties={"q": "a\x00b"}, context={"page": {"title": "\x00"}}
        ),
    )
    assert report.stored == 1


def test_status_counts_customers_events_orders_and_revenue(keepers):
    ingest(
        keepers,
        {"type": "page", "anonymousId": "visitor", "messageId": "p1"},
        track(
            "u1",
            event="Order Completed",
            messageId="o1",
            properties={"order_id": "1", "revenue": "12.50"},
        ),
    )
    status = keepers.status()
    assert {k: status[k] for k in ("customers", "known_customers", "events", "orders")} == {
        "customers": 2,
        "known_customers": 1,
        "events": 2,
        "orders": 1,
    }
    assert status["revenue"] == 12.5


def test_concurrent_writers_never_split_one_user_into_two_customers(keepers):
    """Many threads ingesting events of the same new users at once (group commit path)."""
    keepers.start_writer()
    errors = []

    def send(worker: int) -> None:
        try:
            for n in range(20):
                ingest(
                    keepers,
                    track(f"user-{n % 5}", messageId=f"w{worker}-{n}"),
                    {
                        "type": "identify",
                        "userId": f"user-{n % 5}",
                        "anonymousId": f"anon-{worker}-{n % 3}",
                        "messageId": f"i{worker}-{n}",
                    },
                )
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert scalar(keepers, "SELECT count(*) FROM events") == 6 * 20 * 2
    assert scalar(keepers, "SELECT count(DISTINCT customer_id) FROM events") == 5
    assert scalar(keepers, "SELECT count(*) FROM customers WHERE merged_into IS NULL") == 5
