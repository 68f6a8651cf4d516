"""Lead scores in the store: fit and decayed engagement for every customer in a few
statements, the explanation of one customer's points, and who is MQL or SQL.

The model (rules, half-life, thresholds) is data from `keepers.sales.lead_model`; it enters
the SQL as small staged tables, never as interpolated text, so a rule's trait name or value
cannot change a query. Per customer and rule the SQL yields one "part" (the points that rule
gave, and for engagement how many events); a customer's fit and engagement are the sums of
their parts, and `explain_lead` returns the same parts for one customer.

`lead_scores` keeps the last scoring of every customer who has (or had) points; `mql_at` and
`sql_at` are set by the first scoring that found the customer qualified and never moved
after, which is how "turned sales-qualified" is told apart from "is sales-qualified".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from keepers.sales.deals import TS
from keepers.sales.lead_model import LeadModel
from keepers.sales.sql import epoch_sql, number_sql
from keepers.store.database import Tx

MQL_EVENT = "Lead Marketing Qualified"
SQL_EVENT = "Lead Sales Qualified"
_TEMPS = ("_kl_parts", "_kl_totals")


def _stage_model(tx: Tx, model: LeadModel, as_of: datetime) -> None:
    fit = model.fit
    tx.stage(
        "stage_lead_fit",
        pa.table(
            {
                "rule_no": pa.array(range(len(fit)), pa.int64()),
                "source": pa.array([r.source for r in fit], pa.string()),
                "path": pa.array([r.trait for r in fit], pa.string()),
                "test": pa.array([r.test for r in fit], pa.string()),
                "lo": pa.array([r.range.min if r.range else None for r in fit], pa.float64()),
                "hi": pa.array([r.range.max if r.range else None for r in fit], pa.float64()),
                "points": pa.array([r.points for r in fit], pa.float64()),
            }
        ),
    )
    values = [(i, v) for i, r in enumerate(fit) for v in r.values()]
    tx.stage(
        "stage_lead_values",
        pa.table(
            {
                "rule_no": pa.array([i for i, _ in values], pa.int64()),
                "text_value": pa.array([_text(v) for _, v in values], pa.string()),
                "num_value": pa.array([_num(v) for _, v in values], pa.float64()),
            }
        ),
    )
    rules = model.engagement.rules
    tx.stage(
        "stage_lead_engagement",
        pa.table(
            {
                "rule_no": pa.array(range(len(rules)), pa.int64()),
                "event": pa.array([r.event for r in rules], pa.string()),
                "type": pa.array([r.type for r in rules], pa.string()),
                "points": pa.array([r.points for r in rules], pa.float64()),
                "cap": pa.array([r.cap for r in rules], pa.float64()),
            }
        ),
    )
    e, t = model.engagement, model.thresholds
    tx.stage(
        "stage_lead_params",
        pa.table(
            {
                "as_of": pa.array([as_of], TS),
                "since": pa.array([as_of - timedelta(days=e.window_days)], TS),
                "half_life": pa.array([e.half_life_days], pa.float64()),
                "mql": pa.array([t.mql], pa.float64()),
                "sql_score": pa.array([t.sql], pa.float64()),
                "sql_min_fit": pa.array([t.sql_min_fit], pa.float64()),
            }
        ),
    )


def _text(value: Any) -> str:
    """How a value of an equals/in rule compares as text: lowercase, booleans as JSON
    writes them, whole numbers without '.0'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower()


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _parts_sql(tx: Tx, *, one_customer: bool) -> str:
    """(kind, customer_id, rule_no, events, points) for every customer — or for the one
    customer given as the statement's parameters (three times)."""
    pg = tx.dialect.name == "postgres"

    def extract(traits: str) -> str:
        if pg:
            return f"({traits} #>> string_to_array(r.path, '.'))"
        return f"json_extract_string({traits}, '$.' || r.path)"

    only = "AND {} = ?" if one_customer else "AND {} IS NOT NULL"
    number = number_sql(tx, "f.v")
    age_days = f"({epoch_sql('p.as_of')} - {epoch_sql('e.timestamp')}) / 86400.0"
    decayed = f"r.points * power(0.5, {age_days} / p.half_life)"
    return f"""
    WITH fit_values AS (
        SELECT c.customer_id, r.rule_no, r.test, r.lo, r.hi, r.points,
               {extract("c.traits")} AS v
        FROM customers c JOIN stage_lead_fit r ON r.source = 'customer'
        WHERE c.merged_into IS NULL {only.format("c.customer_id")}
        UNION ALL
        SELECT m.customer_id, r.rule_no, r.test, r.lo, r.hi, r.points,
               {extract("a.traits")} AS v
        FROM account_members m
        JOIN accounts a ON a.account_id = m.account_id
        JOIN stage_lead_fit r ON r.source = 'account'
        WHERE TRUE {only.format("m.customer_id")}
    ),
    fit AS (
        SELECT 'fit' AS kind, v.customer_id, v.rule_no, 0 AS events, MAX(v.points) AS points
        FROM (SELECT f.*, {number} AS n FROM fit_values f) v
        WHERE v.v IS NOT NULL AND (
            v.test = 'exists'
            OR (v.test = 'range' AND (v.lo IS NULL OR v.n >= v.lo) AND (v.hi IS NULL OR v.n < v.hi))
            OR (v.test IN ('equals', 'in') AND EXISTS (
                SELECT 1 FROM stage_lead_values x WHERE x.rule_no = v.rule_no
                AND (x.text_value = lower(v.v) OR x.num_value = v.n))))
        GROUP BY v.customer_id, v.rule_no
    ),
    matched AS (
        SELECT e.customer_id, r.rule_no, {decayed} AS points
        FROM events e CROSS JOIN stage_lead_params p
        JOIN stage_lead_engagement r ON r.event = e.event AND (r.type IS NULL OR r.type = e.type)
        WHERE e.timestamp <= p.as_of AND e.timestamp > p.since {only.format("e.customer_id")}
        UNION ALL
        SELECT e.customer_id, r.rule_no, {decayed} AS points
        FROM events e CROSS JOIN stage_lead_params p
        JOIN stage_lead_engagement r ON r.event IS NULL AND r.type = e.type
        WHERE e.timestamp <= p.as_of AND e.timestamp > p.since {only.format("e.customer_id")}
    ),
    engagement AS (
        SELECT 'engagement' AS kind, m.customer_id, m.rule_no, count(*) AS events,
               CASE WHEN r.cap IS NULL THEN SUM(m.points)
                    WHEN r.points >= 0 THEN LEAST(SUM(m.points), r.cap)
                    ELSE GREATEST(SUM(m.points), -r.cap) END AS points
        FROM matched m JOIN stage_lead_engagement r ON r.rule_no = m.rule_no
        GROUP BY m.customer_id, m.rule_no, r.points, r.cap
    )
    SELECT kind, customer_id, rule_no, events, CAST(points AS DOUBLE PRECISION) AS points
    FROM fit
    UNION ALL
    SELECT kind, customer_id, rule_no, events, CAST(points AS DOUBLE PRECISION) FROM engagement"""


