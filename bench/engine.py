"""Lifecycle engine benchmark: full and incremental `Keepers.compute` on a large synthetic store.

Why it is built this way:

- The data (default 1M customers, 10M events over two years, orders, refunds, identities) is
  written straight into the Keepers schema by `bench/engine_data.py`, run as a child
  process: loading through the ingest path would take far longer than the runs it feeds,
  and a child keeps the generator's memory out of this process, so `peak_rss_mb` is what
  Keepers itself needed (opening the store, computing, ingesting the 10k new events).
- A reference is measured in the same run, on the same data and disk: one plain GROUP BY
  per customer (event count, orders, first and last seen, plus order revenue) fetched to
  Arrow, from a separate read-only connection in another child process (DuckDB), or the
  same query in the same PostgreSQL database (fetched as CSV into Arrow). It is what the
  engine cannot beat — a single pass with no rules, no state and no writes — so
  `ratio_to_reference` (full recompute ÷ reference) says how far from a bare scan it is.
  On DuckDB it runs with one thread, as the reference in `shared/notes/measurements.md`
  (0.67 s there) that the targets (full ≤ 3 s, ratio ≤ 4) were set against; the same
  query with both cores is reported beside it (`ratio_to_reference_2_threads`).
- A second yardstick on DuckDB: the default definitions' traits as one hand-written query
  (`TRAITS_SQL`, one and two threads, median of 3), whose rows equal the traits a full run
  stores (a test checks it). `traits_query_to_reference_2_threads` says how many
  references the aggregation alone costs; `full_recompute_to_traits_query` what the rest of
  a full run (Ibis SQL, rules, comparing with the stored state, writing) adds to it.
- Every run uses a fixed as-of (the day after the data ends, then a day later for each
  further full run), so figures do not drift with the calendar: the first full run (on
  an empty store it writes every customer's state and history), `--repeat` nightly full
  runs a day apart (median = `full_recompute_s`: every trait recomputed, the rows whose
  traits changed rewritten — windows lose a day's events), one full run that rebuilds the
  whole state table (`full_rebuild_s`: what a full run costs when most rows change), then
  10,000 new events for ~2,000 existing customers, dated after the last run as in a live
  log, go through the real ingest path (`ingest_messages`, untimed) and an incremental
  run an hour later is timed; `--repeat` such hours, each for other customers (median =
  `incremental_10k_s`: stored traits are brought forward), then a no-op incremental,
  then 10,000 events dated before the last run for other customers
  (`incremental_10k_late_s`: their histories are rescanned).

Usage: python bench/engine.py [--customers 1000000] [--events 10000000]
[--database duckdb|postgres] [--engine duckdb|spark] [--repeat 1] [--db PATH] [--reuse]
[--seed 1] [--json]. Exit 0 whenever it measured; 1 when the benchmark itself broke.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA_END = datetime(2026, 11, 1, tzinfo=UTC)  # engine_data.END; kept here to avoid importing it
AS_OF = DATA_END + timedelta(days=1)
CLK_TCK = os.sysconf("SC_CLK_TCK")
REFERENCE_SQL = """
WITH e AS (
    SELECT customer_id, count(*) AS events,
        count(*) FILTER (WHERE event = 'Order Completed') AS orders,
        min(timestamp) AS first_seen, max(timestamp) AS last_seen
    FROM events GROUP BY customer_id),
