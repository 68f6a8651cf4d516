"""Drain the outbox: claim due rows, check governance, deliver, record what happened.

A row's life: `pending` → `sending` (claimed: the attempt is recorded and committed
*before* the side effect) → `sent`, or back to `pending` with a later `next_attempt_at`
(a transient failure, quiet hours), or `failed` (permanent: a 5xx SMTP reply, a 4xx HTTP
answer), `blocked` (governance said no) or `dead` (transient failures for longer than
`give_up_hours`). A worker killed mid-send leaves the row `sending`; once its lease ends
the row is claimed again and sent with the same Message-ID / webhook-id, so a duplicate —
possible only for a crash between the receiver's acceptance and our commit — is
recognisable by the receiver. That is at-least-once delivery with bounded duplicates.

Governance, checked for every attempt right before sending (so an unsubscribe while a
message waits stops it): a customer and an address; the address not suppressed (hard
bounces, complaints); consent for the list and channel — in `opt_in` mode a granted
record, in `opt_out` mode no withdrawal (and no `Unsubscribed` event); marketing email
only: the frequency cap (sent in the last 7 days) and quiet hours in the customer's time
zone (`timezone` trait, else the default), which reschedule rather than drop. Every block
and every reschedule is logged in `journey_log` with its reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

from keepers.delivery import Outcome
from keepers.delivery.audiences import GoogleCustomerMatchClient, Member, MetaAudienceClient
from keepers.delivery.email import (
    EmailTemplate,
    OutgoingEmail,
    TemplateError,
    compose_bytes,
    dkim_sign_bytes,
    render,
)
from keepers.delivery.email import sign_unsubscribe as sign_token
from keepers.delivery.smtp import SmtpPool, SmtpSettings
from keepers.delivery.tracking import track_html
from keepers.delivery.webhooks import deliver as deliver_webhook
from keepers.engine.compute import utc
from keepers.store.database import Database, Tx

T = TypeVar("T")
WEEK = timedelta(days=7)
Ingest = Callable[[list[dict[str, Any]], str], Any]  # messages, source → IngestReport
BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 6 * 3600.0


@dataclass(frozen=True)
class DeliveryConfig:
    """How the worker delivers; built from the settings by the service."""

    sender: str
    public_url: str
    secret: bytes
    smtp: SmtpSettings | None = None
    consent_mode: str = "opt_out"
    frequency_cap: int = 3
    quiet_hours: tuple[int, int] | None = None
    default_timezone: str = "UTC"
    webhook_secrets: tuple[str, ...] = ()
    webhook_allow_private: bool = False
    give_up_hours: float = 96.0
    lease_seconds: float = 300.0
    batch: int = 500
    concurrency: int = 8
    dkim: tuple[str, str, bytes] | None = None  # selector, domain, private key PEM
    tracking: bool = True  # opens and clicks come back as events
    meta: MetaAudienceClient | None = None
    google: GoogleCustomerMatchClient | None = None


@dataclass
class DrainReport:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    blocked: int = 0
    rescheduled: int = 0
    dead: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, int]:
        return {
            "claimed": self.claimed,
            "sent": self.sent,
            "retried": self.retried,
            "failed": self.failed,
            "blocked": self.blocked,
            "rescheduled": self.rescheduled,
            "dead": self.dead,
        }


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run async delivery from sync code, also when this thread already runs an event loop
    (a notebook, a browser-test driver): then in a short-lived worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def address_hash(address: str) -> str:
    """Suppressions keep a hash, so they survive the customer's erasure without the address."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def unsubscribe_url(
    config: DeliveryConfig, customer_id: int, list_id: str, message: str | None = None
) -> str:
    """The one-click link; `message` (the Message-ID) only attributes the unsubscribe to
    the email it came from in journey stats — the signed token alone decides who and what."""
    token = sign_token(config.secret, str(customer_id), list_id)
    query = f"?{urlencode({'m': message})}" if message else ""
    return f"{config.public_url.rstrip('/')}/u/{token}{query}"


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(BACKOFF_FIRST_S * 2 ** max(attempts - 1, 0), BACKOFF_MAX_S))


