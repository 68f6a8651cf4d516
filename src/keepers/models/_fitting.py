"""What the BTYD fitters share: input checks, duplicate compression, the optimiser, the result.

Every model here is fitted by maximum likelihood over the logarithms of its (positive)
parameters with L-BFGS-B and an analytic gradient. The objective is the *mean* negative
log-likelihood per customer, so the tolerances mean the same thing at 2,000 and 2,000,000
customers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from scipy.optimize import OptimizeResult, minimize

from keepers.errors import InvalidInput, KeepersError

M = TypeVar("M")

MIN_CUSTOMERS = 10
"""Fewer customers than this and no model here is fitted (InvalidInput)."""

MIN_REPEAT_BUYERS = 5
"""Fewer customers with frequency > 0 than this and no model here is fitted (InvalidInput):
with almost no repeat purchases nothing identifies the purchase or the drop-out process."""

LOG_BOUND = np.log(1e10)
"""Parameters are searched in [1e-10, 1e10] (in log space)."""

SHAPE_RANGE = (1e-5, 1e5)
"""A fitted shape parameter (r, a, b, s, p, q) outside this range means the likelihood kept
improving along a ridge towards a degenerate model (no drop-out, identical customers, ...):
the data do not identify it, and the fit is reported as not converged."""

FloatArray = np.ndarray
Objective = Callable[[FloatArray], tuple[float, FloatArray]]


class ModelDidNotConverge(KeepersError):
    """The optimiser stopped without an interior maximum (CLI exit 1 with this message)."""

    code = "model_did_not_converge"


@dataclass(frozen=True)
class ModelFit(Generic[M]):
    """A fitted model with the figures of its fit.

    `log_likelihood` is the total over all customers (not the mean), `iterations` the
    L-BFGS-B iterations of the final run, `customers` how many customers the fit used.
    """

    model: M
    log_likelihood: float
    iterations: int
    customers: int


def dot(a: FloatArray, b: FloatArray) -> float:
    """sum(a * b) without BLAS: on a busy two-core machine OpenBLAS's threads made each
    call of the fits' objectives 100x slower than this single-threaded loop."""
    return float(np.einsum("i,i->", a, b))


def as_float_array(values: object, name: str) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be numbers") from None
    if array.ndim != 1:
        array = array.reshape(-1)
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"{name} has missing or infinite values")
    return array


def as_weights(weights: object, n: int) -> FloatArray:
    w = as_float_array(weights, "weights")
    if len(w) != n:
        raise InvalidInput(f"weights must have one value per customer; got {len(w)} for {n}")
    if np.any(w < 0):
        raise InvalidInput("weights must not be negative")
    return w


def check_rft(frequency: object, recency: object, T: object) -> tuple[FloatArray, ...]:
    """Validate the (frequency, recency, T) summary the way the literature defines it."""
    x = as_float_array(frequency, "frequency")
    t_x = as_float_array(recency, "recency")
    age = as_float_array(T, "T")
    if not (len(x) == len(t_x) == len(age)):
        raise InvalidInput(
            f"frequency, recency and T must have the same length; got {len(x)}, {len(t_x)}, "
            f"{len(age)}"
        )
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise InvalidInput("frequency must be a non-negative whole number of repeat purchases")
    if np.any(t_x < 0) or np.any(t_x > age * (1 + 1e-12)):
        raise InvalidInput("recency must be between 0 and T for every customer")
    if np.any((x == 0) & (t_x != 0)):
        raise InvalidInput("recency must be 0 for customers without repeat purchases")
    return x, np.minimum(t_x, age), age


def require_enough(model: str, customers: int, repeat_buyers: int) -> None:
    if customers < MIN_CUSTOMERS:
        raise InvalidInput(
            f"{model} needs at least {MIN_CUSTOMERS} customers to fit; this data has {customers}"
        )
    if repeat_buyers < MIN_REPEAT_BUYERS:
        raise InvalidInput(
            f"{model} needs at least {MIN_REPEAT_BUYERS} repeat buyers (customers with "
            f"frequency > 0) to fit; this data has {repeat_buyers}"
        )


def compress_rows(
    *columns: FloatArray, weights: FloatArray | None = None
) -> tuple[list[FloatArray], FloatArray]:
    """Identical rows collapsed into one, with the number of customers (or summed weights)
    each stands for. Exact: rows are compared by their bytes, no rounding."""
    stacked = np.stack([np.asarray(c, dtype=np.float64) + 0.0 for c in columns], axis=1)
    keys = stacked.view(np.dtype((np.void, stacked.itemsize * stacked.shape[1]))).ravel()
    if weights is None:
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        summed = counts.astype(np.float64)
    else:
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        summed = np.bincount(inverse.ravel(), weights=weights)
    return [stacked[first, i] for i in range(len(columns))], summed


def sample_customers(w: FloatArray, size: int, seed: int = 0) -> np.ndarray:
    """Row indices of `size` customers drawn with replacement (by weight), from a fixed seed
    so that fits are reproducible."""
    rng = np.random.default_rng(seed)
    if np.all(w == 1):
        return rng.integers(0, len(w), size)
    return rng.choice(len(w), size, p=w / w.sum())


