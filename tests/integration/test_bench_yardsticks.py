"""`bench/engine.py` times a hand-written DuckDB query of the default traits beside the
engine's full run, as the floor of what the run's aggregation costs. The yardstick is only
worth its figure if it computes what the engine computes: on a store made by the bench's
own generator, its rows must equal the traits a full run stores, column for column."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from keepers.domain.definitions import default_definitions
from keepers.engine.plan import Plan
from keepers.services.keepers import Keepers
from keepers.settings import Settings

BENCH = Path(__file__).resolve().parents[2] / "bench"
# the query's names for the default rules' windowed counts: (event, days) of the aggregate
WINDOWED = {
    "added_30d": ("Product Added", 30),
    "checkouts_30d": ("Checkout Started", 30),
    "views_30d": ("Product Viewed", 30),
    "checkouts_7d": ("Checkout Started", 7),
    "orders_7d": ("Order Completed", 7),
}


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("yardstick") / "bench.duckdb"
    command = [sys.executable, str(BENCH / "engine_data.py"), "--db", str(path)]
    command += ["--customers", "3000", "--events", "40000", "--seed", "7", "--json"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return path


def test_the_traits_query_equals_the_traits_a_full_run_stores(store: Path):
    bench = bench_module()
    plan = Plan.build(default_definitions())
    keepers = Keepers.open(Settings(database_url=str(store)))
    try:
        keepers.compute(full=True, as_of=bench.AS_OF)
        with keepers.db.transaction() as tx:
            sql = bench.TRAITS_SQL
            query = tx.fetch_arrow(sql.replace("$as_of", "?"), [bench.AS_OF] * sql.count("$as_of"))
            stored = tx.fetch_arrow("SELECT * FROM customer_state ORDER BY customer_id")
    finally:
        keepers.close()
    by_window = {(a.event, a.days): a.column for a in plan.aggregates if a.days}
    mapping = {n: by_window[WINDOWED[n]] if n in WINDOWED else n for n in query.schema.names}
    # every stored trait has its column in the query (the epoch copies are derived)
    assert set(mapping.values()) == {c for c in plan.state_schema() if not c.startswith("_e_")}
    query = query.sort_by("customer_id")
    assert query.num_rows == stored.num_rows > 2000
    for name, column in mapping.items():
        mine, theirs = query.column(name).to_pylist(), stored.column(column).to_pylist()
        differ = [
            (i, a, b)
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True))
            if not (a == b or (isinstance(a, float) and b is not None and math.isclose(a, b)))
        ]
        assert not differ, f"{name} ≠ {column}: first rows {differ[:3]}"
    # the data must exercise the columns, or equality proves little
    for name in ("orders", "refunds", "nps", "emails_opened", "views_30d", "orders_7d"):
        assert any(query.column(name).to_pylist()), name