# --- claim ----------------------------------------------------------------------------------


def claim(tx: Tx, now: datetime, config: DeliveryConfig) -> list[dict[str, Any]]:
    """Mark up to `batch` due rows `sending` (attempts + 1) and return them with what
    governance needs. The caller commits before delivering. A row waits while an earlier
    row of the same enrollment is still pending or sending, so a customer's messages arrive
    in step order even through a long relay outage."""
    stale = now - timedelta(seconds=config.lease_seconds)
    skip = " FOR UPDATE SKIP LOCKED" if tx.dialect.name == "postgres" else ""
    ids = [
        r[0]
        for r in tx.execute(
            "SELECT outbox_id FROM outbox o WHERE ((state = 'pending' AND next_attempt_at <= ?) "
            "OR (state = 'sending' AND updated_at <= ?)) AND NOT EXISTS (SELECT 1 FROM outbox p "
            "WHERE p.enrollment_id = o.enrollment_id AND p.outbox_id < o.outbox_id "
            "AND p.state IN ('pending', 'sending')) ORDER BY next_attempt_at, outbox_id "
            f"LIMIT ?{skip}",
            [now, stale, config.batch],
        )
    ]
    if not ids:
        return []
    listed = ", ".join(str(int(i)) for i in ids)
    tx.execute(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ? "
        f"WHERE outbox_id IN ({listed})",
        [now],
    )
    rows = tx.execute(
        "SELECT o.outbox_id, o.channel, o.payload, o.customer_id, o.journey, o.version, o.step, "
        "o.reference, o.attempts, o.enrollment_id, o.created_at, c.email, c.user_id, "
        "c.anonymous_id, "
        "c.traits, c.merged_into FROM outbox o LEFT JOIN customers c "
        f"ON c.customer_id = o.customer_id WHERE o.outbox_id IN ({listed}) ORDER BY o.outbox_id"
    )
    columns = [
        "outbox_id",
        "channel",
        "payload",
        "customer_id",
        "journey",
        "version",
        "step",
        "reference",
        "attempts",
        "enrollment_id",
        "created_at",
        "email",
        "user_id",
        "anonymous_id",
        "traits",
        "merged_into",
    ]
    out = []
    for row in rows:
        item = dict(zip(columns, row, strict=True))
        item["payload"] = _json(item["payload"]) or {}
        item["traits"] = _json(item["traits"]) or {}
        out.append(item)
    _attach_governance(tx, out, now, config)
    return out


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _attach_governance(
    tx: Tx, rows: list[dict[str, Any]], now: datetime, config: DeliveryConfig
) -> None:
    """Consent, suppression, recent sends and stage/traits for the claimed customers —
    one query each for the whole batch."""
    customers = sorted({int(r["customer_id"]) for r in rows})
    listed = ", ".join(map(str, customers))
    consent = {
        (c, lst, ch): status
        for c, lst, ch, status in tx.execute(
            "SELECT customer_id, list, channel, status FROM consent "
            f"WHERE customer_id IN ({listed})"
        )
    }
    unsubscribed = {
        r[0]
        for r in tx.execute(
            "SELECT DISTINCT customer_id FROM events WHERE event = 'Unsubscribed' "
            f"AND customer_id IN ({listed})"
        )
    }
    hashes = {address_hash(r["email"]) for r in rows if r.get("email")}
    suppressed = set()
    if hashes:
        quoted = ", ".join(f"'{h}'" for h in hashes)
        suppressed = {
            r[0]
            for r in tx.execute(
                f"SELECT address_hash FROM suppressions WHERE address_hash IN ({quoted})"
            )
        }
    recent = dict(
        tx.execute(
            "SELECT customer_id, count(*) FROM outbox WHERE channel = 'email' AND state = 'sent' "
            f"AND sent_at > ? AND customer_id IN ({listed}) GROUP BY customer_id",
            [now - WEEK],
        )
    )
    state: dict[int, dict[str, Any]] = {}
    has_state = tx.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'customer_state'"
    )[0][0]
    if has_state:
        cursor_rows = tx.fetch_arrow(
            f"SELECT * FROM customer_state WHERE customer_id IN ({listed})"
        ).to_pylist()
        state = {int(r["customer_id"]): r for r in cursor_rows}
    for r in rows:
        cid = int(r["customer_id"])
        r["consent"] = {k[1:]: v for k, v in consent.items() if k[0] == cid}
        r["unsubscribed"] = cid in unsubscribed
        r["suppressed"] = bool(r.get("email")) and address_hash(r["email"]) in suppressed
        r["sent_this_week"] = int(recent.get(cid, 0))
        r["state"] = {k: v for k, v in state.get(cid, {}).items() if not k.startswith("_")}


