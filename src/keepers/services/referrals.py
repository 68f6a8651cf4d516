"""Referral use cases with plain-data answers (CLI `--json`, the REST API, the scheduler):
sync, codes, the programme's rules, rewards (list, pay, void), leaderboard, metrics, fraud.

Each call is one transaction. A sync is serialised per store (a process lock for DuckDB,
an advisory lock for PostgreSQL), so two servers or a server and a cron job never open the
same reward twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from keepers.errors import InvalidInput, NotFound
from keepers.referrals import announce, codes, ledger, metrics
from keepers.referrals.programme import load_programme, parse_programme, save_programme
from keepers.referrals.sync import sync
from keepers.services.lifecycle import resolve_customer
from keepers.store.database import Database, Tx

SYNC_LOCK = 0x6B70_5246  # PostgreSQL advisory lock id: "kpRF"
MAX_LIMIT = 10_000
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _process_lock(url: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(url, threading.Lock())


def _customer(tx: Tx, reference: str) -> int:
    """`resolve_customer`, minus its one crash: "²" is a digit that int() refuses."""
    try:
        return resolve_customer(tx, reference)
    except ValueError:
        raise NotFound(f"no customer '{reference}' (try a customer id, userId or email)") from None


def _limit(limit: int) -> int:
    if not 1 <= int(limit) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT:,}, not {limit}")
    return int(limit)


class ReferralService:
    """The referral programme of one store. Time is `clock()`, so tests can pin it."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        ingest: announce.Ingest | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.ingest = ingest  # for the programme's `announce`: events go in like any other

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Tx]:
        """A transaction no other referral writer runs beside."""
        with _process_lock(self.db.url), self.db.transaction() as tx:
            if tx.dialect.name == "postgres":
                tx.execute("SELECT pg_advisory_xact_lock(?)", [SYNC_LOCK])
            yield tx

    # --- the programme ----------------------------------------------------------------------

    def programme(self) -> dict[str, Any]:
        """The rules in force (the defaults until a version is saved)."""
        with self.db.transaction() as tx:
            stored = load_programme(tx)
        return {
            "version": stored.version,
            "actor": stored.actor,
            "created_at": stored.created_at.isoformat() if stored.created_at else None,
            "programme": stored.programme.model_dump(mode="json"),
        }

    def set_programme(self, body: Any, actor: str = "api") -> dict[str, Any]:
        """Check and save new rules; rewards already opened keep the version they had."""
        programme = parse_programme(body)
        with self._writing() as tx:
            version, saved = save_programme(tx, programme, actor=actor, now=self.clock())
        return {"version": version, "saved": saved}

    # --- sync -------------------------------------------------------------------------------

    def sync(self, generate_codes: bool = False) -> dict[str, Any]:
        """Codes, attribution, fraud checks and the ledger brought up to date, at once;
        then, when the programme says `announce`, the referrers' `Referral Converted`
        events (after the commit, so a failed ingest is simply retried next time)."""
        with self._writing() as tx:
            stored = load_programme(tx)
            result = sync(tx, stored, self.clock(), generate_codes=generate_codes)
        result["announced"] = self._announce() if stored.programme.announce else 0
        return result

    def _announce(self) -> int:
        if self.ingest is None:
            return 0
        announced = 0
        while True:
            with self.db.transaction() as tx:
                messages = announce.unannounced(tx, limit=announce.BATCH)
            if not messages:
                return announced
            self.ingest(messages, announce.SOURCE)
            with self._writing() as tx:
                done = announce.mark_announced(tx, messages, self.clock())
            if not done:  # nothing left to mark: never loop on the same batch
                return announced
            announced += done

    # --- codes ------------------------------------------------------------------------------

    def codes(self, customer: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Codes (most referrals first), or one customer's, with their share link."""
        with self.db.transaction() as tx:
            settings = load_programme(tx).programme.codes
            who = _customer(tx, customer) if customer else None
            rows = metrics.list_codes(tx, customer=who, limit=_limit(limit))
            total = tx.execute("SELECT count(*) FROM referral_codes")[0][0]
        if settings.link:
            for row in rows:
                row["link"] = settings.link.replace("{code}", row["code"])
        return {"codes": int(total), "rows": rows}

    def ensure_codes(self, who: str | None = None) -> dict[str, Any]:
        """Give every customer of a kind (identified, buyers, all) without a code one."""
        with self._writing() as tx:
            stored = load_programme(tx)
            now = self.clock()
            adopted = codes.adopt_trait_codes(tx, now)
            generated = codes.ensure_codes(tx, now, stored.programme.codes, who)
        return {**adopted, **generated}

    def set_code(self, customer: str, code: str | None = None) -> dict[str, Any]:
        """Give one customer a chosen code, or a generated one when none is given."""
        with self._writing() as tx:
            now = self.clock()
            who = _customer(tx, customer)
            if code is None:
                programme = load_programme(tx).programme
                codes.ensure_codes(tx, now, programme.codes, "all", only=who)
                chosen = tx.execute(
                    "SELECT min(code) FROM referral_codes WHERE customer_id = ? "
                    "AND disabled_at IS NULL",
                    [who],
                )[0][0]
            else:
                chosen = codes.set_code(tx, who, code, now)
        return {"customer_id": who, "code": chosen}

    def disable_code(self, code: str) -> dict[str, Any]:
        with self._writing() as tx:
            changed = codes.disable_code(tx, code, self.clock())
        return {"code": codes.normalise_code(code), "disabled": changed}

    # --- rewards ----------------------------------------------------------------------------

    def rewards(
        self, status: str | None = None, referrer: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """The ledger, newest first, optionally one status or one referrer's."""
        if status is not None and status not in ledger.STATUSES:
            raise InvalidInput(
                f"status must be one of {', '.join(ledger.STATUSES)}, not '{status}'"
            )
        with self.db.transaction() as tx:
            who = _customer(tx, referrer) if referrer else None
            rows = metrics.list_rewards(tx, status=status, referrer=who, limit=_limit(limit))
            counts = dict(
                tx.execute("SELECT status, count(*) FROM referral_rewards GROUP BY status")
            )
        return {"statuses": {s: int(counts.get(s, 0)) for s in ledger.STATUSES}, "rows": rows}

    def pay(
        self,
        reward_ids: Sequence[str] | None = None,
        referrer: str | None = None,
        all_earned: bool = False,
        reference: str | None = None,
    ) -> dict[str, Any]:
        """Mark earned rewards paid: the named ones, one referrer's, or (explicitly) all.
        Paying is never automatic: money leaves the shop, so someone says so."""
        if not reward_ids and referrer is None and not all_earned:
            raise InvalidInput(
                "reward_ids: name the rewards to pay, or a referrer, or ask for all earned ones"
            )
        if reference is not None and len(reference) > 200:
            raise InvalidInput("reference: at most 200 characters")
        with self._writing() as tx:
            who = _customer(tx, referrer) if referrer else None
            paid = ledger.pay(
                tx,
                self.clock(),
                reward_ids=list(reward_ids) if reward_ids else None,
                referrer=who,
                reference=reference,
            )
        return {"paid": len(paid), "rewards": paid}

    def void(self, reward_ids: Sequence[str], reason: str) -> dict[str, Any]:
        """Void unpaid rewards by hand, with the reason kept on each."""
        with self._writing() as tx:
            voided = ledger.void(tx, self.clock(), reward_ids=list(reward_ids), reason=reason)
        return {"voided": len(voided), "reward_ids": voided}

    # --- numbers ----------------------------------------------------------------------------

    def leaderboard(self, limit: int = 20) -> dict[str, Any]:
        with self.db.transaction() as tx:
            rows = metrics.leaderboard(tx, _limit(limit))
        return {"rows": rows}

    def metrics(self) -> dict[str, Any]:
        with self.db.transaction() as tx:
            return metrics.totals(tx)

    def fraud(self, limit: int = 100) -> dict[str, Any]:
        """Every fraud flag, newest first: the check, the shared value, both customers."""
        with self.db.transaction() as tx:
            rows = metrics.list_flags(tx, limit=_limit(limit))
            counts = dict(
                tx.execute(
                    "SELECT check_name, count(*) FROM referral_fraud_flags GROUP BY check_name"
                )
            )
        return {"checks": {k: int(v) for k, v in sorted(counts.items())}, "rows": rows}

    def customer(self, reference: str) -> dict[str, Any]:
        """One customer's side of the programme: codes, who referred them, whom they
        referred, and their rewards."""
        with self.db.transaction() as tx:
            who = _customer(tx, reference)
            by = tx.execute(
                "SELECT referrer_customer_id, code, how, first_seen_at FROM "
                "referral_attributions WHERE referred_customer_id = ?",
                [who],
            )
            referred = tx.execute(
                "SELECT count(*) FROM referral_attributions WHERE referrer_customer_id = ?",
                [who],
            )[0][0]
            rows = metrics.list_rewards(tx, referrer=who, limit=MAX_LIMIT)
            own = metrics.list_codes(tx, customer=who, limit=100)
        referred_by = None
        if by:
            referrer, code, how, seen = by[0]
            referred_by = {
                "customer_id": referrer,
                "code": code,
                "how": how,
                "first_seen_at": seen.isoformat(),
            }
        return {
            "customer_id": who,
            "codes": own,
            "referred_by": referred_by,
            "referred": int(referred),
            "rewards": rows,
        }
