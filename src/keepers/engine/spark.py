"""The same plan on Spark, for event logs beyond one machine.

Spark reads the source tables (the event log, orders, refunds, customers), computes every
customer's traits and evaluates the stage and segment rules — the very Ibis expressions
DuckDB and PostgreSQL run — and hands back one row per customer. The store then applies the
difference as usual (history, memberships, change records), in one transaction.

Here the source tables are read from the store and handed to Spark as DataFrames; at scale
they would be Parquet or warehouse tables registered under the same names. Spark runs are
always full: Spark is for the big batch, the store's own engine for the frequent
incremental runs.
"""

from __future__ import annotations

import os
import tempfile
import threading
from datetime import UTC, datetime
from typing import Any

import ibis
import pyarrow as pa

from keepers.engine.fitted import attach_models
from keepers.engine.plan import Plan
from keepers.errors import InvalidInput
from keepers.store.database import Tx

SOURCES = {
    "events": "SELECT customer_id, type, event, user_id, anonymous_id, timestamp, "
    "CAST(properties AS TEXT) AS properties, CAST(traits AS TEXT) AS traits, "
    "CAST(context AS TEXT) AS context FROM events",
    "orders": "SELECT customer_id, ordered_at, revenue, total FROM orders",
    "refunds": "SELECT customer_id, refunded_at, amount FROM refunds",
    "customers": "SELECT customer_id, merged_into, created_at FROM customers",
}
_SESSION: Any = None
_SESSION_LOCK = threading.Lock()


def spark_session(master: str = "local[2]", driver_memory: str = "4g") -> Any:
    """One Spark session per process (starting one costs 5–10 s)."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            try:
                from pyspark.sql import SparkSession
            except ImportError:
                raise InvalidInput(
                    "the Spark engine needs PySpark: pip install 'keepers[spark]'"
                ) from None
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            _SESSION = (
                SparkSession.builder.master(master)
                .appName("keepers")
                .config("spark.driver.memory", driver_memory)
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.sql.shuffle.partitions", "2")
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                .getOrCreate()
            )
            _SESSION.sparkContext.setLogLevel("ERROR")
        return _SESSION


def evaluate_on_spark(
    tx: Tx, plan: Plan, as_of: datetime, master: str, driver_memory: str = "4g"
) -> pa.Table:
    """Traits, stage and segments of every customer as of `as_of`, computed by Spark.

    The sources go to Spark as Parquet files (the format an event log beyond one machine
    would be kept in), which keeps the driver's memory flat whatever the size."""
    import pyarrow.parquet as pq

    as_of = as_of.astimezone(UTC)
    attach_models(tx, plan, as_of)
    spark = spark_session(master, driver_memory)
    with tempfile.TemporaryDirectory(prefix="keepers-spark-") as scratch:
        for name, query in SOURCES.items():
            table = tx.fetch_arrow(query).cast(_arrow_schema(SOURCE_COLUMNS[name]))
            path = os.path.join(scratch, f"{name}.parquet")
            pq.write_table(table, path)
            spark.read.parquet(path).createOrReplaceTempView(name)
        for name, scores in plan.models.scores:  # churn_risk, persona: the day's scores
            path = os.path.join(scratch, f"scores{name}.parquet")  # not "_…": hidden to Spark
            pq.write_table(scores, path)
            spark.read.parquet(path).createOrReplaceTempView(name)
        at = ibis.literal(as_of)
        evaluated = plan.evaluate(plan.traits(at), at)
        result = evaluated.select(
            *plan.state_schema(),
            new_stage=evaluated.new_stage,
            new_segments=evaluated.new_segments,
        )
        # Spark's own Arrow export: Ibis' goes through pandas, whose nanosecond timestamps
        # cannot hold the year-20 dates a client may send
        sql = ibis.pyspark.connect(spark).compile(result)
        table = spark.sql(sql).toArrow()
    return table.cast(_arrow_schema({**plan.state_schema(), **EVALUATED}))


TS = "timestamp"
SOURCE_COLUMNS = {
    "events": {
        "customer_id": "int64",
        **dict.fromkeys(("type", "event", "user_id", "anonymous_id"), "string"),
        "timestamp": TS,
        **dict.fromkeys(("properties", "traits", "context"), "string"),
    },
    "orders": {"customer_id": "int64", "ordered_at": TS, "revenue": "float64", "total": "float64"},
    "refunds": {"customer_id": "int64", "refunded_at": TS, "amount": "float64"},
    "customers": {"customer_id": "int64", "merged_into": "int64", "created_at": TS},
}
EVALUATED = {"new_stage": "string", "new_segments": "string"}


def _arrow_schema(columns: dict[str, str]) -> pa.Schema:
    kinds = {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "boolean": pa.bool_(),
        "string": pa.string(),
    }
    return pa.schema(
        [(name, kinds.get(kind, pa.timestamp("us", tz="UTC"))) for name, kind in columns.items()]
    )
