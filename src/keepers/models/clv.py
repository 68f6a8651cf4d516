r"""Discounted customer lifetime value over a horizon of months.

As `lifetimes`' ``customer_lifetime_value`` (which follows Fader, Hardie & Lee 2005, "RFM
and CLV: Using Iso-Value Curves for Customer Base Analysis", with a discrete monthly
discount): for months k = 1..K,

.. math::

    \mathrm{CLV} = \sum_{k=1}^{K} \frac{\left(E[Y(k\,u)] - E[Y((k-1)\,u)]\right)\,E[M]}
                                     {(1 + d)^k}

where :math:`E[Y(t)]` is the transaction model's conditional expected number of purchases
in (T, T + t], u the number of time units per month, d the monthly discount rate and
:math:`E[M]` the expected spend per purchase (Gamma-Gamma's conditional expectation). All
months and customers are computed in one broadcast call.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from keepers.errors import InvalidInput
from keepers.models._fitting import FloatArray

PERIODS_PER_MONTH = {"days": 30.0, "weeks": 4.345, "months": 1.0}
"""Time units per month, as `lifetimes` uses them ("D" 30, "W" 4.345, "M" 1)."""


class PurchaseModel(Protocol):
    def conditional_expected_purchases(
        self, t: object, frequency: object, recency: object, T: object
    ) -> FloatArray: ...


def customer_lifetime_value(
    model: PurchaseModel,
    frequency: object,
    recency: object,
    T: object,
    expected_spend: object,
    *,
    months: int = 12,
    monthly_discount_rate: float = 0.01,
    time_unit: str = "weeks",
) -> FloatArray:
    """Discounted expected revenue per customer over the next `months` months.

    `expected_spend` is the expected value of one future purchase per customer (for
    example `GammaGammaModel.conditional_expected_spend`); `time_unit` is the unit the
    model and T are in."""
    if time_unit not in PERIODS_PER_MONTH:
        raise InvalidInput(
            f"unknown time unit {time_unit!r}; use one of {', '.join(PERIODS_PER_MONTH)}"
        )
    if months < 1:
        raise InvalidInput(f"months must be at least 1; got {months}")
    factor = PERIODS_PER_MONTH[time_unit]
    steps = np.arange(0, months + 1, dtype=np.float64)
    x, t_x, age, spend = (
        np.asarray(v, dtype=np.float64) for v in (frequency, recency, T, expected_spend)
    )
    cumulative = model.conditional_expected_purchases((steps * factor)[:, None], x, t_x, age)
    cumulative = np.broadcast_to(cumulative, (months + 1, *np.shape(x)))
    increments = np.diff(cumulative, axis=0)
    discount = (1 + monthly_discount_rate) ** steps[1:]
    return (increments / discount[:, None]).sum(axis=0) * spend
