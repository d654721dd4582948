"""UnionPay's daily reconciliation file (对账文件), as the file transfer interface hands it over.

The file transfer (文件传输类交易, ``txnType=76``) answers with ``fileContent``:
Base64 of zlib-deflated ZIP bytes. The ZIP holds, for one merchant and one
settle date:

- ``INN<YYMMDD>88ZM_<merId>``: the ZM file (一般交易明细), GBK, no header or
  footer, one record per transaction of exactly 607 bytes plus CRLF: 42
  fixed-width fields (:data:`FIELD_LENGTHS`, the official demo's length
  array) separated by one space. Alphanumeric fields are left-aligned and
  space-padded, numeric ones zero-padded; amounts are fen, fees and
  settlement amounts carry a sign letter (``C`` 贷, credit to the merchant;
  ``D`` 借, debit). Records are sliced by GBK byte offsets, never decoded
  as text first: a Chinese 二级商户简称 is two bytes a character.
- ``RD2010<YYMMDD>01_<merId>``: the summary report (中国银联全渠道商户交易汇总表),
  GBK text whose 交易类型 table has a row per transaction type and a 总计 row
  with 交易笔数 and 借/贷 columns of 交易金额, 费用 and 资金清算差额 in yuan.
- ``INN<YYMMDD>88ZME_<merId>`` (差错 files), when present: not read here.

``settleDate`` (MMDD) and the records' 交易传输时间 (MMDDhhmmss) carry no
year: :func:`settle_day` names the most recent such day not after today
(Beijing), :func:`transmit_time` the moment nearest the settle day (a record
timed 31 December in the file of 1 January is of the year before).

This module writes the files too (for the simulator): :func:`zm_record`,
:func:`rd_report`, :func:`bill_zip`.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import IO, BinaryIO, cast

from api.plugin import (
    BEIJING,
    BillLine,
    BillLineKind,
    BillRejected,
    BillTotals,
    fen_to_yuan,
    yuan_to_fen,
)

logger = logging.getLogger("branchpay.providers.unionpay.bills")

# The official demo's length array (DemoBase.parseZMFile): field n (1-based) is
# FIELD_LENGTHS[n - 1] bytes long; one space separates two fields.
FIELD_LENGTHS: tuple[int, ...] = (
    3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2,
    6, 2, 4, 32, 1, 21, 15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 32, 98,
)  # fmt: skip
FIELD_OFFSETS: tuple[int, ...] = tuple(
    sum(length + 1 for length in FIELD_LENGTHS[:n]) for n in range(len(FIELD_LENGTHS))
)
RECORD_BYTES = sum(FIELD_LENGTHS) + len(FIELD_LENGTHS) - 1  # 607
ENCODING = "gbk"

# Field numbers (1-based, as the layout counts them).
TXN_CODE = 1  # 交易代码, e.g. S56
TRACE_NO = 4  # 系统跟踪号
TRANSMIT_TIME = 5  # 交易传输时间 MMDDhhmmss, Beijing
ACCOUNT = 6  # 帐号 (masked)
AMOUNT = 7  # 交易金额, n12 fen
QUERY_ID = 10  # 查询流水号
ORDER_ID = 12  # 商户订单号
ORIG_TRACE_NO = 14  # 原始交易系统跟踪号
ORIG_TIME = 15  # 原始交易日期时间
FEE = 16  # 商户手续费, sign letter + n12 fen
SETTLE_AMOUNT = 17  # 结算金额, sign letter + n12 fen
TXN_TYPE = 20  # 交易类型: 01 consume, 04 退货, 31 消费撤销
BIZ_TYPE = 22  # 业务类型
ORIG_QUERY_ID = 27  # 原交易查询流水号
MER_ID = 28  # 商户代码
SUB_MER_NAME = 31  # 二级商户简称
NET_AMOUNT = 33  # 清算净额
ORIG_ORDER_ID = 41  # 原始交易订单号

TXN_CONSUME = "01"
TXN_REFUND = "04"
TXN_VOID = "31"
REFUND_TYPES = frozenset({TXN_REFUND, TXN_VOID})
# What the RD report calls each type (a row of its 交易类型 table).
TYPE_NAMES = {TXN_CONSUME: "消费", TXN_REFUND: "退货", TXN_VOID: "消费撤销"}

_ZM_NAME = re.compile(r"INN(\d{6})88ZM_([0-9A-Za-z]+)")
_RD_NAME = re.compile(r"RD2010(\d{6})01_([0-9A-Za-z]+)")
_AMOUNT_TEXT = r"(-?[\d,]+\.\d{2})"
_RD_ROW = re.compile(r"^\s*(\S+)\s+(\d+)" + (r"\s+" + _AMOUNT_TEXT) * 6 + r"\s*$")
COLON = "\N{FULLWIDTH COLON}"  # what the report's labels end with
_RD_MERCHANT = re.compile("商户代码[:" + COLON + r"]\s*([0-9A-Za-z]+)")
MAX_RD_BYTES = 1 << 20  # the summary report is a page of text
RD_TOTAL = "总计"


# --- days and times ------------------------------------------------------------------


def settle_day(mmdd: str, today: date) -> date:
    """The day a ``settleDate`` (MMDD, no year) names: the most recent such day not after today.

    ``today`` is the current Beijing day. In January, ``1231`` is last year's
    31 December; ``0229`` is the last leap day. ValueError for text that is
    not a month and day.
    """
    if len(mmdd) != 4 or not mmdd.isascii() or not mmdd.isdigit():
        raise ValueError("settleDate must be MMDD")
    month, day = int(mmdd[:2]), int(mmdd[2:])
    for year in range(today.year, today.year - 8, -1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            if not (1 <= month <= 12 and 1 <= day <= 31) or (month, day) != (2, 29):
                raise ValueError("settleDate is not a day of the year") from None
            continue
        if candidate <= today:
            return candidate
    raise ValueError("settleDate is not a day of the year")


def transmit_time(text: str, settled: date) -> datetime:
    """A record's 交易传输时间 (MMDDhhmmss, Beijing) as UTC, in the year nearest ``settled``.

    A record of 31 December 23:50 in the file of 1 January is of the year
    before; one of 1 January 00:10 in the file of 31 December of the next.
    """
    if len(text) != 10 or not text.isascii() or not text.isdigit():
        raise ValueError("交易传输时间 is not MMDDhhmmss")
    month, day = int(text[0:2]), int(text[2:4])
    # Months more than half a year from the settle date's are of the next or last year.
    year = settled.year
    if month - settled.month > 6:
        year -= 1
    elif settled.month - month > 6:
        year += 1
    try:
        local = datetime(
            year, month, day, int(text[4:6]), int(text[6:8]), int(text[8:10]), tzinfo=BEIJING
        )
    except ValueError:
        raise ValueError("交易传输时间 is not a time of the year") from None
    return local.astimezone(UTC)


def file_date(day: date) -> str:
    """YYMMDD, as the entry names write the settle date."""
    return f"{day:%y%m%d}"


def zm_name(day: date, mer_id: str) -> str:
    return f"INN{file_date(day)}88ZM_{mer_id}"


def rd_name(day: date, mer_id: str) -> str:
    return f"RD2010{file_date(day)}01_{mer_id}"


def zip_name(day: date, mer_id: str) -> str:
    """The ``fileName`` UnionPay gives the ZIP, e.g. ``802310048993424_20150905.zip``."""
    return f"{mer_id}_{day:%Y%m%d}.zip"


# --- writing (the simulator) -----------------------------------------------------------


def signed_fen(fen: int, credit: bool) -> str:
    """A signed amount field: ``C`` (贷) or ``D`` (借), then 12 digits of fen."""
    if fen < 0 or fen > 999_999_999_999:
        raise ValueError("amount out of range")
    return ("C" if credit else "D") + f"{fen:012d}"


def zm_record(values: Mapping[int, str]) -> bytes:
    """One ZM record (607 bytes, no line end): each field GBK, left-aligned, space-padded.

    ``values`` maps field numbers to text; missing fields are blank. A value
    longer than its field is a ValueError.
    """
    parts: list[bytes] = []
    for number, length in enumerate(FIELD_LENGTHS, start=1):
        raw = values.get(number, "").encode(ENCODING)
        if len(raw) > length:
            raise ValueError(f"field {number} is longer than {length} bytes")
        parts.append(raw.ljust(length, b" "))
    return b" ".join(parts)


@dataclass
class RdRow:
    """One row of the RD report's 交易类型 table; amounts in fen, unsigned."""

    count: int = 0
    amount_debit: int = 0
    amount_credit: int = 0
    fee_debit: int = 0
    fee_credit: int = 0

    def add(self, other: RdRow) -> None:
        self.count += other.count
        self.amount_debit += other.amount_debit
        self.amount_credit += other.amount_credit
        self.fee_debit += other.fee_debit
        self.fee_credit += other.fee_credit

    @property
    def net(self) -> int:
        """资金清算差额 for the merchant: credit minus debit."""
        return self.amount_credit - self.amount_debit - self.fee_debit + self.fee_credit