def score_leads(tx: Tx, model: LeadModel, as_of: datetime) -> dict[str, Any]:
    """Score every customer and store it; returns counts per level and the customers who
    reached MQL or SQL for the first time (with their user/anonymous ids, for events)."""
    _stage_model(tx, model, as_of)
    for name in _TEMPS:
        tx.execute(f"DROP TABLE IF EXISTS {name}")
    tx.execute(f"CREATE TEMP TABLE _kl_parts AS {_parts_sql(tx, one_customer=False)}")
    tx.execute(
        "CREATE TEMP TABLE _kl_totals AS SELECT t.*, "
        "CASE WHEN t.fit + t.engagement >= p.sql_score AND t.fit >= p.sql_min_fit THEN 'sql' "
        "WHEN t.fit + t.engagement >= p.mql THEN 'mql' ELSE 'none' END AS level "
        "FROM (SELECT customer_id, "
        "SUM(CASE WHEN kind = 'fit' THEN points ELSE 0 END) AS fit, "
        "SUM(CASE WHEN kind = 'engagement' THEN points ELSE 0 END) AS engagement "
        "FROM _kl_parts GROUP BY customer_id) t CROSS JOIN stage_lead_params p"
    )
    newly = _newly_qualified(tx)
    tx.execute(
        "UPDATE lead_scores SET fit = 0, engagement = 0, score = 0, level = 'none', "
        "scored_at = (SELECT as_of FROM stage_lead_params) "
        "WHERE customer_id NOT IN (SELECT customer_id FROM _kl_totals)"
    )
    tx.execute(
        "INSERT INTO lead_scores SELECT t.customer_id, t.fit, t.engagement, "
        "t.fit + t.engagement, t.level, p.as_of, "
        "CASE WHEN t.level IN ('mql', 'sql') THEN p.as_of END, "
        "CASE WHEN t.level = 'sql' THEN p.as_of END "
        "FROM _kl_totals t CROSS JOIN stage_lead_params p "
        "ON CONFLICT (customer_id) DO UPDATE SET fit = excluded.fit, "
        "engagement = excluded.engagement, score = excluded.score, level = excluded.level, "
        "scored_at = excluded.scored_at, "
        "mql_at = COALESCE(lead_scores.mql_at, excluded.mql_at), "
        "sql_at = COALESCE(lead_scores.sql_at, excluded.sql_at)"
    )
    levels = dict(tx.execute("SELECT level, count(*) FROM lead_scores GROUP BY level"))
    for name in _TEMPS:
        tx.execute(f"DROP TABLE IF EXISTS {name}")
    return {
        "scored": int(sum(levels.values())),
        "mql": int(levels.get("mql", 0)),
        "sql": int(levels.get("sql", 0)),
        "newly_qualified": newly,
    }


