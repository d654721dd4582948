"""Cluster jobs: a periodic sweep run by one process of the cluster at a time.

Every API process runs the same background loops (api/web/app.py). A sweep
that must happen once per interval for the whole cluster (the expiry of
unpaid orders, the re-query of PENDING attempts) goes through
:meth:`ClusterJob.run`: it takes the sweep's lease in the store
(api/store/leases.py) only when the last run finished at least ``every`` ago,
renews it every third of ``ttl`` while the sweep runs, and on the way out frees
it and stamps when the run finished (a process that is stopping mid-sweep frees
it unstamped, so the sweep is due again at once elsewhere). A process that loses the race does
nothing; one that dies mid-sweep leaves its lease to expire after ``ttl`` and
the next process to look runs the sweep again. A holder that finds its lease
taken over (it stalled for longer than ``ttl``) stops its sweep there.

Each piece of work a sweep does is also guarded on its own (an order moves to
EXPIRED only from PENDING_PAYMENT, a platform's answer is applied exactly
once), so two sweeps overlapping after a stall cost a duplicate call to a
platform, never a duplicate effect. docs/architecture.md ("Background jobs")
argues the granularity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from api.store.leases import Leases

log = logging.getLogger("branchpay.jobs")


def process_owner() -> str:
    """This process's name on the leases it holds: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ClusterJob:
    """One named sweep, run at most once per ``every`` across every process sharing ``leases``."""

    leases: Leases
    name: str
    every: timedelta
    ttl: timedelta
    owner: str = field(default_factory=process_owner)
    clock: Callable[[], datetime] = _utcnow

    @property
    def lease_name(self) -> str:
        return f"job:{self.name}"

    async def run(self, sweep: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``sweep`` if this process takes the lease; False when it was not due or held."""
        if not await self.leases.acquire_due(
            self.lease_name, self.owner, self.ttl, self.clock(), self.every
        ):
            return False
        work = asyncio.ensure_future(sweep())
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=self.ttl.total_seconds() / 3)
                if done:
                    break
                if not await self.leases.renew(self.lease_name, self.owner, self.ttl, self.clock()):
                    log.warning("job %s: lease lost mid-sweep; stopping this sweep", self.name)
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    return False
        except asyncio.CancelledError:
            # This process stops: the sweep is due again at once for the others.
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            with contextlib.suppress(Exception):  # bounded: a store that is down may not answer
                await asyncio.wait_for(self.leases.release(self.lease_name, self.owner), 2.0)
            raise
        try:
            work.result()  # a sweep that failed still counts as a run; the loop logs it
        finally:
            await self.leases.finish(self.lease_name, self.owner, self.clock())
        return True
