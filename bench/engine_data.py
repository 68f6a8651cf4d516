"""Synthetic Keepers data for the engine benchmark, written straight into the schema.

Why it is built this way:

- 10M events through the HTTP/ingest path would take far longer than the engine run it
  feeds, so the rows are generated set-based: NumPy draws every random number from one
  `default_rng(seed)` (same seed → same data), a private in-memory DuckDB turns the numeric
  columns into the stored text (ids, event names, JSON), and each table goes into the store
  in a few big `INSERT … SELECT` statements from a staged Arrow table (`Tx.stage`: scanned in
  place by DuckDB, copied into a temp table by PostgreSQL), events in chunks of 1M rows.
- The rows look like what ingest would have stored, so the engine sees a realistic store:
  - customers 1..N: ~80 % known (`user_id` `u-<id>`, anonymous id `a-<id>`, email and
    traits), ~18 % anonymous-only (`a-<id>`, no user id), ~2 % anonymous profiles already
    merged into a known customer (`merged_into` set, their `anon` identity repointed, no
    events left). `identities` holds a row per id (kinds `user` / `anon`, as identity.py).
  - events over the two years before 2026-11-01 UTC, more customers arriving later (a
    growing business). Activity is skewed (log-normal weights: the top 10 % of customers
    send about half of the events); each customer is active from its first-seen time for an
    exponential lifetime (~8 months for known customers, a few days for anonymous ones),
    so churned, lapsed and active customers all exist. A known customer's first event is
    `Signed Up`. The mix is page / identify / `Product Viewed`, `Product Added`,
    `Checkout Started`, `Order Completed` (1 event in 20), `Email Delivered`, `Email
    Opened`, `Email Link Clicked`, `NPS Survey Answered` (`{"score": 0-10}`),
    `Referral Converted`, `Trial Started`; anonymous visitors only browse.
  - every `Order Completed` event is an `orders` row (same id, customer, time, revenue)
    with 1-3 `order_items` from a 48-product catalogue (revenue = Σ price × quantity);
    ~3 % of orders are refunded by an `Order Refunded` event 1-30 days later, which is also
    a `refunds` row. Properties carry only what the engine could read (order id and
    revenue, refund total, NPS score, product id, campaign id); context is NULL.
  - events are inserted in timestamp order, like a live log; `message_key` is computed by
    the store's own `Dialect.message_key`, and `customer_id_seq` is moved past N so later
    ingest allocates fresh ids.

Usage: python bench/engine_data.py --db PATH|--url URL [--customers 1000000]
[--events 10000000] [--seed 1] [--json]. The store must be empty (migrations are run).
Progress goes to stderr; with --json, stdout is one JSON object with counts and timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

END = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 730
DAY_US = 86_400_000_000
END_US = int(END.timestamp()) * 1_000_000
START_US = END_US - DAYS * DAY_US
TS = pa.timestamp("us", tz="UTC")
CHUNK = 1_000_000  # events per staged insert
SOURCE_ID = "key_benchgen"  # write-key id of the generated history (ingest uses key ids)

KNOWN, ANON, MERGED = 0, 1, 2

# (code, type, event name, sent from the browser → carries the anonymousId)
CODES = [
    (0, "page", None, True),
    (1, "identify", None, True),
    (2, "track", "Product Viewed", True),
    (3, "track", "Product Added", True),
    (4, "track", "Checkout Started", True),
    (5, "track", "Order Completed", False),
    (6, "track", "Signed Up", True),
    (7, "track", "Email Delivered", False),
    (8, "track", "Email Opened", False),
    (9, "track", "Email Link Clicked", False),
    (10, "track", "NPS Survey Answered", False),
    (11, "track", "Referral Converted", False),
    (12, "track", "Trial Started", False),
    (13, "track", "Order Refunded", False),
]
PAGE, IDENTIFY, VIEWED, ADDED, CHECKOUT, ORDER, SIGNED_UP = 0, 1, 2, 3, 4, 5, 6
EMAIL_DELIVERED, EMAIL_OPENED, EMAIL_CLICKED, NPS, REFUNDED = 7, 8, 9, 10, 13
# Known customers' mix without orders (renormalised around the order share).
KNOWN_MIX = {
    PAGE: 0.37,
    IDENTIFY: 0.03,
    VIEWED: 0.23,
    ADDED: 0.08,
    CHECKOUT: 0.065,
    EMAIL_DELIVERED: 0.14,
    EMAIL_OPENED: 0.055,
    EMAIL_CLICKED: 0.015,
    NPS: 0.008,
    11: 0.003,
    12: 0.004,
}
ANON_MIX = {PAGE: 0.6, VIEWED: 0.3, ADDED: 0.1}
PAGE_NAMES = ["Home", "Category", "Product", "Cart", "Search", "Blog"]
CATEGORIES = ["Coffee & Tea", "Pet Supplies", "Health & Vitamins", "Eye Care", "Cameras"]
CATALOGUE = 48
ORDER_SHARE = 1 / 20
REFUND_SHARE = 0.03
NPS_P = [0.02, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.16, 0.22, 0.2, 0.16]


def log(message: str) -> None:
    print(f"[engine-data] {message}", file=sys.stderr, flush=True)


class Timer:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now
        return self.laps[name]


# --- drawing the numbers ---------------------------------------------------------------------


def _draw(rng: np.random.Generator, codes: dict[int, float], size: int) -> np.ndarray:
    keys = np.array(list(codes), np.int8)
    p = np.array(list(codes.values()), np.float64)
    return rng.choice(keys, size=size, p=p / p.sum())


def draw(customers: int, events: int, seed: int) -> dict[str, Any]:
    """Every random number of the data set, as NumPy arrays (events in timestamp order)."""
    if events < customers:
        raise SystemExit("--events must be at least --customers (every live customer has one)")
    rng = np.random.default_rng(seed)
    n = customers
    u = rng.random(n)
    kind = np.where(u < 0.02, MERGED, np.where(u < 0.20, ANON, KNOWN)).astype(np.int8)
    known_ids = np.flatnonzero(kind == KNOWN)
    if len(known_ids) == 0:
        kind[kind == MERGED] = ANON
    first_seen = START_US + (DAYS * DAY_US * rng.random(n) ** 0.6).astype(np.int64)
    life = np.where(kind == KNOWN, rng.exponential(240.0, n), rng.exponential(3.0, n))
    last_active = np.minimum(first_seen + (life * DAY_US).astype(np.int64), END_US - 1)
    survivor = np.zeros(n, np.int64)
    merged = kind == MERGED
    if merged.any():
        survivor[merged] = known_ids[rng.integers(0, len(known_ids), merged.sum())] + 1

    # Events per customer: one each, the rest by skewed (log-normal) activity weights.
    refunds_target = round(events * ORDER_SHARE * REFUND_SHARE)
    base_events = events - refunds_target
    weight = rng.lognormal(0.0, 1.25, n)
    weight[kind == ANON] *= 0.15
    live = ~merged
    counts = np.zeros(n, np.int64)
    spare = max(0, base_events - int(live.sum()))
    counts[live] = 1 + rng.multinomial(spare, weight[live] / weight[live].sum())
    cust = np.repeat(np.arange(n, dtype=np.int64), counts)  # customer index (id - 1)
    starts = np.cumsum(counts) - counts
    first = np.zeros(len(cust), bool)
    first[starts[live]] = True
    span = (last_active - first_seen)[cust]
    ts = first_seen[cust] + (rng.random(len(cust)) * span).astype(np.int64)
    ts[first] = first_seen[cust[first]]

    known_ev = kind[cust] == KNOWN
    code = np.empty(len(cust), np.int8)
    code[~known_ev] = _draw(rng, ANON_MIX, int((~known_ev).sum()))
    signups = first & known_ev
    drawn = int(known_ev.sum() - signups.sum())
    order_p = min(0.5, base_events * ORDER_SHARE / max(1, drawn))
    mix = {k: v * (1 - order_p) / sum(KNOWN_MIX.values()) for k, v in KNOWN_MIX.items()}
    code[known_ev] = _draw(rng, {**mix, ORDER: order_p}, int(known_ev.sum()))
    code[signups] = SIGNED_UP

    aux = np.zeros(len(cust), np.int64)  # page name / product / campaign / score / order no.
    amount = np.zeros(len(cust), np.float64)
    products = _catalogue(rng)
    zipf = 1.0 / np.arange(1, CATALOGUE + 1) ** 0.9
    zipf /= zipf.sum()
    for codes_, values in (
        ((PAGE,), lambda k: rng.integers(0, len(PAGE_NAMES), k)),
        ((VIEWED, ADDED), lambda k: rng.choice(CATALOGUE, size=k, p=zipf)),
        ((EMAIL_DELIVERED, EMAIL_OPENED, EMAIL_CLICKED), None),
        ((NPS,), lambda k: rng.choice(11, size=k, p=NPS_P)),
    ):
        where = np.isin(code, codes_)
        if values is None:  # campaigns: one a fortnight
            aux[where] = (ts[where] - START_US) // (14 * DAY_US)
        else:
            aux[where] = values(int(where.sum()))

    # Orders, numbered in time order, with their line items and revenue.
    order_ev = np.flatnonzero(code == ORDER)
    order_ev = order_ev[np.argsort(ts[order_ev], kind="stable")]
    n_orders = len(order_ev)
    lines = rng.choice([1, 2, 3], size=n_orders, p=[0.6, 0.3, 0.1])
    item_order = np.repeat(np.arange(n_orders, dtype=np.int64), lines)
    item_line = np.arange(len(item_order)) - np.repeat(np.cumsum(lines) - lines, lines) + 1
    item_product = rng.choice(CATALOGUE, size=len(item_order), p=zipf)
    item_qty = np.where(rng.random(len(item_order)) < 0.8, 1.0, 2.0)
    item_value = products["price"][item_product] * item_qty
    revenue = np.round(np.bincount(item_order, weights=item_value, minlength=n_orders), 2)
    aux[order_ev] = np.arange(1, n_orders + 1)
    amount[order_ev] = revenue

    # Refunds: ~3 % of orders, 1-30 days later (never after the end), as their own events.
    n_refunds = min(refunds_target, n_orders)
    refunded = np.sort(rng.choice(n_orders, size=n_refunds, replace=False))
    ordered_at = ts[order_ev[refunded]]
    room = np.minimum(30 * DAY_US, END_US - 1 - ordered_at)
    refund_ts = ordered_at + DAY_US // 24 + (rng.random(n_refunds) * (room - DAY_US // 24)).clip(0)
    refund_ts = np.minimum(refund_ts.astype(np.int64), END_US - 1)
    partial = rng.random(n_refunds) < 0.2
    refund_amount = np.round(np.where(partial, revenue[refunded] * 0.5, revenue[refunded]), 2)

    cust = np.concatenate([cust, cust[order_ev[refunded]]])
    ts = np.concatenate([ts, refund_ts])
    code = np.concatenate([code, np.full(n_refunds, REFUNDED, np.int8)])
    aux = np.concatenate([aux, refunded + 1])
    amount = np.concatenate([amount, refund_amount])
    order_ev_all = order_ev
    refund_ev_all = np.arange(len(ts) - n_refunds, len(ts))

    # Log order: by timestamp; the message sequence number is the position in the log.
    perm = np.argsort(ts, kind="stable")
    seq = np.empty(len(ts), np.int64)
    seq[perm] = np.arange(1, len(ts) + 1)
    received = ts + rng.integers(20_000, 3_000_000, len(ts))
    top = np.sort(counts)[::-1][: max(1, n // 10)].sum()
    return {
        "customers": {
            "kind": kind,
            "first_seen": first_seen,
            "survivor": survivor,
        },
        "events": {
            "seq": np.arange(1, len(ts) + 1, dtype=np.int64),
            "customer_id": cust[perm] + 1,
            "known": kind[cust[perm]] == KNOWN,
            "code": code[perm],
            "ts": ts[perm],
            "received": received[perm],
            "aux": aux[perm],
            "amount": amount[perm],
        },
        "orders": {
            "order_no": np.arange(1, n_orders + 1, dtype=np.int64),
            "customer_id": cust[order_ev_all] + 1,
            "ordered_at": ts[order_ev_all],
            "revenue": revenue,
            "seq": seq[order_ev_all],
        },
        "items": {
            "order_no": item_order + 1,
            "line_no": item_line.astype(np.int32),
            "product": item_product.astype(np.int64),
            "price": products["price"][item_product],
            "quantity": item_qty,
        },
        "refunds": {
            "order_no": refunded + 1,
            "customer_id": cust[refund_ev_all] + 1,
            "refunded_at": ts[refund_ev_all],
            "amount": refund_amount,
            "seq": seq[refund_ev_all],
        },
        "products": products,
        "top_decile_event_share": round(float(top) / max(1, int(counts.sum())), 3),
    }


def _catalogue(rng: np.random.Generator) -> dict[str, np.ndarray]:
    price = np.round(np.exp(rng.normal(3.3, 0.7, CATALOGUE)), 0) - 0.01
    return {
        "product": np.arange(CATALOGUE, dtype=np.int64),
        "price": np.maximum(price, 2.99),
        "category": np.arange(CATALOGUE, dtype=np.int64) % len(CATEGORIES),
    }


# --- turning numbers into stored rows ----------------------------------------------------------


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64()).cast(TS)


def _table(columns: dict[str, Any]) -> pa.Table:
    out = {}
    for name, values in columns.items():
        if isinstance(values, pa.Array):
            out[name] = values
        else:
            out[name] = pa.array(values)
    return pa.table(out)


class Formatter:
    """A private in-memory DuckDB that turns numeric columns into the stored text columns."""

    def __init__(self) -> None:
        import duckdb

        self.con = duckdb.connect()
        codes = pa.table(
            {
                "code": pa.array([c[0] for c in CODES], pa.int8()),
                "type": [c[1] for c in CODES],
                "event": pa.array([c[2] for c in CODES], pa.string()),
                "client": [c[3] for c in CODES],
            }
        )
        self.con.register("codes_arrow", codes)
        self.con.execute("CREATE TABLE codes AS SELECT * FROM codes_arrow")

    def run(self, sql: str, schema: pa.Schema, **tables: pa.Table) -> pa.Table:
        for name, table in tables.items():
            self.con.register(name, table)
        result = self.con.sql(sql).to_arrow_table()
        for name in tables:
            self.con.unregister(name)
        return result.select(schema.names).cast(schema)


EVENTS_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("message_id", pa.string()),
        ("customer_id", pa.int64()),
        ("type", pa.string()),
        ("event", pa.string()),
        ("user_id", pa.string()),
        ("anonymous_id", pa.string()),
        ("group_id", pa.string()),
        ("timestamp", TS),
        ("original_timestamp", TS),
        ("sent_at", TS),
        ("received_at", TS),
        ("properties", pa.string()),
        ("traits", pa.string()),
        ("context", pa.string()),
    ]
)
PAGE_LIST = "[" + ", ".join(f"'{name}'" for name in PAGE_NAMES) + "]"
EVENTS_SQL = f"""
SELECT
    '{SOURCE_ID}' AS source_id,
    'gen-' || r.seq AS message_id,
    r.customer_id,
    c.type,
    CASE WHEN r.code = {PAGE} THEN {PAGE_LIST}[r.aux + 1] ELSE c.event END AS event,
    CASE WHEN r.known THEN 'u-' || r.customer_id END AS user_id,
    CASE WHEN NOT r.known OR c.client THEN 'a-' || r.customer_id END AS anonymous_id,
    NULL::VARCHAR AS group_id,
    r.ts AS timestamp,
    NULL::TIMESTAMPTZ AS original_timestamp,
    NULL::TIMESTAMPTZ AS sent_at,
    r.received AS received_at,
    CASE
        WHEN r.code = {ORDER} THEN '{{"order_id":"o-' || r.aux || '","revenue":' || r.amount
            || ',"total":' || r.amount || ',"currency":"USD"}}'
        WHEN r.code = {REFUNDED} THEN '{{"order_id":"o-' || r.aux || '","total":' || r.amount
            || '}}'
        WHEN r.code = {NPS} THEN '{{"score":' || r.aux || '}}'
        WHEN r.code IN ({VIEWED}, {ADDED}) THEN '{{"product_id":"p-' || r.aux || '"}}'
        WHEN r.code IN ({EMAIL_DELIVERED}, {EMAIL_OPENED}, {EMAIL_CLICKED})
            THEN '{{"campaign_id":"c-' || r.aux || '"}}'
    END AS properties,
    CASE WHEN r.code = {IDENTIFY} THEN '{{"email":"u' || r.customer_id || '@example.com"}}'
        END AS traits,
    NULL::VARCHAR AS context
