"""From a transaction log to the RFM summary the BTYD models take, vectorised in NumPy.

Definitions (as `lifetimes.utils.summary_data_from_transaction_data` with ``freq="D"`` and
``freq_multiplier`` = days per time unit; as in Fader, Hardie & Lee 2005):

- purchases on the same calendar day are one purchase (their amounts summed);
- only purchases on or before ``calibration_end`` count, and only customers whose first
  purchase is on or before it are included;
- ``frequency``: the number of purchase days after the first one (repeat purchases);
- ``recency``: time from the first to the last purchase day (0 without repeat purchases);
- ``T``: time from the first purchase day to ``calibration_end``;
- ``monetary_value``: mean amount of the *repeat* purchase days (0 without any), the
  `lifetimes` convention the Gamma-Gamma model wants.

Given ``observation_end``, the holdout period is (calibration_end, observation_end]:
``frequency_holdout`` counts its purchase days per customer and ``monetary_value_holdout``
is their mean amount (same-day purchases merged here too; `lifetimes`' holdout mean is per
raw transaction instead), ``duration_holdout`` its length.

Time units: days (1 day), weeks (7 days), months (365.25 / 12 days). Dates are truncated
to the day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keepers.errors import InvalidInput
from keepers.models._fitting import FloatArray

TIME_UNITS = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12}
"""Days per time unit."""


@dataclass(frozen=True)
class RFMSummary:
    """One row per customer, ordered by customer id."""

    customer_id: np.ndarray
    frequency: FloatArray
    recency: FloatArray
    T: FloatArray
    monetary_value: FloatArray | None
    first_purchase: np.ndarray  # datetime64[D]
    time_unit: str
    calibration_end: np.datetime64
    frequency_holdout: FloatArray | None = None
    monetary_value_holdout: FloatArray | None = None
    duration_holdout: float | None = None

    def __len__(self) -> int:
        return len(self.customer_id)

    @property
    def repeat_buyers(self) -> int:
        return int(np.count_nonzero(self.frequency > 0))

    def columns(self) -> dict[str, np.ndarray]:
        """The per-customer arrays by name (for a DataFrame or Arrow table)."""
        out = {
            "customer_id": self.customer_id,
            "frequency": self.frequency,
            "recency": self.recency,
            "T": self.T,
        }
        if self.monetary_value is not None:
            out["monetary_value"] = self.monetary_value
        if self.frequency_holdout is not None:
            out["frequency_holdout"] = self.frequency_holdout
            if self.monetary_value_holdout is not None:
                out["monetary_value_holdout"] = self.monetary_value_holdout
        return out


def to_day(value: object, name: str) -> np.datetime64:
    """A date (str 'YYYY-MM-DD' or 'YYYYMMDD', date, datetime, datetime64) as datetime64[D]."""
    if isinstance(value, str) and len(value) == 8 and value.isdigit():
        value = f"{value[:4]}-{value[4:6]}-{value[6:]}"
    try:
        day = np.datetime64(value, "D")
    except (ValueError, TypeError):
        raise InvalidInput(f"{name} is not a date: {value!r} (use YYYY-MM-DD)") from None
    if np.isnat(day):
        raise InvalidInput(f"{name} is not a date: {value!r} (use YYYY-MM-DD)")
    return day


def summary_from_transactions(
    customer_ids: object,
    dates: object,
    amounts: object | None,
    calibration_end: object,
    observation_end: object | None = None,
    time_unit: str = "weeks",
) -> RFMSummary:
    """The per-customer (frequency, recency, T, monetary_value) summary of a transaction
    log, plus holdout figures when `observation_end` is given. See the module docstring
    for the definitions. `amounts` may be None (no monetary columns)."""
    if time_unit not in TIME_UNITS:
        raise InvalidInput(f"unknown time unit {time_unit!r}; use one of {', '.join(TIME_UNITS)}")
    unit = TIME_UNITS[time_unit]
    cal_end = to_day(calibration_end, "calibration_end")
    obs_end = None if observation_end is None else to_day(observation_end, "observation_end")
    if obs_end is not None and obs_end <= cal_end:
        raise InvalidInput(f"observation_end ({obs_end}) must be after calibration_end ({cal_end})")
    ids = np.asarray(customer_ids)
    days = _as_days(dates)
    if len(ids) != len(days):
        raise InvalidInput(
            f"customer_ids and dates must have the same length; got {len(ids)} and {len(days)}"
        )
    amount = None if amounts is None else np.asarray(amounts, dtype=np.float64)
    if amount is not None:
        if len(amount) != len(days):
            raise InvalidInput(
                f"amounts must have one value per transaction; got {len(amount)} for {len(days)}"
            )
        if not np.all(np.isfinite(amount)):
            raise InvalidInput("amounts has missing or infinite values")

    end = int((obs_end if obs_end is not None else cal_end).astype(np.int64))
    cal = int(cal_end.astype(np.int64))
    keep = days <= end
    if not np.any(days[keep] <= cal):
        first = days.min() if len(days) else None
        shown = (
            "there are no transactions"
            if first is None
            else (f"the first purchase is on {np.datetime64(int(first), 'D')}")
        )
        raise InvalidInput(f"no purchases on or before calibration_end {cal_end}: {shown}")
    uniq, code = np.unique(ids[keep], return_inverse=True)
    code = code.ravel()
    day = days[keep]
    order = np.lexsort((day, code))
    code, day = code[order], day[order]
    # one row per (customer, day), amounts summed
    starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (day[1:] != day[:-1])])
    code, day = code[starts], day[starts]
    spent = None if amount is None else np.add.reduceat(amount[keep][order], starts)
    first_row = np.r_[True, code[1:] != code[:-1]]
    n = len(uniq)
    first_day = np.empty(n, dtype=np.int64)
    first_day[code[first_row]] = day[first_row]

    in_cal = day <= cal
    cal_code, cal_day = code[in_cal], day[in_cal]
    purchases = np.bincount(cal_code, minlength=n)
    last_row = np.r_[cal_code[1:] != cal_code[:-1], True]
    last_day = first_day.copy()
    last_day[cal_code[last_row]] = cal_day[last_row]
    included = first_day <= cal
    frequency = (purchases - 1)[included].astype(np.float64)
    monetary = None
    if spent is not None:
        repeat = in_cal & ~first_row
        repeat_sum = np.bincount(code[repeat], weights=spent[repeat], minlength=n)[included]
        monetary = np.divide(
            repeat_sum, frequency, out=np.zeros_like(repeat_sum), where=frequency > 0
        )

    holdout: dict = {}
    if obs_end is not None:
        later = ~in_cal
        count = np.bincount(code[later], minlength=n)[included].astype(np.float64)
        holdout["frequency_holdout"] = count
        if spent is not None:
            total = np.bincount(code[later], weights=spent[later], minlength=n)[included]
            holdout["monetary_value_holdout"] = np.divide(
                total, count, out=np.zeros_like(total), where=count > 0
            )
        holdout["duration_holdout"] = float((end - cal) / unit)

    return RFMSummary(
        customer_id=uniq[included],
        frequency=frequency,
        recency=((last_day - first_day)[included] / unit).astype(np.float64),
        T=((cal - first_day)[included] / unit).astype(np.float64),
        monetary_value=monetary,
        first_purchase=first_day[included].astype("datetime64[D]"),
        time_unit=time_unit,
        calibration_end=cal_end,
        **holdout,
    )


def _as_days(dates: object) -> np.ndarray:
    """Dates as int64 days since 1970-01-01. Accepts datetime64 values, date/datetime
    objects and strings (ISO 8601 or YYYYMMDD); refuses bare numbers, which NumPy would
    read as days (or years) since 1970."""
    values = np.asarray(dates)
    if values.dtype.kind in "iufb":
        raise InvalidInput(
            "dates are numbers; give datetime64 values or strings (YYYY-MM-DD or YYYYMMDD)"
        )
    strings = values.dtype.kind in "US" or (
        values.dtype.kind == "O" and len(values) > 0 and isinstance(values.flat[0], str)
    )
    if strings:
        values = _iso_strings(values.astype(str))
    try:
        values = values.astype("datetime64[D]")
    except (ValueError, TypeError):
        raise InvalidInput(
            "dates must be datetime64 values or dates written YYYY-MM-DD or YYYYMMDD"
        ) from None
    if np.any(np.isnat(values)):
        raise InvalidInput(f"dates has {int(np.count_nonzero(np.isnat(values)))} missing values")
    return values.astype(np.int64)


def _iso_strings(text: np.ndarray) -> np.ndarray:
    """YYYYMMDD strings rewritten as YYYY-MM-DD (NumPy would read 19970101 as a year)."""
    compact = (np.strings.str_len(text) == 8) & np.strings.isdigit(text)
    if not np.any(compact):
        return text
    part = text[compact]
    iso = np.strings.add(
        np.strings.add(np.strings.slice(part, 0, 4), "-"),
        np.strings.add(
            np.strings.add(np.strings.slice(part, 4, 6), "-"), np.strings.slice(part, 6, 8)
        ),
    )
    out = text.astype(object)
    out[compact] = iso
    return out.astype(str)
