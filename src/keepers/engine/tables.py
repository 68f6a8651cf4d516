"""Store tables the engine's queries read, as Ibis sees them (one definition each)."""

from __future__ import annotations

import ibis

TS = "timestamp('UTC')"
ORDERS = ibis.table(
    {
        "customer_id": "int64",
        "ordered_at": TS,
        "revenue": "float64",
        "total": "float64",
    },
    name="orders",
)
