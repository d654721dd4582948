"""The WeChat Pay adapter against its simulator over real loopback HTTP.

Covers settings, signatures, every create method, callbacks (genuine,
duplicate, late, out of order, and each way of being bad), amounts, query,
refund, close, the retry policy on failures and the demo set-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from api.config.model import ConfigError
from api.config.validate import load_config
from api.plugin import PLUGIN_API_VERSION
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
from providers.kit.loopback import LoopbackServer
from providers.wechatpay import WechatpayProvider, WechatpaySettings, demo, signing
from providers.wechatpay.driver import WechatpayDriver
from providers.wechatpay.provider import description, fen
from providers.wechatpay.simulator import Gateway
from tests.providers.wechatpay.support import (
    APPID,
    BRANCH,
    CERT_SERIAL_NO,
    MCHID,
    PLATFORM_KEY_ID,
    Keys,
    NotifyReceiver,
    merchant,
    session_keys,
    settings,
    simulator_app,
)

LOGGER = "branchpay.providers.wechatpay"


@pytest.fixture(scope="module")
def keys() -> Keys:
    return session_keys()


@pytest.fixture(scope="module")
def simulator(keys: Keys) -> Iterator[tuple[str, Gateway]]:
    other = merchant(keys, mchid="1900000110", appid="wx0000000000000110")
    app = simulator_app(
        merchant(keys),
        other,
    )
    with LoopbackServer(app) as server:
        yield server.url, app.state.gateway


@pytest.fixture(scope="module")
def simulator_url(simulator: tuple[str, Gateway]) -> str:
    return simulator[0]


@pytest.fixture(scope="module")
def sim(simulator: tuple[str, Gateway]) -> Gateway:
    return simulator[1]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(keys: Keys, simulator_url: str, http: httpx.AsyncClient) -> WechatpayProvider:
    return WechatpayProvider(settings(keys, simulator_url), branch=BRANCH, http=http)


@pytest.fixture
def driver(keys: Keys, simulator_url: str) -> WechatpayDriver:
    return WechatpayDriver(
        simulator_url,
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


@pytest.fixture
async def receiver(provider: WechatpayProvider) -> AsyncIterator[tuple[NotifyReceiver, str]]:
    notify = NotifyReceiver(provider, asyncio.get_running_loop())
    with LoopbackServer(notify.app) as server:
        yield notify, f"{server.url}/notify/wechatpay/{BRANCH}"


def new_no(prefix: str = "wx") -> str:
    return prefix + uuid.uuid4().hex[:20]


def order(
    method: PaymentMethod = PaymentMethod.QR_CODE,
    amount_fen: int = 8800,
    notify_url: str = "http://127.0.0.1:9/notify/wechatpay/zj",
    **changes: object,
) -> PaymentRequest:
    request = PaymentRequest(
        out_trade_no=new_no(),
        amount_fen=amount_fen,
        currency="CNY",
        subject="China Mobile Zhejiang 5G plan",
        method=method,
        notify_url=notify_url,
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        return_url="https://partner.example/done?order=1",
        client_ip="203.0.113.7",
    )
    return replace(request, **changes)  # type: ignore[arg-type]


async def paid(
    provider: WechatpayProvider, driver: WechatpayDriver, amount_fen: int = 8800
) -> tuple[str, NotificationRequest]:
    request = order(amount_fen=amount_fen)
    await provider.create_payment(request)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    return request.out_trade_no, notification


def refund_request(out_trade_no: str, refund_fen: int, total_fen: int = 8800) -> RefundRequest:
    return RefundRequest(
        out_trade_no=out_trade_no,
        out_refund_no=new_no("rf"),
        refund_fen=refund_fen,
        total_fen=total_fen,
        currency="CNY",
        reason="customer returned the handset",
    )


def secret_texts(keys: Keys) -> list[str]:
    """Fragments that must never show in a log line or an error."""
    body_lines = [line for line in keys.merchant_pem.splitlines() if "-----" not in line]
    return [keys.apiv3_key, body_lines[1], body_lines[-2]]


# -- plugin and settings ---------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    found = {ep.name: ep for ep in entry_points(group="branchpay.providers")}
    assert "wechatpay" in found, "pyproject.toml must register providers.wechatpay"
    module = found["wechatpay"].load()
    assert module.BRANCHPAY_PLUGIN_API == PLUGIN_API_VERSION
    assert module.register_providers() == [WechatpayProvider]


def test_settings_default_to_production_and_hide_secrets(keys: Keys) -> None:
    chosen = settings(keys, "https://api.mch.weixin.qq.com/")
    defaults = WechatpaySettings.model_validate(
        {k: v for k, v in chosen.model_dump().items() if k != "gateway"}
        | {"private_key": keys.merchant_pem, "apiv3_key": keys.apiv3_key}
    )
    assert defaults.gateway == "https://api.mch.weixin.qq.com"
    assert chosen.gateway == "https://api.mch.weixin.qq.com"
    shown = repr(chosen) + str(chosen) + chosen.model_dump_json()
    for fragment in secret_texts(keys):
        assert fragment not in shown


def test_settings_errors_never_show_a_key(keys: Keys) -> None:
    broken_key = keys.merchant_pem.replace("A", "*", 5)
    with pytest.raises(ValidationError) as caught:
        settings(keys, "http://127.0.0.1:1", private_key=broken_key, apiv3_key="short")
    message = str(caught.value)
    assert "private_key" in message and "RSA private key" in message
    assert "apiv3_key" in message and "32 bytes" in message
    assert "short" not in message
    for fragment in secret_texts(keys):
        assert fragment not in message


def test_settings_reject_a_public_key_that_does_not_parse(keys: Keys) -> None:
    with pytest.raises(ValidationError, match="platform_public_key"):
        settings(keys, "http://127.0.0.1:1", platform_public_key="not a key")


def test_settings_strip_the_newline_of_an_apiv3_key_file(keys: Keys) -> None:
    chosen = settings(keys, "http://127.0.0.1:1", apiv3_key=keys.apiv3_key + "\n")
    assert chosen.apiv3_key.get_secret_value() == keys.apiv3_key


# -- signatures -----------------------------------------------------------------


def test_signature_round_trip_and_tampering(keys: Keys) -> None:
    message = signing.request_message("POST", "/v3/pay/transactions/native", "1", "N", b"{}")
    signature = signing.sign(keys.merchant, message)
    assert signing.verify(keys.merchant.public_key(), message, signature)
    assert not signing.verify(keys.merchant.public_key(), message + b" ", signature)
    assert not signing.verify(keys.platform.public_key(), message, signature)
    assert not signing.verify(keys.merchant.public_key(), message, "not base64!")


def test_resource_encryption_round_trip(keys: Keys) -> None:
    key = keys.apiv3_key.encode()
    sealed = signing.encrypt_resource(key, b'{"a":1}', nonce="abcdefghijkl", associated_data="t")
    assert signing.decrypt_resource(key, sealed, nonce="abcdefghijkl", associated_data="t") == (
        b'{"a":1}'
    )
    assert signing.decrypt_resource(key, sealed, nonce="abcdefghijkl", associated_data="x") is None
    wrong = b"0" * 32
    assert (
        signing.decrypt_resource(wrong, sealed, nonce="abcdefghijkl", associated_data="t") is None
    )


def test_authorization_header_round_trip() -> None:
    header = signing.authorization(MCHID, CERT_SERIAL_NO, "1700000000", "NONCE", "c2ln")
    assert header.startswith("WECHATPAY2-SHA256-RSA2048 ")
    assert signing.parse_authorization(header) == {
        "mchid": MCHID,
        "nonce_str": "NONCE",
        "signature": "c2ln",
        "timestamp": "1700000000",
        "serial_no": CERT_SERIAL_NO,
    }
    assert signing.parse_authorization("Bearer x") is None


# -- create -----------------------------------------------------------------------


async def test_native_order_gives_a_code_url(provider: WechatpayProvider, sim: Gateway) -> None:
    request = order(PaymentMethod.QR_CODE)
    action = await provider.create_payment(request)
    assert action.kind is ActionKind.QR_CODE and action.qr_code
    attempt = sim.attempts[request.out_trade_no]
    assert attempt.trade_type == "NATIVE"
    assert attempt.order["amount"] == {"total": 8800, "currency": "CNY"}
    assert attempt.order["time_expire"].endswith("+08:00")


async def test_h5_order_redirects_with_the_return_url(
    provider: WechatpayProvider, sim: Gateway
) -> None:
    request = order(PaymentMethod.WAP)
    action = await provider.create_payment(request)
    assert action.kind is ActionKind.REDIRECT and action.url
    url = httpx.URL(action.url)
    assert url.params["redirect_url"] == "https://partner.example/done?order=1"
    assert sim.attempts[request.out_trade_no].order["scene_info"] == {
        "payer_client_ip": "203.0.113.7",
        "h5_info": {"type": "Wap"},
    }


async def test_h5_order_needs_the_payer_ip(provider: WechatpayProvider) -> None:
    with pytest.raises(GatewayError, match="client IP"):
        await provider.create_payment(order(PaymentMethod.WAP, client_ip=None))


async def test_app_order_payload_is_signed_for_the_app_sdk(
    provider: WechatpayProvider, keys: Keys, sim: Gateway
) -> None:
    request = order(PaymentMethod.APP)
    action = await provider.create_payment(request)
    assert action.kind is ActionKind.APP_SDK and action.app_payload
    payload = json.loads(action.app_payload)
    assert payload["prepayid"] == sim.attempts[request.out_trade_no].prepay_id
    assert (payload["appid"], payload["partnerid"], payload["package"]) == (
        APPID,
        MCHID,
        "Sign=WXPay",
    )
    message = f"{APPID}\n{payload['timestamp']}\n{payload['noncestr']}\n{payload['prepayid']}\n"
    assert signing.verify(keys.merchant.public_key(), message.encode(), payload["sign"])


async def test_same_order_twice_is_accepted_but_changed_order_is_refused(
    provider: WechatpayProvider,
) -> None:
    request = order()
    first = await provider.create_payment(request)
    assert await provider.create_payment(request) == first
    with pytest.raises(GatewayError, match="INVALID_REQUEST") as caught:
        await provider.create_payment(replace(request, amount_fen=1))
    assert not caught.value.outcome_unknown


async def test_a_wrong_merchant_key_is_refused_by_the_platform(
    keys: Keys, simulator_url: str, http: httpx.AsyncClient
) -> None:
    impostor = WechatpayProvider(
        settings(keys, simulator_url, private_key=keys.platform_pem), branch=BRANCH, http=http
    )
    with pytest.raises(GatewayError, match="SIGN_ERROR"):
        await impostor.create_payment(order())


async def test_description_is_cut_to_127_bytes_on_a_character_boundary(
    provider: WechatpayProvider, sim: Gateway
) -> None:
    subject = "浙江移动5G畅享套餐" * 10
    cut = description(subject)
    assert len(cut.encode()) <= 127 and subject.startswith(cut) and len(cut.encode()) > 120
    request = order(subject=subject)
    await provider.create_payment(request)
    assert sim.attempts[request.out_trade_no].order["description"] == cut


@pytest.mark.parametrize("amount_fen", [0, -1])
async def test_create_refuses_amounts_that_are_not_positive_fen(
    provider: WechatpayProvider, amount_fen: int
) -> None:
    with pytest.raises(GatewayError):
        await provider.create_payment(order(amount_fen=amount_fen))


# -- the simulator's own request checks -------------------------------------------------


async def signed_call(
    keys: Keys,
    url: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    serial: str = CERT_SERIAL_NO,
    sent_body: bytes | None = None,
) -> httpx.Response:
    """A request signed by hand, so each part of it can be spoiled on purpose."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = signing.new_nonce()
    signature = signing.sign(
        keys.merchant, signing.request_message(method, path, stamp, nonce, body)
    )
    headers = {
        "Authorization": signing.authorization(MCHID, serial, stamp, nonce, signature),
        "Content-Type": "application/json",
    }
    async with httpx.AsyncClient() as client:
        return await client.request(
            method, url + path, content=body if sent_body is None else sent_body, headers=headers
        )


