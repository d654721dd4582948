"""UnionPay's reconciliation file read from files this test writes to the published layout.

The ZM records are built here from the official demo's length array (42
fields, one space apart, 607 bytes, GBK), not with the simulator's writer;
the four records of the reconstructed sample in the bill notes are parsed
as they are. Also: settle dates without a year, merchants that are not the
branch's, broken layouts, and flat memory for large files.
"""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest

from api.plugin import BillLine, BillLineKind, BillRejected, BillTotals
from providers.unionpay import UnionpayProvider, bills
from tests.providers.unionpay.support import BRANCH, settings

# The official demo's ZM length array (DemoBase.parseZMFile), written out again here.
LENGTHS = [3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2]
LENGTHS += [6, 2, 4, 32, 1, 21, 15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 32, 98]

SAMPLE_MER_ID = "898111448161234"
COLON = "\N{FULLWIDTH COLON}"
# The reconstructed sample of the notes (shared/notes/bills.md section 5), byte for byte.
SAMPLE = [
    "S56 48021000    00049992    100001 0601091502 622848******1234    000000005000 4"
    + "814 07 202506010915021000018 01 TEL20250601000001                01             "
    + "      D000000000030 C000000004970 0001                 01    000201"
    + " " * 66
    + "898111448161234   000000000000000"
    + " " * 34
    + "000000000000  C000000004970 00000000"
    + " " * 34
    + "000000000000  000000000000  00000000000     7"
    + " " * 132,
    "S56 48021000    00049992    100002 0601101133 622848******1234    000000010000 4"
    + "814 07 202506011011331000028 01 TEL20250601000002                01             "
    + "      D000000000060 C000000009940 0001                 01    000201"
    + " " * 66
    + "898111448161234   000000000000000"
    + " " * 34
    + "000000000000  C000000009940 00000000"
    + " " * 34
    + "000000000000  000000000000  00000000000     7"
    + " " * 132,
    "S56 48021000    00049992    100003 0601143008 622848******1234    000000003000 4"
    + "814 07 202506011430081000038 01 TEL20250601000003                01             "
    + "      D000000000018 C000000002982 0001                 01    000201"
    + " " * 66
    + "898111448161234   000000000000000"
    + " " * 34
    + "000000000000  C000000002982 00000000"
    + " " * 34
    + "000000000000  000000000000  00000000000     7"
    + " " * 132,
    "S30 48021000    00049992    100004 0601152011 622848******1234    000000003000 4"
    + "814 07 202506011520111000048 01 RF20250601000001                 01 099999 05312"
    + "00510 C000000000018 D000000002982 0001                 04    000201"
    + " " * 44
    + "202505312005100999998 898111448161234   000000000000000"
    + " " * 34
    + "000000000000  D000000002982 00000000"
    + " " * 34
    + "000000000000  000000000000  00000000000     7 TEL20250531000009"
    + " " * 114,
]


def build(values: Mapping[int, str | bytes]) -> bytes:
    """One record: field n (1-based) padded to LENGTHS[n-1] bytes of GBK, one space apart."""
    out = []
    for number, length in enumerate(LENGTHS, start=1):
        value = values.get(number, b"")
        raw = value.encode("gbk") if isinstance(value, str) else value
        assert len(raw) <= length
        out.append(raw + b" " * (length - len(raw)))
    return b" ".join(out)


def payment_record(
    order_id: str, fen: int, fee: int, at: str, *, mer_id: str = SAMPLE_MER_ID, **more: str
) -> bytes:
    values: dict[int, str | bytes] = {
        1: "S56",
        5: at,
        7: f"{fen:012d}",
        10: "2025060109150210" + order_id[-5:],
        12: order_id,
        16: f"D{fee:012d}",
        17: f"C{fen - fee:012d}",
        20: "01",
        28: mer_id,
    }
    values.update({int(k[1:]): v for k, v in more.items()})
    return build(values)


