"""What every report shares: the tables it reads, its periods, and how it runs a query."""

from __future__ import annotations

import calendar
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from keepers.domain.definitions import DEFAULT_PASSIVE_EVENTS, Definitions
from keepers.engine.plan import TS, events_table
from keepers.engine.sql import compiled_sql
from keepers.errors import InvalidInput
from keepers.store.database import Tx

STAGE_HISTORY = ibis.table(
    {"customer_id": "int64", "from_stage": "string", "to_stage": "string", "moved_at": TS},
    name="stage_history",
)
ORDERS = ibis.table(
    {
        "order_id": "string",
        "customer_id": "int64",
        "ordered_at": TS,
        "revenue": "float64",
        "total": "float64",
    },
    name="orders",
)
ORDER_ITEMS = ibis.table(
    {
        "order_id": "string",
        "product_id": "string",
        "name": "string",
        "category": "string",
        "price": "float64",
        "quantity": "float64",
    },
    name="order_items",
)
REFUNDS = ibis.table(
    {"customer_id": "int64", "refunded_at": TS, "amount": "float64"}, name="refunds"
)
CUSTOMERS = ibis.table(
    {"customer_id": "int64", "user_id": "string", "email": "string", "merged_into": "int64"},
    name="customers",
)
PERIODS = ibis.table(
    {"period": "string", "idx": "int64", "starts_at": TS, "ends_at": TS}, name="_kp_periods"
)
PERIOD_SCHEMA = pa.schema(
    [
        ("period", pa.string()),
        ("idx", pa.int64()),
        ("starts_at", pa.timestamp("us", tz="UTC")),
        ("ends_at", pa.timestamp("us", tz="UTC")),
    ]
)
UNITS = ("week", "month", "quarter")


@dataclass
class Context:
    """One report run: a transaction, the definitions in force and the moment reported on."""

    tx: Tx
    definitions: Definitions
    as_of: datetime
    current: bool = True  # no past moment asked for: the stored state may answer
    staged: set[str] = field(default_factory=set)

    def arrow(self, key: Hashable, build: Callable[..., ir.Table], *moments: datetime) -> pa.Table:
        """Run `build(as_of, *moments)` (compiled once per process) and return the rows."""
        sql = compiled_sql(self.tx, key, build, [self.as_of, *moments])
        return self.tx.fetch_arrow(sql)

    def rows(self, key: Hashable, build: Callable[..., ir.Table], *moments: datetime) -> list[dict]:
        return self.arrow(key, build, *moments).to_pylist()

    def staged_rows(self, key: Hashable, build: Callable[[], ir.Table]) -> list[dict]:
        """Rows of a query that reads only staged tables (no moment): compiled once too."""
        return self.tx.fetch_arrow(compiled_sql(self.tx, key, build, [])).to_pylist()

    @contextmanager
    def written(
        self, table: ir.Table, key: Hashable, build: Callable[..., ir.Table]
    ) -> Iterator[None]:
        """`build(as_of)` written once into the temp table that `table` names, for the
        report's several queries to read (instead of each working it out again); dropped
        after them."""
        name = table.get_name()
        sql = compiled_sql(self.tx, key, build, [self.as_of])
        self.tx.execute(f"DROP TABLE IF EXISTS {name}")
        self.tx.execute(f"CREATE TEMP TABLE {name} AS {sql}")
        try:
            yield
        finally:
            self.tx.execute(f"DROP TABLE IF EXISTS {name}")

    def stage_periods(self, periods: list[Period]) -> None:
        table = pa.table(
            {
                "period": [p.label for p in periods],
                "idx": list(range(len(periods))),
                "starts_at": [p.starts_at for p in periods],
                "ends_at": [p.ends_at for p in periods],
            },
            schema=PERIOD_SCHEMA,
        )
        self.tx.stage(PERIODS.get_name(), table)


@dataclass(frozen=True)
class Period:
    label: str
    starts_at: datetime
    ends_at: datetime  # exclusive

    def to_dict(self) -> dict[str, str]:
        return {
            "period": self.label,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
        }


