"""WeChat Pay API v3 trade bills (交易账单): the published layout and a streaming reader.

The file (after gunzip) is UTF-8 text, starting with a BOM, every line ended by
CRLF (the last one too). It has four parts: a header row, the detail rows, a
summary header row and a summary values row. Header rows are plain; every
detail and summary value is prefixed with a backtick (so spreadsheet programs
keep long numbers as text) and nothing is quoted or escaped, so a value may
hold a comma: rows are split on ``,``-backtick, not on the comma alone.

Columns are found by header name, so the three bill types (``ALL``: 27
columns, ``SUCCESS``: 20, ``REFUND``: 29) and the older 24-column header
(总金额 for 应结订单金额, 子商户号 for 特约商户号) read the same way. Amounts are
yuan (手续费 with five decimals, rounded half up to the fen); times are Beijing
wall-clock time.

Refund rows (交易状态 ``REFUND``) are dated on the refund day and carry the
refunded payment's 商户订单号 and 微信订单号, a positive 退款金额 and a negative
手续费 (the fee returned).

WeChat's summary counts payment and refund rows together (总交易单数), so the
:class:`~api.plugin.BillTotals` read from it take the refund count from the
refund rows counted while reading and give the payments the rest: refund_count
= refund rows read, payment_count = 总交易单数 - refund_count; the amounts come
from the summary as written (应结订单总金额, 退款总金额, 手续费总金额, net of
returned fees). A row the summary counts but the file lacks therefore shows as
a payment count that disagrees with the lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import BinaryIO

from api.plugin import (
    BEIJING,
    BillLine,
    BillLineKind,
    BillLineStatus,
    BillRejected,
    BillTotals,
    from_beijing,
    yuan_to_fen,
)

BOM = "\ufeff"
BACKTICK = "`"

ALL_COLUMNS = (
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
)
_REFUND_ONLY = (
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
)
SUCCESS_COLUMNS = tuple(c for c in ALL_COLUMNS if c not in (*_REFUND_ONLY, "申请退款金额"))
_AFTER_VOUCHER = ALL_COLUMNS.index("代金券金额") + 1
REFUND_COLUMNS = (
    *ALL_COLUMNS[:_AFTER_VOUCHER],
    "退款申请时间",
    "退款成功时间",
    *ALL_COLUMNS[_AFTER_VOUCHER:],
)
LEGACY_COLUMNS = (
    "交易时间",
    "公众账号ID",
    "商户号",
    "子商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "总金额",
    "代金券或立减优惠金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "代金券或立减优惠退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
)
COLUMNS_OF_BILL_TYPE = {"ALL": ALL_COLUMNS, "SUCCESS": SUCCESS_COLUMNS, "REFUND": REFUND_COLUMNS}
SUMMARY_COLUMNS = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)

# What the reader needs, each under every header name WeChat has used for it.
_FIELDS: dict[str, tuple[str, ...]] = {
    "time": ("交易时间",),
    "mchid": ("商户号",),
    "sub_mchid": ("特约商户号", "子商户号"),
    "transaction_id": ("微信订单号",),
    "out_trade_no": ("商户订单号",),
    "state": ("交易状态",),
    "amount": ("应结订单金额", "总金额"),
    "refund_id": ("微信退款单号",),
    "out_refund_no": ("商户退款单号",),
    "refund_amount": ("退款金额",),
    "refund_status": ("退款状态",),
    "refund_time": ("退款成功时间",),
    "fee": ("手续费",),
}
_REQUIRED = ("time", "mchid", "transaction_id", "out_trade_no", "state", "fee")
_SUMMARY_FIELDS: dict[str, tuple[str, ...]] = {
    "count": ("总交易单数", "总交易单"),
    "payment": ("应结订单总金额", "总交易额"),
    "refund": ("退款总金额", "总退款金额"),
    "fee": ("手续费总金额",),
}
_REFUND_STATUSES = {
    "SUCCESS": BillLineStatus.SUCCEEDED,
    "PROCESSING": BillLineStatus.PENDING,
    "CLOSED": BillLineStatus.FAILED,
    "REFUNDCLOSE": BillLineStatus.FAILED,
    "ABNORMAL": BillLineStatus.FAILED,
    "CHANGE": BillLineStatus.FAILED,
}
# "None" in a bill cell: `0 (a direct merchant's 特约商户号, a payment row's refund
# numbers) or a bare backtick.
_NONE = ("", "0")
_FULL_WIDTH_COLON = "\uff1a"
_BILL_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$")


def split_values(line: str) -> list[str]:
    """A detail or summary row's values, each without its leading backtick."""
    if not line.startswith(BACKTICK):
        raise BillRejected("a WeChat Pay bill row does not start with a backtick")
    return line[1:].split("," + BACKTICK)


