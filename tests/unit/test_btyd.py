"""The BTYD models in `keepers.models` against the literature and against `lifetimes`.

- CDNOW (the 1/10 sample, 39-week calibration): our fits must reproduce the published
  maximum-likelihood estimates within 1 %.
- `lifetimes` is the oracle for the summary and for predictions with the same parameters.
- The analytic gradients are checked against central finite differences; Pareto/NBD's
  quadrature likelihood against the closed 2F1 form.
- Small data and degenerate data give the documented errors.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepers.errors import InvalidInput
from keepers.models import (
    MIN_CUSTOMERS,
    MIN_REPEAT_BUYERS,
    BGNBDModel,
    GammaGammaModel,
    ModelDidNotConverge,
    ParetoNBDModel,
    bgnbd,
    customer_lifetime_value,
    fit_bgnbd,
    fit_gamma_gamma,
    fit_pareto_nbd,
    gamma_gamma,
    pareto_nbd,
    summary_from_transactions,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ParetoNBDFitter
    from lifetimes.utils import calibration_and_holdout_data, summary_data_from_transaction_data

CDNOW = Path(__file__).parents[3] / "shared" / "data" / "cdnow_sample.txt"
CALIBRATION_END = "1997-09-30"

PUBLISHED = {
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "pareto_nbd": {"r": 0.55, "alpha": 10.58, "s": 0.61, "beta": 11.67},
    "gamma_gamma": {"p": 6.25, "q": 3.74, "v": 15.44},
}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    frame = pd.read_csv(
        CDNOW,
        sep=r"\s+",
        header=None,
        names=["master", "customer", "date", "cds", "amount"],
        dtype={"date": str},
    )
    frame["date"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


@pytest.fixture(scope="module")
def cdnow(transactions):
    return summary_from_transactions(
        transactions["customer"].to_numpy(),
        transactions["date"].to_numpy(),
        transactions["amount"].to_numpy(),
        CALIBRATION_END,
    )


@pytest.fixture(scope="module")
def fits(cdnow):
    return {
        "bgnbd": fit_bgnbd(cdnow.frequency, cdnow.recency, cdnow.T),
        "pareto_nbd": fit_pareto_nbd(cdnow.frequency, cdnow.recency, cdnow.T),
        "gamma_gamma": fit_gamma_gamma(cdnow.frequency, cdnow.monetary_value),
    }


def lifetimes_with(fitter, params: dict[str, float]):
    """A lifetimes fitter carrying our parameters (no fit: the same parameters on both sides)."""
    model = fitter()
    model.params_ = pd.Series(params)
    if hasattr(model, "conditional_expected_number_of_purchases_up_to_time"):
        model.predict = model.conditional_expected_number_of_purchases_up_to_time
    return model


def central_gradient(func, point, rel_step=1e-6):
    point = np.asarray(point, dtype=np.float64)
    grad = np.empty_like(point)
    for i in range(len(point)):
        h = rel_step * point[i]
        up, down = point.copy(), point.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (func(up) - func(down)) / (2 * h)
    return grad


# --- summary ----------------------------------------------------------------------------------


def test_summary_matches_lifetimes_on_cdnow(transactions, cdnow):
    expected = summary_data_from_transaction_data(
        transactions,
        "customer",
        "date",
        monetary_value_col="amount",
        observation_period_end=CALIBRATION_END,
        freq="D",
        freq_multiplier=7,
    )
    assert len(cdnow) == 2357 and cdnow.repeat_buyers == 946
    np.testing.assert_array_equal(cdnow.customer_id, expected.index.to_numpy())
    for column in ("frequency", "recency", "T"):
        np.testing.assert_array_equal(getattr(cdnow, column), expected[column].to_numpy())
    np.testing.assert_allclose(
        cdnow.monetary_value, expected["monetary_value"].to_numpy(), rtol=1e-12
    )


def test_holdout_counts_match_lifetimes(transactions):
    ours = summary_from_transactions(
        transactions["customer"].to_numpy(),
        transactions["date"].to_numpy(),
        transactions["amount"].to_numpy(),
        CALIBRATION_END,
        observation_end="1998-06-30",
    )
    expected = calibration_and_holdout_data(
        transactions,
        "customer",
        "date",
        calibration_period_end=CALIBRATION_END,
        observation_period_end="1998-06-30",
        freq="D",
        freq_multiplier=7,
        monetary_value_col="amount",
    )
    np.testing.assert_array_equal(ours.frequency_holdout, expected["frequency_holdout"])
    assert ours.duration_holdout == expected["duration_holdout"].iloc[0] == 39.0
    # holdout spend is the mean per purchase *day* (lifetimes averages raw rows instead)
    later = transactions[transactions["date"] > CALIBRATION_END]
    daily = later.groupby(["customer", "date"])["amount"].sum().groupby("customer").mean()
    mine = pd.Series(ours.monetary_value_holdout, index=ours.customer_id)
    np.testing.assert_allclose(mine[daily.index], daily, rtol=1e-12)
    assert (mine.drop(daily.index) == 0).all()


def test_summary_definitions_on_a_small_log():
    ids = ["a", "a", "a", "a", "b", "c", "c"]
    dates = [
        "2024-01-01",
        "2024-01-01",  # same day: merged, amounts summed
        "2024-01-08",
        "2024-02-01",  # after calibration_end: ignored
        "2024-01-15",
        "2024-01-31",  # c's first purchase is after calibration_end: c is not a customer yet
        "2024-01-20",
    ]
    amounts = [10.0, 5.0, 20.0, 99.0, 7.0, 1.0, 3.0]
    summary = summary_from_transactions(ids, dates, amounts, "2024-01-29", time_unit="days")
    assert list(summary.customer_id) == ["a", "b", "c"]
    np.testing.assert_array_equal(summary.frequency, [1, 0, 0])
    np.testing.assert_array_equal(summary.recency, [7, 0, 0])
    np.testing.assert_array_equal(summary.T, [28, 14, 9])
    np.testing.assert_array_equal(summary.monetary_value, [20, 0, 0])

    later = summary_from_transactions(ids, dates, amounts, "2024-01-19", time_unit="weeks")
    assert list(later.customer_id) == ["a", "b"]
    np.testing.assert_allclose(later.T, [18 / 7, 4 / 7])
    months = summary_from_transactions(ids, dates, None, "2024-01-29", time_unit="months")
    assert months.monetary_value is None
    np.testing.assert_allclose(months.T[0], 28 / (365.25 / 12))

    compact = [d.replace("-", "") for d in dates]  # YYYYMMDD, as in the CDNOW file
    same = summary_from_transactions(ids, compact, amounts, "20240129", time_unit="days")
    np.testing.assert_array_equal(same.T, summary.T)
    stamps = np.array(dates, dtype="datetime64[s]") + np.timedelta64(23, "h")
    same = summary_from_transactions(ids, stamps, amounts, "2024-01-29", time_unit="days")
    np.testing.assert_array_equal(same.recency, summary.recency)
    with pytest.raises(InvalidInput, match="dates are numbers"):
        summary_from_transactions(ids, [int(d) for d in compact], amounts, "2024-01-29")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_unit": "fortnights"}, "unknown time unit 'fortnights'"),
        ({"calibration_end": "2024-02-30"}, "calibration_end is not a date"),
        ({"calibration_end": "2023-12-31"}, "no purchases on or before calibration_end"),
        ({"observation_end": "2024-01-01"}, "observation_end (2024-01-01) must be after"),
    ],
)
def test_summary_rejects_bad_arguments(kwargs, message):
    args = {"calibration_end": "2024-01-10", **kwargs}
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        summary_from_transactions(["a", "b"], ["2024-01-01", "2024-01-05"], [1.0, 2.0], **args)


# --- the published estimates ------------------------------------------------------------------


@pytest.mark.parametrize("model", ["bgnbd", "pareto_nbd", "gamma_gamma"])
def test_cdnow_fits_reproduce_the_published_estimates(fits, model):
    fitted = fits[model].model.as_dict()
    for name, published in PUBLISHED[model].items():
        assert fitted[name] == pytest.approx(published, rel=0.01), name


def test_cdnow_fit_figures(fits):
    bg, pn, gg = fits["bgnbd"], fits["pareto_nbd"], fits["gamma_gamma"]
    assert bg.log_likelihood == pytest.approx(-9582.4, abs=0.1)  # the paper's figure
    assert pn.log_likelihood == pytest.approx(-9595.0, abs=0.1)
    assert bg.customers == pn.customers == 2357 and gg.customers == 946
    assert bg.iterations > 0 and pn.iterations > 0 and gg.iterations > 0
    # lifetimes' documented CDNOW estimates, to 4 significant figures
    assert bg.model.as_dict() == pytest.approx(
        {"r": 0.2426, "alpha": 4.4135, "a": 0.7929, "b": 2.4259}, rel=2e-4
    )
    assert pn.model.as_dict() == pytest.approx(
        {"r": 0.5533, "alpha": 10.5777, "s": 0.6062, "beta": 11.6684}, rel=2e-4
    )
    assert gg.model.as_dict() == pytest.approx({"p": 6.2488, "q": 3.7446, "v": 15.4477}, rel=1e-3)
    assert gg.frequency_monetary_correlation == pytest.approx(0.1139, abs=1e-4)
    assert gg.correlation_warning is False


def test_our_optimum_is_at_least_as_good_as_lifetimes(cdnow, fits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = BetaGeoFitter().fit(cdnow.frequency, cdnow.recency, cdnow.T)
    at_theirs = BGNBDModel(**theirs.params_.to_dict()).log_likelihood(
        cdnow.frequency, cdnow.recency, cdnow.T
    )
    assert fits["bgnbd"].log_likelihood >= at_theirs.sum() - 1e-6
    assert fits["bgnbd"].model.as_dict() == pytest.approx(theirs.params_.to_dict(), rel=1e-5)


def test_weights_are_the_same_as_repeated_rows(cdnow):
    rows = np.stack([cdnow.frequency, cdnow.recency, cdnow.T], axis=1)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    weighted = fit_bgnbd(*unique.T, weights=counts)
    plain = fit_bgnbd(cdnow.frequency, cdnow.recency, cdnow.T)
    assert weighted.model.as_dict() == pytest.approx(plain.model.as_dict(), rel=1e-6)
    assert weighted.log_likelihood == pytest.approx(plain.log_likelihood, rel=1e-10)
    assert weighted.customers == 2357


# --- predictions against lifetimes with the same parameters -----------------------------------


def test_bgnbd_predictions_match_lifetimes(cdnow, fits):
    ours = fits["bgnbd"].model
    theirs = lifetimes_with(BetaGeoFitter, ours.as_dict())
    x, t_x, age = cdnow.frequency, cdnow.recency, cdnow.T
    for t in (1.0, 10.0, 39.0, 52.0):
        np.testing.assert_allclose(
            ours.conditional_expected_purchases(t, x, t_x, age),
            theirs.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, age),
            rtol=1e-10,
        )
    np.testing.assert_allclose(
        ours.probability_alive(x, t_x, age),
        theirs.conditional_probability_alive(x, t_x, age),
        rtol=1e-12,
    )
    times = np.array([1.0, 10.0, 39.0, 78.0])
    np.testing.assert_allclose(
        ours.expected_purchases(times),
        theirs.expected_number_of_purchases_up_to_time(times),
        rtol=1e-12,
    )


def test_pareto_nbd_predictions_match_lifetimes(cdnow, fits):
    ours = fits["pareto_nbd"].model
    theirs = lifetimes_with(ParetoNBDFitter, ours.as_dict())
    x, t_x, age = cdnow.frequency, cdnow.recency, cdnow.T
    for t in (1.0, 39.0):
        np.testing.assert_allclose(
            ours.conditional_expected_purchases(t, x, t_x, age),
            theirs.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, age),
            rtol=1e-8,
        )
    np.testing.assert_allclose(
        ours.probability_alive(x, t_x, age),
        theirs.conditional_probability_alive(x, t_x, age),
        rtol=1e-8,
    )
    times = np.array([1.0, 39.0])
    np.testing.assert_allclose(
        ours.expected_purchases(times),
        theirs.expected_number_of_purchases_up_to_time(times),
        rtol=1e-12,
    )


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # inside lifetimes, at t = 0
def test_gamma_gamma_spend_and_clv_match_lifetimes(cdnow, fits):
    spend_model = fits["gamma_gamma"].model
    theirs = lifetimes_with(GammaGammaFitter, spend_model.as_dict())
    x, t_x, age, m = cdnow.frequency, cdnow.recency, cdnow.T, cdnow.monetary_value
    spend = spend_model.conditional_expected_spend(x, m)
    np.testing.assert_allclose(spend, theirs.conditional_expected_average_profit(x, m), rtol=1e-12)
    assert spend_model.population_mean_spend == pytest.approx(35.17, abs=0.01)
    index = pd.RangeIndex(len(x))
    for model, fitter in (
        (fits["bgnbd"].model, BetaGeoFitter),
        (fits["pareto_nbd"].model, ParetoNBDFitter),
    ):
        ours = customer_lifetime_value(
            model, x, t_x, age, spend, months=12, monthly_discount_rate=0.01, time_unit="weeks"
        )
        expected = theirs.customer_lifetime_value(
            lifetimes_with(fitter, model.as_dict()),
            pd.Series(x, index=index),
            pd.Series(t_x, index=index),
            pd.Series(age, index=index),
            pd.Series(m, index=index),
            time=12,
            discount_rate=0.01,
            freq="W",
        )
        np.testing.assert_allclose(ours, expected.to_numpy(), rtol=1e-8)


def test_undiscounted_clv_is_expected_purchases_times_spend(cdnow, fits):
    model = fits["bgnbd"].model
    x, t_x, age = cdnow.frequency, cdnow.recency, cdnow.T
    clv = customer_lifetime_value(model, x, t_x, age, 10.0, months=6, monthly_discount_rate=0.0)
    expected = model.conditional_expected_purchases(6 * 4.345, x, t_x, age) * 10.0
    np.testing.assert_allclose(clv, expected, rtol=1e-10)
    with pytest.raises(InvalidInput, match="unknown time unit"):
        customer_lifetime_value(model, x, t_x, age, 1.0, time_unit="years")


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "point", [(0.243, 4.414, 0.793, 2.426), (0.5, 3.0, 1.2, 4.0), (2.0, 0.5, 0.3, 0.9)]
)
def test_bgnbd_gradient_matches_finite_differences(cdnow, point):
    x, t_x, age = cdnow.frequency, cdnow.recency, cdnow.T
    analytic = bgnbd.log_likelihood_gradient(BGNBDModel(*point), x, t_x, age)
    numeric = central_gradient(lambda p: BGNBDModel(*p).log_likelihood(x, t_x, age).sum(), point)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "point",
    [
        (0.553, 10.58, 0.606, 11.67),  # alpha < beta
        (0.55, 15.0, 0.6, 5.0),  # alpha > beta
        (2.0, 1.0, 3.0, 0.5),
        (0.8, 6.0, 1.5, 6.0),  # alpha = beta
    ],
)
def test_pareto_nbd_gradient_matches_finite_differences(cdnow, point):
    x, t_x, age = cdnow.frequency, cdnow.recency, cdnow.T
    analytic = pareto_nbd.log_likelihood_gradient(ParetoNBDModel(*point), x, t_x, age)
    exact = central_gradient(lambda p: ParetoNBDModel(*p).log_likelihood(x, t_x, age).sum(), point)
    np.testing.assert_allclose(analytic, exact, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("point", [(6.25, 3.74, 15.44), (2.0, 5.0, 30.0), (0.5, 1.5, 3.0)])
def test_gamma_gamma_gradient_matches_finite_differences(cdnow, point):
    buyers = cdnow.frequency > 0
    x, m = cdnow.frequency[buyers], cdnow.monetary_value[buyers]
    analytic = gamma_gamma.log_likelihood_gradient(GammaGammaModel(*point), x, m)
    numeric = central_gradient(lambda p: GammaGammaModel(*p).log_likelihood(x, m).sum(), point)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(
    "point",
    [
        (0.553, 10.58, 0.606, 11.67),
        (0.55, 15.0, 0.6, 5.0),
        (0.55, 5.0, 0.6, 25.0),
        (2.0, 1.0, 3.0, 0.5),
        (0.1, 0.2, 0.1, 100.0),
        (0.5, 100.0, 0.5, 0.3),
        (5.0, 0.5, 0.05, 1000.0),
        (1.0, 1.0, 1.0, 1.0),
    ],
)
def test_pareto_nbd_quadrature_agrees_with_the_closed_form(cdnow, point):
    model = ParetoNBDModel(*point)
    x, t_x, age = cdnow.frequency, cdnow.recency, cdnow.T
    closed = model.log_likelihood(x, t_x, age)
    quadrature = pareto_nbd.log_likelihood_quadrature(model, x, t_x, age)
    np.testing.assert_allclose(quadrature, closed, rtol=0, atol=1e-7)


# --- small and degenerate data ----------------------------------------------------------------


def test_too_few_customers_is_a_clear_error():
    x, t_x, age = np.array([1.0, 2, 0]), np.array([3.0, 5, 0]), np.array([10.0, 10, 10])
    for fit, name in ((fit_bgnbd, "BG/NBD"), (fit_pareto_nbd, "Pareto/NBD")):
        with pytest.raises(InvalidInput) as raised:
            fit(x, t_x, age)
        assert raised.value.message == (
            f"{name} needs at least {MIN_CUSTOMERS} customers to fit; this data has 3"
        )


def test_too_few_repeat_buyers_is_a_clear_error():
    x = np.array([1.0, 2.0] + [0.0] * 30)
    t_x = np.array([3.0, 5.0] + [0.0] * 30)
    age = np.full(32, 10.0)
    for fit, name in ((fit_bgnbd, "BG/NBD"), (fit_pareto_nbd, "Pareto/NBD")):
        with pytest.raises(InvalidInput) as raised:
            fit(x, t_x, age)
        assert raised.value.message == (
            f"{name} needs at least {MIN_REPEAT_BUYERS} repeat buyers (customers with "
            "frequency > 0) to fit; this data has 2"
        )
    with pytest.raises(InvalidInput, match="Gamma-Gamma needs at least 5 repeat buyers"):
        fit_gamma_gamma(x, np.where(x > 0, 10.0, 0.0))
    with pytest.raises(InvalidInput, match="positive average spend for every repeat buyer; 1 "):
        fit_gamma_gamma(np.ones(8), [5.0, 0.0, 3, 4, 5, 6, 7, 8])


@pytest.mark.parametrize(
    ("x", "t_x", "age", "message"),
    [
        ([1, 2], [5, 11], [10, 10], "recency must be between 0 and T"),
        ([-1, 2], [0, 1], [10, 10], "non-negative whole number"),
        ([1.5, 2], [1, 1], [10, 10], "non-negative whole number"),
        ([0, 2], [3, 1], [10, 10], "recency must be 0 for customers without repeat"),
        ([1, 2], [np.nan, 1], [10, 10], "recency has missing or infinite values"),
        ([1, 2], [1, 1], [10], "must have the same length"),
    ],
)
def test_invalid_summaries_are_rejected(x, t_x, age, message):
    with pytest.raises(InvalidInput, match=message):
        fit_bgnbd(x, t_x, age)


def test_data_without_drop_out_does_not_pretend_to_converge():
    rng = np.random.default_rng(0)
    age = rng.integers(10, 40, 200).astype(float)
    x = rng.poisson(3, 200).astype(float)
    t_x = np.where(x > 0, age, 0.0)  # everyone bought on the last day: nobody ever left
    for fit in (fit_bgnbd, fit_pareto_nbd):
        with pytest.raises(ModelDidNotConverge, match="no sign of customers dropping out"):
            fit(x, t_x, age)
    with pytest.raises(ModelDidNotConverge, match="every customer spending about the same"):
        fit_gamma_gamma(np.full(20, 2.0), np.full(20, 10.0))


# --- recovering known parameters ----------------------------------------------------------------


def simulate_bgnbd(rng, n, r, alpha, a, b, max_age=52.0):
    """(x, t_x, T) from the BG/NBD process: x = min(N(T), K), the x-th of N uniform times."""
    age = rng.uniform(1, max_age, n)
    lam = rng.gamma(r, 1 / alpha, n)
    would_buy = rng.poisson(lam * age)
    x = np.minimum(would_buy, rng.geometric(rng.beta(a, b, n)))
    t_x = np.zeros(n)
    buyers = x > 0
    t_x[buyers] = age[buyers] * rng.beta(x[buyers], would_buy[buyers] - x[buyers] + 1)
    return x.astype(float), t_x, age


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    r=st.floats(0.3, 2.0),
    alpha=st.floats(2.0, 10.0),
    a=st.floats(0.5, 1.5),
    b=st.floats(1.5, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_fitting_simulated_data_recovers_the_parameters(r, alpha, a, b, seed):
    truth = BGNBDModel(r, alpha, a, b)
    x, t_x, age = simulate_bgnbd(np.random.default_rng(seed), 20_000, r, alpha, a, b)
    fitted = fit_bgnbd(x, t_x, age).model
    # the purchase process is well identified; the drop-out one less so at this size
    # (over 80 random draws like these the worst errors were 2 %, 6 %, 4 % and 5 %)
    assert fitted.r / fitted.alpha == pytest.approx(r / alpha, rel=0.1)
    assert fitted.r == pytest.approx(r, rel=0.2)
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(a / (a + b), rel=0.2)
    # what the model is for: expected purchases of this cohort over the next year
    assert np.mean(fitted.conditional_expected_purchases(52, x, t_x, age)) == pytest.approx(
        np.mean(truth.conditional_expected_purchases(52, x, t_x, age)), rel=0.1
    )


@pytest.mark.parametrize(("module", "fit"), [(bgnbd, fit_bgnbd), (pareto_nbd, fit_pareto_nbd)])
def test_the_large_data_path_finds_the_same_optimum(monkeypatch, module, fit):
    """Above WARM_START_ROWS distinct rows a sample's optimum and curvature start a whitened
    search; it must land where the plain search from the default start does. (The threshold
    is lowered here so that the test stays small.)"""
    x, t_x, age = simulate_bgnbd(np.random.default_rng(7), 8_000, 0.243, 4.414, 0.793, 2.426)
    monkeypatch.setattr(module, "WARM_START_ROWS", 2_000)
    warm = fit(x, t_x, age)
    monkeypatch.setattr(module, "WARM_START_ROWS", 10**9)
    plain = fit(x, t_x, age)
    assert warm.model.as_dict() == pytest.approx(plain.model.as_dict(), rel=1e-5)
    assert warm.log_likelihood == pytest.approx(plain.log_likelihood, rel=1e-12, abs=1e-6)
    assert warm.iterations < plain.iterations


@pytest.mark.parametrize(
    ("a", "b"),
    [(0.3, 0.4), (1.0, 2.0), (0.793, 2.426), (0.6, 0.45)],  # a + b < 1, a = 1, CDNOW, both
)
def test_expected_purchases_equal_the_integral_over_the_dropout_mixture(a, b):
    """E[X(t)] = ∫ (1 − (α/(α + p·t))^r) / p · Beta(p; a, b) dp (Fader, Hardie & Lee 2005,
    eq. 7 averaged over the gamma purchase rates in closed form, then over p by quadrature):
    an oracle independent of the hypergeometric formula, defined where it has 0/0 (a = 1)
    and a negative third parameter (a + b < 1)."""
    from scipy import integrate, stats

    r, alpha = 0.5, 4.0
    model = BGNBDModel(r, alpha, a, b)
    for t in (1.0, 39.0, 200.0):

        def integrand(p: float, t: float = t) -> float:
            return -np.expm1(r * np.log(alpha / (alpha + p * t))) / p * stats.beta.pdf(p, a, b)

        want = integrate.quad(integrand, 0, 1, limit=200, epsabs=1e-13, epsrel=1e-11)[0]
        got = float(model.expected_purchases(t))
        assert got == pytest.approx(want, rel=1e-7), (t, got, want)
        # a customer not yet seen again right after the first order: the same expectation
        fresh = model.conditional_expected_purchases(t, 0.0, 0.0, 0.0)
        assert float(fresh) == pytest.approx(want, rel=1e-7)
