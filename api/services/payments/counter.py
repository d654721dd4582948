"""Counter sales: a payment code scanned at a business-hall counter, charged and followed.

``startPayment`` with ``PAYMENT_CODE`` stores the attempt, then :meth:`Counter.charge`
makes the platform's synchronous micro-pay / code-pay call. Paid at once: the
fact goes through the exactly-once path like any notification. Surely refused:
the attempt is FAILED. Otherwise (the payer confirms on the phone, or the
answer was lost) the sale is *followed*: the attempt carries a ``counter``
field (next step due, the wait's deadline, polls and reverse tries made), and
every process's :meth:`Counter.work_due` claims due sales one by one with a
conditional write, so each step of each sale runs in one process.

A step queries the platform and applies what it says. When the wait ends with
the outcome still unknown, the attempt is marked as being reversed (it can no
longer pay its order), and the platform is asked to reverse it: closed if
unpaid, the money returned if paid. A reverse that is refused for now is asked
again; one the platform will not do because the sale is paid keeps the sale as
paid, and it pays its order. So a timed-out sale is never left charged with
its order unpaid, and a success that arrives by query, by notification and in
the synchronous answer at once is applied once (the facts share event ids).

The scanned code is the payer's one-time secret: it reaches the provider and
nothing else (no log line, no stored field, no error message).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from api.domain.payment import (
    PaymentStatus,
    ReversalState,
    begin_reversal,
    fail_unpaid,
    finish_reversal,
    keep_paid,
)
from api.plugins.contract import (
    AttemptState,
    GatewayError,
    PaymentRequest,
    Provider,
    QueryResult,
    ReverseState,
)
from api.services.payments.context import Document, PaymentContext, log
from api.services.payments.facts import Facts
from api.telemetry import metrics

# How many due sales one call of work_due takes on before it yields.
BATCH = 50


@dataclass(frozen=True, slots=True)
class CounterTiming:
    """How a followed counter sale is paced (settings ``counter_*``; docs/payments.md).

    WeChat Pay suggests a query every 10 s for 45 s and no reverse within 15 s
    of the charge; Alipay's demo polls every 5 s for 25 s; our defaults poll
    every 5 s for 45 s.
    """

    poll_seconds: float = 5.0
    wait_seconds: float = 45.0
    reverse_retry_seconds: float = 10.0
    # A claim holds a sale this long; a process that dies mid-step leaves it due again after.
    hold_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """What the synchronous call came to: the attempt as stored, and whether it is followed."""

    payment: Document
    declined: bool = False


class Counter:
    def __init__(self, context: PaymentContext, facts: Facts, timing: CounterTiming) -> None:
        self.context = context
        self.facts = facts
        self.timing = timing

    async def charge(
        self, payment: Document, provider: Provider, request: PaymentRequest
    ) -> ChargeResult:
        """Charge the scanned code; the attempt paid, FAILED, or followed until it settles."""
        ctx = self.context
        name = payment["provider"]
        try:
            with metrics.gateway_call(name, "code_pay"):
                result = await provider.pay_with_code(request)
        except GatewayError as error:
            if not error.outcome_unknown:
                failed = await ctx.change(payment["_id"], fail_unpaid)
                return ChargeResult(failed or payment, declined=True)
            log.warning(
                "counter sale %s: %s may have charged it (%s); following it",
                payment["outTradeNo"],
                name,
                error,
            )
            return ChargeResult(await self._follow(payment))
        except Exception:
            log.exception(
                "counter sale %s: %s failed unexpectedly; following it",
                payment["outTradeNo"],
                name,
            )
            return ChargeResult(await self._follow(payment))
        await self.facts.apply_query(payment, result)
        if result.state is AttemptState.FAILED:
            failed = await ctx.change(payment["_id"], fail_unpaid)
            return ChargeResult(failed or await self._fresh(payment), declined=True)
        fresh = await self._fresh(payment)
        if fresh["status"] == PaymentStatus.PENDING.value:
            return ChargeResult(await self._follow(fresh))
        return ChargeResult(fresh)

    async def _fresh(self, payment: Document) -> Document:
        return await self.context.store.payments.get(payment["_id"]) or payment

    async def _follow(self, payment: Document) -> Document:
        now = self.context.now()
        await self.context.store.payments.follow_counter_sale(
            payment["_id"],
            {
                "nextAt": now + timedelta(seconds=self.timing.poll_seconds),
                "deadline": now + timedelta(seconds=self.timing.wait_seconds),
                "polls": 0,
                "reverseTries": 0,
                "claims": 0,
            },
        )
        return await self._fresh(payment)

    async def work_due(self) -> int:
        """Take the next step of every counter sale that is due; how many steps were taken."""
        store = self.context.store
        steps = 0
        for _ in range(BATCH):
            now = self.context.now()
            claimed = await store.payments.claim_counter_sale(
                now, now + timedelta(seconds=self.timing.hold_seconds)
            )
            if claimed is None:
                break
            steps += 1
            try:
                await self._step(claimed)
            except Exception:
                # The claim runs out and the sale is due again; nothing is lost.
                log.exception("counter sale %s: step failed", claimed.get("outTradeNo"))
        return steps

    async def _step(self, payment: Document) -> None:
        store = self.context.store
        counter = payment["counter"]
        claims = int(counter["claims"])
        provider = self.context.registry.provider(payment["branch"], payment["provider"])
        if provider is None:
            # The branch's config no longer has the provider; look again later.
            await self._again(payment, claims, self.timing.reverse_retry_seconds, {})
            return
        reversal = payment.get("reversal")
        if reversal is None:
            if payment["status"] != PaymentStatus.PENDING.value:
                await store.payments.stop_following(payment["_id"])
                return
            await self._query(provider, payment)
            fresh = await self._fresh(payment)
            if fresh["status"] != PaymentStatus.PENDING.value:
                await store.payments.stop_following(payment["_id"])
                return
            now = self.context.now()
            if now < counter["deadline"]:
                await self._again(
                    payment, claims, self.timing.poll_seconds, {"polls": counter["polls"] + 1}
                )
                return
            log.warning(
                "counter sale %s: still unknown after %s s; reversing it",
                payment["outTradeNo"],
                self.timing.wait_seconds,
            )
            marked = await self.context.change(payment["_id"], begin_reversal)
            if marked is None:
                # Settled between the query and the mark (a notification won): done.
                await store.payments.stop_following(payment["_id"])
                return
        elif reversal == ReversalState.DONE.value:
            await store.payments.stop_following(payment["_id"])
            return
        await self._reverse(provider, payment, claims, int(counter["reverseTries"]))

    async def _query(self, provider: Provider, payment: Document) -> QueryResult | None:
        try:
            with metrics.gateway_call(payment["provider"], "query"):
                result = await provider.query(payment["outTradeNo"])
        except GatewayError as error:
            log.warning("counter sale %s: query failed (%s)", payment["outTradeNo"], error)
            return None
        await self.facts.apply_query(payment, result)
        return result

    async def _reverse(
        self, provider: Provider, payment: Document, claims: int, tries: int
    ) -> None:
        store = self.context.store
        out_trade_no = payment["outTradeNo"]
        try:
            with metrics.gateway_call(payment["provider"], "reverse"):
                answer = await provider.reverse(out_trade_no)
        except GatewayError as error:
            log.warning("counter sale %s: reverse failed (%s); asking again", out_trade_no, error)
            await self._again(
                payment, claims, self.timing.reverse_retry_seconds, {"reverseTries": tries + 1}
            )
            return
        if answer.state is ReverseState.RETRY:
            await self._again(
                payment, claims, self.timing.reverse_retry_seconds, {"reverseTries": tries + 1}
            )
            return
        if answer.state is ReverseState.DONE:
            now = self.context.now()
            done = await self.context.change(
                payment["_id"], lambda attempt: finish_reversal(attempt, now)
            )
            await store.payments.stop_following(payment["_id"])
            log.info("counter sale %s: reversed at the platform", out_trade_no)
            if done is not None:
                await self.facts.settle(done)
            return
        # PAID: the platform keeps the sale; so do we, and it pays its order.
        kept = await self.context.change(payment["_id"], keep_paid)
        fresh = kept or await self._fresh(payment)
        if fresh["status"] == PaymentStatus.PENDING.value:
            await self._query(provider, fresh)
            fresh = await self._fresh(fresh)
        await store.payments.stop_following(payment["_id"])
        await self.facts.settle(fresh)

    async def _again(
        self, payment: Document, claims: int, after_seconds: float, fields: Document
    ) -> None:
        next_at: datetime = self.context.now() + timedelta(seconds=after_seconds)
        await self.context.store.payments.schedule_counter_sale(
            payment["_id"], claims, {"nextAt": next_at, **fields}
        )
