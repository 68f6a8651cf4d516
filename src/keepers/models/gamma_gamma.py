r"""Gamma-Gamma model of the average spend per transaction.

Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV: Using Iso-Value Curves
for Customer Base Analysis", Journal of Marketing Research 42 (4), 415-430; and Fader, P. S.
and Hardie, B. G. S. (2013), "The Gamma-Gamma Model of Monetary Value"
(brucehardie.com/notes/025). The paper's third parameter :math:`\gamma` is ``v`` here (as
in the `lifetimes` package).

Model. Each transaction value is Gamma(p, nu); across customers
:math:`\nu \sim \mathrm{Gamma}(q, \gamma)`. It is fitted on repeat buyers only (x > 0), with
``monetary_value`` :math:`\bar m` the mean of the x repeat transactions, and assumes that
spend is independent of the purchase process: the fit reports the Pearson correlation of
frequency and monetary value among the repeat buyers, and flags :math:`|\rho| \ge 0.3`.

Density of the average of x transactions (note 025, eq. 1a):

.. math::

    \ln f(\bar m \mid x) = \ln\Gamma(px+q) - \ln\Gamma(px) - \ln\Gamma(q) + q\ln\gamma
        + (px-1)\ln\bar m + px\ln x - (px+q)\ln(\gamma + x\bar m)

Gradient (analytic), with :math:`D = \ln(\gamma + x\bar m)`:

.. math::

    \partial_p &= x\,[\psi(px+q) - \psi(px) + \ln\bar m + \ln x - D] \\
    \partial_q &= \psi(px+q) - \psi(q) + \ln\gamma - D \\
    \partial_\gamma &= q/\gamma - (px+q)/(\gamma + x\bar m)

Conditional expected average spend (paper, eq. 5):
:math:`E[M \mid \bar m, x] = \frac{px}{px+q-1}\bar m + \frac{q-1}{px+q-1}\frac{p\gamma}{q-1}`,
defined for q > 1 (the population mean :math:`p\gamma/(q-1)` is infinite otherwise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import digamma, gammaln

from keepers.errors import InvalidInput
from keepers.models._fitting import (
    MIN_REPEAT_BUYERS,
    FloatArray,
    ModelFit,
    as_float_array,
    as_weights,
    dot,
    maximise,
)

NAME = "Gamma-Gamma"
PARAMS = ("p", "q", "v")
SHAPES = ("p", "q")
DEGENERATE_HINT = "for example, every customer spending about the same"
CORRELATION_WARNING = 0.3
"""|Pearson correlation| of frequency and monetary value from which the fit is flagged."""


@dataclass(frozen=True)
class GammaGammaModel:
    """Gamma-Gamma parameters: transaction values Gamma(p, nu), nu ~ Gamma(q, v)."""

    p: float
    q: float
    v: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def population_mean_spend(self) -> float:
        """E[M] over all customers: p v / (q - 1); infinite when q <= 1."""
        return self.p * self.v / (self.q - 1) if self.q > 1 else float("inf")

    def log_likelihood(self, frequency: object, monetary_value: object) -> FloatArray:
        """ln f(average spend | x) per customer; customers need x > 0 and spend > 0."""
        x, m = _repeat_buyers(frequency, monetary_value, strict=True)
        return _log_density(self.p, self.q, self.v, x, m)

    def conditional_expected_spend(self, frequency: object, monetary_value: object) -> FloatArray:
        """E[average spend | x, m]: a weighted mean of the customer's own average and the
        population mean. Customers with x = 0 get the population mean."""
        if self.q <= 1:
            raise InvalidInput(
                f"the Gamma-Gamma population mean spend is infinite for q = {self.q:.3g} <= 1; "
                "expected spend is undefined"
            )
        x = np.asarray(frequency, dtype=np.float64)
        m = np.asarray(monetary_value, dtype=np.float64)
        weight = self.p * x / (self.p * x + self.q - 1)
        return (1 - weight) * self.population_mean_spend + weight * np.where(x > 0, m, 0.0)


@dataclass(frozen=True)
class GammaGammaFit(ModelFit[GammaGammaModel]):
    """A Gamma-Gamma fit plus the check of its independence assumption."""

    frequency_monetary_correlation: float
    correlation_warning: bool


def fit_gamma_gamma(
    frequency: object,
    monetary_value: object,
    *,
    weights: object | None = None,
) -> GammaGammaFit:
    """Maximum-likelihood Gamma-Gamma fit on the repeat buyers among the rows given.

    Customers with frequency 0 are ignored. Raises InvalidInput when fewer than 5 repeat
    buyers remain or a repeat buyer's average spend is not positive (drop or fix those
    first), ModelDidNotConverge when there is no interior optimum."""
    x_all = as_float_array(frequency, "frequency")
    m_all = as_float_array(monetary_value, "monetary_value")
    if len(x_all) != len(m_all):
        raise InvalidInput(
            f"frequency and monetary_value must have the same length; got {len(x_all)} and "
            f"{len(m_all)}"
        )
    w_all = np.ones(len(x_all)) if weights is None else as_weights(weights, len(x_all))
    keep = x_all > 0
    x, m, w = x_all[keep], m_all[keep], w_all[keep]
    buyers = round(float(w.sum()))
    if buyers < MIN_REPEAT_BUYERS:
        raise InvalidInput(
            f"{NAME} needs at least {MIN_REPEAT_BUYERS} repeat buyers (customers with "
            f"frequency > 0) to fit; this data has {buyers}"
        )
    _repeat_buyers(x, m, strict=True)
    correlation = _weighted_correlation(x, m, w)
    mean_m = dot(w, m) / float(w.sum())
    params, mean_nll, iterations = maximise(
        NAME,
        PARAMS,
        _objective(x, m, w),
        np.array([1.0, 2.0, mean_m]),
        shapes=SHAPES,
        hint=DEGENERATE_HINT,
    )
    return GammaGammaFit(
        model=GammaGammaModel(*map(float, params)),
        log_likelihood=-mean_nll * float(w.sum()),
        iterations=iterations,
        customers=buyers,
        frequency_monetary_correlation=correlation,
        correlation_warning=bool(abs(correlation) >= CORRELATION_WARNING),
    )


def log_likelihood_gradient(
    model: GammaGammaModel, frequency: object, monetary_value: object
) -> FloatArray:
    """d(sum of ln f)/d(p, q, v): the analytic gradient the fit uses."""
    x, m = _repeat_buyers(frequency, monetary_value, strict=True)
    params = np.array([model.p, model.q, model.v])
    _, grad_log = _objective(x, m, np.ones(len(x)))(np.log(params))
    return -grad_log * len(x) / params


def _repeat_buyers(
    frequency: object, monetary_value: object, *, strict: bool
) -> tuple[FloatArray, FloatArray]:
    x = as_float_array(frequency, "frequency")
    m = as_float_array(monetary_value, "monetary_value")
    if strict and np.any(x <= 0):
        raise InvalidInput(f"{NAME} applies to repeat buyers only (frequency > 0)")
    bad = int(np.count_nonzero(m <= 0))
    if strict and bad:
        raise InvalidInput(
            f"{NAME} needs a positive average spend for every repeat buyer; {bad} have zero "
            "or negative spend"
        )
    return x, m


def _log_density(p: float, q: float, v: float, x: FloatArray, m: FloatArray) -> FloatArray:
    px = p * x
    return (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(v)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(v + x * m)
    )


def _objective(x: FloatArray, m: FloatArray, w: FloatArray):
    total = float(w.sum())
    log_m, log_x = np.log(m), np.log(x)
    xm = x * m

    def objective(log_params: FloatArray) -> tuple[float, FloatArray]:
        p, q, v = np.exp(log_params)
        px = p * x
        log_vxm = np.log(v + xm)
        psi_pxq = digamma(px + q)
        ll = float(
            dot(
                w,
                gammaln(px + q) - gammaln(px) + (px - 1) * log_m + px * log_x - (px + q) * log_vxm,
            )
        ) + total * (q * np.log(v) - gammaln(q))
        d_p = dot(w, x * (psi_pxq - digamma(px) + log_m + log_x - log_vxm))
        d_q = dot(w, psi_pxq - log_vxm) + total * (np.log(v) - digamma(q))
        d_v = total * q / v - dot(w, (px + q) / (v + xm))
        grad = np.array([d_p * p, d_q * q, d_v * v])
        return -ll / total, -grad / total

    return objective


def _weighted_correlation(x: FloatArray, m: FloatArray, w: FloatArray) -> float:
    """Pearson correlation of frequency and average spend (0 when either is constant)."""
    mx, mm = dot(w, x) / w.sum(), dot(w, m) / w.sum()
    cov = dot(w, (x - mx) * (m - mm))
    var = dot(w, (x - mx) ** 2) * dot(w, (m - mm) ** 2)
    return float(cov / np.sqrt(var)) if var > 0 else 0.0