def _decide(
    rows: list[dict[str, Any]], now: datetime, config: DeliveryConfig
) -> list[tuple[str, str]]:
    """Governance for a claimed batch in order: a marketing email let through counts
    against the frequency cap of the customer's later rows in the same batch."""
    passed: dict[int, int] = {}
    out = []
    for row in rows:
        cid = int(row["customer_id"])
        row["sent_this_week"] += passed.get(cid, 0)
        verdict = governance(row, now, config)
        marketing = row["channel"] == "email" and not row["payload"].get("transactional")
        if verdict[0] == "send" and marketing:
            passed[cid] = passed.get(cid, 0) + 1
        out.append(verdict)
    return out


def governance(row: dict[str, Any], now: datetime, config: DeliveryConfig) -> tuple[str, str]:
    """("send", "") or ("block", reason) or ("later", ISO time) for one claimed row."""
    channel = row["channel"]
    if channel == "email" and row.get("merged_into") is not None:
        return "block", "the customer was merged into another"
    if channel == "email":
        if not row.get("email"):
            return "block", "the customer has no email address"
        payload = row["payload"]
        lst = payload.get("list", "marketing")
        status = row["consent"].get((lst, "email"))
        if row["suppressed"]:
            return "block", "address suppressed (bounce, complaint or unsubscribe)"
        if status == "withdrawn":
            return "block", f"consent withdrawn for list '{lst}'"
        if config.consent_mode == "opt_in" and status != "granted":
            return "block", f"no consent for list '{lst}' (opt-in mode)"
        if row["unsubscribed"] and not payload.get("transactional"):
            return "block", "the customer sent 'Unsubscribed'"
        if not payload.get("transactional"):
            if config.frequency_cap and row["sent_this_week"] >= config.frequency_cap:
                return "block", (
                    f"frequency cap: {row['sent_this_week']} marketing emails in 7 days "
                    f"(cap {config.frequency_cap})"
                )
            later = _after_quiet_hours(row, now, config)
            if later is not None:
                return "later", later.isoformat()
    adding = channel == "audience" and row["payload"].get("action", "add") == "add"
    if adding and not ad_consent(row, config):
        return "block", "no consent for ad audiences"
    return "send", ""


def ad_consent(row: dict[str, Any], config: DeliveryConfig) -> bool:
    """Consent for ad audiences: list 'ads', channel 'audience' (removals need none)."""
    status = row["consent"].get(("ads", "audience"))
    return status == "granted" or (config.consent_mode == "opt_out" and status != "withdrawn")


