"""The payment service: one front for the four payment jobs.

- :mod:`.start` opens attempts (``startPayment``);
- :mod:`.facts` applies platform facts exactly once, and what follows from them
  (the order turning PAID, the refund of a second success);
- :mod:`.refunds` refunds (``refundPayment``) and submits reserved refunds;
- :mod:`.reconcile` closes an order's open attempts and reconciles with the platforms.

They share one :class:`~.context.PaymentContext` (store, providers, base URL,
hooks, clock) and are handed the other jobs they use; :class:`PaymentService`
wires them and is what callers use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pluggy
from bson import ObjectId

from api.config.live import ProviderRegistry
from api.plugins.contract import PaymentMethod, ProviderEvent, QueryResult
from api.services.payments.context import PaymentContext
from api.services.payments.counter import Counter, CounterTiming
from api.services.payments.facts import AUTO_REFUND_SUFFIX, EventResult, Facts, auto_refund_no
from api.services.payments.options import PaymentOption, payment_options
from api.services.payments.reconcile import Reconcile, ReconcileReport, ReconcileRow
from api.services.payments.refunds import RefundOutcome, Refunds
from api.services.payments.start import Start, StartResult
from api.store import Store

__all__ = [
    "AUTO_REFUND_SUFFIX",
    "CounterTiming",
    "EventResult",
    "PaymentOption",
    "PaymentService",
    "ReconcileReport",
    "ReconcileRow",
    "RefundOutcome",
    "StartResult",
    "auto_refund_no",
]


class PaymentService:
    def __init__(
        self,
        store: Store,
        registry: ProviderRegistry,
        *,
        base_url: Callable[[], str],
        plugins: pluggy.PluginManager | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        counter: CounterTiming | None = None,
    ) -> None:
        self.context = PaymentContext(store, registry, base_url, plugins, clock)
        # Facts reserve the refund of a second success; the refunds job submits it.
        self._facts = Facts(self.context, submit_refund=self._submit_refund)
        self._refunds = Refunds(self.context, self._facts)
        self._counter = Counter(self.context, self._facts, counter or CounterTiming())
        self._start = Start(self.context, self._counter)
        self._reconcile = Reconcile(self.context, self._facts, self._refunds)

    async def _submit_refund(self, payment_id: ObjectId, out_refund_no: str) -> None:
        await self._refunds.submit(payment_id, out_refund_no)

    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def registry(self) -> ProviderRegistry:
        return self.context.registry

    def notify_url(self, provider: str, branch: str) -> str:
        return self.context.notify_url(provider, branch)

    async def start(
        self,
        order_id: ObjectId,
        provider_name: str | None,
        method: PaymentMethod,
        return_url: str | None = None,
        *,
        visible: Callable[[str], bool],
        client_ip: str | None = None,
        auth_code: str | None = None,
        payer_id: str | None = None,
    ) -> StartResult:
        """Open a new attempt for the order at the provider (see :mod:`.start`)."""
        return await self._start.start(
            order_id,
            provider_name,
            method,
            return_url,
            visible=visible,
            client_ip=client_ip,
            auth_code=auth_code,
            payer_id=payer_id,
        )

    def options(self, order: Mapping[str, Any], *, payer_id_known: bool) -> list[PaymentOption]:
        """How the order can be paid, and why not otherwise (see :mod:`.options`)."""
        return payment_options(self.context.registry, order, payer_id_known=payer_id_known)

    async def work_counter_sales(self) -> int:
        """Take the next step of every counter sale due (see :mod:`.counter`)."""
        return await self._counter.work_due()

    async def apply_event(
        self, provider_name: str, branch: str, event: ProviderEvent
    ) -> EventResult:
        """Apply a verified fact exactly once (see :mod:`.facts`)."""
        return await self._facts.apply_event(provider_name, branch, event)

    async def mismatch(self, provider_name: str, branch: str, event: ProviderEvent) -> str | None:
        """Why a verified notification is not about this branch's attempt (see :mod:`.facts`)."""
        return await self._facts.mismatch(provider_name, branch, event)

    async def apply_query(self, payment: Mapping[str, Any], result: QueryResult) -> None:
        """Apply what a query of the attempt answered, exactly once (see :mod:`.facts`)."""
        await self._facts.apply_query(dict(payment), result)

    async def submit_refund(self, payment_id: ObjectId, out_refund_no: str) -> None:
        """Submit (again) a reserved refund line and apply the answer (see :mod:`.refunds`)."""
        await self._refunds.submit(payment_id, out_refund_no)

    async def refund(
        self,
        payment_id: ObjectId,
        amount_fen: int,
        reason: str | None,
        idempotency_key: str,
        *,
        visible: Callable[[str], bool],
        actor: str = "system",
    ) -> RefundOutcome:
        """Refund part or all of a paid attempt (see :mod:`.refunds`)."""
        return await self._refunds.refund(
            payment_id, amount_fen, reason, idempotency_key, visible=visible, actor=actor
        )

    async def close_open_attempts(self, order: Mapping[str, Any]) -> bool:
        """Close every PENDING attempt of the order; True when none stays open."""
        return await self._reconcile.close_open_attempts(order)

    async def reconcile(
        self,
        *,
        since: timedelta | None = None,
        branch: str | None = None,
        min_age: timedelta = timedelta(0),
        progress: Callable[[int, int], None] | None = None,
    ) -> ReconcileReport:
        """Ask the platforms about every PENDING attempt and pending refund, and apply it."""
        return await self._reconcile.reconcile(
            since=since, branch=branch, min_age=min_age, progress=progress
        )

    async def reconcile_due(self, min_age: timedelta) -> ReconcileReport:
        return await self._reconcile.reconcile_due(min_age)
