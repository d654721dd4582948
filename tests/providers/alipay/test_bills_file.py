# ruff: noqa: RUF001 (the bill layout's full-width punctuation is what Alipay writes)
"""The Alipay bill reader on files these tests write to the published layout themselves.

The zips are built here with :mod:`zipfile` (entry names patched to GBK bytes
without the UTF-8 flag, as Alipay writes them), not with the simulator's
writer, and the texts follow the real 2019 sample's lines (shared/notes/bills.md
§1.2 and the reconstructed sample of §5), so the reader is checked against the
layout, not against our own simulator.
"""

from __future__ import annotations

import io
import tempfile
import tracemalloc
import zipfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest

from api.plugin import BillLine, BillLineKind, BillRejected, BillTotals
from providers.alipay import AlipayProvider
from tests.providers.alipay.support import settings_for

PID = "2088123412341234"
ACCOUNT = PID + "0156"
T = "\t"

HEAD = [
    "#支付宝业务明细查询",
    f"#账号：[{ACCOUNT}]",
    "#起始日期：[2025年06月01日 00:00:00]   终止日期：[2025年06月02日 00:00:00]",
    "#-----------------------------------------业务明细列表----------------------------------------",
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,"
    "对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,"
    "商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,"
    "退款批次号/请求号,服务费（元）,分润（元）,备注",
]
END = (
    "#-----------------------------------------业务明细列表结束------------------------------------"
)
EXPORTED = "#导出时间：[2025年06月02日 05:46:49]"


def row(
    trade_no: str,
    out_trade_no: str,
    business: str,
    subject: str,
    created: str,
    completed: str,
    amount: str,
    *,
    refund_no: str = "",
    fee: str = "0.00",
) -> str:
    """A detail row as the real sample writes one: TABs after the id columns, no quotes."""
    return (
        f"{trade_no}{T},{out_trade_no}{T},{business}{T},{subject},{created},{completed},"
        f"{T},{T},{T},{T},*明(138******00){T},{amount},{amount},0.00,0.00,0.00,0.00,0.00,,"
        f"0.00{T},0.00,{refund_no}{T},{fee},0.00,"
    )


SAMPLE_ROWS = [
    row(
        "2025060122001412341000000001",
        "TEL20250601000001",
        "交易",
        "话费充值50元",
        "2025-06-01 09:15:02",
        "2025-06-01 09:15:10",
        "50.00",
    ),
    row(
        "2025060122001412341000000002",
        "TEL20250601000002",
        "交易",
        "宽带续费100元",
        "2025-06-01 10:11:33",
        "2025-06-01 10:11:40",
        "100.00",
    ),
    row(
        "2025060122001412341000000003",
        "TEL20250601000003",
        "交易",
        "话费充值30元",
        "2025-06-01 14:30:08",
        "2025-06-01 14:30:15",
        "30.00",
    ),
    row(
        "2025053122001412341000000009",
        "TEL20250531000009",
        "退款",
        "话费充值30元",
        "2025-05-31 20:05:10",
        "2025-06-01 15:20:11",
        "-30.00",
        refund_no="RF20250601000001",
    ),
]
SAMPLE_TOTALS = [
    "#交易合计：3笔，商家实收共180.00元，商家优惠共0.00元",
    "#退款合计：1笔，商家实收退款共-30.00元，商家优惠退款共0.00元",
]


def summary(payments: int, refunds: int, fee: str = "0.00", account: str = ACCOUNT) -> list[str]:
    return [
        "#支付宝业务汇总查询",
        f"#账号：[{account}]",
        "#起始日期：[2025年06月01日 00:00:00]   终止日期：[2025年06月02日 00:00:00]",
        "#-----------------------------------------业务汇总列表----------------------------------------",
        "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,"
        "支付宝优惠（元）,商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）",
        f"合计,,{payments},{refunds},150.00,150.00,0.00,0.00,0.00,{fee},0.00,150.00",
        "#----------------------------------------业务汇总列表结束-------------------------------------",
        EXPORTED,
    ]


def detail(
    rows: Sequence[str] = SAMPLE_ROWS,
    totals: Sequence[str] = SAMPLE_TOTALS,
    head: Sequence[str] = HEAD,
) -> list[str]:
    return [*head, *rows, END, *totals, EXPORTED]


def gbk_names(data: bytes, names: dict[str, str]) -> bytes:
    """``data`` (a zip) with each ASCII placeholder name replaced by the real name in GBK.

    zipfile would store a Chinese name as UTF-8 and set the UTF-8 flag (0x800);
    Alipay's names are GBK bytes without it. A placeholder of the same byte
    length keeps every offset, and names are not covered by the CRC.
    """
    for placeholder, name in names.items():
        raw = name.encode("gbk")
        assert len(raw) == len(placeholder)
        data = data.replace(placeholder.encode("ascii"), raw)
    return data


