r"""BG/NBD: the beta-geometric / negative binomial model of repeat buying.

Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "'Counting Your Customers' the Easy
Way: An Alternative to the Pareto/NBD Model", Marketing Science 24 (2), 275-284; and the
note "Computing P(alive) Using the BG/NBD Model" (Fader, Hardie & Lee 2008).

Model. While active, a customer buys as a Poisson process with rate
:math:`\lambda \sim \mathrm{Gamma}(r, \alpha)`; after each purchase they drop out for good
with probability :math:`p \sim \mathrm{Beta}(a, b)`. A customer's history is summarised by
``frequency`` :math:`x` (repeat purchases), ``recency`` :math:`t_x` (time of the last
purchase since the first) and ``T`` (time since the first purchase).

Likelihood (paper, eq. 6):

.. math::

    L = \frac{B(a, b + x)}{B(a, b)} \frac{\Gamma(r + x)\,\alpha^r}{\Gamma(r)\,(\alpha + T)^{r+x}}
        + \delta_{x>0} \frac{B(a + 1, b + x - 1)}{B(a, b)}
          \frac{\Gamma(r + x)\,\alpha^r}{\Gamma(r)\,(\alpha + t_x)^{r+x}}

computed as :math:`\ln L = A_1 + A_2 + \ln(e^{A_3} + \delta_{x>0} e^{A_4})` with
:math:`A_1 = \ln\Gamma(r+x) - \ln\Gamma(r) + r\ln\alpha`,
:math:`A_2 = \ln\Gamma(a+b) + \ln\Gamma(b+x) - \ln\Gamma(b) - \ln\Gamma(a+b+x)`,
:math:`A_3 = -(r+x)\ln(\alpha+T)`,
:math:`A_4 = \ln a - \ln(b+x-1) - (r+x)\ln(\alpha+t_x)`.

Gradient (analytic). With :math:`\sigma = e^{A_4} / (e^{A_3} + e^{A_4})` (0 when x = 0):

.. math::

    \partial_r \ln L &= \psi(r+x) - \psi(r) + \ln\alpha - (1-\sigma)\ln(\alpha+T)
                        - \sigma \ln(\alpha+t_x) \\
    \partial_\alpha \ln L &= r/\alpha - (1-\sigma)(r+x)/(\alpha+T) - \sigma (r+x)/(\alpha+t_x) \\
    \partial_a \ln L &= \psi(a+b) - \psi(a+b+x) + \sigma / a \\
    \partial_b \ln L &= \psi(a+b) + \psi(b+x) - \psi(b) - \psi(a+b+x) - \sigma / (b+x-1)

and the chain rule :math:`\partial_{\ln\theta} = \theta\,\partial_\theta` for the log-parameters
the optimiser works on. Terms that depend on x alone are evaluated once per distinct x,
customers without repeat purchases are counted per distinct T, and identical (x, t_x, T)
rows of repeat buyers are merged with a count, so a million customers summarised from
dated transactions cost some 100,000 rows. Above 20,000 rows a fit on a fixed sample of
20,000 customers gives the start and, by central differences of the analytic gradient, the
Hessian that whitens the full search (about 4 L-BFGS-B iterations instead of 15).

Predictions:

- conditional expected purchases in (T, T + t] (paper, eq. 10):
  :math:`E[Y(t) \mid x, t_x, T] = \frac{a+b+x-1}{a-1}
  \left[1 - \left(\frac{\alpha+T}{\alpha+T+t}\right)^{r+x}
  {}_2F_1\!\left(r+x, b+x; a+b+x-1; \frac{t}{\alpha+T+t}\right)\right] P(\text{alive})`
- P(alive) = :math:`1 / \left(1 + \delta_{x>0} \frac{a}{b+x-1}
  \left(\frac{\alpha+T}{\alpha+t_x}\right)^{r+x}\right)` (the 2008 note),
- unconditional expected purchases of a new customer in (0, t] (paper, eq. 9):
  :math:`E[X(t)] = \frac{a+b-1}{a-1}\left[1 - \left(\frac{\alpha}{\alpha+t}\right)^r
  {}_2F_1\!\left(r, b; a+b-1; \frac{t}{\alpha+t}\right)\right]`.

The expectations divide by a - 1: at exactly a = 1 they are the limit (0/0 in the formula).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.special import digamma, expit, gammaln, hyp2f1

from keepers.models._fitting import (
    FloatArray,
    ModelFit,
    as_weights,
    check_rft,
    compress_rows,
    dot,
    maximise,
    require_enough,
    sample_customers,
    warm_start,
)

NAME = "BG/NBD"
PARAMS = ("r", "alpha", "a", "b")
SHAPES = ("r", "a", "b")
DEGENERATE_HINT = "for example, no sign of customers dropping out"
WARM_START_ROWS = 20_000
"""Above this many distinct rows, a fit on a fixed random sample of customers gives the
starting point, so the full data need only a few iterations."""


@dataclass(frozen=True)
class BGNBDModel:
    """BG/NBD parameters: purchase rates Gamma(r, alpha), drop-out probability Beta(a, b).

    `alpha` is in the time unit of the data it was fitted on."""

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def log_likelihood(self, frequency: object, recency: object, T: object) -> FloatArray:
        """ln L for each customer."""
        x, t_x, age = check_rft(frequency, recency, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
        a3 = -(r + x) * np.log(alpha + age)
        a4 = np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x)
        return a1 + a2 + np.where(x > 0, np.logaddexp(a3, a4), a3)

    def probability_alive(self, frequency: object, recency: object, T: object) -> FloatArray:
        """P(the customer has not dropped out at T | x, t_x, T)."""
        x, t_x, age = _broadcast(frequency, recency, T)
        log_odds_dead = (
            np.log(self.a)
            - np.log(self.b + np.maximum(x, 1) - 1)
            + (self.r + x) * (np.log(self.alpha + age) - np.log(self.alpha + t_x))
        )
        return np.where(x > 0, expit(-log_odds_dead), 1.0)

    def conditional_expected_purchases(
        self, t: object, frequency: object, recency: object, T: object
    ) -> FloatArray:
        """Expected repeat purchases in (T, T + t] given the history (paper, eq. 10).
        Broadcasts `t` against the customers' arrays."""
        if abs(self.a - 1.0) < NEAR_ONE:
            return _at_the_limit(
                self, lambda m: m.conditional_expected_purchases(t, frequency, recency, T)
            )
        x, t_x, age = _broadcast(frequency, recency, T)
        t = np.asarray(t, dtype=np.float64)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        c = a + b + x - 1
        z = t / (alpha + age + t)
        shrink = (r + x) * (np.log(alpha + age) - np.log(alpha + age + t))
        growth = 1 - _scaled_hyp2f1(r + x, b + x, c, z, shrink)
        return c / (a - 1) * growth * self.probability_alive(x, t_x, age)

    def expected_purchases(self, t: object) -> FloatArray:
        """E[X(t)]: expected repeat purchases of a new customer in (0, t] (paper, eq. 9)."""
        if abs(self.a - 1.0) < NEAR_ONE:
            return _at_the_limit(self, lambda m: m.expected_purchases(t))
        t = np.asarray(t, dtype=np.float64)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        scaled = _scaled_hyp2f1(r, b, a + b - 1, t / (alpha + t), r * np.log(alpha / (alpha + t)))
        return (a + b - 1) / (a - 1) * (1 - scaled)


