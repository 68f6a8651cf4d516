"""Write a group of validated events in one transaction: identities, the event log, and what
the events mean for customers, accounts and orders — each effect applied once per stored
event (a resent message changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from keepers.domain.commerce import order_from_event, refund_from_event
from keepers.domain.events import Event, to_json
from keepers.store.database import Tx
from keepers.store.identity import apply_resolution, resolve_identities

TS = pa.timestamp("us", tz="UTC")
IDENTITY_LOCK = 720_401  # PostgreSQL advisory lock serialising identity resolution


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that could not be stored, kept for the user to inspect."""

    source_id: str
    received_at: datetime
    code: str
    reason: str
    payload: str | None


def write_events(
    tx: Tx, events: list[Event], sources: list[str], rejected: list[Rejection], now: datetime
) -> set[tuple[str, str]]:
    """Store the group; return the (source, messageId) keys that were new."""
    if rejected:
        _insert_rejections(tx, rejected)
    if not events:
        return set()
    events, sources = _first_occurrences(events, sources)
    if tx.dialect.name == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", [IDENTITY_LOCK])
    customers = apply_resolution(tx, resolve_identities(tx, events), now)
    new_keys = _insert_events(tx, events, sources, customers)
    fresh = [i for i, e in enumerate(events) if (sources[i], e.message_id) in new_keys]
    if fresh:
        _update_customers(tx, [events[i] for i in fresh], [customers[i] for i in fresh], now)
        _write_accounts(tx, [events[i] for i in fresh], [customers[i] for i in fresh], now)
        _write_orders(tx, [(sources[i], events[i], customers[i]) for i in fresh])
    return new_keys


def _first_occurrences(events: list[Event], sources: list[str]) -> tuple[list[Event], list[str]]:
    seen: set[tuple[str, str]] = set()
    kept_events, kept_sources = [], []
    for event, source in zip(events, sources, strict=True):
        key = (source, event.message_id)
        if key not in seen:
            seen.add(key)
            kept_events.append(event)
            kept_sources.append(source)
    return kept_events, kept_sources


def _insert_rejections(tx: Tx, rejected: list[Rejection]) -> None:
    tx.stage(
        "stage_rejected",
        pa.table(
            {
                "source_id": [r.source_id for r in rejected],
                "received_at": pa.array([r.received_at for r in rejected], TS),
                "code": [r.code for r in rejected],
                "reason": [r.reason for r in rejected],
                "payload": pa.array([r.payload for r in rejected], pa.string()),
            }
        ),
    )
    tx.execute("INSERT INTO rejected_events SELECT * FROM stage_rejected")


def _insert_events(
    tx: Tx, events: list[Event], sources: list[str], customers: list[int]
) -> set[tuple[str, str]]:
    j = tx.dialect.json_type
    tx.stage(
        "stage_events",
        pa.table(
            {
                "source_id": pa.array(sources, pa.string()),
                "message_id": pa.array([e.message_id for e in events], pa.string()),
                "customer_id": pa.array(customers, pa.int64()),
                "type": pa.array([e.type for e in events], pa.string()),
                "event": pa.array([e.event for e in events], pa.string()),
                "user_id": pa.array([e.user_id for e in events], pa.string()),
                "anonymous_id": pa.array([e.anonymous_id for e in events], pa.string()),
                "group_id": pa.array([e.group_id for e in events], pa.string()),
                "timestamp": pa.array([e.timestamp for e in events], TS),
                "original_timestamp": pa.array([e.original_timestamp for e in events], TS),
                "sent_at": pa.array([e.sent_at for e in events], TS),
                "received_at": pa.array([e.received_at for e in events], TS),
                "properties": pa.array([to_json(e.properties) for e in events], pa.string()),
                "traits": pa.array([to_json(e.traits) for e in events], pa.string()),
                "context": pa.array([to_json(e.context) for e in events], pa.string()),
            }
        ),
    )
    rows = tx.execute(
        "INSERT INTO events SELECT source_id, message_id, customer_id, type, event, user_id, "
        "anonymous_id, group_id, timestamp, original_timestamp, sent_at, received_at, "
        f"CAST(properties AS {j}), CAST(traits AS {j}), CAST(context AS {j}) "
        "FROM stage_events ON CONFLICT DO NOTHING RETURNING source_id, message_id"
    )
    return {(source, message) for source, message in rows}


