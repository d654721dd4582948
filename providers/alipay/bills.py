# ruff: noqa: RUF001, RUF002 (the layout's full-width punctuation is what Alipay writes)
"""Alipay's daily trade bill (业务明细): a zip of two GBK CSV files, read and written here.

The adapter reads it (:func:`read_bill`), the simulator writes it
(:func:`bill_zip`), from one description of the layout, the one Alipay
publishes for ``alipay.data.dataservice.bill.downloadurl.query`` with
``bill_type=trade``:

- a zip holding ``<PID>0156_<yyyyMMdd>_业务明细.csv`` (the detail) and
  ``<PID>0156_<yyyyMMdd>_业务明细(汇总).csv`` (the summary); the entry names
  are GBK bytes without the zip's UTF-8 flag, the contents GBK text;
- the detail opens with ``#`` lines (title, ``#账号：[<PID>0156]``, the date
  range), then the ``业务明细列表`` marker, a header row of 25 columns, one row
  per payment (业务类型 交易) or refund (退款), the ``业务明细列表结束`` marker
  and the ``#交易合计`` / ``#退款合计`` lines;
- cells are not quoted; the identifier columns carry a trailing TAB (so that
  spreadsheets keep long numbers as text); amounts are yuan with two decimals,
  times Beijing wall-clock ``yyyy-MM-dd HH:mm:ss``;
- a refund is a row of its own with the payment's 支付宝交易号 and 商户订单号,
  negative 订单金额 and 商家实收, the refund's ``out_request_no`` in
  退款批次号/请求号, the payment's 创建时间 and the refund's 完成时间; rows fall
  on the Beijing day of their 完成时间.

What the sources leave open, and what is assumed here:

- the sign of 服务费 (every real sample shows 0.00). The simulator writes it
  from the merchant's side, like 商家实收 (a fee charged is negative, a fee a
  refund returns positive); the reader learns the file's way from its first
  non-zero fee, so either way reads the same;
- a comma inside 商品名称 (cells are not quoted): a row with more cells than
  the header is taken to have them in 商品名称, the one free-text column
  before the amounts. The simulator writes a comma there as ``，``.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, BinaryIO

from api.plugin import (
    BEIJING,
    BillLine,
    BillLineKind,
    BillRejected,
    BillTotals,
    fen_to_yuan,
    to_beijing,
    yuan_to_fen,
)

if TYPE_CHECKING:
    from providers.kit.bills import BillEntry

__all__ = [
    "ACCOUNT_SUFFIX",
    "BAD_ARGUMENTS",
    "BILL_METHOD",
    "DETAIL_COLUMNS",
    "EMPTY_DATA_WITH_BILL_FILE",
    "EXPIRED_LINK",
    "NOT_EXIST",
    "NOT_READY",
    "SUMMARY_COLUMNS",
    "account_of",
    "bill_zip",
    "detail_name",
    "read_bill",
    "summary_name",
    "zip_gbk",
]

BILL_METHOD = "alipay.data.dataservice.bill.downloadurl.query"
# What the simulator answers when it has no bill to give (docs/providers.md, "Alipay daily bills").
NOT_READY = "isp.bill_not_ready"  # not published yet
NOT_EXIST = "isp.bill_not_exist"  # a day it does not keep (before 2016-01-01)
BAD_ARGUMENTS = "isv.invalid-arguments"  # bill_type is not trade, bill_date not yyyy-MM-dd
# bill_file_code of a day without business: the link leads to an empty bill.
EMPTY_DATA_WITH_BILL_FILE = "EMPTY_DATA_WITH_BILL_FILE"
# Alipay's bill account is the merchant PID with this suffix (the CNY account).
ACCOUNT_SUFFIX = "0156"
# Read with GB 18030, GBK's superset: a GBK file decodes the same, and a
# stray four-byte character in a product name does not reject the day.
ENCODING = "gb18030"
MAX_LINE_CHARS = 64 * 1024
# What a bill link answers once it expired (30 s after the query), instead of the zip.
EXPIRED_LINK = "下载超时，请重新下载"

DETAIL_TITLE = "#支付宝业务明细查询"
SUMMARY_TITLE = "#支付宝业务汇总查询"
DETAIL_LIST = "业务明细列表"
SUMMARY_LIST = "业务汇总列表"
END = "结束"

DETAIL_COLUMNS = (
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
)
# The columns Alipay writes with a trailing TAB.
_TAB_COLUMNS = frozenset(
    {
        "支付宝交易号",
        "商户订单号",
        "业务类型",
        "门店编号",
        "门店名称",
        "操作员",
        "终端号",
        "对方账户",
        "商家红包消费金额（元）",
        "退款批次号/请求号",
    }
)
SUMMARY_COLUMNS = (
    "门店编号",
    "门店名称",
    "交易订单总笔数",
    "退款订单总笔数",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "卡消费金额（元）",
    "服务费（元）",
    "分润（元）",
    "实收净额（元）",
)

_TRADE_NO = "支付宝交易号"
_OUT_TRADE_NO = "商户订单号"
_BUSINESS = "业务类型"
_SUBJECT = "商品名称"
_CREATED = "创建时间"
_COMPLETED = "完成时间"
_AMOUNT = "订单金额（元）"
_RECEIVED = "商家实收（元）"
_REFUND_NO = "退款批次号/请求号"
_FEE = "服务费（元）"
_DETAIL_REQUIRED = (_TRADE_NO, _OUT_TRADE_NO, _BUSINESS, _COMPLETED, _AMOUNT, _REFUND_NO, _FEE)
_SUMMARY_REQUIRED = ("交易订单总笔数", "退款订单总笔数", _FEE)
_KINDS = {"交易": BillLineKind.PAYMENT, "退款": BillLineKind.REFUND}

_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_ACCOUNT_LINE = re.compile(r"#账号[：:]\s*\[([^\]]*)\]\s*")
_PAYMENT_TOTAL = re.compile(r"#交易合计[：:]\s*(\d+)\s*笔[，,]\s*商家实收共\s*(-?[0-9.,]+)\s*元")
_REFUND_TOTAL = re.compile(r"#退款合计[：:]\s*(\d+)\s*笔[，,]\s*商家实收退款共\s*(-?[0-9.,]+)\s*元")


def account_of(pid: str) -> str:
    """The bill account (``#账号``) of merchant ``pid``: the PID with ``0156``."""
    return pid + ACCOUNT_SUFFIX


def detail_name(account: str, day: date) -> str:
    return f"{account}_{day:%Y%m%d}_业务明细.csv"


def summary_name(account: str, day: date) -> str:
    return f"{account}_{day:%Y%m%d}_业务明细(汇总).csv"


# --- reading ------------------------------------------------------------------------


@dataclass
class _Trailer:
    """What the detail's closing lines state, and the file's way of signing fees."""

    payment_count: int
    payment_fen: int
    refund_count: int
    refund_fen: int
    merchant_side_fees: bool | None


def read_bill(source: BinaryIO, *, account: str) -> Iterator[BillLine | BillTotals]:
    """Every row of the detail as a :class:`BillLine`, then the bill's :class:`BillTotals`.

    ``source`` is the downloaded zip (seekable). The detail is decoded as it is
    read, one line at a time, so memory stays flat however long the bill is.
    Raises :class:`BillRejected` when ``#账号`` is not ``account`` or the file
    does not follow the layout.
    """
    try:
        archive = zipfile.ZipFile(source, metadata_encoding=ENCODING)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise BillRejected(f"the Alipay bill is not a zip file ({error})") from None
    with archive:
        detail = _entry(archive, "_业务明细.csv")
        summary = _entry(archive, "_业务明细(汇总).csv")
        trailer = yield from _read_detail(_lines(archive, detail), account)
        fee_fen = _read_summary(_lines(archive, summary), account, trailer)
        yield BillTotals(
            payment_count=trailer.payment_count,
            payment_fen=trailer.payment_fen,
            refund_count=trailer.refund_count,
            refund_fen=trailer.refund_fen,
            fee_fen=fee_fen,
        )


def _entry(archive: zipfile.ZipFile, suffix: str) -> zipfile.ZipInfo:
    found = [
        info
        for info in archive.infolist()
        if info.filename.replace("（", "(").replace("）", ")").rsplit("/", 1)[-1].endswith(suffix)
    ]
    if len(found) != 1:
        names = ", ".join(info.filename for info in archive.infolist()) or "nothing"
        raise BillRejected(f"the Alipay bill zip must hold one *{suffix} file; it holds {names}")
    return found[0]


def _lines(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[tuple[int, str]]:
    """The entry's lines (numbered from 1, line ending removed), decoded as they are read."""
    name = info.filename.rsplit("/", 1)[-1]
    try:
        with archive.open(info) as raw, io.TextIOWrapper(raw, encoding=ENCODING) as text:
            number = 0
            while line := text.readline(MAX_LINE_CHARS):
                number += 1
                if len(line) == MAX_LINE_CHARS and not line.endswith("\n"):
                    raise BillRejected(f"{name} line {number} is longer than {MAX_LINE_CHARS}")
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise BillRejected(f"{name} is not GBK text") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise BillRejected(f"{name} cannot be unpacked ({error})") from None


def _is_marker(text: str, title: str) -> bool:
    return text.startswith("#") and text.strip("#- \t") == title


def _check_account(text: str, account: str, where: str) -> bool:
    """True when ``text`` is an account line (of ``account``; another is refused)."""
    match = _ACCOUNT_LINE.fullmatch(text)
    if match is None:
        return False
    found = match.group(1).strip()
    if found != account:
        raise BillRejected(
            f"{where}: the bill is of Alipay account {found or '(none)'}, "
            f"not this branch's {account}"
        )
    return True


def _columns(text: str, required: Sequence[str], where: str) -> dict[str, int]:
    names = [_clean(cell).replace("(", "（").replace(")", "）") for cell in text.split(",")]
    index = {name: i for i, name in enumerate(names) if name}
    missing = [name for name in required if name not in index]
    if missing:
        raise BillRejected(f"{where}: the header row has no {', '.join(missing)} column")
    return index


def _clean(cell: str) -> str:
    return cell.strip(" \t")


def _read_detail(
    lines: Iterator[tuple[int, str]], account: str
) -> Generator[BillLine, None, _Trailer]:
    where = "业务明细"
    seen_account = False
    columns: dict[str, int] | None = None
    in_table = False
    fees = _FeeSide()
    payment: tuple[int, int] | None = None
    refund: tuple[int, int] | None = None
    for number, text in lines:
        at = f"{where} line {number}"
        if not in_table and columns is None:
            if _is_marker(text, DETAIL_LIST):
                if not seen_account:
                    raise BillRejected(f"{at}: no #账号 line before the table")
                in_table = True
            elif text.startswith("#"):
                seen_account = _check_account(text, account, at) or seen_account
            elif text.strip():
                raise BillRejected(f"{at}: a row before the {DETAIL_LIST} marker")
        elif in_table and columns is None:
            if text.strip():
                columns = _columns(text, _DETAIL_REQUIRED, at)
        elif in_table and columns is not None:
            if _is_marker(text, DETAIL_LIST + END):
                in_table = False
            elif text.startswith("#"):
                raise BillRejected(f"{at}: a comment inside the table")
            elif text.strip():
                yield _row(text, columns, fees, at)
        elif match := _PAYMENT_TOTAL.match(text):
            payment = (int(match.group(1)), _fen(match.group(2), at))
        elif match := _REFUND_TOTAL.match(text):
            refund = (int(match.group(1)), abs(_fen(match.group(2), at)))
    if columns is None:
        raise BillRejected(f"{where}: no {DETAIL_LIST} table (marker and header row)")
    if in_table:
        raise BillRejected(f"{where}: the table has no {DETAIL_LIST + END} marker (cut short?)")
    if payment is None or refund is None:
        raise BillRejected(f"{where}: no #交易合计 and #退款合计 lines after the table")
    return _Trailer(*payment, *refund, merchant_side_fees=fees.merchant_side)


class _FeeSide:
    """Which way the file signs 服务费, learnt from its first non-zero fee (see the module doc).

    From the merchant's side (like 商家实收) a fee charged on a payment is
    negative and a fee a refund returns positive; from the platform's side the
    other way round. :class:`BillLine` wants charged positive, returned negative.
    """

    merchant_side: bool | None = None

    def fee_fen(self, kind: BillLineKind, raw: int) -> int:
        if raw and self.merchant_side is None:
            self.merchant_side = (raw < 0) == (kind is BillLineKind.PAYMENT)
        return -raw if self.merchant_side else raw


def _row(text: str, columns: dict[str, int], fees: _FeeSide, at: str) -> BillLine:
    cells = text.split(",")
    width = max(columns.values()) + 1
    surplus = len(cells) - width
    if surplus > 0:
        subject = columns.get(_SUBJECT)
        if subject is None:
            raise BillRejected(f"{at}: {len(cells)} cells for {width} columns")
        cells[subject : subject + surplus + 1] = [",".join(cells[subject : subject + surplus + 1])]
    cells += [""] * (width - len(cells))

    def cell(name: str) -> str:
        return _clean(cells[columns[name]])

    kind = _KINDS.get(cell(_BUSINESS))
    if kind is None:
        raise BillRejected(f"{at}: 业务类型 {cell(_BUSINESS)!r} is neither 交易 nor 退款")
    out_trade_no = cell(_OUT_TRADE_NO)
    if not out_trade_no:
        raise BillRejected(f"{at}: no 商户订单号")
    amount = _fen(cell(_AMOUNT), at, _AMOUNT)
    if kind is BillLineKind.PAYMENT and amount < 0:
        raise BillRejected(f"{at}: a payment with a negative {_AMOUNT}")
    out_refund_no = cell(_REFUND_NO) or None
    if kind is BillLineKind.REFUND and out_refund_no is None:
        raise BillRejected(f"{at}: a refund without {_REFUND_NO}")
    completed = cell(_COMPLETED)
    if not _TIME.fullmatch(completed):
        raise BillRejected(f"{at}: {_COMPLETED} {completed!r} is not a time")
    try:
        # from_beijing's strptime would be the slowest step of a line; the text is
        # known to be yyyy-MM-dd HH:mm:ss, which fromisoformat reads the same.
        occurred_at = datetime.fromisoformat(completed).replace(tzinfo=BEIJING).astimezone(UTC)
    except ValueError:
        raise BillRejected(f"{at}: {_COMPLETED} {completed!r} is not a time") from None
    fee = cell(_FEE)
    return BillLine(
        kind=kind,
        out_trade_no=out_trade_no,
        amount_fen=abs(amount),
        occurred_at=occurred_at,
        provider_trade_no=cell(_TRADE_NO) or None,
        out_refund_no=out_refund_no if kind is BillLineKind.REFUND else None,
        fee_fen=fees.fee_fen(kind, _fen(fee, at, _FEE) if fee else 0),
    )


def _fen(text: str, at: str, column: str = "total") -> int:
    try:
        return yuan_to_fen(text)
    except ValueError:
        raise BillRejected(f"{at}: {column} {text!r} is not an amount in yuan") from None


def _read_summary(lines: Iterator[tuple[int, str]], account: str, trailer: _Trailer) -> int:
    """The net fee from the summary's 合计 row, once its counts agree with the detail's."""
    where = "业务明细(汇总)"
    columns: dict[str, int] | None = None
    in_table = False
    total: list[str] | None = None
    for number, text in lines:
        at = f"{where} line {number}"
        if _is_marker(text, SUMMARY_LIST):
            in_table = True
        elif _is_marker(text, SUMMARY_LIST + END):
            in_table = False
        elif text.startswith("#"):
            _check_account(text, account, at)
        elif in_table and text.strip():
            if columns is None:
                columns = _columns(text, _SUMMARY_REQUIRED, at)
                continue
            cells = [_clean(cell) for cell in text.split(",")]
            if cells[0] == "合计":
                cells += [""] * (max(columns.values()) + 1 - len(cells))
                total = [cells[columns[name]] for name in _SUMMARY_REQUIRED]
    if columns is None or total is None:
        raise BillRejected(f"{where}: no {SUMMARY_LIST} table with a 合计 row")
    try:
        counts = (int(total[0]), int(total[1]))
    except ValueError:
        raise BillRejected(f"{where}: the 合计 row's counts are not numbers") from None
    if counts != (trailer.payment_count, trailer.refund_count):
        raise BillRejected(
            f"{where}: {counts[0]} payments and {counts[1]} refunds, but the detail's "
            f"totals say {trailer.payment_count} and {trailer.refund_count}"
        )
    raw = _fen(total[2] or "0", where, _FEE)
    # Signed as the detail's fees are; a file with no fee on any row is read as the
    # simulator writes it (from the merchant's side).
    return raw if trailer.merchant_side_fees is False else -raw


# --- writing (the simulator) ----------------------------------------------------------


def bill_zip(
    account: str, day: date, entries: Sequence[BillEntry], *, exported_at: datetime
) -> bytes:
    """The zip Alipay publishes for ``day``: the detail and the summary of ``entries``.

    ``entries`` are the day's completed payments and refunds in completion
    order; their ``fee_fen`` is signed as :class:`~providers.kit.bills.BillEntry`
    says (charged positive, returned negative).
    """
    head = _head(account, day)
    tail = f"#导出时间：[{to_beijing(exported_at, '%Y年%m月%d日 %H:%M:%S')}]"
    detail = [DETAIL_TITLE, *head, _marker(DETAIL_LIST, 41, 40), ",".join(DETAIL_COLUMNS)]
    detail += [_detail_row(entry) for entry in entries]
    payments = [e for e in entries if e.kind == BillLineKind.PAYMENT.value]
    refunds = [e for e in entries if e.kind == BillLineKind.REFUND.value]
    paid = sum(e.amount_fen for e in payments)
    refunded = sum(e.amount_fen for e in refunds)
    fee = sum(e.fee_fen for e in entries)
    detail += [
        _marker(DETAIL_LIST + END, 41, 36),
        f"#交易合计：{len(payments)}笔，商家实收共{_yuan(paid)}元，商家优惠共0.00元",
        f"#退款合计：{len(refunds)}笔，商家实收退款共{_yuan(-refunded)}元，商家优惠退款共0.00元",
        tail,
    ]
    net = paid - refunded
    amounts = [_yuan(net), _yuan(net), "0.00", "0.00", "0.00", _yuan(-fee), "0.00"]
    summary = [
        SUMMARY_TITLE,
        *head,
        _marker(SUMMARY_LIST, 41, 40),
        ",".join(SUMMARY_COLUMNS),
        ",".join(["合计", "", str(len(payments)), str(len(refunds)), *amounts, _yuan(net - fee)]),
        _marker(SUMMARY_LIST + END, 40, 37),
        tail,
    ]
    return zip_gbk(
        [
            (detail_name(account, day), _gbk(detail)),
            (summary_name(account, day), _gbk(summary)),
        ],
        when=exported_at,
    )


def _head(account: str, day: date) -> list[str]:
    start = f"{day:%Y年%m月%d日} 00:00:00"
    end = f"{date.fromordinal(day.toordinal() + 1):%Y年%m月%d日} 00:00:00"
    return [f"#账号：[{account}]", f"#起始日期：[{start}]   终止日期：[{end}]"]


def _marker(title: str, left: int, right: int) -> str:
    return "#" + "-" * left + title + "-" * right


def _yuan(fen: int) -> str:
    return ("-" if fen < 0 else "") + fen_to_yuan(abs(fen))


def _detail_row(entry: BillEntry) -> str:
    refund = entry.kind == BillLineKind.REFUND.value
    signed = -entry.amount_fen if refund else entry.amount_fen
    values = {
        _TRADE_NO: entry.trade_no,
        _OUT_TRADE_NO: entry.out_trade_no,
        _BUSINESS: "退款" if refund else "交易",
        _SUBJECT: _text(entry.subject),
        _CREATED: to_beijing(entry.created_at),
        _COMPLETED: to_beijing(entry.at),
        "对方账户": str(entry.extra.get("buyer_logon_id", "tes***@example.com")),
        _AMOUNT: _yuan(signed),
        _RECEIVED: _yuan(signed),
        _REFUND_NO: (entry.out_refund_no or "") if refund else "",
        _FEE: _yuan(-entry.fee_fen),  # from the merchant's side, like 商家实收
    }
    cells = []
    for name in DETAIL_COLUMNS:
        value = values.get(name, "0.00" if name.endswith("（元）") else "")
        cells.append(value + "\t" if name in _TAB_COLUMNS else value)
    return ",".join(cells)


def _text(value: str) -> str:
    """Free text as a cell: cells are not quoted, so no comma, TAB or line break."""
    return re.sub(r"[\t\r\n]", " ", value).replace(",", "，")


def _gbk(lines: Iterable[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("gbk", errors="replace")


def zip_gbk(files: Sequence[tuple[str, bytes]], *, when: datetime) -> bytes:
    """A zip of ``files`` (deflated) whose names are GBK bytes without the UTF-8 flag.

    Written by hand: :mod:`zipfile` stores a non-ASCII name as UTF-8 and flags
    it, which is not what Alipay's files look like.
    """
    local = bytearray()
    central = bytearray()
    wall = when.astimezone(BEIJING)
    dos_time = (wall.hour << 11) | (wall.minute << 5) | (wall.second // 2)
    dos_date = ((wall.year - 1980) << 9) | (wall.month << 5) | wall.day
    for name, data in files:
        raw_name = name.encode("gbk")
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        packed = packer.compress(data) + packer.flush()
        crc = zlib.crc32(data)
        offset = len(local)
        sizes = (crc, len(packed), len(data), len(raw_name))
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, dos_time, dos_date, *sizes, 0)
        local += raw_name + packed
        central += struct.pack(
            "<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 8, dos_time, dos_date, *sizes, 0, 0, 0, 0, 0,
            offset,
        )  # fmt: skip
        central += raw_name
    end = struct.pack(
        "<4s4H2IH", b"PK\x05\x06", 0, 0, len(files), len(files), len(central), len(local), 0
    )
    return bytes(local + central + end)
