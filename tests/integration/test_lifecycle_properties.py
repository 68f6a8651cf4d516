"""Properties of lifecycle compute runs, on real DuckDB files (no mocks).

1. Incremental runs after any split of the event stream (chunks ingested between runs at
   increasing as-of times, windows expiring in between, events dated in the future of early
   runs) leave the same traits, stages and segments as one full recompute.
2. Over a live log (each run sees only events dated after the previous one), runs that
   bring stored traits forward leave what one full recompute counts, for traits of every
   kind.
3. The state as of a time T — evaluated without writing (`lifecycle.state_as_of`), and
   stored by a full run at T — on a store that holds later events too, equals a fresh
   store loaded with only the events up to T.
4. Two computes started together on one Keepers object serialise and leave the state of
   a single run.

Each hypothesis example gets its own temporary directory: the function-scoped `tmp_path`
would be shared by every example of a test.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from keepers.domain.definitions import (
    Definitions,
    SegmentDefinition,
    TraitDefinition,
    default_definitions,
)
from keepers.engine import compute
from keepers.services import lifecycle
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import store_definitions
from keepers.settings import Settings
from tests.helpers import assert_counts_carried

START = datetime(2024, 1, 1, tzinfo=UTC)
USERS = ("u1", "u2", "u3", "u4", "u5", "u6")
KINDS = (
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Order Refunded",
    "Signed Up",
    "NPS Survey Answered",
    "Referral Converted",
    "Email Opened",
    "Email Delivered",
    "Trial Started",
    "identify",
)
# Orders (and what makes a buyer loyal) are drawn more often, so repeat buyers, gaps and
# the way-back stages turn up in a few dozen examples.
WEIGHTED_KINDS = (
    *KINDS,
    *["Order Completed"] * 5,
    "Order Refunded",
    "NPS Survey Answered",
    "Referral Converted",
    "Checkout Started",
)
PLANS = ("free", "pro", "team")
# Seconds into a day: the edges often, so events fall exactly on window and as-of boundaries.
SECONDS = st.one_of(st.sampled_from([0, 1, 43_200, 86_399]), st.integers(0, 86_399))
# What a run's history decides (when a stage was entered, from which one), not the data.
HISTORY_COLUMNS = ("stage_since", "stage_cause", "previous_stage")

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- the event stream ---------------------------------------------------------------------


@dataclass(frozen=True)
class Drawn:
    """One generated message, before it gets its ids."""

    user: str
    kind: str
    day: int
    second: int
    number: int  # revenue, refund amount, NPS score or plan, by kind
    whole_refund: bool

    @property
    def at(self) -> datetime:
        return START + timedelta(days=self.day, seconds=self.second)


def drawn_events(users: int, span: int) -> st.SearchStrategy[Drawn]:
    return st.builds(
        Drawn,
        user=st.sampled_from(USERS[:users]),
        kind=st.sampled_from(WEIGHTED_KINDS),
        day=st.integers(0, span),
        second=SECONDS,
        number=st.integers(0, 400),
        whole_refund=st.booleans(),
    )


@st.composite
def streams(draw: st.DrawFn) -> list[Drawn]:
    """Up to 50 messages of 1-6 customers, over a month to 14 months."""
    users = draw(st.integers(1, len(USERS)))
    span = draw(st.sampled_from([420, 200, 60]))
    # Unique times: the last NPS answer (an argmax over time) must not be a tie.
    return draw(
        st.lists(
            drawn_events(users, span),
            min_size=1,
            max_size=50,
            unique_by=lambda d: (d.day, d.second),
        )
    )


def to_messages(stream: list[Drawn]) -> list[dict[str, Any]]:
    """Segment messages, userId only; order ids in stream order, refunds of those orders."""
    messages = []
    orders = 0
    for index, drawn in enumerate(stream):
        message: dict[str, Any] = {
            "type": "track",
            "userId": drawn.user,
            "messageId": f"m{index}",
            "timestamp": drawn.at.isoformat(),
        }
        if drawn.kind == "identify":
            message["type"] = "identify"
            message["traits"] = {"plan": PLANS[drawn.number % len(PLANS)]}
        else:
            message["event"] = drawn.kind
            message["properties"] = _properties(drawn, orders)
            orders += drawn.kind == "Order Completed"
        messages.append(message)
    return messages


def _properties(drawn: Drawn, orders: int) -> dict[str, Any]:
    if drawn.kind == "Order Completed":
        return {"order_id": f"o{orders}", "revenue": float(drawn.number)}
    if drawn.kind == "Order Refunded":
        refund: dict[str, Any] = {"order_id": f"o{drawn.number % max(orders, 1)}"}
        if not drawn.whole_refund:
            refund["total"] = float(drawn.number % 150)
        return refund
    if drawn.kind == "NPS Survey Answered":
        return {"score": drawn.number % 11}
    if drawn.kind == "Product Viewed":
        return {"product_id": f"p{drawn.number % 5}"}
    return {}


def at_day(day: int, second: int = 0) -> datetime:
    return START + timedelta(days=day, seconds=second)


# --- stores and what they hold ------------------------------------------------------------


@contextmanager
def store(directory: str, name: str, now: datetime) -> Iterator[Keepers]:
    opened = Keepers.open(
        Settings(database_url=str(Path(directory) / f"{name}.duckdb")), clock=lambda: now
    )
    try:
        yield opened
    finally:
        opened.close()


def ingest(keepers: Keepers, messages: list[dict[str, Any]]) -> None:
    if not messages:
        return
    report = keepers.ingest_messages(messages, source_id="prop")
    assert report.rejected == []
    assert report.stored == len(messages)


def customer_state(keepers: Keepers) -> dict[str, dict[str, Any]]:
    """userId → stored traits (hidden aggregate columns too), stage and segment list."""
    with keepers.db.transaction() as tx:
        rows = tx.fetch_arrow("SELECT * FROM customer_state").to_pylist()
    return by_user(keepers, rows)


def evaluated_as_of(keepers: Keepers, as_of: datetime) -> dict[str, dict[str, Any]]:
    """userId → traits, stage and segments as of a moment, evaluated without writing."""
    return by_user(keepers, lifecycle.state_as_of(keepers.db, as_of=as_of).to_pylist())


def by_user(keepers: Keepers, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows keyed by userId (customer ids differ between stores), without the columns a
    run's history decides."""
    with keepers.db.transaction() as tx:
        users = dict(tx.execute("SELECT customer_id, user_id FROM customers"))
    state: dict[str, dict[str, Any]] = {}
    for row in rows:
        user = users[row.pop("customer_id")]
        assert user is not None and user not in state, f"customer of {user} twice in the state"
        for column in HISTORY_COLUMNS:
            row.pop(column, None)
        state[user] = row
    return state


