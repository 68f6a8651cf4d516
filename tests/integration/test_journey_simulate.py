"""`journeys simulate`: a journey replayed over a small hand-made history, on DuckDB and
PostgreSQL. Every expectation below is worked out by hand from the history (the timeline is
in the comments); the split/holdout case is checked against the live engine itself.

History (S = 2026-02-02 00:00 UTC, day n = S + n days; stages from a daily backfill that
starts at S - 3 days, so a stage move is recorded at the midnight after what caused it):

    u0  Cart Abandoned -1 15:00; orders 1 10:00 and 3 08:00   conversion at 2, retention at 4
    u1  Cart Abandoned 0 15:00; order 1 11:00; Review 5 10:00 conversion at 2
    u2  orders 6 09:00 and 8 10:00; NPS 10 at 10 12:00        conversion at 7, retention at 9
    u3  Cart Abandoned 3 12:00; Checkout 9 10:00; order 10 09:00
                                                consideration at 10, conversion at 11
    u4  order -2 10:00                                        conversion at -1 (before S)
    u5  Checkout 3 10:00; Unsubscribed 5 10:00; order 6 12:00 consideration at 4, conversion at 7
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keepers.domain.journeys import parse_journey
from keepers.engine.plan import Plan
from keepers.errors import InvalidInput
from keepers.journeys.simulate import simulate, simulated_moments
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import compute_transaction, load_definitions
from keepers.settings import Settings
from keepers.testing.postgres import create_database

S = datetime(2026, 2, 2, tzinfo=UTC)
END = S + timedelta(days=12)
UNSUB = "<p>x <a href='{{ unsubscribe_url }}'>unsubscribe</a></p>"
USERS = [f"u{i}" for i in range(6)]
WELCOME = {
    "key": "welcome",
    "trigger": {"stage_entered": "conversion"},
    "entry": {"rule": "not unsubscribed"},
    "goal": {"event": "Review Written", "within_days": 10},
    "steps": [
        {"id": "hello", "email": {"subject": "Welcome", "html": UNSUB}},
        {"id": "pause", "wait": "2d"},
        {"id": "bought", "branch": {"rule": "orders >= 2", "then": "thanks", "else": "nudge"}},
        {"id": "nudge", "email": {"subject": "Still thinking?", "html": UNSUB}, "next": "done"},
        {"id": "thanks", "email": {"subject": "Thanks again", "html": UNSUB}},
        {"id": "done", "exit": {}},
    ],
}
PERSISTENT = (
    "enrollments",
    "outbox",
    "journey_log",
    "tasks",
    "changes",
    "stage_history",
    "segment_memberships",
    "compute_runs",
    "customer_state",
    "journeys",
)


def day(n: float, hour: int = 0) -> datetime:
    return S + timedelta(days=n, hours=hour)


def message(kind: str, user: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "userId": user,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        **fields,
    }


def track(user: str, event: str, at: datetime) -> dict[str, Any]:
    return message("track", user, at, event=event, properties={})


def order(user: str, at: datetime, n: int) -> dict[str, Any]:
    properties = {"order_id": f"{user}-{n}", "revenue": 40.0}
    return message("track", user, at, event="Order Completed", properties=properties)


HISTORY = [
    *(message("identify", u, day(-5, 12), traits={"email": f"{u}@mail.example"}) for u in USERS),
    track("u0", "Cart Abandoned", day(-1, 15)),
    order("u0", day(1, 10), 1),
    order("u0", day(3, 8), 2),
    track("u1", "Cart Abandoned", day(0, 15)),
    order("u1", day(1, 11), 1),
    track("u1", "Review Written", day(5, 10)),
    order("u2", day(6, 9), 1),
    order("u2", day(8, 10), 2),
    message("track", "u2", day(10, 12), event="NPS Survey Answered", properties={"score": 10}),
    track("u3", "Cart Abandoned", day(3, 12)),
    track("u3", "Checkout Started", day(9, 10)),
    order("u3", day(10, 9), 1),
    order("u4", day(-2, 10), 1),
    track("u5", "Checkout Started", day(3, 10)),
    track("u5", "Unsubscribed", day(5, 10)),
    order("u5", day(6, 12), 1),
]


def store_url(request: pytest.FixtureRequest, folder: Any) -> str:
    if request.param == "duckdb":
        return str(folder / "keepers.duckdb")
    server = request.getfixturevalue("postgres_server")
    return create_database(server, f"t_sim_{uuid.uuid4().hex[:8]}")


@pytest.fixture(
    scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def shop(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Keepers]:
    """The history above, with stage history and segment stays backfilled day by day."""
    keepers = Keepers.open(
        Settings(database_url=store_url(request, tmp_path_factory.mktemp("sim"))),
        clock=lambda: END,
    )
    assert keepers.ingest_messages(HISTORY, source_id="t").stored == len(HISTORY)
    keepers.lifecycle.compute(backfill_since=day(-3), as_of=END, every="day")
    yield keepers
    keepers.close()


def footprint(tx: Any) -> dict[str, int]:
    return {table: tx.execute(f"SELECT count(*) FROM {table}")[0][0] for table in PERSISTENT}


def leftover_tables(tx: Any) -> list[str]:
    mine = "(strpos({0}, '_kp_sim') = 1 OR {0} = '_kp_asof')"
    if tx.dialect.name == "postgres":
        sql = "SELECT tablename FROM pg_tables WHERE " + mine.format("tablename")
    else:
        sql = "SELECT table_name FROM duckdb_tables() WHERE " + mine.format("table_name")
    return [row[0] for row in tx.execute(sql)]


def replay(
    keepers: Keepers,
    body: dict[str, Any],
    since: datetime = S,
    until: datetime = END,
    step: timedelta = timedelta(days=1),
) -> dict[str, Any]:
    """Simulate, and check that nothing persistent changed and no temp table is left."""
    with compute_transaction(keepers.db) as tx:
        before = footprint(tx)
        plan = Plan.build(load_definitions(tx).definitions)
        result = simulate(tx, plan, parse_journey(body), since, until, step=step)
        assert leftover_tables(tx) == []
        assert footprint(tx) == before
    assert result["written"] is False
    return result


def by_user(result: dict[str, Any], field: str) -> dict[str, Any]:
    return {row["user_id"]: row[field] for row in result["sample"]}


def test_welcome_replay_enters_the_converted_and_counts_every_step(shop: Keepers) -> None:
    result = replay(shop, WELCOME)
    # day 2: u0, u1 enter (hello); day 4: the wait ends, u0 has 2 orders → thanks, u1 → nudge;
    # day 7: u2 enters, u5 is refused (unsubscribed on day 5); day 9: u2 has 2 orders → thanks;
    # day 11: u3 enters and is still waiting at `pause` on day 12; u4 converted before S
    assert result["entered"] == 4
    assert result["customers"] == 4
    assert result["skipped"] == {"entry rule not met": 1}  # u5
    assert result["by_step"] == {
        "hello": {"reached": 4, "queued": 4},
        "pause": {"reached": 4},
        "bought": {"reached": 3, "paths": {"then": 2, "else": 1}},  # u0 u2 | u1
        "nudge": {"reached": 1, "queued": 1},  # u1
        "thanks": {"reached": 2, "queued": 2},  # u0 u2
        "done": {"reached": 3},
    }
    assert result["messages"] == 7
    assert result["goal_reached"] == 1  # u1's review on day 5, after she left on day 4
    assert result["still_active"] == 1  # u3
    assert result["statuses"] == {"active": 1, "exited": 3}
    assert by_user(result, "path") == {
        "u0": ["hello", "pause", "bought", "thanks", "done"],
        "u1": ["hello", "pause", "bought", "nudge", "done"],
        "u2": ["hello", "pause", "bought", "thanks", "done"],
        "u3": ["hello", "pause"],
    }
    assert by_user(result, "entered_at") == {
        "u0": day(2).isoformat(),
        "u1": day(2).isoformat(),
        "u2": day(7).isoformat(),
        "u3": day(11).isoformat(),
    }
    assert by_user(result, "goal_at")["u1"] == day(5, 10).isoformat()
    assert (result["since"], result["until"], result["step_days"]) == (
        S.isoformat(),
        END.isoformat(),
        1.0,
    )
    assert result["notes"] == []


def test_a_coarser_step_sees_everything_later(shop: Keepers) -> None:
    # ticks at days 0, 4, 8, 12: u0 u1 enter on day 4 and their wait ends on day 8 — but
    # u1's review (day 5) is seen first, on day 8, so she leaves with the goal before the
    # branch; u2 enters on day 8 (wait ends on 12: two orders), u3 on day 12
    result = replay(shop, WELCOME, step=timedelta(days=4))
    assert by_user(result, "entered_at") == {
        "u0": day(4).isoformat(),
        "u1": day(4).isoformat(),
        "u2": day(8).isoformat(),
        "u3": day(12).isoformat(),
    }
    assert by_user(result, "path")["u1"] == ["hello", "pause"]
    assert result["statuses"] == {"active": 1, "exited": 2, "goal": 1}
    assert result["by_step"]["bought"] == {"reached": 2, "paths": {"then": 2, "else": 0}}
    assert result["step_days"] == 4.0


def test_a_rule_trigger_enters_on_the_first_day_the_rule_holds(shop: Keepers) -> None:
    journey = {
        "key": "lapsing",
        "trigger": {"rule": "orders >= 1 and days_since_last_order >= 3"},
        "entry": {"reentry": "never"},
        "steps": [{"id": "hello", "email": {"subject": "Miss you", "html": UNSUB}}],
    }
    result = replay(shop, journey)
    # whole days since the last order reach 3 on: u4 day 2 (order -2 10:00), u1 day 5
    # (1 11:00), u0 day 7 (3 08:00), u5 day 10 (6 12:00), u2 day 12 (8 10:00); u3 only
    # reaches 1 by day 12. Matching again on later days is refused (re-entry: never).
    assert by_user(result, "entered_at") == {
        "u4": day(2).isoformat(),
        "u1": day(5).isoformat(),
        "u0": day(7).isoformat(),
        "u5": day(10).isoformat(),
        "u2": day(12).isoformat(),
    }
    assert result["skipped"] == {"already in the journey or re-entry not allowed": 4}
    assert result["by_step"] == {"hello": {"reached": 5, "queued": 5}}
    assert result["statuses"] == {"completed": 5}
    assert result["still_active"] == 0


def test_an_event_trigger_waits_until_the_order_or_times_out(shop: Keepers) -> None:
    journey = {
        "key": "cart",
        "trigger": {"event": "Cart Abandoned"},
        "steps": [
            {
                "id": "wait",
                "wait_until": {"event": "Order Completed", "timeout": "2d", "then": "thanks"},
            },
            {"id": "remind", "email": {"subject": "Your cart", "html": UNSUB}, "next": "done"},
            {"id": "thanks", "webhook": {"url": "https://crm.example/hooks/bought"}},
            {"id": "done", "exit": {}},
        ],
    }
    result = replay(shop, journey)
    # u0's cart is before S. u1: cart day 0 15:00 → enters day 1, orders at 1 11:00 → seen
    # on day 2 → thanks. u3: cart 3 12:00 → enters day 4, no order by day 6 → remind.
    assert by_user(result, "path") == {
        "u1": ["wait", "thanks", "done"],
        "u3": ["wait", "remind", "done"],
    }
    assert by_user(result, "entered_at") == {"u1": day(1).isoformat(), "u3": day(4).isoformat()}
    assert result["by_step"] == {
        "wait": {"reached": 2, "paths": {"happened": 1, "timed_out": 1}},
        "remind": {"reached": 1, "queued": 1},
        "thanks": {"reached": 1, "queued": 1},
        "done": {"reached": 2},
    }
    assert result["messages"] == 2
    assert result["skipped"] == {}


def test_a_wait_until_rule_is_read_as_of_each_moment(shop: Keepers) -> None:
    journey = {
        "key": "second-order",
        "trigger": {"stage_exited": "conversion"},
        "steps": [
            {"id": "second", "wait_until": {"rule": "nps >= 9", "timeout": "2d", "then": "thanks"}},
            {"id": "call", "task": {"title": "Call them", "owner": "sales"}, "next": "done"},
            {"id": "thanks", "webhook": {"url": "https://crm.example/hooks/promoter"}},
            {"id": "done", "exit": {}},
        ],
    }
    result = replay(shop, journey)
    # leaving conversion for retention: u0 on day 4, u2 on day 9. u0 never answers NPS: the
    # wait times out on day 6 (a task). u2 answers 10 on day 10 12:00: seen on day 11.
    assert by_user(result, "entered_at") == {"u0": day(4).isoformat(), "u2": day(9).isoformat()}
    assert by_user(result, "path") == {
        "u0": ["second", "call", "done"],
        "u2": ["second", "thanks", "done"],
    }
    assert result["by_step"] == {
        "second": {"reached": 2, "paths": {"happened": 1, "timed_out": 1}},
        "call": {"reached": 1, "queued": 1},
        "thanks": {"reached": 1, "queued": 1},
        "done": {"reached": 2},
    }
    assert result["messages"] == 2


def test_segment_triggers_read_the_membership_history(shop: Keepers) -> None:
    # cart_abandoners = more "Checkout Started" than orders in 7 days: u5 from day 4 to 7,
    # u3 from day 10 to 11
    entered = {
        "key": "abandoners",
        "trigger": {"segment_entered": "cart_abandoners"},
        "goal": {"rule": "orders >= 1", "within_days": 5},
        "steps": [{"id": "nudge", "email": {"subject": "Forgot?", "html": UNSUB}}],
    }
    result = replay(shop, entered)
    assert by_user(result, "entered_at") == {"u5": day(4).isoformat(), "u3": day(10).isoformat()}
    # the goal rule holds at the first tick after each one's order: day 7 and day 11
    assert by_user(result, "goal_at") == {"u5": day(7).isoformat(), "u3": day(11).isoformat()}
    assert result["goal_reached"] == 2
    left = replay(shop, {**entered, "trigger": {"segment_exited": "cart_abandoners"}})
    assert by_user(left, "entered_at") == {"u5": day(7).isoformat(), "u3": day(11).isoformat()}


def test_a_since_before_the_stage_history_is_flagged(shop: Keepers) -> None:
    result = replay(shop, WELCOME, since=day(-10))
    # the backfill began at day -3: everyone's first stage counts as entered then, and u4's
    # conversion on day -1 is now inside the window
    assert (
        result["notes"] and "stage history starts at " + day(-3).isoformat() in (result["notes"][0])
    )
    assert "u4" in by_user(result, "path")


def test_bad_since_or_step_is_refused_naming_the_option(shop: Keepers) -> None:
    with pytest.raises(InvalidInput, match=r"^since: .* is not before the end"):
        replay(shop, WELCOME, since=END + timedelta(days=1))
    with pytest.raises(InvalidInput, match=r"^since: .* is not before the end"):
        replay(shop, WELCOME, since=END)
    with pytest.raises(InvalidInput, match=r"^since: 1,001 steps of 1 day"):
        replay(shop, WELCOME, since=END - timedelta(days=1001))
    with pytest.raises(InvalidInput, match=r"^step: must be more than 0"):
        replay(shop, WELCOME, step=timedelta(0))
    # 1,000 steps is the limit, not over it; a last partial step ends at `until`
    assert len(simulated_moments(END - timedelta(hours=1000), END, timedelta(hours=1))) == 1001
    assert simulated_moments(S, S + timedelta(days=2, hours=12), timedelta(days=1)) == [
        S,
        day(1),
        day(2),
        day(2, 12),
    ]


# --- split and holdout: the simulated path is the path the live engine takes -------------

T0 = datetime(2026, 3, 2, tzinfo=UTC)
AB = {
    "key": "ab-welcome",
    "trigger": {"stage_entered": "conversion"},
    "steps": [
        {"id": "control", "holdout": {"share": 0.25}},
        {
            "id": "ab",
            "split": [
                {"name": "short", "weight": 1, "next": "short_mail"},
                {"name": "long", "weight": 2, "next": "long_mail"},
            ],
        },
        {"id": "short_mail", "email": {"subject": "Hi", "html": UNSUB}, "next": "done"},
        {"id": "long_mail", "email": {"subject": "Hello there", "html": UNSUB}},
        {"id": "done", "exit": {}},
    ],
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[Keepers, Clock]]:
    """20 identified customers computed live at T0, the journey saved, all buying at once."""
    clock = Clock(T0)
    keepers = Keepers.open(Settings(database_url=store_url(request, tmp_path)), clock=clock)
    people = [f"p{i:02d}" for i in range(20)]
    seen = [
        message("identify", p, T0 - timedelta(days=1), traits={"email": f"{p}@x.example"})
        for p in people
    ]
    keepers.ingest_messages(seen, source_id="t")
    keepers.compute()
    keepers.journeys.save(AB)
    clock.now = T0 + timedelta(hours=2)
    keepers.ingest_messages([order(p, T0 + timedelta(hours=1), 1) for p in people], "t")
    keepers.compute()
    yield keepers, clock
    keepers.close()


def test_split_and_holdout_paths_match_what_the_live_engine_does(live: tuple) -> None:
    keepers, clock = live
    result = replay(keepers, AB, since=T0, until=clock.now)
    assert result["entered"] == 20
    simulated = {
        row["customer_id"]: (
            row["holdout"],
            row["split"],
            [s for s in row["path"] if s.endswith("_mail")],
            row["status"],
        )
        for row in result["sample"]
    }
    keepers.journeys.advance()  # the live engine, now, on the same customers
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            "SELECT customer_id, holdout, path, status FROM enrollments WHERE journey = ?",
            [AB["key"]],
        )
        mails = tx.execute("SELECT customer_id, step FROM outbox ORDER BY outbox_id")
    queued: dict[int, list[str]] = {}
    for customer, step in mails:
        queued.setdefault(customer, []).append(step)
    actual = {c: (bool(h), p, queued.get(c, []), s) for c, h, p, s in rows}
    assert simulated == actual
    held = sum(1 for h, _, _, _ in actual.values() if h)
    short = sum(1 for _, p, _, _ in actual.values() if p == "short")
    assert 0 < held < 20 and 0 < short < 20 - held  # every way out is taken by someone
    assert result["by_step"]["control"] == {
        "reached": 20,
        "paths": {"held_out": held, "continued": 20 - held},
    }
    assert result["by_step"]["ab"]["paths"] == {"short": short, "long": 20 - held - short}
    assert result["by_step"]["short_mail"]["queued"] == short
    assert result["messages"] == len(mails) == 20 - held