def _update_customers(tx: Tx, events: list[Event], customers: list[int], now: datetime) -> None:
    seen: dict[int, list[datetime]] = {}
    traits: dict[int, dict[str, Any]] = {}
    for event, customer in zip(events, customers, strict=True):
        span = seen.setdefault(customer, [event.timestamp, event.timestamp])
        span[0] = min(span[0], event.timestamp)
        span[1] = max(span[1], event.timestamp)
        if event.type == "identify" and event.traits:
            traits.setdefault(customer, {}).update(event.traits)
    tx.stage(
        "stage_seen",
        pa.table(
            {
                "customer_id": pa.array(list(seen), pa.int64()),
                "first_seen": pa.array([s[0] for s in seen.values()], TS),
                "last_seen": pa.array([s[1] for s in seen.values()], TS),
            }
        ),
    )
    tx.execute(
        "UPDATE customers SET first_seen = LEAST(customers.first_seen, s.first_seen), "
        "last_seen = GREATEST(customers.last_seen, s.last_seen), updated_at = ? "
        "FROM stage_seen s WHERE customers.customer_id = s.customer_id",
        [now],
    )
    if traits:
        _merge_traits(tx, traits)


def _email(traits: dict[str, Any]) -> str | None:
    email = traits.get("email")
    return email.strip().lower()[:320] if isinstance(email, str) and email.strip() else None


def _merge_traits(tx: Tx, traits: dict[int, dict[str, Any]]) -> None:
    j = tx.dialect.json_type
    tx.stage(
        "stage_traits",
        pa.table(
            {
                "customer_id": pa.array(list(traits), pa.int64()),
                "traits": pa.array([to_json(t) for t in traits.values()], pa.string()),
                "email": pa.array([_email(t) for t in traits.values()], pa.string()),
            }
        ),
    )
    merged = tx.dialect.json_merge(
        f"COALESCE(customers.traits, CAST('{{}}' AS {j}))", f"CAST(s.traits AS {j})"
    )
    tx.execute(
        f"UPDATE customers SET traits = {merged}, email = COALESCE(s.email, customers.email) "
        "FROM stage_traits s WHERE customers.customer_id = s.customer_id"
    )


def _write_accounts(tx: Tx, events: list[Event], customers: list[int], now: datetime) -> None:
    accounts: dict[str, dict[str, Any]] = {}
    members: dict[tuple[str, int], datetime] = {}
    for event, customer in zip(events, customers, strict=True):
        if event.group_id is None:
            continue
        members.setdefault((event.group_id, customer), event.timestamp)
        traits = accounts.setdefault(event.group_id, {})
        if event.type == "group":
            traits.update(event.traits or {})
        elif event.event == "Account Created" and event.properties:
            # B2B SaaS spec: the account's name arrives as `account_name` on the track call.
            name = event.properties.get("account_name")
            if isinstance(name, str) and name:
                traits.setdefault("name", name)
    if not accounts:
        return
    j = tx.dialect.json_type
    tx.stage(
        "stage_accounts",
        pa.table(
            {
                "account_id": list(accounts),
                "name": pa.array([_account_name(t) for t in accounts.values()], pa.string()),
                "traits": pa.array([to_json(t) for t in accounts.values()], pa.string()),
                "stamp": pa.array([now] * len(accounts), TS),
            }
        ),
    )
    merged = tx.dialect.json_merge("accounts.traits", "excluded.traits")
    tx.execute(
        f"INSERT INTO accounts SELECT account_id, name, CAST(traits AS {j}), stamp, stamp "
        "FROM stage_accounts ON CONFLICT (account_id) DO UPDATE SET "
        f"name = COALESCE(excluded.name, accounts.name), traits = {merged}, "
        "updated_at = excluded.updated_at"
    )
    tx.stage(
        "stage_members",
        pa.table(
            {
                "account_id": [account for account, _ in members],
                "customer_id": pa.array([customer for _, customer in members], pa.int64()),
                "joined_at": pa.array(list(members.values()), TS),
            }
        ),
    )
    tx.execute("INSERT INTO account_members SELECT * FROM stage_members ON CONFLICT DO NOTHING")


