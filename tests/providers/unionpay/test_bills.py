"""UnionPay daily bills: the adapter's file transfer against the simulator over loopback HTTP.

Payments and refunds made through the adapter come back on the day's bill
with their kinds, amounts, fees, times and the RD report's totals; the
publication policy (today only when asked, NOT_READY before), a day without
business (respCode 98, NO_BILL), the kit's bill adjustments, another
merchant's bill, forged and unsigned answers, and a merId without file
transfer permission (HTTP 500, empty body).
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tracemalloc
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from api.config.validate import load_config
from api.dev.demo import ensure_demo_keys
from api.plugin import (
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
    beijing_day,
)
from api.plugins.manager import installed_providers, load_plugin_manager
from providers.kit.bills import CURRENT_DAY_ENV
from providers.kit.loopback import LoopbackServer
from providers.unionpay import UnionpayProvider, bills, message
from providers.unionpay.driver import UnionpayDriver
from providers.unionpay.provider import _StreamedAnswer
from providers.unionpay.settings import UnionpaySettings
from providers.unionpay.simulator import create_app
from tests.cli.test_serve import ROOT
from tests.providers.unionpay.support import (
    BRANCH,
    MER_ID,
    chain,
    other_chain,
    platform_signed,
    settings,
)

OTHER_MER_ID = "777290058110099"


def bill_simulator(publish_current_day: bool | None = True) -> Starlette:
    c = chain()
    return create_app(
        sign_key=c.platform_key,
        sign_cert=c.platform_cert,
        merchants={MER_ID: c.merchant_cert, OTHER_MER_ID: c.merchant_cert},
        delivery_backoff=0.01,
        publish_current_day=publish_current_day,
    )


@pytest.fixture
def simulator() -> Iterator[LoopbackServer]:
    with LoopbackServer(bill_simulator()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


def provider_at(simulator_url: str, http: httpx.AsyncClient, **overrides: Any) -> UnionpayProvider:
    values = {"file_transfer": simulator_url, **overrides}
    return UnionpayProvider(settings(simulator_url, **values), branch=BRANCH, http=http)


@pytest.fixture
def provider(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayProvider:
    return provider_at(simulator.url, http)


@pytest.fixture
def driver(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayDriver:
    return UnionpayDriver(simulator.url, http)


def new_no(label: str) -> str:
    return f"{datetime.now(UTC):%y%m%d%H%M%S}{label}{uuid.uuid4().hex[:12]}"


def today() -> date:
    return beijing_day(datetime.now(UTC))


async def pay(provider: UnionpayProvider, driver: UnionpayDriver, fen: int) -> str:
    request = PaymentRequest(
        out_trade_no=new_no("pay"),
        amount_fen=fen,
        currency="CNY",
        subject="话费充值",
        method=PaymentMethod.QR_CODE,
        notify_url="http://127.0.0.1:9/notify/unionpay/zj-mobile",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )
    await provider.create_payment(request)
    assert await driver.settle(request.out_trade_no, "success") is not None
    return request.out_trade_no


async def refund(provider: UnionpayProvider, out_trade_no: str, fen: int, total: int) -> str:
    out_refund_no = new_no("rf")
    await provider.refund(
        RefundRequest(
            out_trade_no, out_refund_no, fen, total, "CNY", notify_url="http://127.0.0.1:9/n"
        )
    )
    return out_refund_no


async def bill(provider: UnionpayProvider, day: date | None = None) -> list[BillLine | BillTotals]:
    destination = io.BytesIO()
    await provider.download_bill(day or today(), destination)
    destination.seek(0)
    return list(provider.read_bill(destination))


def lines_of(read: list[BillLine | BillTotals]) -> list[BillLine]:
    return [line for line in read if isinstance(line, BillLine)]


async def adjust(http: httpx.AsyncClient, simulator: LoopbackServer, **spec: Any) -> None:
    response = await http.post(f"{simulator.url}/control/bills/adjustments", json=spec)
    assert response.status_code == 201, response.text


async def test_payments_and_refunds_on_the_days_bill(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    first = await pay(provider, driver, 8800)
    second = await pay(provider, driver, 1000)
    partial = await refund(provider, second, 300, 1000)  # a 退货 (txnType 04)
    voided = await pay(provider, driver, 500)
    void = await refund(provider, voided, 500, 500)  # in full, the same day: a 消费撤销 (31)
    after = datetime.now(UTC)
    read = await bill(provider)
    lines = lines_of(read)
    summary = [
        (line.kind, line.out_trade_no, line.out_refund_no, line.amount_fen, line.fee_fen)
        for line in lines
    ]
    assert summary == [
        (BillLineKind.PAYMENT, first, None, 8800, 53),  # 0.6 %, 52.8 rounded half up
        (BillLineKind.PAYMENT, second, None, 1000, 6),
        (BillLineKind.REFUND, second, partial, 300, -2),  # the fee returned: C
        (BillLineKind.PAYMENT, voided, None, 500, 3),
        (BillLineKind.REFUND, voided, void, 500, -3),
    ]
    for line in lines:
        assert before <= line.occurred_at <= after and line.occurred_at.microsecond == 0
        assert line.provider_trade_no and len(line.provider_trade_no) == 21
    payment_ids = {line.out_trade_no: line.provider_trade_no for line in lines[:2]}
    assert lines[2].provider_trade_no == payment_ids[second]
    assert lines[2].provider_refund_no and lines[2].provider_refund_no != payment_ids[second]
    assert read[-1] == BillTotals(
        payment_count=3, payment_fen=10300, refund_count=2, refund_fen=800, fee_fen=57
    )


async def test_today_is_published_only_when_asked(
    http: httpx.AsyncClient, simulator: LoopbackServer
) -> None:
    with LoopbackServer(bill_simulator(publish_current_day=False)) as real_like:
        provider = provider_at(real_like.url, http)
        paid = await pay(provider, UnionpayDriver(real_like.url, http), 2000)
        with pytest.raises(BillUnavailable) as not_ready:
            await bill(provider)
        assert not_ready.value.reason is BillUnavailableReason.NOT_READY
        assert "99" in str(not_ready.value)
        policy = await http.put(f"{real_like.url}/control/bills", json={"publishCurrentDay": True})
        assert policy.status_code == 200 and policy.json()["publishCurrentDay"] is True
        assert [line.out_trade_no for line in lines_of(await bill(provider))] == [paid]


def test_the_current_day_default_comes_from_the_kit_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CURRENT_DAY_ENV, "1")
    assert bill_simulator(None).state.gateway.book.publish_current_day is True
    monkeypatch.setenv(CURRENT_DAY_ENV, "0")
    assert bill_simulator(None).state.gateway.book.publish_current_day is False


async def test_a_day_without_business_has_no_bill(provider: UnionpayProvider) -> None:
    with pytest.raises(BillUnavailable) as no_bill:
        await bill(provider, today() - timedelta(days=3))
    assert no_bill.value.reason is BillUnavailableReason.NO_BILL
    assert "98" in str(no_bill.value)


async def test_days_the_settle_date_cannot_name(provider: UnionpayProvider) -> None:
    with pytest.raises(BillUnavailable) as future:
        await bill(provider, today() + timedelta(days=1))
    assert future.value.reason is BillUnavailableReason.NOT_READY
    with pytest.raises(BillUnavailable) as too_old:
        await bill(provider, today() - timedelta(days=400))
    assert too_old.value.reason is BillUnavailableReason.NO_BILL


async def test_the_kit_adjustments_show_up(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    kept, dropped, changed, doubled, moved = [await pay(provider, driver, 1000) for _ in range(5)]
    refunded = await refund(provider, kept, 100, 1000)
    a_day_ago = datetime.now(UTC) - timedelta(days=1)
    await adjust(
        http, simulator, action="add", kind="PAYMENT", outTradeNo="BILLONLY0000001", amountFen=4200
    )
    await adjust(http, simulator, action="drop", outTradeNo=dropped)
    await adjust(http, simulator, action="amount", outTradeNo=changed, amountFen=999)
    await adjust(http, simulator, action="duplicate", outTradeNo=doubled)
    await adjust(http, simulator, action="duplicate", outTradeNo=kept, outRefundNo=refunded)
    await adjust(http, simulator, action="retime", outTradeNo=moved, at=a_day_ago.isoformat())
    read = await bill(provider)
    keys = [(line.kind.value, line.out_trade_no, line.out_refund_no) for line in lines_of(read)]
    assert sorted(keys) == sorted(
        [
            ("PAYMENT", kept, None),
            ("REFUND", kept, refunded),
            ("REFUND", kept, refunded),
            ("PAYMENT", changed, None),
            ("PAYMENT", doubled, None),
            ("PAYMENT", doubled, None),
            ("PAYMENT", "BILLONLY0000001", None),
        ]
    )
    amounts = {line.out_trade_no: line.amount_fen for line in lines_of(read)}
    assert amounts[changed] == 999 and amounts["BILLONLY0000001"] == 4200
    totals = read[-1]
    assert isinstance(totals, BillTotals)
    assert (totals.payment_count, totals.payment_fen) == (5, 1000 + 999 + 2000 + 4200)
    assert (totals.refund_count, totals.refund_fen) == (2, 200)
    on_yesterday = lines_of(await bill(provider, beijing_day(a_day_ago)))
    assert [(line.out_trade_no, line.amount_fen) for line in on_yesterday] == [(moved, 1000)]
    assert abs(on_yesterday[0].occurred_at - a_day_ago) < timedelta(seconds=1)


async def test_another_merchants_bill_is_refused(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    await pay(provider, driver, 700)
    downloaded = io.BytesIO()
    await provider.download_bill(today(), downloaded)
    other = provider_at(simulator.url, http, mer_id=OTHER_MER_ID)
    downloaded.seek(0)
    with pytest.raises(BillRejected, match="another merchant"):
        list(other.read_bill(downloaded))
    # The simulator serves each merId its own bill: the other merchant had no business.
    with pytest.raises(BillUnavailable) as none:
        await other.download_bill(today(), io.BytesIO())
    assert none.value.reason is BillUnavailableReason.NO_BILL


async def test_an_answer_altered_after_signing_is_refused(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    await pay(provider, driver, 700)
    spec = {"endpoint": "fileTransfer", "mode": "bad_signature", "count": 3}
    (await http.post(f"{simulator.url}/control/faults", json=spec)).raise_for_status()
    destination = io.BytesIO()
    with pytest.raises(GatewayError, match="verification"):
        await provider.download_bill(today(), destination)
    assert destination.getvalue() == b""


async def test_no_file_transfer_permission_is_http_500_with_no_body(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    await pay(provider, driver, 700)
    spec = {"endpoint": "fileTransfer", "mode": "denied", "count": 1}
    (await http.post(f"{simulator.url}/control/faults", json=spec)).raise_for_status()
    # Not retried: the next try would have been answered.
    with pytest.raises(GatewayError, match="permission") as denied:
        await provider.download_bill(today(), io.BytesIO())
    assert not denied.value.retryable
    assert len(lines_of(await bill(provider))) == 1


def _forger(answer: dict[str, str]) -> Starlette:
    async def transfer(request: Request) -> Response:
        return PlainTextResponse(message.format_response(answer))

    return Starlette(routes=[Route("/", transfer, methods=["POST"])])


@pytest.mark.parametrize("how", ["another CA", "unsigned", "content swapped"])
async def test_forged_or_unsigned_answers_are_refused(
    how: str, provider: UnionpayProvider, driver: UnionpayDriver, http: httpx.AsyncClient
) -> None:
    await pay(provider, driver, 700)
    # The genuine answer, caught by a provider that only records it.
    genuine = await _genuine_answer(provider)
    if how == "another CA":
        answer = platform_signed(genuine, other_chain())
    elif how == "unsigned":
        answer = {k: v for k, v in genuine.items() if k != "signature"}
    else:
        empty = bills.bill_zip(today(), MER_ID, [], b"")
        answer = genuine | {"fileContent": base64.b64encode(zlib.compress(empty)).decode()}
    with LoopbackServer(_forger(answer)) as forger:
        target = provider_at(provider.settings.gateway, http, file_transfer=forger.url)
        destination = io.BytesIO()
        with pytest.raises(GatewayError, match="verification"):
            await target.download_bill(today(), destination)
        assert destination.getvalue() == b""


async def _genuine_answer(provider: UnionpayProvider) -> dict[str, str]:
    fields = provider._base_fields("76", "01", "000000", "")
    fields |= {
        "txnTime": message.beijing_time(datetime.now(UTC)),
        "settleDate": f"{today():%m%d}",
        "fileType": "00",
    }
    response = await provider.http.post(
        provider.settings.file_transfer_url, data=provider._signed(fields)
    )
    answer = message.parse_response(response.text)
    assert answer["respCode"] == "00" and answer["fileContent"]
    # The forger answers requests made later: the same txnTime would not match theirs.
    return answer


def test_file_transfer_url_defaults() -> None:
    production = settings("https://gateway.95516.com")
    assert production.file_transfer_url == "https://filedownload.95516.com/"
    test_env = settings("https://gateway.test.95516.com")
    assert test_env.file_transfer_url == "https://filedownload.test.95516.com/"
    assert (
        settings("http://127.0.0.1:8011", file_transfer="http://127.0.0.1:8011").file_transfer_url
        == "http://127.0.0.1:8011/"
    )
    with pytest.raises(ValidationError):
        settings("http://127.0.0.1:8011", file_transfer="http://127.0.0.1:8011/path")


def test_the_demo_configuration_points_the_file_transfer_at_the_simulator(
    tmp_path: Path,
) -> None:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    plugins = load_plugin_manager()
    ensure_demo_keys(plugins, tmp_path / ".data" / "secrets", 8010)
    config = load_config(tmp_path / "plugins.toml", installed_providers(plugins))
    found = [
        provider.settings
        for branch in config.branches.values()
        for name, provider in branch.providers.items()
        if name == "unionpay"
    ]
    assert found
    for unionpay in found:
        assert isinstance(unionpay, UnionpaySettings)
        assert unionpay.file_transfer_url == unionpay.gateway + "/"
        assert unionpay.gateway.startswith("http://127.0.0.1:")


class _Digest(io.RawIOBase):
    """A destination that keeps only the SHA-256 and the size of what it is given."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def _stored_bill(day: date, count: int) -> bytes:
    """A ZIP of ``count`` records, stored (not deflated): as large as the records."""
    record = bills.zm_record(
        {
            bills.TRANSMIT_TIME: f"{day:%m%d}120000",
            bills.AMOUNT: "000000000100",
            bills.ORDER_ID: "TEL0000000000",
            bills.FEE: "D000000000001",
            bills.TXN_TYPE: "01",
            bills.MER_ID: MER_ID,
        }
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(bills.zm_name(day, MER_ID), (record + b"\r\n") * count)
    return buffer.getvalue()


async def _download_peak(http: httpx.AsyncClient, day: date, content: bytes) -> tuple[int, int]:
    """Serve ``content`` as a genuine file transfer answer; the download's peak memory."""
    answer = platform_signed(
        {
            "version": "5.1.0",
            "encoding": "UTF-8",
            "signMethod": "01",
            "txnType": "76",
            "txnSubType": "01",
            "bizType": "000000",
            "accessType": "0",
            "merId": MER_ID,
            "settleDate": f"{day:%m%d}",
            "fileType": "00",
            "respCode": "00",
            "respMsg": "成功[0000000]",
            "fileName": bills.zip_name(day, MER_ID),
            "fileContent": base64.b64encode(zlib.compress(content)).decode("ascii"),
        }
    )
    body = message.format_response(answer).encode("utf-8")

    async def transfer(request: Request) -> Response:
        return Response(body, media_type="text/plain;charset=UTF-8")

    with LoopbackServer(Starlette(routes=[Route("/", transfer, methods=["POST"])])) as server:
        provider = provider_at(server.url, http)
        destination = _Digest()
        tracemalloc.start()
        try:
            await provider.download_bill(day, destination)  # type: ignore[arg-type]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert destination.hash.digest() == hashlib.sha256(content).digest()
    return destination.size, peak


async def test_a_large_bill_is_inflated_into_the_destination_in_flat_memory(
    http: httpx.AsyncClient,
) -> None:
    day = today()
    small_size, small_peak = await _download_peak(http, day, _stored_bill(day, 20_000))
    large_size, large_peak = await _download_peak(http, day, _stored_bill(day, 200_000))
    assert small_size > 20_000 * 609 and large_size > 200_000 * 609
    # 122 MB of ZIP written to the destination, never held: the peak stays flat.
    assert large_peak < small_peak * 2 + 1024 * 1024, (small_peak, large_peak)
    assert large_peak < 8 * 1024 * 1024, large_peak


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"txnTime": "20200101000000"}, "10"),  # not the current time
        ({"settleDate": "1399"}, "10"),
        ({"fileType": "01"}, "10"),
        ({"txnType": "75"}, "10"),
        ({"accessType": "1"}, "10"),
        ({"merId": "777290058119999"}, "31"),
    ],
)
async def test_the_simulator_checks_the_file_transfer_request(
    change: dict[str, str], code: str, provider: UnionpayProvider
) -> None:
    fields = provider._base_fields("76", "01", "000000", "")
    fields |= {
        "txnTime": message.beijing_time(datetime.now(UTC)),
        "settleDate": f"{today():%m%d}",
        "fileType": "00",
    }
    response = await provider.http.post(
        provider.settings.file_transfer_url, data=provider._signed(fields | change)
    )
    answer = message.parse_response(response.text)
    assert answer["respCode"] == code and "fileContent" not in answer


async def test_the_streamed_answer_parser_agrees_with_the_sdks_split_at_any_chunking(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    await pay(provider, driver, 700)
    fields = provider._base_fields("76", "01", "000000", "")
    fields |= {
        "txnTime": message.beijing_time(datetime.now(UTC)),
        "settleDate": f"{today():%m%d}",
        "fileType": "00",
    }
    text = (
        await provider.http.post(provider.settings.file_transfer_url, data=provider._signed(fields))
    ).text + "&reqReserved={a=1&b=[2&3]}"
    expected = message.parse_response(text)
    raw = text.encode("utf-8")
    for size in (1, 7, 4096, len(raw)):
        spool = io.BytesIO()
        reader = _StreamedAnswer("fileContent", spool)
        for start in range(0, len(raw), size):
            reader.feed(raw[start : start + size])
        got = reader.close()
        assert got == expected | {"fileContent": ""}
        assert spool.getvalue().decode("ascii") == expected["fileContent"]
