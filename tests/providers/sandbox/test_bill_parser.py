"""The sandbox bill parser on files the tests write to the documented layout by hand."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.plugin import BillLine, BillLineKind, BillLineStatus, BillRejected, BillTotals
from providers.sandbox.bills import read_bill

HEADER = "kind,out_trade_no,trade_no,out_refund_no,refund_no,amount_fen,fee_fen,completed_at,status"
ACCOUNT = (
    "# sandbox bill v1; merchant_id=zj; bill_date=2026-12-01; generated_at=2026-12-02T01:00:00Z"
)
PAYMENT = "PAYMENT,261201080000AAAABBBBCCCC,sbx1,,,2500,15,2026-12-01T08:00:00.000000Z,SUCCEEDED"
REFUND = (
    "REFUND,261201080000AAAABBBBCCCC,sbx1,261201090000DDDDEEEEFFFF,sbr1,1000,-6,"
    "2026-12-01T09:30:00+08:00,PENDING"
)
SUMMARY = "# summary; payment_count=1; payment_fen=2500; refund_count=1; refund_fen=1000; fee_fen=9"


def bill(*lines: str, end: str = "\n") -> bytes:
    return end.join(lines).encode() + end.encode()


def read(data: bytes, merchant: str = "zj") -> list[BillLine | BillTotals]:
    return list(read_bill(io.BytesIO(data), merchant))


def test_a_bill_reads_as_its_lines_then_its_totals() -> None:
    items = read(bill(ACCOUNT, HEADER, PAYMENT, REFUND, SUMMARY))
    assert items == [
        BillLine(
            kind=BillLineKind.PAYMENT,
            out_trade_no="261201080000AAAABBBBCCCC",
            amount_fen=2500,
            occurred_at=datetime(2026, 12, 1, 8, tzinfo=UTC),
            provider_trade_no="sbx1",
            fee_fen=15,
        ),
        BillLine(
            kind=BillLineKind.REFUND,
            out_trade_no="261201080000AAAABBBBCCCC",
            amount_fen=1000,
            occurred_at=datetime(2026, 12, 1, 1, 30, tzinfo=UTC),
            provider_trade_no="sbx1",
            out_refund_no="261201090000DDDDEEEEFFFF",
            provider_refund_no="sbr1",
            fee_fen=-6,
            status=BillLineStatus.PENDING,
        ),
        BillTotals(payment_count=1, payment_fen=2500, refund_count=1, refund_fen=1000, fee_fen=9),
    ]
    assert all(i.occurred_at.tzinfo is UTC for i in items if isinstance(i, BillLine))


def test_windows_line_ends_a_bom_and_quoted_values_are_read() -> None:
    quoted = '"PAYMENT","261201080000AAAABBBBCCCC","sbx1","","","2500","15","2026-12-01T08:00:00Z","SUCCEEDED"'
    data = b"\xef\xbb\xbf" + bill(
        ACCOUNT,
        HEADER,
        quoted,
        SUMMARY.replace("refund_count=1", "refund_count=0").replace(
            "refund_fen=1000", "refund_fen=0"
        ),
        end="\r\n",
    )
    items = read(data)
    assert isinstance(items[0], BillLine) and items[0].amount_fen == 2500
    assert isinstance(items[-1], BillTotals) and items[-1].refund_count == 0


def test_an_empty_day_has_only_totals() -> None:
    empty = "# summary; payment_count=0; payment_fen=0; refund_count=0; refund_fen=0; fee_fen=0"
    assert read(bill(ACCOUNT, HEADER, empty)) == [BillTotals(0, 0, 0, 0, 0)]


def test_another_merchants_bill_is_refused_before_any_line() -> None:
    with pytest.raises(BillRejected, match=r"merchant 'zj'.*not this branch's \('bj'\)"):
        next(read_bill(io.BytesIO(bill(ACCOUNT, HEADER, PAYMENT, SUMMARY)), "bj"))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "first line"),
        (bill(HEADER, PAYMENT, SUMMARY), "first line"),
        (bill("# some other bill; merchant_id=zj", HEADER, SUMMARY), "sandbox bill v1"),
        (bill("# sandbox bill v1; bill_date=2026-12-01", HEADER, SUMMARY), "merchant None"),
        (bill(ACCOUNT, HEADER.replace("fee_fen", "fee"), PAYMENT, SUMMARY), "header"),
        (bill(ACCOUNT, HEADER, PAYMENT), "without its summary"),
        (bill(ACCOUNT, HEADER, PAYMENT.replace(",2500,", ",25.00,"), SUMMARY), "amount_fen"),
        (bill(ACCOUNT, HEADER, PAYMENT.replace(",2500,", ",-2500,"), SUMMARY), "amount_fen"),
        (bill(ACCOUNT, HEADER, PAYMENT.replace(",15,", ",1.5,"), SUMMARY), "fee_fen"),
        (bill(ACCOUNT, HEADER, PAYMENT.replace(".000000Z", ""), SUMMARY), "no UTC offset"),
        (bill(ACCOUNT, HEADER, PAYMENT.replace("2026-12-01T", "yesterday "), SUMMARY), "ISO"),
        (bill(ACCOUNT, HEADER, PAYMENT.replace("PAYMENT,", "CHARGE,"), SUMMARY), "kind"),
        (bill(ACCOUNT, HEADER, PAYMENT.replace("SUCCEEDED", "DONE"), SUMMARY), "status"),
        (bill(ACCOUNT, HEADER, PAYMENT + ",extra", SUMMARY), "10 columns"),
        (
            bill(ACCOUNT, HEADER, REFUND.replace("261201090000DDDDEEEEFFFF", ""), SUMMARY),
            "out_refund_no",
        ),
        (bill(ACCOUNT, HEADER, PAYMENT, SUMMARY.replace("; fee_fen=9", "")), "lacks fee_fen"),
        (bill(ACCOUNT, HEADER, PAYMENT, SUMMARY, PAYMENT), "after the summary"),
        (bill(ACCOUNT, HEADER, PAYMENT).replace(b"sbx1", b"sbx\xff"), "not UTF-8"),
    ],
)
def test_a_broken_layout_is_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(BillRejected, match=why):
        read(data)


def test_reading_is_lazy_on_a_file_of_many_lines(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    count = 50_000
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write(ACCOUNT + "\n" + HEADER + "\n")
        for n in range(count):
            out.write(f"PAYMENT,order{n:08d},t{n},,,100,1,2026-12-01T08:00:00Z,SUCCEEDED\n")
        out.write(
            f"# summary; payment_count={count}; payment_fen={count * 100}; "
            f"refund_count=0; refund_fen=0; fee_fen={count}\n"
        )
    size = path.stat().st_size
    with path.open("rb") as source:
        items = read_bill(source, "zj")
        assert source.tell() == 0  # nothing read until the first line is asked for
        first = next(items)
        assert isinstance(first, BillLine) and first.out_trade_no == "order00000000"
        assert source.tell() < size // 100
        last = None
        seen = 1
        for item in items:
            last = item
            seen += 1
    assert seen == count + 1
    assert last == BillTotals(count, count * 100, 0, 0, count)
