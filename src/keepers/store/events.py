"""Write a group of validated events in one transaction: identities, the event log, and what
the events mean for customers, accounts and orders.

The work is split so the single writer does as little Python as possible: `prepare_batch`
(run by whoever submits, in parallel with the writer's SQL) turns one request's events
into Arrow columns and the rows they imply; `write_events` (the writer) resolves
identities, which must see the groups in order, and runs a fixed, small set of statements.

Each effect is applied once per stored event: the event log dedupes on `message_key`, a
128-bit hash of (source, messageId); orders, refunds and memberships are keyed so a resent
event cannot add them twice; trait merges (`identify`, `group`) only use events that were
new, so an old resend cannot overwrite newer values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from keepers.domain.commerce import LineItem, Order, Refund, order_from_event, refund_from_event
from keepers.domain.events import Event, to_json
from keepers.store.database import Tx
from keepers.store.identity import apply_resolution, mark_dirty, resolve_identities

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


@dataclass
class EventBatch:
    """One request's events, prepared for the writer (no customer ids yet)."""

    source_id: str
    events: list[Event]
    table: pa.Table
    orders: list[tuple[int, Order]] = field(default_factory=list)
    refunds: list[tuple[int, Refund]] = field(default_factory=list)
    identifies: list[int] = field(default_factory=list)  # positions of identify events
    grouped: list[int] = field(default_factory=list)  # positions of events with a group id


def _constant_or_column(events: list[Event], name: str) -> pa.Array:
    """One request's events share their receive time: repeat it instead of converting each."""
    first = getattr(events[0], name) if events else None
    if events and all(getattr(e, name) == first for e in events):
        return pa.repeat(pa.scalar(first, TS), len(events))
    return pa.array([getattr(e, name) for e in events], TS)


def prepare_batch(source_id: str, events: list[Event]) -> EventBatch:
    """Columns and implied rows of one request, built outside the writer."""
    n = len(events)

    def column(name: str, kind: pa.DataType = pa.string()) -> pa.Array:
        return pa.array([getattr(e, name) for e in events], kind)

    table = pa.table(
        {
            "source_id": pa.repeat(pa.scalar(source_id, pa.string()), n),
            "message_id": column("message_id"),
            "type": column("type"),
            "event": column("event"),
            "user_id": column("user_id"),
            "anonymous_id": column("anonymous_id"),
            "group_id": column("group_id"),
            "timestamp": column("timestamp", TS),
            "original_timestamp": column("original_timestamp", TS),
            "sent_at": column("sent_at", TS),
            "received_at": _constant_or_column(events, "received_at"),
            "properties": column("properties_json"),
            "traits": column("traits_json"),
            "context": column("context_json"),
        }
    )
    batch = EventBatch(source_id=source_id, events=events, table=table)
    for position, event in enumerate(events):
        if event.type == "identify" and event.traits:
            batch.identifies.append(position)
        if event.group_id is not None:
            batch.grouped.append(position)
        if event.type == "track" and event.properties:
            order = order_from_event(event.event, event.properties, event.timestamp)
            if order is not None:
                batch.orders.append((position, order))
            refund = refund_from_event(event.event, event.properties, event.timestamp)
            if refund is not None:
                batch.refunds.append((position, refund))
    return batch


def write_events(
    tx: Tx, batches: list[EventBatch], rejected: list[Rejection], now: datetime
) -> set[tuple[str, str]]:
    """Store the group; return the (source, messageId) keys that were new."""
    if rejected:
        _insert_rejections(tx, rejected)
    events = [event for batch in batches for event in batch.events]
    if not events:
        return set()
    if tx.dialect.name == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", [IDENTITY_LOCK])
    customers, became_known = apply_resolution(tx, resolve_identities(tx, events), now)
    table = pa.concat_tables([batch.table for batch in batches])
    table = table.add_column(2, "customer_id", pa.array(customers, pa.int64()))
    tx.stage("stage_events", table)
    new_keys = _insert_events(tx)
    mark_dirty(
        tx, "SELECT customer_id, min(timestamp) AS earliest FROM stage_events GROUP BY customer_id"
    )
    offsets = _offsets(batches)
    traits = _identify_traits(batches, offsets, customers, new_keys)
    _update_customers(tx, traits, became_known, now)
    _write_accounts(tx, batches, offsets, customers, new_keys, now)
    _write_orders(tx, batches, offsets, customers, new_keys)
    return new_keys


def _offsets(batches: list[EventBatch]) -> list[int]:
    offsets, total = [], 0
    for batch in batches:
        offsets.append(total)
        total += len(batch.events)
    return offsets


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


def _insert_events(tx: Tx) -> set[tuple[str, str]]:
    j = tx.dialect.json_type
    rows = tx.execute(
        f"INSERT INTO events SELECT {tx.dialect.message_key('source_id', 'message_id')}, "
        "source_id, message_id, customer_id, type, event, user_id, anonymous_id, group_id, "
        "timestamp, original_timestamp, sent_at, received_at, "
        f"CAST(properties AS {j}), CAST(traits AS {j}), CAST(context AS {j}) "
        "FROM stage_events ON CONFLICT DO NOTHING RETURNING source_id, message_id"
    )
    return {(source, message) for source, message in rows}


def _fresh(batch: EventBatch, position: int, new_keys: set[tuple[str, str]]) -> bool:
    return (batch.source_id, batch.events[position].message_id) in new_keys


