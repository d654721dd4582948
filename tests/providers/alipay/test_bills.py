# ruff: noqa: RUF001 (the bill layout's full-width punctuation is what Alipay writes)
"""Alipay daily bills end to end: the adapter against the simulator over loopback HTTP.

A simulator of its own (module scope) so the bills hold only these tests'
trades: payments and refunds made through the adapter show up on the day's
bill with their kinds, amounts, fees and times; the bill query tells "not
published yet" from "no bill"; the test controls' adjustments reach the file;
a bill of another merchant and an expired link are refused. The bill query
is also made with python-alipay-sdk, code nobody here wrote.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException

from api.plugin import (
    BEIJING,
    BillLine,
    BillLineKind,
    BillRejected,
    BillTotals,
    BillUnavailable,
    BillUnavailableReason,
    GatewayError,
    PaymentMethod,
    PaymentRequest,
    RefundRequest,
    RefundState,
    day_bounds,
    private_key_pem,
    public_key_pem,
)
from providers.alipay import AlipayProvider
from providers.alipay.bills import BILL_METHOD, EMPTY_DATA_WITH_BILL_FILE
from providers.alipay.provider import bill_unavailable_reason
from providers.alipay.simulator import AlipaySimulator, create_app
from providers.kit.bills import CURRENT_DAY_ENV
from providers.kit.loopback import LoopbackServer
from tests.providers.alipay.support import (
    APP_ID,
    BRANCH,
    SELLER_ID,
    RunningSimulator,
    alipay_http,
    app_key,
    platform_key,
    rsa_key,
    settings_for,
)

__all__ = ["alipay_http"]

ACCOUNT = SELLER_ID + "0156"
NOTIFY_URL = f"http://127.0.0.1:9/notify/alipay/{BRANCH}"


def simulator_app(**options: Any) -> Any:
    values: dict[str, Any] = {
        "apps": {APP_ID: app_key().public_key()},
        "alipay_private_key": platform_key(),
        "seller_id": SELLER_ID,
        "publish_current_day": False,
    }
    values.update(options)
    return create_app(**values)


@pytest.fixture(scope="module")
def bill_simulator() -> Iterator[RunningSimulator]:
    app = simulator_app()
    with LoopbackServer(app) as server:
        yield RunningSimulator(server.url, app.state.simulator)


@pytest.fixture
async def provider(
    bill_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> AsyncIterator[AlipayProvider]:
    # Each test starts from a published current day and no adjustments.
    await publish_current_day(alipay_http, bill_simulator, True)
    await alipay_http.delete(f"{bill_simulator.url}/_control/bills/adjustments")
    yield AlipayProvider(settings_for(bill_simulator.gateway), branch=BRANCH, http=alipay_http)
    bill_simulator.simulator.bill_url_seconds = 30.0


async def publish_current_day(
    http: httpx.AsyncClient, sim: RunningSimulator, value: bool
) -> dict[str, Any]:
    response = await http.put(f"{sim.url}/_control/bills", json={"publishCurrentDay": value})
    response.raise_for_status()
    policy: dict[str, Any] = response.json()
    return policy


async def adjust(http: httpx.AsyncClient, sim: RunningSimulator, **fields: Any) -> None:
    response = await http.post(f"{sim.url}/_control/bills/adjustments", json=fields)
    assert response.status_code == 201, response.text


def today() -> date:
    return datetime.now(BEIJING).date()


def new_no(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:20]


async def paid(
    provider: AlipayProvider, http: httpx.AsyncClient, sim: RunningSimulator, amount_fen: int
) -> str:
    """A QR code payment the payer completed (no notification sent)."""
    request = PaymentRequest(
        out_trade_no=new_no("bill"),
        amount_fen=amount_fen,
        currency="CNY",
        subject="浙江 5G 套餐, 188 元",
        method=PaymentMethod.QR_CODE,
        notify_url=NOTIFY_URL,
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
    )
    await provider.create_payment(request)
    settled = await http.post(
        f"{sim.url}/_control/settle/{request.out_trade_no}",
        data={"outcome": "success", "deliver": "0"},
    )
    settled.raise_for_status()
    return request.out_trade_no


async def refunded(
    provider: AlipayProvider, out_trade_no: str, refund_fen: int, total_fen: int
) -> str:
    out_refund_no = new_no("rf")
    result = await provider.refund(
        RefundRequest(
            out_trade_no=out_trade_no,
            out_refund_no=out_refund_no,
            refund_fen=refund_fen,
            total_fen=total_fen,
            currency="CNY",
        )
    )
    assert result.state is RefundState.SUCCEEDED
    return out_refund_no


async def download(provider: AlipayProvider, day: date) -> io.BytesIO:
    file = io.BytesIO()
    await provider.download_bill(day, file)
    file.seek(0)
    return file


async def bill(provider: AlipayProvider, day: date) -> tuple[list[BillLine], BillTotals]:
    items = list(provider.read_bill(await download(provider, day)))
    totals = items.pop()
    assert isinstance(totals, BillTotals)
    assert all(isinstance(item, BillLine) for item in items)
    return [item for item in items if isinstance(item, BillLine)], totals


def of(lines: list[BillLine], out_trade_no: str) -> list[BillLine]:
    return [line for line in lines if line.out_trade_no == out_trade_no]


def whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def assert_totals_add_up(lines: list[BillLine], totals: BillTotals) -> None:
    payments = [line for line in lines if line.kind is BillLineKind.PAYMENT]
    refunds = [line for line in lines if line.kind is BillLineKind.REFUND]
    assert totals == BillTotals(
        payment_count=len(payments),
        payment_fen=sum(line.amount_fen for line in payments),
        refund_count=len(refunds),
        refund_fen=sum(line.amount_fen for line in refunds),
        fee_fen=sum(line.fee_fen for line in lines),
    )


# --- the day's business on the bill -------------------------------------------------


async def test_a_paid_trade_and_its_refund_are_on_the_days_bill(
    provider: AlipayProvider, alipay_http: httpx.AsyncClient, bill_simulator: RunningSimulator
) -> None:
    before = whole_second(datetime.now(UTC))
    out_trade_no = await paid(provider, alipay_http, bill_simulator, 8888)
    out_refund_no = await refunded(provider, out_trade_no, 1000, 8888)
    after = datetime.now(UTC)

    lines, totals = await bill(provider, today())
    payment, refund = of(lines, out_trade_no)
    assert (payment.kind, payment.amount_fen, payment.out_refund_no) == (
        BillLineKind.PAYMENT,
        8888,
        None,
    )
    # 0.6% of 88.88 yuan, rounded half up to the fen; a refund returns its share.
    assert payment.fee_fen == 53
    assert (refund.kind, refund.amount_fen, refund.out_refund_no, refund.fee_fen) == (
        BillLineKind.REFUND,
        1000,
        out_refund_no,
        -6,
    )
    assert payment.provider_trade_no and refund.provider_trade_no == payment.provider_trade_no
    for line in (payment, refund):
        assert before <= line.occurred_at <= after
        assert line.occurred_at.tzinfo is not None
    assert_totals_add_up(lines, totals)


async def test_the_file_is_alipays_zip_of_gbk_csv_with_negative_refund_rows(
    provider: AlipayProvider, alipay_http: httpx.AsyncClient, bill_simulator: RunningSimulator
) -> None:
    out_trade_no = await paid(provider, alipay_http, bill_simulator, 5000)
    out_refund_no = await refunded(provider, out_trade_no, 5000, 5000)
    day = today()
    with zipfile.ZipFile(await download(provider, day)) as archive:
        assert all(info.flag_bits & 0x800 == 0 for info in archive.infolist())
    with zipfile.ZipFile(await download(provider, day), metadata_encoding="gbk") as archive:
        detail_name = f"{ACCOUNT}_{day:%Y%m%d}_业务明细.csv"
        summary_name = f"{ACCOUNT}_{day:%Y%m%d}_业务明细(汇总).csv"
        assert sorted(archive.namelist()) == sorted([detail_name, summary_name])
        detail = archive.read(detail_name).decode("gbk").split("\r\n")
        summary = archive.read(summary_name).decode("gbk").split("\r\n")
    next_day = day + timedelta(days=1)
    assert detail[:4] == [
        "#支付宝业务明细查询",
        f"#账号：[{ACCOUNT}]",
        f"#起始日期：[{day:%Y年%m月%d日} 00:00:00]   终止日期：[{next_day:%Y年%m月%d日} 00:00:00]",
        "#" + "-" * 41 + "业务明细列表" + "-" * 40,
    ]
    header = detail[4].split(",")
    assert len(header) == 25 and header[11] == "订单金额（元）" and header[22] == "服务费（元）"
    rows = [line.split(",") for line in detail if f"{out_trade_no}\t" in line]
    payment, refund = rows
    assert payment[2] == "交易\t" and refund[2] == "退款\t"
    assert payment[3] == "浙江 5G 套餐， 188 元"  # no comma inside an unquoted cell
    assert (payment[11], payment[12], payment[22]) == ("50.00", "50.00", "-0.30")
    assert (refund[11], refund[12], refund[22]) == ("-50.00", "-50.00", "0.30")
    assert refund[21] == f"{out_refund_no}\t" and payment[21] == "\t"
    assert refund[0] == payment[0] and refund[0].endswith("\t")
    # 创建时间 is the payment's on both rows; 完成时间 is when each completed.
    assert refund[4] == payment[4] and refund[5] >= payment[5]
    assert detail.index("#" + "-" * 41 + "业务明细列表结束" + "-" * 36) > detail.index(
        ",".join(refund)
    )
    assert any(line.startswith("#交易合计：") and "笔，商家实收共" in line for line in detail)
    assert any(line.startswith("#退款合计：") and "商家实收退款共-" in line for line in detail)
    assert summary[0] == "#支付宝业务汇总查询"
    assert any(line.startswith("合计,") for line in summary)


async def test_day_boundaries_are_beijing_days_by_completion_time(
    provider: AlipayProvider, alipay_http: httpx.AsyncClient, bill_simulator: RunningSimulator
) -> None:
    day = today()
    start, _ = day_bounds(day)
    late, early = (
        await paid(provider, alipay_http, bill_simulator, 100),
        await paid(provider, alipay_http, bill_simulator, 200),
    )
    last_second = start - timedelta(seconds=1)
    await adjust(
        alipay_http, bill_simulator, action="retime", outTradeNo=late, at=last_second.isoformat()
    )
    await adjust(
        alipay_http, bill_simulator, action="retime", outTradeNo=early, at=start.isoformat()
    )
    # The refund of yesterday's payment is on today's bill.
    refund_no = await refunded(provider, late, 100, 100)

    yesterday, _ = await bill(provider, day - timedelta(days=1))
    current, _ = await bill(provider, day)
    assert [line.occurred_at for line in of(yesterday, late)] == [last_second]
    assert of(yesterday, early) == []
    assert [line.occurred_at for line in of(current, early)] == [start]
    assert [(line.kind, line.out_refund_no) for line in of(current, late)] == [
        (BillLineKind.REFUND, refund_no)
    ]


# --- published or not --------------------------------------------------------------


async def test_today_is_not_published_until_the_control_publishes_it(
    provider: AlipayProvider, alipay_http: httpx.AsyncClient, bill_simulator: RunningSimulator
) -> None:
    out_trade_no = await paid(provider, alipay_http, bill_simulator, 3000)
    policy = await publish_current_day(alipay_http, bill_simulator, False)
    assert policy["publishCurrentDay"] is False
    with pytest.raises(BillUnavailable, match="not published") as refused:
        await download(provider, today())
    assert refused.value.reason is BillUnavailableReason.NOT_READY

    await publish_current_day(alipay_http, bill_simulator, True)
    lines, _ = await bill(provider, today())
    assert [line.amount_fen for line in of(lines, out_trade_no)] == [3000]


async def test_a_day_without_business_is_an_empty_bill(
    provider: AlipayProvider, bill_simulator: RunningSimulator
) -> None:
    lines, totals = await bill(provider, date(2020, 2, 29))
    assert lines == []
    assert totals == BillTotals(0, 0, 0, 0, 0)


async def test_a_day_alipay_does_not_keep_has_no_bill(provider: AlipayProvider) -> None:
    with pytest.raises(BillUnavailable, match="no bill") as refused:
        await download(provider, date(2015, 12, 31))
    assert refused.value.reason is BillUnavailableReason.NO_BILL


def test_refusals_alipay_itself_gives_are_not_ready_until_the_day_is_due() -> None:
    day = date(2025, 6, 1)
    early = datetime(2025, 6, 2, 9, 30, tzinfo=BEIJING)
    due = datetime(2025, 6, 2, 10, 0, tzinfo=BEIJING)
    ready, none = BillUnavailableReason.NOT_READY, BillUnavailableReason.NO_BILL
    assert bill_unavailable_reason("isp.bill_not_ready", day, due) is ready
    assert bill_unavailable_reason("isp.bill_not_exist", day, early) is ready
    assert bill_unavailable_reason("BILL_NOT_EXIST", day, early) is ready
    assert bill_unavailable_reason("isv.invalid-arguments", day, early) is ready
    assert bill_unavailable_reason("isp.bill_not_exist", day, due) is none
    assert bill_unavailable_reason("BILL_NOT_EXIST", day, due) is none
    assert bill_unavailable_reason("isv.invalid-arguments", day, due) is None
    assert bill_unavailable_reason("isp.unknow-error", day, early) is None


def test_the_current_day_follows_the_setting_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    def book_of(**options: Any) -> bool:
        simulator = AlipaySimulator(
            apps={APP_ID: app_key().public_key()}, alipay_private_key=platform_key(), **options
        )
        return simulator.bills.publish_current_day

    monkeypatch.delenv(CURRENT_DAY_ENV, raising=False)
    assert book_of() is False
    monkeypatch.setenv(CURRENT_DAY_ENV, "1")
    assert book_of() is True
    assert book_of(publish_current_day=False) is False


# --- the test controls reach the file ------------------------------------------------


async def test_adjustments_show_up_in_the_downloaded_bill(
    provider: AlipayProvider, alipay_http: httpx.AsyncClient, bill_simulator: RunningSimulator
) -> None:
    dropped, changed, doubled, moved, kept = [
        await paid(provider, alipay_http, bill_simulator, 1000 + n) for n in range(5)
    ]
    refund_no = await refunded(provider, kept, 500, 1004)
    bill_only = new_no("only")
    yesterday_noon = datetime.combine(today() - timedelta(days=1), datetime.min.time(), BEIJING)
    yesterday_noon += timedelta(hours=12)
    for fields in (
        {"action": "add", "kind": "PAYMENT", "outTradeNo": bill_only, "amountFen": 4321},
        {"action": "add", "outTradeNo": kept, "outRefundNo": "rfonly1", "amountFen": 1},
        {"action": "drop", "outTradeNo": dropped},
        {"action": "amount", "outTradeNo": changed, "amountFen": 9999},
        {"action": "amount", "outTradeNo": kept, "outRefundNo": refund_no, "amountFen": 400},
        {"action": "duplicate", "outTradeNo": doubled},
        {"action": "retime", "outTradeNo": moved, "at": yesterday_noon.isoformat()},
    ):
        await adjust(alipay_http, bill_simulator, **fields)

    lines, totals = await bill(provider, today())
    assert [line.amount_fen for line in of(lines, bill_only)] == [4321]
    assert of(lines, dropped) == []
    assert [line.amount_fen for line in of(lines, changed)] == [9999]
    assert [line.amount_fen for line in of(lines, doubled)] == [1002, 1002]
    assert of(lines, moved) == []
    assert sorted((line.kind, line.out_refund_no, line.amount_fen) for line in of(lines, kept)) == [
        (BillLineKind.PAYMENT, None, 1004),
        (BillLineKind.REFUND, refund_no, 400),
        (BillLineKind.REFUND, "rfonly1", 1),
    ]
    assert_totals_add_up(lines, totals)
    earlier, _ = await bill(provider, today() - timedelta(days=1))
    assert [line.occurred_at for line in of(earlier, moved)] == [yesterday_noon]


# --- refused -------------------------------------------------------------------------


async def test_a_bill_of_another_merchant_is_refused(
    alipay_http: httpx.AsyncClient,
) -> None:
    app = simulator_app(seller_id="2088000000000999", publish_current_day=True)
    with LoopbackServer(app) as server:
        provider = AlipayProvider(
            settings_for(f"{server.url}/gateway.do"), branch=BRANCH, http=alipay_http
        )
        file = await download(provider, today())
    with pytest.raises(BillRejected, match="20880000000009990156, not this branch's"):
        list(provider.read_bill(file))


async def test_without_seller_id_the_bill_is_not_fetched(
    bill_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    provider = AlipayProvider(
        settings_for(bill_simulator.gateway, seller_id=None), branch=BRANCH, http=alipay_http
    )
    calls = (await alipay_http.get(f"{bill_simulator.url}/_control/calls")).json()
    with pytest.raises(GatewayError, match="seller_id"):
        await download(provider, today())
    assert (await alipay_http.get(f"{bill_simulator.url}/_control/calls")).json() == calls


async def test_an_expired_link_is_refused(
    provider: AlipayProvider, bill_simulator: RunningSimulator
) -> None:
    bill_simulator.simulator.bill_url_seconds = 0.0
    file = io.BytesIO()
    with pytest.raises(GatewayError, match="下载超时") as refused:
        await provider.download_bill(today(), file)
    assert refused.value.retryable
    assert file.getvalue() == b""  # nothing written but the zip would be


async def test_a_failing_bill_query_is_a_gateway_error(
    provider: AlipayProvider, alipay_http: httpx.AsyncClient, bill_simulator: RunningSimulator
) -> None:
    faults = f"{bill_simulator.url}/_control/faults"
    await alipay_http.post(faults, data={"kind": "bad_signature", "method": BILL_METHOD})
    try:
        with pytest.raises(GatewayError, match="signature"):
            await download(provider, today())
    finally:
        await alipay_http.delete(faults)


# --- the query as another client sees it ----------------------------------------------


def sdk(sim: RunningSimulator, app_private: Any = None) -> AliPay:
    client = AliPay(
        appid=APP_ID,
        app_private_key_string=private_key_pem(app_private or app_key()),
        alipay_public_key_string=public_key_pem(platform_key().public_key()),
    )
    client._gateway = sim.gateway
    return client


async def test_python_alipay_sdk_gets_a_signed_answer_and_a_plain_link_that_expires(
    provider: AlipayProvider, alipay_http: httpx.AsyncClient, bill_simulator: RunningSimulator
) -> None:
    bill_simulator.simulator.bill_url_seconds = 2.0
    client = sdk(bill_simulator)
    # The SDK uses blocking urllib; off the event loop. It verifies the answer's signature.
    answer = await asyncio.to_thread(
        client.server_api, BILL_METHOD, {"bill_type": "trade", "bill_date": "2020-02-29"}
    )
    assert answer["code"] == "10000"
    assert answer["bill_file_code"] == EMPTY_DATA_WITH_BILL_FILE
    url = answer["bill_download_url"]
    assert "/downloadBillFile.resource?" in url and "bizType=trade" in url
    assert f"userId={ACCOUNT}" in url and "bizDates=20200229" in url
    fetched = time.monotonic()
    got = await alipay_http.get(url)  # plain GET, nothing signed
    assert got.content.startswith(b"PK\x03\x04")
    wrong = await alipay_http.get(url.replace("token=", "token=x"))
    assert wrong.content.decode("gbk") == "下载超时，请重新下载"
    await asyncio.sleep(max(0.0, 2.1 - (time.monotonic() - fetched)))
    late = await alipay_http.get(url)
    assert late.content.decode("gbk") == "下载超时，请重新下载"


@pytest.mark.parametrize(
    ("biz", "sub_code"),
    [
        ({"bill_type": "signcustomer", "bill_date": "2020-02-29"}, "isv.invalid-arguments"),
        ({"bill_type": "trade", "bill_date": "2020-02"}, "isv.invalid-arguments"),
        ({"bill_type": "trade", "bill_date": "20200229"}, "isv.invalid-arguments"),
        ({"bill_type": "trade", "bill_date": "2015-12-31"}, "isp.bill_not_exist"),
    ],
)
async def test_the_query_refuses_what_it_cannot_serve(
    bill_simulator: RunningSimulator, biz: dict[str, str], sub_code: str
) -> None:
    # A business refusal is signed; the SDK verifies it and hands it back.
    answer = await asyncio.to_thread(sdk(bill_simulator).server_api, BILL_METHOD, biz)
    assert (answer["code"], answer["sub_code"]) == ("40004", sub_code)
    assert "bill_download_url" not in answer


async def test_a_query_not_signed_with_the_apps_key_is_refused(
    bill_simulator: RunningSimulator,
) -> None:
    client = sdk(bill_simulator, app_private=rsa_key("stranger"))
    with pytest.raises(AliPayException, match=r"isv\.invalid-signature"):
        await asyncio.to_thread(
            client.server_api, BILL_METHOD, {"bill_type": "trade", "bill_date": "2020-02-29"}
        )


async def test_each_merchant_s_bill_holds_only_the_trades_of_its_own_apps(
    alipay_http: httpx.AsyncClient,
) -> None:
    # Two apps, as the demo's branches have: each of its own merchant (PID), one app key.
    other_app, other_seller = "2021000000000099", "2088000000000099"
    app = simulator_app(
        apps={},
        any_app_key=app_key().public_key(),
        sellers={APP_ID: SELLER_ID, other_app: other_seller},
        publish_current_day=True,
    )
    with LoopbackServer(app) as server:
        sim = RunningSimulator(server.url, app.state.simulator)
        mine = AlipayProvider(settings_for(sim.gateway), branch=BRANCH, http=alipay_http)
        theirs = AlipayProvider(
            settings_for(sim.gateway, app_id=other_app, seller_id=other_seller),
            branch="bj",
            http=alipay_http,
        )
        my_trade = await paid(mine, alipay_http, sim, 18800)
        their_trade = await paid(theirs, alipay_http, sim, 5900)
        my_lines, my_totals = await bill(mine, today())
        their_lines, their_totals = await bill(theirs, today())
        notification = (
            await alipay_http.get(f"{sim.url}/_control/notifications/{their_trade}")
        ).json()["notifications"][-1]
    assert [(line.out_trade_no, line.amount_fen) for line in my_lines] == [(my_trade, 18800)]
    assert [(line.out_trade_no, line.amount_fen) for line in their_lines] == [(their_trade, 5900)]
    assert (my_totals.payment_count, their_totals.payment_count) == (1, 1)
    # The trade's notification names its own app's merchant as seller_id.
    assert f"seller_id={other_seller}" in notification
