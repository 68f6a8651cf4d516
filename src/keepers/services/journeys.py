"""Journey operations with plain-data answers (CLI `--json`, the REST API, the scheduler):
create and version journeys, run them (advance + deliver), trace one customer, stats,
consent and unsubscribes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from keepers.delivery.audiences import GoogleCustomerMatchClient, MetaAudienceClient
from keepers.delivery.email import EmailTemplate, TemplateError, check, verify_unsubscribe
from keepers.delivery.smtp import SmtpSettings
from keepers.delivery.tracking import verify_link
from keepers.domain.journeys import Journey, parse_journey
from keepers.engine.plan import Plan
from keepers.errors import InvalidInput, NotFound
from keepers.journeys.engine import TickReport, tick
from keepers.journeys.outbox import DeliveryConfig, DrainReport, Ingest, drain
from keepers.journeys.simulate import simulate as simulate_journey
from keepers.journeys.store import (
    current_journeys,
    journey_version,
    save_journey,
    set_status,
    stored_journey,
)
from keepers.services.lifecycle import compute_transaction, load_definitions, resolve_customer
from keepers.settings import Settings
from keepers.store.database import Database
from keepers.store.secrets import stored_secret

TEMPLATE_NAMES = {
    "customer",
    "email",
    "traits",
    "stage",
    "unsubscribe_url",
    "journey",
}
MAX_DRAIN_BATCHES = 1000
CONSENT = ("granted", "withdrawn")
MESSAGE_COLUMNS = (
    "outbox_id",
    "step",
    "channel",
    "state",
    "attempts",
    "reference",
    "sent_at",
    "code",
    "last_error",
)


def read_journey_file(path: Path) -> dict[str, Any]:
    """A journey from a YAML or JSON file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{Path(path).name} is not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{Path(path).name}: a journey is a mapping with key, trigger, steps")
    return data