def refund_record(
    refund_id: str, order_id: str, fen: int, fee: int, at: str, *, mer_id: str = SAMPLE_MER_ID
) -> bytes:
    return build(
        {
            1: "S30",
            5: at,
            7: f"{fen:012d}",
            10: "2025060115201110" + refund_id[-5:],
            12: refund_id,
            16: f"C{fee:012d}",
            17: f"D{fen - fee:012d}",
            20: "04",
            27: "2025053120051009" + order_id[-5:],
            28: mer_id,
            31: "重庆电信营业厅",  # 二级商户简称: 14 bytes of GBK, 7 characters
            41: order_id,
        }
    )


RD_SAMPLE = "\r\n".join(
    [
        "                         中国银联全渠道商户交易汇总表",
        f"商户代码{COLON}898111448161234                 清算币种{COLON}人民币",
        f"收单机构{COLON}中国银联                        清算日期{COLON}20250601",
        "_" * 100,
        "交易类型      交易笔数        交易金额               费用            资金清算差额",
        "                            借        贷          借        贷        借        贷",
        "_" * 100,
        "自助消费            3      0.00    180.00        1.08      0.00      0.00    178.92",
        "退货                1     30.00      0.00        0.00      0.18     29.82      0.00",
        "总计                4     30.00    180.00        1.08      0.18     29.82    178.92",
        "_" * 100,
        "卡性质        交易笔数        交易金额",
        "借记卡              4    210.00",
        "",
    ]
)


def bill_file(
    records: Iterable[bytes],
    *,
    day: str = "250601",
    mer_id: str = SAMPLE_MER_ID,
    rd: str | None = RD_SAMPLE,
    zm_mer_id: str | None = None,
    line_end: bytes = b"\r\n",
) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            f"INN{day}88ZM_{zm_mer_id or mer_id}", b"".join(r + line_end for r in records)
        )
        if rd is not None:
            archive.writestr(f"RD2010{day}01_{mer_id}", rd.encode("gbk"))
    buffer.seek(0)
    return buffer


@pytest.fixture
async def sample_provider() -> UnionpayProvider:
    async with httpx.AsyncClient() as http:
        return UnionpayProvider(
            settings("http://127.0.0.1:9", mer_id=SAMPLE_MER_ID), branch=BRANCH, http=http
        )


def beijing(text: str) -> datetime:
    return datetime.strptime(text + "+0800", "%Y-%m-%d %H:%M:%S%z").astimezone(UTC)


def test_the_layout_is_the_official_length_array() -> None:
    assert list(bills.FIELD_LENGTHS) == LENGTHS
    assert bills.RECORD_BYTES == 607
    assert [bills.FIELD_OFFSETS[n - 1] for n in (5, 7, 10, 12, 16, 20, 27, 28, 31, 41)] == [
        35,
        66,
        87,
        112,
        166,
        215,
        271,
        293,
        327,
        476,
    ]
    assert all(len(line.encode("gbk")) == 607 for line in SAMPLE)


def test_reads_the_reconstructed_sample(sample_provider: UnionpayProvider) -> None:
    records = [line.encode("gbk") for line in SAMPLE]
    read = list(sample_provider.read_bill(bill_file(records)))
    assert len(read) == 5
    assert read[0] == BillLine(
        kind=BillLineKind.PAYMENT,
        out_trade_no="TEL20250601000001",
        amount_fen=5000,
        occurred_at=beijing("2025-06-01 09:15:02"),
        provider_trade_no="202506010915021000018",
        fee_fen=30,
    )
    assert [(line.out_trade_no, line.amount_fen, line.fee_fen) for line in read[1:3]] == [
        ("TEL20250601000002", 10000, 60),
        ("TEL20250601000003", 3000, 18),
    ]
    assert read[3] == BillLine(
        kind=BillLineKind.REFUND,
        out_trade_no="TEL20250531000009",
        amount_fen=3000,
        occurred_at=beijing("2025-06-01 15:20:11"),
        provider_trade_no="202505312005100999998",
        out_refund_no="RF20250601000001",
        provider_refund_no="202506011520111000048",
        fee_fen=-18,
    )
    assert read[4] == BillTotals(
        payment_count=3, payment_fen=18000, refund_count=1, refund_fen=3000, fee_fen=90
    )


