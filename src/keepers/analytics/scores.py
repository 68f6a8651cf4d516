"""The analytics models behind the scored rule fields (`keepers.engine.scores`):
`churn_risk` from the churn-risk report's classifier, `persona` and `persona_name` from the
personas report — as of a midnight, with the reports' default options."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from keepers.analytics import churn_model, personas
from keepers.analytics.base import Context
from keepers.domain.definitions import Definitions
from keepers.engine.scores import Scorer, register
from keepers.store.database import Tx


def churn_scores(tx: Tx, definitions: Definitions, at: datetime) -> pa.Table:
    """Every customer active in the 90 days before `at`, with the report's risk."""
    s = churn_model.fit(Context(tx, definitions, at, current=False))
    return pa.table(
        {
            "customer_id": pa.array(s.now.customer_ids, pa.int64()),
            "churn_risk": pa.array(s.risk, pa.float64()),
        }
    )


def persona_scores(tx: Tx, definitions: Definitions, at: datetime) -> pa.Table:
    """Every customer with an order before `at`, with the report's persona and its name."""
    ctx = Context(tx, definitions, at, current=False)
    fitted = personas.fit(ctx)
    names = {p["persona"]: p["name"] for p in personas.describe(ctx, fitted)["personas"]}
    return pa.table(
        {
            "customer_id": pa.array(fitted.customer_ids, pa.int64()),
            "persona": pa.array(fitted.persona, pa.int64()),
            "persona_name": pa.array([names[int(p)] for p in fitted.persona], pa.string()),
        }
    )


def register_all() -> None:
    """Make these models the source of the scored rule fields (idempotent)."""
    register(Scorer("churn", ("churn_risk",), churn_scores))
    register(Scorer("persona", ("persona", "persona_name"), persona_scores))