def fit_bgnbd(
    frequency: object,
    recency: object,
    T: object,
    *,
    weights: object | None = None,
) -> ModelFit[BGNBDModel]:
    """Maximum-likelihood BG/NBD fit (L-BFGS-B on log-parameters, analytic gradient).

    `weights` optionally gives how many customers each row stands for. Raises InvalidInput
    for fewer than 10 customers or 5 repeat buyers, ModelDidNotConverge when there is no
    interior optimum."""
    x, t_x, age = check_rft(frequency, recency, T)
    w = np.ones(len(x)) if weights is None else as_weights(weights, len(x))
    customers = float(w.sum())
    require_enough(NAME, round(customers), round(float(w[x > 0].sum())))
    data = _Data.build(x, t_x, age, w, weighted=weights is not None)
    start = _start(x, age, w)
    curvature = None
    if data.rows > WARM_START_ROWS:
        # a fixed random sample of the customers gives a starting point close to the optimum
        rows = sample_customers(w, WARM_START_ROWS)
        sample = _Data.build(x[rows], t_x[rows], age[rows], np.ones(len(rows)), weighted=False)
        # ... and its curvature whitens the full search: a few more steps, not a dozen
        start, curvature = warm_start(
            NAME, PARAMS, sample.objective, start, shapes=SHAPES, hint=DEGENERATE_HINT
        )
    params, mean_nll, iterations = maximise(
        NAME,
        PARAMS,
        data.objective,
        start,
        shapes=SHAPES,
        hint=DEGENERATE_HINT,
        curvature=curvature,
    )
    return ModelFit(
        model=BGNBDModel(*map(float, params)),
        log_likelihood=-mean_nll * customers,
        iterations=iterations,
        customers=round(customers),
    )