o AS (SELECT customer_id, sum(revenue) AS revenue FROM orders GROUP BY customer_id)
SELECT e.customer_id, e.events, e.orders, e.first_seen, e.last_seen, o.revenue
FROM e LEFT JOIN o ON o.customer_id = e.customer_id
"""
# The default definitions' traits (first/last seen, orders, revenue, refunds, email
# engagement, NPS, referrals, the rules' windowed counts …) as one hand-written DuckDB query:
# what the full run's aggregation would cost without Ibis, rules, state or writes. Its rows
# equal the engine's traits (tests/integration/test_bench_yardsticks.py).
TRAITS_SQL = """
WITH e AS (
    SELECT customer_id, count(*) AS events,
        count(*) FILTER (WHERE type IN ('page', 'screen')) AS page_views,
        min(timestamp) AS first_seen_at, max(timestamp) AS last_seen_at,
        max(timestamp) FILTER (WHERE event IS NULL OR event NOT IN
            ('Email Delivered', 'Email Sent', 'Email Bounced', 'Email Dropped')) AS last_active_at,
        bool_or(user_id IS NOT NULL) AS identified,
        count(*) FILTER (WHERE event = 'Signed Up') > 0 AS signed_up,
        count(*) FILTER (WHERE event = 'Trial Started') > 0 AS trial_started,
        count(*) FILTER (WHERE event = 'Email Opened') AS emails_opened,
        count(*) FILTER (WHERE event = 'Email Link Clicked') AS emails_clicked,
        count(*) FILTER (WHERE event = 'Unsubscribed') > 0 AS unsubscribed,
        count(*) FILTER (WHERE event = 'Referral Converted') AS referrals_made
    FROM events WHERE timestamp <= $as_of GROUP BY customer_id),
w AS (
    SELECT customer_id,
        count(*) FILTER (WHERE event = 'Product Added') AS added_30d,
        count(*) FILTER (WHERE event = 'Checkout Started') AS checkouts_30d,
        count(*) FILTER (WHERE event = 'Product Viewed') AS views_30d,
        count(*) FILTER (WHERE event = 'Checkout Started'
            AND timestamp > $as_of - INTERVAL 7 DAY) AS checkouts_7d,
        count(*) FILTER (WHERE event = 'Order Completed'
            AND timestamp > $as_of - INTERVAL 7 DAY) AS orders_7d
    FROM events
    WHERE timestamp <= $as_of AND timestamp > $as_of - INTERVAL 30 DAY
        AND event IN ('Product Added', 'Checkout Started', 'Product Viewed', 'Order Completed')
    GROUP BY customer_id),
n AS (
    SELECT customer_id, arg_max(TRY_CAST(properties ->> '$.score' AS DOUBLE), timestamp)
        FILTER (WHERE TRY_CAST(properties ->> '$.score' AS DOUBLE) IS NOT NULL) AS nps
    FROM events WHERE timestamp <= $as_of AND event = 'NPS Survey Answered' GROUP BY customer_id),
o AS (
    SELECT customer_id, count(*) AS orders, sum(amount) AS revenue,
        min(ordered_at) AS first_order_at, max(ordered_at) AS last_order_at,
        max(ordered_at) FILTER (WHERE position = 2) AS previous_order_at
    FROM (SELECT customer_id, ordered_at, COALESCE(revenue, total, 0.0) AS amount,
            row_number() OVER (PARTITION BY customer_id ORDER BY ordered_at DESC) AS position
          FROM orders WHERE ordered_at <= $as_of) AS p
    GROUP BY customer_id),
r AS (
    SELECT customer_id, count(*) AS refunds, sum(amount) AS refunded_amount
    FROM refunds WHERE refunded_at <= $as_of GROUP BY customer_id)
