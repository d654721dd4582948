"""Refunds (``refundPayment``) and submitting reserved refunds to the platform.

A refund is first reserved on the attempt under a refund number derived from
the caller's idempotency key (a repeated key returns the first refund), then
submitted; the platform refunds each number once, so submitting again (after
an unknown outcome, or from reconciliation) is safe. The platform's answer is
applied as a fact through the facts job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from bson import ObjectId

from api.domain.order import check_idempotency_key
from api.domain.payment import Attempt, EventKind, Fact, RefundRefused, RefundStatus, reserve_refund
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import REFUND_REASON
from api.plugins.contract import GatewayError, RefundRequest, RefundState, new_reference
from api.services.payments.context import Document, PaymentContext, log, problem, refund_doc
from api.services.payments.facts import Facts
from api.store.audit import AuditAction
from api.store.payments import attempt_of
from api.telemetry import context as log_context
from api.telemetry import metrics


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    payment: Document | None
    refund: Document | None  # the refund line of the payment document
    problems: list[Problem]


class Refunds:
    def __init__(self, context: PaymentContext, facts: Facts) -> None:
        self.context = context
        self.facts = facts

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
        """Refund part or all of a paid attempt; a repeated key returns the first refund.

        ``actor`` (the API key's name) goes to the audit log with the refund; a
        payment of a branch the caller may not see is refused like a missing one.
        """
        store = self.context.store
        problems = check_idempotency_key(idempotency_key)
        if amount_fen <= 0:
            problems.append(
                Problem(
                    ("amountFen",),
                    "amountFen must be a positive number of fen",
                    UserErrorCode.INVALID_AMOUNT,
                )
            )
        if reason is not None and (why := REFUND_REASON.problem(reason, "reason")) is not None:
            problems.append(Problem(("reason",), why, UserErrorCode.INVALID_REASON))
        if problems:
            return RefundOutcome(None, None, problems)
        payment = await store.payments.get(payment_id)
        if payment is None or not visible(payment["branch"]):
            return RefundOutcome(
                None, None, problem("paymentId", "no such payment", UserErrorCode.PAYMENT_NOT_FOUND)
            )
        log_context.bind(
            branch=payment["branch"],
            provider=payment["provider"],
            order_id=str(payment["orderId"]),
            payment_id=str(payment_id),
            out_trade_no=payment["outTradeNo"],
        )
        now = self.context.now()
        request_hash = hashlib.sha256(f"{payment_id}:{amount_fen}".encode()).hexdigest()
        request, created = await store.payments.insert_refund_once(
            {
                "_id": new_reference(now),
                "branch": payment["branch"],
                "idempotencyKey": idempotency_key,
                "requestHash": request_hash,
                "paymentId": payment_id,
                "orderId": payment["orderId"],
                "amountFen": amount_fen,
                "reason": reason,
                "createdAt": now,
            }
        )
        if not created and request.get("requestHash") != request_hash:
            return RefundOutcome(
                None,
                None,
                problem(
                    "idempotencyKey",
                    "this idempotencyKey was already used for a different refund",
                    UserErrorCode.IDEMPOTENCY_KEY_REUSED,
                ),
            )
        out_refund_no: str = request["_id"]

        def reserve(current: Attempt) -> Attempt | None:
            if current.refund(out_refund_no) is not None:
                return None  # reserved by the first call with this key
            return reserve_refund(current, out_refund_no, amount_fen, now, reason=reason)

        try:
            await self.context.change(payment_id, reserve)
        except RefundRefused as refused:
            # Nothing of this request may stay written: the same key may be retried.
            await store.payments.forget_refund_request(out_refund_no)
            return RefundOutcome(None, None, problem("amountFen", refused.message, refused.code))
        if created:
            await store.audit.record(
                actor,
                AuditAction.REFUND_ISSUED,
                out_refund_no,
                {"paymentId": str(payment_id), "amountFen": amount_fen, "reason": reason},
                branch=payment["branch"],
            )
        await self.submit(payment_id, out_refund_no)
        payment = await store.payments.get(payment_id)
        assert payment is not None
        line = refund_doc(payment, out_refund_no)
        if line is not None and line["status"] == RefundStatus.FAILED.value:
            stored = await store.payments.refund_request(out_refund_no) or {}
            return RefundOutcome(
                None,
                None,
                problem(
                    "paymentId",
                    f"{payment['provider']} did not make the refund: "
                    f"{stored.get('failure', 'refused')}",
                    UserErrorCode.REFUND_FAILED,
                ),
            )
        return RefundOutcome(payment, line, [])

    async def submit(self, payment_id: ObjectId, out_refund_no: str) -> None:
        """Ask the platform for a reserved refund; the platform refunds each number once."""
        ctx = self.context
        payment = await ctx.store.payments.get(payment_id)
        if payment is None:
            return
        line = attempt_of(payment).refund(out_refund_no)
        if line is None or line.status is not RefundStatus.PENDING:
            return
        provider = ctx.registry.provider(payment["branch"], payment["provider"])
        if provider is None:
            log.error(
                "refund %s: %s is no longer configured for %s; left pending",
                out_refund_no,
                payment["provider"],
                payment["branch"],
            )
            return
        request = RefundRequest(
            out_trade_no=payment["outTradeNo"],
            out_refund_no=out_refund_no,
            refund_fen=line.amount_fen,
            total_fen=int(payment["amountFen"]),
            currency=payment["currency"],
            reason=line.reason,
            notify_url=ctx.notify_url(payment["provider"], payment["branch"]),
        )
        failed = Fact(EventKind.REFUND_FAILED, line.amount_fen, payment["currency"], out_refund_no)
        try:
            with metrics.gateway_call(payment["provider"], "refund"):
                answer = await provider.refund(request)
        except GatewayError as error:
            if error.outcome_unknown:
                log.warning("refund %s: outcome unknown (%s); left pending", out_refund_no, error)
                return
            log.warning("refund %s: not made (%s); reservation released", out_refund_no, error)
            await self.facts.apply(payment_id, failed, None)
            await self._note_refund(out_refund_no, str(error))
            return
        except Exception:
            log.exception("refund %s: provider failed unexpectedly; left pending", out_refund_no)
            return
        if answer.state is RefundState.SUCCEEDED:
            succeeded = Fact(
                EventKind.REFUND_SUCCEEDED,
                line.amount_fen,
                payment["currency"],
                out_refund_no,
                answer.provider_refund_no,
            )
            await self.facts.apply(payment_id, succeeded, None)
        elif answer.state is RefundState.FAILED:
            await self.facts.apply(payment_id, failed, None)
            await self._note_refund(out_refund_no, answer.message or "refused")

    async def _note_refund(self, out_refund_no: str, message: str) -> None:
        await self.context.store.payments.finish_refund(out_refund_no, {"failure": message[:200]})
