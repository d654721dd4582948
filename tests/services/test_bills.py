"""Bill reconciliation against the sandbox simulator's real bills, on the suite's store.

branchpay runs (real app, uvicorn) beside its sandbox simulator; payments are
made and settled the way a payer does, and the simulator's bill controls
change what its bill of a day says. The reconciliation runs in the test's own
event loop with store clients of its own, as another process would.
"""

from __future__ import annotations

import asyncio
import json
import time as clock_time
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomlkit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.config.live import ProviderRegistry
from api.domain.beijing import BEIJING
from api.domain.bills import day_bounds
from api.domain.problems import ServiceError, UserErrorCode
from api.services.bills import BillReconciliation
from api.services.payments import PaymentService
from api.store import Store
from providers.kit.loopback import LoopbackServer
from tests.services.conftest import (
    BJ_ADMIN,
    OPS,
    ZJ_ADMIN,
    ZJ_PARTNER,
    PayService,
    all_discrepancies,
    kinds,
    reconciler,
    today,
)

# Each pays now and reconciles today's bill (a Beijing day).
pytestmark = pytest.mark.usefixtures("clear_of_beijing_midnight")


def publish_current_day(service: PayService, publish: bool = True) -> None:
    response = httpx.put(
        f"{service.gateway_url}/control/bills", json={"publishCurrentDay": publish}
    )
    response.raise_for_status()


def adjust(service: PayService, **fields: Any) -> None:
    response = httpx.post(f"{service.gateway_url}/control/bills/adjustments", json=fields)
    assert response.status_code == 201, response.text


def forget_adjustments(service: PayService) -> None:
    httpx.delete(f"{service.gateway_url}/control/bills/adjustments").raise_for_status()


def started(service: PayService, branch: str = "zj") -> dict[str, Any]:
    """An attempt opened at the sandbox, not yet settled."""
    offering = {"zj": "zj-plan-59", "bj": "bj-plan-59"}.get(branch, "zj-plan-59")
    order = service.create_order(branch, offering)
    payload = service.start_payment(order["id"])
    assert payload["userErrors"] == [], payload
    payment: dict[str, Any] = payload["payment"]
    payment["orderId"] = order["id"]
    return payment


def paid(
    service: PayService, branch: str = "zj", occurred_at: datetime | None = None
) -> dict[str, Any]:
    """An attempt settled at the sandbox and its notification delivered (optionally retimed)."""
    payment = started(service, branch)
    notification = service.settle(payment["outTradeNo"])
    if occurred_at is not None:
        body = json.loads(notification["body"])
        body["occurred_at"] = occurred_at.isoformat()
        notification = service.sign(body)
    assert service.deliver(notification, branch).status_code == 200
    return payment


def stored_payment(service: PayService, out_trade_no: str) -> dict[str, Any]:
    doc = service.db.payments.find_one({"outTradeNo": out_trade_no})
    assert doc is not None
    return doc


# --- a clean day -----------------------------------------------------------------------------