def native_body(**changes: object) -> bytes:
    body: dict[str, object] = {
        "appid": APPID,
        "mchid": MCHID,
        "description": "Plan",
        "out_trade_no": new_no(),
        "notify_url": "https://branchpay.example/notify/wechatpay/zj",
        "amount": {"total": 100, "currency": "CNY"},
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


async def test_simulator_accepts_a_correctly_signed_order(keys: Keys, simulator_url: str) -> None:
    answer = await signed_call(
        keys, simulator_url, "POST", "/v3/pay/transactions/native", native_body()
    )
    assert answer.status_code == 200 and "code_url" in answer.json()
    assert answer.headers["Wechatpay-Serial"] == PLATFORM_KEY_ID


@pytest.mark.parametrize(
    ("spoil", "status", "code"),
    [
        ({"timestamp": int(time.time()) - 600}, 401, "SIGN_ERROR"),
        ({"serial": "0123456789ABCDEF"}, 401, "SIGN_ERROR"),
        ({"sent_body": native_body(description="Changed after signing")}, 401, "SIGN_ERROR"),
    ],
)
async def test_simulator_refuses_a_spoiled_signature(
    keys: Keys, simulator_url: str, spoil: dict[str, object], status: int, code: str
) -> None:
    answer = await signed_call(
        keys,
        simulator_url,
        "POST",
        "/v3/pay/transactions/native",
        native_body(),
        **spoil,  # type: ignore[arg-type]
    )
    assert (answer.status_code, answer.json()["code"]) == (status, code)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"description": None}, "PARAM_ERROR"),
        ({"amount": {"total": 1.5, "currency": "CNY"}}, "PARAM_ERROR"),
        ({"amount": {"total": "100", "currency": "CNY"}}, "PARAM_ERROR"),
        ({"amount": {"total": 100, "currency": "USD"}}, "PARAM_ERROR"),
        ({"out_trade_no": "short"}, "PARAM_ERROR"),
        ({"notify_url": "https://branchpay.example/notify?branch=zj"}, "PARAM_ERROR"),
        ({"mchid": "1900000110"}, "PARAM_ERROR"),
        ({"appid": "wx0000000000000110"}, "APPID_MCHID_NOT_MATCH"),
    ],
)
async def test_simulator_refuses_bad_order_parameters(
    keys: Keys, simulator_url: str, changes: dict[str, object], code: str
) -> None:
    answer = await signed_call(
        keys, simulator_url, "POST", "/v3/pay/transactions/native", native_body(**changes)
    )
    assert (answer.status_code, answer.json()["code"]) == (400, code)


