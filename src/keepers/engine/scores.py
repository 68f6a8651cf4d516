"""Rule fields scored once per UTC day by a model over everyone: `churn_risk` (the churn-risk
classifier) and `persona` / `persona_name` (the personas clustering).

Unlike `p_alive`, whose fitted parameters turn into plain SQL over a customer's own traits,
these scores need features no stored trait holds (activity in the last 7, 30, 90 days,
category mix, …) and a scikit-learn model. So each is computed as its report computes it,
as of midnight UTC of the evaluated day — `churn_risk` for a run on 2026-11-24 is the risk
`keepers report churn-risk --as-of 2026-11-24T00:00:00Z` gives — and the run joins the
scores by customer id. The analytics package owns the models and registers a `Scorer` for
its fields (the engine sits below it); a score is computed again only when the events or
orders before that midnight change (a fingerprint of them, one scan), so an incremental
run on the same day reuses it.

A customer the model does not score (no activity in the last 90 days for `churn_risk`,
no order for `persona`) has no value: a rule comparing it is false for them. When the
model cannot be fitted (too little history) the field is missing for everyone, and
`keepers explain` says why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from keepers.domain.definitions import Definitions
from keepers.errors import InvalidInput, KeepersError
from keepers.store.database import Tx

SCORED_FIELDS = {"churn_risk": "number", "persona": "number", "persona_name": "string"}


@dataclass(frozen=True)
class Scorer:
    """Computes `fields` for every scored customer as of a moment: an Arrow table of
    `customer_id` plus those fields, or InvalidInput saying why there is no model."""

    name: str  # the staged table's suffix
    fields: tuple[str, ...]
    score: Callable[[Tx, Definitions, datetime], pa.Table]

    @property
    def table(self) -> str:
        return f"_kp_scores_{self.name}"


_SCORERS: dict[str, Scorer] = {}
_CACHE: dict[tuple, pa.Table | str] = {}
_CACHE_SIZE = 8


def register(scorer: Scorer) -> None:
    """Make `scorer` the source of its fields (the analytics package calls this)."""
    for name in scorer.fields:
        if name not in SCORED_FIELDS:
            raise ValueError(f"{name} is not a scored field")
        _SCORERS[name] = scorer


def scorers_for(wanted: frozenset[str] | set[str]) -> list[Scorer]:
    """The scorers behind the wanted scored fields, each once."""
    found: dict[str, Scorer] = {}
    for name in sorted(wanted & SCORED_FIELDS.keys()):
        if name not in _SCORERS:
            raise KeepersError(
                f"no model is registered for '{name}': import keepers.analytics.scores first"
            )
        found[_SCORERS[name].name] = _SCORERS[name]
    return list(found.values())


def day_scores(
    tx: Tx, definitions: Definitions, scorer: Scorer, cutoff: datetime
) -> pa.Table | str:
    """The scores as of `cutoff` (midnight UTC), or why there are none; cached while the
    events and orders before `cutoff` stay the same."""
    key = (scorer.name, cutoff, definitions.model_dump_json(), _fingerprint(tx, cutoff))
    if key not in _CACHE:
        try:
            _CACHE[key] = scorer.score(tx, definitions, cutoff)
        except InvalidInput as exc:
            _CACHE[key] = str(exc)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
    return _CACHE[key]


def ready_fields(definitions: Definitions, cutoff: datetime) -> set[str]:
    """The scored fields whose scores for `cutoff` this process has computed (perhaps
    before the latest late events: using them recomputes only if the data changed)."""
    made = {(key[0], key[1], key[2]) for key in _CACHE}
    rules = definitions.model_dump_json()
    return {name for name, scorer in _SCORERS.items() if (scorer.name, cutoff, rules) in made}


def warm(tx: Tx, definitions: Definitions, cutoff: datetime) -> list[str]:
    """Compute (or keep) every scorer's scores for `cutoff`; the names of the scorers."""
    for scorer in {s.name: s for s in _SCORERS.values()}.values():
        day_scores(tx, definitions, scorer, cutoff)
    return sorted({s.name for s in _SCORERS.values()})


def _fingerprint(tx: Tx, cutoff: datetime) -> str:
    """What the scores read, summarised: count, ids and times of the events and orders
    before `cutoff` (late events, imports and erasures all change it)."""
    rows = tx.execute(
        "SELECT * FROM (SELECT count(*), sum(customer_id),"
        " sum(CAST(extract(epoch FROM timestamp) * 1000000 AS BIGINT))"
        " FROM events WHERE timestamp < ?) AS e,"
        " (SELECT count(*), sum(customer_id) FROM orders WHERE ordered_at < ?) AS o",
        [cutoff] * 2,
    )
    return hashlib.sha1(repr(tuple(str(v) for v in rows[0])).encode()).hexdigest()
