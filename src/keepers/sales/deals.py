"""Deals in the store: sync from CRM events, create, move through gated stages, score with
MEDDIC, rank, report — set-based SQL over every deal, one transaction per call.

**Sync.** A CRM sends `Deal Created`, `Deal Stage Changed`, `Deal Won` and `Deal Lost`
track events (properties `deal_id`, `deal_name`, `deal_type`, `amount`, `currency`,
`close_date`, `owner`, `stage`, `previous_stage`, `lost_reason`; the account from the
event's `groupId` / `context.groupId`, else `properties.account_id`, else the main
contact's account). `sync_deals` rebuilds each deal's state from all its events in one
statement — the latest event decides stage and status, each attribute comes from the
latest event that carries it — and upserts it into `deals`; each event becomes one
`deal_stage_history` row, keyed by the event, so a second sync changes nothing. A deal
created in Keepers is never overwritten by a CRM deal with the same id, and a CRM deal moved
in Keepers is overwritten only by a CRM event later than the move (the later one wins).
CRM stage names are mapped through the pipeline's `crm_stages` (case-insensitive); an
unmapped name lands the deal in the first stage and is reported.

**Priority** of an open deal = amount × qualification score ÷ 100 (its amount weighted by
how qualified it is: "where should sales spend time this week"); ties go to the larger
amount, then the earlier close date. The formula of the qualification score and of the
weakest element is in `keepers.sales.meddic`; `_scored_sql` computes the same in SQL.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pyarrow as pa

from keepers.errors import InvalidInput, NotFound
from keepers.sales.meddic import (
    BAND_RANGES,
    BANDS,
    STATUS_VALUE,
    SUGGESTED_NEXT_STEP,
    describe_missing,
    missing_for,
)
from keepers.sales.pipeline import DEFAULT_PIPELINE, Pipeline
from keepers.sales.records import DealCreate, DealUpdate, MeddicUpdate
from keepers.sales.sql import date_sql, epoch_sql, number_sql
from keepers.store.database import Tx

CRM_EVENTS = ("Deal Created", "Deal Stage Changed", "Deal Won", "Deal Lost")
CONVERTED_EVENT = "Account Deal Won"
DEAL_COLUMNS = (
    "deal_id",
    "name",
    "deal_type",
    "pipeline",
    "account_id",
    "customer_id",
    "owner",
    "amount",
    "currency",
    "close_date",
    "stage",
    "crm_stage",
    "status",
    "lost_reason",
    "created_at",
    "updated_at",
    "closed_at",
    "source",
)
MEDDIC_COLUMNS = (
    "element",
    "status",
    "evidence",
    "said_by",
    "said_at",
    "customer_id",
    "next_step",
    "updated_by",
    "updated_at",
)
_TEMPS = ("_ks_crm", "_ks_moves", "_ks_deals")
TS = pa.timestamp("us", tz="UTC")


def _value_sql(status: str) -> str:
    """The MEDDIC value of a status column (see keepers.sales.meddic.STATUS_VALUE)."""
    cases = " ".join(f"WHEN '{s}' THEN {v}" for s, v in STATUS_VALUE.items() if v)
    return f"CAST(CASE {status} {cases} ELSE 0 END AS DOUBLE PRECISION)"


def _band_sql(score: str) -> str:
    cases = " ".join(f"WHEN {score} >= {low} THEN '{name}'" for low, name in BANDS)
    return f"(CASE {cases} END)"


# --- pipelines as staged tables ----------------------------------------------------------------


def stage_pipelines(tx: Tx, pipelines: dict[str, Pipeline]) -> None:
    """The pipelines as small tables the SQL joins: stages, elements with weights,
    cumulative gates, and the CRM stage map of the default pipeline."""
    stages, elements, gates = [], [], []
    for p in pipelines.values():
        for i, s in enumerate(p.stages):
            stages.append((p.key, s.key, i, s.outcome))
            if s.outcome == "open":
                for j, (element, status) in enumerate(p.requirements(s.key).items()):
                    gates.append((p.key, s.key, element, status, STATUS_VALUE[status], j))
        for i, e in enumerate(p.elements):
            elements.append((p.key, e, p.weight(e), i))
    default = pipelines[DEFAULT_PIPELINE]
    crm = [(name, target) for name, target in default.crm_map().items()]
    _stage_rows(tx, "stage_sales_stages", ["pipeline", "stage", "seq", "outcome"], stages)
    _stage_rows(tx, "stage_sales_elements", ["pipeline", "element", "weight", "seq"], elements)
    _stage_rows(
        tx,
        "stage_sales_gates",
        ["pipeline", "stage", "element", "required", "required_value", "seq"],
        gates,
    )
    _stage_rows(tx, "stage_sales_crm", ["crm_stage", "stage"], crm)


_TYPES = {
    "seq": pa.int64(),
    "weight": pa.float64(),
    "required_value": pa.float64(),
}


def _stage_rows(tx: Tx, name: str, columns: list[str], rows: list[tuple]) -> None:
    data = {
        c: pa.array([r[i] for r in rows], _TYPES.get(c, pa.string())) for i, c in enumerate(columns)
    }
    tx.stage(name, pa.table(data))


# --- sync from CRM events ----------------------------------------------------------------------


def sync_deals(tx: Tx, pipelines: dict[str, Pipeline]) -> dict[str, Any]:
    """Bring `deals` and `deal_stage_history` up to date with the CRM events; idempotent."""
    stage_pipelines(tx, pipelines)
    default = pipelines[DEFAULT_PIPELINE]
    _stage_rows(
        tx,
        "stage_sales_sync",
        ["pipeline", "first_stage", "won_stage", "lost_stage"],
        [
            (
                default.key,
                default.open_stages[0],
                default.outcome_stage("won"),
                default.outcome_stage("lost"),
            )
        ],
    )
    for name in _TEMPS:
        tx.execute(f"DROP TABLE IF EXISTS {name}")
    tx.execute(f"CREATE TEMP TABLE _ks_crm AS {_crm_events_sql(tx)}")
    tx.execute(f"CREATE TEMP TABLE _ks_moves AS {_MOVES_SQL}")
    tx.execute(f"CREATE TEMP TABLE _ks_deals AS {_deal_state_sql()}")
    counts = tx.execute(
        "SELECT count(*) FILTER (WHERE d.deal_id IS NULL), "
        "count(*) FILTER (WHERE d.source = 'crm' AND s.updated_at > d.updated_at), "
        "count(*) FILTER (WHERE d.source <> 'crm') "
        "FROM _ks_deals s LEFT JOIN deals d ON d.deal_id = s.deal_id"
    )[0]
    new_history = tx.execute(f"SELECT count(*) FROM _ks_moves m {_NEW_MOVES}")[0][0]
    tx.execute(_UPSERT_SQL)
    tx.execute(_HISTORY_SQL)
    unmapped = tx.execute(
        "SELECT DISTINCT crm_stage FROM _ks_moves WHERE crm_stage IS NOT NULL "
        "AND event NOT IN ('Deal Won', 'Deal Lost') "
        "AND crm_stage NOT IN (SELECT crm_stage FROM stage_sales_crm) ORDER BY crm_stage"
    )
    events = tx.execute("SELECT count(*) FROM _ks_crm")[0][0]
    for name in _TEMPS:
        tx.execute(f"DROP TABLE IF EXISTS {name}")
    return {
        "crm_events": int(events),
        "deals_created": int(counts[0]),
        "deals_updated": int(counts[1]),
        "conflicts": int(counts[2]),
        "history_rows": int(new_history),
        "unmapped_stages": [r[0] for r in unmapped],
    }


def _crm_events_sql(tx: Tx) -> str:
    p = "e.properties"
    names = ", ".join(f"'{n}'" for n in CRM_EVENTS)
    return f"""
        SELECT e.source_id || ':' || e.message_id AS ref, e.customer_id,
               e.timestamp AS ts, e.event,
               {p}->>'deal_id' AS deal_id,
               NULLIF({p}->>'deal_name', '') AS name,
               NULLIF({p}->>'deal_type', '') AS deal_type,
               {number_sql(tx, f"({p}->>'amount')")} AS amount,
               NULLIF(upper({p}->>'currency'), '') AS currency,
               {date_sql(tx, f"({p}->>'close_date')")} AS close_date,
               NULLIF({p}->>'owner', '') AS owner,
               NULLIF(lower(trim({p}->>'stage')), '') AS crm_stage,
               NULLIF({p}->>'lost_reason', '') AS lost_reason,
               COALESCE(e.group_id, NULLIF({p}->>'account_id', '')) AS account_id,
               CASE e.event WHEN 'Deal Created' THEN 0 WHEN 'Deal Stage Changed' THEN 1
                    ELSE 2 END AS prio
        FROM events e
        WHERE e.event IN ({names}) AND e.type = 'track'
          AND {p}->>'deal_id' IS NOT NULL AND {p}->>'deal_id' <> ''"""


# Every CRM event with the pipeline stage it means and the stage before it.
_MOVES_SQL = """
    SELECT y.*,
           LAG(y.stage) OVER (PARTITION BY y.deal_id ORDER BY y.ts, y.prio, y.ref) AS from_stage
    FROM (SELECT c.*, CASE WHEN c.event = 'Deal Won' THEN p.won_stage
                           WHEN c.event = 'Deal Lost' THEN p.lost_stage
                           ELSE COALESCE(m.stage, p.first_stage) END AS stage
          FROM _ks_crm c
          CROSS JOIN stage_sales_sync p
          LEFT JOIN stage_sales_crm m ON m.crm_stage = c.crm_stage) y"""


def _latest(column: str) -> str:
    """The value of `column` in the latest event that has one."""
    return (
        f"FIRST_VALUE({column}) OVER (PARTITION BY deal_id "
        f"ORDER BY ({column} IS NULL), ts DESC, prio DESC, ref DESC) AS last_{column}"
    )


def _deal_state_sql() -> str:
    carried = ("name", "deal_type", "amount", "currency", "close_date", "owner", "lost_reason")
    windows = ",\n".join(_latest(c) for c in (*carried, "account_id"))
    return f"""
    WITH ordered AS (
        SELECT m.*, {windows},
               ROW_NUMBER() OVER (PARTITION BY deal_id ORDER BY ts DESC, prio DESC, ref DESC)
                   AS latest,
               FIRST_VALUE(customer_id) OVER (PARTITION BY deal_id ORDER BY ts, prio, ref)
                   AS first_customer,
               MIN(ts) OVER (PARTITION BY deal_id) AS first_ts
        FROM _ks_moves m
    ),
    member AS (SELECT customer_id, MIN(account_id) AS account_id FROM account_members
               GROUP BY customer_id)
    SELECT o.deal_id, o.last_name AS name, o.last_deal_type AS deal_type,
           p.pipeline, COALESCE(o.last_account_id, a.account_id) AS account_id,
           o.first_customer AS customer_id, o.last_owner AS owner, o.last_amount AS amount,
           o.last_currency AS currency, o.last_close_date AS close_date, o.stage,
           o.crm_stage, s.outcome AS status,
           CASE WHEN s.outcome = 'lost' THEN o.last_lost_reason END AS lost_reason,
           o.first_ts AS created_at, o.ts AS updated_at,
           CASE WHEN s.outcome <> 'open' THEN o.ts END AS closed_at
    FROM ordered o
    CROSS JOIN stage_sales_sync p
    JOIN stage_sales_stages s ON s.pipeline = p.pipeline AND s.stage = o.stage
    LEFT JOIN member a ON a.customer_id = o.first_customer
    WHERE o.latest = 1"""


_UPSERT_SQL = f"""
    INSERT INTO deals ({", ".join(DEAL_COLUMNS)})
    SELECT {", ".join(c for c in DEAL_COLUMNS if c != "source")}, 'crm' FROM _ks_deals
    ON CONFLICT (deal_id) DO UPDATE SET
        name = excluded.name, deal_type = excluded.deal_type,
        account_id = excluded.account_id, customer_id = excluded.customer_id,
        owner = excluded.owner, amount = excluded.amount, currency = excluded.currency,
        close_date = excluded.close_date, stage = excluded.stage,
        crm_stage = excluded.crm_stage, status = excluded.status,
        lost_reason = excluded.lost_reason, updated_at = excluded.updated_at,
        closed_at = excluded.closed_at
    WHERE deals.source = 'crm' AND excluded.updated_at > deals.updated_at"""

# CRM events not yet in the history, of deals the CRM owns.
_NEW_MOVES = """
    WHERE NOT EXISTS (SELECT 1 FROM deal_stage_history h WHERE h.ref = m.ref)
      AND NOT EXISTS (SELECT 1 FROM deals d WHERE d.deal_id = m.deal_id AND d.source <> 'crm')"""
_HISTORY_SQL = f"""
    INSERT INTO deal_stage_history
    SELECT (SELECT COALESCE(MAX(move_no), 0) FROM deal_stage_history)
               + ROW_NUMBER() OVER (ORDER BY m.ts, m.prio, m.ref),
           m.deal_id, m.from_stage, m.stage, m.crm_stage, m.ts, 'crm', NULL, m.ref
    FROM _ks_moves m {_NEW_MOVES}"""


# --- scores, gates, the weakest element — for every deal at once ------------------------------


def _scored_sql() -> str:
    """Every deal with its qualification score, confirmed count, weakest element (and that
    element's next step) and what its current stage's gate misses. Needs the staged
    pipelines (`stage_pipelines`)."""
    value = _value_sql("m.status")
    columns = ", ".join(f"d.{c}" for c in DEAL_COLUMNS)
    return f"""
    WITH parts AS (
        SELECT d.deal_id, e.element, e.weight, e.seq, {value} AS val, m.next_step
        FROM deals d
        JOIN stage_sales_elements e ON e.pipeline = d.pipeline
        LEFT JOIN deal_meddic m ON m.deal_id = d.deal_id AND m.element = e.element
    ),
    scores AS (
        SELECT deal_id, 100.0 * SUM(weight * val) / SUM(weight) AS score,
               SUM(CASE WHEN val = 1.0 THEN 1 ELSE 0 END) AS confirmed
        FROM parts GROUP BY deal_id
    ),
    ranked AS (
        SELECT deal_id, element, next_step, weight * (1.0 - val) AS gap,
               ROW_NUMBER() OVER (PARTITION BY deal_id
                                  ORDER BY weight * (1.0 - val) DESC, seq) AS rn
        FROM parts
    ),
    gates AS (
        SELECT d.deal_id,
               string_agg(g.element || ' must be ' || g.required || ' (is '
                          || COALESCE(m.status, 'unknown') || ')', ', ' ORDER BY g.seq)
                   AS gate_missing
        FROM deals d
        JOIN stage_sales_gates g ON g.pipeline = d.pipeline AND g.stage = d.stage
        LEFT JOIN deal_meddic m ON m.deal_id = d.deal_id AND m.element = g.element
        WHERE d.status = 'open' AND {value} < g.required_value
        GROUP BY d.deal_id
    )
    SELECT {columns}, COALESCE(s.score, 0.0) AS score, COALESCE(s.confirmed, 0) AS confirmed,
           CASE WHEN r.gap > 0 THEN r.element END AS weakest,
           CASE WHEN r.gap > 0 THEN r.next_step END AS weakest_next_step,
           gt.gate_missing
    FROM deals d
    LEFT JOIN scores s ON s.deal_id = d.deal_id
    LEFT JOIN ranked r ON r.deal_id = d.deal_id AND r.rn = 1
    LEFT JOIN gates gt ON gt.deal_id = d.deal_id"""


SCORED_COLUMNS = (*DEAL_COLUMNS, "score", "confirmed", "weakest", "weakest_next_step")


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        elif key == "score" and value is not None:
            value = round(float(value), 1)
        elif key in ("confirmed", "customer_id") and value is not None:
            value = int(value)
        out[key] = value
    return out


def _next_step(row: dict[str, Any]) -> str | None:
    weakest = row.get("weakest")
    if weakest is None:
        return None
    return row.pop("weakest_next_step", None) or SUGGESTED_NEXT_STEP[weakest]


def list_deals(
    tx: Tx,
    pipelines: dict[str, Pipeline],
    *,
    status: str | None = "open",
    stage: str | None = None,
    owner: str | None = None,
    account: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Deals with score, weakest element, next step and gate gaps, newest first."""
    stage_pipelines(tx, pipelines)
    where, params = _filters(status=status, stage=stage, owner=owner, account=account)
    rows = tx.execute(
        f"SELECT * FROM ({_scored_sql()}) x {where} ORDER BY updated_at DESC, deal_id LIMIT ?",
        [*params, limit],
    )
    return [_scored_row(r) for r in rows]


def _scored_row(row: tuple) -> dict[str, Any]:
    names = (*SCORED_COLUMNS, "gate_missing")
    record = dict(zip(names, row, strict=True))
    record["next_step"] = _next_step(record)
    record.pop("weakest_next_step", None)
    return plain_row(record)


def _filters(**given: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in given.items():
        if value is None or (column == "status" and value == "all"):
            continue
        clauses.append(f"{'account_id' if column == 'account' else column} = ?")
        params.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def prioritised_deals(
    tx: Tx, pipelines: dict[str, Pipeline], *, owner: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Open deals ranked by priority = amount × score ÷ 100 (see the module docstring)."""
    stage_pipelines(tx, pipelines)
    where, params = _filters(status="open", owner=owner)
    rows = tx.execute(
        f"SELECT *, COALESCE(amount, 0) * score / 100.0 AS priority FROM ({_scored_sql()}) x "
        f"{where} ORDER BY priority DESC, amount DESC NULLS LAST, close_date NULLS LAST, deal_id "
        "LIMIT ?",
        [*params, limit],
    )
    out = []
    for rank, row in enumerate(rows, start=1):
        record = _scored_row(row[:-1])
        record["priority"] = round(float(row[-1]), 2)
        out.append({"rank": rank, **record})
    return out


# --- one deal -----------------------------------------------------------------------------------


def read_deal(tx: Tx, deal_id: str) -> dict[str, Any]:
    rows = tx.execute(f"SELECT {', '.join(DEAL_COLUMNS)} FROM deals WHERE deal_id = ?", [deal_id])
    if not rows:
        raise NotFound(f"no deal '{deal_id}'")
    return dict(zip(DEAL_COLUMNS, rows[0], strict=True))


def read_scorecard(tx: Tx, deal_id: str) -> dict[str, dict[str, Any]]:
    """The stored MEDDIC rows of a deal, by element."""
    rows = tx.execute(
        f"SELECT {', '.join(MEDDIC_COLUMNS)} FROM deal_meddic WHERE deal_id = ?", [deal_id]
    )
    return {r[0]: dict(zip(MEDDIC_COLUMNS, r, strict=True)) for r in rows}


def read_history(tx: Tx, deal_id: str) -> list[dict[str, Any]]:
    rows = tx.execute(
        "SELECT from_stage, to_stage, crm_stage, moved_at, source, actor FROM deal_stage_history "
        "WHERE deal_id = ? ORDER BY moved_at, move_no",
        [deal_id],
    )
    names = ("from_stage", "to_stage", "crm_stage", "moved_at", "source", "actor")
    return [plain_row(dict(zip(names, r, strict=True))) for r in rows]


def gate_refusal(
    pipeline: Pipeline, deal: dict[str, Any], statuses: dict[str, str], target: str
) -> str | None:
    """Why a deal may not enter `target`, or None. Gates apply when a deal moves forward
    (or reopens) into an open stage; moving back and closing are never refused."""
    stage = pipeline.stage(target)
    if stage.outcome != "open" or stage.key == deal["stage"]:
        return None
    known = {s.key for s in pipeline.stages}
    current = pipeline.stage(deal["stage"]) if deal["stage"] in known else None
    forward = (
        current is None
        or current.outcome != "open"
        or pipeline.position(stage.key) > pipeline.position(current.key)
    )
    if not forward:
        return None
    missing = missing_for(statuses, pipeline.requirements(stage.key))
    if not missing:
        return None
    return (
        f"stage: deal '{deal['deal_id']}' cannot move to {stage.key}: {describe_missing(missing)}"
    )


def move_deal(
    tx: Tx,
    pipeline: Pipeline,
    deal: dict[str, Any],
    target: str,
    *,
    actor: str,
    now: datetime,
    reason: str | None = None,
) -> dict[str, Any]:
    """Move a deal to a stage (a won or lost stage closes it); refused with what is missing
    when the stage's gate is not met."""
    statuses = {e: r["status"] for e, r in read_scorecard(tx, deal["deal_id"]).items()}
    refusal = gate_refusal(pipeline, deal, statuses, target)
    if refusal:
        raise InvalidInput(refusal, code="stage_gate")
    stage = pipeline.stage(target)
    if stage.key == deal["stage"]:
        return {"deal_id": deal["deal_id"], "stage": stage.key, "moved": False}
    closed_at = now if stage.outcome != "open" else None
    tx.execute(
        "UPDATE deals SET stage = ?, crm_stage = NULL, status = ?, closed_at = ?, "
        "lost_reason = ?, updated_at = ? WHERE deal_id = ?",
        [
            stage.key,
            stage.outcome,
            closed_at,
            reason if stage.outcome == "lost" else None,
            now,
            deal["deal_id"],
        ],
    )
    _record_move(tx, deal["deal_id"], deal["stage"], stage.key, now, actor)
    return {
        "deal_id": deal["deal_id"],
        "from_stage": deal["stage"],
        "stage": stage.key,
        "status": stage.outcome,
        "moved": True,
    }


def _record_move(
    tx: Tx, deal_id: str, from_stage: str | None, to_stage: str, now: datetime, actor: str
) -> None:
    tx.execute(
        "INSERT INTO deal_stage_history SELECT COALESCE(MAX(move_no), 0) + 1, ?, ?, ?, NULL, ?, "
        "'keepers', ?, NULL FROM deal_stage_history",
        [deal_id, from_stage, to_stage, now, actor],
    )


def insert_deal(
    tx: Tx,
    pipeline: Pipeline,
    deal: DealCreate,
    *,
    customer_id: int | None,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """A deal created in Keepers, entering its stage through the same gates as a move."""
    deal_id = deal.deal_id or f"deal-{uuid.uuid4().hex[:12]}"
    if tx.execute("SELECT 1 FROM deals WHERE deal_id = ?", [deal_id]):
        raise InvalidInput(f"deal_id: a deal '{deal_id}' exists already")
    target = deal.stage or pipeline.open_stages[0]
    blank = {"deal_id": deal_id, "stage": None}
    refusal = gate_refusal(pipeline, blank, {}, target)
    if refusal:
        raise InvalidInput(refusal, code="stage_gate")
    stage = pipeline.stage(target)
    values = {
        **deal.model_dump(exclude={"deal_id", "pipeline", "stage", "customer"}),
        "deal_id": deal_id,
        "pipeline": pipeline.key,
        "customer_id": customer_id,
        "stage": stage.key,
        "crm_stage": None,
        "status": stage.outcome,
        "lost_reason": None,
        "created_at": now,
        "updated_at": now,
        "closed_at": now if stage.outcome != "open" else None,
        "source": "keepers",
    }
    marks = ", ".join("?" for _ in DEAL_COLUMNS)
    tx.execute(
        f"INSERT INTO deals ({', '.join(DEAL_COLUMNS)}) VALUES ({marks})",
        [values[c] for c in DEAL_COLUMNS],
    )
    _record_move(tx, deal_id, None, stage.key, now, actor)
    return {"deal_id": deal_id, "stage": stage.key, "status": stage.outcome}


def update_deal(tx: Tx, deal_id: str, change: DealUpdate, *, now: datetime) -> list[str]:
    """Change the given fields of a deal; returns their names."""
    read_deal(tx, deal_id)
    fields = change.model_dump(exclude_unset=True)
    if not fields:
        return []
    sets = ", ".join(f"{name} = ?" for name in fields)
    tx.execute(
        f"UPDATE deals SET {sets}, updated_at = ? WHERE deal_id = ?",
        [*fields.values(), now, deal_id],
    )
    return sorted(fields)


def write_meddic(
    tx: Tx,
    deal_id: str,
    element: str,
    change: MeddicUpdate,
    *,
    customer_id: int | None,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Set one scorecard element; fields left out keep their value. Every version is kept
    in `deal_meddic_log`."""
    old = read_scorecard(tx, deal_id).get(element, {})
    given = change.model_dump(exclude_unset=True, exclude={"customer"})
    row = {
        **{c: old.get(c) for c in MEDDIC_COLUMNS},
        **given,
        "element": element,
        "status": change.status,
        "customer_id": customer_id if change.customer is not None else old.get("customer_id"),
        "updated_by": actor,
        "updated_at": now,
    }
    values = [deal_id, *(row[c] for c in MEDDIC_COLUMNS)]
    marks = ", ".join("?" for _ in values)
    tx.execute("DELETE FROM deal_meddic WHERE deal_id = ? AND element = ?", [deal_id, element])
    tx.execute(f"INSERT INTO deal_meddic VALUES ({marks})", values)
    tx.execute(f"INSERT INTO deal_meddic_log VALUES ({marks})", values)
    return plain_row(row)


# --- reports ----------------------------------------------------------------------------------


def pipeline_report(tx: Tx, pipelines: dict[str, Pipeline]) -> dict[str, Any]:
    """Open pipeline value by stage; win rate and median cycle time by MEDDIC band.

    win rate = won ÷ (won + lost) among closed deals; cycle time = days from a deal's first
    event (or creation) to its close, median over won deals (`median_days_to_close` over
    every closed deal); band = the qualification score's band (`keepers.sales.meddic`):
    high ≥ 70, medium ≥ 40, low below — the scorecard as it stands now."""
    stage_pipelines(tx, pipelines)
    scored = _scored_sql()
    by_stage = tx.execute(
        f"SELECT pipeline, stage, currency, count(*), SUM(amount), "
        f"SUM(COALESCE(amount, 0) * score / 100.0) FROM ({scored}) x WHERE status = 'open' "
        "GROUP BY pipeline, stage, currency"
    )
    days = f"({epoch_sql('closed_at')} - {epoch_sql('created_at')}) / 86400.0"
    by_band = tx.execute(
        f"SELECT {_band_sql('score')} AS band, count(*), "
        "SUM(CASE WHEN status = 'won' THEN 1 ELSE 0 END), "
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY CASE WHEN status = 'won' THEN {days} END), "
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY {days}) "
        f"FROM ({scored}) x WHERE status IN ('won', 'lost') GROUP BY 1"
    )
    return {
        "by_stage": _stage_rows_report(pipelines, by_stage),
        "by_meddic_band": _band_rows(by_band),
    }


def _stage_rows_report(pipelines: dict[str, Pipeline], rows: list[tuple]) -> list[dict[str, Any]]:
    found = {(p, s, c): (n, amount, qualified) for p, s, c, n, amount, qualified in rows}
    out = []
    for pipeline in pipelines.values():
        for stage in pipeline.open_stages:
            mine = [(c, v) for (p, s, c), v in found.items() if (p, s) == (pipeline.key, stage)]
            for currency, (n, amount, qualified) in sorted(mine, key=lambda x: str(x[0])) or [
                (None, (0, 0.0, 0.0))
            ]:
                out.append(
                    {
                        "pipeline": pipeline.key,
                        "stage": stage,
                        "currency": currency,
                        "deals": int(n),
                        "amount": round(float(amount or 0), 2),
                        "qualified_amount": round(float(qualified or 0), 2),
                    }
                )
    return out


def _band_rows(rows: list[tuple]) -> list[dict[str, Any]]:
    found = {band: rest for band, *rest in rows}
    out = []
    for _, band in BANDS:
        closed, won, cycle, to_close = found.get(band, (0, 0, None, None))
        out.append(
            {
                "band": band,
                "score_range": BAND_RANGES[band],
                "closed": int(closed),
                "won": int(won or 0),
                "lost": int(closed) - int(won or 0),
                "win_rate": round(int(won or 0) / int(closed), 4) if closed else None,
                "median_cycle_days": round(float(cycle), 2) if cycle is not None else None,
                "median_days_to_close": round(float(to_close), 2) if to_close is not None else None,
            }
        )
    return out


# --- won deals convert the account's contacts ---------------------------------------------------


def converted_contacts(tx: Tx) -> list[dict[str, Any]]:
    """Contacts of won deals' accounts (and each deal's main contact) who have no
    `Account Deal Won` event for that deal yet: what `sync` sends through ingest, so stage
    rules can say `count("Account Deal Won") >= 1` for every contact of a won account."""
    rows = tx.execute(
        f"""
        WITH won AS (SELECT deal_id, name, account_id, customer_id, amount, currency, closed_at
                     FROM deals WHERE status = 'won' AND closed_at IS NOT NULL),
        contacts AS (
            SELECT w.deal_id, m.customer_id FROM won w
            JOIN account_members m ON m.account_id = w.account_id
            UNION
            SELECT deal_id, customer_id FROM won WHERE customer_id IS NOT NULL)
        SELECT w.deal_id, w.name, w.account_id, w.amount, w.currency, w.closed_at,
               c.customer_id, c.user_id, c.anonymous_id
        FROM contacts k
        JOIN won w ON w.deal_id = k.deal_id
        JOIN customers c ON c.customer_id = k.customer_id AND c.merged_into IS NULL
        WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.customer_id = k.customer_id
                          AND e.event = '{CONVERTED_EVENT}'
                          AND e.properties->>'deal_id' = k.deal_id)
        ORDER BY w.deal_id, c.customer_id"""
    )
    names = (
        "deal_id",
        "name",
        "account_id",
        "amount",
        "currency",
        "closed_at",
        "customer_id",
        "user_id",
        "anonymous_id",
    )
    return [dict(zip(names, r, strict=True)) for r in rows]
