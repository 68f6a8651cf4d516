"""Sales: pipelines, deals with their stage history, MEDDIC scorecards, lead scores.

Why these shapes:
- a pipeline (stages, gates, CRM stage mapping, MEDDIC framework) is one JSON document per
  key with a version, like the definitions: gates are data a sales team edits, not code;
  a store without a row uses the built-in default pipeline.
- `deals` holds each deal's current state, one row per deal keyed by the CRM's `deal_id`,
  with `source` saying who owns it (`crm`: synced from `Deal …` events, which may update it
  again; `keepers`: created through the API or CLI). `stage` is a pipeline stage, `crm_stage`
  the CRM's own name for it, `status` open / won / lost; `updated_at` decides whether a later
  CRM event overrides a move made in Keepers (the later one wins).
- `deal_stage_history` is one row per move (either direction), numbered in the order it was
  recorded (`move_no`: two moves in one second keep their order), with `ref` naming the CRM
  event it came from, so syncing the same events again inserts nothing.
- `deal_meddic` is the scorecard: one row per (deal, element) with status, evidence, who
  said it and when, the contact it links to, the next step, and who changed it;
  `deal_meddic_log` keeps every version of a row (who said what, when — an audit trail).
- lead scoring is a JSON model (fit rules, engagement rules with a half-life, thresholds);
  `lead_scores` holds the last scoring of every customer with points, plus when each
  first reached MQL and SQL (set once: that is what "turned sales-qualified" means).
- on PostgreSQL a partial index lets the deal sync read the CRM events without scanning the
  whole event log; DuckDB scans columns fast enough and ART indexes would slow ingest.
"""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    j = d.json_type
    meddic_columns = """
            deal_id TEXT NOT NULL,
            element TEXT NOT NULL,
            status TEXT NOT NULL,
            evidence TEXT,
            said_by TEXT,
            said_at TIMESTAMPTZ,
            customer_id BIGINT,
            next_step TEXT,
            updated_by TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL"""
    tables = [
        f"""CREATE TABLE pipelines (
            pipeline TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            body {j} NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            updated_by TEXT NOT NULL)""",
        """CREATE TABLE deals (
            deal_id TEXT PRIMARY KEY,
            name TEXT,
            deal_type TEXT,
            pipeline TEXT NOT NULL,
            account_id TEXT,
            customer_id BIGINT,
            owner TEXT,
            amount DOUBLE PRECISION,
            currency TEXT,
            close_date DATE,
            stage TEXT NOT NULL,
            crm_stage TEXT,
            status TEXT NOT NULL,
            lost_reason TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            closed_at TIMESTAMPTZ,
            source TEXT NOT NULL)""",
        """CREATE TABLE deal_stage_history (
            move_no BIGINT NOT NULL,
            deal_id TEXT NOT NULL,
            from_stage TEXT,
            to_stage TEXT NOT NULL,
            crm_stage TEXT,
            moved_at TIMESTAMPTZ NOT NULL,
            source TEXT NOT NULL,
            actor TEXT,
            ref TEXT)""",
        f"""CREATE TABLE deal_meddic ({meddic_columns},
            PRIMARY KEY (deal_id, element))""",
        f"""CREATE TABLE deal_meddic_log ({meddic_columns})""",
        f"""CREATE TABLE lead_score_models (
            model TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            body {j} NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            updated_by TEXT NOT NULL)""",
        """CREATE TABLE lead_scores (
            customer_id BIGINT PRIMARY KEY,
            fit DOUBLE PRECISION NOT NULL,
            engagement DOUBLE PRECISION NOT NULL,
            score DOUBLE PRECISION NOT NULL,
            level TEXT NOT NULL,
            scored_at TIMESTAMPTZ NOT NULL,
            mql_at TIMESTAMPTZ,
            sql_at TIMESTAMPTZ)""",
    ]
    if d.name != "postgres":
        return tables
    return [
        *tables,
        "CREATE INDEX deals_status ON deals (status, pipeline)",
        "CREATE INDEX deals_account ON deals (account_id)",
        "CREATE INDEX deal_stage_history_deal ON deal_stage_history (deal_id, moved_at)",
        "CREATE UNIQUE INDEX deal_stage_history_ref ON deal_stage_history (ref) "
        "WHERE ref IS NOT NULL",
        "CREATE INDEX deal_meddic_log_deal ON deal_meddic_log (deal_id, element)",
        "CREATE INDEX lead_scores_level ON lead_scores (level) WHERE level <> 'none'",
        "CREATE INDEX events_deals ON events ((properties->>'deal_id'), timestamp) "
        "WHERE event IN ('Deal Created', 'Deal Stage Changed', 'Deal Won', 'Deal Lost')",
    ]
