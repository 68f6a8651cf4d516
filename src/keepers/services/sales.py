"""Sales operations with plain-data answers (CLI `--json`, the REST API, Python): deals
synced from the CRM or created here, moved through MEDDIC-gated stages, their scorecards,
the prioritised list and the pipeline report; lead scores and who is MQL or SQL.

Each method is one transaction. With an `ingest` callable (the `Keepers` object passes its
own `ingest_messages`), two facts also become events so stage rules and journeys can use
them without the engine knowing about sales:

- every contact of a won deal's account (and the deal's main contact) gets one
  `Account Deal Won` event (properties deal_id, account_id, amount, currency) — a stage rule
  `orders >= 1 or count("Account Deal Won") >= 1` makes the whole account "conversion";
  the CRM's own `Deal Won` event already counts for the contact it names
  (`count("Deal Won") >= 1`);
- a customer whose lead score reaches MQL or SQL for the first time gets one
  `Lead Marketing Qualified` / `Lead Sales Qualified` event — a journey with
  `trigger: {event: Lead Sales Qualified}` and a `task` step creates the sales task.

Their message ids are derived from (deal, customer) and (customer, level), so a rerun sends
nothing new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from keepers.errors import InvalidInput
from keepers.sales import deals as store
from keepers.sales import leads
from keepers.sales.config import (
    load_lead_model,
    load_pipeline,
    load_pipelines,
    save_lead_model,
    save_pipeline,
)
from keepers.sales.lead_model import model_body, parse_lead_model
from keepers.sales.meddic import (
    LABELS,
    STATUS_VALUE,
    SUGGESTED_NEXT_STEP,
    band,
    describe_missing,
    missing_for,
    qualification_score,
    weakest_element,
)
from keepers.sales.pipeline import parse_pipeline
from keepers.sales.records import DealCreate, DealUpdate, MeddicUpdate, parse_record
from keepers.services.lifecycle import resolve_customer
from keepers.store.database import Database

Ingest = Callable[[list[dict[str, Any]], str], Any]
SOURCE = "sales"
STATUSES = ("open", "won", "lost", "all")
LEVELS = ("sql", "mql", "qualified", "all")


class SalesService:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], ingest: Ingest | None = None
    ) -> None:
        self.db = db
        self.clock = clock
        self.ingest = ingest

    # --- deals ---------------------------------------------------------------------------

    def sync_from_events(self) -> dict[str, Any]:
        """Deals and their stage history from the CRM's `Deal …` events; safe to rerun."""
        with self.db.transaction() as tx:
            result = store.sync_deals(tx, load_pipelines(tx))
        result["contacts_converted"] = self._announce_won()
        return result

    def deals(
        self,
        status: str = "open",
        stage: str | None = None,
        owner: str | None = None,
        account: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        _choice("status", status, STATUSES)
        _limit(limit)
        with self.db.transaction() as tx:
            return store.list_deals(
                tx,
                load_pipelines(tx),
                status=status,
                stage=stage,
                owner=owner,
                account=account,
                limit=limit,
            )

    def deal(self, deal_id: str) -> dict[str, Any]:
        """One deal with its scorecard, score, weakest element, history, and what the next
        stage's gate still needs."""
        with self.db.transaction() as tx:
            deal = store.read_deal(tx, deal_id)
            pipeline = load_pipeline(tx, deal["pipeline"])
            card = store.read_scorecard(tx, deal_id)
            history = store.read_history(tx, deal_id)
            contacts = tx.execute(
                "SELECT count(*) FROM account_members WHERE account_id = ?", [deal["account_id"]]
            )[0][0]
        statuses = {e: r["status"] for e, r in card.items()}
        elements, weights = pipeline.elements, pipeline.weight_map
        score = qualification_score(statuses, elements, weights)
        weakest = weakest_element(statuses, elements, weights)
        scorecard = [_element_row(e, card.get(e), weights[e]) for e in elements]
        return {
            **store.plain_row(deal),
            "framework": pipeline.framework,
            "score": round(score, 1),
            "band": band(score),
            "weakest": weakest,
            "next_step": _next_step(weakest, card),
            "scorecard": scorecard,
            "next_stage": _next_gate(pipeline, deal, statuses),
            "account_contacts": int(contacts),
            "history": history,
        }

    def create_deal(self, body: dict[str, Any], actor: str = "api") -> dict[str, Any]:
        deal: DealCreate = parse_record(DealCreate, body)
        with self.db.transaction() as tx:
            pipeline = load_pipeline(tx, deal.pipeline)
            customer_id = resolve_customer(tx, deal.customer) if deal.customer else None
            result = store.insert_deal(
                tx, pipeline, deal, customer_id=customer_id, actor=actor, now=self.clock()
            )
        if result["status"] == "won":
            result["contacts_converted"] = self._announce_won()
        return result

    def update_deal(self, deal_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change a deal's fields (not its stage: that is `move_deal`, through the gates).
        A CRM deal's fields come back from the CRM's next event about it."""
        change: DealUpdate = parse_record(DealUpdate, body)
        with self.db.transaction() as tx:
            changed = store.update_deal(tx, deal_id, change, now=self.clock())
        return {"deal_id": deal_id, "changed": changed}

    def move_deal(
        self, deal_id: str, stage: str, actor: str = "api", reason: str | None = None
    ) -> dict[str, Any]:
        """Move a deal; a gate that is not met refuses with what is missing (code
        `stage_gate`, HTTP 400, CLI exit 2)."""
        with self.db.transaction() as tx:
            deal = store.read_deal(tx, deal_id)
            pipeline = load_pipeline(tx, deal["pipeline"])
            result = store.move_deal(
                tx, pipeline, deal, stage, actor=actor, now=self.clock(), reason=reason
            )
        if result.get("status") == "won":
            result["contacts_converted"] = self._announce_won()
        return result

    def update_meddic(
        self, deal_id: str, element: str, body: dict[str, Any], actor: str = "api"
    ) -> dict[str, Any]:
        """Set one element of a deal's scorecard; answers the element and the new score."""
        change: MeddicUpdate = parse_record(MeddicUpdate, body)
        with self.db.transaction() as tx:
            deal = store.read_deal(tx, deal_id)
            pipeline = load_pipeline(tx, deal["pipeline"])
            if element not in pipeline.elements:
                raise InvalidInput(
                    f"element: '{element}' is not a {pipeline.framework} element "
                    f"({', '.join(pipeline.elements)})"
                )
            customer_id = resolve_customer(tx, change.customer) if change.customer else None
            row = store.write_meddic(
                tx, deal_id, element, change, customer_id=customer_id, actor=actor, now=self.clock()
            )
            card = store.read_scorecard(tx, deal_id)
        statuses = {e: r["status"] for e, r in card.items()}
        score = qualification_score(statuses, pipeline.elements, pipeline.weight_map)
        return {
            "deal_id": deal_id,
            **row,
            "score": round(score, 1),
            "weakest": weakest_element(statuses, pipeline.elements, pipeline.weight_map),
        }

    def priorities(self, owner: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Open deals by amount × qualification score ÷ 100, each with its weakest element
        and next step: where sales should spend time this week."""
        _limit(limit)
        with self.db.transaction() as tx:
            return store.prioritised_deals(tx, load_pipelines(tx), owner=owner, limit=limit)

    def pipeline_report(self) -> dict[str, Any]:
        """Open value by stage; win rate and median cycle time by MEDDIC completeness."""
        with self.db.transaction() as tx:
            return store.pipeline_report(tx, load_pipelines(tx))

    def pipeline(self, key: str = "default") -> dict[str, Any]:
        with self.db.transaction() as tx:
            return load_pipeline(tx, key).model_dump(mode="json", exclude_none=True)

    def save_pipeline(self, body: dict[str, Any], actor: str = "api") -> dict[str, Any]:
        """Store a pipeline (stages, gates, CRM stage names, framework, weights). Deals in a
        stage the new version lacks keep it until moved; the sync reports such names."""
        pipeline = parse_pipeline(body)
        with self.db.transaction() as tx:
            version = save_pipeline(tx, pipeline, actor=actor, now=self.clock())
        return {"pipeline": pipeline.key, "version": version}

    # --- leads ---------------------------------------------------------------------------

    def lead_model(self) -> dict[str, Any]:
        with self.db.transaction() as tx:
            model, version = load_lead_model(tx)
        return {"version": version, "model": model_body(model)}

    def save_lead_model(self, body: dict[str, Any], actor: str = "api") -> dict[str, Any]:
        model = parse_lead_model(body)
        with self.db.transaction() as tx:
            version = save_lead_model(tx, model, actor=actor, now=self.clock())
        return {"version": version}

    def score_leads(self, as_of: datetime | None = None) -> dict[str, Any]:
        """Score every customer (fit + decayed engagement) and store it; customers reaching
        MQL or SQL for the first time get a `Lead … Qualified` event."""
        when = as_of or self.clock()
        with self.db.transaction() as tx:
            model, version = load_lead_model(tx)
            result = leads.score_leads(tx, model, when)
        newly = result.pop("newly_qualified")
        result["model_version"] = version
        result["newly_mql"] = sum("mql" in n["reached"] for n in newly)
        result["newly_sql"] = sum("sql" in n["reached"] for n in newly)
        result["events_sent"] = self._announce_qualified(newly, when)
        return result

    def lead(self, customer: str, as_of: datetime | None = None) -> dict[str, Any]:
        """Why a customer has the lead score they have: each rule and its points."""
        when = as_of or self.clock()
        with self.db.transaction() as tx:
            customer_id = resolve_customer(tx, customer)
            model, _ = load_lead_model(tx)
            return leads.explain_lead(tx, model, customer_id, when)

    def leads(self, level: str = "qualified", limit: int = 100) -> list[dict[str, Any]]:
        """Customers by stored lead score: `sql`, `mql`, `qualified` (either) or `all`."""
        _choice("level", level, LEVELS)
        _limit(limit)
        with self.db.transaction() as tx:
            return leads.list_leads(tx, level=level, limit=limit)

    def sales_qualified(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.leads("sql", limit)

    # --- facts as events -----------------------------------------------------------------

    def _announce_won(self) -> int:
        if self.ingest is None:
            return 0
        with self.db.transaction() as tx:
            rows = store.converted_contacts(tx)
        messages = [
            _track(
                row,
                store.CONVERTED_EVENT,
                f"account-deal-won:{row['deal_id']}:{row['customer_id']}",
                row["closed_at"],
                {
                    "deal_id": row["deal_id"],
                    "deal_name": row["name"],
                    "account_id": row["account_id"],
                    "amount": row["amount"],
                    "currency": row["currency"],
                },
            )
            for row in rows
            if row["user_id"] or row["anonymous_id"]
        ]
        return self._send(messages)

    def _announce_qualified(self, newly: list[dict[str, Any]], when: datetime) -> int:
        if self.ingest is None:
            return 0
        names = {"mql": leads.MQL_EVENT, "sql": leads.SQL_EVENT}
        messages = [
            _track(
                row,
                names[level],
                f"lead-qualified:{row['customer_id']}:{level}",
                when,
                {
                    "level": level,
                    "score": round(row["fit"] + row["engagement"], 2),
                    "fit": round(row["fit"], 2),
                    "engagement": round(row["engagement"], 2),
                },
            )
            for row in newly
            for level in row["reached"]
            if row["user_id"] or row["anonymous_id"]
        ]
        return self._send(messages)

    def _send(self, messages: list[dict[str, Any]]) -> int:
        if not messages or self.ingest is None:
            return 0
        report = self.ingest(messages, SOURCE)
        return int(getattr(report, "stored", len(messages)))


def _track(
    row: dict[str, Any], event: str, key: str, when: datetime, properties: dict[str, Any]
) -> dict[str, Any]:
    """A Segment track message about a customer, with a message id derived from `key`."""
    who = {"userId": row["user_id"]} if row["user_id"] else {"anonymousId": row["anonymous_id"]}
    return {
        "type": "track",
        "event": event,
        **who,
        "messageId": hashlib.sha256(key.encode()).hexdigest()[:40],
        "timestamp": when.isoformat(),
        "properties": properties,
    }


def _element_row(element: str, row: dict[str, Any] | None, weight: float) -> dict[str, Any]:
    row = row or {}
    status = row.get("status", "unknown")
    return {
        "element": element,
        "label": LABELS[element],
        "status": status,
        "weight": weight,
        "evidence": row.get("evidence"),
        "said_by": row.get("said_by"),
        "said_at": _iso(row.get("said_at")),
        "customer_id": row.get("customer_id"),
        "next_step": row.get("next_step"),
        "updated_by": row.get("updated_by"),
        "updated_at": _iso(row.get("updated_at")),
        "value": STATUS_VALUE[status],
    }


def _next_step(weakest: str | None, card: dict[str, dict[str, Any]]) -> str | None:
    if weakest is None:
        return None
    return (card.get(weakest) or {}).get("next_step") or SUGGESTED_NEXT_STEP[weakest]


def _next_gate(pipeline: Any, deal: dict[str, Any], statuses: dict[str, str]) -> dict | None:
    """The next open stage and what its gate still misses (None for a closed deal or the
    last open stage)."""
    stages = pipeline.open_stages
    if deal["status"] != "open" or deal["stage"] not in stages:
        return None
    position = stages.index(deal["stage"])
    if position + 1 >= len(stages):
        return None
    target = stages[position + 1]
    missing = missing_for(statuses, pipeline.requirements(target))
    return {
        "stage": target,
        "ready": not missing,
        "missing": describe_missing(missing) or None,
    }


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInput(f"{field}: '{value}' is not one of {', '.join(allowed)}")


def _limit(limit: int) -> None:
    if not 1 <= limit <= 10_000:
        raise InvalidInput("limit: give a number from 1 to 10000")