def maximise(
    model: str,
    names: tuple[str, ...],
    objective: Objective,
    start: FloatArray,
    *,
    shapes: tuple[str, ...],
    hint: str,
    curvature: FloatArray | None = None,
    max_iterations: int = 2000,
) -> tuple[FloatArray, float, int]:
    """Minimise `objective(log_params) -> (mean negative log-likelihood, gradient)` with
    L-BFGS-B from `start` (parameters, not logs).

    `curvature`, a Cholesky factor C of the Hessian near the optimum (see `hessian_factor`),
    lets the search run in whitened coordinates z (log_params = ln(start) + C^-T z), where
    the Hessian is close to the identity and L-BFGS-B needs only a few steps. Returns
    (params, mean negative log-likelihood, iterations). Raises ModelDidNotConverge when
    L-BFGS-B fails, a parameter runs to the edge of the search range, or a shape parameter
    (`shapes`) ends outside SHAPE_RANGE; `hint` says what that usually means."""
    x0 = np.clip(np.log(start), -LOG_BOUND + 1, LOG_BOUND - 1)
    result = None
    if curvature is not None:
        result = _whitened(objective, x0, curvature, max_iterations)
    for _ in range(3 if result is None else 0):
        # L-BFGS-B also reports success when a stalled line search barely reduced f; a
        # fresh start from where it stopped (new curvature memory) gets past that
        result = minimize(
            objective,
            x0 if result is None else result.x,
            jac=True,
            method="L-BFGS-B",
            bounds=[(-LOG_BOUND, LOG_BOUND)] * len(x0),
            options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-9, "maxcor": 20},
        )
        if _gradient_is_small(result) or not np.all(np.isfinite(result.x)):
            break
    if not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        raise ModelDidNotConverge(
            f"{model} did not converge: the likelihood became undefined (NaN) during the search"
        )
    params = np.exp(result.x)
    low, high = SHAPE_RANGE
    degenerate = [
        f"{name} = {value:.3g}"
        for name, value, log_value in zip(names, params, result.x, strict=True)
        if abs(log_value) >= LOG_BOUND - 1e-6 or (name in shapes and not low <= value <= high)
    ]
    if degenerate:
        raise ModelDidNotConverge(
            f"{model} did not converge to a usable optimum: {', '.join(degenerate)} ran off "
            f"towards a degenerate model, so the data do not identify it ({hint})"
        )
    if not _gradient_is_small(result):
        raise ModelDidNotConverge(
            f"{model} did not converge after {result.nit} iterations: {result.message}"
        )
    return params, float(result.fun), int(result.nit)


def warm_start(
    model: str,
    names: tuple[str, ...],
    sample_objective: Objective,
    start: FloatArray,
    *,
    shapes: tuple[str, ...],
    hint: str,
) -> tuple[FloatArray, FloatArray | None]:
    """The optimum of a sample's likelihood and its Hessian's Cholesky factor: a start and a
    whitening for the full fit (`maximise(..., curvature=)`). When the sample cannot be
    fitted, the full fit simply starts from `start`."""
    try:
        found, _, _ = maximise(model, names, sample_objective, start, shapes=shapes, hint=hint)
    except ModelDidNotConverge:
        return start, None
    return found, hessian_factor(sample_objective, np.log(found))


def hessian_factor(objective: Objective, log_params: FloatArray) -> FloatArray | None:
    """Lower Cholesky factor of the objective's Hessian at `log_params` (central differences
    of the analytic gradient), or None when it is not positive definite there."""
    n = len(log_params)
    step = 1e-4
    hessian = np.empty((n, n))
    for j in range(n):
        shift = np.zeros(n)
        shift[j] = step
        hessian[:, j] = (objective(log_params + shift)[1] - objective(log_params - shift)[1]) / (
            2 * step
        )
    try:
        return np.linalg.cholesky((hessian + hessian.T) / 2)
    except np.linalg.LinAlgError:
        return None


def _whitened(
    objective: Objective, x0: FloatArray, factor: FloatArray, max_iterations: int
) -> OptimizeResult | None:
    """L-BFGS-B over z with log_params = x0 + g C^-T z, g the whitened gradient's norm at
    x0: the Hessian in z is then about g^2 I, so L-BFGS-B's first unit-length step is the
    Newton step. It stops when the whitened gradient C^-1 grad is below 1e-8 (the mean
    log-likelihood is then within about 1e-16 of its maximum). None when that does not
    succeed: the caller then searches the plain coordinates."""
    to_log = np.linalg.inv(factor).T  # C^-T
    scale = float(np.linalg.norm(np.einsum("ji,j->i", to_log, objective(x0)[1])))
    if not np.isfinite(scale) or scale == 0:
        return None
    to_log = to_log * scale

    def in_z(z: FloatArray) -> tuple[float, FloatArray]:
        value, grad = objective(x0 + np.einsum("ij,j->i", to_log, z))
        return value, np.einsum("ji,j->i", to_log, grad)

    with np.errstate(all="ignore"):
        result = minimize(
            in_z,
            np.zeros(len(x0)),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-8 * scale},
        )
    x = x0 + np.einsum("ij,j->i", to_log, result.x)
    # success by "relative reduction of f" can also mean a stalled line search: check
    whitened_gradient = np.max(np.abs(result.jac)) / scale
    if whitened_gradient > 1e-6 or not np.all(np.isfinite(x)) or np.any(np.abs(x) > LOG_BOUND):
        return None
    result.x = x
    return result


def _gradient_is_small(result: object) -> bool:
    """Whether L-BFGS-B stopped at a maximum: the gradient of the mean log-likelihood in
    log-parameters below 1e-5. (It reports ABNORMAL when the line search cannot improve any
    more, which at the optimum only means the gradient is at rounding level; and success
    after a stalled line search that barely reduced f. The gradient tells them apart.)"""
    grad = np.asarray(getattr(result, "jac", np.array([np.inf])))
    return bool(np.max(np.abs(grad)) < 1e-5)