async def test_simulator_query_needs_the_signers_mchid(keys: Keys, simulator_url: str) -> None:
    created = json.loads(native_body())
    await signed_call(
        keys, simulator_url, "POST", "/v3/pay/transactions/native", json.dumps(created).encode()
    )
    path = f"/v3/pay/transactions/out-trade-no/{created['out_trade_no']}"
    mine = await signed_call(keys, simulator_url, "GET", f"{path}?mchid={MCHID}")
    assert mine.status_code == 200 and mine.json()["trade_state"] == "NOTPAY"
    other = await signed_call(keys, simulator_url, "GET", f"{path}?mchid=1900000110")
    assert (other.status_code, other.json()["code"]) == (400, "PARAM_ERROR")


# -- amounts ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 8800, 100_000_000_00])
def test_fen_accepts_json_integers(value: int) -> None:
    assert fen(value) == value


@pytest.mark.parametrize("value", [88.0, "8800", True, -1, None, 1e2])
def test_fen_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError):
        fen(value)


@pytest.mark.parametrize("amount_fen", [1, 99, 100_000_000_00])
async def test_amounts_survive_the_round_trip_exactly(
    provider: WechatpayProvider, driver: WechatpayDriver, amount_fen: int
) -> None:
    out_trade_no, notification = await paid(provider, driver, amount_fen)
    event = await provider.parse_notification(notification)
    assert event is not None and event.amount_fen == amount_fen
    assert (await provider.query(out_trade_no)).amount_fen == amount_fen