def _lines(source: BinaryIO) -> Iterator[tuple[int, str]]:
    """The file's lines, numbered from 1, without BOM and line ends (CRLF or LF)."""
    for number, raw in enumerate(source, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BillRejected(f"line {number} of the bill is not UTF-8") from None
        if number == 1:
            text = text.removeprefix(BOM)
        yield number, text.rstrip("\r\n")


def _index(header: list[str], fields: dict[str, tuple[str, ...]]) -> dict[str, int]:
    where: dict[str, int] = {}
    for field, names in fields.items():
        for name in names:
            if name in header:
                where[field] = header.index(name)
                break
    return where


def _time(text: str, number: int) -> datetime:
    wall_clock = text.replace(_FULL_WIDTH_COLON, ":")
    try:
        if _BILL_TIME.match(wall_clock):
            # from_beijing's result, without strptime's cost on every row of a long bill.
            moment = datetime.fromisoformat(wall_clock)
            return moment.replace(tzinfo=BEIJING).astimezone(UTC)
        return from_beijing(wall_clock)
    except ValueError:
        raise BillRejected(f"line {number}: {text!r} is not a Beijing time") from None


def _fen(text: str, number: int, column: str) -> int:
    try:
        return yuan_to_fen(text)
    except ValueError:
        raise BillRejected(f"line {number}: {column} is not an amount") from None


def read_tradebill(source: BinaryIO, *, mchid: str) -> Iterator[BillLine | BillTotals]:
    """Every payment and refund row of a trade bill as a line, then the summary's totals.

    Streams: one row in memory at a time. Raises :class:`BillRejected` for a
    row of a merchant other than ``mchid`` (or of a sub merchant: this is a
    direct merchant's bill) and for a file that breaks the layout.
    """
    lines = _lines(source)
    header: list[str] | None = None
    for _number, text in lines:
        if text.strip():
            header = text.split(",")
            break
    if header is None:
        raise BillRejected("the WeChat Pay bill is empty")
    where = _index(header, _FIELDS)
    missing = [field for field in _REQUIRED if field not in where]
    if missing or ("amount" not in where and "refund_amount" not in where):
        raise BillRejected("the first line of the bill is not a WeChat Pay trade bill header")
    refunds = 0
    totals: BillTotals | None = None
    for number, text in lines:
        if not text.strip():
            continue
        if not text.startswith(BACKTICK):
            totals = _totals(text, lines, refunds)
            break
        line = _line(split_values(text), where, len(header), number, mchid)
        if line.kind is BillLineKind.REFUND:
            refunds += 1
        yield line
    if totals is None:
        raise BillRejected("the WeChat Pay bill ends without its summary rows")
    for number, text in lines:
        if text.strip():
            raise BillRejected(f"line {number}: text after the bill's summary row")
    yield totals


def _line(
    values: list[str], where: dict[str, int], width: int, number: int, mchid: str
) -> BillLine:
    if len(values) != width:
        raise BillRejected(f"line {number} has {len(values)} values, the header {width}")

    def value(field: str) -> str:
        return values[where[field]].strip() if field in where else ""

    if value("mchid") != mchid:
        raise BillRejected(f"line {number} is another merchant's (商户号 is not this branch's)")
    if value("sub_mchid") not in _NONE:
        raise BillRejected(f"line {number} is a sub merchant's; this branch is a direct merchant")
    state = value("state")
    occurred_at = _time(value("time"), number)
    fee = _fen(value("fee"), number, "手续费")
    transaction_id = value("transaction_id") or None
    if state == "SUCCESS":
        return BillLine(
            kind=BillLineKind.PAYMENT,
            out_trade_no=value("out_trade_no"),
            amount_fen=_fen(value("amount"), number, "应结订单金额"),
            occurred_at=occurred_at,
            provider_trade_no=transaction_id,
            fee_fen=fee,
        )
    if state != "REFUND":
        raise BillRejected(f"line {number}: 交易状态 {state!r} is neither SUCCESS nor REFUND")
    status = _REFUND_STATUSES.get(value("refund_status"))
    if status is None:
        raise BillRejected(f"line {number}: 退款状态 {value('refund_status')!r} is not known")
    out_refund_no = value("out_refund_no")
    if out_refund_no in _NONE:
        raise BillRejected(f"line {number}: a refund row without 商户退款单号")
    refund_time = value("refund_time")
    return BillLine(
        kind=BillLineKind.REFUND,
        out_trade_no=value("out_trade_no"),
        amount_fen=_fen(value("refund_amount"), number, "退款金额"),
        occurred_at=_time(refund_time, number) if refund_time else occurred_at,
        provider_trade_no=transaction_id,
        out_refund_no=out_refund_no,
        provider_refund_no=value("refund_id") or None,
        fee_fen=fee,
        status=status,
    )


def _totals(header_text: str, lines: Iterable[tuple[int, str]], refunds: int) -> BillTotals:
    header = header_text.split(",")
    where = _index(header, _SUMMARY_FIELDS)
    if set(where) != set(_SUMMARY_FIELDS):
        raise BillRejected("the bill's summary header is not WeChat Pay's")
    number, values_line = next(((n, text) for n, text in lines if text.strip()), (0, ""))
    if not values_line:
        raise BillRejected("the WeChat Pay bill ends without its summary values")
    values = split_values(values_line)
    if len(values) != len(header):
        raise BillRejected("the bill's summary values do not match its summary header")
    count_text = values[where["count"]].strip()
    if not count_text.isdigit() or int(count_text) < refunds:
        raise BillRejected("the bill's 总交易单数 is not a count of its rows")
    return BillTotals(
        payment_count=int(count_text) - refunds,
        payment_fen=_fen(values[where["payment"]], number, "应结订单总金额"),
        refund_count=refunds,
        refund_fen=_fen(values[where["refund"]], number, "退款总金额"),
        fee_fen=_fen(values[where["fee"]], number, "手续费总金额"),
    )