def _zone(row: dict[str, Any], config: DeliveryConfig) -> ZoneInfo:
    for name in (row["traits"].get("timezone"), config.default_timezone, "UTC"):
        if isinstance(name, str):
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _after_quiet_hours(
    row: dict[str, Any], now: datetime, config: DeliveryConfig
) -> datetime | None:
    """When quiet hours end, if `now` falls in them for this customer."""
    if not config.quiet_hours:
        return None
    start, end = config.quiet_hours
    local = now.astimezone(_zone(row, config))
    hour = local.hour
    quiet = (start <= hour or hour < end) if start > end else (start <= hour < end)
    if not quiet:
        return None
    resume = local.replace(hour=end, minute=0, second=0, microsecond=0)
    if resume <= local:
        resume += timedelta(days=1)
    return utc(resume)


# --- deliver --------------------------------------------------------------------------------


def _variables(row: dict[str, Any], config: DeliveryConfig, list_id: str) -> dict[str, Any]:
    state = row["state"]
    return {
        **{k: v for k, v in state.items() if k not in ("segments",)},
        "customer": {"id": row["customer_id"], "email": row["email"], "user_id": row["user_id"]},
        "email": row["email"],
        "traits": row["traits"],
        "stage": state.get("stage"),
        "unsubscribe_url": unsubscribe_url(
            config, int(row["customer_id"]), list_id, row["reference"]
        ),
        "journey": row["journey"],
    }


def _build_email(row: dict[str, Any], config: DeliveryConfig) -> OutgoingEmail | Outcome:
    """The wire form of one email row (rendered, tracked, composed as bytes, signed), or
    the failed Outcome a broken template or an address the message cannot carry leads to."""
    payload = row["payload"]
    list_id = payload.get("list", "marketing")
    try:
        rendered = render(
            EmailTemplate(payload["subject"], payload["html"], payload.get("text")),
            _variables(row, config, list_id),
        )
        if config.tracking:
            rendered = replace(
                rendered,
                html=track_html(
                    rendered.html,
                    base_url=config.public_url,
                    secret=config.secret,
                    reference=row["reference"],
                    keep=f"{config.public_url.rstrip('/')}/u/",
                ),
            )
        domain = config.sender.rsplit("@", 1)[-1].strip(" >")
        message = compose_bytes(
            rendered,
            sender=config.sender,
            to=row["email"],
            message_id=row["reference"],
            # RFC 8058 headers need an https link; without one only the body link remains
            unsubscribe_url=None
            if payload.get("transactional") or not config.public_url.startswith("https://")
            else unsubscribe_url(config, int(row["customer_id"]), list_id, row["reference"]),
            list_id=None if payload.get("transactional") else f"{list_id}.{domain}",
            extra_headers={"X-Keepers-Journey": f"{row['journey']}/{row['step']}"},
        )
        if config.dkim is not None:
            selector, dkim_domain, key = config.dkim
            signed = dkim_sign_bytes(
                message.data, selector=selector, domain=dkim_domain, private_key_pem=key
            )
            message = replace(message, data=signed)
    except TemplateError as exc:
        return Outcome("failed", f"template: {exc.message}")
    except Exception as exc:  # an address or header the message cannot carry
        message_text = getattr(exc, "message", str(exc))
        return Outcome("failed", f"cannot build the message: {message_text}")
    return message


async def _deliver_email(
    row: dict[str, Any], config: DeliveryConfig, pool: SmtpPool | None, built: Built
) -> Outcome:
    if pool is None:
        return Outcome("retry", "no SMTP server configured (KEEPERS_SMTP_HOST)")
    message = built.pop(int(row["outbox_id"]), None) or _build_email(row, config)
    if isinstance(message, Outcome):
        return message
    return await pool.send(message)


