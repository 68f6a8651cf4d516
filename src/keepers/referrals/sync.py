"""One referral sync: from the event log to an up-to-date ledger, in one transaction.

The order matters and is fixed: merges first (so every later step sees one profile per
person), then codes (a code must exist before an event can be attributed through it),
attribution, fraud checks (so a flagged pair's reward is void from the start instead of
pending for a while), opening rewards, and settling them (fraud, refunds, duplicates,
then earning — voids before earning, so a refund inside the window always wins).

Running it twice changes nothing the second time: every insert skips what exists, every
update only moves rows that are still in the status it starts from, and times are taken
from the data (order time, end of the window) where the business decides them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from keepers.referrals import attribution, codes, fraud, ledger
from keepers.referrals.programme import StoredProgramme
from keepers.store.database import Tx


def sync(
    tx: Tx, stored: StoredProgramme, now: datetime, *, generate_codes: bool = False
) -> dict[str, Any]:
    """Run every step in order; the counts of what each one changed."""
    programme = stored.programme
    merged = attribution.follow_merges(tx)
    adopted = codes.adopt_trait_codes(tx, now)
    generated = codes.ensure_codes(tx, now, programme.codes) if generate_codes else {"generated": 0}
    attributed = attribution.attribute(tx, now)
    flags = fraud.check_pairs(tx, programme.fraud, now)
    opened = {"opened": 0, "capped": 0, "flagged": 0}
    for rule in programme.rules:
        since = stored.since(rule.key)
        found = ledger.open_rewards(tx, rule, stored.version, programme.fraud, now, since)
        for key, n in found.items():
            opened[key] += n
    settled = {
        "voided_fraud": ledger.void_flagged(tx, programme.fraud, now),
        "voided_refunded": ledger.void_refunded(tx, programme, now),
        "voided_duplicates": ledger.void_duplicates(tx, now),
        "earned": ledger.earn(tx, now),
    }
    return {
        "as_of": now.isoformat(),
        "programme_version": stored.version,
        "merged_profiles": merged,
        "codes": {**adopted, **generated},
        **attributed,
        "fraud_flags": flags,
        "rewards": {**opened, **settled},
    }
