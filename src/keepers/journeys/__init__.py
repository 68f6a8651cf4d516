"""The journey engine: enroll customers from lifecycle changes, events and rules, advance
them step by step set-based, and queue every side effect in the outbox; the outbox worker
checks governance and delivers through `keepers.delivery`."""