# -- callbacks over HTTP -------------------------------------------------------------


async def test_paid_attempt_calls_back_and_is_accepted(
    provider: WechatpayProvider, receiver: tuple[NotifyReceiver, str], simulator_url: str
) -> None:
    notify, notify_url = receiver
    request = order(notify_url=notify_url)
    await provider.create_payment(request)
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{simulator_url}/pay/{request.out_trade_no}",
            data={"outcome": "success"},
            headers={"Accept": "application/json"},
        )
    assert answer.json() == {"trade_state": "SUCCESS", "delivered": 200}
    verdict = await notify.next()
    assert verdict.rejected is None and verdict.event is not None
    assert verdict.event.kind is EventKind.PAYMENT_SUCCEEDED
    assert verdict.event.out_trade_no == request.out_trade_no
    assert verdict.event.amount_fen == 8800 and verdict.event.currency == "CNY"
    assert verdict.event.provider_trade_no and verdict.event.occurred_at.tzinfo is not None


async def test_duplicate_late_and_out_of_order_callbacks(
    provider: WechatpayProvider, receiver: tuple[NotifyReceiver, str], simulator_url: str
) -> None:
    notify, notify_url = receiver
    request = order(notify_url=notify_url)
    await provider.create_payment(request)
    async with httpx.AsyncClient(base_url=simulator_url) as client:
        await client.post(f"/pay/{request.out_trade_no}", data={"outcome": "success"})
        payment = await notify.next()
        refund = refund_request(request.out_trade_no, 800)
        assert (await provider.refund(replace(refund, notify_url=notify_url))).state in (
            RefundState.PENDING,
            RefundState.SUCCEEDED,
        )
        refunded = await notify.next()
        assert refunded.event is not None
        assert refunded.event.kind is EventKind.REFUND_SUCCEEDED
        assert refunded.event.out_refund_no == refund.out_refund_no
        assert refunded.event.amount_fen == 800

        answer = await client.post(
            f"/control/notifications/{request.out_trade_no}/deliver",
            json={"order": [1, 0, 0], "delay_seconds": 0.2, "background": True},
        )
        assert answer.status_code == 202
    late = [await notify.next() for _ in range(3)]
    assert [v.event.kind for v in late if v.event] == [
        EventKind.REFUND_SUCCEEDED,
        EventKind.PAYMENT_SUCCEEDED,
        EventKind.PAYMENT_SUCCEEDED,
    ]
    assert payment.event is not None
    assert {v.event.event_id for v in late[1:] if v.event} == {payment.event.event_id}
    assert late[0].event is not None and late[0].event.event_id == refunded.event.event_id


async def test_an_unanswered_callback_is_delivered_again(
    keys: Keys, http: httpx.AsyncClient
) -> None:
    app = simulator_app(
        merchant(keys),
        redelivery_delays=(0.05, 0.05, 0.05),
    )
    with LoopbackServer(app) as simulator:
        provider = WechatpayProvider(settings(keys, simulator.url), branch=BRANCH, http=http)
        notify = NotifyReceiver(provider, asyncio.get_running_loop(), unavailable_for=2)
        with LoopbackServer(notify.app) as branchpay:
            request = order(notify_url=f"{branchpay.url}/notify/wechatpay/{BRANCH}")
            await provider.create_payment(request)
            answer = await http.post(
                f"{simulator.url}/pay/{request.out_trade_no}",
                data={"outcome": "success"},
                headers={"Accept": "application/json"},
            )
            assert answer.json()["delivered"] == 503
            verdicts = [await notify.next() for _ in range(3)]
        assert [v.rejected for v in verdicts[:2]] == ["branchpay unavailable"] * 2
        accepted = verdicts[2].event
        assert accepted is not None and accepted.out_trade_no == request.out_trade_no
        attempt = app.state.gateway.attempts[request.out_trade_no]
        assert attempt.deliveries == [503, 503, 200]