async def _deliver_webhook(row: dict[str, Any], config: DeliveryConfig) -> Outcome:
    payload = row["payload"]
    body = payload.get("body") or {
        "type": "journey.step",
        "journey": row["journey"],
        "version": row["version"],
        "step": row["step"],
        "customer": {
            "id": row["customer_id"],
            "user_id": row["user_id"],
            "email": row["email"],
            "stage": row["state"].get("stage"),
        },
        "queued_at": utc(row["created_at"]).isoformat(),
    }
    if not config.webhook_secrets:
        return Outcome("failed", "no webhook signing secret")
    return await deliver_webhook(
        payload["url"],
        json.dumps(body, sort_keys=True, default=str).encode(),
        webhook_id=row["reference"],
        secrets=config.webhook_secrets,
        allow_private=config.webhook_allow_private,
    )


def _member(row: dict[str, Any], config: DeliveryConfig) -> Member:
    traits = row["traits"]

    def text(*names: str) -> str | None:
        for name in names:
            value = traits.get(name)
            if isinstance(value, str | int) and str(value).strip():
                return str(value)
        return None

    address = traits.get("address") if isinstance(traits.get("address"), dict) else {}
    return Member(
        email=row.get("email"),
        phone=text("phone"),
        first_name=text("first_name", "firstName"),
        last_name=text("last_name", "lastName"),
        country=text("country") or address.get("country"),
        zip=text("zip", "postal_code") or address.get("postal_code"),
        external_id=row.get("user_id"),
        ad_consent=ad_consent(row, config),
    )


async def _deliver_audiences(
    rows: list[dict[str, Any]], config: DeliveryConfig
) -> dict[int, Outcome]:
    """One upload per (platform, audience, action): the platforms take batches."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        p = row["payload"]
        groups.setdefault((p["platform"], p["audience_id"], p.get("action", "add")), []).append(row)
    out: dict[int, Outcome] = {}
    for (platform, audience, action), members in groups.items():
        client = config.meta if platform == "meta" else config.google
        if client is None:
            setting = "KEEPERS_META_ACCESS_TOKEN" if platform == "meta" else "KEEPERS_GOOGLE_ADS_*"
            outcome = Outcome("retry", f"{platform} audiences are not configured ({setting})")
        else:
            upload = client.add if action == "add" else client.remove
            outcome = await upload(audience, [_member(r, config) for r in members])
        for row in members:
            out[int(row["outbox_id"])] = outcome
    return out


Built = dict[int, "OutgoingEmail | Outcome"]  # outbox id → the email built ahead


async def _deliver_all(
    rows: list[dict[str, Any]], config: DeliveryConfig, pool: SmtpPool | None, built: Built
) -> list[Outcome]:
    gate = asyncio.Semaphore(config.concurrency)

    async def one(row: dict[str, Any]) -> Outcome:
        async with gate:
            if row["channel"] == "email":
                return await _deliver_email(row, config, pool, built)
            return await _deliver_webhook(row, config)

    single = [r for r in rows if r["channel"] in ("email", "webhook")]
    done = dict(
        zip(
            (int(r["outbox_id"]) for r in single),
            await asyncio.gather(*(one(r) for r in single)),
            strict=True,
        )
    )
    done.update(await _deliver_audiences([r for r in rows if r["channel"] == "audience"], config))
    return [done[int(r["outbox_id"])] for r in rows]


def _deliver_traits(rows: list[dict[str, Any]], ingest: Ingest | None) -> dict[int, Outcome]:
    """Trait updates become identify calls through ingest, with the outbox reference as
    messageId: a retry after a crash is deduplicated by the store."""
    if ingest is None:
        return {int(r["outbox_id"]): Outcome("retry", "no ingest available here") for r in rows}
    messages = []
    for row in rows:
        who = {"userId": row["user_id"]} if row["user_id"] else {"anonymousId": row["anonymous_id"]}
        action = row["payload"]
        messages.append(
            {
                "type": "identify",
                **who,
                "messageId": row["reference"],
                "traits": {action["key"]: action.get("value")},
                "context": {"library": {"name": "keepers-journeys"}},
            }
        )
    report = ingest(messages, "journeys")
    rejected = {index: message for index, _, message in report.rejected}
    return {
        int(row["outbox_id"]): Outcome("failed", rejected[i])
        if i in rejected
        else Outcome("sent", "trait recorded", reference=row["reference"])
        for i, row in enumerate(rows)
    }


# --- record ---------------------------------------------------------------------------------

RESULT_SCHEMA = pa.schema(
    [
        ("outbox_id", pa.int64()),
        ("state", pa.string()),
        ("next_attempt_at", pa.timestamp("us", tz="UTC")),
        ("sent_at", pa.timestamp("us", tz="UTC")),
        ("code", pa.int32()),
        ("last_error", pa.string()),
        ("decision", pa.string()),
    ]
)


def _record(
    tx: Tx,
    rows: list[dict[str, Any]],
    results: list[tuple[str, Any, Any, Any, str, str]],
    now: datetime,
) -> None:
    """Write every row's new state and its log line in a few set-based statements."""
    table = pa.table(
        {
            "outbox_id": [int(r["outbox_id"]) for r in rows],
            "state": [x[0] for x in results],
            "next_attempt_at": [x[1] for x in results],
            "sent_at": [x[2] for x in results],
            "code": [x[3] for x in results],
            "last_error": [x[4] for x in results],
            "decision": [x[5] for x in results],
        },
        schema=RESULT_SCHEMA,
    )
    tx.stage("_kp_results", table)
    tx.execute(
        "UPDATE outbox SET state = r.state, "
        "next_attempt_at = COALESCE(r.next_attempt_at, outbox.next_attempt_at), "
        "sent_at = r.sent_at, code = r.code, last_error = r.last_error, updated_at = ? "
        "FROM _kp_results r WHERE outbox.outbox_id = r.outbox_id",
        [now],
    )
    tx.execute(
        "INSERT INTO journey_log SELECT o.enrollment_id, o.customer_id, o.journey, o.version, "
        "o.step, ?, r.decision, r.last_error FROM _kp_results r "
        "JOIN outbox o ON o.outbox_id = r.outbox_id",
        [now],
    )


