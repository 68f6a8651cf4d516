"""A journey worker process for the kill -9 tests in `test_journey_faults.py`.

It is what `keepers serve` does on its journey interval — advance, then drain the outbox —
in a loop, on a store named by the ordinary `KEEPERS_*` settings, with two test-only knobs
read from the environment:

- `KEEPERS_TEST_NOW`: the fake clock (ISO time), fixed for the life of the process; each
  restart gets a later one, so waits are crossed and rows a killed worker left `sending`
  are past their lease;
- `KEEPERS_TEST_LEASE_S`: the outbox lease (there is no setting for it), so a dead worker's
  rows are claimed again by the next one.

Each pass prints one JSON line; the process runs until it is killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from datetime import datetime

from keepers.journeys.outbox import drain
from keepers.services.keepers import Keepers
from keepers.settings import Settings


def main() -> int:
    now = datetime.fromisoformat(os.environ["KEEPERS_TEST_NOW"])
    lease = float(os.environ["KEEPERS_TEST_LEASE_S"])
    keepers = Keepers.open(Settings(), clock=lambda: now)
    try:
        service = keepers.journeys
        # One send in flight at a time: a kill can then catch at most one message between
        # the relay's acceptance and our commit (the bound the test checks).
        config = dataclasses.replace(service.delivery_config(), lease_seconds=lease, concurrency=1)
        while True:
            advanced = service.advance(now)
            drained = drain(keepers.db, config, now, keepers.ingest_messages)
            print(json.dumps({"moved": advanced.moved, **drained.to_dict()}), flush=True)
            if not drained.claimed:
                time.sleep(0.05)
    finally:
        keepers.close()


if __name__ == "__main__":
    sys.exit(main())
