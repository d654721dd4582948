"""The payment service: starts attempts, applies platform facts exactly once, refunds, closes.

Every fact a platform reports (a notification, or what a query or a refund call
answers) goes through :meth:`PaymentService.apply_event` or the same private
path: the event is stored under a unique id (the exactly-once gate), the
domain decides what it does to the attempt, and the attempt is written under a
version guard that also records the event id, so a fact is applied once even
when several processes receive it at the same moment. What follows from the
attempt's state (the order turning PAID, an automatic refund of a second
success, the order's refund status) is derived from the stored state and is
itself guarded, so a delivery that finishes the work of an interrupted one does
no harm.

At most one attempt per order succeeds: the order's move PENDING_PAYMENT -> PAID
is the guard, and an attempt that is paid after that is refunded in full under
the deterministic refund number ``{outTradeNo}AR``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pluggy
from bson import ObjectId

from api.config.live import ProviderRegistry
from api.domain.order import OrderStatus, Problem, can_transition, check_idempotency_key
from api.domain.payment import (
    Attempt,
    Fact,
    FactKind,
    Outcome,
    PaymentStatus,
    RefundRefused,
    RefundStatus,
    apply_fact,
    close_unpaid,
    fail_unpaid,
    order_status_for,
    reserve_refund,
)
from api.domain.text import PROVIDER, REFUND_REASON, RETURN_URL, quoted
from api.plugins.contract import (
    AttemptState,
    EventKind,
    GatewayError,
    PaymentAction,
    PaymentMethod,
    PaymentRequest,
    Provider,
    ProviderEvent,
    QueryResult,
    RefundRequest,
    RefundState,
    new_reference,
)
from api.plugins.manager import notify
from api.store import Store
from api.store.audit import AuditAction
from api.store.payments import attempt_fields, attempt_of

Document = dict[str, Any]
log = logging.getLogger("branchpay.payments")

# A version-guarded write retries when another writer changed the payment first;
# more losses in a row than this means something is wrong, not busy.
MAX_WRITE_RACES = 64
AUTO_REFUND_SUFFIX = "AR"


def auto_refund_no(out_trade_no: str) -> str:
    return out_trade_no + AUTO_REFUND_SUFFIX


_FACT_KINDS = {kind: FactKind(kind.value) for kind in EventKind}


@dataclass(frozen=True, slots=True)
class EventResult:
    """How a provider event was handled; ``accepted`` decides the platform's reply."""

    accepted: bool
    note: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class StartResult:
    payment: Document | None
    action: PaymentAction | None
    problems: list[Problem]


@dataclass(frozen=True, slots=True)
class RefundResult:
    payment: Document | None
    refund: Document | None  # the refund line of the payment document
    problems: list[Problem]


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


def _problem(field_name: str, message: str, code: str) -> list[Problem]:
    return [Problem((field_name,), message, code)]