FROM raw r JOIN codes c ON c.code = r.code
ORDER BY r.seq
"""


def events_chunks(fmt: Formatter, data: dict[str, Any]) -> Any:
    ev = data["events"]
    total = len(ev["seq"])
    for start in range(0, total, CHUNK):
        part = slice(start, start + CHUNK)
        raw = _table(
            {
                "seq": ev["seq"][part],
                "customer_id": ev["customer_id"][part],
                "known": ev["known"][part],
                "code": ev["code"][part],
                "ts": _ts(ev["ts"][part]),
                "received": _ts(ev["received"][part]),
                "aux": ev["aux"][part],
                "amount": ev["amount"][part],
            }
        )
        yield fmt.run(EVENTS_SQL, EVENTS_SCHEMA, raw=raw)


def customers_table(fmt: Formatter, data: dict[str, Any]) -> pa.Table:
    c = data["customers"]
    raw = _table(
        {
            "customer_id": np.arange(1, len(c["kind"]) + 1, dtype=np.int64),
            "kind": c["kind"],
            "first_seen": _ts(c["first_seen"]),
            "survivor": c["survivor"],
        }
    )
    schema = pa.schema(
        [
            ("customer_id", pa.int64()),
            ("user_id", pa.string()),
            ("anonymous_id", pa.string()),
            ("email", pa.string()),
            ("traits", pa.string()),
            ("merged_into", pa.int64()),
            ("created_at", TS),
            ("updated_at", TS),
        ]
    )
    sql = f"""
    SELECT customer_id,
        CASE WHEN kind = {KNOWN} THEN 'u-' || customer_id END AS user_id,
        'a-' || customer_id AS anonymous_id,
        CASE WHEN kind = {KNOWN} THEN 'u' || customer_id || '@example.com' END AS email,
        CASE WHEN kind = {KNOWN} THEN '{{"email":"u' || customer_id || '@example.com"}}'
            ELSE '{{}}' END AS traits,
        CASE WHEN kind = {MERGED} THEN survivor END AS merged_into,
        first_seen AS created_at, first_seen AS updated_at
    FROM raw ORDER BY customer_id"""
    return fmt.run(sql, schema, raw=raw)


def identities_table(customers: pa.Table) -> pa.Table:
    """`user` for known customers, `anon` for everyone (a merged profile's → its survivor)."""
    import pyarrow.compute as pc

    known = customers.filter(pc.is_valid(customers["user_id"]))
    survivor = pc.coalesce(customers["merged_into"], customers["customer_id"])
    schema = pa.schema(
        [
            ("kind", pa.string()),
            ("value", pa.string()),
            ("customer_id", pa.int64()),
            ("created_at", TS),
        ]
    )
    users = pa.table(
        {
            "kind": pa.repeat(pa.scalar("user"), known.num_rows).cast(pa.string()),
            "value": known["user_id"],
            "customer_id": known["customer_id"],
            "created_at": known["created_at"],
        },
        schema=schema,
    )
    anons = pa.table(
        {
            "kind": pa.repeat(pa.scalar("anon"), customers.num_rows).cast(pa.string()),
            "value": customers["anonymous_id"],
            "customer_id": survivor,
            "created_at": customers["created_at"],
        },
        schema=schema,
    )
    return pa.concat_tables([users, anons])


def orders_tables(fmt: Formatter, data: dict[str, Any]) -> tuple[pa.Table, pa.Table, pa.Table]:
    o, i, r, p = data["orders"], data["items"], data["refunds"], data["products"]
    orders = pa.table(
        {
            "order_id": pa.array([f"o-{k}" for k in o["order_no"].tolist()], pa.string()),
            "customer_id": pa.array(o["customer_id"]),
            "ordered_at": _ts(o["ordered_at"]),
            "revenue": pa.array(o["revenue"]),
            "total": pa.array(o["revenue"]),
            "discount": pa.nulls(len(o["order_no"]), pa.float64()),
            "shipping": pa.nulls(len(o["order_no"]), pa.float64()),
            "tax": pa.nulls(len(o["order_no"]), pa.float64()),
            "currency": pa.repeat(pa.scalar("USD"), len(o["order_no"])).cast(pa.string()),
            "coupon": pa.nulls(len(o["order_no"]), pa.string()),
            "source_id": pa.repeat(pa.scalar(SOURCE_ID), len(o["order_no"])).cast(pa.string()),
            "message_id": pa.array([f"gen-{s}" for s in o["seq"].tolist()], pa.string()),
        }
    )
    catalogue = _table(
        {
            "product": p["product"],
            "category": pa.array([CATEGORIES[k] for k in p["category"].tolist()], pa.string()),
        }
    )
    raw_items = _table(i)
    items_schema = pa.schema(
        [
            ("order_id", pa.string()),
            ("line_no", pa.int32()),
            ("product_id", pa.string()),
            ("sku", pa.string()),
            ("name", pa.string()),
            ("category", pa.string()),
            ("brand", pa.string()),
            ("price", pa.float64()),
            ("quantity", pa.float64()),
        ]
    )
    items = fmt.run(
        """SELECT 'o-' || i.order_no AS order_id, i.line_no, 'p-' || i.product AS product_id,
               'SKU-' || lpad(i.product::VARCHAR, 4, '0') AS sku,
               c.category || ' item ' || i.product AS name, c.category, NULL AS brand,
               i.price, i.quantity
           FROM raw_items i JOIN catalogue c USING (product) ORDER BY i.order_no, i.line_no""",
        items_schema,
        raw_items=raw_items,
        catalogue=catalogue,
    )
    refunds = pa.table(
        {
            "source_id": pa.repeat(pa.scalar(SOURCE_ID), len(r["seq"])).cast(pa.string()),
            "message_id": pa.array([f"gen-{s}" for s in r["seq"].tolist()], pa.string()),
            "order_id": pa.array([f"o-{k}" for k in r["order_no"].tolist()], pa.string()),
            "customer_id": pa.array(r["customer_id"]),
            "refunded_at": _ts(r["refunded_at"]),
            "amount": pa.array(r["amount"]),
        }
    )
    return orders, items, refunds


# --- writing into the store ------------------------------------------------------------------


def _insert(k: Any, table: str, staged: pa.Table, select: str = "*") -> None:
    """One table (or chunk) in one transaction: stage it, INSERT … SELECT from the stage."""
    for start in range(0, max(1, staged.num_rows), CHUNK):
        part = staged.slice(start, CHUNK)
        with k.db.transaction() as tx:
            tx.stage(f"gen_{table}", part)
            tx.execute(f"INSERT INTO {table} SELECT {select} FROM gen_{table}")


def load(
    url: str, customers: int, events: int, seed: int, progress: Callable[[str], None] = log
) -> dict[str, Any]:
    """Generate the data set into the (empty) store at `url`; return counts and timings."""
    from keepers.services.keepers import Keepers
    from keepers.settings import Settings

    timer = Timer()
    k = Keepers.open(Settings(database_url=url))
    try:
        with k.db.transaction() as tx:
            existing = tx.execute("SELECT (SELECT count(*) FROM events), count(*) FROM customers")
        if existing[0] != (0, 0):
            raise SystemExit(f"the store at {url} is not empty: {existing[0]} events/customers")
        timer.lap("open_s")
        progress(f"drawing {customers:,} customers and {events:,} events (seed {seed})")
        data = draw(customers, events, seed)
        timer.lap("draw_s")
        fmt = Formatter()
        dialect = k.db.dialect
        indexes = _drop_secondary_indexes(k) if dialect.name == "postgres" else []
        j = dialect.json_type

        cust = customers_table(fmt, data)
        _insert(
            k,
            "customers",
            cust,
            f"customer_id, user_id, anonymous_id, email, CAST(traits AS {j}), merged_into, "
            "created_at, updated_at",
        )
        idents = identities_table(cust)
        _insert(k, "identities", idents)
        progress(f"customers {cust.num_rows:,}, identities {idents.num_rows:,}")
        del cust, idents
        timer.lap("customers_s")

        key = dialect.message_key("source_id", "message_id")
        select = (
            f"{key}, source_id, message_id, customer_id, type, event, user_id, anonymous_id, "
            "group_id, timestamp, original_timestamp, sent_at, received_at, "
            f"CAST(properties AS {j}), CAST(traits AS {j}), CAST(context AS {j})"
        )
        stored = 0
        total = len(data["events"]["seq"])
        fmt_s = insert_s = 0.0
        chunks = events_chunks(fmt, data)
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            t1 = time.perf_counter()
            fmt_s += t1 - t0
            if chunk is None:
                break
            _insert(k, "events", chunk, select)
            insert_s += time.perf_counter() - t1
            stored += chunk.num_rows
            progress(f"events {stored:,}/{total:,} ({time.perf_counter() - timer.last:.0f} s)")
        timer.laps["events_format_s"] = round(fmt_s, 3)
        timer.laps["events_insert_s"] = round(insert_s, 3)
        timer.lap("events_s")

        orders, items, refunds = orders_tables(fmt, data)
        _insert(k, "orders", orders)
        _insert(k, "order_items", items)
        _insert(k, "refunds", refunds)
        progress(
            f"orders {orders.num_rows:,}, items {items.num_rows:,}, refunds {refunds.num_rows:,}"
        )
        timer.lap("orders_s")

        if indexes:
            with k.db.transaction() as tx:
                for statement in indexes:
                    tx.execute(statement)
            progress(f"recreated {len(indexes)} secondary indexes")
            timer.lap("indexes_s")
        with k.db.transaction() as tx:
            tx.execute(
                "INSERT INTO write_keys VALUES (?, 'bench history', ?, 'wk_gen', ?, NULL)",
                [SOURCE_ID, "0" * 64, END],
            )
            if dialect.name == "postgres":
                tx.execute("SELECT setval('customer_id_seq', ?)", [customers])
            else:
                tx.execute("DROP SEQUENCE customer_id_seq")
                tx.execute(f"CREATE SEQUENCE customer_id_seq START {customers + 1}")
        counts = _counts(k)
    finally:
        k.close()
    timer.lap("close_s")  # DuckDB checkpoints on close
    if url.startswith(("postgresql://", "postgres://")):
        _vacuum(url)
        timer.lap("vacuum_s")
    kinds = data["customers"]["kind"]
    return {
        "database": "postgres" if url.startswith("postgres") else "duckdb",
        "seed": seed,
        "end": END.isoformat(),
        **counts,
        "known_customers": int((kinds == KNOWN).sum()),
        "anonymous_customers": int((kinds == ANON).sum()),
        "merged_customers": int((kinds == MERGED).sum()),
        "top_decile_event_share": data["top_decile_event_share"],
        "load_s": round(time.perf_counter() - timer.start, 3),
        "load_laps": timer.laps,
        "file_mb": round(Path(url).stat().st_size / 2**20, 1) if Path(url).exists() else None,
    }


LOADED = ("customers", "identities", "events", "orders", "order_items", "refunds")
LOADED_SQL = ", ".join(f"'{table}'" for table in LOADED)


def _drop_secondary_indexes(k: Any) -> list[str]:
    """PostgreSQL: drop the loaded tables' indexes that back no constraint (the migrations'
    own, e.g. events by customer and by time) and return their definitions, to build them
    once after the load instead of maintaining them row by row (several times faster)."""
    with k.db.transaction() as tx:
        rows = tx.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "WHERE i.schemaname = current_schema() AND i.tablename IN "
            f"({LOADED_SQL}) AND NOT EXISTS ("
            "SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
        )
        for name, _ in rows:
            tx.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in rows]


def _counts(k: Any) -> dict[str, int]:
    with k.db.transaction() as tx:
        return {t: int(tx.execute(f"SELECT count(*) FROM {t}")[0][0]) for t in LOADED}


def _vacuum(url: str) -> None:
    """A live database would have been autovacuumed: set hint bits and statistics now."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute("VACUUM (ANALYZE)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="DuckDB file to create")
    where.add_argument("--url", help="postgresql:// URL of an empty database")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the stats as one JSON line")
    args = parser.parse_args(argv)
    if args.customers < 1:
        parser.error("--customers must be ≥ 1")
    stats = load(args.db or args.url, args.customers, args.events, args.seed)
    if args.json:
        sys.stdout.write(json.dumps(stats) + "\n")
    else:
        print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
