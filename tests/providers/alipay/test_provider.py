"""The Alipay adapter against the simulated gateway over real loopback HTTP.

Covers every payment method's create call, query, refunds (partial, full,
repeated number, over-refund), close, and notifications: genuine ones
accepted, every kind of bad one rejected with Alipay's rejection reply.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from api.plugin import private_key_pem
from api.plugins.contract import (
    ActionKind,
    AttemptState,
    EventKind,
    GatewayError,
    NotificationMismatch,
    NotificationRejected,
    NotificationRequest,
    PaymentMethod,
    PaymentRequest,
    RefundRequest,
    RefundState,
)
from providers.alipay import AlipayProvider
from providers.alipay.driver import AlipayGatewayDriver, notification_request
from providers.alipay.provider import MAX_NOTIFICATION_BYTES
from providers.alipay.signing import notification_string, request_string, sign, verify
from tests.providers.alipay.support import (
    BRANCH,
    OTHER_APP_ID,
    NotifyReceiver,
    RunningSimulator,
    alipay_http,
    alipay_provider,
    alipay_simulator,
    app_key,
    notify_receiver,
    platform_key,
    rsa_key,
    settings_for,
)

__all__ = ["alipay_http", "alipay_provider", "alipay_simulator", "notify_receiver"]

NOTIFY_URL = f"http://127.0.0.1:9/notify/alipay/{BRANCH}"


def new_no(prefix: str = "bp") -> str:
    return prefix + uuid.uuid4().hex[:22]


def payment(
    method: PaymentMethod, amount_fen: int = 8888, notify_url: str = NOTIFY_URL
) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=new_no(),
        amount_fen=amount_fen,
        currency="CNY",
        subject="Zhejiang 5G plan 188",
        method=method,
        notify_url=notify_url,
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        return_url="https://partner.example/return",
    )


def refund_of(
    out_trade_no: str, refund_fen: int, total_fen: int, out_refund_no: str | None = None
) -> RefundRequest:
    return RefundRequest(
        out_trade_no=out_trade_no,
        out_refund_no=out_refund_no or new_no("rf"),
        refund_fen=refund_fen,
        total_fen=total_fen,
        currency="CNY",
        reason="customer cancelled",
    )


async def paid_qr_attempt(
    provider: AlipayProvider, driver: AlipayGatewayDriver, amount_fen: int = 8888
) -> tuple[str, NotificationRequest]:
    request = payment(PaymentMethod.QR_CODE, amount_fen)
    await provider.create_payment(request)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    return request.out_trade_no, notification


@pytest.fixture
def driver(
    alipay_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> AlipayGatewayDriver:
    return AlipayGatewayDriver(alipay_simulator.url, alipay_http, forger_key=rsa_key("forger"))


async def trade_state(
    http: httpx.AsyncClient, sim: RunningSimulator, out_trade_no: str
) -> dict[str, object]:
    response = await http.get(f"{sim.url}/_control/trades/{out_trade_no}")
    response.raise_for_status()
    result: dict[str, object] = response.json()
    return result


def params_of(notification: NotificationRequest) -> dict[str, str]:
    return dict(parse_qsl(notification.body.decode("utf-8"), keep_blank_values=True))


def resigned(params: dict[str, str]) -> NotificationRequest:
    """A notification signed with the real platform key after ``params`` changed."""
    params = dict(params)
    params["sign"] = sign(platform_key(), notification_string(params))
    return notification_request(urlencode(params))


# --- create -----------------------------------------------------------------


async def test_page_pay_url_is_signed_for_the_gateway_and_opens_the_cashier(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    request = payment(PaymentMethod.PAGE)
    action = await alipay_provider.create_payment(request)
    assert action.kind is ActionKind.REDIRECT and action.url
    assert action.url.startswith(alipay_simulator.gateway + "?")
    params = dict(parse_qsl(urlsplit(action.url).query))
    assert params["method"] == "alipay.trade.page.pay"
    assert params["notify_url"] == NOTIFY_URL
    assert params["return_url"] == "https://partner.example/return"
    assert '"total_amount":"88.88"' in params["biz_content"]
    assert '"product_code":"FAST_INSTANT_TRADE_PAY"' in params["biz_content"]
    assert verify(app_key().public_key(), request_string(params), params["sign"])

    cashier = await alipay_http.get(action.url)
    assert cashier.status_code == 200 and "88.88" in cashier.text
    state = await trade_state(alipay_http, alipay_simulator, request.out_trade_no)
    assert state["status"] == "WAIT_BUYER_PAY" and state["total_fen"] == 8888
    # The cashier's pay button posts the outcome back to the same signed URL.
    paid = await alipay_http.post(action.url, data={"outcome": "success"})
    assert paid.status_code == 200
    state = await trade_state(alipay_http, alipay_simulator, request.out_trade_no)
    assert state["status"] == "TRADE_SUCCESS" and state["notifications"] == 1
    assert (await alipay_provider.query(request.out_trade_no)).state is AttemptState.SUCCEEDED


async def test_wap_pay_url_uses_quick_wap_way_and_is_accepted(
    alipay_provider: AlipayProvider, alipay_http: httpx.AsyncClient
) -> None:
    action = await alipay_provider.create_payment(payment(PaymentMethod.WAP, 1))
    assert action.kind is ActionKind.REDIRECT and action.url
    params = dict(parse_qsl(urlsplit(action.url).query))
    assert params["method"] == "alipay.trade.wap.pay"
    assert '"product_code":"QUICK_WAP_WAY"' in params["biz_content"]
    assert '"total_amount":"0.01"' in params["biz_content"]
    cashier = await alipay_http.get(action.url)
    assert cashier.status_code == 200 and "0.01" in cashier.text


async def test_app_order_string_is_signed_and_payable(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
    notify_receiver: tuple[NotifyReceiver, str],
) -> None:
    receiver, notify_url = notify_receiver
    request = payment(PaymentMethod.APP, 100_000_000_00, notify_url)
    action = await alipay_provider.create_payment(request)
    assert action.kind is ActionKind.APP_SDK and action.app_payload
    params = dict(parse_qsl(action.app_payload))
    assert params["method"] == "alipay.trade.app.pay"
    assert '"total_amount":"100000000.00"' in params["biz_content"]
    # What the Alipay app does with the order string: hand it to the gateway and pay.
    paid = await alipay_http.post(
        alipay_simulator.gateway,
        content=action.app_payload + "&outcome=success",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert paid.status_code == 200, paid.text
    (delivered,) = await receiver.wait_for(1)
    event = await alipay_provider.parse_notification(delivered)
    assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
    assert event.amount_fen == 100_000_000_00


async def test_qr_code_precreate_and_payment_by_scan_notifies_the_branch(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    notify_receiver: tuple[NotifyReceiver, str],
) -> None:
    receiver, notify_url = notify_receiver
    request = payment(PaymentMethod.QR_CODE, 8800, notify_url)
    action = await alipay_provider.create_payment(request)
    assert action.kind is ActionKind.QR_CODE and action.qr_code
    scanned = await alipay_http.get(action.qr_code)
    assert scanned.status_code == 200 and "88.00" in scanned.text
    paid = await alipay_http.post(action.qr_code, data={"outcome": "success"})
    assert paid.status_code == 200
    (delivered,) = await receiver.wait_for(1)
    event = await alipay_provider.parse_notification(delivered)
    assert event is not None
    assert (event.kind, event.out_trade_no, event.amount_fen, event.currency) == (
        EventKind.PAYMENT_SUCCEEDED,
        request.out_trade_no,
        8800,
        "CNY",
    )
    assert event.provider_trade_no and event.occurred_at.tzinfo is not None
    assert alipay_provider.notification_reply(accepted=True).body == b"success"


async def test_tampered_page_url_is_refused_by_the_gateway(
    alipay_provider: AlipayProvider, alipay_http: httpx.AsyncClient
) -> None:
    action = await alipay_provider.create_payment(payment(PaymentMethod.PAGE, 8888))
    assert action.url
    tampered = action.url.replace("88.88", "0.01")
    refused = await alipay_http.get(tampered)
    assert refused.status_code == 400 and "isv.invalid-signature" in refused.text


@pytest.mark.parametrize("amount_fen", [0, -1, 100_000_000_01])
async def test_amount_outside_alipay_range_is_refused_before_any_call(
    alipay_provider: AlipayProvider, amount_fen: int
) -> None:
    with pytest.raises(GatewayError) as caught:
        await alipay_provider.create_payment(payment(PaymentMethod.QR_CODE, amount_fen))
    assert not caught.value.outcome_unknown


async def test_precreate_of_a_paid_attempt_is_refused(
    alipay_provider: AlipayProvider, driver: AlipayGatewayDriver
) -> None:
    request = payment(PaymentMethod.QR_CODE)
    await alipay_provider.create_payment(request)
    await driver.settle(request.out_trade_no, "success")
    with pytest.raises(GatewayError, match=r"ACQ\.TRADE_HAS_SUCCESS"):
        await alipay_provider.create_payment(request)


# --- query, refund, close ---------------------------------------------------


async def test_query_follows_the_trade(
    alipay_provider: AlipayProvider, driver: AlipayGatewayDriver
) -> None:
    assert (await alipay_provider.query(new_no())).state is AttemptState.UNKNOWN
    request = payment(PaymentMethod.QR_CODE, 12345)
    await alipay_provider.create_payment(request)
    pending = await alipay_provider.query(request.out_trade_no)
    assert (pending.state, pending.amount_fen, pending.events) == (AttemptState.PENDING, 12345, ())
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    paid = await alipay_provider.query(request.out_trade_no)
    assert paid.state is AttemptState.SUCCEEDED and paid.amount_fen == 12345
    event = await alipay_provider.parse_notification(notification)
    assert event is not None and [e.event_id for e in paid.events] == [event.event_id]


async def test_partial_refunds_then_the_rest_closes_the_trade(
    alipay_provider: AlipayProvider,
    driver: AlipayGatewayDriver,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    out_trade_no, _ = await paid_qr_attempt(alipay_provider, driver, 10000)
    first = await alipay_provider.refund(refund_of(out_trade_no, 3333, 10000))
    assert first.state is RefundState.SUCCEEDED
    over = await alipay_provider.refund(refund_of(out_trade_no, 6668, 10000))
    assert over.state is RefundState.FAILED and "ACQ.REASON_TRADE_REFUND_FEE_ERR" in (
        over.message or ""
    )
    rest = await alipay_provider.refund(refund_of(out_trade_no, 6667, 10000))
    assert rest.state is RefundState.SUCCEEDED
    state = await trade_state(alipay_http, alipay_simulator, out_trade_no)
    assert (state["status"], state["refunded_fen"]) == ("TRADE_CLOSED", 10000)
    refunded = await alipay_provider.query(out_trade_no)
    # Alipay closes a trade refunded in full; it was still paid, never an unpaid close.
    assert refunded.state is AttemptState.SUCCEEDED
    assert [e.kind for e in refunded.events] == [EventKind.PAYMENT_SUCCEEDED]


async def test_repeated_refund_number_refunds_once(
    alipay_provider: AlipayProvider,
    driver: AlipayGatewayDriver,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    out_trade_no, _ = await paid_qr_attempt(alipay_provider, driver, 5000)
    out_refund_no = new_no("rf")
    for _ in range(2):
        result = await alipay_provider.refund(refund_of(out_trade_no, 2000, 5000, out_refund_no))
        assert result.state is RefundState.SUCCEEDED
    state = await trade_state(alipay_http, alipay_simulator, out_trade_no)
    assert state["refunded_fen"] == 2000
    reused = await alipay_provider.refund(refund_of(out_trade_no, 2500, 5000, out_refund_no))
    assert reused.state is RefundState.FAILED and "different amount" in (reused.message or "")
    assert (await trade_state(alipay_http, alipay_simulator, out_trade_no))["refunded_fen"] == 2000


async def test_refund_of_unpaid_or_unknown_attempt_fails(
    alipay_provider: AlipayProvider,
) -> None:
    request = payment(PaymentMethod.QR_CODE, 100)
    await alipay_provider.create_payment(request)
    unpaid = await alipay_provider.refund(refund_of(request.out_trade_no, 100, 100))
    assert unpaid.state is RefundState.FAILED and "ACQ.TRADE_STATUS_ERROR" in (unpaid.message or "")
    unknown = await alipay_provider.refund(refund_of(new_no(), 100, 100))
    assert unknown.state is RefundState.FAILED and "ACQ.TRADE_NOT_EXIST" in (unknown.message or "")


async def test_close_unpaid_never_seen_and_paid_attempts(
    alipay_provider: AlipayProvider, driver: AlipayGatewayDriver
) -> None:
    request = payment(PaymentMethod.QR_CODE)
    await alipay_provider.create_payment(request)
    await alipay_provider.close(request.out_trade_no)
    assert (await alipay_provider.query(request.out_trade_no)).state is AttemptState.CLOSED
    await alipay_provider.close(request.out_trade_no)  # closing twice is fine
    await alipay_provider.close(new_no())  # Alipay never saw it: nothing to close
    out_trade_no, _ = await paid_qr_attempt(alipay_provider, driver)
    with pytest.raises(GatewayError, match="succeeded"):
        await alipay_provider.close(out_trade_no)
    assert (await alipay_provider.query(out_trade_no)).state is AttemptState.SUCCEEDED


# --- notifications ----------------------------------------------------------


async def test_closed_and_refund_notifications_become_events(
    alipay_provider: AlipayProvider,
    driver: AlipayGatewayDriver,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    request = payment(PaymentMethod.QR_CODE, 3000)
    await alipay_provider.create_payment(request)
    closed = await driver.settle(request.out_trade_no, "close")
    assert closed is not None
    event = await alipay_provider.parse_notification(closed)
    assert event is not None and event.kind is EventKind.PAYMENT_CLOSED

    out_trade_no, _ = await paid_qr_attempt(alipay_provider, driver, 3000)
    out_refund_no = new_no("rf")
    await alipay_provider.refund(refund_of(out_trade_no, 1200, 3000, out_refund_no))
    listed = await alipay_http.get(f"{alipay_simulator.url}/_control/notifications/{out_trade_no}")
    refund_body = listed.json()["notifications"][-1]
    refund_event = await alipay_provider.parse_notification(notification_request(refund_body))
    assert refund_event is not None
    assert (refund_event.kind, refund_event.amount_fen, refund_event.out_refund_no) == (
        EventKind.REFUND_SUCCEEDED,
        1200,
        out_refund_no,
    )
    assert refund_event.event_id == f"alipay:{out_trade_no}:refund:{out_refund_no}"


async def test_unsuccessful_payment_sends_nothing_and_wait_buyer_pay_is_ignored(
    alipay_provider: AlipayProvider, driver: AlipayGatewayDriver
) -> None:
    _, paid = await paid_qr_attempt(alipay_provider, driver)
    request = payment(PaymentMethod.QR_CODE)
    await alipay_provider.create_payment(request)
    assert await driver.settle(request.out_trade_no, "fail") is None
    waiting = params_of(paid) | {
        "trade_status": "WAIT_BUYER_PAY",
        "out_trade_no": request.out_trade_no,
    }
    assert await alipay_provider.parse_notification(resigned(waiting)) is None


async def test_trade_finished_after_success_is_the_same_fact(
    alipay_provider: AlipayProvider, driver: AlipayGatewayDriver
) -> None:
    _, paid = await paid_qr_attempt(alipay_provider, driver)
    first = await alipay_provider.parse_notification(paid)
    finished = params_of(paid) | {"trade_status": "TRADE_FINISHED", "notify_id": uuid.uuid4().hex}
    later = await alipay_provider.parse_notification(resigned(finished))
    assert first is not None and later is not None
    assert (later.kind, later.event_id) == (first.kind, first.event_id)


def _drop(params: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in params.items() if k not in names}


BAD_NOTIFICATIONS = {
    "unsigned": lambda p: notification_request(urlencode(_drop(p, "sign"))),
    "empty sign": lambda p: notification_request(urlencode(p | {"sign": ""})),
    "sign not base64": lambda p: notification_request(urlencode(p | {"sign": "@@not-base64@@"})),
    "forged": lambda p: notification_request(
        urlencode(p | {"sign": sign(rsa_key("forger"), notification_string(p))})
    ),
    "tampered amount": lambda p: notification_request(urlencode(p | {"total_amount": "0.01"})),
    "tampered out_trade_no": lambda p: notification_request(
        urlencode(p | {"out_trade_no": "someoneelse0001"})
    ),
    "sign_type RSA": lambda p: notification_request(urlencode(p | {"sign_type": "RSA"})),
    "added parameter": lambda p: notification_request(urlencode(p | {"refund_fee": "88.00"})),
    "three-decimal amount": lambda p: resigned(p | {"total_amount": "88.001"}),
    "negative amount": lambda p: resigned(p | {"total_amount": "-88.00"}),
    "no out_trade_no": lambda p: resigned(_drop(p, "out_trade_no")),
    "unknown trade_status": lambda p: resigned(p | {"trade_status": "TRADE_PAID"}),
    "malformed body": lambda p: notification_request("%%%not a form&&=="),
    "JSON body": lambda p: NotificationRequest(
        method="POST", headers={"content-type": "application/json"}, query={}, body=b"{}"
    ),
    "not UTF-8": lambda p: NotificationRequest(
        method="POST", headers={}, query={}, body=urlencode(p).encode() + b"&subject=\xff\xfe"
    ),
    "repeated parameter": lambda p: notification_request(urlencode(p) + "&total_amount=0.01"),
    "oversized body": lambda p: notification_request(
        urlencode(p) + "&padding=" + "x" * MAX_NOTIFICATION_BYTES
    ),
    "GET": lambda p: NotificationRequest(method="GET", headers={}, query=p, body=b""),
}


@pytest.mark.parametrize("case", sorted(BAD_NOTIFICATIONS))
async def test_bad_notification_is_rejected_without_secrets_in_the_log(
    alipay_provider: AlipayProvider,
    driver: AlipayGatewayDriver,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    _, paid = await paid_qr_attempt(alipay_provider, driver)
    bad = BAD_NOTIFICATIONS[case](params_of(paid))
    caplog.set_level(logging.INFO, logger="branchpay.providers.alipay")
    with pytest.raises(NotificationRejected) as caught:
        await alipay_provider.parse_notification(bad)
    reason = str(caught.value)
    assert reason
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and reason in rejected[0].getMessage()
    private_pem = alipay_provider.config.private_key.get_secret_value()
    body_of_key = "".join(private_pem.splitlines()[1:-1])
    for text in (reason, caplog.text):
        assert body_of_key[:40] not in text and params_of(paid)["sign"][:40] not in text
    reply = alipay_provider.notification_reply(accepted=False)
    assert reply.body != b"success" and reply.status_code >= 400


NOT_THIS_BRANCHS = {
    "other branch's app": {"app_id": OTHER_APP_ID},
    "other seller": {"seller_id": "2088999999999999"},
}


@pytest.mark.parametrize("case", sorted(NOT_THIS_BRANCHS))
async def test_genuine_notification_of_another_app_or_seller_is_a_mismatch(
    alipay_provider: AlipayProvider, driver: AlipayGatewayDriver, case: str
) -> None:
    # Signed by Alipay, so not refused (Alipay would re-send it for a day) but kept aside.
    _, paid = await paid_qr_attempt(alipay_provider, driver)
    other = resigned(params_of(paid) | NOT_THIS_BRANCHS[case])
    with pytest.raises(NotificationMismatch, match=next(iter(NOT_THIS_BRANCHS[case]))):
        await alipay_provider.parse_notification(other)


async def test_notification_signature_variants_alipay_signers_produce(
    alipay_provider: AlipayProvider, driver: AlipayGatewayDriver
) -> None:
    _, paid = await paid_qr_attempt(alipay_provider, driver)
    params = params_of(paid)
    without_type = _drop(params, "sign_type")
    assert await alipay_provider.parse_notification(notification_request(urlencode(without_type)))
    # An empty parameter signed as Alipay does (kept in the signed string) ...
    with_empty = resigned(_drop(params, "sign") | {"body": ""})
    assert await alipay_provider.parse_notification(with_empty)
    # ... or by a signer that drops empty values, as request signing does.
    dropped = _drop(params, "sign")
    dropped["sign"] = sign(platform_key(), notification_string(dropped))
    assert await alipay_provider.parse_notification(
        notification_request(urlencode(dropped | {"body": ""}))
    )


async def test_notification_for_branch_with_other_app_is_rejected(
    alipay_simulator: RunningSimulator,
    alipay_http: httpx.AsyncClient,
    alipay_provider: AlipayProvider,
    driver: AlipayGatewayDriver,
) -> None:
    # A genuine notification for this branch's app, delivered to another branch.
    other_branch = AlipayProvider(
        settings_for(
            alipay_simulator.gateway,
            app_id=OTHER_APP_ID,
            private_key=private_key_pem(rsa_key("other-app")),
        ),
        branch="bj",
        http=alipay_http,
    )
    _, paid = await paid_qr_attempt(alipay_provider, driver)
    assert await alipay_provider.parse_notification(paid) is not None
    with pytest.raises(NotificationMismatch, match="app_id"):
        await other_branch.parse_notification(paid)


async def test_duplicate_delayed_and_out_of_order_deliveries(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
    notify_receiver: tuple[NotifyReceiver, str],
) -> None:
    receiver, notify_url = notify_receiver
    request = payment(PaymentMethod.QR_CODE, 9900, notify_url)
    await alipay_provider.create_payment(request)
    settle = await alipay_http.post(
        f"{alipay_simulator.url}/_control/settle/{request.out_trade_no}",
        data={"outcome": "success"},
    )
    assert settle.json()["delivery"]["reply"] == "success"
    await alipay_provider.refund(refund_of(request.out_trade_no, 9900, 9900))
    await receiver.wait_for(2)  # payment, then the refund that closed the trade

    base = f"{alipay_simulator.url}/_control/notifications/{request.out_trade_no}/send"
    duplicates = await alipay_http.post(base, data={"index": "0", "copies": "2"})
    assert [d["status_code"] for d in duplicates.json()["deliveries"]] == [200, 200]
    out_of_order = await alipay_http.post(base, data={"order": "newest_first"})
    assert len(out_of_order.json()["deliveries"]) == 2
    delayed = await alipay_http.post(base, data={"index": "0", "delay": "0.2"})
    assert delayed.status_code == 202
    received = await receiver.wait_for(7)

    events = [await alipay_provider.parse_notification(n) for n in received]
    facts = [e for e in events if e is not None]
    assert len(facts) == len(events) == 7
    assert [e.kind for e in facts][4:6] == [EventKind.REFUND_SUCCEEDED, EventKind.PAYMENT_SUCCEEDED]
    ids: dict[EventKind, set[str]] = {}
    for e in facts:
        ids.setdefault(e.kind, set()).add(e.event_id)
    # However often and in whatever order they arrive: one fact each.
    assert {k: len(v) for k, v in ids.items()} == {
        EventKind.PAYMENT_SUCCEEDED: 1,
        EventKind.REFUND_SUCCEEDED: 1,
    }