def placeholder(name: str, tag: str) -> str:
    return tag + "x" * (len(name.encode("gbk")) - len(tag))


def bill_zip(
    files: Iterable[tuple[str, Sequence[str]]], *, newline: str = "\r\n", day: str = "20250601"
) -> bytes:
    names: dict[str, str] = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (suffix, lines) in enumerate(files):
            name = f"{ACCOUNT}_{day}_{suffix}"
            stand_in = placeholder(name, f"entry{index}_")
            names[stand_in] = name
            text = "".join(line + newline for line in lines)
            archive.writestr(stand_in, text.encode("gbk"))
    return gbk_names(buffer.getvalue(), names)


def sample_bill(
    detail_lines: Sequence[str] | None = None,
    summary_lines: Sequence[str] | None = None,
    *,
    newline: str = "\r\n",
) -> BinaryIO:
    return io.BytesIO(
        bill_zip(
            [
                ("业务明细.csv", detail() if detail_lines is None else detail_lines),
                ("业务明细(汇总).csv", summary(3, 1) if summary_lines is None else summary_lines),
            ],
            newline=newline,
        )
    )


@pytest.fixture
async def provider() -> AlipayProvider:
    # read_bill makes no call; the client is never used.
    async with httpx.AsyncClient() as http:
        return AlipayProvider(
            settings_for("http://127.0.0.1:9/gateway.do", seller_id=PID), branch="zj", http=http
        )


def read(provider: AlipayProvider, source: BinaryIO) -> tuple[list[BillLine], BillTotals]:
    items = list(provider.read_bill(source))
    lines = [item for item in items if isinstance(item, BillLine)]
    assert len(lines) == len(items) - 1
    assert isinstance(items[-1], BillTotals)
    return lines, items[-1]


def beijing(text: str) -> datetime:
    return datetime.fromisoformat(text + "+08:00").astimezone(UTC)


def test_the_test_zip_has_gbk_names_without_the_utf8_flag() -> None:
    with zipfile.ZipFile(sample_bill()) as archive:
        infos = archive.infolist()
    assert all(info.flag_bits & 0x800 == 0 for info in infos)
    with zipfile.ZipFile(sample_bill(), metadata_encoding="gbk") as archive:
        assert [info.filename for info in archive.infolist()] == [
            f"{ACCOUNT}_20250601_业务明细.csv",
            f"{ACCOUNT}_20250601_业务明细(汇总).csv",
        ]


@pytest.mark.parametrize("newline", ["\r\n", "\n"], ids=["crlf", "lf"])
def test_the_published_sample_reads_as_three_payments_and_a_refund(
    provider: AlipayProvider, newline: str
) -> None:
    lines, totals = read(provider, sample_bill(newline=newline))
    assert [(line.kind, line.out_trade_no, line.amount_fen) for line in lines] == [
        (BillLineKind.PAYMENT, "TEL20250601000001", 5000),
        (BillLineKind.PAYMENT, "TEL20250601000002", 10000),
        (BillLineKind.PAYMENT, "TEL20250601000003", 3000),
        (BillLineKind.REFUND, "TEL20250531000009", 3000),
    ]
    first, refund = lines[0], lines[3]
    assert first.provider_trade_no == "2025060122001412341000000001"
    assert first.out_refund_no is None
    # 完成时间, Beijing time, as UTC.
    assert first.occurred_at == beijing("2025-06-01 09:15:10")
    assert first.occurred_at.tzinfo is UTC
    # The refund row: the payment's numbers, the refund's request number and time.
    assert refund.provider_trade_no == "2025053122001412341000000009"
    assert refund.out_refund_no == "RF20250601000001"
    assert refund.occurred_at == beijing("2025-06-01 15:20:11")
    assert totals == BillTotals(
        payment_count=3, payment_fen=18000, refund_count=1, refund_fen=3000, fee_fen=0
    )