RULER = "_" * 118


def rd_report(
    day: date, mer_id: str, rows: Mapping[str, RdRow], *, merchant_name: str, made: date
) -> bytes:
    """The RD summary report (GBK, CRLF): header lines, the 交易类型 table with 总计, 卡性质."""
    total = RdRow()
    for row in rows.values():
        total.add(row)

    def line(name: str, row: RdRow) -> str:
        net_debit, net_credit = (0, row.net) if row.net >= 0 else (-row.net, 0)
        figures = (
            row.amount_debit,
            row.amount_credit,
            row.fee_debit,
            row.fee_credit,
            net_debit,
            net_credit,
        )
        padded = name + " " * max(2, 16 - 2 * len(name))
        return padded + f"{row.count:>10}" + "".join(f"{fen_to_yuan(f):>18}" for f in figures)

    head = " " * 44 + "中国银联全渠道商户交易汇总表"
    lines = [
        head,
        "",
        f"商户代码{COLON}{mer_id:<40}清算币种{COLON}人民币(156)",
        f"收单机构{COLON}{'中国银联':<36}清算日期{COLON}{day:%Y%m%d}",
        f"商户名称{COLON}{merchant_name:<36}生成日期{COLON}{made:%Y%m%d}",
        RULER,
        "交易类型          交易笔数" + " " * 18 + "交易金额" + " " * 28 + "费用"
        " " * 26 + "资金清算差额",
        " " * 26 + "".join(f"{'借':>17}{'贷':>17}" for _ in range(3)),
        RULER,
        *(line(name, row) for name, row in rows.items()),
        line(RD_TOTAL, total),
        RULER,
        "",
        "卡性质            交易笔数" + " " * 18 + "交易金额",
        RULER,
        f"借记卡      {total.count:>14}{fen_to_yuan(total.amount_credit):>26}",
        RULER,
    ]
    return "\r\n".join(lines).encode(ENCODING) + b"\r\n"