SELECT c.customer_id, COALESCE(e.events, 0) AS events, COALESCE(e.page_views, 0) AS page_views,
    e.first_seen_at, e.last_seen_at, e.last_active_at, COALESCE(e.identified, false) AS identified,
    COALESCE(e.signed_up, false) AS signed_up, COALESCE(e.trial_started, false) AS trial_started,
    COALESCE(o.orders, 0) AS orders, COALESCE(o.revenue, 0.0) AS revenue,
    o.revenue / o.orders AS average_order_value, o.first_order_at, o.last_order_at,
    CAST(floor(epoch(o.last_order_at - o.previous_order_at) / 86400) AS BIGINT)
        AS previous_order_gap_days,
    COALESCE(r.refunds, 0) AS refunds, COALESCE(r.refunded_amount, 0.0) AS refunded_amount,
    COALESCE(o.revenue, 0.0) - COALESCE(r.refunded_amount, 0.0) AS net_revenue,
    COALESCE(e.emails_opened, 0) AS emails_opened, COALESCE(e.emails_clicked, 0) AS emails_clicked,
    COALESCE(e.unsubscribed, false) AS unsubscribed, n.nps,
    COALESCE(e.referrals_made, 0) AS referrals_made,
    COALESCE(w.added_30d, 0) AS added_30d, COALESCE(w.checkouts_30d, 0) AS checkouts_30d,
    COALESCE(w.views_30d, 0) AS views_30d, COALESCE(w.checkouts_7d, 0) AS checkouts_7d,
    COALESCE(w.orders_7d, 0) AS orders_7d
FROM customers c
LEFT JOIN e ON e.customer_id = c.customer_id
LEFT JOIN w ON w.customer_id = c.customer_id
LEFT JOIN n ON n.customer_id = c.customer_id
LEFT JOIN o ON o.customer_id = c.customer_id
LEFT JOIN r ON r.customer_id = c.customer_id
WHERE c.merged_into IS NULL AND (e.customer_id IS NOT NULL OR c.created_at <= $as_of)
"""
QUERIES = {"groupby": REFERENCE_SQL, "traits": TRAITS_SQL}


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays one JSON object."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark itself could not run → exit 1."""


# --- timing and CPU accounting --------------------------------------------------------------


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8])


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float, busy_limit_pct: float = 25.0) -> float:
    """Wait (up to `max_wait_s`) until the machine is mostly idle; returns the last busy %."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_cpu()
        time.sleep(2.0)
        after = machine_cpu()
        pct = 100 * (after[0] - before[0]) / max(1, after[1] - before[1])
        if pct <= busy_limit_pct or time.monotonic() >= deadline:
            return round(pct, 1)
        log(f"machine {pct:.0f}% busy; waiting for it to quieten")
        time.sleep(3.0)


def children_peak_rss_mb() -> float:
    """Peak RSS (VmHWM) summed over this process's live descendants — Spark's JVM, which
    `ru_maxrss` does not see. The generator and reference children have exited by then."""
    me = os.getpid()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    total_kb = 0
    for pid in parents:
        ancestor = parents[pid]
        while ancestor not in (0, 1, me) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor != me:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


class Runs:
    """Every timed section: wall seconds, this process's CPU and how busy the machine was
    (`machine_busy_pct` near 100 with low `cpu_s` means something else shared the box)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def timed(self, name: str) -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"name": name}
        busy0, cpu0, t0 = machine_cpu(), own_cpu_s(), time.perf_counter()
        yield row
        seconds = time.perf_counter() - t0
        busy1 = machine_cpu()
        row.update(
            s=round(seconds, 3),
            cpu_s=round(own_cpu_s() - cpu0, 2),
            machine_busy_pct=round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1),
        )
        self.rows.append(row)
        log(f"{name}: {seconds:.3f} s")


# --- data and reference (child processes) ------------------------------------------------------