def log_likelihood_gradient(
    model: BGNBDModel, frequency: object, recency: object, T: object
) -> FloatArray:
    """d(sum of ln L)/d(r, alpha, a, b): the analytic gradient the fit uses."""
    x, t_x, age = check_rft(frequency, recency, T)
    data = _Data.build(x, t_x, age, np.ones(len(x)))
    params = np.array([model.r, model.alpha, model.a, model.b])
    _, grad_log = data.objective(np.log(params))
    return -grad_log * len(x) / params


def _start(x: FloatArray, age: FloatArray, w: FloatArray) -> FloatArray:
    """r = 1, alpha from the mean purchase rate, a = b = 1."""
    rate = (dot(w, x) + 1) / (dot(w, age) + 1)
    return np.array([1.0, 1.0 / rate, 1.0, 1.0])


@dataclass(frozen=True)
class _Data:
    """The sufficient statistics in the shape the objective wants.

    Customers without repeat purchases contribute A1 + A2 - r ln(alpha + T): only their
    count per distinct T matters. Repeat buyers are merged into distinct (x, t_x, T) rows.
    Logarithms of alpha + time are taken once per distinct time and gathered."""

    x: FloatArray  # distinct repeat-buyer rows ...
    t_x: FloatArray
    age: FloatArray
    w: FloatArray  # ... and how many customers each stands for
    total: float
    xs: FloatArray  # distinct frequencies (0 included) and their customer counts
    w_by_x: FloatArray
    ix: np.ndarray  # row -> index in xs
    times: FloatArray  # distinct T and t_x values
    i_age: np.ndarray  # row -> index in times
    i_tx: np.ndarray
    zero_w_by_time: FloatArray  # x = 0 customers per distinct T
    w_by_age: FloatArray  # repeat buyers per distinct T, and sum of their x per T
    wx_by_age: FloatArray

    @property
    def rows(self) -> int:
        return len(self.x) + int(np.count_nonzero(self.zero_w_by_time))

    @classmethod
    def build(
        cls, x: FloatArray, t_x: FloatArray, age: FloatArray, w: FloatArray, weighted: bool = True
    ) -> _Data:
        buyers = x > 0
        zero_age = age[~buyers]
        if weighted:
            zero_times, inverse = np.unique(zero_age, return_inverse=True)
            zero_w = np.bincount(inverse.ravel(), weights=w[~buyers], minlength=len(zero_times))
        else:
            zero_times, counts = np.unique(zero_age, return_counts=True)
            zero_w = counts.astype(np.float64)
        (bx, btx, bage), bw = compress_rows(
            x[buyers], t_x[buyers], age[buyers], weights=w[buyers] if weighted else None
        )
        times, inverse = np.unique(np.concatenate([zero_times, bage, btx]), return_inverse=True)
        inverse = inverse.ravel()
        n_zero, n_buy = len(zero_times), len(bx)
        i_age, i_tx = inverse[n_zero : n_zero + n_buy], inverse[n_zero + n_buy :]
        zero_w_by_time = np.bincount(inverse[:n_zero], weights=zero_w, minlength=len(times))
        xs, ix = np.unique(np.concatenate([[0.0], bx]), return_inverse=True)
        ix = ix.ravel()
        w_by_x = np.bincount(ix, weights=np.concatenate([[zero_w.sum()], bw]), minlength=len(xs))
        return cls(
            x=bx,
            t_x=btx,
            age=bage,
            w=bw,
            total=float(zero_w.sum() + bw.sum()),
            xs=xs,
            w_by_x=w_by_x,
            ix=ix[1:],
            times=times,
            i_age=i_age,
            i_tx=i_tx,
            zero_w_by_time=zero_w_by_time,
            w_by_age=np.bincount(i_age, weights=bw, minlength=len(times)),
            wx_by_age=np.bincount(i_age, weights=bw * bx, minlength=len(times)),
        )

    def objective(self, log_params: FloatArray) -> tuple[float, FloatArray]:
        """Mean negative log-likelihood and its gradient with respect to the log-parameters."""
        r, alpha, a, b = np.exp(log_params)
        xs, w_by_x, total = self.xs, self.w_by_x, self.total
        # A1 + A2: per distinct x
        ll = dot(w_by_x, gammaln(r + xs) + gammaln(b + xs) - gammaln(a + b + xs))
        ll += total * (r * np.log(alpha) - gammaln(r) + gammaln(a + b) - gammaln(b))
        psi_abx = dot(w_by_x, digamma(a + b + xs))
        d_r = dot(w_by_x, digamma(r + xs)) + total * (np.log(alpha) - digamma(r))
        d_alpha = total * r / alpha
        d_a = total * digamma(a + b) - psi_abx
        d_b = dot(w_by_x, digamma(b + xs)) + total * (digamma(a + b) - digamma(b)) - psi_abx

        # A3 = -(r + x) ln(alpha + T), summed per distinct T (both kinds of customer)
        log_time = np.log(alpha + self.times)
        inv_time = 1.0 / (alpha + self.times)
        w_age = self.zero_w_by_time + self.w_by_age
        ll -= r * dot(w_age, log_time) + dot(self.wx_by_age, log_time)
        d_r -= dot(w_age, log_time)
        d_alpha -= r * dot(w_age, inv_time) + dot(self.wx_by_age, inv_time)

        # repeat buyers: + softplus(A4 - A3),
        # A4 - A3 = ln a - ln(b+x-1) + (r+x) ln((alpha+T)/(alpha+t_x))
        if len(self.x):
            log_b_x1 = np.log(np.maximum(b + xs - 1, 1e-300))
            rx = r + self.x
            log_ratio = log_time[self.i_age] - log_time[self.i_tx]
            diff = (np.log(a) - log_b_x1)[self.ix] + rx * log_ratio
            small = np.exp(-np.abs(diff))
            ll += dot(self.w, np.maximum(diff, 0.0) + np.log1p(small))
            sigma = np.where(diff >= 0, 1.0, small) / (1.0 + small)
            ws = self.w * sigma
            d_r += dot(ws, log_ratio)
            d_alpha += dot(ws * rx, inv_time[self.i_age] - inv_time[self.i_tx])
            d_a += float(ws.sum()) / a
            ws_by_x = np.bincount(self.ix, weights=ws, minlength=len(xs))
            d_b -= dot(ws_by_x, np.exp(-log_b_x1))

        grad = np.array([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
        return -ll / total, -grad / total


NEAR_ONE = 1e-6


def _at_the_limit(model: BGNBDModel, value: Callable[[BGNBDModel], FloatArray]) -> FloatArray:
    """At a = 1 the expectations are 0/0 (the factor 1/(a − 1) meets a bracket that
    vanishes); they are smooth in a, so the limit is the mean of both sides, 1e-5 away
    (error of order 1e-10)."""
    below = value(replace(model, a=1.0 - 1e-5))
    above = value(replace(model, a=1.0 + 1e-5))
    return (below + above) / 2


def _broadcast(frequency: object, recency: object, T: object) -> tuple[FloatArray, ...]:
    return tuple(np.asarray(v, dtype=np.float64) for v in (frequency, recency, T))


def _scaled_hyp2f1(a: object, b: object, c: object, z: object, log_scale: object) -> FloatArray:
    """2F1(a, b; c; z) · exp(log_scale) for 0 <= z < 1: directly where the series is finite
    (it may be negative: with a + b < 1 the third parameter c is below 0), else through
    Euler's transformation 2F1(a, b; c; z) = (1 - z)^(c-a-b) 2F1(c-a, c-b; c; z) with the
    power taken in logs, where the direct series overflows."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = hyp2f1(a, b, c, z)
        scaled = direct * np.exp(log_scale)
        power = np.subtract(np.subtract(c, a), b) * np.log1p(-np.asarray(z))
        euler = hyp2f1(np.subtract(c, a), np.subtract(c, b), c, z) * np.exp(power + log_scale)
    return np.where(np.isfinite(direct), scaled, euler)