def bill_zip(day: date, mer_id: str, records: Iterable[bytes], report: bytes) -> bytes:
    """The ZIP of a settle date: the ZM file (records joined by CRLF) and the RD report."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(zm_name(day, mer_id), "w") as zm:
            for record in records:
                zm.write(record + b"\r\n")
        archive.writestr(rd_name(day, mer_id), report)
    return buffer.getvalue()


# --- reading (the adapter) -------------------------------------------------------------


_SLICES: tuple[slice, ...] = tuple(
    slice(start, start + length) for start, length in zip(FIELD_OFFSETS, FIELD_LENGTHS, strict=True)
)


def _field(record: bytes, number: int) -> bytes:
    return record[_SLICES[number - 1]]


def _text(record: bytes, number: int) -> str:
    """An ASCII field's text without its padding (the codes, numbers and ids are ASCII)."""
    try:
        return record[_SLICES[number - 1]].strip(b" ").decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"field {number} is not ASCII") from None


def _fen(record: bytes, number: int) -> int:
    text = _text(record, number)
    if not text.isdigit():
        raise ValueError(f"field {number} is not a count of fen")
    return int(text)


def _signed(record: bytes, number: int) -> int:
    """A C/D amount as seen from the fee's side: D (借, charged) positive, C (贷) negative."""
    text = _text(record, number)
    if not text:
        return 0
    letter, digits = text[0], text[1:]
    if letter not in "CD" or not digits.isdigit():
        raise ValueError(f"field {number} is not C/D and fen")
    return int(digits) if letter == "D" else -int(digits)


def read_bill(source: BinaryIO, mer_id: str) -> Iterator[BillLine | BillTotals]:
    """The lines of a reconciliation ZIP, record by record, then the RD report's totals.

    Refuses (:class:`~api.plugin.BillRejected`) a file that is not a ZIP, has
    no ZM entry, names another merchant (in an entry name or a record's
    商户代码), or breaks the layout.
    """
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BillRejected(f"the UnionPay bill is not a ZIP file: {error}") from None
    with archive:
        zm_entry, settled, rd_entry = _entries(archive, mer_id)
        # A C-level line reader over the entry: zipfile's own readline is Python code.
        # Closing the reader closes the entry.
        with io.BufferedReader(cast(io.RawIOBase, archive.open(zm_entry)), 1 << 15) as zm:
            yield from _records(zm, mer_id, settled)
        if rd_entry is not None:
            totals = _rd_totals(archive, rd_entry, mer_id)
            if totals is not None:
                yield totals