def drain(
    db: Database, config: DeliveryConfig, now: datetime, ingest: Ingest | None = None
) -> DrainReport:
    """One batch: claim (committed), then check, deliver and record (committed) group by
    group. Emails and webhooks go out at most `concurrency` to a group, each group recorded
    before the next is sent, so a worker that dies mid-batch leaves at most `concurrency`
    messages delivered but unrecorded — the only ones sent again (same id) after its lease.
    `ingest` stores Segment messages (trait updates)."""
    now = utc(now)
    report = DrainReport()
    with db.transaction() as tx:
        rows = claim(tx, now, config)
    if not rows:
        return report
    report.claimed = len(rows)
    return run_coroutine(_drain_claimed(db, rows, config, now, ingest, report))


async def _drain_claimed(
    db: Database,
    rows: list[dict[str, Any]],
    config: DeliveryConfig,
    now: datetime,
    ingest: Ingest | None,
    report: DrainReport,
) -> DrainReport:
    """Deliver and record the claimed rows group by group, over SMTP sessions kept open
    for the whole batch. A group is sent only once the one before is recorded; while that
    record is written (on a thread: the database does not hold the interpreter), the next
    group's emails are built — rendering, composing and signing send nothing."""
    decisions = _decide(rows, now, config)
    single = [
        i
        for i, (row, (verdict, _)) in enumerate(zip(rows, decisions, strict=True))
        if verdict == "send" and row["channel"] in ("email", "webhook")
    ]
    size = max(1, config.concurrency)
    groups = [sorted(set(range(len(rows))) - set(single))]
    groups += [single[i : i + size] for i in range(0, len(single), size)]
    groups = [g for g in groups if g]
    pool = SmtpPool(config.smtp) if config.smtp is not None else None
    built: Built = {}

    def build(group: list[int]) -> None:
        for i in group:
            if pool is not None and rows[i]["channel"] == "email" and decisions[i][0] == "send":
                built[int(rows[i]["outbox_id"])] = _build_email(rows[i], config)

    loop = asyncio.get_running_loop()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keepers-record")
    try:
        for n, group in enumerate(groups):
            picked = [rows[i] for i in group]
            picked_decisions = [decisions[i] for i in group]
            results, suppress = await _outcomes(
                picked, picked_decisions, now, config, ingest, report, pool, built
            )
            written = loop.run_in_executor(writer, _write, db, picked, results, suppress, now)
            if n + 1 < len(groups):
                build(groups[n + 1])
            await written
    finally:
        writer.shutdown(wait=True)
        if pool is not None:
            await pool.close()
    return report