def open_memberships(keepers: Keepers) -> set[tuple[str, str]]:
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            "SELECT c.user_id, m.segment FROM segment_memberships m "
            "JOIN customers c ON c.customer_id = m.customer_id WHERE m.exited_at IS NULL"
        )
    pairs = {(user, segment) for user, segment in rows}
    assert len(pairs) == len(rows), f"a customer is in a segment twice: {sorted(rows)}"
    return pairs


def check_consistent(keepers: Keepers) -> tuple[dict[str, dict[str, Any]], set]:
    """The state, and the open memberships, which must match its segment lists."""
    state = customer_state(keepers)
    memberships = open_memberships(keepers)
    listed = {
        (user, segment)
        for user, row in state.items()
        for segment in (row["segments"] or "").split(",")
        if segment
    }
    assert memberships == listed, "open memberships disagree with customer_state.segments"
    return state, memberships


def state_differences(
    actual: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> list[tuple[str, str, Any, Any]]:
    """(user, column, actual, expected) for every value that differs; floats approximately."""
    differences: list[tuple[str, str, Any, Any]] = []
    for user in sorted(actual.keys() | expected.keys()):
        if user not in actual or user not in expected:
            differences.append((user, "<row>", actual.get(user), expected.get(user)))
            continue
        a, e = actual[user], expected[user]
        for column in sorted(a.keys() | e.keys()):
            left, right = a.get(column), e.get(column)
            if isinstance(left, float) and isinstance(right, float):
                if left != pytest.approx(right):
                    differences.append((user, column, left, right))
            elif left != right:
                differences.append((user, column, left, right))
    return differences


def assert_same_state(
    actual: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> None:
    differences = state_differences(actual, expected)
    assert differences == [], "state differs (user, column, actual, expected)"


def assert_same(
    actual: tuple[dict[str, dict[str, Any]], set], expected: tuple[dict[str, dict[str, Any]], set]
) -> None:
    """Same traits, stages and segment lists, and the same open segment memberships."""
    assert_same_state(actual[0], expected[0])
    assert actual[1] == expected[1], "open segment memberships differ"


# --- 1. incremental after any split equals a full recompute -------------------------------


@st.composite
def split_runs(draw: st.DrawFn) -> tuple[list[Drawn], list[int], list[datetime], datetime]:
    """A stream, where to cut it, increasing as-of times (one per chunk) and the clock."""
    stream = draw(streams())
    chunks = draw(st.integers(2, 5))
    cuts = sorted(
        draw(st.lists(st.integers(0, len(stream)), min_size=chunks - 1, max_size=chunks - 1))
    )
    day = draw(st.integers(-30, 430))
    moments = []
    for index in range(chunks):
        if index:
            day += draw(st.integers(0, 200))
        moments.append(at_day(day, draw(SECONDS)))
    moments.sort()
    # The ingest clock (customers.created_at): before, between or after the runs.
    now = moments[0] + timedelta(
        seconds=draw(st.integers(-60 * 86_400, (moments[-1] - moments[0]).days * 86_400 + 86_400))
    )
    return stream, cuts, moments, now


def chunked(stream: list[Any], cuts: list[int]) -> list[list[Any]]:
    bounds = [0, *cuts, len(stream)]
    return [stream[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


@PROPERTY_SETTINGS
@given(split_runs())
def test_incremental_runs_after_any_split_equal_a_full_recompute(
    case: tuple[list[Drawn], list[int], list[datetime], datetime],
) -> None:
    stream, cuts, moments, now = case
    messages = to_messages(stream)
    note(f"clock {now}; runs at {moments}; chunks cut at {cuts}")
    note(f"messages {messages}")
    with tempfile.TemporaryDirectory() as directory:
        with store(directory, "incremental", now) as a:
            for chunk, as_of in zip(chunked(messages, cuts), moments, strict=True):
                ingest(a, chunk)
                report = a.compute(as_of=as_of)
                assert_counts_carried(a, report)
                event(f"run mode: {report.mode}")
            incremental = check_consistent(a)
        with store(directory, "full", now) as b:
            ingest(b, messages)
            report = b.compute(as_of=moments[-1], full=True)
            assert report.mode == "full"
            full = check_consistent(b)
    for row in full[0].values():
        event(f"stage reached: {row['stage']}")
    assert_same(incremental, full)


def test_customer_created_between_runs_is_picked_up_incrementally() -> None:
    """The minimal case hypothesis finds when the ingest clock lies between two runs."""
    viewed = {
        "type": "track",
        "userId": "u1",
        "event": "Product Viewed",
        "messageId": "m0",
        "timestamp": at_day(100).isoformat(),  # dated after both runs
    }
    with tempfile.TemporaryDirectory() as directory:
        with store(directory, "incremental", at_day(20)) as a:
            ingest(a, [viewed])
            a.compute(as_of=at_day(10))  # before the customer existed: not in the state
            assert a.compute(as_of=at_day(30)).mode == "incremental"
            incremental = check_consistent(a)
        with store(directory, "full", at_day(20)) as b:
            ingest(b, [viewed])
            b.compute(as_of=at_day(30), full=True)
            full = check_consistent(b)
    assert set(full[0]) == {"u1"}  # created on day 20, so known on day 30 (stage awareness)
    assert_same(incremental, full)  # fails: the incremental state has no row for u1


# --- 2. over a live log, stored traits brought forward equal a full recompute ------------


# Traits of every kind an incremental run brings forward from the stored value and the
# events since (sums, extremes, first and last values, filtered counts, a profile trait),
# and windowed ones it recounts (an average, a distinct count), all read by segments.
LIVE_TRAITS = [
    TraitDefinition(key="spent", aggregate="sum", event="Order Completed", property="revenue"),
    TraitDefinition(key="smallest", aggregate="min", event="Order Completed", property="revenue"),
    TraitDefinition(key="largest", aggregate="max", event="Order Completed", property="revenue"),
    TraitDefinition(key="first_product", aggregate="first", property="product_id"),
    TraitDefinition(
        key="last_score", aggregate="last", event="NPS Survey Answered", property="score"
    ),
    TraitDefinition(
        key="big_orders",
        aggregate="count",
        event="Order Completed",
        where="properties.revenue > 200",
    ),
    TraitDefinition(key="recent_avg", aggregate="avg", property="revenue", days=45),
    TraitDefinition(key="products_30d", aggregate="distinct", property="product_id", days=30),
]
LIVE_SEGMENTS = {
    "big_spender": "spent > 300 and largest >= 200",
    "cheap_first": "smallest < 50",
    "p1_first": 'first_product == "p1"',
    "happy": "last_score >= 9",
    "browsing": "products_30d >= 2 or recent_avg > 150",
    "pro": 'traits.plan == "pro"',
}


@st.composite
def live_runs(draw: st.DrawFn) -> tuple[list[Drawn], list[int], list[datetime]]:
    """A stream in time order, like a live log, cut into chunks; each run's as-of lies
    after its chunk's last event and before the next chunk's first, so the runs see only
    events dated after the previous run (the traits are brought forward)."""
    stream = sorted(draw(streams()), key=lambda d: d.at)
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream)), min_size=1, max_size=4))))
    chunks = chunked(stream, [c for c in cuts if c < len(stream)])
    moments = []
    for index, chunk in enumerate(chunks):
        last = chunk[-1].at if chunk else moments[-1]
        following = chunks[index + 1][0].at if index + 1 < len(chunks) else None
        gap = (following - last).total_seconds() if following else 90 * 86_400
        moments.append(last + timedelta(seconds=draw(st.integers(0, max(0, int(gap) - 1)))))
    return stream, [len(c) for c in chunks], moments


