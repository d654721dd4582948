"""Time-outs and gateway errors: what the Alipay adapter repeats and what it never guesses.

Query, close and refund (same ``out_request_no``) are safe to repeat and are
retried with back-off; precreate is tried once. The simulator is told to fail,
stall after processing, or answer unsigned or wrongly signed; a closed
loopback port stands for an unreachable gateway.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from api.plugins.contract import (
    AttemptState,
    GatewayError,
    NotificationRejected,
    PaymentMethod,
    PaymentRequest,
    RefundRequest,
    RefundState,
)
from providers.alipay import AlipayProvider
from providers.alipay.driver import AlipayGatewayDriver, notification_request
from tests.providers.alipay.support import (
    BRANCH,
    RunningSimulator,
    alipay_http,
    alipay_simulator,
    rsa_key,
    settings_for,
)

__all__ = ["alipay_http", "alipay_simulator"]

STALL_SECONDS = 3.0
CLIENT_TIMEOUT = 1.0
BACKOFF = 0.05


@pytest.fixture
async def sim(
    alipay_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> AsyncIterator[RunningSimulator]:
    yield alipay_simulator
    await alipay_http.delete(f"{alipay_simulator.url}/_control/faults")


@pytest.fixture
def provider(sim: RunningSimulator, alipay_http: httpx.AsyncClient) -> AlipayProvider:
    settings = settings_for(
        sim.gateway, timeout_seconds=CLIENT_TIMEOUT, backoff_seconds=BACKOFF, max_attempts=3
    )
    return AlipayProvider(settings, branch=BRANCH, http=alipay_http)


@pytest.fixture
def unreachable(alipay_http: httpx.AsyncClient) -> AlipayProvider:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now.
    settings = settings_for(
        f"http://127.0.0.1:{port}/gateway.do", backoff_seconds=BACKOFF, max_attempts=3
    )
    return AlipayProvider(settings, branch=BRANCH, http=alipay_http)


def payment(amount_fen: int = 5000) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no="ft" + uuid.uuid4().hex[:22],
        amount_fen=amount_fen,
        currency="CNY",
        subject="Handset deposit",
        method=PaymentMethod.QR_CODE,
        notify_url=f"http://127.0.0.1:9/notify/alipay/{BRANCH}",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
    )


async def inject(
    http: httpx.AsyncClient, sim: RunningSimulator, kind: str, method: str, times: int = 1
) -> None:
    response = await http.post(
        f"{sim.url}/_control/faults",
        data={"kind": kind, "method": method, "times": str(times), "seconds": str(STALL_SECONDS)},
    )
    response.raise_for_status()


async def calls(http: httpx.AsyncClient, sim: RunningSimulator) -> dict[str, int]:
    result: dict[str, int] = (await http.get(f"{sim.url}/_control/calls")).json()
    return result


async def paid(provider: AlipayProvider, http: httpx.AsyncClient, sim: RunningSimulator) -> str:
    request = payment()
    await provider.create_payment(request)
    driver = AlipayGatewayDriver(sim.url, http, forger_key=rsa_key("forger"))
    assert await driver.settle(request.out_trade_no, "success") is not None
    return request.out_trade_no


def tries_logged(caplog: pytest.LogCaptureFixture, api_method: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "branchpay.providers.alipay"
        and f"alipay {api_method} " in r.getMessage().lower()
        and " try " in r.getMessage()
    ]


# --- an unreachable gateway ---------------------------------------------------


async def test_unreachable_gateway_query_is_retried_then_reported(
    unreachable: AlipayProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="branchpay.providers.alipay")
    started = time.monotonic()
    with pytest.raises(GatewayError) as caught:
        await unreachable.query("ft" + uuid.uuid4().hex[:22])
    assert caught.value.retryable and not caught.value.outcome_unknown
    assert "after 3 tries" in str(caught.value)
    assert len(tries_logged(caplog, "alipay.trade.query")) == 3
    # Back-off doubles: BACKOFF after the first try, 2 * BACKOFF after the second.
    assert time.monotonic() - started >= 3 * BACKOFF


async def test_unreachable_gateway_precreate_is_tried_once_and_reached_nothing(
    unreachable: AlipayProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="branchpay.providers.alipay")
    with pytest.raises(GatewayError) as caught:
        await unreachable.create_payment(payment())
    assert not caught.value.retryable and not caught.value.outcome_unknown
    assert len(tries_logged(caplog, "alipay.trade.precreate")) == 1


async def test_unreachable_gateway_refund_never_claims_a_state(
    unreachable: AlipayProvider,
) -> None:
    refund = RefundRequest("ft0000000001", "rf0000000001", 100, 100, "CNY")
    with pytest.raises(GatewayError) as caught:
        await unreachable.refund(refund)
    assert caught.value.retryable and not caught.value.outcome_unknown


# --- a failing or stalling gateway ---------------------------------------------


async def test_precreate_http_error_is_not_repeated(
    provider: AlipayProvider, sim: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    await inject(alipay_http, sim, "http_500", "alipay.trade.precreate", times=3)
    before = (await calls(alipay_http, sim)).get("alipay.trade.precreate", 0)
    with pytest.raises(GatewayError) as caught:
        await provider.create_payment(payment())
    assert not caught.value.retryable and caught.value.outcome_unknown
    assert (await calls(alipay_http, sim))["alipay.trade.precreate"] == before + 1


async def test_precreate_stalled_after_processing_leaves_it_to_reconciliation(
    provider: AlipayProvider, sim: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    request = payment()
    await inject(alipay_http, sim, "stall", "alipay.trade.precreate")
    with pytest.raises(GatewayError) as caught:
        await provider.create_payment(request)
    assert caught.value.outcome_unknown and not caught.value.retryable
    # Alipay did create the trade; only a later query can say so.
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING


async def test_query_system_errors_are_retried_until_an_answer(
    provider: AlipayProvider, sim: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    request = payment()
    await provider.create_payment(request)
    await inject(alipay_http, sim, "system_error", "alipay.trade.query", times=2)
    before = (await calls(alipay_http, sim)).get("alipay.trade.query", 0)
    result = await provider.query(request.out_trade_no)
    assert result.state is AttemptState.PENDING
    assert (await calls(alipay_http, sim))["alipay.trade.query"] == before + 3


async def test_refund_whose_answer_was_lost_is_repeated_and_refunds_once(
    provider: AlipayProvider, sim: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    out_trade_no = await paid(provider, alipay_http, sim)
    await inject(alipay_http, sim, "stall", "alipay.trade.refund")
    before = await calls(alipay_http, sim)
    result = await provider.refund(
        RefundRequest(out_trade_no, "rf" + uuid.uuid4().hex[:22], 2000, 5000, "CNY")
    )
    assert result.state is RefundState.SUCCEEDED
    after = await calls(alipay_http, sim)
    assert after["alipay.trade.refund"] == before.get("alipay.trade.refund", 0) + 2
    assert after["alipay.trade.fastpay.refund.query"] > before.get(
        "alipay.trade.fastpay.refund.query", 0
    )
    trade = (await alipay_http.get(f"{sim.url}/_control/trades/{out_trade_no}")).json()
    assert trade["refunded_fen"] == 2000


async def test_close_keeps_failing_then_reports_outcome_unknown(
    provider: AlipayProvider, sim: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    request = payment()
    await provider.create_payment(request)
    await inject(alipay_http, sim, "http_500", "alipay.trade.close", times=5)
    before = (await calls(alipay_http, sim)).get("alipay.trade.close", 0)
    with pytest.raises(GatewayError) as caught:
        await provider.close(request.out_trade_no)
    assert caught.value.retryable and caught.value.outcome_unknown
    assert (await calls(alipay_http, sim))["alipay.trade.close"] == before + 3


@pytest.mark.parametrize(
    ("kind", "words"), [("unsigned", "unsigned"), ("bad_signature", "signature")]
)
async def test_untrusted_answers_are_never_believed_nor_repeated(
    provider: AlipayProvider,
    sim: RunningSimulator,
    alipay_http: httpx.AsyncClient,
    kind: str,
    words: str,
) -> None:
    request = payment()
    await provider.create_payment(request)
    await inject(alipay_http, sim, kind, "alipay.trade.close")
    before = (await calls(alipay_http, sim)).get("alipay.trade.close", 0)
    with pytest.raises(GatewayError, match=words) as caught:
        await provider.close(request.out_trade_no)
    assert caught.value.outcome_unknown
    assert (await calls(alipay_http, sim))["alipay.trade.close"] == before + 1
    # The simulator did close it; the adapter learnt that only from a trusted query.
    assert (await provider.query(request.out_trade_no)).state is AttemptState.CLOSED


async def test_untrusted_query_answer_is_an_error_but_changes_nothing(
    provider: AlipayProvider, sim: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    request = payment()
    await provider.create_payment(request)
    await inject(alipay_http, sim, "bad_signature", "alipay.trade.query")
    with pytest.raises(GatewayError, match="signature") as caught:
        await provider.query(request.out_trade_no)
    # A query acts on nothing, so there is no outcome in doubt.
    assert not caught.value.outcome_unknown


async def test_refund_notification_unconfirmable_now_is_refused_for_redelivery(
    provider: AlipayProvider, sim: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    out_trade_no = await paid(provider, alipay_http, sim)
    result = await provider.refund(
        RefundRequest(out_trade_no, "rf" + uuid.uuid4().hex[:22], 1000, 5000, "CNY")
    )
    assert result.state is RefundState.SUCCEEDED
    listed = await alipay_http.get(f"{sim.url}/_control/notifications/{out_trade_no}")
    refund_notification = notification_request(listed.json()["notifications"][-1])
    await inject(alipay_http, sim, "http_500", "alipay.trade.fastpay.refund.query", times=3)
    with pytest.raises(NotificationRejected, match="could not be confirmed"):
        await provider.parse_notification(refund_notification)
    # Delivered again once Alipay answers, it is accepted.
    event = await provider.parse_notification(refund_notification)
    assert event is not None and event.amount_fen == 1000