def _account_name(traits: dict[str, Any]) -> str | None:
    name = traits.get("name")
    return name[:1024] if isinstance(name, str) and "\x00" not in name else None


def _write_orders(tx: Tx, rows: list[tuple[str, Event, int]]) -> None:
    orders, items, refunds = [], [], []
    seen_orders: set[str] = set()
    for source, event, customer in rows:
        if event.type != "track":
            continue
        order = order_from_event(event.event, event.properties, event.timestamp)
        if order is not None and order.order_id not in seen_orders:
            seen_orders.add(order.order_id)
            orders.append((order, customer, source, event.message_id))
            items.extend(order.items)
        refund = refund_from_event(event.event, event.properties, event.timestamp)
        if refund is not None:
            refunds.append((refund, customer, source, event.message_id))
    if orders:
        _insert_orders(tx, orders, items)
    if refunds:
        tx.stage(
            "stage_refunds",
            pa.table(
                {
                    "source_id": [r[2] for r in refunds],
                    "message_id": [r[3] for r in refunds],
                    "order_id": [r[0].order_id for r in refunds],
                    "customer_id": pa.array([r[1] for r in refunds], pa.int64()),
                    "refunded_at": pa.array([r[0].refunded_at for r in refunds], TS),
                    "amount": pa.array([r[0].amount for r in refunds], pa.float64()),
                }
            ),
        )
        tx.execute("INSERT INTO refunds SELECT * FROM stage_refunds ON CONFLICT DO NOTHING")


def _insert_orders(tx: Tx, orders: list[tuple[Any, int, str, str]], items: list[Any]) -> None:
    def money(attr: str) -> pa.Array:
        return pa.array([getattr(o[0], attr) for o in orders], pa.float64())

    tx.stage(
        "stage_orders",
        pa.table(
            {
                "order_id": [o[0].order_id for o in orders],
                "customer_id": pa.array([o[1] for o in orders], pa.int64()),
                "ordered_at": pa.array([o[0].ordered_at for o in orders], TS),
                "revenue": money("revenue"),
                "total": money("total"),
                "discount": money("discount"),
                "shipping": money("shipping"),
                "tax": money("tax"),
                "currency": pa.array([o[0].currency for o in orders], pa.string()),
                "coupon": pa.array([o[0].coupon for o in orders], pa.string()),
                "source_id": [o[2] for o in orders],
                "message_id": [o[3] for o in orders],
            }
        ),
    )
    inserted = {
        row[0]
        for row in tx.execute(
            "INSERT INTO orders SELECT * FROM stage_orders "
            "ON CONFLICT DO NOTHING RETURNING order_id"
        )
    }
    items = [i for i in items if i.order_id in inserted]
    if not items:
        return
    tx.stage(
        "stage_items",
        pa.table(
            {
                "order_id": [i.order_id for i in items],
                "line_no": pa.array([i.line_no for i in items], pa.int32()),
                "product_id": pa.array([i.product_id for i in items], pa.string()),
                "sku": pa.array([i.sku for i in items], pa.string()),
                "name": pa.array([i.name for i in items], pa.string()),
                "category": pa.array([i.category for i in items], pa.string()),
                "brand": pa.array([i.brand for i in items], pa.string()),
                "price": pa.array([i.price for i in items], pa.float64()),
                "quantity": pa.array([i.quantity for i in items], pa.float64()),
            }
        ),
    )
    tx.execute("INSERT INTO order_items SELECT * FROM stage_items ON CONFLICT DO NOTHING")