class JourneyService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Callable[[], datetime],
        ingest: Ingest | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.ingest = ingest

    # --- definitions -----------------------------------------------------------------------

    def validate(self, journey: Journey, plan: Plan) -> None:
        """What the journey refers to must exist: stages, segments, rule fields; templates
        must compile in the sandbox."""
        definitions = plan.definitions
        trigger = journey.trigger
        stages = {s.key for s in definitions.stage_model.stages}
        segments = {s.key for s in definitions.segments}
        if trigger.kind.startswith("stage_") and trigger.value not in stages:
            raise InvalidInput(
                f"trigger.{trigger.kind}: no stage '{trigger.value}' "
                f"(stages: {', '.join(sorted(stages))})"
            )
        if trigger.kind.startswith("segment_") and trigger.value not in segments:
            known = ", ".join(sorted(segments)) or "none yet"
            raise InvalidInput(
                f"trigger.{trigger.kind}: no segment '{trigger.value}' (segments: {known})"
            )
        for where, rule in journey.rules():
            plan.read_only_rule(rule, where)
        known = TEMPLATE_NAMES | set(plan.state_schema()) | {"health_score", "p_alive"}
        for step in journey.steps:
            if step.email is None:
                continue
            template = EmailTemplate(step.email.subject, step.email.html, step.email.text)
            try:
                unknown = check(template, known)
            except TemplateError as exc:
                raise InvalidInput(f"steps.{step.id}.email: {exc.message}") from None
            if unknown:
                raise InvalidInput(
                    f"steps.{step.id}.email: unknown name {', '.join(sorted(unknown))} "
                    "(use traits.NAME for identify traits)"
                )
            if not step.email.transactional and "unsubscribe_url" not in (step.email.html or ""):
                raise InvalidInput(
                    f"steps.{step.id}.email: marketing email needs a visible unsubscribe link "
                    "({{ unsubscribe_url }} in the html); mark it transactional if it is not "
                    "marketing"
                )

    def save(self, body: dict[str, Any], actor: str = "cli") -> dict[str, Any]:
        journey = parse_journey(body)
        with compute_transaction(self.db) as tx:
            plan = Plan.build(load_definitions(tx).definitions)
            self.validate(journey, plan)
            version, created, summary = save_journey(tx, journey, actor=actor, now=self.clock())
        return {"journey": journey.key, "version": version, "changed": created, "summary": summary}

    def save_file(self, path: Path, actor: str = "cli") -> dict[str, Any]:
        return self.save(read_journey_file(path), actor)

    def list(self) -> list[dict[str, Any]]:
        with self.db.transaction() as tx:
            stored = current_journeys(tx)
            counts = {
                (j, s): n
                for j, s, n in tx.execute(
                    "SELECT journey, status, count(*) FROM enrollments GROUP BY journey, status"
                )
            }
        out = []
        for s in stored:
            key = s.journey.key
            mine = {status: n for (j, status), n in counts.items() if j == key}
            out.append(
                {
                    "journey": key,
                    "name": s.journey.name,
                    "version": s.version,
                    "status": s.status,
                    "trigger": {s.journey.trigger.kind: s.journey.trigger.value},
                    "entered": sum(mine.values()),
                    "active": mine.get("active", 0),
                    "goal": mine.get("goal", 0),
                }
            )
        return out

    def show(self, key: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            stored = stored_journey(tx, key)
            versions = tx.execute(
                "SELECT version, created_at, actor, summary FROM journey_versions "
                "WHERE journey = ? ORDER BY version",
                [key],
            )
        return {
            "journey": stored.journey.model_dump(mode="json", by_alias=True, exclude_none=True),
            "version": stored.version,
            "status": stored.status,
            "versions": [
                {"version": v, "at": at.isoformat(), "actor": a, "summary": s}
                for v, at, a, s in versions
            ],
        }

    def set_status(self, key: str, status: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            set_status(tx, key, status)
        return {"journey": key, "status": status}

    # --- running ---------------------------------------------------------------------------

    def delivery_config(self) -> DeliveryConfig:
        s = self.settings
        with self.db.transaction() as tx:
            secret = stored_secret(tx, "unsubscribe")
            webhook = (
                s.webhook_secret.get_secret_value()
                if s.webhook_secret
                else stored_secret(tx, "webhook", _webhook_secret())
            )
        smtp = None
        if s.smtp_host:
            smtp = SmtpSettings(
                host=s.smtp_host,
                port=s.smtp_port,
                security=s.smtp_security,  # type: ignore[arg-type]
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                timeout=s.smtp_timeout_s,
            )
        dkim = None
        if s.dkim_selector and s.dkim_domain and s.dkim_private_key_file:
            dkim = (s.dkim_selector, s.dkim_domain, Path(s.dkim_private_key_file).read_bytes())
        quiet = None
        if s.quiet_hours:
            start, end = (int(x) for x in s.quiet_hours.split("-"))
            quiet = (start, end)
        return DeliveryConfig(
            sender=s.email_from,
            public_url=s.public_url,
            secret=secret.encode(),
            smtp=smtp,
            consent_mode=s.consent_mode,
            frequency_cap=s.frequency_cap,
            quiet_hours=quiet,
            default_timezone=s.default_timezone,
            webhook_secrets=(webhook,),
            webhook_allow_private=s.webhook_allow_private,
            give_up_hours=s.delivery_give_up_hours,
            concurrency=s.delivery_concurrency,
            dkim=dkim,
            tracking=s.email_tracking,
            meta=_meta(s),
            google=_google(s),
        )

    def advance(self, now: datetime | None = None) -> TickReport:
        when = now or self.clock()
        domain = self.settings.email_from.rsplit("@", 1)[-1].strip(" >")
        with compute_transaction(self.db) as tx:
            plan = Plan.build(load_definitions(tx).definitions)
            return tick(tx, plan, when, email_domain=domain)

    def deliver(self, now: datetime | None = None) -> DrainReport:
        """Drain everything due now, batch after batch — a message waiting for an earlier
        step of the same enrollment goes out in the next batch of the same run."""
        config = self.delivery_config()
        total = DrainReport()
        for _ in range(MAX_DRAIN_BATCHES):
            report = drain(self.db, config, now or self.clock(), self.ingest)
            for name, value in report.to_dict().items():
                setattr(total, name, getattr(total, name) + value)
            if not report.claimed:
                break
        return total

    def run(self, now: datetime | None = None, *, deliver: bool = True) -> dict[str, Any]:
        advanced = self.advance(now)
        result: dict[str, Any] = {"advance": advanced.to_dict()}
        if deliver:
            result["delivery"] = self.deliver(now).to_dict()
        return result

    # --- reading ---------------------------------------------------------------------------

    def trace(self, key: str, customer: str) -> dict[str, Any]:
        """Everything that happened to one customer in one journey, in order, with why."""
        with self.db.transaction() as tx:
            stored_journey(tx, key)
            customer_id = resolve_customer(tx, customer)
            enrollments = tx.execute(
                "SELECT enrollment_id, version, status, step, due_at, entered_at, finished_at, "
                "reason, path, holdout, goal_at FROM enrollments WHERE journey = ? "
                "AND customer_id = ? ORDER BY enrollment_id",
                [key, customer_id],
            )
            log = tx.execute(
                "SELECT logged_at, enrollment_id, version, step, decision, detail FROM journey_log "
                "WHERE journey = ? AND customer_id = ? ORDER BY logged_at, enrollment_id",
                [key, customer_id],
            )
            outbox = tx.execute(
                "SELECT outbox_id, step, channel, state, attempts, reference, sent_at, code, "
                "last_error FROM outbox WHERE journey = ? AND customer_id = ? ORDER BY outbox_id",
                [key, customer_id],
            )
        names = [
            "enrollment_id",
            "version",
            "status",
            "step",
            "due_at",
            "entered_at",
            "finished_at",
            "reason",
            "path",
            "holdout",
            "goal_at",
        ]
        return {
            "journey": key,
            "customer_id": customer_id,
            "enrollments": [_plain(dict(zip(names, r, strict=True))) for r in enrollments],
            "log": [
                _plain(
                    dict(
                        zip(
                            ["at", "enrollment_id", "version", "step", "decision", "detail"],
                            r,
                            strict=True,
                        )
                    )
                )
                for r in log
            ],
            "messages": [
                _plain(
                    dict(
                        zip(
                            MESSAGE_COLUMNS,
                            r,
                            strict=True,
                        )
                    )
                )
                for r in outbox
            ],
            "answer": _answer(log, outbox, enrollments),
        }

    def simulate(
        self, key: str, since: datetime, step_days: float = 1.0, until: datetime | None = None
    ) -> dict[str, Any]:
        """What the journey's current version would have done had it been live since
        `since`: who would have entered, their paths, what each step would have queued.
        Nothing is sent and nothing persistent is written (temp tables only)."""
        if not 0 < step_days <= 366:
            raise InvalidInput(f"step_days: must be more than 0 and at most 366, not {step_days}")
        with compute_transaction(self.db) as tx:
            stored = stored_journey(tx, key)
            plan = Plan.build(load_definitions(tx).definitions)
            return simulate_journey(
                tx,
                plan,
                stored.journey,
                since,
                until or self.clock(),
                step=timedelta(days=step_days),
                version=stored.version,
            )

    def stats(self, key: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            stored = stored_journey(tx, key)
            status = dict(
                tx.execute(
                    "SELECT status, count(*) FROM enrollments WHERE journey = ? GROUP BY status",
                    [key],
                )
            )
            goals = dict(
                tx.execute(
                    "SELECT holdout, count(*) FROM enrollments WHERE journey = ? "
                    "AND goal_at IS NOT NULL GROUP BY holdout",
                    [key],
                )
            )
            groups = dict(
                tx.execute(
                    "SELECT holdout, count(*) FROM enrollments WHERE journey = ? GROUP BY holdout",
                    [key],
                )
            )
            steps = tx.execute(
                "SELECT step, decision, count(*) FROM journey_log WHERE journey = ? "
                "GROUP BY step, decision ORDER BY step, decision",
                [key],
            )
            messages = tx.execute(
                "SELECT step, state, count(*) FROM outbox WHERE journey = ? GROUP BY step, state",
                [key],
            )
            dropped = tx.execute(
                "SELECT o.step, 'bounced', count(*) FROM outbox o WHERE o.journey = ? "
                "AND o.state = 'failed' AND o.code >= 500 AND o.code < 600 GROUP BY o.step "
                "UNION ALL SELECT o.step, 'unsubscribed', count(DISTINCT o.customer_id) "
                "FROM outbox o JOIN consent c ON c.customer_id = o.customer_id "
                "AND c.status = 'withdrawn' AND strpos(c.source, o.reference) > 0 "
                "WHERE o.journey = ? GROUP BY o.step",
                [key, key],
            )
            engagement = tx.execute(
                "SELECT o.step, CASE e.event WHEN 'Email Opened' THEN 'opened' "
                "ELSE 'clicked' END, count(DISTINCT o.outbox_id) FROM outbox o JOIN events e "
                "ON e.customer_id = o.customer_id AND e.event IN ('Email Opened', "
                "'Email Link Clicked') AND e.properties->>'email_id' = o.reference "
                "WHERE o.journey = ? GROUP BY 1, 2",
                [key],
            )
        per_step: dict[str, dict[str, int]] = {s.id: {} for s in stored.journey.steps}
        for step, decision, n in steps:
            if step is not None:
                per_step.setdefault(step, {})[decision] = n
        for step, state, n in messages:
            per_step.setdefault(step, {})[f"messages_{state}"] = n
        for step, name, n in [*engagement, *dropped]:
            per_step.setdefault(step, {})[name] = n
        return {
            "journey": key,
            "version": stored.version,
            "entered": sum(status.values()),
            "statuses": status,
            "goal_reached": sum(goals.values()),
            "uplift": _uplift(
                treated=(groups.get(False, 0), goals.get(False, 0)),
                control=(groups.get(True, 0), goals.get(True, 0)),
            ),
            "steps": per_step,
        }

    # --- consent ---------------------------------------------------------------------------

    def set_consent(
        self, customer: str | int, list_id: str, status: str, *, channel: str = "email", source: str
    ) -> dict[str, Any]:
        if status not in CONSENT:
            raise InvalidInput(f"status must be granted or withdrawn, not '{status}'")
        now = self.clock()
        with self.db.transaction() as tx:
            customer_id = (
                int(customer) if isinstance(customer, int) else resolve_customer(tx, customer)
            )
            tx.execute(
                "DELETE FROM consent WHERE customer_id = ? AND list = ? AND channel = ?",
                [customer_id, list_id, channel],
            )
            tx.execute(
                "INSERT INTO consent VALUES (?, ?, ?, ?, ?, ?)",
                [customer_id, list_id, channel, status, source, now],
            )
            if channel == "audience" and status == "withdrawn":
                _remove_from_audiences(tx, customer_id, now)
        return {"customer_id": customer_id, "list": list_id, "channel": channel, "status": status}

    def unsubscribe(
        self, token: str, *, source: str = "one-click unsubscribe", message: str | None = None
    ) -> dict[str, Any]:
        """Withdraw email consent for the list a signed link names (RFC 8058 POST);
        `message` is the Message-ID the link came in, kept in the source for stats."""
        config_secret = self._unsubscribe_secret()
        customer_id, list_id = verify_unsubscribe(config_secret, token)
        if message:
            source = f"{source} ({message[:200]})"
        return self.set_consent(int(customer_id), list_id, "withdrawn", source=source)

    def resubscribe(self, token: str) -> dict[str, Any]:
        """Grant email consent again for the list a signed link names (preferences page)."""
        customer_id, list_id = verify_unsubscribe(self._unsubscribe_secret(), token)
        return self.set_consent(int(customer_id), list_id, "granted", source="preferences page")

    def track(self, token: str, kind: str) -> str | None:
        """Record an open or a click of a tracked link as a Segment Email-spec event; the
        destination URL for a click (signed, so never an open redirect)."""
        reference, url = verify_link(self._unsubscribe_secret(), token)
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT o.journey, o.step, c.user_id, c.anonymous_id, o.payload FROM outbox o "
                "JOIN customers c ON c.customer_id = o.customer_id WHERE o.reference = ?",
                [reference],
            )
        if rows and self.ingest is not None:
            journey, step, user_id, anonymous_id, payload = rows[0]
            now = self.clock()
            event = "Email Link Clicked" if kind == "click" else "Email Opened"
            minute = now.replace(second=0, microsecond=0).isoformat()
            dedupe = hashlib.sha256(f"{event}|{reference}|{url}|{minute}".encode()).hexdigest()
            body = json.loads(payload) if isinstance(payload, str) else payload
            properties = {
                "email_id": reference,
                "email_subject": body.get("subject"),
                "campaign_id": journey,
                "campaign_name": journey,
                "journey": journey,
                "step": step,
            }
            if url:
                properties["link_url"] = url
            who = {"userId": user_id} if user_id else {"anonymousId": anonymous_id}
            message = {
                "type": "track",
                "event": event,
                **who,
                "messageId": dedupe[:40],
                "timestamp": now.isoformat(),
                "properties": properties,
            }
            self.ingest([message], "email")
        return url

    def preferences(self, token: str) -> dict[str, Any]:
        customer_id, list_id = verify_unsubscribe(self._unsubscribe_secret(), token)
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT list, status, changed_at FROM consent "
                "WHERE customer_id = ? AND channel = 'email'",
                [int(customer_id)],
            )
            email = tx.execute(
                "SELECT email FROM customers WHERE customer_id = ?", [int(customer_id)]
            )
        if not email:
            raise NotFound("this link no longer points to a customer")
        return {
            "email": email[0][0],
            "list": list_id,
            "lists": {lst: status for lst, status, _ in rows},
        }

    def _unsubscribe_secret(self) -> bytes:
        with self.db.transaction() as tx:
            return stored_secret(tx, "unsubscribe").encode()

    def version(self, key: str, version: int) -> Journey:
        with self.db.transaction() as tx:
            return journey_version(tx, key, version)


def _meta(s: Settings) -> MetaAudienceClient | None:
    if s.meta_access_token is None:
        return None
    return MetaAudienceClient(s.meta_access_token.get_secret_value(), base_url=s.meta_api_base)


def _google(s: Settings) -> GoogleCustomerMatchClient | None:
    if not (
        s.google_ads_developer_token and s.google_ads_access_token and s.google_ads_customer_id
    ):
        return None
    return GoogleCustomerMatchClient(
        developer_token=s.google_ads_developer_token.get_secret_value(),
        access_token=s.google_ads_access_token.get_secret_value(),
        customer_id=s.google_ads_customer_id,
        login_customer_id=s.google_ads_login_customer_id,
        base_url=s.google_ads_api_base,
    )


def _webhook_secret() -> str:
    from keepers.delivery.webhooks import generate_secret

    return generate_secret()


def _remove_from_audiences(tx: Any, customer_id: int, now: datetime) -> None:
    """Queue a removal from every ad audience the customer was uploaded to."""
    rows = tx.execute(
        "SELECT journey, version, step, payload FROM outbox WHERE customer_id = ? "
        "AND channel = 'audience' AND state = 'sent'",
        [customer_id],
    )
    seen = set()
    for journey, version, step, payload in rows:
        body = json.loads(payload) if isinstance(payload, str) else payload
        target = (body["platform"], body["audience_id"])
        if body.get("action", "add") != "add" or target in seen:
            continue
        seen.add(target)
        key = f"consent-withdrawn:{customer_id}:{target[0]}:{target[1]}:{now.isoformat()}"
        base = tx.execute("SELECT COALESCE(MAX(outbox_id), 0) FROM outbox")[0][0]
        tx.execute(
            "INSERT INTO outbox VALUES (?, ?, NULL, ?, ?, ?, ?, 'audience', ?, 'pending', 0, ?, "
            "?, ?, NULL, ?, NULL, NULL) ON CONFLICT (idem_key) DO NOTHING",
            [
                base + 1,
                key,
                customer_id,
                journey,
                version,
                step,
                json.dumps({**body, "action": "remove"}),
                now,
                now,
                now,
                "msg_" + hashlib.md5(key.encode()).hexdigest(),
            ],
        )


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _answer(log: list[tuple], outbox: list[tuple], enrollments: list[tuple]) -> str:
    """One sentence: why the customer did or did not get this journey's messages."""
    if not enrollments:
        skipped = [r for r in log if r[4] == "skipped"]
        if skipped:
            return f"never entered: {skipped[-1][5]}"
        return "never triggered: no matching change or event since the journey started"
    blocked = [r for r in outbox if r[3] == "blocked"]
    sent = [r for r in outbox if r[3] == "sent"]
    if blocked:
        return f"{len(sent)} sent; blocked: {blocked[-1][8]}"
    last = enrollments[-1]
    return f"{len(sent)} message(s) sent; enrollment {last[2]}" + (
        f" at step {last[3]}" if last[3] else ""
    )


def _uplift(*, treated: tuple[int, int], control: tuple[int, int]) -> dict[str, Any] | None:
    """Goal rate of treated vs held-out customers, the difference with a 95 % Wald
    interval (normal approximation of two proportions)."""
    (n1, x1), (n0, x0) = treated, control
    if not n1 or not n0:
        return None
    p1, p0 = x1 / n1, x0 / n0
    se = (p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0) ** 0.5
    diff = p1 - p0
    return {
        "treated": {"customers": n1, "goal": x1, "rate": round(p1, 6)},
        "holdout": {"customers": n0, "goal": x0, "rate": round(p0, 6)},
        "uplift": round(diff, 6),
        "ci95": [round(diff - 1.96 * se, 6), round(diff + 1.96 * se, 6)],
    }
