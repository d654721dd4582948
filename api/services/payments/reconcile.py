"""Reconciliation: bring open attempts in line with what their platforms know.

:meth:`Reconcile.reconcile` asks the platforms about every PENDING attempt and
pending refund and applies the answers through the facts job's exactly-once
path; it also finishes events that were stored but never applied (the process
stopped in between). :meth:`Reconcile.close_open_attempts` closes an order's
PENDING attempts at their platforms when the order stops waiting for payment,
asking for the facts instead when a platform refuses because it was paid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from api.domain.order import OrderStatus
from api.domain.payment import PaymentStatus, RefundStatus, begin_reversal, close_unpaid
from api.plugins.contract import AttemptState, EventKind, PaymentMethod, Provider, ProviderEvent
from api.services.payments.context import Document, PaymentContext, log
from api.services.payments.facts import Facts
from api.services.payments.refunds import Refunds
from api.store.payments import attempt_of
from api.telemetry import metrics


@dataclass(frozen=True, slots=True)
class ReconcileRow:
    out_trade_no: str
    branch: str
    provider: str
    before: str
    after: str
    note: str


@dataclass
class ReconcileReport:
    rows: list[ReconcileRow] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(1 for row in self.rows if row.before != row.after)


class Reconcile:
    def __init__(self, context: PaymentContext, facts: Facts, refunds: Refunds) -> None:
        self.context = context
        self.facts = facts
        self.refunds = refunds

    # --- closing ----------------------------------------------------------------------

    async def close_open_attempts(self, order: Mapping[str, Any]) -> bool:
        """Close every PENDING attempt of the order at its platform; True when none stays open.

        A platform that refuses because the attempt was paid is asked for the
        facts, which are applied (the order may turn PAID instead of closing).
        """
        ctx = self.context
        all_closed = True
        for payment in await ctx.store.payments.open_of_order(order["_id"]):
            if payment["method"] == PaymentMethod.PAYMENT_CODE.value:
                # A counter sale is reversed, not closed: the counter job does it now.
                await ctx.change(payment["_id"], begin_reversal)
                await ctx.store.payments.step_counter_sale_now(payment["_id"], ctx.now())
                all_closed = False
                continue
            provider = ctx.registry.provider(payment["branch"], payment["provider"])
            if provider is None:
                all_closed = False
                continue
            try:
                with metrics.gateway_call(payment["provider"], "close"):
                    await provider.close(payment["outTradeNo"])
            except Exception as error:
                log.info("close of %s refused (%s); querying it", payment["outTradeNo"], error)
                if not await self._query_and_apply(provider, payment):
                    all_closed = False
                continue
            await ctx.change(payment["_id"], close_unpaid)
        return all_closed

    async def _query_and_apply(self, provider: Provider, payment: Document) -> bool:
        """Apply what the platform reports of the attempt; True once it is no longer PENDING."""
        try:
            with metrics.gateway_call(payment["provider"], "query"):
                result = await provider.query(payment["outTradeNo"])
        except Exception as error:
            log.warning("query of %s failed: %s", payment["outTradeNo"], error)
            return False
        await self.facts.apply_query(payment, result)
        current = await self.context.store.payments.get(payment["_id"])
        return current is not None and current["status"] != PaymentStatus.PENDING.value

    # --- reconciliation ---------------------------------------------------------------

    async def reconcile(
        self,
        *,
        since: timedelta | None = None,
        branch: str | None = None,
        min_age: timedelta = timedelta(0),
        progress: Callable[[int, int], None] | None = None,
    ) -> ReconcileReport:
        """Ask the platforms about every PENDING attempt and pending refund, and apply it."""
        store = self.context.store
        now = self.context.now()
        pending = await store.payments.pending(
            created_after=now - since if since is not None else None,
            created_before=now - min_age,
            branch=branch,
        )
        # Events stored but never applied (the process stopped in between, and the
        # platform gave up re-sending) are finished here.
        unapplied = await store.payments.unapplied_events(received_before=now - min_age)
        if branch is not None:
            unapplied = [event for event in unapplied if event["branch"] == branch]
        report = ReconcileReport()
        total = len(pending) + len(unapplied)
        for index, payment in enumerate(pending):
            report.rows.append(await self._reconcile_safely(payment))
            if progress is not None:
                progress(index + 1, total)
        for index, stored in enumerate(unapplied, start=len(pending)):
            report.rows.append(await self._finish_event(stored))
            if progress is not None:
                progress(index + 1, total)
        return report

    async def reconcile_due(self, min_age: timedelta) -> ReconcileReport:
        report = await self.reconcile(min_age=min_age)
        if report.changed:
            log.info("reconciliation settled %d of %d attempts", report.changed, len(report.rows))
        return report

    async def _reconcile_safely(self, payment: Document) -> ReconcileRow:
        try:
            return await self._reconcile_one(payment)
        except Exception as error:
            # One attempt's trouble must not stop the others from being reconciled.
            log.exception("reconciliation of %s failed", payment["outTradeNo"])
            return ReconcileRow(
                payment["outTradeNo"],
                payment["branch"],
                payment["provider"],
                payment["status"],
                payment["status"],
                f"failed: {type(error).__name__}",
            )

    async def _finish_event(self, stored: Document) -> ReconcileRow:
        store = self.context.store
        payment = await store.payments.get(stored["paymentId"]) or {}
        before = str(payment.get("status", "?"))
        event = ProviderEvent(
            kind=EventKind(stored["kind"]),
            event_id=stored["eventId"],
            out_trade_no=stored["outTradeNo"],
            amount_fen=int(stored["amountFen"]),
            currency=stored["currency"],
            occurred_at=stored["occurredAt"],
            provider_trade_no=stored.get("providerTradeNo"),
            out_refund_no=stored.get("outRefundNo"),
            detail=stored.get("detail") or {},
        )
        try:
            result = await self.facts.apply_event(stored["provider"], stored["branch"], event)
            note = f"stored event {stored['eventId']} applied: {result.note}"
        except Exception as error:
            log.exception("stored event %s could not be applied", stored["_id"])
            note = f"stored event {stored['eventId']} failed: {type(error).__name__}"
        after = await store.payments.get(stored["paymentId"]) or {}
        return ReconcileRow(
            stored["outTradeNo"],
            stored["branch"],
            stored["provider"],
            before,
            str(after.get("status", "?")),
            note,
        )

    async def _reconcile_one(self, payment: Document) -> ReconcileRow:
        ctx = self.context
        before = payment["status"]

        def row(after: str, note: str) -> ReconcileRow:
            return ReconcileRow(
                payment["outTradeNo"], payment["branch"], payment["provider"], before, after, note
            )

        provider = ctx.registry.provider(payment["branch"], payment["provider"])
        if provider is None:
            return row(before, "provider not configured for the branch")
        notes: list[str] = []
        if before == PaymentStatus.PENDING.value:
            try:
                with metrics.gateway_call(payment["provider"], "query"):
                    result = await provider.query(payment["outTradeNo"])
            except Exception as error:
                return row(before, f"query failed: {error}")
            notes.append(f"platform says {result.state.value}")
            await self.facts.apply_query(payment, result)
            if result.state is AttemptState.UNKNOWN:
                order = await ctx.store.orders.get(payment["orderId"])
                if order is None or order["status"] != OrderStatus.PENDING_PAYMENT.value:
                    # Never opened at the platform, and its order no longer waits for it.
                    await ctx.change(payment["_id"], close_unpaid)
        for line in attempt_of(payment).refunds:
            if line.status is RefundStatus.PENDING:
                await self.refunds.submit(payment["_id"], line.out_refund_no)
                notes.append(f"refund {line.out_refund_no} resubmitted")
        current = await ctx.store.payments.get(payment["_id"]) or payment
        return row(current["status"], "; ".join(notes) or "nothing to do")