def period_start(moment: datetime, unit: str) -> datetime:
    """The start of the calendar period (UTC) that contains `moment`."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "week":
        return day - timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    if unit == "quarter":
        return day.replace(day=1, month=3 * ((day.month - 1) // 3) + 1)
    raise InvalidInput(f"period must be one of {', '.join(UNITS)}, not '{unit}'")


def shift(start: datetime, unit: str, steps: int) -> datetime:
    if unit == "week":
        return start + timedelta(weeks=steps)
    months = (3 if unit == "quarter" else 1) * steps
    index = start.year * 12 + start.month - 1 + months
    year, month = divmod(index, 12)
    return start.replace(
        year=year, month=month + 1, day=min(start.day, calendar.monthrange(year, month + 1)[1])
    )


def label(start: datetime, unit: str) -> str:
    if unit == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if unit == "quarter":
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return f"{start.year}-{start.month:02d}"


def complete_periods(as_of: datetime, unit: str, count: int) -> list[Period]:
    """The last `count` whole calendar periods that ended at or before `as_of`, oldest first."""
    if not 1 <= count <= 120:
        raise InvalidInput(f"periods must be between 1 and 120, not {count}")
    end = period_start(as_of, unit)
    starts = [shift(end, unit, -k) for k in range(count, 0, -1)]
    return [Period(label(s, unit), s, shift(s, unit, 1)) for s in starts]


def reported_period(ctx: Context, in_period: str, unit: str, count: int) -> int:
    """Stage the periods a report with a leading period shows, and the index of one of
    them by its label (for the customers behind its numbers)."""
    spans = complete_periods(ctx.as_of, unit, count + 1)
    labels = [s.label for s in spans]
    if in_period not in labels[1:]:
        raise InvalidInput(
            f"period '{in_period}' is not among the reported ones ({labels[1]} … {labels[-1]})"
        )
    ctx.stage_periods(spans)
    return labels.index(in_period)


def active_events(as_of: ir.TimestampValue, *, jsonb: bool = False) -> ir.Table:
    """Events the customer did (not passive system events), up to `as_of`."""
    events = events_table(jsonb=jsonb)
    return events.filter(
        events.timestamp <= as_of,
        events.event.isnull() | ~events.event.isin(DEFAULT_PASSIVE_EVENTS),
    )


def live_orders(as_of: ir.TimestampValue) -> ir.Table:
    """Orders placed up to `as_of`, with their value (revenue, else total)."""
    return ORDERS.filter(ORDERS.ordered_at <= as_of).mutate(
        value=ORDERS.revenue.coalesce(ORDERS.total, 0.0)
    )


def stays(as_of: ir.TimestampValue, only: ir.Table | None = None) -> ir.Table:
    """Each stay in a stage up to `as_of`: entered, left (null while it lasts). With
    `only` (a table with a `customer_id` column), the stays of those customers alone: a
    report that joins a few customers' stays need not number the whole history (the
    window sorts every row; the database does not push a later join below it)."""
    h = STAGE_HISTORY.filter(STAGE_HISTORY.moved_at <= as_of)
    if only is not None:  # IN (subquery), not a join chain: callers join the stays on
        h = h.filter(h.customer_id.isin(only.customer_id))
    window = ibis.window(group_by=h.customer_id, order_by=h.moved_at)
    return h.select(
        h.customer_id,
        stage=h.to_stage,
        entered_at=h.moved_at,
        left_at=h.moved_at.lead().over(window),
    )


def stage_at(s: ir.Table, moment: ir.TimestampValue) -> ir.BooleanValue:
    """Whether a stay (from `stays`) covers a moment."""
    return (s.entered_at <= moment) & (s.left_at.isnull() | (s.left_at > moment))


def history_bounds(tx: Tx) -> tuple[datetime | None, datetime | None]:
    first, last = tx.execute("SELECT min(moved_at), max(moved_at) FROM stage_history")[0]
    return _aware(first), _aware(last)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def seconds_between(later: ir.TimestampValue, earlier: ir.TimestampValue) -> ir.NumericValue:
    return later.epoch_seconds() - earlier.epoch_seconds()


def ratio(part: float | int | None, whole: float | int | None) -> float | None:
    if not whole or part is None:
        return None
    return round(part / whole, 6)


def need_history(tx: Tx) -> tuple[datetime, datetime]:
    first, last = history_bounds(tx)
    if first is None or last is None:
        raise InvalidInput(
            "there is no stage history yet: run `keepers compute` (or `keepers compute "
            "--backfill --since DATE` to rebuild the past) first"
        )
    return first, last


def rounded(value: Any, digits: int = 2) -> Any:
    return round(value, digits) if isinstance(value, float) else value