async def test_a_clean_day_matches_every_line_and_the_sums_equal_the_bills_totals(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    first, second = paid(service), paid(service)
    refund = service.refund(first["id"], 500)
    assert refund["userErrors"] == [], refund
    paid(service, "bj")  # another branch's merchant: not on zj's bill
    amount = first["amount"]["amountFen"] + second["amount"]["amountFen"]
    before = datetime.now(UTC)
    progress: list[tuple[str, int]] = []

    async with reconciler(service) as recon:
        report = await recon.run(
            ZJ_ADMIN,
            branch="zj",
            provider="sandbox",
            day=today(),
            progress=lambda stage, n: progress.append((stage, n)),
        )
        assert report["_id"] == f"zj:sandbox:{today().isoformat()}"
        assert report["status"] == "COMPLETE" and report["error"] is None
        totals = report["totals"]
        assert totals["billLines"] == 3 and totals["matchedCount"] == 3
        assert totals["matchedFen"] == amount + 500
        assert (totals["paymentCount"], totals["paymentFen"]) == (2, amount)
        assert (totals["refundCount"], totals["refundFen"]) == (1, 500)
        assert totals["feeFen"] != 0
        assert totals["bill"] == {
            key: totals[key]
            for key in ("paymentCount", "paymentFen", "refundCount", "refundFen", "feeFen")
        }
        assert totals["billTotalsAgree"] is True
        assert report["discrepancyCounts"] == {} and report["openDiscrepancies"] == 0
        assert await all_discrepancies(recon, report["_id"]) == []
        assert [stage for stage, _ in progress][-1] == "match"
        assert ("download", 0) not in progress and any(s == "download" for s, _ in progress)

        # The same report again, one reconciliation, nothing added.
        again = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        assert again["totals"] == totals and again["runs"] == 2
        assert service.db.reconciliations.count_documents({}) == 1

    # Facts recorded when the platform says each attempt was paid.
    for payment in (first, second):
        paid_at = stored_payment(service, payment["outTradeNo"])["paidAt"]
        assert before - timedelta(minutes=1) < paid_at <= before


# --- every kind of discrepancy ---------------------------------------------------------------


async def test_each_discrepancy_kind_is_reported_with_its_ids_and_a_rerun_adds_no_second_set(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    fine, dropped, changed, doubled = (paid(service) for _ in range(4))
    failed = started(service)
    assert service.deliver(service.settle(failed["outTradeNo"], "fail")).status_code == 200
    adjust(service, action="drop", outTradeNo=dropped["outTradeNo"])
    adjust(service, action="amount", outTradeNo=changed["outTradeNo"], amountFen=1)
    adjust(service, action="duplicate", outTradeNo=doubled["outTradeNo"])
    adjust(service, action="add", kind="PAYMENT", outTradeNo="BILLONLY0001", amountFen=4200)
    adjust(
        service,
        action="add",
        kind="PAYMENT",
        outTradeNo=failed["outTradeNo"],
        amountFen=failed["amount"]["amountFen"],
    )

    async with reconciler(service) as recon:
        report = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        rec_id = report["_id"]
        assert report["status"] == "COMPLETE"
        found = await all_discrepancies(recon, rec_id)
        assert kinds(found) == {
            ("MISSING_ON_PLATFORM", dropped["outTradeNo"]),
            ("AMOUNT_MISMATCH", changed["outTradeNo"]),
            ("DUPLICATE_ON_BILL", doubled["outTradeNo"]),
            ("MISSING_LOCALLY", "BILLONLY0001"),
            ("STATUS_MISMATCH", failed["outTradeNo"]),
        }
        by_kind = {d["kind"]: d for d in found}
        assert by_kind["AMOUNT_MISMATCH"]["_id"] == (
            f"{rec_id}:AMOUNT_MISMATCH:{changed['outTradeNo']}:"
        )
        assert by_kind["AMOUNT_MISMATCH"]["billAmountFen"] == 1
        assert by_kind["AMOUNT_MISMATCH"]["ourAmountFen"] == changed["amount"]["amountFen"]
        assert by_kind["STATUS_MISMATCH"]["ourStatus"] == "FAILED"
        assert by_kind["STATUS_MISMATCH"]["billStatus"] == "SUCCEEDED"
        assert by_kind["MISSING_ON_PLATFORM"]["billAmountFen"] is None
        assert by_kind["MISSING_LOCALLY"]["ourAmountFen"] is None
        assert all(d["ageDays"] == 0 and not d["stale"] for d in found)
        assert report["discrepancyCounts"] == {
            "MISSING_ON_PLATFORM": 1,
            "AMOUNT_MISMATCH": 1,
            "DUPLICATE_ON_BILL": 1,
            "MISSING_LOCALLY": 1,
            "STATUS_MISMATCH": 1,
        }
        assert report["openDiscrepancies"] == 5
        assert fine["outTradeNo"] not in {d["outTradeNo"] for d in found}

        # A page by id, filtered by kind and state.
        page, more = await recon.discrepancies(
            OPS, rec_id, first=2, after=None, kind=None, open=True
        )
        rest, last = await recon.discrepancies(
            OPS, rec_id, first=10, after=page[-1]["_id"], kind=None, open=True
        )
        assert more and not last
        assert [d["_id"] for d in page + rest] == sorted(d["_id"] for d in found)
        only, _ = await recon.discrepancies(
            OPS, rec_id, first=10, after=None, kind="MISSING_LOCALLY", open=None
        )
        assert [d["outTradeNo"] for d in only] == ["BILLONLY0001"]

        # Run again: the same report and the same documents, never a second set.
        again = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        assert again["discrepancyCounts"] == report["discrepancyCounts"]
        assert again["totals"] == report["totals"]
        assert service.db.discrepancies.count_documents({}) == 5
        assert {d["detectedAt"] for d in await all_discrepancies(recon, rec_id)} == {
            d["detectedAt"] for d in found
        }

        # The platform corrects its bill: what is no longer found is CLEARED.
        forget_adjustments(service)
        fixed = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        assert fixed["openDiscrepancies"] == 0 and fixed["discrepancyCounts"] == {}
        after = await all_discrepancies(recon, rec_id)
        assert len(after) == 5
        assert {d["resolution"]["how"] for d in after} == {"CLEARED"}


# --- day boundaries ----------------------------------------------------------------------------


async def test_a_payment_across_midnight_is_matched_once_and_flagged_on_neither_day(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    midnight = day_bounds(today())[0]  # today 00:00 Beijing
    yesterday = today() - timedelta(days=1)
    # Ours just before midnight, the platform's just after; and the other way round.
    late = paid(service, occurred_at=midnight - timedelta(seconds=2))
    early = paid(service, occurred_at=midnight + timedelta(seconds=2))
    adjust(
        service,
        action="retime",
        outTradeNo=late["outTradeNo"],
        at=(midnight + timedelta(seconds=1)).isoformat(),
    )
    adjust(
        service,
        action="retime",
        outTradeNo=early["outTradeNo"],
        at=(midnight - timedelta(seconds=1)).isoformat(),
    )
    assert stored_payment(service, late["outTradeNo"])["paidAt"] == midnight - timedelta(seconds=2)

    async with reconciler(service) as recon:
        before = await recon.run(OPS, branch="zj", provider="sandbox", day=yesterday)
        on_the_day = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        assert before["status"] == on_the_day["status"] == "COMPLETE"
        assert before["totals"]["matchedCount"] == 1  # early, billed yesterday
        assert on_the_day["totals"]["matchedCount"] == 1  # late, billed today
        assert before["openDiscrepancies"] == on_the_day["openDiscrepancies"] == 0
        assert service.db.discrepancies.count_documents({}) == 0
        # Run again in the other order: still nothing flagged.
        await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        again = await recon.run(OPS, branch="zj", provider="sandbox", day=yesterday)
        assert again["openDiscrepancies"] == 0
    marks = {doc["_id"]: doc["billDate"] for doc in service.db.bill_marks.find()}
    assert marks == {
        f"zj:sandbox:PAYMENT:{late['outTradeNo']}:": today().isoformat(),
        f"zj:sandbox:PAYMENT:{early['outTradeNo']}:": yesterday.isoformat(),
    }


async def test_a_payment_just_before_midnight_missing_from_every_bill_is_flagged_on_the_next_day(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    midnight = day_bounds(today())[0]
    gone = paid(service, occurred_at=midnight - timedelta(seconds=30))
    adjust(service, action="drop", outTradeNo=gone["outTradeNo"])
    async with reconciler(service) as recon:
        yesterday = await recon.run(
            OPS, branch="zj", provider="sandbox", day=today() - timedelta(days=1)
        )
        # The simulator has nothing on yesterday's bill: no bill, and ours is left to today.
        assert yesterday["status"] == "NO_BILL" and yesterday["openDiscrepancies"] == 0
        report = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        assert report["status"] == "NO_BILL"
        assert kinds(await all_discrepancies(recon, report["_id"])) == {
            ("MISSING_ON_PLATFORM", gone["outTradeNo"])
        }


# --- missed notifications --------------------------------------------------------------------


async def test_a_missed_notification_is_applied_once_when_repeated_and_when_two_runs_race(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    missed = started(service)
    service.settle(missed["outTradeNo"])  # the platform has it paid; we never heard
    assert stored_payment(service, missed["outTradeNo"])["status"] == "PENDING"

    async with reconciler(service) as one, reconciler(service) as other:
        first, second = await asyncio.gather(
            one.run(OPS, branch="zj", provider="sandbox", day=today()),
            other.run(ZJ_ADMIN, branch="zj", provider="sandbox", day=today()),
        )
        assert first == second  # the second waited for the first and returned its result
        assert first["runs"] == 1
        assert first["status"] == "COMPLETE" and first["openDiscrepancies"] == 0
        assert first["discrepancyCounts"] == {"STATUS_MISMATCH": 1}
        assert service.order(missed["orderId"])["status"] == "PAID"
        assert stored_payment(service, missed["outTradeNo"])["status"] == "SUCCEEDED"
        assert service.db.payment_events.count_documents({}) == 1
        assert stored_payment(service, missed["outTradeNo"])["paidAt"] is not None
        (found,) = await all_discrepancies(one, first["_id"])
        assert found["kind"] == "STATUS_MISMATCH" and not found["open"]
        assert found["resolution"]["how"] == "APPLIED"
        assert found["resolution"]["by"] == "reconciliation"

        # Again, and twice at once again: nothing more applied, the same report.
        third, fourth = await asyncio.gather(
            one.run(OPS, branch="zj", provider="sandbox", day=today()),
            other.run(OPS, branch="zj", provider="sandbox", day=today()),
        )
        assert third["discrepancyCounts"] == fourth["discrepancyCounts"] == {"STATUS_MISMATCH": 1}
        assert third["totals"]["matchedCount"] == 1 and third["openDiscrepancies"] == 0
        assert service.db.payment_events.count_documents({}) == 1
        assert service.db.discrepancies.count_documents({}) == 1
        assert (
            len(service.db.payments.find_one({"outTradeNo": missed["outTradeNo"]})["eventIds"]) == 1
        )


async def test_a_refund_on_the_bill_we_hold_as_pending_is_resubmitted_and_applied(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    payment = paid(service)
    # The platform takes the refund, but neither its answer nor its notification reaches us.
    response = httpx.post(
        f"{service.gateway_url}/control/faults", json={"status": 503, "count": 10}
    )
    response.raise_for_status()
    refund = service.refund(payment["id"], 300)
    httpx.delete(f"{service.gateway_url}/control/faults").raise_for_status()
    line = stored_payment(service, payment["outTradeNo"])["refunds"][0]
    assert line["status"] == "PENDING", refund
    adjust(
        service,
        action="add",
        kind="REFUND",
        outTradeNo=payment["outTradeNo"],
        outRefundNo=line["outRefundNo"],
        amountFen=300,
    )
    async with reconciler(service) as recon:
        report = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        (found,) = await all_discrepancies(recon, report["_id"])
        assert (found["kind"], found["outRefundNo"]) == ("STATUS_MISMATCH", line["outRefundNo"])
        assert found["resolution"]["how"] == "APPLIED" and report["openDiscrepancies"] == 0
    assert stored_payment(service, payment["outTradeNo"])["refunds"][0]["status"] == "SUCCEEDED"


# --- resolving by hand, ages ---------------------------------------------------------------------


async def test_resolving_with_a_note_is_audited_and_old_open_ones_are_flagged_stale(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    adjust(service, action="add", kind="PAYMENT", outTradeNo="BILLONLY0002", amountFen=100)
    adjust(service, action="add", kind="PAYMENT", outTradeNo="BILLONLY0003", amountFen=200)
    now = datetime.now(UTC)
    clock = {"now": now}
    async with reconciler(service, clock=lambda: clock["now"], stale_days=3) as recon:
        report = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        rec_id = report["_id"]
        clock["now"] = now + timedelta(days=4)
        docs = await all_discrepancies(recon, rec_id)
        assert [(d["ageDays"], d["stale"]) for d in docs] == [(4, True), (4, True)]
        target = docs[0]["_id"]

        for principal, code in (
            (BJ_ADMIN, UserErrorCode.DISCREPANCY_NOT_FOUND),
            (OPS, UserErrorCode.DISCREPANCY_NOT_FOUND),
        ):
            with pytest.raises(ServiceError) as refused:
                await recon.resolve(
                    principal, target if principal is BJ_ADMIN else "nosuch", "checked"
                )
            assert refused.value.code is code
        for note in ("", "x" * 501, "nul\x00"):
            with pytest.raises(ServiceError) as refused:
                await recon.resolve(ZJ_ADMIN, target, note)
            assert refused.value.code is UserErrorCode.INVALID_NOTE
        assert service.db.audit_log.count_documents({}) == 0
        with pytest.raises(PermissionError):
            await recon.resolve(ZJ_PARTNER, target, "checked")

        resolved = await recon.resolve(ZJ_ADMIN, target, "booked by hand\nticket 42")
        assert not resolved["open"] and not resolved["stale"] and resolved["ageDays"] == 4
        assert resolved["resolution"]["how"] == "MANUAL"
        assert resolved["resolution"]["by"] == "zj-admin"
        assert resolved["resolution"]["note"] == "booked by hand\nticket 42"
        with pytest.raises(ServiceError) as again:
            await recon.resolve(OPS, target, "twice")
        assert again.value.code is UserErrorCode.DISCREPANCY_RESOLVED
        entry = service.db.audit_log.find_one({"action": "DISCREPANCY_RESOLVED"})
        assert entry is not None
        assert (entry["actor"], entry["target"], entry["branch"]) == ("zj-admin", target, "zj")
        assert entry["detail"]["note"] == "booked by hand\nticket 42"
        assert service.db.audit_log.count_documents({}) == 1
        stored = await recon.reconciliation(OPS, rec_id)
        assert stored is not None and stored["openDiscrepancies"] == 1

        # A re-run keeps the resolved one resolved.
        clock["now"] = datetime.now(UTC)
        await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        still = {d["_id"]: d for d in await all_discrepancies(recon, rec_id)}
        assert still[target]["resolution"]["how"] == "MANUAL"


# --- who may run what, and bills that are not there ---------------------------------------------


async def test_access_is_checked_and_unavailable_bills_are_told_apart(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    async with reconciler(service) as recon:
        with pytest.raises(PermissionError):
            await recon.run(ZJ_PARTNER, branch="zj", provider="sandbox", day=today())
        for principal, branch, provider, day, code in (
            (BJ_ADMIN, "zj", "sandbox", today(), UserErrorCode.UNKNOWN_BRANCH),
            (OPS, "nowhere", "sandbox", today(), UserErrorCode.UNKNOWN_BRANCH),
            (OPS, "zj", "alipay", today(), UserErrorCode.PROVIDER_NOT_ENABLED),
            (OPS, "yn", "sandbox", today(), UserErrorCode.PROVIDER_NOT_ENABLED),  # disabled
            (OPS, "zj", "sandbox", today() + timedelta(days=1), UserErrorCode.INVALID_DATE),
        ):
            with pytest.raises(ServiceError) as refused:
                await recon.run(principal, branch=branch, provider=provider, day=day)
            assert refused.value.code is code, (branch, provider)
        assert service.db.reconciliations.count_documents({}) == 0

        paid(service)
        publish_current_day(service, False)
        waiting = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        assert waiting["status"] == "NOT_READY" and waiting["openDiscrepancies"] == 0

        # The platform fails: FAILED with a coded reason, and the caller carries on.
        httpx.post(
            f"{service.gateway_url}/control/faults", json={"status": 500, "count": 20}
        ).raise_for_status()
        publish_current_day(service)
        failed = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
        httpx.delete(f"{service.gateway_url}/control/faults").raise_for_status()
        assert failed["status"] == "FAILED" and failed["error"].startswith("GATEWAY_ERROR: ")

        done = await recon.run_all(ZJ_ADMIN, day=today())
        assert [(d["branch"], d["status"]) for d in done] == [("zj", "COMPLETE")]
        everything = await recon.run_all(OPS, day=today())
        assert sorted(d["branch"] for d in everything) == ["bj", "zj"]
        listed = await recon.reconciliations(
            BJ_ADMIN, branch=None, provider=None, from_day=today(), to_day=today()
        )
        assert [d["branch"] for d in listed] == ["bj"]
        assert await recon.reconciliation(BJ_ADMIN, done[0]["_id"]) is None
        assert await recon.discrepancies(
            BJ_ADMIN, done[0]["_id"], first=10, after=None, kind=None, open=None
        ) == ([], False)
        with pytest.raises(ServiceError) as backwards:
            await recon.reconciliations(
                OPS, branch=None, provider=None, from_day=today(), to_day=today() - timedelta(1)
            )
        assert backwards.value.code is UserErrorCode.INVALID_DATE


def impostor(gateway_url: str, merchant: str) -> Starlette:
    """Between the adapter and the simulator: every bill comes back as ``merchant``'s."""

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient() as http:
            answer = await http.request(
                request.method,
                gateway_url + request.url.path,
                params=request.query_params,
                headers={k: v for k, v in request.headers.items() if k != "host"},
                content=await request.body(),
            )
        body = answer.content
        if request.url.path.startswith("/api/bills/") and answer.status_code == 200:
            first, rest = body.split(b"\n", 1)
            head = first.decode().split("; ")
            head[1] = f"merchant_id={merchant}"
            body = "; ".join(head).encode() + b"\n" + rest
        return Response(body, answer.status_code, media_type=answer.headers.get("content-type"))

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


async def test_a_bill_of_another_branchs_merchant_is_refused(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    paid(service)
    proxy = LoopbackServer(impostor(service.gateway_url, "bj")).start()
    try:
        config = tomlkit.parse(service.plugins_toml.read_text())
        config["branches"]["zj"]["providers"]["sandbox"]["gateway"] = proxy.url  # type: ignore[index]
        rejecting = service.plugins_toml.with_name("impostor.toml")
        rejecting.write_text(tomlkit.dumps(config))
        async with reconciler(service, plugins_toml=rejecting) as recon:
            report = await recon.run(OPS, branch="zj", provider="sandbox", day=today())
    finally:
        proxy.stop()
    assert report["status"] == "FAILED"
    assert report["error"].startswith("BILL_REJECTED: ") and "bj" in report["error"]
    assert service.db.discrepancies.count_documents({}) == 0


async def test_no_bill_for_a_day_with_our_payments_flags_each_missing_on_platform(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service)
    noon = day_bounds(today() - timedelta(days=1))[0] + timedelta(hours=12)
    ours = paid(service, occurred_at=noon)  # we hold it paid yesterday; the platform today
    adjust(service, action="drop", outTradeNo=ours["outTradeNo"])
    async with reconciler(service) as recon:
        report = await recon.run(
            OPS, branch="zj", provider="sandbox", day=today() - timedelta(days=1)
        )
        assert report["status"] == "NO_BILL" and report["openDiscrepancies"] == 1
        assert kinds(await all_discrepancies(recon, report["_id"])) == {
            ("MISSING_ON_PLATFORM", ours["outTradeNo"])
        }


# --- the scheduled run ----------------------------------------------------------------------------


async def test_the_daily_run_reconciles_yesterday_once_past_the_hour_and_retries_not_ready(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    publish_current_day(service, False)
    paid(service)
    # Our clock a day ahead: "yesterday" is the simulator's today, which it has not published.
    tomorrow = today() + timedelta(days=1)
    clock = {"now": datetime.combine(tomorrow, time(9, 59), tzinfo=BEIJING).astimezone(UTC)}
    async with (
        reconciler(service, clock=lambda: clock["now"]) as one,
        reconciler(service, clock=lambda: clock["now"]) as other,
    ):
        await one.run_due()
        assert service.db.reconciliations.count_documents({}) == 0  # before 10:00 Beijing
        clock["now"] += timedelta(minutes=2)
        await asyncio.gather(one.run_due(), other.run_due())
        stored = {d["_id"]: d for d in service.db.reconciliations.find()}
        assert set(stored) == {
            f"zj:sandbox:{today().isoformat()}",
            f"bj:sandbox:{today().isoformat()}",
        }
        assert {(d["status"], d["runs"]) for d in stored.values()} == {("NOT_READY", 1)}

        publish_current_day(service)
        clock["now"] += timedelta(minutes=5)
        await one.run_due()  # too soon to ask again
        assert {d["runs"] for d in service.db.reconciliations.find()} == {1}
        clock["now"] += timedelta(minutes=30)
        await asyncio.gather(one.run_due(), other.run_due())
        statuses = {
            d["branch"]: (d["status"], d["runs"]) for d in service.db.reconciliations.find()
        }
        assert statuses == {"zj": ("COMPLETE", 2), "bj": ("NO_BILL", 2)}
        clock["now"] += timedelta(hours=2)
        await one.run_due()  # done for the day
        assert {d["runs"] for d in service.db.reconciliations.find()} == {2}

    async with reconciler(service, clock=lambda: clock["now"], daily=False) as off:
        clock["now"] += timedelta(days=1)
        await off.run_due()
        assert service.db.reconciliations.count_documents({}) == 2


def test_a_running_service_reconciles_yesterday_on_its_own_once_past_the_hour(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(bill_reconcile=True, bill_reconcile_at="00:00")
    yesterday = (today() - timedelta(days=1)).isoformat()
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    # The service's own loop: its only outward sign is what it stores.
    while service.db.reconciliations.count_documents({}) < 2:
        assert datetime.now(UTC) < deadline, "the service did not reconcile yesterday"
        clock_time.sleep(0.1)
    stored = {d["_id"]: d["status"] for d in service.db.reconciliations.find()}
    # The simulator's ledger begins today: it has no bill of yesterday.
    assert stored == {f"zj:sandbox:{yesterday}": "NO_BILL", f"bj:sandbox:{yesterday}": "NO_BILL"}


async def test_a_provider_without_bills_is_refused(
    tmp_path: Path, mongo_uri: str, db_name: str, pm: Any
) -> None:
    (tmp_path / "wallet.key").write_text("k")
    config = tmp_path / "plugins.toml"
    config.write_text(
        '[branches.zj]\nname = "Zhejiang"\nprovince = "Zhejiang"\noperator = "China Mobile"\n'
        '[branches.zj.providers.wallet]\nenabled = true\napp_id = "a1"\n'
        'signing_key = { file = "wallet.key" }\n'
    )
    store = Store.connect(mongo_uri, db_name)
    try:
        async with httpx.AsyncClient() as http:
            registry = ProviderRegistry(config, pm, http)
            registry.load()
            payments = PaymentService(store, registry, base_url=lambda: "http://127.0.0.1")
            recon = BillReconciliation(store, registry, payments)
            with pytest.raises(ServiceError) as refused:
                await recon.run(OPS, branch="zj", provider="wallet", day=today())
            assert refused.value.code is UserErrorCode.BILLS_NOT_SUPPORTED
            # Reconciling every provider of the branch passes over it.
            assert await recon.run_all(OPS, day=today(), branch="zj") == []
    finally:
        await store.close()