def _identify_traits(
    batches: list[EventBatch],
    offsets: list[int],
    customers: list[int],
    new_keys: set[tuple[str, str]],
) -> dict[int, dict[str, Any]]:
    """Traits of the new `identify` events, merged per customer in arrival order."""
    traits: dict[int, dict[str, Any]] = {}
    for batch, offset in zip(batches, offsets, strict=True):
        for position in batch.identifies:
            if _fresh(batch, position, new_keys):
                customer = customers[offset + position]
                traits.setdefault(customer, {}).update(batch.events[position].traits or {})
    return traits


def _update_customers(
    tx: Tx, traits: dict[int, dict[str, Any]], became_known: dict[int, str], now: datetime
) -> None:
    """One statement for what the group changes on customer rows: traits and email from new
    `identify` events, and userIds of anonymous profiles that became known. (First/last
    seen and other behavioural traits are computed from the event log by the engine, not
    kept up to date here: ingest stays lean.)"""
    if not traits and not became_known:
        return
    ids = list(traits.keys() | became_known.keys())
    tx.stage(
        "stage_profile",
        pa.table(
            {
                "customer_id": pa.array(ids, pa.int64()),
                "user_id": pa.array([became_known.get(c) for c in ids], pa.string()),
                "traits": pa.array(
                    [to_json(traits[c]) if c in traits else None for c in ids], pa.string()
                ),
                "email": pa.array([_email(traits.get(c, {})) for c in ids], pa.string()),
            }
        ),
    )
    j = tx.dialect.json_type
    merged = tx.dialect.json_merge(
        f"COALESCE(customers.traits, CAST('{{}}' AS {j}))", f"CAST(p.traits AS {j})"
    )
    tx.execute(
        "UPDATE customers SET user_id = COALESCE(customers.user_id, p.user_id), "
        f"traits = CASE WHEN p.traits IS NULL THEN customers.traits ELSE {merged} END, "
        "email = COALESCE(p.email, customers.email), updated_at = ? "
        "FROM stage_profile p WHERE customers.customer_id = p.customer_id",
        [now],
    )


def _email(traits: dict[str, Any]) -> str | None:
    email = traits.get("email")
    if not isinstance(email, str) or not email.strip() or "\x00" in email:
        return None
    return email.strip().lower()[:320]


def _write_accounts(
    tx: Tx,
    batches: list[EventBatch],
    offsets: list[int],
    customers: list[int],
    new_keys: set[tuple[str, str]],
    now: datetime,
) -> None:
    accounts: dict[str, dict[str, Any]] = {}
    members: dict[tuple[str, int], datetime] = {}
    for batch, offset in zip(batches, offsets, strict=True):
        for position in batch.grouped:
            event = batch.events[position]
            account = event.group_id or ""
            members.setdefault((account, customers[offset + position]), event.timestamp)
            traits = accounts.setdefault(account, {})
            if _fresh(batch, position, new_keys):
                _account_traits(event, traits)
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


def _account_traits(event: Event, traits: dict[str, Any]) -> None:
    if event.type == "group":
        traits.update(event.traits or {})
    elif event.event == "Account Created" and event.properties:
        # B2B SaaS spec: the account's name arrives as `account_name` on the track call.
        name = event.properties.get("account_name")
        if isinstance(name, str) and name:
            traits.setdefault("name", name)


def _account_name(traits: dict[str, Any]) -> str | None:
    name = traits.get("name")
    return name[:1024] if isinstance(name, str) and "\x00" not in name else None


def _write_orders(
    tx: Tx,
    batches: list[EventBatch],
    offsets: list[int],
    customers: list[int],
    new_keys: set[tuple[str, str]],
) -> None:
    """Orders and refunds of the new events. Writers are serialised, so an existence check
    replaces ON CONFLICT (which costs ~2 ms a statement in DuckDB); refunds are keyed like
    their event, so a new event's refund cannot exist yet."""
    orders: dict[str, tuple[Order, int, str, str]] = {}
    refunds = []
    for batch, offset in zip(batches, offsets, strict=True):
        for position, order in batch.orders:
            if order.order_id not in orders and _fresh(batch, position, new_keys):
                message_id = batch.events[position].message_id
                orders[order.order_id] = (
                    order,
                    customers[offset + position],
                    batch.source_id,
                    message_id,
                )
        for position, refund in batch.refunds:
            if _fresh(batch, position, new_keys):
                refunds.append(
                    (
                        refund,
                        customers[offset + position],
                        batch.source_id,
                        batch.events[position].message_id,
                    )
                )
    if orders:
        _insert_orders(tx, list(orders.values()))
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
        tx.execute("INSERT INTO refunds SELECT * FROM stage_refunds")


def _insert_orders(tx: Tx, orders: list[tuple[Order, int, str, str]]) -> None:
    def money(attr: str) -> pa.Array:
        return pa.array([getattr(o[0], attr) for o in orders], pa.float64())

    table = pa.table(
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
    )
    tx.stage("stage_orders", table)
    existing = {
        row[0]
        for row in tx.execute(
            "SELECT order_id FROM orders WHERE order_id IN (SELECT order_id FROM stage_orders)"
        )
    }
    if existing:
        tx.stage(
            "stage_orders", table.filter(pa.array([o[0].order_id not in existing for o in orders]))
        )
    tx.execute("INSERT INTO orders SELECT * FROM stage_orders")
    inserted = {o[0].order_id for o in orders} - existing
    items: list[LineItem] = [i for o in orders if o[0].order_id in inserted for i in o[0].items]
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
    tx.execute("INSERT INTO order_items SELECT * FROM stage_items")