def _newly_qualified(tx: Tx) -> list[dict[str, Any]]:
    rows = tx.execute(
        "SELECT t.customer_id, c.user_id, c.anonymous_id, t.level, t.fit, t.engagement, "
        "s.mql_at IS NULL AS new_mql, (t.level = 'sql' AND s.sql_at IS NULL) AS new_sql "
        "FROM _kl_totals t JOIN customers c ON c.customer_id = t.customer_id "
        "LEFT JOIN lead_scores s ON s.customer_id = t.customer_id "
        "WHERE t.level IN ('mql', 'sql') AND (s.mql_at IS NULL "
        "OR (t.level = 'sql' AND s.sql_at IS NULL)) ORDER BY t.customer_id"
    )
    names = ("customer_id", "user_id", "anonymous_id", "level", "fit", "engagement")
    out = []
    for row in rows:
        record = dict(zip(names, row[:6], strict=True))
        record["reached"] = [lvl for lvl, new in (("mql", row[6]), ("sql", row[7])) if new]
        out.append(record)
    return out


def explain_lead(tx: Tx, model: LeadModel, customer_id: int, as_of: datetime) -> dict[str, Any]:
    """One customer's points now: every fit rule that matched and every engagement rule
    with its event count and decayed points — the same parts the stored score sums."""
    _stage_model(tx, model, as_of)
    rows = tx.execute(_parts_sql(tx, one_customer=True), [customer_id] * 4)
    fit_rules, engagement_rules = model.fit, model.engagement.rules
    fit, engagement = [], []
    for kind, _, rule_no, events, points in sorted(rows, key=lambda r: (r[0], r[2])):
        if kind == "fit":
            rule = fit_rules[rule_no]
            fit.append({"rule": rule.key, "label": rule.label, "points": round(points, 4)})
        else:
            e_rule = engagement_rules[rule_no]
            engagement.append(
                {
                    "rule": e_rule.key,
                    "event": e_rule.event,
                    "type": e_rule.type,
                    "events": int(events),
                    "points": round(points, 4),
                }
            )
    fit_total = sum(p["points"] for p in fit)
    engagement_total = sum(p["points"] for p in engagement)
    return {
        "customer_id": customer_id,
        "as_of": as_of.isoformat(),
        "fit": round(fit_total, 4),
        "engagement": round(engagement_total, 4),
        "score": round(fit_total + engagement_total, 4),
        "level": model.level(fit_total, engagement_total),
        "fit_rules": fit,
        "engagement_rules": engagement,
        "half_life_days": model.engagement.half_life_days,
        "thresholds": model.thresholds.model_dump(),
    }


def list_leads(tx: Tx, *, level: str = "qualified", limit: int = 100) -> list[dict[str, Any]]:
    """Stored scores, best first; `level` is sql, mql, qualified (either) or all."""
    where = {
        "sql": "WHERE s.level = 'sql'",
        "mql": "WHERE s.level = 'mql'",
        "qualified": "WHERE s.level IN ('mql', 'sql')",
        "all": "",
    }[level]
    rows = tx.execute(
        "SELECT s.customer_id, c.user_id, c.email, s.fit, s.engagement, s.score, s.level, "
        "s.scored_at, s.mql_at, s.sql_at FROM lead_scores s "
        f"JOIN customers c ON c.customer_id = s.customer_id {where} "
        "ORDER BY s.score DESC, s.customer_id LIMIT ?",
        [limit],
    )
    names = (
        "customer_id",
        "user_id",
        "email",
        "fit",
        "engagement",
        "score",
        "level",
        "scored_at",
        "mql_at",
        "sql_at",
    )
    out = []
    for row in rows:
        record = dict(zip(names, row, strict=True))
        for key in ("fit", "engagement", "score"):
            record[key] = round(float(record[key]), 2)
        for key in ("scored_at", "mql_at", "sql_at"):
            record[key] = record[key].isoformat() if record[key] else None
        out.append(record)
    return out
