"""The sandbox's daily bill file: written by the simulator, read by the adapter.

A bill is UTF-8 CSV (no BOM, ``\\n`` line ends), one merchant's completed
payments and refunds of one Beijing day (00:00 to 24:00 UTC+8), in completion
order::

    # sandbox bill v1; merchant_id=zj; bill_date=2026-12-02; generated_at=2026-12-02T03:04:05Z
    kind,out_trade_no,trade_no,out_refund_no,refund_no,amount_fen,fee_fen,completed_at,status
    PAYMENT,261202025901AbCdEfGhIjKl,sbx0f3a...,,,1999,12,2026-12-02T02:59:01.250000Z,SUCCEEDED
    REFUND,261202025901AbCdEfGhIjKl,sbx0f3a...,261202030000MnOpQrStUvWx,sbr81c...,500,-3,2026-12-02T03:00:00.000000Z,SUCCEEDED
    # summary; payment_count=1; payment_fen=1999; refund_count=1; refund_fen=500; fee_fen=9

- The first line names the merchant account the bill belongs to and the day.
- Then the header line, then one line per payment (``kind`` PAYMENT, the two
  refund columns empty) or refund (``kind`` REFUND: ``out_trade_no`` and
  ``trade_no`` are the refunded payment's). ``amount_fen`` is a whole number of
  fen, positive for both kinds; ``fee_fen`` is signed: the fee charged on a
  payment, minus the share a refund returns. ``completed_at`` is ISO 8601 UTC
  (``Z``). ``status`` is SUCCEEDED, PENDING or FAILED.
- The last line sums the lines: counts and fen of payments and refunds, and the
  net fee. A file without it was cut short.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import BinaryIO

from api.plugin import BillLine, BillLineKind, BillLineStatus, BillRejected, BillTotals
from providers.kit.bills import BillEntry

__all__ = [
    "COLUMNS",
    "DEFAULT_MERCHANT",
    "MEDIA_TYPE",
    "entries_for",
    "read_bill",
    "write_bill",
]

DEFAULT_MERCHANT = "sandbox"
MEDIA_TYPE = "text/csv; charset=utf-8"
TITLE = "sandbox bill v1"
SUMMARY = "summary"
COLUMNS = (
    "kind",
    "out_trade_no",
    "trade_no",
    "out_refund_no",
    "refund_no",
    "amount_fen",
    "fee_fen",
    "completed_at",
    "status",
)
SUMMARY_FIELDS = ("payment_count", "payment_fen", "refund_count", "refund_fen", "fee_fen")
_KINDS = {k.value: k for k in BillLineKind}
_STATUSES = {s.value: s for s in BillLineStatus}
_BATCH = 512  # lines per chunk written


def entries_for(entries: Iterable[BillEntry], merchant_id: str) -> list[BillEntry]:
    """The entries of ``merchant_id``'s bill.

    A line added through the bill controls for a payment the simulator never
    saw names no merchant (the controls do not take one): it is on every
    merchant's bill.
    """
    return [e for e in entries if e.extra.get("merchant_id", merchant_id) == merchant_id]


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _comment(title: str, fields: Sequence[tuple[str, object]]) -> str:
    return "# " + "; ".join([title, *(f"{k}={v}" for k, v in fields)]) + "\n"


def write_bill(
    merchant_id: str, day: date, entries: Iterable[BillEntry], *, generated_at: datetime
) -> Iterator[bytes]:
    """The bill file of ``entries`` as UTF-8 chunks of up to a few hundred lines."""
    yield _comment(
        TITLE,
        [
            ("merchant_id", merchant_id),
            ("bill_date", day.isoformat()),
            ("generated_at", _utc(generated_at)),
        ],
    ).encode()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    sums = dict.fromkeys(SUMMARY_FIELDS, 0)
    for count, entry in enumerate(entries, 1):
        refund = entry.kind == BillLineKind.REFUND.value
        writer.writerow(
            (
                entry.kind,
                entry.out_trade_no,
                entry.trade_no,
                (entry.out_refund_no or "") if refund else "",
                (entry.refund_no or "") if refund else "",
                entry.amount_fen,
                entry.fee_fen,
                _utc(entry.at),
                entry.status,
            )
        )
        prefix = "refund" if refund else "payment"
        sums[f"{prefix}_count"] += 1
        sums[f"{prefix}_fen"] += entry.amount_fen
        sums["fee_fen"] += entry.fee_fen
        if count % _BATCH == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    buffer.write(_comment(SUMMARY, list(sums.items())))
    yield buffer.getvalue().encode()


def _fields(text: str, title: str, number: int) -> dict[str, str]:
    parts = [p.strip() for p in text.lstrip("#").split(";")]
    if parts[0] != title:
        raise BillRejected(f"line {number}: expected the {title!r} line")
    fields: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            raise BillRejected(f"line {number}: {part!r} is not key=value")
        fields[key.strip()] = value.strip()
    return fields


def _int(text: str, column: str, number: int, *, signed: bool = False) -> int:
    body = text[1:] if signed and text[:1] == "-" else text
    if not body.isascii() or not body.isdigit():
        raise BillRejected(f"line {number}: {column} {text!r} is not a whole number of fen")
    return int(text)


def _line(row: list[str], number: int) -> BillLine:
    if len(row) != len(COLUMNS):
        raise BillRejected(f"line {number}: {len(row)} columns, the layout has {len(COLUMNS)}")
    kind_text, out_trade_no, trade_no, out_refund_no, refund_no, amount, fee, at, status = row
    kind = _KINDS.get(kind_text)
    if kind is None:
        raise BillRejected(f"line {number}: kind {kind_text!r} is not PAYMENT or REFUND")
    state = _STATUSES.get(status)
    if state is None:
        raise BillRejected(f"line {number}: status {status!r} is not one the layout knows")
    if not out_trade_no:
        raise BillRejected(f"line {number}: out_trade_no is empty")
    if kind is BillLineKind.REFUND and not out_refund_no:
        raise BillRejected(f"line {number}: a refund line without out_refund_no")
    try:
        occurred_at = datetime.fromisoformat(at)
    except ValueError:
        raise BillRejected(f"line {number}: completed_at {at!r} is not an ISO time") from None
    if occurred_at.utcoffset() is None:
        raise BillRejected(f"line {number}: completed_at {at!r} has no UTC offset")
    return BillLine(
        kind=kind,
        out_trade_no=out_trade_no,
        amount_fen=_int(amount, "amount_fen", number),
        occurred_at=occurred_at.astimezone(UTC),
        provider_trade_no=trade_no or None,
        out_refund_no=out_refund_no or None,
        provider_refund_no=refund_no or None,
        fee_fen=_int(fee, "fee_fen", number, signed=True),
        status=state,
    )


def _texts(source: BinaryIO) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(source, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BillRejected(f"line {number} is not UTF-8") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        yield number, text.rstrip("\r\n")


def read_bill(source: BinaryIO, merchant_id: str) -> Iterator[BillLine | BillTotals]:
    """Every line of a sandbox bill as it is read, then its totals.

    Raises :class:`~api.plugin.BillRejected` when the bill is not
    ``merchant_id``'s or does not follow the layout (a missing summary line
    included: the file was cut short).
    """
    texts = _texts(source)
    first = next(texts, None)
    if first is None or not first[1].startswith("#"):
        raise BillRejected("not a sandbox bill: the first line is not its account line")
    account = _fields(first[1], TITLE, 1)
    if account.get("merchant_id") != merchant_id:
        raise BillRejected(
            f"the bill is merchant {account.get('merchant_id')!r}'s, "
            f"not this branch's ({merchant_id!r})"
        )
    header = next(texts, None)
    if header is None or tuple(next(csv.reader([header[1]]), [])) != COLUMNS:
        raise BillRejected("line 2 is not the sandbox bill's header line")
    for number, text in texts:
        if text.startswith("#"):
            fields = _fields(text, SUMMARY, number)
            missing = [f for f in SUMMARY_FIELDS if f not in fields]
            if missing:
                raise BillRejected(f"line {number}: the summary lacks {', '.join(missing)}")
            values = {f: _int(fields[f], f, number, signed=f == "fee_fen") for f in SUMMARY_FIELDS}
            for extra_number, rest in texts:
                if rest.strip():
                    raise BillRejected(f"line {extra_number}: a line after the summary")
            yield BillTotals(**values)
            return
        if not text.strip():
            continue
        row = next(csv.reader([text])) if '"' in text else text.split(",")
        yield _line(row, number)
    raise BillRejected("the bill ends without its summary line (cut short?)")