async def _outcomes(
    rows: list[dict[str, Any]],
    decisions: list[tuple[str, str]],
    now: datetime,
    config: DeliveryConfig,
    ingest: Ingest | None,
    report: DrainReport,
    pool: SmtpPool | None,
    built: Built,
) -> tuple[list[tuple[str, Any, Any, Any, str, str]], list[str]]:
    """Deliver what governance let through; every row's outcome, and addresses to suppress."""
    to_send = [r for r, (verdict, _) in zip(rows, decisions, strict=True) if verdict == "send"]
    outside = [r for r in to_send if r["channel"] != "trait"]
    delivered = dict(
        zip(
            (int(r["outbox_id"]) for r in outside),
            await _deliver_all(outside, config, pool, built) if outside else [],
            strict=True,
        )
    )
    delivered.update(_deliver_traits([r for r in to_send if r["channel"] == "trait"], ingest))
    results = []
    suppress: list[str] = []
    for row, (verdict, why) in zip(rows, decisions, strict=True):
        channel = row["channel"]
        if verdict == "block":
            results.append(("blocked", None, None, None, why, f"{channel} blocked"))
            report.blocked += 1
            continue
        if verdict == "later":
            at = datetime.fromisoformat(why)
            results.append(
                ("pending", at, None, None, f"quiet hours until {why}", f"{channel} rescheduled")
            )
            report.rescheduled += 1
            continue
        outcome = delivered[int(row["outbox_id"])]
        results.append(_result(row, outcome, now, config, report))
        if outcome.suppress and row.get("email"):
            suppress.append(address_hash(row["email"]))
    return results, suppress


def _write(
    db: Database,
    rows: list[dict[str, Any]],
    results: list[tuple[str, Any, Any, Any, str, str]],
    suppress: list[str],
    now: datetime,
) -> None:
    """Record every row's outcome and the addresses to suppress (committed)."""
    with db.transaction() as tx:
        _record(tx, rows, results, now)
        for h in sorted(set(suppress)):
            tx.execute(
                "INSERT INTO suppressions VALUES (?, 'email', 'hard bounce', ?) "
                "ON CONFLICT DO NOTHING",
                [h, now],
            )


def _result(
    row: dict[str, Any],
    outcome: Outcome,
    now: datetime,
    config: DeliveryConfig,
    report: DrainReport,
) -> tuple[str, Any, Any, Any, str, str]:
    channel = row["channel"]
    if outcome.status == "sent":
        report.sent += 1
        return ("sent", None, now, outcome.code, outcome.detail, f"{channel} sent")
    if outcome.status == "failed":
        report.failed += 1
        return ("failed", None, None, outcome.code, outcome.detail, f"{channel} failed")
    age = now - utc(row["created_at"])
    if age > timedelta(hours=config.give_up_hours):
        report.dead += 1
        return ("dead", None, None, outcome.code, outcome.detail, f"{channel} gave up")
    wait = backoff(int(row["attempts"]))
    if outcome.retry_after:
        wait = max(wait, timedelta(seconds=outcome.retry_after))
    report.retried += 1
    return ("pending", now + wait, None, outcome.code, outcome.detail, f"{channel} will retry")
