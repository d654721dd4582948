"""The gauges read from the store, sampled in the background so that a scrape never waits.

Every ``SAMPLE_SECONDS`` each process sets the webhook backlog's age, the open
reconciliation discrepancies by kind and the age of the configuration in
force; each store read is bounded by the store timeout. A scrape only reads
what was last set (in multiprocess mode, the largest value among the live
processes), so a store that is down makes the values stale, never the
scrape slow; the failed samples are counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from api.domain.bills import DiscrepancyKind
from api.store import Store
from api.telemetry import metrics

SAMPLE_SECONDS = 5.0


class StoreGauges:
    def __init__(
        self,
        store: Store,
        config_loaded_at: Callable[[], datetime],
        *,
        timeout: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.config_loaded_at = config_loaded_at
        self.timeout = timeout
        self.clock = clock

    async def sample(self) -> None:
        record = metrics.recorder()
        if not record.enabled:
            return
        now = self.clock()
        record.config_age((now - self.config_loaded_at()).total_seconds())
        try:
            due = await asyncio.wait_for(self.store.webhooks.oldest_due(now), self.timeout)
        except Exception:  # stale, not wrong: the failure is counted
            record.sample_failed("webhook_backlog_age")
        else:
            record.webhook_backlog_age(0.0 if due is None else (now - due).total_seconds())
        try:
            by_kind = await asyncio.wait_for(self.store.bills.open_by_kind(), self.timeout)
        except Exception:
            record.sample_failed("reconciliation_discrepancies_open")
        else:
            record.discrepancies_open(by_kind, [kind.value for kind in DiscrepancyKind])

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_SECONDS)
