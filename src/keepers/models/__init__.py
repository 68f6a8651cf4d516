"""Statistical models of customer behaviour over NumPy arrays: no database, no I/O.

Buy-till-you-die models and customer lifetime value, implemented on NumPy/SciPy with
analytic gradients (the formulas and papers are in each module's docstring):

- `summary`: transaction log -> per-customer frequency, recency, T, monetary value;
- `bgnbd`: BG/NBD (Fader, Hardie & Lee 2005), `fit_bgnbd` -> `ModelFit[BGNBDModel]`;
- `pareto_nbd`: Pareto/NBD (Schmittlein, Morrison & Colombo 1987; Fader & Hardie 2005),
  `fit_pareto_nbd` -> `ModelFit[ParetoNBDModel]`;
- `gamma_gamma`: Gamma-Gamma spend (Fader, Hardie & Lee 2005), `fit_gamma_gamma` ->
  `GammaGammaFit`;
- `clv`: discounted CLV over a horizon of months.

Small data: every fit needs at least `MIN_CUSTOMERS` (10) customers and
`MIN_REPEAT_BUYERS` (5) repeat buyers, else `keepers.errors.InvalidInput` says so; a fit
without a usable optimum raises `ModelDidNotConverge`.
"""

from keepers.models._fitting import (
    MIN_CUSTOMERS,
    MIN_REPEAT_BUYERS,
    ModelDidNotConverge,
    ModelFit,
)
from keepers.models.bgnbd import BGNBDModel, fit_bgnbd
from keepers.models.clv import customer_lifetime_value
from keepers.models.gamma_gamma import GammaGammaFit, GammaGammaModel, fit_gamma_gamma
from keepers.models.pareto_nbd import ParetoNBDModel, fit_pareto_nbd
from keepers.models.summary import RFMSummary, summary_from_transactions

__all__ = [
    "MIN_CUSTOMERS",
    "MIN_REPEAT_BUYERS",
    "BGNBDModel",
    "GammaGammaFit",
    "GammaGammaModel",
    "ModelDidNotConverge",
    "ModelFit",
    "ParetoNBDModel",
    "RFMSummary",
    "customer_lifetime_value",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "fit_pareto_nbd",
    "summary_from_transactions",
]
