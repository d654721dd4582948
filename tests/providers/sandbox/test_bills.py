"""The sandbox's daily bill: the simulator serves it over HTTP, the adapter downloads and reads it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

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
    RefundState,
    beijing_day,
    day_bounds,
    new_reference,
)
from providers.kit.bills import CURRENT_DAY_ENV, BillEntry, fee_for
from providers.kit.loopback import LoopbackServer
from providers.sandbox import SandboxProvider, SandboxSettings, signing
from providers.sandbox.simulator import SandboxGateway, create_app

BRANCH = "zj_mobile"


@pytest.fixture(scope="module")
def secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def server(secret: str) -> Iterator[LoopbackServer]:
    app = create_app(secret.encode(), retry_delays=(0.05,), publish_current_day=True)
    with LoopbackServer(app) as running:
        yield running


@pytest.fixture
def simulator_url(server: LoopbackServer) -> str:
    return server.url


@pytest.fixture
def gateway(server: LoopbackServer) -> SandboxGateway:
    found: SandboxGateway = server.app.state.gateway  # type: ignore[attr-defined]
    return found


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


def make_provider(
    url: str, secret: str, http: httpx.AsyncClient, branch: str = BRANCH, **settings: Any
) -> SandboxProvider:
    options = SandboxSettings(gateway=url, secret=secret, backoff_seconds=0, **settings)  # type: ignore[arg-type]
    return SandboxProvider(options, branch=branch, http=http)


@pytest.fixture
def provider(simulator_url: str, secret: str, http: httpx.AsyncClient) -> SandboxProvider:
    return make_provider(simulator_url, secret, http)


def today() -> date:
    return beijing_day(datetime.now(UTC))


async def pay(provider: SandboxProvider, http: httpx.AsyncClient, url: str, amount_fen: int) -> str:
    out_trade_no = new_reference()
    await provider.create_payment(
        PaymentRequest(
            out_trade_no=out_trade_no,
            amount_fen=amount_fen,
            currency="CNY",
            subject="bill test",
            method=PaymentMethod.PAGE,
            notify_url="http://127.0.0.1:9/notify",
            expires_at=datetime.now(UTC) + timedelta(minutes=30),
        )
    )
    settled = await http.post(
        f"{url}/control/payments/{out_trade_no}/settle", json={"outcome": "success"}
    )
    assert settled.status_code == 200, settled.text
    return out_trade_no


async def refund(provider: SandboxProvider, out_trade_no: str, fen: int, total: int) -> str:
    out_refund_no = new_reference()
    result = await provider.refund(
        RefundRequest(out_trade_no, out_refund_no, fen, total, "CNY", notify_url=None)
    )
    assert result.state is RefundState.SUCCEEDED
    return out_refund_no


async def download(provider: SandboxProvider, day: date, path: Path) -> list[BillLine | BillTotals]:
    with path.open("wb") as destination:
        await provider.download_bill(day, destination)
    with path.open("rb") as source:
        return list(provider.read_bill(source))


def lines_of(items: list[BillLine | BillTotals], *out_trade_nos: str) -> list[BillLine]:
    return [i for i in items if isinstance(i, BillLine) and i.out_trade_no in out_trade_nos]


async def test_the_bill_holds_the_days_payment_and_refund_with_fees_and_summary(
    provider: SandboxProvider, http: httpx.AsyncClient, simulator_url: str, tmp_path: Path
) -> None:
    paid = await pay(provider, http, simulator_url, 1999)
    refunded = await refund(provider, paid, 700, 1999)
    path = tmp_path / "bill.csv"
    items = await download(provider, today(), path)

    first_line, header = path.read_text("utf-8").splitlines()[:2]
    assert first_line.startswith("# sandbox bill v1; merchant_id=zj_mobile; bill_date=")
    assert header == (
        "kind,out_trade_no,trade_no,out_refund_no,refund_no,amount_fen,fee_fen,completed_at,status"
    )
    payment, refund_line = lines_of(items, paid)
    assert payment.kind is BillLineKind.PAYMENT
    assert (payment.amount_fen, payment.fee_fen, payment.out_refund_no) == (1999, 12, None)
    assert payment.provider_trade_no and payment.provider_trade_no.startswith("sbx")
    assert payment.status is BillLineStatus.SUCCEEDED
    assert refund_line.kind is BillLineKind.REFUND
    assert refund_line.out_refund_no == refunded
    assert refund_line.provider_refund_no and refund_line.provider_refund_no.startswith("sbr")
    assert refund_line.provider_trade_no == payment.provider_trade_no
    assert (refund_line.amount_fen, refund_line.fee_fen) == (700, -fee_for(700, provider_fee()))
    start, end = day_bounds(today())
    for line in (payment, refund_line):
        assert line.occurred_at.utcoffset() == timedelta(0)
        assert start <= line.occurred_at < end
    assert payment.occurred_at <= refund_line.occurred_at

    totals = items[-1]
    assert isinstance(totals, BillTotals)
    lines = [i for i in items if isinstance(i, BillLine)]
    payments = [line for line in lines if line.kind is BillLineKind.PAYMENT]
    refunds = [line for line in lines if line.kind is BillLineKind.REFUND]
    assert totals == BillTotals(
        payment_count=len(payments),
        payment_fen=sum(line.amount_fen for line in payments),
        refund_count=len(refunds),
        refund_fen=sum(line.amount_fen for line in refunds),
        fee_fen=sum(line.fee_fen for line in lines),
    )


def provider_fee() -> Any:
    from decimal import Decimal

    return Decimal("0.006")


async def test_each_branch_gets_its_own_merchants_bill_and_refuses_anothers(
    simulator_url: str, secret: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    zj = make_provider(simulator_url, secret, http, "zj")
    bj = make_provider(simulator_url, secret, http, "bj", merchant_id="bj-merchant-7")
    zj_paid = await pay(zj, http, simulator_url, 500)
    bj_paid = await pay(bj, http, simulator_url, 800)

    zj_items = await download(zj, today(), tmp_path / "zj.csv")
    bj_items = await download(bj, today(), tmp_path / "bj.csv")
    assert [line.out_trade_no for line in lines_of(zj_items, zj_paid, bj_paid)] == [zj_paid]
    assert [line.out_trade_no for line in lines_of(bj_items, zj_paid, bj_paid)] == [bj_paid]

    with (tmp_path / "zj.csv").open("rb") as source, pytest.raises(BillRejected) as refused:
        list(bj.read_bill(source))
    assert "'zj'" in str(refused.value) and "bj-merchant-7" in str(refused.value)


async def test_a_day_not_published_yet_is_not_ready(
    provider: SandboxProvider, tmp_path: Path
) -> None:
    with (tmp_path / "b").open("wb") as destination, pytest.raises(BillUnavailable) as missing:
        await provider.download_bill(today() + timedelta(days=1), destination)
    assert missing.value.reason is BillUnavailableReason.NOT_READY
    assert (tmp_path / "b").read_bytes() == b""


async def test_without_publish_current_day_today_is_not_ready_until_tomorrow(
    secret: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    app = create_app(secret.encode(), retry_delays=(0.05,), publish_current_day=False)
    with LoopbackServer(app) as server:
        provider = make_provider(server.url, secret, http)
        await pay(provider, http, server.url, 100)
        with (tmp_path / "b").open("wb") as destination, pytest.raises(BillUnavailable) as early:
            await provider.download_bill(today(), destination)
        assert early.value.reason is BillUnavailableReason.NOT_READY

        # The documented control turns it on for a running simulator.
        turned = await http.put(f"{server.url}/control/bills", json={"publishCurrentDay": True})
        assert turned.json()["publishCurrentDay"] is True
        items = await download(provider, today(), tmp_path / "now.csv")
        assert len([i for i in items if isinstance(i, BillLine)]) == 1


async def test_no_bill_tells_a_day_without_business_from_one_before_the_simulator(
    provider: SandboxProvider, simulator_url: str, secret: str, http: httpx.AsyncClient
) -> None:
    quiet = make_provider(simulator_url, secret, http, "quiet_branch")
    with pytest.raises(BillUnavailable) as no_business:
        await quiet.download_bill(today(), _Sink())
    assert no_business.value.reason is BillUnavailableReason.NO_BILL
    assert "no payment or refund" in str(no_business.value)

    with pytest.raises(BillUnavailable) as before:
        await provider.download_bill(date(2020, 1, 1), _Sink())
    assert before.value.reason is BillUnavailableReason.NO_BILL
    assert "ledger begins on" in str(before.value)


class _Sink:
    """A destination that must stay empty."""

    def write(self, data: bytes) -> int:
        raise AssertionError("nothing may be written for a missing bill")


async def test_the_bill_call_is_signed(
    provider: SandboxProvider, simulator_url: str, secret: str, http: httpx.AsyncClient
) -> None:
    path = f"/api/bills/{today()}"
    unsigned = await http.get(simulator_url + path)
    assert unsigned.status_code == 401
    # A signature over another merchant's query does not open this merchant's bill.
    headers = signing.signed_headers(
        secret.encode(), signing.request_payload("GET", path + "?merchant_id=a", b"")
    )
    replayed = await http.get(simulator_url + path + "?merchant_id=b", headers=headers)
    assert replayed.status_code == 401

    impostor = make_provider(simulator_url, secrets.token_urlsafe(32), http)
    with pytest.raises(GatewayError) as refused:
        await impostor.download_bill(today(), _Sink())
    assert "signature" in str(refused.value)


async def test_a_bad_day_is_refused_clearly(
    simulator_url: str, secret: str, http: httpx.AsyncClient
) -> None:
    path = "/api/bills/2026-13-40"
    headers = signing.signed_headers(secret.encode(), signing.request_payload("GET", path, b""))
    answer = await http.get(simulator_url + path, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["code"] == "INVALID_REQUEST"


async def test_server_errors_are_retried_then_reported(
    provider: SandboxProvider, http: httpx.AsyncClient, simulator_url: str, tmp_path: Path
) -> None:
    await pay(provider, http, simulator_url, 300)
    await http.post(f"{simulator_url}/control/faults", json={"status": 503, "count": 1})
    items = await download(provider, today(), tmp_path / "retried.csv")
    assert isinstance(items[-1], BillTotals)

    await http.post(f"{simulator_url}/control/faults", json={"status": 500, "count": 10})
    try:
        with pytest.raises(GatewayError) as failed:
            await provider.download_bill(today(), _Sink())
        assert failed.value.retryable and not failed.value.outcome_unknown
    finally:
        await http.delete(f"{simulator_url}/control/faults")


async def test_bill_adjustments_change_the_served_bill(
    provider: SandboxProvider, http: httpx.AsyncClient, simulator_url: str, tmp_path: Path
) -> None:
    paid = await pay(provider, http, simulator_url, 1000)
    doubled = await pay(provider, http, simulator_url, 2000)
    controls = f"{simulator_url}/control/bills/adjustments"
    try:
        for adjustment in (
            {"action": "amount", "outTradeNo": paid, "amountFen": 999},
            {"action": "duplicate", "outTradeNo": doubled},
            {"action": "add", "kind": "PAYMENT", "outTradeNo": "billonly0001", "amountFen": 42},
        ):
            answer = await http.post(controls, json=adjustment)
            assert answer.status_code == 201, answer.text
        items = await download(provider, today(), tmp_path / "adjusted.csv")
    finally:
        await http.delete(controls)
    assert [line.amount_fen for line in lines_of(items, paid)] == [999]
    assert len(lines_of(items, doubled)) == 2
    assert [line.amount_fen for line in lines_of(items, "billonly0001")] == [42]


async def test_a_large_bill_is_streamed_and_read_lazily(
    provider: SandboxProvider, gateway: SandboxGateway, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    base = f"lazy{secrets.token_hex(4)}"
    fee = fee_for(100, provider_fee())
    # Straight into the ledger: 20,000 payments through the API would take long.
    gateway.book.entries.extend(
        BillEntry("PAYMENT", f"{base}{n:06d}", f"t{n}", 100, now, now, fee, extra=LAZY)
        for n in range(20_000)
    )
    lazy = make_provider(str(provider.settings.gateway), _secret(provider), provider.http, "lazy")
    path = tmp_path / "big.csv"
    with path.open("wb") as destination:
        await lazy.download_bill(today(), destination)
    size = path.stat().st_size
    assert size > 1_000_000
    target = f"/api/bills/{today()}?merchant_id=lazy"
    headers = signing.signed_headers(
        _secret(provider).encode(), signing.request_payload("GET", target, b"")
    )
    async with provider.http.stream(
        "GET", str(provider.settings.gateway).rstrip("/") + target, headers=headers
    ) as answer:
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        assert "content-length" not in answer.headers  # sent in chunks as written
        assert answer.headers["transfer-encoding"] == "chunked"
    with path.open("rb") as source:
        items = lazy.read_bill(source)
        first = next(items)
        assert isinstance(first, BillLine)
        assert source.tell() < size // 10
        rest = list(items)
    assert len(rest) == 20_000  # 19,999 more lines and the totals
    assert rest[-1] == BillTotals(20_000, 2_000_000, 0, 0, 20_000 * fee)


LAZY = {"merchant_id": "lazy"}


def _secret(provider: SandboxProvider) -> str:
    return provider.settings.secret.get_secret_value()


def test_publish_current_day_defaults_to_the_kit_setting(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CURRENT_DAY_ENV, "1")
    assert create_app(secret.encode()).state.gateway.book.publish_current_day is True
    assert (
        create_app(
            secret.encode(), publish_current_day=False
        ).state.gateway.book.publish_current_day
        is False
    )
    monkeypatch.setenv(CURRENT_DAY_ENV, "0")
    assert create_app(secret.encode()).state.gateway.book.publish_current_day is False