@pytest.mark.parametrize(
    ("payment_fee", "refund_fee", "summary_fee"),
    [("-0.30", "0.18", "-0.12"), ("0.30", "-0.18", "0.12")],
    ids=["merchant-side", "platform-side"],
)
def test_fees_read_as_charged_positive_and_returned_negative_whichever_sign_the_file_uses(
    provider: AlipayProvider, payment_fee: str, refund_fee: str, summary_fee: str
) -> None:
    rows = [
        row("2025A", "TEL1", "交易", "话费", "2025-06-01 09:00:00", "2025-06-01 09:00:05", "50.00"),
        row(
            "2025B",
            "TEL2",
            "交易",
            "话费",
            "2025-06-01 09:10:00",
            "2025-06-01 09:10:05",
            "50.00",
            fee=payment_fee,
        ),
        row(
            "2025B",
            "TEL2",
            "退款",
            "话费",
            "2025-06-01 09:10:00",
            "2025-06-01 11:00:00",
            "-30.00",
            refund_no="RF1",
            fee=refund_fee,
        ),
    ]
    totals = [
        "#交易合计：2笔，商家实收共100.00元，商家优惠共0.00元",
        "#退款合计：1笔，商家实收退款共-30.00元，商家优惠退款共0.00元",
    ]
    lines, bill_totals = read(
        provider, sample_bill(detail(rows, totals), summary(2, 1, fee=summary_fee))
    )
    assert [line.fee_fen for line in lines] == [0, 30, -18]
    assert bill_totals.fee_fen == 12
    assert (bill_totals.payment_fen, bill_totals.refund_fen) == (10000, 3000)


def test_a_comma_in_the_product_name_does_not_shift_the_columns(provider: AlipayProvider) -> None:
    rows = [
        row(
            "2025B",
            "TEL9",
            "交易",
            "5G plan, 188 yuan, 12 months",
            "2025-06-01 09:00:00",
            "2025-06-01 09:00:05",
            "188.00",
            fee="-1.13",
        )
    ]
    totals = [
        "#交易合计：1笔，商家实收共188.00元，商家优惠共0.00元",
        "#退款合计：0笔，商家实收退款共0.00元，商家优惠退款共0.00元",
    ]
    lines, _ = read(provider, sample_bill(detail(rows, totals), summary(1, 0)))
    assert (lines[0].out_trade_no, lines[0].amount_fen, lines[0].fee_fen) == ("TEL9", 18800, 113)
    assert lines[0].occurred_at == beijing("2025-06-01 09:00:05")


def test_entry_names_stored_as_utf8_with_the_flag_are_found_too(provider: AlipayProvider) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{ACCOUNT}_20250601_业务明细.csv", "\r\n".join(detail()).encode("gbk"))
        archive.writestr(
            f"{ACCOUNT}_20250601_业务明细(汇总).csv", "\r\n".join(summary(3, 1)).encode("gbk")
        )
    buffer.seek(0)
    lines, _ = read(provider, buffer)
    assert len(lines) == 4


def test_a_bill_of_another_merchant_is_refused(provider: AlipayProvider) -> None:
    other = HEAD.copy()
    other[1] = "#账号：[20889999999999990156]"
    with pytest.raises(BillRejected, match=r"20889999999999990156.*not this branch's"):
        read(provider, sample_bill(detail(head=other)))


def test_a_summary_of_another_merchant_is_refused(provider: AlipayProvider) -> None:
    with pytest.raises(BillRejected, match="not this branch's"):
        read(provider, sample_bill(summary_lines=summary(3, 1, account="20889999999999990156")))


async def test_without_seller_id_no_bill_can_be_accepted() -> None:
    async with httpx.AsyncClient() as http:
        provider = AlipayProvider(
            settings_for("http://127.0.0.1:9/gateway.do", seller_id=None), branch="zj", http=http
        )
        with pytest.raises(BillRejected, match="seller_id"):
            read(provider, sample_bill())


def without(lines: Sequence[str], prefix: str) -> list[str]:
    return [line for line in lines if not line.startswith(prefix)]


MALFORMED = {
    "not a zip": (b"<html>\xcf\xc2\xd4\xd8\xb3\xac\xca\xb1</html>", "not a zip"),
    "no account line": (detail(head=without(HEAD, "#账号")), "no #账号"),
    "no end marker (cut short)": (
        [line for line in detail() if line != END][:-3],
        "cut short",
    ),
    "no totals": (without(detail(), "#交易合计"), "#交易合计"),
    "no header column": (
        detail(head=[*HEAD[:-1], HEAD[-1].replace("完成时间", "时间")]),
        "完成时间",
    ),
    "bad amount": (detail(rows=[SAMPLE_ROWS[0].replace("50.00", "5O.00")]), "not an amount"),
    "bad time": (detail(rows=[SAMPLE_ROWS[0].replace("09:15:10", "9点15")]), "not a time"),
    "unknown business": (detail(rows=[SAMPLE_ROWS[0].replace("交易\t", "转账\t")]), "转账"),
    "refund without number": (
        detail(rows=[SAMPLE_ROWS[3].replace("RF20250601000001", "")]),
        "退款批次号",
    ),
    "negative payment": (detail(rows=[SAMPLE_ROWS[0].replace("50.00", "-50.00")]), "negative"),
    "comment in the table": (
        detail(rows=[SAMPLE_ROWS[0], "#这里不该有注释", SAMPLE_ROWS[1]]),
        "comment inside",
    ),
}


