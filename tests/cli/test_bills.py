"""`branchpay reconcile bills` as an operator runs it: a process of its own, a real store,
the sandbox simulator serving today's bill, branchpay's own payments on it.

Each test pays through the running service, changes the simulator's bill with
its controls, and reads the command's report (table, JSON, CSV) and exit code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.cli.bills import CSV_COLUMNS, BillCliCode, ExitCode
from api.dev.devdb import free_port
from api.domain.bills import beijing_day
from api.domain.problems import UserErrorCode
from tests.services.conftest import (
    PayService,
    start_payments,  # noqa: F401 (a fixture)
)

ROOT = Path(__file__).resolve().parents[2]
TODAY = beijing_day(datetime.now(UTC)).isoformat()


@pytest.fixture
def service(start_payments: Callable[..., PayService]) -> PayService:  # noqa: F811
    # The daily run is left out: the tests run the command themselves.
    running = start_payments(bill_reconcile=False)
    publish_today(running, True)
    return running


def publish_today(service: PayService, on: bool) -> None:
    answer = httpx.put(f"{service.gateway_url}/control/bills", json={"publishCurrentDay": on})
    answer.raise_for_status()


def adjust(service: PayService, **fields: object) -> None:
    answer = httpx.post(f"{service.gateway_url}/control/bills/adjustments", json=fields)
    assert answer.status_code == 201, answer.text


def paid(service: PayService, branch: str = "zj") -> dict[str, object]:
    order = service.create_order(branch, offering=f"{branch}-plan-59")
    payment = service.start_payment(str(order["id"]))["payment"]
    settled = service.settle(payment["outTradeNo"])
    assert service.deliver(settled, branch).status_code == 200
    return dict(payment)


def bills(service: PayService, *args: str) -> subprocess.CompletedProcess[str]:
    return service.reconcile("bills", *args)


def test_a_clean_day_exits_0_with_every_line_matched(service: PayService) -> None:
    first, second = paid(service), paid(service)

    run = bills(service, "--date", TODAY, "--branch", "zj", "--format", "json")

    assert run.returncode == ExitCode.RECONCILED == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["billDate"] == TODAY and report["exitCode"] == 0
    (rec,) = report["reconciliations"]
    assert rec["id"] == f"zj:sandbox:{TODAY}" and rec["status"] == "COMPLETE"
    fen = sum(int(p["amount"]["amountFen"]) for p in (first, second))  # type: ignore[index]
    assert rec["totals"]["matchedCount"] == 2 and rec["totals"]["matchedFen"] == fen
    assert rec["totals"]["billTotalsAgree"] is True
    assert rec["openDiscrepancies"] == 0 and rec["openDiscrepancyList"] == []

    table = bills(service, "--date", TODAY, "--branch", "zj")
    assert table.returncode == 0, table.stderr
    assert f"bill reconciliation of {TODAY}" in table.stdout
    assert "every bill reconciled; no open discrepancy" in table.stdout
    assert "COMPLETE" in table.stdout and "sums equal the bill's" in table.stdout


def test_open_discrepancies_exit_1_and_are_listed_in_every_format(service: PayService) -> None:
    payment = paid(service)
    dropped = paid(service)
    adjust(
        service, action="add", kind="PAYMENT", outTradeNo="BILLONLY0000000000000001", amountFen=990
    )
    adjust(service, action="drop", outTradeNo=dropped["outTradeNo"])
    adjust(service, action="amount", outTradeNo=payment["outTradeNo"], amountFen=1)

    as_json = bills(service, "--date", TODAY, "--format", "json")

    assert as_json.returncode == ExitCode.OPEN_DISCREPANCIES == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    by_branch = {rec["branch"]: rec for rec in report["reconciliations"]}
    assert set(by_branch) == {"zj", "bj"}  # every branch enabling a provider with bills
    # A line added through the controls names no merchant: it is on every merchant's bill.
    assert [(d["kind"], d["outTradeNo"]) for d in by_branch["bj"]["openDiscrepancyList"]] == [
        ("MISSING_LOCALLY", "BILLONLY0000000000000001")
    ]
    zj = by_branch["zj"]
    kinds = {(d["kind"], d["outTradeNo"]) for d in zj["openDiscrepancyList"]}
    assert kinds == {
        ("MISSING_LOCALLY", "BILLONLY0000000000000001"),
        ("MISSING_ON_PLATFORM", dropped["outTradeNo"]),
        ("AMOUNT_MISMATCH", payment["outTradeNo"]),
    }
    amount = next(d for d in zj["openDiscrepancyList"] if d["kind"] == "AMOUNT_MISMATCH")
    assert amount["billAmountFen"] == 1 and amount["ageDays"] == 0 and amount["stale"] is False
    assert amount["detectedAt"].endswith("Z")

    as_csv = bills(service, "--date", TODAY, "--branch", "zj", "--format", "csv")
    assert as_csv.returncode == 1, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert {(r["kind"], r["outTradeNo"]) for r in rows} == kinds
    assert {r["reconciliationId"] for r in rows} == {f"zj:sandbox:{TODAY}"}
    assert {r["status"] for r in rows} == {"COMPLETE"}

    table = bills(service, "--date", TODAY, "--branch", "zj", "--provider", "sandbox")
    assert table.returncode == 1, table.stderr
    assert f"open discrepancies of zj:sandbox:{TODAY}" in table.stdout
    assert "BILLONLY0000000000000001" in table.stdout and "MISSING_ON_PLATFORM" in table.stdout
    assert "open discrepancies remain (exit code 1)" in table.stdout
    # Re-running the day finds the same discrepancies, not a second set.
    assert service.db.discrepancies.count_documents({"branch": "zj"}) == 3


def test_a_bill_not_published_yet_exits_3(service: PayService) -> None:
    paid(service)
    publish_today(service, False)

    run = bills(service, "--date", TODAY, "--branch", "zj", "--format", "json")

    assert run.returncode == ExitCode.NOT_RECONCILED == 3, run.stderr
    (rec,) = json.loads(run.stdout)["reconciliations"]
    assert rec["status"] == "NOT_READY" and rec["openDiscrepancyList"] == []
    table = bills(service, "--date", TODAY, "--branch", "zj")
    assert table.returncode == 3 and "a bill could not be reconciled (exit code 3)" in table.stdout


def test_the_progress_goes_to_stderr_and_the_report_alone_to_stdout(service: PayService) -> None:
    paid(service)
    run = bills(service, "--date", TODAY, "--branch", "zj", "--format", "csv")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert len(run.stdout.splitlines()) == 2  # the header and the one reconciliation


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--date", "2026-13-01"], "INVALID_DATE", "--date '2026-13-01' is no calendar day"),
        (["--date", "1.12.2026"], "INVALID_DATE", "is not a day as YYYY-MM-DD"),
        (["--date", "yesterday"], "INVALID_DATE", "is not a day as YYYY-MM-DD"),
        (["--date", "2999-01-01"], "INVALID_DATE", "is after today"),
        (["--date", TODAY, "--branch", "nowhere"], "UNKNOWN_BRANCH", "no branch 'nowhere'"),
        (["--date", TODAY, "--branch", "yn"], "PROVIDER_NOT_ENABLED", "enables no provider"),
        (
            ["--date", TODAY, "--provider", "alipay"],
            "PROVIDER_NOT_ENABLED",
            "provider 'alipay' is not enabled for any branch",
        ),
    ],
)
def test_refused_input_exits_2_with_a_code_and_runs_nothing(
    service: PayService, args: list[str], code: str, message: str
) -> None:
    run = bills(service, *args)
    assert run.returncode == ExitCode.REFUSED == 2, (run.stdout, run.stderr)
    assert f"error [{code}]: " in run.stderr and message in run.stderr, run.stderr
    assert run.stdout == ""
    assert service.db.reconciliations.count_documents({}) == 0


def test_a_store_that_does_not_answer_is_reported_in_seconds(service: PayService) -> None:
    env = {
        **os.environ,
        "BRANCHPAY_MONGODB_URI": f"mongodb://user:pw@127.0.0.1:{free_port()}/",
        "BRANCHPAY_STORE_SERVER_SELECTION_TIMEOUT_SECONDS": "0.5",
        "BRANCHPAY_PLUGINS_TOML": str(service.plugins_toml),
    }
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "api", "reconcile", "bills", "--date", TODAY],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert run.returncode == 2, run.stderr
    assert "error [STORE_UNAVAILABLE]: the store did not answer in time" in run.stderr
    assert "pw" not in run.stderr + run.stdout and run.stdout == ""


def test_plain_reconcile_still_asks_about_pending_attempts(service: PayService) -> None:
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    service.settle(payment["outTradeNo"])  # settled at the platform, never notified

    run = service.reconcile("--branch", "zj", "--since", "1h")

    assert run.returncode == 0, run.stderr
    assert "reconciled 1 attempts, 1 changed" in run.stdout
    assert service.db.reconciliations.count_documents({}) == 0


def test_the_codes_are_spelled_as_the_api_spells_them() -> None:
    api_codes = {c.value for c in UserErrorCode} | {"STORE_UNAVAILABLE"}
    assert {c.value for c in BillCliCode} <= api_codes


def test_a_date_is_checked_against_the_beijing_day() -> None:
    from api.cli.bills import Refused, bill_day

    today = beijing_day(datetime.now(UTC))
    assert bill_day(today.isoformat()) == today
    with pytest.raises(Refused) as refused:
        bill_day((today + timedelta(days=1)).isoformat())
    assert refused.value.code is BillCliCode.INVALID_DATE
