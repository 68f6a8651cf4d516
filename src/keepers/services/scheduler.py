"""The server's clock: every `compute_interval_s` the CRM deals and the referral programme
are synced from the event log and then an incremental compute runs, so deals, rewards,
stages, segments and change records follow the events without anyone running a command;
and every `journey_interval_s` a journey run (enroll, advance, deliver the outbox).

One thread, one run at a time; a failed run is logged and retried at the next tick (the
run is one transaction, so a failure leaves the previous state intact)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from keepers.services.keepers import Keepers

log = logging.getLogger("keepers.scheduler")


class ComputeScheduler:
    def __init__(
        self,
        keepers: Keepers,
        interval_s: float,
        after_compute: Callable[[], None] | None = None,
    ) -> None:
        self.keepers = keepers
        self.interval_s = interval_s
        self.after_compute = after_compute  # e.g. the dashboard warming its reports
        self.runs = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keepers-compute", daemon=True)
        self._journey_thread = threading.Thread(
            target=self._journey_loop, name="keepers-journeys", daemon=True
        )

    def start(self) -> ComputeScheduler:
        if self.interval_s > 0:
            self._thread.start()
        if self.keepers.settings.journey_interval_s > 0:
            self._journey_thread.start()
        return self

    def _journey_loop(self) -> None:
        while not self._stop.wait(self.keepers.settings.journey_interval_s):
            self.journeys()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        self.sync()
        try:
            report = self.keepers.compute()
        except Exception:
            self.failures += 1
            log.exception("scheduled compute failed; the next tick retries")
            return
        self.runs += 1
        if self.after_compute is not None:
            try:
                self.after_compute()
            except Exception:
                log.exception("after-compute hook failed")
        if report.stage_moves or report.segment_changes:
            log.info(
                "compute run %s: %s stage moves, %s segment changes in %.2f s",
                report.run_id,
                report.stage_moves,
                report.segment_changes,
                report.seconds,
            )

    def sync(self) -> None:
        """Deals and referrals first: what they announce (`Account Deal Won`, `Referral
        Converted`) is then in the compute that follows. Each is idempotent."""
        for name, run in (
            ("deals", lambda: self.keepers.sales.sync_from_events()),
            ("referrals", lambda: self.keepers.referrals.sync()),
        ):
            try:
                run()
            except Exception:
                self.failures += 1
                log.exception("scheduled %s sync failed; the next tick retries", name)

    def journeys(self) -> None:
        """Advance journeys and drain the outbox (on its own schedule)."""
        try:
            result = self.keepers.journeys.run()
        except Exception:
            self.failures += 1
            log.exception("scheduled journey run failed; the next tick retries")
            return
        delivery = result.get("delivery", {})
        if result["advance"]["moved"] or delivery.get("claimed"):
            log.info("journeys: %s, delivery: %s", result["advance"], delivery)

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._journey_thread):
            if thread.is_alive():
                thread.join(timeout=60)