@pytest.mark.parametrize(("content", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_detail_is_refused_with_a_clear_reason(
    provider: AlipayProvider, content: bytes | list[str], message: str
) -> None:
    source = io.BytesIO(content) if isinstance(content, bytes) else sample_bill(content)
    with pytest.raises(BillRejected, match=message):
        read(provider, source)


def test_a_summary_that_disagrees_with_the_detail_is_refused(provider: AlipayProvider) -> None:
    with pytest.raises(BillRejected, match="2 payments and 1 refunds"):
        read(provider, sample_bill(summary_lines=summary(2, 1)))


def test_a_zip_without_the_summary_is_refused(provider: AlipayProvider) -> None:
    source = io.BytesIO(bill_zip([("业务明细.csv", detail())]))
    with pytest.raises(BillRejected, match=r"业务明细\(汇总\)"):
        read(provider, source)


def test_text_that_is_not_gbk_is_refused(provider: AlipayProvider) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{ACCOUNT}_20250601_业务明细.csv", b"#\xff\xfe\xff\r\n")
        archive.writestr(f"{ACCOUNT}_20250601_业务明细(汇总).csv", b"")
    buffer.seek(0)
    with pytest.raises(BillRejected, match="not GBK"):
        read(provider, buffer)


# --- streaming ----------------------------------------------------------------------


def big_bill(path: Path, count: int) -> Path:
    """A bill of ``count`` payment rows, written to ``path`` as it is generated."""
    detail_name = f"{ACCOUNT}_20250601_业务明细.csv"
    summary_name = f"{ACCOUNT}_20250601_业务明细(汇总).csv"
    names = {placeholder(detail_name, "detail_"): detail_name}
    names[placeholder(summary_name, "summary_")] = summary_name
    stand_ins = list(names)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(stand_ins[0], "w") as entry:
            entry.write("".join(line + "\r\n" for line in HEAD).encode("gbk"))
            batch: list[str] = []
            for n in range(count):
                second = n % 86400
                clock = f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
                batch.append(
                    row(
                        f"2025060122001412341{n:09d}",
                        f"TEL{n:012d}",
                        "交易",
                        "话费充值50元",
                        f"2025-06-01 {clock}",
                        f"2025-06-01 {clock}",
                        "50.00",
                        fee="-0.30",
                    )
                )
                if len(batch) == 1000:
                    entry.write("".join(line + "\r\n" for line in batch).encode("gbk"))
                    batch.clear()
            tail = [
                *batch,
                END,
                f"#交易合计：{count}笔，商家实收共{count * 50}.00元，商家优惠共0.00元",
                "#退款合计：0笔，商家实收退款共0.00元，商家优惠退款共0.00元",
                EXPORTED,
            ]
            entry.write("".join(line + "\r\n" for line in tail).encode("gbk"))
        archive.writestr(
            stand_ins[1], "\r\n".join(summary(count, 0, fee=f"-{count * 3 // 10}.00")).encode("gbk")
        )
    path.write_bytes(gbk_names(path.read_bytes(), names))
    return path


def peak_while_reading(provider: AlipayProvider, path: Path) -> tuple[int, int, BillTotals]:
    with path.open("rb") as source:
        tracemalloc.start()
        try:
            count = 0
            totals = None
            for item in provider.read_bill(source):
                if isinstance(item, BillLine):
                    count += 1
                else:
                    totals = item
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert totals is not None
    return count, peak, totals


def test_reading_keeps_memory_flat_however_long_the_bill(provider: AlipayProvider) -> None:
    with tempfile.TemporaryDirectory() as folder:
        small = big_bill(Path(folder) / "small.zip", 5_000)
        large = big_bill(Path(folder) / "large.zip", 50_000)
        small_count, small_peak, _ = peak_while_reading(provider, small)
        large_count, large_peak, totals = peak_while_reading(provider, large)
    assert (small_count, large_count) == (5_000, 50_000)
    assert (totals.payment_count, totals.fee_fen) == (50_000, 50_000 * 30)
    # Ten times the lines, not ten times the memory: the peak is the reader's buffers.
    assert large_peak < small_peak * 1.5 + 64 * 1024, (small_peak, large_peak)
    assert large_peak < 1024 * 1024, large_peak