def generate(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    """bench/engine_data.py in a child process; its memory stays out of this one."""
    where = ["--url", url] if url.startswith("postgres") else ["--db", url]
    command = [
        sys.executable,
        str(BENCH / "engine_data.py"),
        *where,
        "--customers",
        str(opts.customers),
        "--events",
        str(opts.events),
        "--seed",
        str(opts.seed),
        "--json",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"the data generator failed (exit {done.returncode})")
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    stats["wall_s"] = round(time.perf_counter() - started, 3)
    return stats


def reference(
    url: str, repeat: int = 5, threads: int = 1, query: str = "groupby"
) -> dict[str, Any]:
    """The plain GROUP BY (or the hand-written traits query), `repeat` times in a child
    process (read-only on DuckDB)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--reference-only", url]
    command += ["--reference-repeat", str(repeat), "--reference-threads", str(threads)]
    command += ["--reference-query", query]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"the {query} reference query failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_reference(
    url: str, repeat: int, threads: int = 1, which: str = "groupby"
) -> dict[str, Any]:
    """In the child: time the query (execute + fetch into an Arrow table)."""
    if url.startswith("postgres"):
        query = _postgres_query(url)
    else:
        import duckdb

        con = duckdb.connect(url, read_only=True, config={"threads": threads})
        con.execute("SET TimeZone = 'UTC'")
        sql, params = QUERIES[which], {"as_of": AS_OF} if which == "traits" else None

        def query() -> Any:
            return con.sql(sql, params=params).to_arrow_table()

    # one untimed run first: the engine's timed runs come after its first full run, with
    # the data already read into memory, so the reference is timed warm as well
    started = time.perf_counter()
    first = query()
    cold = round(time.perf_counter() - started, 3)
    del first
    runs, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        table = query()
        runs.append(round(time.perf_counter() - started, 3))
        rows = table.num_rows
        del table
    return {
        "reference_groupby_s": statistics.median(runs),
        "runs": runs,
        "cold_s": cold,
        "rows": rows,
        "threads": threads,
        "query": which,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _postgres_query(url: str) -> Callable[[], Any]:
    import io

    import psycopg
    import pyarrow.csv as pacsv

    con = psycopg.connect(url, autocommit=True)

    def query() -> Any:
        sink = io.BytesIO()
        with con.cursor() as cur, cur.copy(f"COPY ({REFERENCE_SQL}) TO STDOUT (FORMAT csv)") as cp:
            for block in cp:
                sink.write(block)
        sink.seek(0)
        names = ["customer_id", "events", "orders", "first_seen", "last_seen", "revenue"]
        return pacsv.read_csv(sink, read_options=pacsv.ReadOptions(column_names=names))

    return query


# --- the measured part (this process) -------------------------------------------------------


def report_dict(report: Any) -> Any:
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if isinstance(report, dict):
        return report
    if hasattr(report, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(report)
    return repr(report)


def pick_customers(k: Any, opts: argparse.Namespace, count: int, seed: int = 0) -> list[str]:
    """`count` random known, unmerged customers' userIds (a few draws of candidate ids);
    another `seed` draws others."""
    import pyarrow as pa

    rng = random.Random(f"{opts.seed}-{seed}" if seed else opts.seed)
    with k.db.transaction() as tx:
        top = int(tx.execute("SELECT COALESCE(MAX(customer_id), 0) FROM customers")[0][0])
    chosen: list[str] = []
    seen: set[int] = set()
    for _ in range(20):
        want = min(top, 2 * (count - len(chosen)) + 100)
        ids = [i for i in rng.sample(range(1, top + 1), want) if i not in seen]
        seen.update(ids)
        with k.db.transaction() as tx:
            tx.stage("bench_pick", pa.table({"customer_id": pa.array(ids, pa.int64())}))
            rows = tx.execute(
                "SELECT c.user_id FROM customers c JOIN bench_pick p "
                "ON p.customer_id = c.customer_id "
                "WHERE c.user_id IS NOT NULL AND c.merged_into IS NULL ORDER BY c.customer_id"
            )
        chosen += [row[0] for row in rows][: count - len(chosen)]
        if len(chosen) >= count or len(seen) >= top:
            break
    if not chosen:
        raise BenchError("no known customer to send new events for")
    return chosen


def new_messages(users: list[str], count: int, start: datetime, seed: int) -> list[dict]:
    """`count` Segment messages for `users` (each at least one, the rest skewed) in the hour
    after `start`, in the demo's mix; ids are unique per call (safe on a reused store)."""
    rng = random.Random(seed)
    tag = f"{time.time_ns():x}"
    weights = [rng.lognormvariate(0, 1.0) for _ in users]
    who = users[: min(count, len(users))] + rng.choices(
        users, weights, k=max(0, count - len(users))
    )
    rng.shuffle(who)
    kinds = [
        ("page", None, 0.40),
        ("track", "Product Viewed", 0.22),
        ("track", "Product Added", 0.08),
        ("track", "Checkout Started", 0.06),
        ("track", "Order Completed", 0.05),
        ("track", "Email Delivered", 0.08),
        ("track", "Email Opened", 0.04),
        ("track", "Email Link Clicked", 0.01),
        ("identify", None, 0.03),
        ("track", "NPS Survey Answered", 0.01),
        ("track", "Referral Converted", 0.01),
        ("track", "Trial Started", 0.01),
    ]
    offsets = sorted(rng.random() * 3600 for _ in who)
    messages = []
    for n, (user, offset) in enumerate(zip(who, offsets, strict=True)):
        kind, event, _ = rng.choices(kinds, [k[2] for k in kinds])[0]
        when = (start + timedelta(seconds=offset)).isoformat(timespec="milliseconds")
        msg: dict[str, Any] = {
            "type": kind,
            "userId": user,
            "messageId": f"inc-{tag}-{n}",
            "timestamp": when.replace("+00:00", "Z"),
        }
        if kind == "page":
            msg["name"] = rng.choice(("Home", "Category", "Product", "Cart"))
            msg["anonymousId"] = "a-" + user[2:]
            msg["properties"] = {"path": "/"}
        elif kind == "identify":
            msg["traits"] = {"email": f"u{user[2:]}@example.com"}
        else:
            msg["event"] = event
            msg["properties"] = _properties(rng, event or "", tag, n)
        messages.append(msg)
    return messages


def _properties(rng: random.Random, event: str, tag: str, n: int) -> dict[str, Any]:
    if event == "Order Completed":
        price = round(rng.uniform(5, 120), 2)
        qty = rng.choice((1, 1, 2))
        return {
            "order_id": f"inc-{tag}-{n}",
            "revenue": round(price * qty, 2),
            "currency": "USD",
            "products": [{"product_id": f"p-{rng.randrange(48)}", "price": price, "quantity": qty}],
        }
    if event == "NPS Survey Answered":
        return {"score": rng.randint(0, 10)}
    if event.startswith("Product"):
        return {"product_id": f"p-{rng.randrange(48)}"}
    if event.startswith("Email"):
        return {"campaign_id": "c-52"}
    return {}


def ingest(
    k: Any, users: list[str], opts: argparse.Namespace, *, start: datetime, tag: str
) -> dict[str, Any]:
    """`opts.incremental_events` new events for `users`, dated in the hour after `start`,
    through the real ingest path in API-sized batches (untimed)."""
    messages = new_messages(users, opts.incremental_events, start, opts.seed)
    key, _ = k.create_write_key(f"bench-engine-{tag}")
    started = time.perf_counter()
    stored = 0
    for i in range(0, len(messages), 500):  # like API batches, not one giant commit
        result = k.ingest_messages(messages[i : i + 500], source_id=key.key_id)
        stored += result.stored
        if result.rejected:
            raise BenchError(f"ingest rejected new events: {result.rejected[:3]}")
    log(f"ingested {stored:,} {tag} events for {len(set(users)):,} customers (untimed)")
    return {
        "events": stored,
        "customers": len(set(users)),
        "seconds_untimed": round(time.perf_counter() - started, 3),
    }


def compute(k: Any, opts: argparse.Namespace, **kwargs: Any) -> Any:
    if opts.engine == "spark":
        kwargs["engine"] = "spark"
    try:
        return k.compute(**kwargs)
    except TypeError as exc:
        if "engine" in str(exc):
            raise BenchError("this Keepers has no Spark engine (compute(engine=...))") from exc
        raise


def measure(url: str, opts: argparse.Namespace, runs: Runs) -> dict[str, Any]:
    """Open the store in this process and time the engine."""
    from keepers.services.keepers import Keepers
    from keepers.settings import Settings

    out: dict[str, Any] = {}
    k = Keepers.open(Settings(database_url=url))
    try:
        if not hasattr(k, "compute"):
            raise BenchError("Keepers.compute does not exist in this checkout")
        with k.db.transaction() as tx:
            out["customers"], out["events"] = tx.execute(
                "SELECT count(*), (SELECT count(*) FROM events) FROM customers"
            )[0]
        with runs.timed("first_full") as row:
            first = compute(k, opts, full=True, as_of=AS_OF)
        out["first_full_s"] = row["s"]
        out["first_full_report"] = report_dict(first)
        # Nightly full runs: each a day later, so the customers whose windowed counts
        # changed (events leaving "in the last 30 days") have their rows rewritten.
        fulls = []
        for n in range(opts.repeat):
            with runs.timed(f"full_{n + 1}") as row:
                last_full = compute(k, opts, full=True, as_of=AS_OF + timedelta(days=n + 1))
            fulls.append(row["s"])
        out["full_recompute_s"] = statistics.median(fulls)
        out["full_report"] = report_dict(last_full)
        # The same with the state table rebuilt whatever changed: what a full run costs
        # when most customers' traits change (more than REWRITE_SHARE of the rows).
        from keepers.engine import compute as engine_compute

        last_as_of = AS_OF + timedelta(days=opts.repeat + 1)
        kept_share, engine_compute.REWRITE_SHARE = engine_compute.REWRITE_SHARE, 0.0
        try:
            with runs.timed("full_rebuild") as row:
                compute(k, opts, full=True, as_of=last_as_of)
        finally:
            engine_compute.REWRITE_SHARE = kept_share
        out["full_rebuild_s"] = row["s"]

        # A server compiles each query once; the first incremental run in a process pays
        # Ibis' compile time (~0.3 s a query), so it is timed apart from the measured run.
        warm = last_as_of + timedelta(minutes=30)
        with runs.timed("incremental_warmup") as row:
            compute(k, opts, as_of=warm)
        out["incremental_first_in_process_s"] = row["s"]

        # Live: 10,000 events dated in the hour after the last run (as a log fed while
        # runs keep up with the clock), so stored traits are brought forward; `--repeat`
        # hours in a row, each batch for other customers (median = `incremental_10k_s`).
        incrementals = []
        live = warm
        for n in range(opts.repeat):
            users = pick_customers(k, opts, opts.incremental_customers, seed=10 * n)
            out["ingest"] = ingest(k, users, opts, start=live, tag=f"live{n}")
            live += timedelta(hours=1)
            with runs.timed("incremental_10k") as row:
                inc = compute(k, opts, as_of=live)
            incrementals.append(row["s"])
        out["incremental_10k_s"] = statistics.median(incrementals)
        out["incremental_10k_runs_s"] = incrementals
        out["incremental_report"] = report_dict(inc)
        with runs.timed("incremental_noop") as row:
            noop = compute(k, opts, as_of=live + timedelta(hours=1))
        out["incremental_noop_s"] = row["s"]
        out["noop_report"] = report_dict(noop)

        # Late: 10,000 events dated before the last run (a backlog, a replay): those
        # customers' histories are rescanned. Once untimed (it compiles that query), then
        # timed with other customers.
        late = live + timedelta(hours=1, minutes=30)
        for name, seed in (("incremental_late_warmup", 1), ("incremental_10k_late", 2)):
            late_users = pick_customers(k, opts, opts.incremental_customers, seed=seed)
            ingest(k, late_users, opts, start=warm, tag=name)
            late += timedelta(hours=1)
            with runs.timed(name) as row:
                late_report = compute(k, opts, as_of=late)
        out["incremental_10k_late_s"] = row["s"]
        out["late_report"] = report_dict(late_report)
    finally:
        k.close()
    return out


# --- one whole run ---------------------------------------------------------------------------


@contextmanager
def store(opts: argparse.Namespace) -> Iterator[tuple[str, Path]]:
    """The store's URL and a work directory (removed after, unless --db)."""
    with tempfile.TemporaryDirectory(prefix="keepers-engine-bench-") as tmp:
        workdir = Path(tmp)
        if opts.database == "postgres":
            from keepers.testing.postgres import (
                PostgresNotAvailable,
                create_database,
                find_bindir,
                throwaway_postgres,
            )

            try:
                find_bindir()
            except PostgresNotAvailable as exc:
                raise BenchError(f"{exc}; install them (apt-get install postgresql)") from exc
            with throwaway_postgres(durable=True) as admin_url:
                yield create_database(admin_url, "keepers_bench"), workdir
        else:
            yield str(Path(opts.db).resolve() if opts.db else workdir / "keepers.duckdb"), workdir


def source_digest() -> dict[str, Any]:
    """A digest of the engine's code, so a figure can be tied to the code it measured (the
    work tree is shared and changes under the benchmark)."""
    digest = hashlib.sha256()
    files = sorted((ROOT / "src/keepers/engine").glob("*.py"))
    files.append(ROOT / "src/keepers/services/keepers.py")
    for path in files:
        if path.exists():
            digest.update(path.read_bytes())
    return {"engine_sha256": digest.hexdigest()[:12], "files": len(files)}


def run(opts: argparse.Namespace) -> dict[str, Any]:
    runs = Runs()
    with store(opts) as (url, _workdir):
        reuse = bool(opts.reuse and opts.db and Path(url).exists())
        if reuse:
            log(f"reusing {url}")
            data: dict[str, Any] = {"reused": True}
        else:
            if opts.db and Path(url).exists():
                raise BenchError(f"{url} exists: delete it, or pass --reuse to measure it as is")
            log(f"generating {opts.customers:,} customers / {opts.events:,} events into {url}")
            data = generate(url, opts)
            log(f"loaded in {data['load_s']:.1f} s")
        if opts.wait_idle:
            wait_for_quiet(opts.wait_idle)
        ref = reference(url)
        log(f"reference group-by: {ref['reference_groupby_s']:.3f} s (median of {ref['runs']})")
        ref2 = reference(url, threads=2) if opts.database == "duckdb" else ref
        log(f"with 2 threads: {ref2['reference_groupby_s']:.3f} s (median of {ref2['runs']})")
        traits = traits2 = None
        if opts.database == "duckdb":
            traits = reference(url, repeat=3, query="traits")
            traits2 = reference(url, repeat=3, threads=2, query="traits")
            log(
                f"hand-written traits query: {traits['reference_groupby_s']:.3f} s, "
                f"with 2 threads {traits2['reference_groupby_s']:.3f} s"
            )
        measured = measure(url, opts, runs)
    full = measured["full_report"]
    result = {
        "customers": measured["customers"],
        "events": measured["events"],
        "full_recompute_s": measured["full_recompute_s"],
        "incremental_10k_s": measured["incremental_10k_s"],
        "reference_groupby_s": ref["reference_groupby_s"],
        "ratio_to_reference": round(
            measured["full_recompute_s"] / max(ref["reference_groupby_s"], 1e-9), 2
        ),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reference_groupby_2_threads_s": ref2["reference_groupby_s"],
        "ratio_to_reference_2_threads": round(
            measured["full_recompute_s"] / max(ref2["reference_groupby_s"], 1e-9), 2
        ),
        **yardsticks(measured["full_recompute_s"], ref2, traits, traits2),
        "full_rebuild_s": measured["full_rebuild_s"],
        "children_peak_rss_mb": children_peak_rss_mb(),
        "engine": "spark" if opts.engine == "spark" else opts.database,
        "database": opts.database,
        "load_s": data.get("load_s"),
        "first_full_s": measured["first_full_s"],
        "first_full_on_empty_state": not reuse,
        "incremental_10k_runs_s": measured["incremental_10k_runs_s"],
        "incremental_noop_s": measured["incremental_noop_s"],
        "incremental_10k_late_s": measured["incremental_10k_late_s"],
        "incremental_first_in_process_s": measured["incremental_first_in_process_s"],
        "repeat": opts.repeat,
        "as_of": AS_OF.isoformat(),
        "stage_counts": full.get("stages") if isinstance(full, dict) else None,
        "segment_counts": full.get("segments") if isinstance(full, dict) else None,
        "runs": runs.rows,
        "reference": ref,
        "reference_2_threads": ref2,
        "traits_query": traits,
        "traits_query_2_threads": traits2,
        "ingest": measured["ingest"],
        "first_full_report": measured["first_full_report"],
        "full_report": full,
        "incremental_report": measured["incremental_report"],
        "noop_report": measured["noop_report"],
        "late_report": measured["late_report"],
        "data": data,
        "source": source_digest(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if opts.db:
        result["db"] = str(Path(opts.db).resolve())
    return result


def yardsticks(
    full_s: float,
    ref2: dict[str, Any],
    traits: dict[str, Any] | None,
    traits2: dict[str, Any] | None,
) -> dict[str, Any]:
    """The hand-written traits query beside the full run (DuckDB): what the aggregation
    alone costs, and how many two-thread references it already takes."""
    if traits is None or traits2 is None:
        return {}
    bare = traits2["reference_groupby_s"]
    return {
        "traits_query_s": traits["reference_groupby_s"],
        "traits_query_2_threads_s": bare,
        "traits_query_to_reference_2_threads": round(
            bare / max(ref2["reference_groupby_s"], 1e-9), 2
        ),
        "full_recompute_to_traits_query": round(full_s / max(bare, 1e-9), 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--database", choices=("duckdb", "postgres"), default="duckdb")
    parser.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        default="duckdb",
        help="spark: Keepers.compute(engine='spark'); default: SQL in the store itself",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="nightly full runs and live incremental runs"
    )
    parser.add_argument("--db", help="DuckDB file to write and keep (default: a temp file)")
    parser.add_argument("--reuse", action="store_true", help="with --db: measure an existing file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--incremental-events", type=int, default=10_000)
    parser.add_argument("--incremental-customers", type=int, default=2_000)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after loading, wait up to this long for the machine to be ≤ 25%% busy",
    )
    parser.add_argument("--json", action="store_true", help="only one JSON line on stdout")
    parser.add_argument("--reference-only", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--reference-repeat", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--reference-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--reference-query", choices=tuple(QUERIES), default="groupby", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.customers < 1 or args.events < args.customers:
        parser.error("--repeat and --customers must be ≥ 1 and --events ≥ --customers")
    if args.db and args.database == "postgres":
        parser.error("--db is for DuckDB; PostgreSQL runs use a throwaway server")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_only:
        sys.stdout.write(
            json.dumps(
                run_reference(
                    args.reference_only,
                    args.reference_repeat,
                    args.reference_threads,
                    args.reference_query,
                )
            )
        )
        sys.stdout.write("\n")
        return 0
    try:
        result = run(args)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        print(
            f"{result['engine']}: {result['customers']:,} customers, {result['events']:,} events: "
            f"full {result['full_recompute_s']} s (first {result['first_full_s']} s), "
            f"incremental 10k {result['incremental_10k_s']} s "
            f"(late events {result['incremental_10k_late_s']} s), reference "
            f"{result['reference_groupby_s']} s (×{result['ratio_to_reference']}), "
            f"peak RSS {result['peak_rss_mb']} MB"
        )
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