def _entries(
    archive: zipfile.ZipFile, mer_id: str
) -> tuple[zipfile.ZipInfo, date, zipfile.ZipInfo | None]:
    zm: tuple[zipfile.ZipInfo, date] | None = None
    rd: zipfile.ZipInfo | None = None
    for info in archive.infolist():
        name = info.filename.rsplit("/", 1)[-1]
        for pattern in (_ZM_NAME, _RD_NAME):
            match = pattern.fullmatch(name)
            if match is None:
                continue
            if match.group(2) != mer_id:
                raise BillRejected("the UnionPay bill is another merchant's (merId in its entries)")
            try:
                settled = datetime.strptime(match.group(1), "%y%m%d").date()
            except ValueError:
                raise BillRejected(f"the UnionPay bill entry {name} names no date") from None
            if pattern is _RD_NAME:
                rd = info
            elif zm is not None:
                raise BillRejected("the UnionPay bill holds two ZM files")
            else:
                zm = (info, settled)
    if zm is None:
        raise BillRejected("the UnionPay bill has no ZM file (INN<YYMMDD>88ZM_<merId>)")
    return zm[0], zm[1], rd


def _records(zm: IO[bytes], mer_id: str, settled: date) -> Iterator[BillLine]:
    skipped = 0
    merchant = mer_id.encode("ascii")
    for number, raw in enumerate(zm, start=1):
        record = raw.rstrip(b"\r\n")
        if not record.strip():
            continue
        if len(record) != RECORD_BYTES:
            raise BillRejected(
                f"UnionPay ZM record {number} is {len(record)} bytes, not {RECORD_BYTES}"
            )
        try:
            line = _line(record, merchant, settled)
        except ValueError as error:
            raise BillRejected(f"UnionPay ZM record {number}: {error}") from None
        if line is None:
            skipped += 1
            continue
        yield line
    if skipped:
        logger.warning("unionpay bill of %s: %d records of other types skipped", settled, skipped)


def _line(record: bytes, mer_id: bytes, settled: date) -> BillLine | None:
    if record[_SLICES[MER_ID - 1]].rstrip(b" ") != mer_id:
        raise BillRejected("the UnionPay bill is another merchant's (商户代码 of a record)")
    txn_type = _text(record, TXN_TYPE)
    if txn_type != TXN_CONSUME and txn_type not in REFUND_TYPES:
        return None
    amount = _fen(record, AMOUNT)
    fee = _signed(record, FEE)
    occurred = transmit_time(_text(record, TRANSMIT_TIME), settled)
    query_id = _text(record, QUERY_ID) or None
    order_id = _text(record, ORDER_ID)
    if not order_id:
        raise ValueError("商户订单号 is blank")
    if txn_type == TXN_CONSUME:
        return BillLine(
            kind=BillLineKind.PAYMENT,
            out_trade_no=order_id,
            amount_fen=amount,
            occurred_at=occurred,
            provider_trade_no=query_id,
            fee_fen=fee,
        )
    return BillLine(
        kind=BillLineKind.REFUND,
        out_trade_no=_text(record, ORIG_ORDER_ID),
        amount_fen=amount,
        occurred_at=occurred,
        provider_trade_no=_text(record, ORIG_QUERY_ID) or None,
        out_refund_no=order_id,
        provider_refund_no=query_id,
        fee_fen=fee,
    )


def _rd_totals(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, mer_id: str) -> BillTotals | None:
    """The totals of the RD report's 交易类型 table, or None when it has no 总计 row."""
    if entry.file_size > MAX_RD_BYTES:
        raise BillRejected("the UnionPay RD report is larger than a summary can be")
    try:
        text = archive.read(entry).decode(ENCODING)
    except UnicodeDecodeError:
        raise BillRejected("the UnionPay RD report is not GBK text") from None
    payments, refunds = RdRow(), RdRow()
    total: RdRow | None = None
    for raw in text.splitlines():
        merchant = _RD_MERCHANT.search(raw)
        if merchant is not None and merchant.group(1) != mer_id:
            raise BillRejected("the UnionPay RD report is another merchant's (商户代码)")
        if "卡性质" in raw:
            break  # the second table counts the same transactions by card
        match = _RD_ROW.match(raw)
        if match is None:
            continue
        name = match.group(1)
        figures = [yuan_to_fen(match.group(n)) for n in range(3, 7)]
        row = RdRow(int(match.group(2)), *figures)
        if name == RD_TOTAL:
            total = row
        elif "退货" in name or "撤销" in name:
            refunds.add(row)
        else:
            payments.add(row)
    if total is None:
        return None
    rows = RdRow()
    rows.add(payments)
    rows.add(refunds)
    if rows != total:
        raise BillRejected("the UnionPay RD report's rows do not add up to its 总计")
    return BillTotals(
        payment_count=payments.count,
        payment_fen=payments.amount_credit - payments.amount_debit,
        refund_count=refunds.count,
        refund_fen=refunds.amount_debit - refunds.amount_credit,
        fee_fen=total.fee_debit - total.fee_credit,
    )


def most_recent(day: date, today: date) -> bool:
    """Whether ``day`` is what its MMDD names on ``today`` (UnionPay cannot ask for older)."""
    try:
        return settle_day(f"{day:%m%d}", today) == day
    except ValueError:
        return False
