"""Fit the CLV models to a raw transaction file (`keepers clv fit`).

The file is a CSV with a header and one row per purchase: a customer id, a date and an
amount (the column names are arguments). The delimiter is sniffed by DuckDB's CSV reader.
Accepted values:

- dates: ISO 8601 date or date-time (`1997-01-01`, `1997-01-01T10:30:00`), or `YYYYMMDD`;
  the calendar day as written is used (a time of day and any offset are ignored);
- amounts: plain numbers (`29.33`, `-5`, `1e3`); currency symbols and thousands separators
  are refused rather than guessed.

A missing column, an unreadable date or amount (named with its first bad line), an unknown
time unit, or a calibration end that is not a date or precedes every purchase raise
`InvalidInput` (CLI exit 2 with one line).

What is fitted, on the calibration period (purchases up to and including `calibration_end`,
same-day purchases merged): BG/NBD and Pareto/NBD on every customer, Gamma-Gamma on the
repeat buyers. All three need at least 10 customers and 5 repeat buyers
(`keepers.models.MIN_CUSTOMERS`, `MIN_REPEAT_BUYERS`); below that the whole command fails
with that message, since there is nothing worth reporting. Beyond that:

- repeat buyers whose average repeat spend is zero or negative cannot enter Gamma-Gamma
  (its likelihood needs a positive spend): they are left out and counted
  (`gamma_gamma.excluded_nonpositive_spend`);
- if Pareto/NBD or Gamma-Gamma does not converge (or Gamma-Gamma has too few buyers left),
  that model is `null` and the reason is in `warnings`; BG/NBD not converging fails the
  command (exit 1), since every prediction here rests on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from threadpoolctl import threadpool_limits

from keepers.errors import InvalidInput, KeepersError
from keepers.models.bgnbd import BGNBDModel, fit_bgnbd
from keepers.models.clv import PERIODS_PER_MONTH, customer_lifetime_value
from keepers.models.gamma_gamma import GammaGammaModel, fit_gamma_gamma
from keepers.models.pareto_nbd import ParetoNBDModel, fit_pareto_nbd
from keepers.models.summary import TIME_UNITS, RFMSummary, summary_from_transactions, to_day

CLV_MONTHS = 12
CLV_MONTHLY_DISCOUNT = 0.01
_Models = tuple[BGNBDModel, ParetoNBDModel | None, GammaGammaModel | None]


def fit_transactions(
    path: Path,
    *,
    calibration_end: str,
    time_unit: str = "weeks",
    customer_col: str = "customer_id",
    date_col: str = "date",
    amount_col: str = "amount",
    horizon: float = 52.0,
) -> dict[str, Any]:
    """Read `path`, summarise it per customer and fit BG/NBD, Pareto/NBD and Gamma-Gamma.

    Returns a JSON-able dict: counts, each model's parameters and log-likelihood, the
    Gamma-Gamma frequency/spend correlation, and mean predictions over the customers
    (expected purchases in the next `horizon` time units, P(alive), expected spend and a
    12-month CLV discounted at 1 % a month)."""
    if time_unit not in TIME_UNITS:
        raise InvalidInput(f"unknown time unit {time_unit!r}; use one of {', '.join(TIME_UNITS)}")
    cal_end = to_day(calibration_end, "--calibration-end")
    if not horizon > 0:
        raise InvalidInput(f"horizon must be positive; got {horizon}")
    started = time.perf_counter()
    customers, days, amounts = read_transactions(path, customer_col, date_col, amount_col)
    summary = summary_from_transactions(customers, days, amounts, cal_end, time_unit=time_unit)
    read_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "transactions": len(days),
        "customers": len(summary),
        "repeat_buyers": summary.repeat_buyers,
        "calibration_end": str(cal_end),
        "time_unit": time_unit,
        "horizon": horizon,
    }
    # The optimisers' small BLAS calls run far slower with OpenBLAS threads when the
    # machine is busy (10x seen on two cores), and gain nothing from them.
    with threadpool_limits(limits=1, user_api="blas"):
        fits, models, warnings = _fit_models(summary)
        result.update(fits)
        result["predictions"] = _predictions(summary, models, horizon, time_unit)
    result["warnings"] = warnings
    result["seconds"] = {"read": round(read_s, 3), "total": round(time.perf_counter() - started, 3)}
    return result


def read_transactions(
    path: Path, customer_col: str, date_col: str, amount_col: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer code, day, amount) arrays from a CSV with a header, checked row by row in
    SQL. Customer ids come back as dense integer codes (the order of the ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    con = duckdb.connect()
    try:
        source = f"read_csv({_literal(str(path))}, header = true, all_varchar = true)"
        try:
            present = con.sql(f"SELECT * FROM {source} LIMIT 0").columns
        except duckdb.Error as exc:
            raise InvalidInput(
                f"cannot read {path.name} as a CSV file with a header: {str(exc).splitlines()[0]}"
            ) from None
        cust, when, amount = (
            _column(present, wanted, flag, path)
            for wanted, flag in (
                (customer_col, "--customer-col"),
                (date_col, "--date-col"),
                (amount_col, "--amount-col"),
            )
        )
        con.execute(
            f"""
            CREATE TEMP TABLE raw AS
            SELECT row_number() OVER () + 1 AS line,
                   trim({cust}) AS cust, trim({when}) AS raw_date, trim({amount}) AS raw_amount,
                   coalesce(
                       try_strptime(trim({when}), '%Y%m%d')::DATE,
                       TRY_CAST(trim({when}) AS TIMESTAMP)::DATE
                   ) AS day,
                   TRY_CAST(trim({amount}) AS DOUBLE) AS amount
            FROM {source}
            """
        )
        _first_bad(con, "cust IS NULL OR cust = ''", "cust", customer_col, "is empty")
        _first_bad(
            con,
            "day IS NULL",
            "raw_date",
            date_col,
            "is not a date (use YYYY-MM-DD or YYYYMMDD)",
        )
        _first_bad(
            con,
            "amount IS NULL OR NOT isfinite(amount)",
            "raw_amount",
            amount_col,
            "is not a number",
        )
        columns = con.sql(
            """
            SELECT dense_rank() OVER (ORDER BY cust) - 1 AS code,
                   (day - DATE '1970-01-01')::BIGINT AS day,
                   amount
            FROM raw ORDER BY line
            """
        ).fetchnumpy()
    except duckdb.Error as exc:
        raise InvalidInput(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    if len(columns["code"]) == 0:
        raise InvalidInput(f"{path.name} has no transactions")
    return (
        np.asarray(columns["code"], dtype=np.int64),
        np.asarray(columns["day"], dtype=np.int64).astype("datetime64[D]"),
        np.asarray(columns["amount"], dtype=np.float64),
    )


def _column(present: list[str], wanted: str, flag: str, path: Path) -> str:
    """The quoted SQL name of `wanted` (exact match, else the one case-insensitive match)."""
    if wanted in present:
        name = wanted
    else:
        folded = [c for c in present if c.casefold() == wanted.casefold()]
        if len(folded) != 1:
            shown = ", ".join(repr(c) for c in present)
            raise InvalidInput(
                f"column {wanted!r} ({flag}) not found in {path.name}; its columns are: {shown}"
            )
        name = folded[0]
    return '"' + name.replace('"', '""') + '"'


def _first_bad(
    con: duckdb.DuckDBPyConnection, condition: str, raw: str, column: str, problem: str
) -> None:
    row = con.execute(
        f"SELECT line, {raw}, count(*) OVER () FROM raw WHERE {condition} ORDER BY line LIMIT 1"
    ).fetchone()
    if row is not None:
        line, value, count = row
        more = f" ({count} rows like this)" if count > 1 else ""
        shown = "empty" if value in (None, "") else repr(value)
        raise InvalidInput(f"column {column!r}, line {line}: {shown} {problem}{more}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fit_models(summary: RFMSummary) -> tuple[dict[str, Any], _Models, list[str]]:
    """Each model's figures for the JSON, the fitted models, and warnings."""
    warnings: list[str] = []
    pareto: ParetoNBDModel | None = None
    spend: GammaGammaModel | None = None
    x, t_x, age = summary.frequency, summary.recency, summary.T
    bg = fit_bgnbd(x, t_x, age)
    out: dict[str, Any] = {
        "bgnbd": {
            **bg.model.as_dict(),
            "log_likelihood": bg.log_likelihood,
            "iterations": bg.iterations,
        },
        "pareto_nbd": None,
        "gamma_gamma": None,
    }
    try:
        pn = fit_pareto_nbd(x, t_x, age)
        pareto = pn.model
        out["pareto_nbd"] = {
            **pn.model.as_dict(),
            "log_likelihood": pn.log_likelihood,
            "iterations": pn.iterations,
        }
    except KeepersError as exc:
        warnings.append(f"Pareto/NBD not fitted: {exc.message}")
    assert summary.monetary_value is not None
    positive = (x > 0) & (summary.monetary_value > 0)
    excluded = int(np.count_nonzero((x > 0) & ~positive))
    try:
        gg = fit_gamma_gamma(x[positive], summary.monetary_value[positive])
        spend = gg.model
        out["gamma_gamma"] = {
            **gg.model.as_dict(),
            "log_likelihood": gg.log_likelihood,
            "iterations": gg.iterations,
            "customers": gg.customers,
            "excluded_nonpositive_spend": excluded,
            "frequency_monetary_correlation": gg.frequency_monetary_correlation,
            "correlation_warning": gg.correlation_warning,
        }
        if gg.correlation_warning:
            warnings.append(
                "Gamma-Gamma assumes spend is independent of purchase frequency, but their "
                f"correlation among repeat buyers is {gg.frequency_monetary_correlation:.2f}"
            )
    except KeepersError as exc:
        more = f" ({excluded} repeat buyers with non-positive spend left out)" if excluded else ""
        warnings.append(f"Gamma-Gamma not fitted: {exc.message}{more}")
    return out, (bg.model, pareto, spend), warnings