def test_fields_after_a_chinese_sub_merchant_name_are_sliced_by_bytes(
    sample_provider: UnionpayProvider,
) -> None:
    refund = refund_record("RF20250601000002", "TEL20250531000042", 1234, 7, "0601235959")
    assert len(refund) == 607 and len(refund.decode("gbk")) < 607
    paid = payment_record("TEL20250601000099", 8800, 53, "0601000001", f31="中国电信股份有限公司")
    lines = list(sample_provider.read_bill(bill_file([paid, refund], rd=None)))
    assert [(line.kind, line.out_trade_no, line.out_refund_no) for line in lines] == [
        (BillLineKind.PAYMENT, "TEL20250601000099", None),
        (BillLineKind.REFUND, "TEL20250531000042", "RF20250601000002"),
    ]
    assert [(line.amount_fen, line.fee_fen) for line in lines] == [(8800, 53), (1234, -7)]
    assert lines[1].occurred_at == beijing("2025-06-01 23:59:59")


def test_a_void_is_a_refund_and_other_types_are_left_out(
    sample_provider: UnionpayProvider,
) -> None:
    void = bytearray(refund_record("RF20250601000003", "TEL20250601000003", 3000, 18, "0601150000"))
    void[215:217] = b"31"
    preauth = bytearray(payment_record("TEL20250601000004", 100, 1, "0601150000"))
    preauth[215:217] = b"02"
    lines = list(sample_provider.read_bill(bill_file([bytes(void), bytes(preauth)], rd=None)))
    assert len(lines) == 1
    assert isinstance(lines[0], BillLine) and lines[0].kind is BillLineKind.REFUND


def test_lf_line_ends_and_no_rd_report(sample_provider: UnionpayProvider) -> None:
    paid = payment_record("TEL20250601000005", 100, 1, "0601120000")
    lines = list(sample_provider.read_bill(bill_file([paid, paid], rd=None, line_end=b"\n")))
    assert len(lines) == 2 and all(isinstance(line, BillLine) for line in lines)


@pytest.mark.parametrize(
    ("mmdd", "today", "day"),
    [
        ("1231", date(2027, 1, 1), date(2026, 12, 31)),
        ("0101", date(2027, 1, 1), date(2027, 1, 1)),
        ("0102", date(2027, 1, 1), date(2026, 1, 2)),
        ("1130", date(2026, 12, 2), date(2026, 11, 30)),
        ("0229", date(2027, 3, 1), date(2024, 2, 29)),
        ("0229", date(2028, 2, 29), date(2028, 2, 29)),
    ],
)
def test_settle_date_is_the_most_recent_such_day(mmdd: str, today: date, day: date) -> None:
    assert bills.settle_day(mmdd, today) == day


@pytest.mark.parametrize(
    "bad", ["1301", "0230", "0431", "0000", "123", "12a1", "\uff11\uff12\uff13\uff11"]
)
def test_settle_date_that_is_no_day(bad: str) -> None:
    with pytest.raises(ValueError):
        bills.settle_day(bad, date(2026, 12, 2))


@pytest.mark.parametrize(
    ("text", "settled", "moment"),
    [
        ("1231235500", date(2027, 1, 1), "2026-12-31 23:55:00"),
        ("0101000500", date(2026, 12, 31), "2027-01-01 00:05:00"),
        ("0601091502", date(2025, 6, 1), "2025-06-01 09:15:02"),
        ("0906104700", date(2015, 9, 5), "2015-09-06 10:47:00"),
    ],
)
def test_transmit_time_takes_the_year_nearest_the_settle_date(
    text: str, settled: date, moment: str
) -> None:
    assert bills.transmit_time(text, settled) == beijing(moment)


