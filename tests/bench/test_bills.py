"""Scenario (r) runs as ``make bench`` runs it, on a small bill, so it cannot rot.

The bill is written in the sandbox's format and read by the sandbox adapter,
the payments go into the suite's store, and the matching runs in a process of
its own through the bill service: every line must be matched, the bill's
summary must agree, and the figures must be there. No time is asserted.
"""

from __future__ import annotations

from pathlib import Path

from pymongo import MongoClient

from bench import bills
from bench.run import parser
from providers.sandbox.bills import read_bill


def test_the_generated_bill_is_a_sandbox_bill_of_the_stored_payments(tmp_path: Path) -> None:
    day = bills.bill_day()
    path = tmp_path / "bill.csv"
    size = bills.write_bill_file(path, day, 300)
    with path.open("rb") as source:
        read = list(read_bill(source, bills.MERCHANT))
    *lines, totals = read
    assert size == path.stat().st_size and len(lines) == 300
    for index in (0, 151, 299):
        stored = bills.payment(day, index, 300)
        line = lines[index]
        assert (line.out_trade_no, line.amount_fen, line.occurred_at) == (
            stored["outTradeNo"],
            stored["amountFen"],
            stored["paidAt"],
        )
        assert stored["branch"] == bills.BRANCH and stored["status"] == "SUCCEEDED"
    assert totals.payment_count == 300 and totals.refund_count == 0  # type: ignore[union-attr]


def test_the_bill_scenario_matches_every_line_and_reports_its_figures(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    logged: list[str] = []
    try:
        first = bills.bill_scenario(mongo_uri, 2_000, tmp_path, logged.append, database=db_name)
        again = bills.bill_scenario(mongo_uri, 2_000, tmp_path, logged.append, database=db_name)
    finally:
        client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
        client.drop_database(db_name)
        client.close()
    for figures in (first, again):
        assert figures["status"] == "COMPLETE", figures
        assert figures["lines"] == figures["matched"] == 2_000
        assert figures["openDiscrepancies"] == 0 and figures["billTotalsAgree"] is True
        assert figures["seconds"] > 0 and 0 <= figures["firstBatchSeconds"] <= figures["seconds"]
        assert figures["rssPeakBytes"] >= figures["rssBeforeBytes"] > 0
    assert any("holds the 2,000 payments already (reused)" in line for line in logged)
    assert [ratio.name for ratio in bills.ratios(first)] == [
        "(r) bill lines reconciled per second, 2,000 lines",
        "(r) peak RSS of the reconciling process, 2,000 lines",
        "(r) peak RSS growth over the run",
    ]
    assert not list(tmp_path.glob("bills-*")), "the bill's folder is removed after the run"


def test_the_command_line_takes_the_bill_size_and_the_quick_mode() -> None:
    args = parser().parse_args(["--bills-only", "--bill-lines", str(bills.QUICK_LINES)])
    assert args.bills_only and args.bill_lines == bills.QUICK_LINES
    assert parser().parse_args([]).bill_lines == bills.DEFAULT_LINES == 1_000_000
    assert parser().parse_args(["--no-bills"]).bills is False
