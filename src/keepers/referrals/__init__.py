"""The referral programme: codes, attribution, reward rules, the ledger, fraud checks.

Loyal customers bring the next ones. Keepers gives every customer a code (or adopts the
one the shop already sends as the identify trait `referral_code`), attributes each new
customer to the code they arrived with (`properties.referral_code`, `context.referrer`, or a
`?ref=` link), opens a reward when the referred customer's first order lands, earns it when
the refund window passes (or voids it: refund, fraud, cap), and pays it only when told to.

Modules, in the order a sync runs them:

- `programme` — the rules as validated, versioned data (amount, window, caps, checks);
- `codes` — adopt, generate (set-based, collision-free) and set codes;
- `attribution` — who brought whom, from the event log; identity merges followed;
- `fraud` — self-referral checks: email, device, IP, payment fingerprint (and own code, cap);
- `ledger` — the reward state machine pending → earned → paid / void;
- `metrics` — leaderboard, totals and the lists behind them;
- `announce` — optional `Referral Converted` events so referrers count as advocates;
- `sync` — all of the above in one transaction, idempotent.

Everything per customer is one SQL statement over all customers (DuckDB and PostgreSQL).
"""

from __future__ import annotations

from keepers.referrals.programme import (
    Programme,
    RewardRule,
    StoredProgramme,
    load_programme,
    parse_programme,
    save_programme,
)
from keepers.referrals.sql import normalise_email
from keepers.referrals.sync import sync

__all__ = [
    "Programme",
    "RewardRule",
    "StoredProgramme",
    "load_programme",
    "normalise_email",
    "parse_programme",
    "save_programme",
    "sync",
]
