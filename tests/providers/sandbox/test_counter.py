"""Counter sales (PAYMENT_CODE) and checks beyond the signature, against the sandbox simulator.

Everything goes over real loopback HTTP: the adapter signs its calls, the
simulator keeps its ledger, and its notifications reach a stand-in notify endpoint.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from api.plugins.contract import (
    AttemptState,
    EventKind,
    GatewayError,
    NotificationMismatch,
    PaymentMethod,
    PaymentRequest,
    RefundRequest,
    RefundState,
    ReverseState,
)
from providers.kit.loopback import LoopbackServer
from providers.sandbox import SandboxProvider, SandboxSettings
from providers.sandbox.driver import SandboxDriver
from providers.sandbox.simulator import create_app
from tests.providers.sandbox.test_provider import NotifySink

BRANCH = "zj_mobile"


@pytest.fixture(scope="module")
def secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def simulator_url(secret: str) -> Iterator[str]:
    with LoopbackServer(create_app(secret.encode(), retry_delays=(0.05, 0.1))) as server:
        yield server.url


@pytest.fixture(scope="module")
def sink_server() -> Iterator[tuple[NotifySink, str]]:
    sink = NotifySink()
    app = Starlette(routes=[Route("/notify/sandbox/{branch}", sink.notify, methods=["POST"])])
    with LoopbackServer(app) as server:
        yield sink, f"{server.url}/notify/sandbox/{BRANCH}"


@pytest.fixture
def sink(sink_server: tuple[NotifySink, str]) -> Iterator[NotifySink]:
    sink, _ = sink_server
    yield sink
    while not sink.received.empty():
        sink.received.get_nowait()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(simulator_url: str, secret: str, http: httpx.AsyncClient) -> SandboxProvider:
    settings = SandboxSettings.model_validate(
        {"gateway": simulator_url, "secret": secret, "backoff_seconds": 0.01}
    )
    return SandboxProvider(settings, branch=BRANCH, http=http)


@pytest.fixture
def driver(simulator_url: str, http: httpx.AsyncClient) -> SandboxDriver:
    return SandboxDriver(simulator_url, http)


def _sale(notify_url: str, auth_code: str, amount_fen: int = 6600) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no="sc" + secrets.token_hex(10),
        amount_fen=amount_fen,
        currency="CNY",
        subject="Top-up at the counter",
        method=PaymentMethod.PAYMENT_CODE,
        notify_url=notify_url,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        auth_code=auth_code,
    )


def _code(last_digit: str) -> str:
    return "99" + "".join(secrets.choice("0123456789") for _ in range(15)) + last_digit


async def test_a_code_paid_at_once_is_taken_once_and_queried_as_the_same_fact(
    provider: SandboxProvider,
    driver: SandboxDriver,
    sink_server: tuple[NotifySink, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    code = _code("1")
    sale = _sale(sink_server[1], code)
    with caplog.at_level(logging.DEBUG):
        paid = await provider.pay_with_code(sale)
    assert paid.state is AttemptState.SUCCEEDED
    (event,) = paid.events
    assert (event.kind, event.out_trade_no, event.amount_fen) == (
        EventKind.PAYMENT_SUCCEEDED,
        sale.out_trade_no,
        6600,
    )
    assert await driver.taken_fen(sale.out_trade_no) == 6600
    queried = await provider.query(sale.out_trade_no)
    assert [e.event_id for e in queried.events] == [event.event_id]
    # The clerk's scanner retries after a lost answer: the same sale, no second charge.
    again = await provider.pay_with_code(sale)
    assert again.state is AttemptState.SUCCEEDED and again.events[0].event_id == event.event_id
    assert await driver.taken_fen(sale.out_trade_no) == 6600
    # The code is the payer's one-time secret: not logged, not in what the adapter keeps.
    assert code not in caplog.text
    assert code not in repr(paid) + repr(queried)


async def test_a_confirming_payer_pays_on_the_third_query_and_is_notified_once(
    provider: SandboxProvider,
    driver: SandboxDriver,
    sink_server: tuple[NotifySink, str],
    sink: NotifySink,
) -> None:
    sale = _sale(sink_server[1], _code("2"))
    assert (await provider.pay_with_code(sale)).state is AttemptState.PENDING
    states = [(await provider.query(sale.out_trade_no)).state for _ in range(3)]
    assert states == [AttemptState.PENDING, AttemptState.PENDING, AttemptState.SUCCEEDED]
    assert await driver.taken_fen(sale.out_trade_no) == 6600
    notified = await provider.parse_notification(await sink.next())
    queried = await provider.query(sale.out_trade_no)
    assert notified is not None and notified.kind is EventKind.PAYMENT_SUCCEEDED
    assert [e.event_id for e in queried.events] == [notified.event_id]


async def test_a_payer_who_never_confirms_is_reversed_and_keeps_the_money(
    provider: SandboxProvider,
    driver: SandboxDriver,
    sink_server: tuple[NotifySink, str],
    http: httpx.AsyncClient,
    simulator_url: str,
) -> None:
    sale = _sale(sink_server[1], _code("3"))
    assert (await provider.pay_with_code(sale)).state is AttemptState.PENDING
    for _ in range(5):
        assert (await provider.query(sale.out_trade_no)).state is AttemptState.PENDING
    reversed_ = await provider.reverse(sale.out_trade_no)
    assert reversed_.state is ReverseState.DONE
    assert (await provider.query(sale.out_trade_no)).state is AttemptState.CLOSED
    # The payer confirms on the phone too late: the voided sale cannot charge.
    late = await http.post(
        f"{simulator_url}/control/payments/{sale.out_trade_no}/settle",
        json={"outcome": "success"},
    )
    assert late.status_code == 409
    assert await driver.taken_fen(sale.out_trade_no) == 0
    # Reversing again is harmless.
    assert (await provider.reverse(sale.out_trade_no)).state is ReverseState.DONE


async def test_reversed_while_confirming_the_payer_is_never_charged(
    provider: SandboxProvider, driver: SandboxDriver, sink_server: tuple[NotifySink, str]
) -> None:
    sale = _sale(sink_server[1], _code("2"))
    assert (await provider.pay_with_code(sale)).state is AttemptState.PENDING
    assert (await provider.reverse(sale.out_trade_no)).state is ReverseState.DONE
    for _ in range(4):
        assert (await provider.query(sale.out_trade_no)).state is AttemptState.CLOSED
    assert await driver.taken_fen(sale.out_trade_no) == 0


async def test_reversing_a_paid_sale_gives_the_money_back(
    provider: SandboxProvider, driver: SandboxDriver, sink_server: tuple[NotifySink, str]
) -> None:
    sale = _sale(sink_server[1], _code("1"))
    assert (await provider.pay_with_code(sale)).state is AttemptState.SUCCEEDED
    result = await provider.refund(
        RefundRequest(
            out_trade_no=sale.out_trade_no,
            out_refund_no="rf" + secrets.token_hex(8),
            refund_fen=600,
            total_fen=6600,
            currency="CNY",
            reason="part back",
            notify_url=sink_server[1],
        )
    )
    assert result.state is RefundState.SUCCEEDED
    assert await driver.taken_fen(sale.out_trade_no) == 6000
    assert (await provider.reverse(sale.out_trade_no)).state is ReverseState.DONE
    assert await driver.taken_fen(sale.out_trade_no) == 0
    assert (await provider.query(sale.out_trade_no)).state is AttemptState.CLOSED


async def test_codes_the_platform_refuses_are_failed_sales(
    provider: SandboxProvider, driver: SandboxDriver, sink_server: tuple[NotifySink, str]
) -> None:
    declined = _sale(sink_server[1], _code("7"))
    result = await provider.pay_with_code(declined)
    assert result.state is AttemptState.FAILED
    assert [e.kind for e in result.events] == [EventKind.PAYMENT_FAILED]
    assert await driver.taken_fen(declined.out_trade_no) == 0

    not_a_code = _sale(sink_server[1], "134567890123456789")  # a WeChat code, not the sandbox's
    assert (await provider.pay_with_code(not_a_code)).state is AttemptState.FAILED
    assert (await provider.query(not_a_code.out_trade_no)).state is AttemptState.UNKNOWN

    code = _code("1")
    assert (await provider.pay_with_code(_sale(sink_server[1], code))).state is (
        AttemptState.SUCCEEDED
    )
    reused = _sale(sink_server[1], code)
    assert (await provider.pay_with_code(reused)).state is AttemptState.FAILED
    assert await driver.taken_fen(reused.out_trade_no) == 0


async def test_reverse_of_an_attempt_never_seen_is_done(provider: SandboxProvider) -> None:
    assert (await provider.reverse("sc" + secrets.token_hex(10))).state is ReverseState.DONE


async def test_a_code_sale_is_not_opened_with_create_payment(
    provider: SandboxProvider, sink_server: tuple[NotifySink, str]
) -> None:
    with pytest.raises(GatewayError, match="pay_with_code"):
        await provider.create_payment(_sale(sink_server[1], _code("1")))


async def test_a_sale_without_its_code_is_refused_before_calling(
    provider: SandboxProvider, sink_server: tuple[NotifySink, str]
) -> None:
    sale = _sale(sink_server[1], "")
    with pytest.raises(GatewayError, match="needs the scanned auth_code"):
        await provider.pay_with_code(sale)
    assert (await provider.query(sale.out_trade_no)).state is AttemptState.UNKNOWN


async def test_notification_for_another_merchant_account_is_a_mismatch(
    provider: SandboxProvider, driver: SandboxDriver, sink_server: tuple[NotifySink, str]
) -> None:
    sale = _sale(sink_server[1], _code("1"))
    await provider.pay_with_code(sale)
    genuine = await driver.redeliver(sale.out_trade_no)
    assert (await provider.parse_notification(genuine)) is not None
    other = await driver.resign(genuine, merchant="zj_other_city")
    with pytest.raises(NotificationMismatch, match="zj_other_city"):
        await provider.parse_notification(other)
    # The same notification is this branch's when the branch's account is that one.
    settings = provider.settings.model_copy(update={"merchant_id": "zj_other_city"})
    elsewhere = SandboxProvider(settings, branch=BRANCH, http=provider.http)
    assert (await elsewhere.parse_notification(other)) is not None

    bigger = await provider.parse_notification(await driver.resign(genuine, amount_fen=9999))
    assert bigger is not None and bigger.amount_fen == 9999
    renamed = await provider.parse_notification(
        await driver.resign(genuine, out_trade_no="sc0000000000000")
    )
    assert renamed is not None and renamed.out_trade_no == "sc0000000000000"


async def test_the_simulator_resigns_only_what_it_sent(
    driver: SandboxDriver, http: httpx.AsyncClient, simulator_url: str
) -> None:
    made_up = b'{"id":"ntf_x","type":"payment.succeeded","out_trade_no":"sc000000000000"}'
    response = await http.post(
        f"{simulator_url}/control/notifications/resign",
        json={"body": made_up.decode(), "amount_fen": 1},
    )
    assert response.status_code == 404