class PaymentService:
    def __init__(
        self,
        store: Store,
        registry: ProviderRegistry,
        *,
        base_url: Callable[[], str],
        plugins: pluggy.PluginManager | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.registry = registry
        self.base_url = base_url
        self.plugins = plugins
        self.clock = clock

    def _now(self) -> datetime:
        now = self.clock()
        return now.replace(microsecond=(now.microsecond // 1000) * 1000)  # BSON keeps ms

    def notify_url(self, provider: str, branch: str) -> str:
        return f"{self.base_url()}/notify/{provider}/{branch}"

    # --- start --------------------------------------------------------------------------

    async def start(
        self,
        order_id: ObjectId,
        provider_name: str,
        method: PaymentMethod,
        return_url: str | None = None,
        *,
        visible: Callable[[str], bool],
        client_ip: str | None = None,
    ) -> StartResult:
        """Open a new attempt for the order at the provider; each call is a new attempt.

        An order of a branch the caller may not see is refused like a missing one.
        """
        order = await self.store.orders.get(order_id)
        if order is None or not visible(order["branch"]):
            return StartResult(None, None, _problem("orderId", "no such order", "ORDER_NOT_FOUND"))
        now = self._now()
        if order["status"] != OrderStatus.PENDING_PAYMENT.value:
            return StartResult(
                None,
                None,
                _problem(
                    "orderId",
                    f"only an order awaiting payment can be paid; this one is {order['status']}",
                    "ORDER_NOT_PAYABLE",
                ),
            )
        if now >= order["expiresAt"]:
            return StartResult(
                None, None, _problem("orderId", "the order's payment time ran out", "ORDER_EXPIRED")
            )
        branch = order["branch"]
        enabled = {cls.name: cls for cls in self.registry.enabled(branch)}
        cls = enabled.get(provider_name)
        if cls is None:
            names = ", ".join(enabled) or "none"
            return StartResult(
                None,
                None,
                _problem(
                    "provider",
                    f"{quoted(provider_name, PROVIDER)} is not enabled for branch {branch}; "
                    f"enabled: {names}",
                    "PROVIDER_NOT_ENABLED",
                ),
            )
        if method not in cls.methods:
            supported = ", ".join(m.value for m in cls.methods)
            return StartResult(
                None,
                None,
                _problem(
                    "method",
                    f"{provider_name} does not support {method.value}; it supports {supported}",
                    "METHOD_NOT_SUPPORTED",
                ),
            )
        if return_url is not None and (why := _return_url_problem(return_url)) is not None:
            return StartResult(None, None, _problem("returnUrl", why, "INVALID_RETURN_URL"))
        provider = self.registry.provider(branch, provider_name)
        if provider is None:
            return StartResult(
                None,
                None,
                _problem("provider", f"{provider_name} is not configured", "PROVIDER_NOT_ENABLED"),
            )
        payment: Document = {
            "_id": ObjectId(),
            "orderId": order_id,
            "branch": branch,
            "provider": provider_name,
            "method": method.value,
            "status": PaymentStatus.PENDING.value,
            "amountFen": int(order["totalFen"]),
            "currency": order["currency"],
            "outTradeNo": new_reference(now),
            "providerTradeNo": None,
            "returnUrl": return_url,
            "refunds": [],
            "refundedFen": 0,
            "reservedFen": 0,
            "flagged": None,
            "eventIds": [],
            "version": 0,
            "createdAt": now,
            "updatedAt": now,
        }
        # Stored before the platform hears of it, so its notification always finds it.
        await self.store.payments.insert(payment)
        request = PaymentRequest(
            out_trade_no=payment["outTradeNo"],
            amount_fen=payment["amountFen"],
            currency=payment["currency"],
            subject=_subject(order),
            method=method,
            notify_url=self.notify_url(provider_name, branch),
            expires_at=order["expiresAt"],
            return_url=return_url,
            client_ip=client_ip,
        )
        try:
            action = await provider.create_payment(request)
        except GatewayError as error:
            if error.outcome_unknown:
                log.warning(
                    "payment %s: %s may have opened it (%s); left PENDING for reconciliation",
                    payment["outTradeNo"],
                    provider_name,
                    error,
                )
            else:
                await self._change(payment["_id"], fail_unpaid)
            return StartResult(None, None, _unavailable(provider_name))
        except Exception:
            # A provider bug may strike after the platform accepted: do not guess.
            log.exception(
                "payment %s: %s failed unexpectedly; left PENDING for reconciliation",
                payment["outTradeNo"],
                provider_name,
            )
            return StartResult(None, None, _unavailable(provider_name))
        return StartResult(payment, action, [])

    # --- notifications and other facts ----------------------------------------------------

    async def apply_event(
        self, provider_name: str, branch: str, event: ProviderEvent
    ) -> EventResult:
        """Apply a verified fact exactly once; ``accepted`` only after it is stored and applied."""
        payment = await self.store.payments.by_out_trade_no(event.out_trade_no)
        if payment is None:
            return EventResult(False, "unknown out_trade_no")
        if payment["branch"] != branch or payment["provider"] != provider_name:
            return EventResult(False, "the attempt belongs to another branch or provider")
        now = self._now()
        key = f"{provider_name}:{branch}:{event.event_id}"
        created = await self.store.payments.record_event(
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
            stored = await self.store.payments.event(key)
            if stored is not None and stored.get("applied"):
                return EventResult(True, str(stored.get("outcome", "applied")), duplicate=True)
            # The first delivery is being applied or was interrupted; applying is
            # idempotent (the payment records the event id), so finish it here.
        fact = Fact(
            kind=_FACT_KINDS[event.kind],
            amount_fen=event.amount_fen,
            currency=event.currency,
            out_refund_no=event.out_refund_no,
            provider_refund_no=event.detail.get("refund_no"),
        )
        note = await self._apply(payment["_id"], fact, key, event.provider_trade_no)
        await self.store.payments.mark_event_applied(key, note, self._now())
        return EventResult(True, note, duplicate=not created)

    async def _apply(
        self,
        payment_id: ObjectId,
        fact: Fact,
        event_key: str | None,
        provider_trade_no: str | None = None,
    ) -> str:
        outcome: Outcome | None = None
        for _ in range(MAX_WRITE_RACES):
            doc = await self.store.payments.get(payment_id)
            if doc is None:
                raise LookupError(f"payment {payment_id} vanished")
            if event_key is not None and event_key in doc.get("eventIds", []):
                await self._follow_up(doc, None)
                return "applied before"
            now = self._now()
            outcome = apply_fact(attempt_of(doc), fact, now)
            fields = attempt_fields(outcome.attempt, doc, now) if outcome.changed else {}
            if provider_trade_no and not doc.get("providerTradeNo"):
                fields["providerTradeNo"] = provider_trade_no
            if not fields and event_key is None:
                await self._follow_up(doc, outcome)
                return outcome.note
            written = await self.store.payments.write(doc, fields, now, event_key=event_key)
            if written is not None:
                if outcome.flagged:
                    log.warning("payment %s %s", doc["outTradeNo"], outcome.note)
                await self._follow_up(written, outcome)
                return outcome.note
        raise RuntimeError(f"payment {payment_id}: too many concurrent writers")

    async def _change(
        self, payment_id: ObjectId, decide: Callable[[Attempt], Attempt | None]
    ) -> Document | None:
        """Write ``decide(attempt)`` under the version guard; None when it decides nothing."""
        for _ in range(MAX_WRITE_RACES):
            doc = await self.store.payments.get(payment_id)
            if doc is None:
                return None
            updated = decide(attempt_of(doc))
            if updated is None:
                return None
            now = self._now()
            written = await self.store.payments.write(doc, attempt_fields(updated, doc, now), now)
            if written is not None:
                return written
        raise RuntimeError(f"payment {payment_id}: too many concurrent writers")

    async def _follow_up(self, payment: Document, outcome: Outcome | None) -> None:
        """Bring the order in line with the attempt; fire hooks for what ``outcome`` did."""
        attempt = attempt_of(payment)
        order = await self.store.orders.get(payment["orderId"])
        if order is None:
            log.error(
                "payment %s: its order %s is missing", payment["outTradeNo"], payment["orderId"]
            )
            return
        await self._settle_order(payment, attempt, order)
        if outcome is not None and outcome.refund_succeeded is not None:
            self._hook(
                "refund_succeeded",
                order=await self.store.orders.get(payment["orderId"]) or order,
                payment=payment,
                refund=_refund_doc(payment, outcome.refund_succeeded.out_refund_no) or {},
            )

    async def _settle_order(self, payment: Document, attempt: Attempt, order: Document) -> None:
        """Mark the order paid by this attempt, follow its refunds, or refund a second success."""
        if not attempt.paid or attempt.flagged:
            return
        if order.get("paidPaymentId") == payment["_id"]:
            await self._sync_order(order, attempt)
            return
        if order["status"] == OrderStatus.PENDING_PAYMENT.value:
            moved = await self.store.orders.move(
                order["_id"],
                OrderStatus.PAID,
                self._now(),
                reason=f"paid by {payment['provider']} {payment['outTradeNo']}",
                extra_set={"paidPaymentId": payment["_id"]},
            )
            if moved is not None:
                self._hook("payment_succeeded", order=moved, payment=payment)
                await self._sync_order(moved, attempt)
                return
            order = await self.store.orders.get(payment["orderId"]) or order
            if order.get("paidPaymentId") == payment["_id"]:
                return
        await self._refund_second_success(payment, order)

    async def _sync_order(self, order: Document, attempt: Attempt) -> None:
        """Move the order to the refund status of the attempt that paid it.

        Each move is guarded on the status just read; a writer that loses reads
        the order and the payment again, so the last writer never leaves a stale status.
        """
        payment_id = order.get("paidPaymentId")
        for _ in range(MAX_WRITE_RACES):
            target = order_status_for(attempt)
            current = OrderStatus(order["status"])
            if target is current or not can_transition(current, target):
                return
            await self.store.orders.move(
                order["_id"],
                target,
                self._now(),
                reason=f"{attempt.refunded_fen} of {attempt.amount_fen} fen refunded",
                extra_guard={"status": current.value},
            )
            fresh_order = await self.store.orders.get(order["_id"])
            fresh_payment = await self.store.payments.get(payment_id) if payment_id else None
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
            now = self._now()

            def reserve(current: Attempt) -> Attempt | None:
                if current.refund(out_refund_no) is not None or current.refundable_fen <= 0:
                    return None
                return reserve_refund(
                    current, out_refund_no, current.refundable_fen, now, reason=why
                )

            await self._change(payment["_id"], reserve)
        elif line.status is not RefundStatus.PENDING:
            return
        await self._submit_refund(payment["_id"], out_refund_no)

    async def _submit_refund(self, payment_id: ObjectId, out_refund_no: str) -> None:
        """Ask the platform for a reserved refund; the platform refunds each number once."""
        payment = await self.store.payments.get(payment_id)
        if payment is None:
            return
        line = attempt_of(payment).refund(out_refund_no)
        if line is None or line.status is not RefundStatus.PENDING:
            return
        provider = self.registry.provider(payment["branch"], payment["provider"])
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
            notify_url=self.notify_url(payment["provider"], payment["branch"]),
        )
        failed = Fact(FactKind.REFUND_FAILED, line.amount_fen, payment["currency"], out_refund_no)
        try:
            answer = await provider.refund(request)
        except GatewayError as error:
            if error.outcome_unknown:
                log.warning("refund %s: outcome unknown (%s); left pending", out_refund_no, error)
                return
            log.warning("refund %s: not made (%s); reservation released", out_refund_no, error)
            await self._apply(payment_id, failed, None)
            await self._note_refund(payment_id, out_refund_no, str(error))
            return
        except Exception:
            log.exception("refund %s: provider failed unexpectedly; left pending", out_refund_no)
            return
        if answer.state is RefundState.SUCCEEDED:
            succeeded = Fact(
                FactKind.REFUND_SUCCEEDED,
                line.amount_fen,
                payment["currency"],
                out_refund_no,
                answer.provider_refund_no,
            )
            await self._apply(payment_id, succeeded, None)
        elif answer.state is RefundState.FAILED:
            await self._apply(payment_id, failed, None)
            await self._note_refund(payment_id, out_refund_no, answer.message or "refused")

    async def _note_refund(self, payment_id: ObjectId, out_refund_no: str, message: str) -> None:
        await self.store.payments.finish_refund(out_refund_no, {"failure": message[:200]})

    # --- refunds ------------------------------------------------------------------------

    async def refund(
        self,
        payment_id: ObjectId,
        amount_fen: int,
        reason: str | None,
        idempotency_key: str,
        *,
        visible: Callable[[str], bool],
        actor: str = "system",
    ) -> RefundResult:
        """Refund part or all of a paid attempt; a repeated key returns the first refund.

        ``actor`` (the API key's name) goes to the audit log with the refund; a
        payment of a branch the caller may not see is refused like a missing one.
        """
        problems = check_idempotency_key(idempotency_key)
        if amount_fen <= 0:
            problems.append(
                Problem(
                    ("amountFen",), "amountFen must be a positive number of fen", "INVALID_AMOUNT"
                )
            )
        if reason is not None and (why := REFUND_REASON.problem(reason, "reason")) is not None:
            problems.append(Problem(("reason",), why, "INVALID_REASON"))
        if problems:
            return RefundResult(None, None, problems)
        payment = await self.store.payments.get(payment_id)
        if payment is None or not visible(payment["branch"]):
            return RefundResult(
                None, None, _problem("paymentId", "no such payment", "PAYMENT_NOT_FOUND")
            )
        now = self._now()
        request_hash = hashlib.sha256(f"{payment_id}:{amount_fen}".encode()).hexdigest()
        request, created = await self.store.payments.insert_refund_once(
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
            return RefundResult(
                None,
                None,
                _problem(
                    "idempotencyKey",
                    "this idempotencyKey was already used for a different refund",
                    "IDEMPOTENCY_KEY_REUSED",
                ),
            )
        out_refund_no: str = request["_id"]

        def reserve(current: Attempt) -> Attempt | None:
            if current.refund(out_refund_no) is not None:
                return None  # reserved by the first call with this key
            return reserve_refund(current, out_refund_no, amount_fen, now, reason=reason)

        try:
            await self._change(payment_id, reserve)
        except RefundRefused as refused:
            # Nothing of this request may stay written: the same key may be retried.
            await self.store.payments.forget_refund_request(out_refund_no)
            return RefundResult(None, None, _problem("amountFen", refused.message, refused.code))
        if created:
            await self.store.audit.record(
                actor,
                AuditAction.REFUND_ISSUED,
                out_refund_no,
                {"paymentId": str(payment_id), "amountFen": amount_fen, "reason": reason},
                branch=payment["branch"],
            )
        await self._submit_refund(payment_id, out_refund_no)
        payment = await self.store.payments.get(payment_id)
        assert payment is not None
        line = _refund_doc(payment, out_refund_no)
        if line is not None and line["status"] == RefundStatus.FAILED.value:
            stored = await self.store.payments.refund_request(out_refund_no) or {}
            return RefundResult(
                None,
                None,
                _problem(
                    "paymentId",
                    f"{payment['provider']} did not make the refund: "
                    f"{stored.get('failure', 'refused')}",
                    "REFUND_FAILED",
                ),
            )
        return RefundResult(payment, line, [])

    # --- closing ----------------------------------------------------------------------

    async def close_open_attempts(self, order: Mapping[str, Any]) -> bool:
        """Close every PENDING attempt of the order at its platform; True when none stays open.

        A platform that refuses because the attempt was paid is asked for the
        facts, which are applied (the order may turn PAID instead of closing).
        """
        all_closed = True
        for payment in await self.store.payments.open_of_order(order["_id"]):
            provider = self.registry.provider(payment["branch"], payment["provider"])
            if provider is None:
                all_closed = False
                continue
            try:
                await provider.close(payment["outTradeNo"])
            except Exception as error:
                log.info("close of %s refused (%s); querying it", payment["outTradeNo"], error)
                if not await self._query_and_apply(provider, payment):
                    all_closed = False
                continue
            await self._change(payment["_id"], close_unpaid)
        return all_closed

    async def _query_and_apply(self, provider: Provider, payment: Document) -> bool:
        """Apply what the platform reports of the attempt; True once it is no longer PENDING."""
        try:
            result = await provider.query(payment["outTradeNo"])
        except Exception as error:
            log.warning("query of %s failed: %s", payment["outTradeNo"], error)
            return False
        await self._apply_query(payment, result)
        current = await self.store.payments.get(payment["_id"])
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
        now = self._now()
        pending = await self.store.payments.pending(
            created_after=now - since if since is not None else None,
            created_before=now - min_age,
            branch=branch,
        )
        # Events stored but never applied (the process stopped in between, and the
        # platform gave up re-sending) are finished here.
        unapplied = await self.store.payments.unapplied_events(received_before=now - min_age)
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
        payment = await self.store.payments.get(stored["paymentId"]) or {}
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
            result = await self.apply_event(stored["provider"], stored["branch"], event)
            note = f"stored event {stored['eventId']} applied: {result.note}"
        except Exception as error:
            log.exception("stored event %s could not be applied", stored["_id"])
            note = f"stored event {stored['eventId']} failed: {type(error).__name__}"
        after = await self.store.payments.get(stored["paymentId"]) or {}
        return ReconcileRow(
            stored["outTradeNo"],
            stored["branch"],
            stored["provider"],
            before,
            str(after.get("status", "?")),
            note,
        )

    async def reconcile_due(self, min_age: timedelta) -> ReconcileReport:
        report = await self.reconcile(min_age=min_age)
        if report.changed:
            log.info("reconciliation settled %d of %d attempts", report.changed, len(report.rows))
        return report

    async def _reconcile_one(self, payment: Document) -> ReconcileRow:
        before = payment["status"]

        def row(after: str, note: str) -> ReconcileRow:
            return ReconcileRow(
                payment["outTradeNo"], payment["branch"], payment["provider"], before, after, note
            )

        provider = self.registry.provider(payment["branch"], payment["provider"])
        if provider is None:
            return row(before, "provider not configured for the branch")
        notes: list[str] = []
        if before == PaymentStatus.PENDING.value:
            try:
                result = await provider.query(payment["outTradeNo"])
            except Exception as error:
                return row(before, f"query failed: {error}")
            notes.append(f"platform says {result.state.value}")
            await self._apply_query(payment, result)
            if result.state is AttemptState.UNKNOWN:
                order = await self.store.orders.get(payment["orderId"])
                if order is None or order["status"] != OrderStatus.PENDING_PAYMENT.value:
                    # Never opened at the platform, and its order no longer waits for it.
                    await self._change(payment["_id"], close_unpaid)
        for line in attempt_of(payment).refunds:
            if line.status is RefundStatus.PENDING:
                await self._submit_refund(payment["_id"], line.out_refund_no)
                notes.append(f"refund {line.out_refund_no} resubmitted")
        current = await self.store.payments.get(payment["_id"]) or payment
        return row(current["status"], "; ".join(notes) or "nothing to do")

    async def _apply_query(self, payment: Document, result: QueryResult) -> None:
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
                    occurred_at=self._now(),
                    provider_trade_no=result.provider_trade_no,
                ),
            )

    # --- hooks ------------------------------------------------------------------------

    def _hook(self, name: str, **documents: Mapping[str, Any]) -> None:
        if self.plugins is None:
            return
        notify(self.plugins, name, **documents)


_SETTLED = {
    AttemptState.SUCCEEDED: EventKind.PAYMENT_SUCCEEDED,
    AttemptState.FAILED: EventKind.PAYMENT_FAILED,
    AttemptState.CLOSED: EventKind.PAYMENT_CLOSED,
}


def _refund_doc(payment: Document, out_refund_no: str) -> Document | None:
    return next((r for r in payment.get("refunds", []) if r["outRefundNo"] == out_refund_no), None)


def _unavailable(provider: str) -> list[Problem]:
    return _problem(
        "provider",
        f"{provider} could not open the payment just now; try again or choose another provider",
        "PROVIDER_UNAVAILABLE",
    )


def _return_url_problem(value: str) -> str | None:
    if (why := RETURN_URL.problem(value, "returnUrl")) is not None:
        return why
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket, or a host NFKC would change
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return f"returnUrl must be an http(s) URL with a host, of {RETURN_URL.summary}"
    return None


def _subject(order: Mapping[str, Any]) -> str:
    items: Sequence[Mapping[str, Any]] = order.get("items", [])
    if not items:
        return f"Order {order['_id']}"
    first = str(items[0]["title"])[:40]
    return first if len(items) == 1 else f"{first} and {len(items) - 1} more"
