"""The server's clock: an incremental compute every `compute_interval_s`, so stages,
segments and change records follow the events without anyone running `keepers compute`.

One thread, one run at a time; a failed run is logged and retried at the next tick (the
run is one transaction, so a failure leaves the previous state intact)."""

from __future__ import annotations

import logging
import threading

from keepers.services.keepers import Keepers

log = logging.getLogger("keepers.scheduler")


class ComputeScheduler:
    def __init__(self, keepers: Keepers, interval_s: float) -> None:
        self.keepers = keepers
        self.interval_s = interval_s
        self.runs = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keepers-compute", daemon=True)

    def start(self) -> ComputeScheduler:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        try:
            report = self.keepers.compute()
        except Exception:
            self.failures += 1
            log.exception("scheduled compute failed; the next tick retries")
            return
        self.runs += 1
        if report.stage_moves or report.segment_changes:
            log.info(
                "compute run %s: %s stage moves, %s segment changes in %.2f s",
                report.run_id,
                report.stage_moves,
                report.segment_changes,
                report.seconds,
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