@PROPERTY_SETTINGS
@given(live_runs())
def test_runs_over_a_live_log_bring_traits_forward_as_a_full_recompute_counts_them(
    case: tuple[list[Drawn], list[int], list[datetime]],
) -> None:
    stream, sizes, moments = case
    messages = to_messages(stream)
    note(f"runs at {moments}; chunk sizes {sizes}")
    definitions = default_definitions()
    definitions.traits += LIVE_TRAITS
    definitions.segments += [SegmentDefinition(key=k, rule=r) for k, r in LIVE_SEGMENTS.items()]
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    with tempfile.TemporaryDirectory() as directory:
        with store(directory, "incremental", START) as a:
            define(a, definitions)
            for index, as_of in enumerate(moments):
                ingest(a, messages[bounds[index] : bounds[index + 1]])
                report = a.compute(as_of=as_of)
                assert_counts_carried(a, report)
                event(f"run mode: {report.mode}")
            incremental = check_consistent(a)
        with store(directory, "full", START) as b:
            define(b, definitions)
            ingest(b, messages)
            b.compute(as_of=moments[-1], full=True)
            full = check_consistent(b)
    assert_same(incremental, full)


def define(keepers: Keepers, definitions: Definitions) -> None:
    with keepers.db.transaction() as tx:
        store_definitions(tx, definitions, actor="test", summary="live log", now=START)