def test_a_new_years_file_dates_last_years_records_last_year(
    sample_provider: UnionpayProvider,
) -> None:
    late = payment_record("TEL20261231000001", 500, 3, "1231235959")
    early = payment_record("TEL20270101000001", 500, 3, "0101000001")
    lines = list(sample_provider.read_bill(bill_file([late, early], day="270101", rd=None)))
    assert [line.occurred_at for line in lines if isinstance(line, BillLine)] == [
        beijing("2026-12-31 23:59:59"),
        beijing("2027-01-01 00:00:01"),
    ]


def test_another_merchants_file_is_refused(sample_provider: UnionpayProvider) -> None:
    other = "898111448169999"
    paid = payment_record("TEL20250601000006", 100, 1, "0601120000")
    cases = {
        "entry name": bill_file([paid], mer_id=other, rd=None),
        "record 商户代码": bill_file(
            [payment_record("TEL20250601000007", 100, 1, "0601120000", mer_id=other)], rd=None
        ),
        "RD 商户代码": bill_file([paid], rd=RD_SAMPLE.replace(SAMPLE_MER_ID, other)),
        "ZM entry only": bill_file([paid], zm_mer_id=other, rd=None),
    }
    for case, source in cases.items():
        with pytest.raises(BillRejected, match="another merchant"):
            list(sample_provider.read_bill(source))
        assert case


def test_broken_files_are_refused(sample_provider: UnionpayProvider) -> None:
    paid = payment_record("TEL20250601000008", 100, 1, "0601120000")
    bad_amount = bytearray(paid)
    bad_amount[66:78] = b"00000000x000"
    bad_fee = bytearray(paid)
    bad_fee[166] = ord("X")
    no_zm = io.BytesIO()
    with zipfile.ZipFile(no_zm, "w") as archive:
        archive.writestr(f"RD201025060101_{SAMPLE_MER_ID}", RD_SAMPLE.encode("gbk"))
    no_zm.seek(0)
    cases = {
        "not a ZIP": io.BytesIO(b"respCode=98"),
        "short record": bill_file([paid[:-1]], rd=None),
        "amount": bill_file([bytes(bad_amount)], rd=None),
        "fee sign": bill_file([bytes(bad_fee)], rd=None),
        "no ZM": no_zm,
        "total that does not add up": bill_file(
            [paid], rd=RD_SAMPLE.replace("总计                4", "总计                5")
        ),
    }
    for case, source in cases.items():
        with pytest.raises(BillRejected):
            list(sample_provider.read_bill(source))
        assert case


def _big_bill(path: Path, count: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        template = payment_record("TEL" + "0" * 20, 100, 1, "0601120000") + b"\r\n"
        head, tail = template[:112], template[112 + 23 :]  # 商户订单号 is field 12, at byte 112
        with archive.open(f"INN25060188ZM_{SAMPLE_MER_ID}", "w") as zm:
            for n in range(count):
                zm.write(head + b"TEL%020d" % n + tail)
        archive.writestr(f"RD201025060101_{SAMPLE_MER_ID}", RD_SAMPLE.encode("gbk"))
    return path


def _peak_while_reading(provider: UnionpayProvider, path: Path) -> tuple[int, int]:
    with path.open("rb") as source:
        tracemalloc.start()
        try:
            count = sum(1 for line in provider.read_bill(source) if isinstance(line, BillLine))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return count, peak


def test_reading_is_streamed_in_flat_memory(
    sample_provider: UnionpayProvider, tmp_path: Path
) -> None:
    small = _big_bill(tmp_path / "small.zip", 20_000)
    large = _big_bill(tmp_path / "large.zip", 200_000)
    small_count, small_peak = _peak_while_reading(sample_provider, small)
    large_count, large_peak = _peak_while_reading(sample_provider, large)
    assert (small_count, large_count) == (20_000, 200_000)
    # Ten times the records (122 MB of records in all), not ten times the memory.
    assert large_peak < small_peak * 2 + 256 * 1024, (small_peak, large_peak)
    assert large_peak < 4 * 1024 * 1024