def _predictions(
    summary: RFMSummary, models: _Models, horizon: float, time_unit: str
) -> dict[str, Any]:
    bg, pn, gg = models
    x, t_x, age = summary.frequency, summary.recency, summary.T
    label = f"{horizon:g}".replace(".", "_")
    out: dict[str, Any] = {}
    for name, model in (("bgnbd", bg), ("pareto_nbd", pn)):
        if model is None:
            continue
        expected = model.conditional_expected_purchases(horizon, x, t_x, age)
        out[name] = {
            f"expected_purchases_next_{label}": _number(np.mean(expected)),
            f"expected_purchases_next_{label}_total": _number(np.sum(expected)),
            "mean_p_alive": _number(np.mean(model.probability_alive(x, t_x, age))),
        }
    if gg is not None and gg.q > 1:
        spend = gg.conditional_expected_spend(x, summary.monetary_value)
        clv = customer_lifetime_value(
            bg,
            x,
            t_x,
            age,
            spend,
            months=CLV_MONTHS,
            monthly_discount_rate=CLV_MONTHLY_DISCOUNT,
            time_unit=time_unit,
        )
        out["gamma_gamma"] = {
            "mean_expected_spend": _number(np.mean(spend)),
            "population_mean_spend": _number(gg.population_mean_spend),
        }
        out["clv"] = {
            "model": "bgnbd + gamma_gamma",
            "months": CLV_MONTHS,
            "monthly_discount_rate": CLV_MONTHLY_DISCOUNT,
            "periods_per_month": PERIODS_PER_MONTH[time_unit],
            "mean": _number(np.mean(clv)),
            "total": _number(np.sum(clv)),
        }
    return out


def _number(value: object) -> float | None:
    number = float(value)  # type: ignore[arg-type]
    return number if np.isfinite(number) else None