async def test_a_failed_or_closed_attempt_sends_no_callback(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    for outcome, state in (("fail", AttemptState.FAILED), ("close", AttemptState.CLOSED)):
        request = order()
        await provider.create_payment(request)
        assert await driver.settle(request.out_trade_no, outcome) is None  # type: ignore[arg-type]
        assert (await provider.query(request.out_trade_no)).state is state


# -- bad callbacks ---------------------------------------------------------------------


async def assert_rejected(
    provider: WechatpayProvider,
    notification: NotificationRequest,
    reason: str,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
) -> None:
    caplog.clear()
    with (
        caplog.at_level(logging.DEBUG, logger=LOGGER),
        pytest.raises(NotificationRejected) as caught,
    ):
        await provider.parse_notification(notification)
    assert reason in str(caught.value)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("rejected" in line and BRANCH in line for line in lines), lines
    fragments = secret_texts(keys)
    if "wechatpay-signature" in notification.headers:
        fragments.append(notification.headers["wechatpay-signature"])
    for fragment in fragments:
        assert fragment not in str(caught.value)
        assert all(fragment not in line for line in lines)
    reply = provider.notification_reply(accepted=False)
    assert reply.status_code == 400 and json.loads(reply.body)["code"] == "FAIL"


async def test_forged_unsigned_and_tampered_callbacks_are_rejected(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
) -> None:
    _, genuine = await paid(provider, driver)
    assert await provider.parse_notification(genuine) is not None
    cases = [
        (driver.forge(genuine), "does not verify"),
        (driver.unsigned(genuine), "Signature header is missing"),
        (driver.tamper(genuine), "does not verify"),
        (replace(genuine, body=genuine.body + b" "), "does not verify"),
    ]
    for notification, reason in cases:
        await assert_rejected(provider, notification, reason, caplog, keys)


async def test_stale_and_future_callbacks_are_rejected(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
) -> None:
    _, genuine = await paid(provider, driver)
    now = int(time.time())
    recent = driver.sign_anew(genuine, timestamp=now - 240)
    assert await provider.parse_notification(recent) is not None
    for moment in (now - 301, now - 86_400, now + 400):
        replayed = driver.sign_anew(genuine, timestamp=moment)
        await assert_rejected(provider, replayed, "more than 5 minutes", caplog, keys)


async def test_callback_under_another_key_id_is_rejected(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
) -> None:
    _, genuine = await paid(provider, driver)
    other_id = driver.sign_anew(genuine, serial="PUB_KEY_ID_0000000000000000000000000000")
    await assert_rejected(provider, other_id, "platform public key id", caplog, keys)
    wrong_type = dict(genuine.headers) | {"wechatpay-signature-type": "WECHATPAY2-SM2-WITH-SM3"}
    await assert_rejected(
        provider, replace(genuine, headers=wrong_type), "Signature-Type", caplog, keys
    )


async def test_callback_for_another_merchant_or_app_is_a_mismatch(
    keys: Keys,
    simulator_url: str,
    http: httpx.AsyncClient,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Same platform and APIv3 key, genuinely signed, but the branch is another merchant account."""
    other = WechatpayProvider(
        settings(keys, simulator_url, mchid="1900000110", appid="wx0000000000000110"),
        branch="bj",
        http=http,
    )
    request = order()
    await other.create_payment(request)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None and await other.parse_notification(notification)
    ours = WechatpayProvider(settings(keys, simulator_url), branch=BRANCH, http=http)
    same_merchant_other_app = WechatpayProvider(
        settings(keys, simulator_url, mchid="1900000110", appid="wx_another_app"),
        branch=BRANCH,
        http=http,
    )
    for provider, reason in ((ours, "mchid"), (same_merchant_other_app, "appid")):
        caplog.clear()
        with (
            caplog.at_level(logging.DEBUG, logger=LOGGER),
            pytest.raises(NotificationMismatch, match=reason),
        ):
            await provider.parse_notification(notification)
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert any("not ours" in line and BRANCH in line for line in lines), lines
        assert keys.apiv3_key not in caplog.text


async def test_callback_resigned_by_the_platform_for_another_merchant_is_a_mismatch(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    _, genuine = await paid(provider, driver)
    other = await driver.resign(genuine, merchant="1900000999")
    with pytest.raises(NotificationMismatch, match="mchid"):
        await provider.parse_notification(other)
    more = await provider.parse_notification(await driver.resign(genuine, amount_fen=8801))
    assert more is not None and more.amount_fen == 8801


async def test_callback_under_another_apiv3_key_is_rejected(
    keys: Keys,
    simulator_url: str,
    http: httpx.AsyncClient,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, genuine = await paid(
        WechatpayProvider(settings(keys, simulator_url), branch=BRANCH, http=http), driver
    )
    rotated = WechatpayProvider(
        settings(keys, simulator_url, apiv3_key="k" * 32), branch=BRANCH, http=http
    )
    await assert_rejected(rotated, genuine, "APIv3 key", caplog, keys)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"resource_type": "encrypt-resource"}', "resource is missing"),
        (b'{"resource_type": "plain"}', "encrypt-resource"),
        (
            b'{"resource_type": "encrypt-resource", "resource": {"algorithm": "AES-CBC"}}',
            "AEAD_AES_256_GCM",
        ),
        (
            b'{"resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",'
            b' "resource": {"algorithm": "AEAD_AES_256_GCM", "nonce": "abcdefghijkl",'
            b' "associated_data": "transaction", "ciphertext": "bm90IHNlYWxlZA=="}}',
            "does not decrypt",
        ),
    ],
)
async def test_malformed_bodies_are_rejected_even_when_signed(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
    body: bytes,
    reason: str,
) -> None:
    _, genuine = await paid(provider, driver)
    signed = driver.sign_anew(replace(genuine, body=body), timestamp=int(time.time()))
    await assert_rejected(provider, signed, reason, caplog, keys)


async def test_oversized_body_is_rejected_before_any_work(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
) -> None:
    _, genuine = await paid(provider, driver)
    huge = replace(genuine, body=genuine.body + b" " * (64 * 1024))
    await assert_rejected(provider, driver.sign_anew(huge), "larger", caplog, keys)


def rewritten(
    genuine: NotificationRequest,
    driver: WechatpayDriver,
    keys: Keys,
    change: Callable[[dict[str, Any], dict[str, Any]], None],
) -> NotificationRequest:
    """The callback as the platform itself would sign and encrypt it, with ``change`` applied.

    ``change`` gets the envelope and the decrypted resource and edits them in place.
    """
    envelope = json.loads(genuine.body)
    resource = envelope["resource"]
    key = keys.apiv3_key.encode()
    plaintext = signing.decrypt_resource(
        key, resource["ciphertext"], nonce=resource["nonce"], associated_data="transaction"
    )
    assert plaintext is not None
    fact = json.loads(plaintext)
    change(envelope, fact)
    resource["ciphertext"] = signing.encrypt_resource(
        key, json.dumps(fact).encode(), nonce=resource["nonce"], associated_data="transaction"
    )
    return driver.sign_anew(replace(genuine, body=json.dumps(envelope).encode()))


@pytest.mark.parametrize("amount", [8800.0, "8800", True, -8800, None])
async def test_callback_amount_must_be_integer_fen(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
    amount: object,
) -> None:
    """Signed and encrypted with the platform's own keys, yet not an amount WeChat Pay sends."""
    _, genuine = await paid(provider, driver)

    def set_amount(envelope: dict[str, Any], fact: dict[str, Any]) -> None:
        fact["amount"]["total"] = amount

    odd = rewritten(genuine, driver, keys, set_amount)
    await assert_rejected(provider, odd, "integer count of fen", caplog, keys)


async def test_callback_in_another_currency_is_rejected(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
) -> None:
    _, genuine = await paid(provider, driver)

    def in_dollars(envelope: dict[str, Any], fact: dict[str, Any]) -> None:
        fact["amount"]["currency"] = "USD"

    await assert_rejected(
        provider, rewritten(genuine, driver, keys, in_dollars), "CNY", caplog, keys
    )


async def test_genuine_callbacks_with_nothing_to_apply_give_no_event(
    provider: WechatpayProvider, driver: WechatpayDriver, keys: Keys
) -> None:
    _, genuine = await paid(provider, driver)

    def not_paid(envelope: dict[str, Any], fact: dict[str, Any]) -> None:
        fact["trade_state"] = "NOTPAY"

    def other_event(envelope: dict[str, Any], fact: dict[str, Any]) -> None:
        envelope["event_type"] = "MARKETING.COUPON.USED"

    for change in (not_paid, other_event):
        assert await provider.parse_notification(rewritten(genuine, driver, keys, change)) is None


def test_accepting_reply_is_wechat_json(provider: WechatpayProvider) -> None:
    reply = provider.notification_reply(accepted=True)
    assert reply.status_code == 200 and reply.media_type == "application/json"
    assert json.loads(reply.body)["code"] == "SUCCESS"


# -- query, refund, close ---------------------------------------------------------------


async def test_query_states(provider: WechatpayProvider, driver: WechatpayDriver) -> None:
    assert (await provider.query(new_no())).state is AttemptState.UNKNOWN
    request = order()
    await provider.create_payment(request)
    pending = await provider.query(request.out_trade_no)
    assert pending.state is AttemptState.PENDING and pending.events == ()
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    event = await provider.parse_notification(notification)
    result = await provider.query(request.out_trade_no)
    assert result.state is AttemptState.SUCCEEDED and result.amount_fen == 8800
    assert event is not None and [e.event_id for e in result.events] == [event.event_id]


async def test_partial_then_full_refund_and_over_refund(
    provider: WechatpayProvider, driver: WechatpayDriver, sim: Gateway
) -> None:
    out_trade_no, _ = await paid(provider, driver)
    first = await provider.refund(refund_request(out_trade_no, 3000))
    assert first.state is RefundState.PENDING and first.provider_refund_no
    with pytest.raises(GatewayError, match="INVALID_REQUEST") as caught:
        await provider.refund(refund_request(out_trade_no, 5801))
    assert not caught.value.retryable and not caught.value.outcome_unknown
    rest = await provider.refund(refund_request(out_trade_no, 5800))
    assert rest.state is RefundState.PENDING
    assert sim.attempts[out_trade_no].refunded() == 8800
    assert (await provider.query(out_trade_no)).state is AttemptState.SUCCEEDED
    with pytest.raises(GatewayError):
        await provider.refund(refund_request(out_trade_no, 1))


async def test_refund_with_the_same_number_refunds_once(
    provider: WechatpayProvider, driver: WechatpayDriver, sim: Gateway
) -> None:
    out_trade_no, _ = await paid(provider, driver)
    request = refund_request(out_trade_no, 4000)
    first = await provider.refund(request)
    again = await provider.refund(request)
    assert again.provider_refund_no == first.provider_refund_no
    assert again.state is RefundState.SUCCEEDED
    assert sim.attempts[out_trade_no].refunded() == 4000


async def test_refund_of_an_unpaid_attempt_is_refused(provider: WechatpayProvider) -> None:
    request = order()
    await provider.create_payment(request)
    with pytest.raises(GatewayError, match="not paid"):
        await provider.refund(refund_request(request.out_trade_no, 100))


async def test_close(provider: WechatpayProvider, driver: WechatpayDriver) -> None:
    request = order()
    await provider.create_payment(request)
    await provider.close(request.out_trade_no)
    await provider.close(request.out_trade_no)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.CLOSED
    with pytest.raises(GatewayError, match="ORDER_CLOSED"):
        await provider.create_payment(request)
    await provider.close(new_no())
    out_trade_no, _ = await paid(provider, driver)
    with pytest.raises(GatewayError, match="ORDERPAID"):
        await provider.close(out_trade_no)


# -- failures and the retry policy ------------------------------------------------------


async def add_fault(simulator_url: str, **fault: object) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{simulator_url}/control/faults", json=fault)
        assert answer.status_code == 204


@pytest.fixture
async def clean_faults(sim: Gateway, simulator_url: str) -> AsyncIterator[Gateway]:
    yield sim
    async with httpx.AsyncClient() as client:
        await client.delete(f"{simulator_url}/control/faults")


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.name == LOGGER and "failed (" in r.getMessage())


async def test_query_is_retried_through_server_errors(
    provider: WechatpayProvider,
    simulator_url: str,
    clean_faults: Gateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = order()
    await provider.create_payment(request)
    await add_fault(simulator_url, kind="error", times=2, path="/v3/pay/transactions/out-trade-no")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = await provider.query(request.out_trade_no)
    assert result.state is AttemptState.PENDING
    assert retries_logged(caplog) == 2 and clean_faults.faults.pending == []


async def test_query_gives_up_after_max_attempts(
    provider: WechatpayProvider, simulator_url: str, clean_faults: Gateway
) -> None:
    request = order()
    await provider.create_payment(request)
    await add_fault(simulator_url, kind="error", times=4, path="/v3/pay/transactions/out-trade-no")
    with pytest.raises(GatewayError, match="after 3 tries") as caught:
        await provider.query(request.out_trade_no)
    assert caught.value.retryable
    assert clean_faults.faults.pending[0].remaining == 1, (
        "exactly max_attempts calls reached the platform"
    )


async def test_order_is_never_repeated_and_a_server_error_leaves_it_unknown(
    provider: WechatpayProvider, simulator_url: str, clean_faults: Gateway
) -> None:
    await add_fault(simulator_url, kind="error", times=2, path="/v3/pay/transactions/native")
    with pytest.raises(GatewayError) as caught:
        await provider.create_payment(order())
    assert not caught.value.retryable and caught.value.outcome_unknown
    assert clean_faults.faults.pending[0].remaining == 1, "the order was sent once"


async def test_order_timeout_is_unknown_and_not_guessed(
    keys: Keys,
    simulator_url: str,
    http: httpx.AsyncClient,
    clean_faults: Gateway,
) -> None:
    hasty = WechatpayProvider(
        settings(keys, simulator_url, timeout_seconds=0.2), branch=BRANCH, http=http
    )
    await add_fault(simulator_url, kind="stall", stall_seconds=0.6, path="/v3/pay/transactions/")
    request = order()
    with pytest.raises(GatewayError, match="no answer") as caught:
        await hasty.create_payment(request)
    assert caught.value.outcome_unknown and not caught.value.retryable
    # The platform did take the order: only a query can tell, never the failed call.
    assert (await hasty.query(request.out_trade_no)).state is AttemptState.PENDING


async def test_refund_timeout_is_retried_with_the_same_number(
    keys: Keys,
    simulator_url: str,
    http: httpx.AsyncClient,
    driver: WechatpayDriver,
    clean_faults: Gateway,
) -> None:
    hasty = WechatpayProvider(
        settings(keys, simulator_url, timeout_seconds=0.2), branch=BRANCH, http=http
    )
    out_trade_no, _ = await paid(hasty, driver)
    await add_fault(simulator_url, kind="stall", stall_seconds=0.6, path="/v3/refund")
    result = await hasty.refund(refund_request(out_trade_no, 2000))
    # The stalled first try refunded; the repeat found that refund instead of a second one.
    assert result.state is RefundState.SUCCEEDED
    assert clean_faults.attempts[out_trade_no].refunded() == 2000


async def test_closed_port_order_did_not_reach_and_close_is_retried(
    keys: Keys, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = WechatpayProvider(
        settings(keys, f"http://127.0.0.1:{port}"), branch=BRANCH, http=http
    )
    with pytest.raises(GatewayError, match="not sent") as caught:
        await nowhere.create_payment(order())
    assert not caught.value.outcome_unknown and not caught.value.retryable
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(GatewayError) as closing:
        await nowhere.close(new_no())
    assert closing.value.retryable and not closing.value.outcome_unknown
    assert retries_logged(caplog) == 2
    for fragment in secret_texts(keys):
        assert all(fragment not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["unsigned", "forged"])
async def test_untrusted_gateway_replies_are_not_believed(
    provider: WechatpayProvider,
    driver: WechatpayDriver,
    simulator_url: str,
    clean_faults: Gateway,
    kind: str,
) -> None:
    out_trade_no, _ = await paid(provider, driver)
    await add_fault(simulator_url, kind=kind, path="/v3/pay/transactions/out-trade-no")
    with pytest.raises(GatewayError, match="not trusted"):
        await provider.query(out_trade_no)
    await add_fault(simulator_url, kind=kind, path="/v3/pay/transactions/native")
    with pytest.raises(GatewayError, match="not trusted") as caught:
        await provider.create_payment(order())
    assert caught.value.outcome_unknown


# -- demo --------------------------------------------------------------------------------


async def test_demo_keys_and_simulator_work_end_to_end(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    secrets_dir = tmp_path / "secrets"
    demo.ensure_demo_keys(secrets_dir)
    files = sorted(p.name for p in secrets_dir.iterdir())
    assert files == sorted(
        [
            demo.MERCHANT_KEY_FILE,
            demo.MERCHANT_PUBLIC_FILE,
            demo.PLATFORM_KEY_FILE,
            demo.PLATFORM_PUBLIC_FILE,
            demo.APIV3_KEY_FILE,
        ]
    )
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets_dir.iterdir())
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir()}
    demo.ensure_demo_keys(secrets_dir)
    assert before == {p.name: p.read_bytes() for p in secrets_dir.iterdir()}

    with LoopbackServer(demo.demo_simulator(secrets_dir)) as server:
        branch_settings = settings_from_plugins_toml(tmp_path, server.url)
        provider = WechatpayProvider(branch_settings, branch="zj", http=http)
        notify = NotifyReceiver(provider, asyncio.get_running_loop())
        with LoopbackServer(notify.app) as branchpay:
            request = order(notify_url=f"{branchpay.url}/notify/wechatpay/zj")
            action = await provider.create_payment(request)
            assert action.qr_code == f"{server.url}/pay/{request.out_trade_no}"
            page = await http.get(action.qr_code)
            assert "88.00" in page.text
            await http.post(action.qr_code, data={"outcome": "success"})
            verdict = await notify.next()
        assert verdict.event is not None and verdict.event.out_trade_no == request.out_trade_no
        assert (await provider.query(request.out_trade_no)).state is AttemptState.SUCCEEDED


def settings_from_plugins_toml(root: Path, gateway: str) -> WechatpaySettings:
    """The demo branch's table, read the way branchpay reads plugins.toml."""
    path = root / "plugins.toml"
    path.write_text(
        f"""
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.wechatpay]
enabled = true
mchid = "{demo.DEMO_MCHID}"
appid = "{demo.DEMO_APPID}"
private_key = {{ file = "secrets/{demo.MERCHANT_KEY_FILE}" }}
cert_serial_no = "{demo.DEMO_CERT_SERIAL_NO}"
apiv3_key = {{ file = "secrets/{demo.APIV3_KEY_FILE}" }}
platform_public_key = {{ file = "secrets/{demo.PLATFORM_PUBLIC_FILE}" }}
platform_public_key_id = "{demo.DEMO_PLATFORM_PUBLIC_KEY_ID}"
gateway = "{gateway}"
"""
    )
    config = load_config(path, {"wechatpay": WechatpayProvider})
    loaded = config.branches["zj"].providers["wechatpay"].settings
    assert isinstance(loaded, WechatpaySettings)
    return loaded


def test_plugins_toml_with_a_bad_apiv3_key_names_the_field_not_the_key(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    demo.ensure_demo_keys(secrets_dir)
    (secrets_dir / demo.APIV3_KEY_FILE).write_text("too-short-apiv3-key")
    with pytest.raises(ConfigError) as caught:
        settings_from_plugins_toml(tmp_path, "http://127.0.0.1:8011")
    message = str(caught.value)
    assert "apiv3_key" in message and "32 bytes" in message
    assert "too-short-apiv3-key" not in message
