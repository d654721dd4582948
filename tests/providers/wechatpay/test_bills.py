"""WeChat Pay daily trade bills: the reader on files written here to the published
layout, and download_bill against the simulator over loopback HTTP.

The parser tests never use the simulator's writer: their files are the
reconstructed sample of shared/notes/bills.md section 5 (BOM, CRLF, backticks)
and variants of it (LF, no BOM, the SUCCESS, REFUND and legacy headers).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.plugin import (
    BillLine,
    BillLineKind,
    BillLineStatus,
    BillRejected,
    BillTotals,
    BillUnavailable,
    BillUnavailableReason,
    GatewayError,
    PaymentMethod,
    PaymentRequest,
    RefundRequest,
)
from providers.kit.bills import CURRENT_DAY_ENV, beijing_today
from providers.kit.loopback import LoopbackServer
from providers.wechatpay import WechatpayProvider, signing
from providers.wechatpay.bills import (
    ALL_COLUMNS,
    LEGACY_COLUMNS,
    REFUND_COLUMNS,
    SUCCESS_COLUMNS,
)
from providers.wechatpay.driver import WechatpayDriver
from providers.wechatpay.simulator import Gateway
from tests.providers.wechatpay.support import (
    BRANCH,
    CERT_SERIAL_NO,
    MCHID,
    PLATFORM_KEY_ID,
    Keys,
    merchant,
    session_keys,
    settings,
    simulator_app,
)

OTHER_MCHID = "1900000110"
OTHER_APPID = "wx0000000000000110"

# shared/notes/bills.md section 5, line for line (written with a BOM and CRLF below).
SAMPLE = [
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注",
    "`2025-06-01 09:15:02,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202506010000000001,`TEL20250601000001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`50.00,`0.00,`0,`0,`0.00,`0.00,`,`,`话费充值50元,`,`0.30000,`0.60%,`50.00,`0.00,`",
    "`2025-06-01 10:11:33,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202506010000000002,`TEL20250601000002,`oUpF8uEq2Lr7xQ0pX9b8k1cZyA3s,`JSAPI,`SUCCESS,`CMB_DEBIT,`CNY,`100.00,`0.00,`0,`0,`0.00,`0.00,`,`,`宽带续费100元,`,`0.60000,`0.60%,`100.00,`0.00,`",
    "`2025-06-01 14:30:08,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202506010000000003,`TEL20250601000003,`oUpF8uT5mN2bV7cX1zQ4wE6rY8uI,`NATIVE,`SUCCESS,`OTHERS,`CNY,`30.00,`0.00,`0,`0,`0.00,`0.00,`,`,`话费充值30元,`,`0.18000,`0.60%,`30.00,`0.00,`",
    "`2025-06-01 15:20:11,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202505310000000009,`TEL20250531000009,`oUpF8uK9jH3gF5dS7aP1oI2uY4tR,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000012025060100000000001,`RF20250601000001,`30.00,`0.00,`ORIGINAL,`SUCCESS,`话费充值30元,`,`-0.18000,`0.60%,`0.00,`30.00,`",
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额",
    "`4,`180.00,`30.00,`0.00,`0.90000,`180.00,`30.00",
]

SAMPLE_LINES = [
    # kind, out_trade_no, provider_trade_no, out_refund_no, refund_no, fen, fee, UTC time
    (
        BillLineKind.PAYMENT,
        "TEL20250601000001",
        "4200002501202506010000000001",
        None,
        None,
        5000,
        30,
        "2025-06-01T01:15:02",
    ),
    (
        BillLineKind.PAYMENT,
        "TEL20250601000002",
        "4200002501202506010000000002",
        None,
        None,
        10000,
        60,
        "2025-06-01T02:11:33",
    ),
    (
        BillLineKind.PAYMENT,
        "TEL20250601000003",
        "4200002501202506010000000003",
        None,
        None,
        3000,
        18,
        "2025-06-01T06:30:08",
    ),
    (
        BillLineKind.REFUND,
        "TEL20250531000009",
        "4200002501202505310000000009",
        "RF20250601000001",
        "50300000012025060100000000001",
        3000,
        -18,
        "2025-06-01T07:20:11",
    ),
]
SAMPLE_TOTALS = BillTotals(
    payment_count=3, payment_fen=18000, refund_count=1, refund_fen=3000, fee_fen=90
)

# The published headers, written out here rather than taken from the code under test.
SUCCESS_HEADER = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注"
REFUND_HEADER = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
LEGACY_HEADER = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,微信退款单号,商户退款单号,退款金额,代金券或立减优惠退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率"
SUMMARY_HEADER = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
)


def bill_bytes(lines: list[str], *, bom: bool = True, newline: str = "\r\n") -> bytes:
    return (("\ufeff" if bom else "") + newline.join(lines) + newline).encode()


def read(data: bytes, mchid: str = MCHID) -> tuple[list[BillLine], BillTotals]:
    from providers.wechatpay.bills import read_tradebill

    items = list(read_tradebill(io.BytesIO(data), mchid=mchid))
    *lines, totals = items
    assert isinstance(totals, BillTotals)
    assert all(isinstance(line, BillLine) for line in lines)
    return [line for line in lines if isinstance(line, BillLine)], totals


def shape(line: BillLine) -> tuple[Any, ...]:
    return (
        line.kind,
        line.out_trade_no,
        line.provider_trade_no,
        line.out_refund_no,
        line.provider_refund_no,
        line.amount_fen,
        line.fee_fen,
        line.occurred_at.replace(tzinfo=None).isoformat(),
    )


# -- the reader on files written to the published layout --------------------------------


def test_published_headers_are_the_ones_the_code_knows() -> None:
    assert ",".join(ALL_COLUMNS) == SAMPLE[0] and len(ALL_COLUMNS) == 27
    assert ",".join(SUCCESS_COLUMNS) == SUCCESS_HEADER and len(SUCCESS_COLUMNS) == 20
    assert ",".join(REFUND_COLUMNS) == REFUND_HEADER and len(REFUND_COLUMNS) == 29
    assert ",".join(LEGACY_COLUMNS) == LEGACY_HEADER and len(LEGACY_COLUMNS) == 24


@pytest.mark.parametrize(
    ("bom", "newline"),
    [(True, "\r\n"), (False, "\n"), (True, "\n")],
    ids=["bom-crlf", "lf", "bom-lf"],
)
def test_the_reconstructed_sample_reads_into_lines_and_totals(bom: bool, newline: str) -> None:
    lines, totals = read(bill_bytes(SAMPLE, bom=bom, newline=newline))
    assert [shape(line) for line in lines] == SAMPLE_LINES
    assert all(line.occurred_at.tzinfo is not None for line in lines)
    assert [line.status for line in lines] == [BillLineStatus.SUCCEEDED] * 4
    # 总交易单数 counts both kinds: the refund rows read are taken off for the payments.
    assert totals == SAMPLE_TOTALS
    payments = [line for line in lines if line.kind is BillLineKind.PAYMENT]
    assert sum(line.amount_fen for line in payments) == totals.payment_fen
    assert sum(line.fee_fen for line in lines) == totals.fee_fen


def test_a_value_holding_commas_stays_one_value() -> None:
    row = SAMPLE[1].replace("`话费充值50元", "`话费充值,50元,赠送,1GB")
    lines, _ = read(bill_bytes([SAMPLE[0], row, *SAMPLE[5:]]))
    assert shape(lines[0]) == SAMPLE_LINES[0]


def test_fees_of_five_decimals_round_half_up_to_the_fen() -> None:
    fees = {"0.00500": 1, "0.00499": 0, "0.01500": 2, "-0.00500": -1, "-0.27000": -27}
    for text, fen in fees.items():
        row = SAMPLE[1].replace("`0.30000,", f"`{text},")
        lines, _ = read(bill_bytes([SAMPLE[0], row, *SAMPLE[5:]]))
        assert lines[0].fee_fen == fen, text


def test_success_and_refund_bills_read_by_header_name() -> None:
    success = [
        SUCCESS_HEADER,
        "`2025-06-01 09:15:02,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202506010000000001,`TEL20250601000001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`50.00,`0.00,`话费充值50元,`,`0.30000,`0.60%,`50.00,`",
        SUMMARY_HEADER,
        "`1,`50.00,`0.00,`0.00,`0.30000,`50.00,`0.00",
    ]
    lines, totals = read(bill_bytes(success))
    assert [shape(line) for line in lines] == [SAMPLE_LINES[0]]
    assert totals == BillTotals(1, 5000, 0, 0, 30)
    refund = [
        REFUND_HEADER,
        # 交易时间 is the payment's; the refund happened at 退款成功时间.
        "`2025-05-31 20:05:10,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202505310000000009,`TEL20250531000009,`oUpF8uK9jH3gF5dS7aP1oI2uY4tR,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`2025-06-01 15:20:05,`2025-06-01 15:20:11,`50300000012025060100000000001,`RF20250601000001,`30.00,`0.00,`ORIGINAL,`SUCCESS,`话费充值30元,`,`-0.18000,`0.60%,`0.00,`30.00,`",
        SUMMARY_HEADER,
        "`1,`0.00,`30.00,`0.00,`-0.18000,`0.00,`30.00",
    ]
    lines, totals = read(bill_bytes(refund))
    assert [shape(line) for line in lines] == [SAMPLE_LINES[3]]
    assert totals == BillTotals(0, 0, 1, 3000, -18)


def test_the_legacy_24_column_header_reads_too() -> None:
    legacy = [
        LEGACY_HEADER,
        "`2025-06-01 09:15:02,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202506010000000001,`TEL20250601000001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`50.00,`0.00,`0,`0,`0.00,`0.00,`,`,`话费充值50元,`,`0.30000,`0.60%",
        "`2025-06-01 15:20:11,`wx1234567890abcdef,`1900000109,`0,`,`4200002501202505310000000009,`TEL20250531000009,`oUpF8uK9jH3gF5dS7aP1oI2uY4tR,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000012025060100000000001,`RF20250601000001,`30.00,`0.00,`ORIGINAL,`PROCESSING,`话费充值30元,`,`-0.18000,`0.60%",
        "总交易单,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额",
        "`2,`50.00,`30.00,`0.00,`0.12000",
    ]
    lines, totals = read(bill_bytes(legacy, bom=False, newline="\n"))
    assert [shape(line) for line in lines] == [SAMPLE_LINES[0], SAMPLE_LINES[3]]
    assert lines[1].status is BillLineStatus.PENDING
    assert totals == BillTotals(1, 5000, 1, 3000, 12)


@pytest.mark.parametrize(
    ("column", "value"),
    [("商户号", "1900000110"), ("特约商户号", "1900000999")],
    ids=["another-merchant", "a-sub-merchant"],
)
def test_a_row_of_another_merchant_rejects_the_bill(column: str, value: str) -> None:
    values = SAMPLE[3][1:].split(",`")
    values[ALL_COLUMNS.index(column)] = value
    rows = [*SAMPLE[:3], "`" + ",`".join(values), *SAMPLE[4:]]
    with pytest.raises(BillRejected, match="merchant"):
        read(bill_bytes(rows))


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        (SAMPLE[:5], "summary"),
        (SAMPLE[:6], "summary values"),
        ([SAMPLE[0], SAMPLE[1].rsplit(",`", 1)[0], *SAMPLE[5:]], "values"),
        ([SAMPLE[0], SAMPLE[1].replace("`SUCCESS", "`REVOKED"), *SAMPLE[5:]], "交易状态"),
        ([SAMPLE[0], SAMPLE[1].replace("`50.00", "`5O.00", 1), *SAMPLE[5:]], "amount"),
        ([SAMPLE[0], SAMPLE[1].replace("09:15:02", "9h15"), *SAMPLE[5:]], "Beijing time"),
        (["总交易单数,应结订单总金额", *SAMPLE[1:]], "header"),
        ([*SAMPLE, "`trailing"], "after"),
        ([], "empty"),
    ],
    ids=[
        "no-summary",
        "no-summary-values",
        "short-row",
        "unknown-state",
        "bad-amount",
        "bad-time",
        "bad-header",
        "trailing-text",
        "empty",
    ],
)
def test_a_file_that_breaks_the_layout_is_rejected(rows: list[str], why: str) -> None:
    with pytest.raises(BillRejected, match=why):
        read(bill_bytes(rows) if rows else b"")


def test_a_file_that_is_not_utf8_is_rejected() -> None:
    with pytest.raises(BillRejected, match="UTF-8"):
        read("\r\n".join(SAMPLE).encode("gbk"))


def test_lines_come_one_by_one_before_the_rest_is_read() -> None:
    rows = [*SAMPLE[:2], "not a row of any bill"]
    from providers.wechatpay.bills import read_tradebill

    reader = read_tradebill(io.BytesIO(bill_bytes(rows)), mchid=MCHID)
    first = next(reader)
    assert isinstance(first, BillLine) and first.out_trade_no == "TEL20250601000001"
    with pytest.raises(BillRejected):
        next(reader)


def write_big_bill(path: Path, rows: int) -> None:
    """A bill of ``rows`` payment rows, written a row at a time."""
    template = SAMPLE[1]
    with path.open("wb") as out:
        out.write(("\ufeff" + SAMPLE[0] + "\r\n").encode())
        for number in range(rows):
            out.write(
                (template.replace("TEL20250601000001", f"TEL{number:017d}") + "\r\n").encode()
            )
        out.write((SUMMARY_HEADER + "\r\n").encode())
        total = f"{rows * 50}.00"
        out.write(f"`{rows},`{total},`0.00,`0.00,`{rows * 0.3:.5f},`{total},`0.00\r\n".encode())


def peak_while_reading(path: Path) -> tuple[int, int]:
    from providers.wechatpay.bills import read_tradebill

    tracemalloc.start()
    try:
        with path.open("rb") as source:
            count = sum(
                1 for item in read_tradebill(source, mchid=MCHID) if isinstance(item, BillLine)
            )
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_takes_flat_memory(tmp_path: Path) -> None:
    # Tracing every allocation is slow: 2k against 20k rows here; the download test
    # below compares 20k with 200k rows over HTTP.
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    write_big_bill(small, 2_000)
    write_big_bill(large, 20_000)
    count_small, peak_small = peak_while_reading(small)
    count_large, peak_large = peak_while_reading(large)
    assert (count_small, count_large) == (2_000, 20_000)
    assert large.stat().st_size > 5_000_000
    # Ten times the rows in the same memory: one row at a time, nothing kept.
    assert peak_large < peak_small + 64 * 1024, (peak_small, peak_large)
    assert peak_large < 512 * 1024, (peak_small, peak_large)


# -- the adapter against the simulator ----------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> Keys:
    return session_keys()


@pytest.fixture
def simulator(keys: Keys) -> Iterator[tuple[str, Gateway]]:
    """A simulator of its own per test: a bill holds everything of its day."""
    app = simulator_app(
        merchant(keys),
        merchant(keys, mchid=OTHER_MCHID, appid=OTHER_APPID),
        publish_current_day=True,
    )
    with LoopbackServer(app) as server:
        yield server.url, app.state.gateway


@pytest.fixture
def url(simulator: tuple[str, Gateway]) -> str:
    return simulator[0]


@pytest.fixture
def sim(simulator: tuple[str, Gateway]) -> Gateway:
    return simulator[1]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(keys: Keys, url: str, http: httpx.AsyncClient) -> WechatpayProvider:
    return WechatpayProvider(settings(keys, url), branch=BRANCH, http=http)


@pytest.fixture
def other_provider(keys: Keys, url: str, http: httpx.AsyncClient) -> WechatpayProvider:
    other = settings(keys, url, mchid=OTHER_MCHID, appid=OTHER_APPID)
    return WechatpayProvider(other, branch="bj", http=http)


@pytest.fixture
def driver(keys: Keys, url: str) -> WechatpayDriver:
    return WechatpayDriver(
        url,
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


def new_no(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:20]


async def pay(provider: WechatpayProvider, driver: WechatpayDriver, amount_fen: int) -> str:
    request = PaymentRequest(
        out_trade_no=new_no("wx"),
        amount_fen=amount_fen,
        currency="CNY",
        subject="China Mobile Zhejiang, 5G plan",
        method=PaymentMethod.QR_CODE,
        notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )
    await provider.create_payment(request)
    assert await driver.settle(request.out_trade_no, "success") is not None
    return request.out_trade_no


async def refund(provider: WechatpayProvider, out_trade_no: str, fen: int, total: int) -> str:
    out_refund_no = new_no("rf")
    await provider.refund(
        RefundRequest(
            out_trade_no=out_trade_no,
            out_refund_no=out_refund_no,
            refund_fen=fen,
            total_fen=total,
            currency="CNY",
        )
    )
    return out_refund_no


async def bill(
    provider: WechatpayProvider, day: date | None = None
) -> tuple[bytes, list[BillLine], BillTotals]:
    """The bill of ``day`` (today by default) as downloaded, and as read."""
    file = io.BytesIO()
    await provider.download_bill(day or beijing_today(), file)
    file.seek(0)
    *lines, totals = list(provider.read_bill(file))
    assert isinstance(totals, BillTotals)
    return file.getvalue(), [line for line in lines if isinstance(line, BillLine)], totals


async def adjust(url: str, **fields: Any) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{url}/control/bills/adjustments", json=fields)
    assert answer.status_code == 201, answer.text


async def signed_get(keys: Keys, target: str, *, mchid: str = MCHID) -> httpx.Response:
    """GET an absolute URL with a v3 Authorization signed by the merchant key."""
    parsed = httpx.URL(target)
    stamp = str(int(time.time()))
    nonce = signing.new_nonce()
    message = signing.request_message("GET", parsed.raw_path.decode(), stamp, nonce, b"")
    header = signing.authorization(
        mchid, CERT_SERIAL_NO, stamp, nonce, signing.sign(keys.merchant, message)
    )
    async with httpx.AsyncClient() as client:
        return await client.get(target, headers={"Authorization": header})


async def test_payments_and_refunds_come_back_as_bill_lines(
    provider: WechatpayProvider, driver: WechatpayDriver, sim: Gateway
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    first = await pay(provider, driver, 8800)
    second = await pay(provider, driver, 1999)
    refunded = await refund(provider, first, 3000, 8800)
    after = datetime.now(UTC)
    raw, lines, totals = await bill(provider)

    assert raw.startswith(b"\xef\xbb\xbf") and raw.endswith(b"\r\n")
    assert raw.count(b"\r\n") == raw.count(b"\n") == 6  # header, 3 rows, 2 summary rows
    rows = raw.decode("utf-8-sig").split("\r\n")
    assert rows[0] == SAMPLE[0] and all(row.startswith("`") for row in rows[1:4])
    assert [(line.kind, line.out_trade_no, line.out_refund_no) for line in lines] == [
        (BillLineKind.PAYMENT, first, None),
        (BillLineKind.PAYMENT, second, None),
        (BillLineKind.REFUND, first, refunded),
    ]
    assert [line.amount_fen for line in lines] == [8800, 1999, 3000]
    # The book's 0.6 %, rounded half up to the fen; a refund returns its share.
    assert [line.fee_fen for line in lines] == [53, 12, -18]
    assert all(before <= line.occurred_at <= after for line in lines)
    assert all(line.status is BillLineStatus.SUCCEEDED for line in lines)
    payment = sim.attempts[first]
    assert lines[0].provider_trade_no == payment.transaction_id == lines[2].provider_trade_no
    assert lines[2].provider_refund_no == payment.refunds[refunded].refund_id
    assert totals == BillTotals(
        payment_count=2, payment_fen=10799, refund_count=1, refund_fen=3000, fee_fen=47
    )


async def test_a_refund_of_an_earlier_payment_is_on_the_refund_day(
    url: str, provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    paid = await pay(provider, driver, 5000)
    earlier = beijing_today() - timedelta(days=2)
    await adjust(url, action="retime", outTradeNo=paid, at=f"{earlier}T12:00:00+08:00")
    refunded = await refund(provider, paid, 5000, 5000)

    _, lines, totals = await bill(provider, earlier)
    assert [(line.kind, line.out_trade_no) for line in lines] == [(BillLineKind.PAYMENT, paid)]
    assert lines[0].occurred_at == datetime.fromisoformat(f"{earlier}T04:00:00+00:00")
    _, lines, totals = await bill(provider)
    assert [(line.kind, line.out_refund_no) for line in lines] == [(BillLineKind.REFUND, refunded)]
    assert totals == BillTotals(0, 0, 1, 5000, -30)


async def test_today_is_published_only_when_asked(
    keys: Keys, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CURRENT_DAY_ENV, raising=False)
    app = simulator_app(
        merchant(keys),
    )
    with LoopbackServer(app) as server:
        provider = WechatpayProvider(settings(keys, server.url), branch=BRANCH, http=http)
        driver = WechatpayDriver(
            server.url,
            platform_private_key=keys.platform,
            platform_public_key_id=PLATFORM_KEY_ID,
            apiv3_key=keys.apiv3_key.encode(),
        )
        paid = await pay(provider, driver, 100)
        with pytest.raises(BillUnavailable) as caught:
            await provider.download_bill(beijing_today(), io.BytesIO())
        assert caught.value.reason is BillUnavailableReason.NOT_READY
        assert "STATEMENT_CREATING" in str(caught.value)

        answer = await http.put(f"{server.url}/control/bills", json={"publishCurrentDay": True})
        assert answer.status_code == 200 and answer.json()["publishCurrentDay"] is True
        _, lines, _ = await bill(provider)
        assert [line.out_trade_no for line in lines] == [paid]
        # A day still to come is never published.
        with pytest.raises(BillUnavailable) as caught:
            await provider.download_bill(beijing_today() + timedelta(days=1), io.BytesIO())
        assert caught.value.reason is BillUnavailableReason.NOT_READY


def test_the_kit_setting_decides_when_create_app_is_not_told(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def published() -> bool:
        app = simulator_app(
            merchant(keys),
        )
        book = app.state.gateway.book
        assert book.publish_hour == 10  # WeChat Pay: "每日10点后"
        return bool(book.publish_current_day)

    monkeypatch.setenv(CURRENT_DAY_ENV, "1")
    assert published()
    monkeypatch.delenv(CURRENT_DAY_ENV)
    assert not published()


async def test_a_day_without_business_has_no_bill(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    await pay(provider, driver, 100)
    with pytest.raises(BillUnavailable) as caught:
        await provider.download_bill(beijing_today() - timedelta(days=10), io.BytesIO())
    assert caught.value.reason is BillUnavailableReason.NO_BILL
    assert "NO_STATEMENT_EXIST" in str(caught.value)


@pytest.mark.parametrize(
    "query",
    ["bill_date=2025-13-01", "bill_date=20250601", "bill_date=", "bill_date=OLD"],
)
async def test_a_bad_or_out_of_range_date_is_an_invalid_request(
    keys: Keys, url: str, query: str
) -> None:
    today = beijing_today()
    query = query.replace("OLD", str(today - timedelta(days=100)))
    answer = await signed_get(keys, f"{url}/v3/bill/tradebill?{query}")
    assert answer.status_code == 400 and answer.json()["code"] == "INVALID_REQUEST"


async def test_the_adapter_reports_other_refusals_as_gateway_errors(
    provider: WechatpayProvider,
) -> None:
    with pytest.raises(GatewayError, match="INVALID_REQUEST") as caught:
        await provider.download_bill(beijing_today() - timedelta(days=100), io.BytesIO())
    assert not isinstance(caught.value, BillUnavailable)


async def test_the_kit_adjustments_show_on_the_bill(
    url: str, provider: WechatpayProvider, driver: WechatpayDriver, sim: Gateway
) -> None:
    dropped = await pay(provider, driver, 1000)
    changed = await pay(provider, driver, 2000)
    doubled = await pay(provider, driver, 3000)
    moved = await pay(provider, driver, 4000)
    refunded = await refund(provider, doubled, 500, 3000)
    earlier = beijing_today() - timedelta(days=3)
    await adjust(url, action="drop", outTradeNo=dropped)
    await adjust(url, action="amount", outTradeNo=changed, amountFen=2100)
    await adjust(url, action="duplicate", outTradeNo=doubled, outRefundNo=refunded)
    await adjust(url, action="retime", outTradeNo=moved, at=f"{earlier}T23:59:59+08:00")
    await adjust(url, action="add", kind="PAYMENT", outTradeNo="billonly000001", amountFen=1234)

    _, lines, totals = await bill(provider)
    seen = [(line.kind, line.out_trade_no, line.amount_fen) for line in lines]
    assert sorted(seen) == sorted(
        [
            (BillLineKind.PAYMENT, changed, 2100),
            (BillLineKind.PAYMENT, doubled, 3000),
            (BillLineKind.REFUND, doubled, 500),
            (BillLineKind.REFUND, doubled, 500),
            (BillLineKind.PAYMENT, "billonly000001", 1234),
        ]
    )
    assert totals.payment_count == 3 and totals.refund_count == 2
    assert totals.payment_fen == 2100 + 3000 + 1234 and totals.refund_fen == 1000
    _, lines, _ = await bill(provider, earlier)
    assert [(line.out_trade_no, line.amount_fen) for line in lines] == [(moved, 4000)]
    assert lines[0].occurred_at == datetime.fromisoformat(f"{earlier}T15:59:59+00:00")


async def test_a_corrupted_file_fails_the_hash_check(
    url: str, provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    await pay(provider, driver, 100)
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{url}/control/faults", json={"kind": "corrupt"})
    assert answer.status_code == 204
    with pytest.raises(BillRejected, match="SHA-1"):
        await provider.download_bill(beijing_today(), io.BytesIO())
    # The fault was for one file: the next download checks out.
    _, lines, _ = await bill(provider)
    assert [line.amount_fen for line in lines] == [100]


async def test_an_unsigned_tradebill_answer_is_not_trusted(
    url: str, provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    await pay(provider, driver, 100)
    async with httpx.AsyncClient() as client:
        await client.post(f"{url}/control/faults", json={"kind": "unsigned", "path": "/v3/bill"})
    with pytest.raises(GatewayError, match="not trusted"):
        await provider.download_bill(beijing_today(), io.BytesIO())


async def test_the_download_needs_its_own_signature_and_comes_back_unsigned(
    keys: Keys, url: str, provider: WechatpayProvider, driver: WechatpayDriver, sim: Gateway
) -> None:
    await pay(provider, driver, 100)
    day = beijing_today()
    answer = await signed_get(keys, f"{url}/v3/bill/tradebill?bill_date={day}&tar_type=GZIP")
    assert answer.status_code == 200 and "Wechatpay-Signature" in answer.headers
    meta = answer.json()
    assert meta["hash_type"] == "SHA1" and "tartype=gzip" in meta["download_url"]

    async with httpx.AsyncClient() as client:
        unsigned = await client.get(meta["download_url"])
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "SIGN_ERROR"
    stranger = await signed_get(keys, meta["download_url"], mchid=OTHER_MCHID)
    assert stranger.status_code == 400 and stranger.json()["code"] == "INVALID_REQUEST"

    fetched = await signed_get(keys, meta["download_url"])
    assert fetched.status_code == 200
    assert not [name for name in fetched.headers if name.lower().startswith("wechatpay-")]
    raw = gzip.decompress(fetched.content)
    assert hashlib.sha1(raw).hexdigest() == meta["hash_value"]
    assert raw.startswith("\ufeff交易时间,".encode())

    sim.bill_url_seconds = 0.0  # every token handed out from now on has expired
    answer = await signed_get(keys, f"{url}/v3/bill/tradebill?bill_date={day}")
    expired = await signed_get(keys, answer.json()["download_url"])
    assert expired.status_code == 400 and expired.json()["code"] == "INVALID_REQUEST"
    with pytest.raises(GatewayError, match="INVALID_REQUEST"):
        await provider.download_bill(day, io.BytesIO())


@pytest.mark.parametrize(
    ("bill_type", "header", "kinds"),
    [
        ("SUCCESS", SUCCESS_HEADER, [BillLineKind.PAYMENT]),
        ("REFUND", REFUND_HEADER, [BillLineKind.REFUND]),
    ],
)
async def test_success_and_refund_bills_follow_their_layouts(
    keys: Keys,
    url: str,
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    bill_type: str,
    header: str,
    kinds: list[BillLineKind],
) -> None:
    paid = await pay(provider, driver, 2500)
    await refund(provider, paid, 1000, 2500)
    query = f"bill_date={beijing_today()}&bill_type={bill_type}"
    answer = await signed_get(keys, f"{url}/v3/bill/tradebill?{query}")
    assert answer.status_code == 200, answer.text
    raw = (await signed_get(keys, answer.json()["download_url"])).content
    assert hashlib.sha1(raw).hexdigest() == answer.json()["hash_value"]
    assert raw.decode("utf-8-sig").split("\r\n")[0] == header
    items = list(provider.read_bill(io.BytesIO(raw)))
    assert [item.kind for item in items if isinstance(item, BillLine)] == kinds


async def test_a_bill_of_another_merchant_is_rejected(
    provider: WechatpayProvider, other_provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    ours = await pay(provider, driver, 700)
    theirs = await pay(other_provider, driver, 900)
    _, lines, _ = await bill(provider)
    assert [line.out_trade_no for line in lines] == [ours]  # each merchant gets its own

    file = io.BytesIO()
    await other_provider.download_bill(beijing_today(), file)
    file.seek(0)
    assert [
        item.out_trade_no for item in other_provider.read_bill(file) if isinstance(item, BillLine)
    ] == [theirs]
    file.seek(0)
    with pytest.raises(BillRejected, match="another merchant"):
        list(provider.read_bill(file))


@pytest.fixture
def bill_server(keys: Keys, tmp_path: Path) -> Iterator[tuple[str, date, date]]:
    """A simulator process whose book holds 20k trades on one day and 200k on another."""
    merchant_public = tmp_path / "merchant_public.pem"
    platform_private = tmp_path / "platform_private.pem"
    merchant_public.write_text(keys.merchant_public_pem)
    platform_private.write_text(keys.platform_pem)
    small_day = beijing_today() - timedelta(days=5)
    large_day = beijing_today() - timedelta(days=4)
    command = [
        sys.executable,
        "-m",
        "tests.providers.wechatpay.bill_server",
        str(merchant_public),
        str(platform_private),
        f"{small_day}=20000",
        f"{large_day}=200000",
    ]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), "the bill server did not start"
        yield url, small_day, large_day
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def download_peak(provider: WechatpayProvider, day: date, path: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        with path.open("wb") as file:
            await provider.download_bill(day, file)
        return path.stat().st_size, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def count_lines(path: Path) -> tuple[int, int]:
    """Line feeds and CRLFs in the file (a CRLF may straddle two chunks: look back one byte)."""
    feeds = crlfs = 0
    last = b""
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            feeds += chunk.count(b"\n")
            crlfs += (last + chunk).count(b"\r\n")
            last = chunk[-1:]
    return feeds, crlfs


async def test_downloading_takes_flat_memory(
    keys: Keys, bill_server: tuple[str, date, date], http: httpx.AsyncClient, tmp_path: Path
) -> None:
    url, small_day, large_day = bill_server
    # The simulator takes a while to write 200k rows before it answers.
    provider = WechatpayProvider(settings(keys, url, timeout_seconds=120), branch=BRANCH, http=http)
    small = await download_peak(provider, small_day, tmp_path / "small.csv")
    large = await download_peak(provider, large_day, tmp_path / "large.csv")
    # Both passed their SHA-1 check; header, rows and the two summary rows each end in CRLF.
    assert count_lines(tmp_path / "small.csv") == (20_003, 20_003)
    assert count_lines(tmp_path / "large.csv") == (200_003, 200_003)
    assert large[0] > 40_000_000
    # Ten times the bill (over 40 MB unpacked) in about the memory of the small one.
    assert large[1] < small[1] + 1024 * 1024, (small, large)
    assert large[1] < 4 * 1024 * 1024, (small, large)


async def test_a_failed_tradebill_call_is_tried_again(
    url: str, provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    paid = await pay(provider, driver, 100)
    async with httpx.AsyncClient() as client:
        await client.post(f"{url}/control/faults", json={"kind": "error", "path": "/v3/bill"})
    _, lines, _ = await bill(provider)
    assert [line.out_trade_no for line in lines] == [paid]


async def test_a_download_url_off_the_gateway_is_never_followed(
    keys: Keys, sim: Gateway, http: httpx.AsyncClient
) -> None:
    """A signed answer pointing elsewhere: our signed request must not go there."""
    visits: list[str] = []

    async def tradebill(request: Request) -> Response:
        answer = {
            "hash_type": "SHA1",
            "hash_value": "0" * 40,
            "download_url": f"{elsewhere.url}/v3/billdownload/file?token=t",
        }
        body = json.dumps(answer).encode()
        return Response(body, headers=sim.signed_headers(body), media_type="application/json")

    async def file(request: Request) -> Response:
        visits.append(request.headers.get("authorization", ""))
        return Response(b"")

    gateway_app = Starlette(routes=[Route("/v3/bill/tradebill", tradebill)])
    elsewhere_app = Starlette(routes=[Route("/v3/billdownload/file", file)])
    with LoopbackServer(elsewhere_app) as elsewhere, LoopbackServer(gateway_app) as gateway:
        provider = WechatpayProvider(settings(keys, gateway.url), branch=BRANCH, http=http)
        with pytest.raises(GatewayError, match="not on the configured gateway"):
            await provider.download_bill(beijing_today(), io.BytesIO())
    assert visits == []