# --- 3. as-of equals a fresh store loaded with the events up to T -------------------------


@st.composite
def as_of_runs(
    draw: st.DrawFn,
) -> tuple[list[Drawn], list[datetime], datetime, datetime, float]:
    """A stream, earlier runs at any as-of times (any order), the as-of T, the clock, and
    the share of changed rows above which a full run rebuilds the state table (0: always
    rebuilt; 1: changed rows rewritten in place)."""
    stream = draw(streams())
    earlier = [
        at_day(draw(st.integers(-30, 450)), draw(SECONDS)) for _ in range(draw(st.integers(0, 3)))
    ]
    if stream and draw(st.booleans()):  # often exactly at an event
        picked = draw(st.sampled_from(stream))
        target = picked.at + timedelta(seconds=draw(st.sampled_from([-1, 0, 1])))
    else:
        target = at_day(draw(st.integers(-30, 450)), draw(SECONDS))
    now = at_day(draw(st.integers(-30, 900)), draw(SECONDS))
    return stream, earlier, target, now, draw(st.sampled_from([0.0, 1.0]))


@PROPERTY_SETTINGS
@given(as_of_runs())
def test_state_as_of_equals_a_store_loaded_up_to_then(
    case: tuple[list[Drawn], list[datetime], datetime, datetime, float],
) -> None:
    stream, earlier, target, now, rewrite_share = case
    messages = to_messages(stream)
    up_to_target = [m for m, d in zip(messages, stream, strict=True) if d.at <= target]
    note(f"clock {now}; earlier runs at {earlier}; as-of {target}")
    note(f"messages {messages}")
    with tempfile.TemporaryDirectory() as directory:
        with store(directory, "up_to_target", now) as c:
            ingest(c, up_to_target)
            c.compute(as_of=target, full=True)
            expected = check_consistent(c)
            assert_same_state(evaluated_as_of(c, target), expected[0])
        with store(directory, "everything", now) as a:
            ingest(a, messages)
            for as_of in earlier:
                a.compute(as_of=as_of)
            # Evaluated without writing, beside whatever the earlier runs stored ...
            evaluated = evaluated_as_of(a, target)
            # ... and stored by a full run at T (as-of moving backwards forces one anyway),
            # which rewrites the changed rows in place or rebuilds the table
            with mock.patch.object(compute, "REWRITE_SHARE", rewrite_share):
                assert a.compute(as_of=target, full=True).mode == "full"
            event(f"full run over a stored state, rewrite share {rewrite_share}")
            stored, memberships = check_consistent(a)
    for row in expected[0].values():
        event(f"stage reached: {row['stage']}")
    assert_same_state(without_unseen(evaluated, stream, target, now), expected[0])
    stored = without_unseen(stored, stream, target, now)
    memberships = {(user, segment) for user, segment in memberships if user in stored}
    assert_same((stored, memberships), expected)


