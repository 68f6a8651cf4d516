"""Identity resolution for one group of events: every event gets the customer it belongs to.

Rules (Segment's identity model, as users of Segment/RudderStack expect it):
- each `userId` and each `anonymousId` maps to exactly one customer (`identities` table);
- an anonymous profile that meets a `userId` (any message carrying both ids, usually
  `identify`) becomes that user: either it simply gains the userId, or, when the userId
  already has a profile, it is merged into it;
- an anonymousId already tied to a *different* known user is not merged (shared device):
  the event goes to the userId's customer;
- `alias` (previousId → userId) merges the previous id's customer into the userId's.

The walk over the group is in Python because order matters within a group, but all reads
and writes are set-based: one query to load the group's identities, one statement per kind
of change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

from keepers.domain.events import Event
from keepers.store.database import Tx

Key = tuple[str, str]  # ("user" | "anon", value)


@dataclass
class Resolution:
    """What the walk decided; `apply_resolution()` writes it."""

    customer_ids: list[int]
    new_customers: dict[int, tuple[str | None, str | None]]  # id → (user_id, anonymous_id)
    dirty_keys: dict[Key, int] = field(default_factory=dict)
    existing_keys: set[Key] = field(default_factory=set)  # of the dirty keys, those stored
    became_known: dict[int, str] = field(default_factory=dict)
    merges: dict[int, int] = field(default_factory=dict)  # absorbed → surviving


class _Walk:
    def __init__(self, known: dict[Key, int], owners: dict[int, str | None]) -> None:
        self.ident = known
        self.owner = owners  # customer → its userId (None = anonymous profile)
        self.redirect: dict[int, int] = {}
        self.new: dict[int, tuple[str | None, str | None]] = {}
        self.dirty: set[Key] = set()
        self.became_known: dict[int, str] = {}

    def _create(self, user_id: str | None, anonymous_id: str | None) -> int:
        placeholder = -(len(self.new) + 1)
        self.new[placeholder] = (user_id, anonymous_id)
        self.owner[placeholder] = user_id
        return placeholder

    def _assign(self, key: Key, customer: int) -> None:
        self.ident[key] = customer
        self.dirty.add(key)

    def _merge(self, absorbed: int, surviving: int) -> None:
        if absorbed == surviving:
            return
        self.redirect[absorbed] = surviving
        for key, customer in list(self.ident.items()):
            if customer == absorbed:
                self._assign(key, surviving)

    def final(self, customer: int) -> int:
        while customer in self.redirect:
            customer = self.redirect[customer]
        return customer

    def event(self, event: Event) -> int:
        if event.type == "alias":
            return self._alias(event.previous_id or "", event.user_id or "")
        anon = ("anon", event.anonymous_id) if event.anonymous_id else None
        on_anon = self.ident.get(anon) if anon else None
        if event.user_id is None:
            if on_anon is None:
                on_anon = self._create(None, event.anonymous_id)
                self._assign(anon, on_anon)  # type: ignore[arg-type]
            return on_anon
        return self._known(("user", event.user_id), anon, on_anon)

    def _known(self, user: Key, anon: Key | None, on_anon: int | None) -> int:
        customer = self.ident.get(user)
        anonymous_profile = on_anon is not None and self.owner.get(on_anon) is None
        if customer is None:
            if anonymous_profile:
                customer = on_anon
                self.owner[customer] = user[1]  # type: ignore[index]
                self.became_known[customer] = user[1]  # type: ignore[index]
            else:
                customer = self._create(user[1], anon[1] if anon else None)
            self._assign(user, customer)  # type: ignore[arg-type]
        elif anonymous_profile and on_anon != customer:
            self._merge(on_anon, customer)  # type: ignore[arg-type]
        if anon is not None and on_anon is None:
            self._assign(anon, customer)
        return customer

    def _alias(self, previous_id: str, user_id: str) -> int:
        user = ("user", user_id)
        prev_key = ("user", previous_id) if ("user", previous_id) in self.ident else None
        prev_key = prev_key or ("anon", previous_id)
        previous = self.ident.get(prev_key)
        customer = self.ident.get(user)
        if customer is None and previous is None:
            customer = self._create(user_id, previous_id)
            self._assign(prev_key, customer)
        elif customer is None:
            customer = previous
            if self.owner.get(customer) is None:
                self.owner[customer] = user_id
                self.became_known[customer] = user_id
        elif previous is None:
            self._assign(prev_key, customer)
        else:
            self._merge(previous, customer)
        self._assign(user, customer)  # type: ignore[arg-type]
        return customer  # type: ignore[return-value]


def _keys_of(events: list[Event]) -> set[Key]:
    keys: set[Key] = set()
    for event in events:
        if event.user_id:
            keys.add(("user", event.user_id))
        if event.anonymous_id:
            keys.add(("anon", event.anonymous_id))
        if event.previous_id:
            keys.add(("user", event.previous_id))
            keys.add(("anon", event.previous_id))
    return keys


def _load(tx: Tx, keys: set[Key]) -> tuple[dict[Key, int], dict[int, str | None]]:
    kinds, values = zip(*keys, strict=True) if keys else ((), ())
    tx.stage("stage_keys", pa.table({"kind": list(kinds), "value": list(values)}))
    rows = tx.execute(
        "SELECT i.kind, i.value, i.customer_id, c.user_id FROM identities i "
        "JOIN stage_keys k ON i.kind = k.kind AND i.value = k.value "
        "JOIN customers c ON c.customer_id = i.customer_id"
    )
    known = {(kind, value): customer for kind, value, customer, _ in rows}
    owners = {customer: user for _, _, customer, user in rows}
    return known, owners


def resolve_identities(tx: Tx, events: list[Event]) -> Resolution:
    """Decide the customer of every event in the group (placeholders < 0 for new ones)."""
    known, owners = _load(tx, _keys_of(events))
    stored = set(known)
    walk = _Walk(known, owners)
    raw = [walk.event(event) for event in events]
    merges = {absorbed: walk.final(absorbed) for absorbed in walk.redirect}
    return Resolution(
        customer_ids=[walk.final(c) for c in raw],
        new_customers={c: ids for c, ids in walk.new.items() if c not in walk.redirect},
        dirty_keys={key: walk.final(walk.ident[key]) for key in walk.dirty},
        existing_keys=walk.dirty & stored,
        became_known={walk.final(c): u for c, u in walk.became_known.items()},
        merges={a: s for a, s in merges.items() if a > 0},
    )


def apply_resolution(
    tx: Tx, resolution: Resolution, now: datetime
) -> tuple[list[int], dict[int, str]]:
    """Write new customers, identities and merges. Returns the events' real customer ids
    and the anonymous profiles that became known (customer → userId), which the caller
    folds into its one update of the customers table."""
    real = _allocate(tx, resolution, now)

    def to_real(customer: int) -> int:
        return real.get(customer, customer)

    _write_identities(
        tx,
        {k: to_real(c) for k, c in resolution.dirty_keys.items()},
        resolution.existing_keys,
        now,
    )
    if resolution.merges:
        _merge_customers(tx, {a: to_real(s) for a, s in resolution.merges.items()}, now)
    became_known = {to_real(c): user for c, user in resolution.became_known.items()}
    return [to_real(c) for c in resolution.customer_ids], became_known


def _allocate(tx: Tx, resolution: Resolution, now: datetime) -> dict[int, int]:
    placeholders = sorted(resolution.new_customers, reverse=True)  # -1, -2, … in order
    if not placeholders:
        return {}
    ids = [
        row[0]
        for row in tx.execute(
            f"SELECT nextval('customer_id_seq') FROM {tx.dialect.series('?')}", [len(placeholders)]
        )
    ]
    real = dict(zip(placeholders, sorted(ids), strict=True))
    users = [resolution.new_customers[p][0] for p in placeholders]
    anons = [resolution.new_customers[p][1] for p in placeholders]
    tx.stage(
        "stage_new_customers",
        pa.table(
            {
                "customer_id": pa.array([real[p] for p in placeholders], pa.int64()),
                "user_id": pa.array(users, pa.string()),
                "anonymous_id": pa.array(anons, pa.string()),
                "created_at": pa.array([now] * len(placeholders), pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    tx.execute(
        "INSERT INTO customers (customer_id, user_id, anonymous_id, traits, created_at, "
        f"updated_at) SELECT customer_id, user_id, anonymous_id, CAST('{{}}' AS "
        f"{tx.dialect.json_type}), created_at, created_at FROM stage_new_customers"
    )
    return real


def _write_identities(tx: Tx, keys: dict[Key, int], existing: set[Key], now: datetime) -> None:
    """New keys are inserted, moved keys updated. Writers are serialised (one DuckDB owner,
    or the PostgreSQL advisory lock), so what `_load` saw is the truth and no ON CONFLICT
    is needed (it costs ~2 ms a statement in DuckDB, measured)."""
    new = {key: customer for key, customer in keys.items() if key not in existing}
    moved = {key: customer for key, customer in keys.items() if key in existing}
    for name, part in (("stage_identities", new), ("stage_moved", moved)):
        if not part:
            continue
        kinds, values = zip(*part, strict=True)
        tx.stage(
            name,
            pa.table(
                {
                    "kind": list(kinds),
                    "value": list(values),
                    "customer_id": pa.array(list(part.values()), pa.int64()),
                    "created_at": pa.array([now] * len(part), pa.timestamp("us", tz="UTC")),
                }
            ),
        )
    if new:
        tx.execute(
            "INSERT INTO identities SELECT kind, value, customer_id, created_at "
            "FROM stage_identities"
        )
    if moved:
        tx.execute(
            "UPDATE identities SET customer_id = m.customer_id FROM stage_moved m "
            "WHERE identities.kind = m.kind AND identities.value = m.value"
        )


def mark_dirty(tx: Tx, customers_sql: str) -> None:
    """Queue customers for the engine's next incremental compute (same transaction as the
    write that changed them; writers are serialised, so the numbers rise in commit order),
    with the earliest timestamp of their new events (`customers_sql` gives `customer_id,
    earliest`; NULL for a change that is not new events): the engine rescans a customer's
    history only when it reaches back before the previous run."""
    tx.execute(
        "INSERT INTO dirty_customers (customer_id, seq, earliest) "
        f"SELECT customer_id, nextval('dirty_seq'), earliest FROM ({customers_sql}) AS d"
    )


def _merge_customers(tx: Tx, merges: dict[int, int], now: datetime) -> None:
    """Move everything of each absorbed customer to the surviving one, set-based."""
    absorbed, surviving = zip(*merges.items(), strict=True)
    tx.stage(
        "stage_merges",
        pa.table({"src": pa.array(absorbed, pa.int64()), "dst": pa.array(surviving, pa.int64())}),
    )
    # no earliest timestamp: a merged customer's history is rescanned
    mark_dirty(
        tx,
        "SELECT src AS customer_id, CAST(NULL AS TIMESTAMPTZ) AS earliest FROM stage_merges "
        "UNION SELECT dst, CAST(NULL AS TIMESTAMPTZ) FROM stage_merges",
    )
    for table in ("events", "orders", "refunds", "identities"):
        tx.execute(
            f"UPDATE {table} SET customer_id = m.dst FROM stage_merges m "
            f"WHERE {table}.customer_id = m.src"
        )
    tx.execute(
        "INSERT INTO account_members SELECT a.account_id, m.dst, a.joined_at "
        "FROM account_members a JOIN stage_merges m ON a.customer_id = m.src "
        "ON CONFLICT DO NOTHING"
    )
    tx.execute("DELETE FROM account_members WHERE customer_id IN (SELECT src FROM stage_merges)")
    one_per_survivor = {}
    for src, dst in merges.items():
        one_per_survivor.setdefault(dst, src)
    tx.stage(
        "stage_merge_profile",
        pa.table(
            {
                "src": pa.array(list(one_per_survivor.values()), pa.int64()),
                "dst": pa.array(list(one_per_survivor), pa.int64()),
            }
        ),
    )
    merged = tx.dialect.json_merge(
        "COALESCE(a.traits, customers.traits)", "COALESCE(customers.traits, a.traits)"
    )
    tx.execute(
        f"UPDATE customers SET traits = {merged}, "
        "email = COALESCE(customers.email, a.email), "
        "anonymous_id = COALESCE(customers.anonymous_id, a.anonymous_id), "
        "updated_at = ? "
        "FROM (SELECT m.dst, c.* FROM stage_merge_profile m "
        "      JOIN customers c ON c.customer_id = m.src) a "
        "WHERE customers.customer_id = a.dst",
        [now],
    )
    tx.execute(
        "UPDATE customers SET merged_into = m.dst, updated_at = ? FROM stage_merges m "
        "WHERE customers.customer_id = m.src",
        [now],
    )
