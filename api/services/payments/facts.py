"""Platform facts, applied exactly once, and what follows from them.

Every fact a platform reports (a notification, or what a query or a refund call
answers) goes through :meth:`Facts.apply_event` or :meth:`Facts.apply`: the
event is stored under a unique id (the exactly-once gate), the domain decides
what it does to the attempt, and the attempt is written under a version guard
that also records the event id, so a fact is applied once even when several
processes receive it at the same moment. What follows from the attempt's state
(the order turning PAID, an automatic refund of a second success, the order's
refund status) is derived from the stored state and is itself guarded, so a
delivery that finishes the work of an interrupted one does no harm.

At most one attempt per order succeeds: the order's move PENDING_PAYMENT -> PAID
is the guard, and an attempt that is paid after that is refunded in full under
the deterministic refund number ``{outTradeNo}AR``. The refund is reserved
here; submitting it to the platform is the refunds job's, handed in as
``submit_refund`` (the refunds job applies the platform's answer through here).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from bson import ObjectId

from api.domain.order import OrderStatus, can_transition
from api.domain.payment import (
    Attempt,
    EventKind,
    Fact,
    Outcome,
    RefundStatus,
    apply_fact,
    order_status_for,
    reserve_refund,
)
from api.plugins.contract import AttemptState, ProviderEvent, QueryResult
from api.services.payments.context import (
    MAX_WRITE_RACES,
    Document,
    PaymentContext,
    log,
    refund_doc,
)
from api.store.payments import attempt_fields, attempt_of
from api.telemetry import context as log_context

AUTO_REFUND_SUFFIX = "AR"

SubmitRefund = Callable[[ObjectId, str], Awaitable[None]]


def auto_refund_no(out_trade_no: str) -> str:
    return out_trade_no + AUTO_REFUND_SUFFIX


_SETTLED = {
    AttemptState.SUCCEEDED: EventKind.PAYMENT_SUCCEEDED,
    AttemptState.FAILED: EventKind.PAYMENT_FAILED,
    AttemptState.CLOSED: EventKind.PAYMENT_CLOSED,
}


@dataclass(frozen=True, slots=True)
class EventResult:
    """How a provider event was handled; ``accepted`` decides the platform's reply."""

    accepted: bool
    note: str
    duplicate: bool = False