def without_unseen(
    state: dict[str, dict[str, Any]], stream: list[Drawn], target: datetime, now: datetime
) -> dict[str, dict[str, Any]]:
    """A customer the store already knew at T (customers.created_at, the ingest clock,
    <= T) is in its state even when all its events are dated after T; a store loaded up
    to T has never heard of it. Such rows must be empty; they are left out of comparisons."""
    unseen = set(state) - {d.user for d in stream if d.at <= target}
    if now > target:
        assert unseen == set(), "customers unknown at T are in the state"
    for user in unseen:
        row = state[user]
        assert (row["events"], row["orders"], row["first_seen_at"]) == (0, 0, None), row
    return {user: row for user, row in state.items() if user not in unseen}


# --- 4. concurrent computes on one Keepers object -----------------------------------------


def fixed_stream(first_day: int, count: int) -> list[dict[str, Any]]:
    """A deterministic stream: four customers shopping, buying, refunding over a year."""
    stream = [
        Drawn(
            user=USERS[i % 4],
            kind=KINDS[(i * 5) % len(KINDS)],
            day=first_day + (i * 37) % 365,
            second=(i * 7_919) % 86_400,
            number=(i * 53) % 400,
            whole_refund=i % 3 == 0,
        )
        for i in range(count)
    ]
    messages = to_messages(stream)
    for message in messages:
        message["messageId"] = f"d{first_day}-{message['messageId']}"
        if "order_id" in message.get("properties", {}):
            message["properties"]["order_id"] += f"-{first_day}"
    return messages


def compute_together(keepers: Keepers, runs: list[dict[str, Any]]) -> None:
    """Start the runs at the same moment in separate threads; re-raise any failure."""
    barrier = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def run(arguments: dict[str, Any]) -> None:
        try:
            barrier.wait(timeout=30)
            keepers.compute(**arguments)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(arguments,)) for arguments in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a compute did not finish"
    if errors:
        raise errors[0]


def test_concurrent_computes_serialise_and_equal_a_single_run() -> None:
    now = at_day(500)
    first, second = fixed_stream(0, 60), fixed_stream(200, 40)
    t1, t2 = at_day(300, 43_200), at_day(420)
    with tempfile.TemporaryDirectory() as directory:
        with store(directory, "shared", now) as shared:
            ingest(shared, first)
            compute_together(shared, [{"as_of": t1}, {"as_of": t1}])
            after_first = check_consistent(shared)
            ingest(shared, second)
            compute_together(shared, [{"as_of": t2}, {"as_of": t2, "full": True}])
            after_second = check_consistent(shared)
            with shared.db.transaction() as tx:
                runs = tx.execute("SELECT run_id, mode FROM compute_runs ORDER BY run_id")
        with store(directory, "single_first", now) as single:
            ingest(single, first)
            single.compute(as_of=t1)
            expected_first = check_consistent(single)
        with store(directory, "single_second", now) as single:
            ingest(single, first + second)
            single.compute(as_of=t2)
            expected_second = check_consistent(single)
    assert set(expected_second[0]) == {"u1", "u2", "u3", "u4"}
    assert [run_id for run_id, _ in runs] == [1, 2, 3, 4]
    assert runs[0][1] == "full"  # the very first run; the one queued behind it is incremental
    assert runs[1][1] == "incremental"
    assert_same(after_first, expected_first)
    assert_same(after_second, expected_second)