class Facts:
    def __init__(self, context: PaymentContext, *, submit_refund: SubmitRefund) -> None:
        self.context = context
        self.submit_refund = submit_refund

    async def apply_event(
        self, provider_name: str, branch: str, event: ProviderEvent
    ) -> EventResult:
        """Apply a verified fact exactly once; ``accepted`` only after it is stored and applied."""
        store = self.context.store
        # By (branch, outTradeNo): another branch's attempt is unknown on this branch's route.
        payment = await store.payments.by_out_trade_no(branch, event.out_trade_no)
        if payment is None:
            return EventResult(False, "unknown out_trade_no")
        if payment["provider"] != provider_name:
            return EventResult(False, "the attempt belongs to another provider")
        log_context.bind(
            order_id=str(payment["orderId"]),
            payment_id=str(payment["_id"]),
            out_trade_no=payment["outTradeNo"],
        )
        now = self.context.now()
        key = f"{provider_name}:{branch}:{event.event_id}"
        created = await store.payments.record_event(
            {
                "_id": key,
                "provider": provider_name,
                "branch": branch,
                "eventId": event.event_id,
                "kind": event.kind.value,
                "paymentId": payment["_id"],
                "outTradeNo": event.out_trade_no,
                "providerTradeNo": event.provider_trade_no,
                "outRefundNo": event.out_refund_no,
                "amountFen": event.amount_fen,
                "currency": event.currency,
                "occurredAt": event.occurred_at,
                "detail": dict(event.detail),
                "receivedAt": now,
                "applied": False,
            }
        )
        if not created:
            stored = await store.payments.event(branch, key)
            if stored is not None and stored.get("applied"):
                return EventResult(True, str(stored.get("outcome", "applied")), duplicate=True)
            # The first delivery is being applied or was interrupted; applying is
            # idempotent (the payment records the event id), so finish it here.
        fact = Fact(
            kind=event.kind,
            amount_fen=event.amount_fen,
            currency=event.currency,
            out_refund_no=event.out_refund_no,
            provider_refund_no=event.detail.get("refund_no"),
        )
        note = await self.apply(
            payment["_id"], fact, key, event.provider_trade_no, occurred_at=event.occurred_at
        )
        await store.payments.mark_event_applied(branch, key, note, self.context.now())
        return EventResult(True, note, duplicate=not created)

    async def mismatch(self, provider_name: str, branch: str, event: ProviderEvent) -> str | None:
        """Why a verified notification is not about this branch's attempt, or None.

        Checked after the signature (a platform's genuine key may sign another
        merchant's or another attempt's facts): the out-trade-number must be an
        attempt of this branch at this provider, a payment's amount and currency
        must be the attempt's, and a refund we asked for must be of the amount we
        asked for.
        """
        payment = await self.context.store.payments.by_out_trade_no(branch, event.out_trade_no)
        if payment is None:
            return "no attempt of this branch has that out_trade_no"
        if payment["provider"] != provider_name:
            return "the attempt belongs to another provider"
        if event.currency != payment["currency"]:
            return f"currency {event.currency} is not the attempt's {payment['currency']}"
        if event.kind is EventKind.PAYMENT_SUCCEEDED and event.amount_fen != payment["amountFen"]:
            return f"paid {event.amount_fen} fen; the attempt is for {payment['amountFen']} fen"
        if event.kind in (EventKind.REFUND_SUCCEEDED, EventKind.REFUND_FAILED):
            line = refund_doc(payment, event.out_refund_no or "")
            if line is not None and int(line["amountFen"]) != event.amount_fen:
                return f"refund of {event.amount_fen} fen; we asked for {line['amountFen']} fen"
        return None

    async def apply_query(self, payment: Document, result: QueryResult) -> None:
        """Apply the facts of a query through the same exactly-once path as notifications."""
        for event in result.events:
            await self.apply_event(payment["provider"], payment["branch"], event)
        if not result.events and result.state in _SETTLED and result.amount_fen is not None:
            # A platform that reports a state without an event: make the fact from the state.
            await self.apply_event(
                payment["provider"],
                payment["branch"],
                ProviderEvent(
                    kind=_SETTLED[result.state],
                    event_id=f"query-{result.state.value}-{payment['outTradeNo']}",
                    out_trade_no=payment["outTradeNo"],
                    amount_fen=result.amount_fen,
                    currency=payment["currency"],
                    occurred_at=self.context.now(),
                    provider_trade_no=result.provider_trade_no,
                ),
            )

    async def apply(
        self,
        payment_id: ObjectId,
        fact: Fact,
        event_key: str | None,
        provider_trade_no: str | None = None,
        *,
        occurred_at: datetime | None = None,
    ) -> str:
        """Apply one fact under the version guard (recording ``event_key`` with it); its note.

        An attempt newly paid records ``paidAt``: when the platform says it was
        paid (``occurred_at``; now when the fact does not say), the time bill
        reconciliation matches against the platform's day.
        """
        store = self.context.store
        outcome: Outcome | None = None
        for _ in range(MAX_WRITE_RACES):
            doc = await store.payments.get(payment_id)
            if doc is None:
                raise LookupError(f"payment {payment_id} vanished")
            if event_key is not None and event_key in doc.get("eventIds", []):
                await self._follow_up(doc, None)
                return "applied before"
            now = self.context.now()
            outcome = apply_fact(attempt_of(doc), fact, now)
            fields = attempt_fields(outcome.attempt, doc, now) if outcome.changed else {}
            if outcome.changed and outcome.newly_paid:
                fields["paidAt"] = occurred_at or now
            if provider_trade_no and not doc.get("providerTradeNo"):
                fields["providerTradeNo"] = provider_trade_no
            if not fields and event_key is None:
                await self._follow_up(doc, outcome)
                return outcome.note
            written = await store.payments.write(doc, fields, now, event_key=event_key)
            if written is not None:
                if outcome.flagged:
                    log.warning("payment %s %s", doc["outTradeNo"], outcome.note)
                await self._follow_up(written, outcome)
                return outcome.note
        raise RuntimeError(f"payment {payment_id}: too many concurrent writers")

    async def settle(self, payment: Document) -> None:
        """Bring the order in line with the attempt as stored (after a write outside a fact)."""
        await self._follow_up(payment, None)

    async def _follow_up(self, payment: Document, outcome: Outcome | None) -> None:
        """Bring the order in line with the attempt; fire hooks for what ``outcome`` did."""
        store = self.context.store
        attempt = attempt_of(payment)
        order = await store.orders.get(payment["orderId"])
        if order is None:
            log.error(
                "payment %s: its order %s is missing", payment["outTradeNo"], payment["orderId"]
            )
            return
        await self._settle_order(payment, attempt, order)
        if outcome is not None and outcome.refund_succeeded is not None:
            self.context.hook(
                "refund_succeeded",
                order=await store.orders.get(payment["orderId"]) or order,
                payment=payment,
                refund=refund_doc(payment, outcome.refund_succeeded.out_refund_no) or {},
            )

    async def _settle_order(self, payment: Document, attempt: Attempt, order: Document) -> None:
        """Mark the order paid by this attempt, follow its refunds, or refund a second success.

        A counter sale being reversed, or reversed, never pays its order (its money
        goes back through the reversal).
        """
        if not attempt.paid or attempt.flagged or attempt.reversal is not None:
            return
        if order.get("paidPaymentId") == payment["_id"]:
            await self._sync_order(order, attempt)
            return
        if order["status"] == OrderStatus.PENDING_PAYMENT.value:
            store = self.context.store
            moved = await store.orders.move(
                order["_id"],
                OrderStatus.PAID,
                self.context.now(),
                reason=f"paid by {payment['provider']} {payment['outTradeNo']}",
                extra_set={"paidPaymentId": payment["_id"]},
            )
            if moved is not None:
                self.context.hook("payment_succeeded", order=moved, payment=payment)
                await self._sync_order(moved, attempt)
                return
            order = await store.orders.get(payment["orderId"]) or order
            if order.get("paidPaymentId") == payment["_id"]:
                return
        await self._refund_second_success(payment, order)

    async def _sync_order(self, order: Document, attempt: Attempt) -> None:
        """Move the order to the refund status of the attempt that paid it.

        Each move is guarded on the status just read; a writer that loses reads
        the order and the payment again, so the last writer never leaves a stale status.
        """
        store = self.context.store
        payment_id = order.get("paidPaymentId")
        for _ in range(MAX_WRITE_RACES):
            target = order_status_for(attempt)
            current = OrderStatus(order["status"])
            if target is current or not can_transition(current, target):
                return
            await store.orders.move(
                order["_id"],
                target,
                self.context.now(),
                reason=f"{attempt.refunded_fen} of {attempt.amount_fen} fen refunded",
                extra_guard={"status": current.value},
            )
            fresh_order = await store.orders.get(order["_id"])
            fresh_payment = await store.payments.get(payment_id) if payment_id else None
            if fresh_order is None or fresh_payment is None:
                return
            order, attempt = fresh_order, attempt_of(fresh_payment)

    async def _refund_second_success(self, payment: Document, order: Document) -> None:
        """Refund an attempt paid when its order was paid by another or no longer payable."""
        out_refund_no = auto_refund_no(payment["outTradeNo"])
        attempt = attempt_of(payment)
        line = attempt.refund(out_refund_no)
        if line is None:
            if attempt.refundable_fen <= 0:
                return
            why = (
                "paid after another attempt paid the order"
                if order.get("paidPaymentId")
                else f"paid after the order was {order['status']}"
            )
            log.warning("payment %s %s: refunding it in full", payment["outTradeNo"], why)
            now = self.context.now()

            def reserve(current: Attempt) -> Attempt | None:
                if current.refund(out_refund_no) is not None or current.refundable_fen <= 0:
                    return None
                return reserve_refund(
                    current, out_refund_no, current.refundable_fen, now, reason=why
                )

            await self.context.change(payment["_id"], reserve)
        elif line.status is not RefundStatus.PENDING:
            return
        await self.submit_refund(payment["_id"], out_refund_no)
