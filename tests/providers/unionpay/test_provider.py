"""The UnionPay adapter against its simulator over real loopback HTTP.

Covers the signMethod 01 signature (cross-checked with the openssl command
line), the gateway's answer format, settings, amounts, every create method,
front and back notifications (genuine, duplicate, delayed, out of order, and
each way of being bad), query, refund, close, the retry policy and the demo.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pydantic import ValidationError

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
from providers.unionpay import UnionpayProvider, demo, message, pki
from providers.unionpay.driver import UnionpayDriver, form_notification, read_form
from providers.unionpay.settings import UnionpaySettings
from tests.providers.unionpay.support import (
    BRANCH,
    MER_ID,
    NotifyReceiver,
    chain,
    other_chain,
    platform_signed,
    settings,
)

LOGGER = "branchpay.providers.unionpay"


@pytest.fixture(scope="module")
async def receiver(simulator: LoopbackServer) -> AsyncIterator[tuple[NotifyReceiver, str]]:
    async with httpx.AsyncClient() as unused:
        parser = UnionpayProvider(settings(simulator.url), branch=BRANCH, http=unused)
        notify = NotifyReceiver(parser, asyncio.get_running_loop())
        with LoopbackServer(notify.app) as server:
            yield notify, f"{server.url}/notify/unionpay/{BRANCH}"


@pytest.fixture
def driver(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayDriver:
    return UnionpayDriver(simulator.url, http, forger_key=other_chain().platform_key)


def new_no(label: str = "ut") -> str:
    """A number as the contract promises: the UTC creation second, then anything unique."""
    return stamped_no(datetime.now(UTC), label)


def stamped_no(at: datetime, label: str = "ut") -> str:
    return f"{at:%y%m%d%H%M%S}" + label + uuid.uuid4().hex[:16]


def payment(
    method: PaymentMethod,
    notify_url: str = "http://127.0.0.1:9/notify/unionpay/zj-mobile",
    *,
    amount_fen: int = 8800,
    out_trade_no: str | None = None,
) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=out_trade_no or new_no(),
        amount_fen=amount_fen,
        currency="CNY",
        subject="5G plan, 12 months",
        method=method,
        notify_url=notify_url,
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        return_url="https://partner.example/orders/return",
    )


def fields_of(notification: NotificationRequest) -> dict[str, str]:
    return dict(parse_qsl(notification.body.decode("utf-8"), keep_blank_values=True))


async def paid(
    provider: UnionpayProvider, driver: UnionpayDriver, amount_fen: int = 8800
) -> tuple[str, NotificationRequest]:
    request = payment(PaymentMethod.QR_CODE, amount_fen=amount_fen)
    await provider.create_payment(request)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    return request.out_trade_no, notification


async def sim_state(
    http: httpx.AsyncClient, simulator: LoopbackServer, order_id: str
) -> dict[str, Any]:
    response = await http.get(f"{simulator.url}/control/transactions/{order_id}")
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


async def fault(
    http: httpx.AsyncClient, simulator: LoopbackServer, endpoint: str, mode: str, **more: object
) -> None:
    spec = {"endpoint": endpoint, "mode": mode, **more}
    (await http.post(f"{simulator.url}/control/faults", json=spec)).raise_for_status()


# --- signatures and the wire format ---------------------------------------------------


def test_sign_verify_round_trip() -> None:
    c = chain()
    fields = {"version": "5.1.0", "txnAmt": "8800", "orderId": "ut12345678", "reserved": ""}
    fields["signature"] = message.sign(fields, c.merchant_key)
    public = c.merchant_cert.public_key()
    assert isinstance(public, RSAPublicKey)
    message.verify(fields, public)
    with pytest.raises(message.SignatureInvalid):
        message.verify({**fields, "txnAmt": "8801"}, public)
    with pytest.raises(message.SignatureInvalid):
        message.verify({**fields, "extra": "x"}, public)
    other = other_chain().merchant_cert.public_key()
    assert isinstance(other, RSAPublicKey)
    with pytest.raises(message.SignatureInvalid):
        message.verify(fields, other)


def test_canonical_form_sorts_and_leaves_out_signature() -> None:
    text = message.canonical({"txnAmt": "1", "signature": "zz", "bizType": "000201", "a": ""})
    assert text == "a=&bizType=000201&txnAmt=1"


def test_signature_agrees_with_openssl(tmp_path: Path) -> None:
    """openssl verifies what we sign, and we verify what openssl signs (SHA256withRSA over hex)."""
    c = chain()
    fields = {
        "merId": MER_ID,
        "orderId": "ut12345678",
        "txnAmt": "8800",
        "txnTime": "20261125120000",
    }
    digest_hex = hashlib.sha256(message.canonical(fields).encode()).hexdigest()
    data = tmp_path / "digest.txt"
    data.write_text(digest_hex)
    public_pem = tmp_path / "pub.pem"
    public_pem.write_bytes(
        c.merchant_cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    sig = tmp_path / "sig.bin"
    sig.write_bytes(base64.b64decode(message.sign(fields, c.merchant_key)))
    ok = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", public_pem, "-signature", sig, data],
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    data.write_text(digest_hex[:-1] + ("0" if digest_hex[-1] != "0" else "1"))
    bad = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", public_pem, "-signature", sig, data],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0

    key_pem = tmp_path / "key.pem"
    key_pem.write_text(pki.key_pem(c.merchant_key))
    key_pem.chmod(0o600)
    data.write_text(digest_hex)
    made = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key_pem, data], capture_output=True, check=True
    )
    signed = {**fields, "signature": base64.b64encode(made.stdout).decode()}
    public = c.merchant_cert.public_key()
    assert isinstance(public, RSAPublicKey)
    message.verify(signed, public)
    with pytest.raises(message.SignatureInvalid):
        message.verify({**signed, "txnAmt": "8000"}, public)


def test_answer_format_keeps_braced_values_and_pem() -> None:
    pem = pki.cert_pem(chain().platform_cert)
    text = f"respCode=00&reserved={{a=1&b=2}}&riskRateInfo=[x&y]&signPubKeyCert={pem}&empty=&tn=123"
    parsed = message.parse_response(text)
    assert parsed["reserved"] == "{a=1&b=2}"
    assert parsed["riskRateInfo"] == "[x&y]"
    assert parsed["signPubKeyCert"] == pem
    assert parsed["empty"] == ""
    assert parsed["tn"] == "123"
    assert message.parse_response(message.format_response(parsed)) == parsed
    with pytest.raises(ValueError):
        message.parse_response("respCode=00&dangling")


def test_platform_certificate_checks() -> None:
    c, o = chain(), other_chain()
    message.verify_platform_cert(
        c.platform_cert, middle=c.middle_cert, root=c.root_cert, validate_owner=True
    )
    with pytest.raises(message.SignatureInvalid, match="chain"):
        message.verify_platform_cert(
            o.platform_cert, middle=c.middle_cert, root=c.root_cert, validate_owner=True
        )
    with pytest.raises(message.SignatureInvalid, match="validity"):
        message.verify_platform_cert(
            c.platform_cert,
            middle=c.middle_cert,
            root=c.root_cert,
            validate_owner=True,
            now=datetime.now(UTC) + timedelta(days=4000),
        )


# --- settings ---------------------------------------------------------------------------


def test_settings_hide_the_signing_key() -> None:
    s = settings("http://127.0.0.1:1")
    secret = s.sign_cert_private_key.get_secret_value()
    body = secret.splitlines()[1]
    assert body not in repr(s) and body not in str(s) and body not in s.model_dump_json()


def test_settings_default_to_the_production_gateway() -> None:
    given = settings("http://127.0.0.1:1").model_dump(exclude={"gateway"})
    given["sign_cert_private_key"] = pki.key_pem(chain().merchant_key)
    assert UnionpaySettings.model_validate(given).gateway == "https://gateway.95516.com"


def test_settings_errors_name_the_field_not_the_key() -> None:
    key = pki.key_pem(chain().merchant_key)
    broken = key.replace(key.splitlines()[3], "A" * 64)
    with pytest.raises(ValidationError) as caught:
        settings("http://127.0.0.1:1", sign_cert_private_key=broken)
    text = str(caught.value)
    assert "sign_cert_private_key" in text and "A" * 64 not in text
    assert key.splitlines()[2] not in text
    with pytest.raises(ValidationError) as mismatch:
        settings(
            "http://127.0.0.1:1", sign_cert_private_key=pki.key_pem(other_chain().merchant_key)
        )
    assert "does not belong to sign_cert" in str(mismatch.value)
    with pytest.raises(ValidationError):
        settings("http://127.0.0.1:1", mer_id="12345")
    with pytest.raises(ValidationError):
        settings("http://127.0.0.1:1", middle_cert="not a certificate")


# --- amounts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fen", "text"), [(1, "1"), (8800, "8800"), (999_999_999_999, "999999999999")]
)
def test_txn_amt_is_fen(fen: int, text: str) -> None:
    assert message.format_fen(fen) == text
    assert message.parse_fen(text) == fen


@pytest.mark.parametrize("bad", [0, -1, 1_000_000_000_000])
def test_txn_amt_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        message.format_fen(bad)


@pytest.mark.parametrize("bad", [88.0, True, "8800"])
def test_txn_amt_must_be_int(bad: object) -> None:
    with pytest.raises(TypeError):
        message.format_fen(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", ["", "88.00", "-1", "+1", "1e3", "\uff18\uff18", "1234567890123", " 1"]
)
def test_txn_amt_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        message.parse_fen(bad)


# --- create -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "channel"), [(PaymentMethod.PAGE, "07"), (PaymentMethod.WAP, "08")]
)
async def test_front_consume_form(
    provider: UnionpayProvider, driver: UnionpayDriver, method: PaymentMethod, channel: str
) -> None:
    request = payment(method, amount_fen=12345)
    action = await provider.create_payment(request)
    assert action.kind is ActionKind.FORM_POST and action.form_html
    url, fields = read_form(action.form_html)
    assert url.endswith("/gateway/api/frontTransReq.do")
    assert fields["channelType"] == channel
    assert fields["txnAmt"] == "12345" and fields["currencyCode"] == "156"
    assert fields["orderId"] == request.out_trade_no and fields["merId"] == MER_ID
    assert fields["certId"] == str(chain().merchant_cert.serial_number)
    assert fields["payTimeout"] == message.beijing_time(request.expires_at)
    assert fields["frontUrl"] == request.return_url
    page = await driver.submit(action.form_html)
    assert page.status_code == 200 and "123.45" in page.text


async def test_front_consume_form_refused_when_tampered(
    provider: UnionpayProvider, driver: UnionpayDriver, http: httpx.AsyncClient
) -> None:
    action = await provider.create_payment(payment(PaymentMethod.PAGE))
    assert action.form_html
    url, fields = read_form(action.form_html)
    response = await http.post(url, data={**fields, "txnAmt": "1"})
    assert response.status_code == 400 and "11" in response.text


async def test_app_gets_tn(
    provider: UnionpayProvider, simulator: LoopbackServer, http: httpx.AsyncClient
) -> None:
    request = payment(PaymentMethod.APP)
    action = await provider.create_payment(request)
    assert action.kind is ActionKind.APP_SDK
    state = await sim_state(http, simulator, request.out_trade_no)
    assert action.app_payload == state["tn"] and state["status"] == "pending"


async def test_qr_code_points_at_pay_page(
    provider: UnionpayProvider, simulator: LoopbackServer, http: httpx.AsyncClient
) -> None:
    action = await provider.create_payment(payment(PaymentMethod.QR_CODE, amount_fen=1))
    assert action.kind is ActionKind.QR_CODE and action.qr_code
    assert action.qr_code.startswith(simulator.url + "/pay/")
    page = await http.get(action.qr_code)
    assert page.status_code == 200 and "0.01" in page.text


async def test_create_refuses_other_currency(provider: UnionpayProvider) -> None:
    with pytest.raises(GatewayError, match="CNY"):
        await provider.create_payment(replace(payment(PaymentMethod.QR_CODE), currency="USD"))


async def test_repeated_order_id_is_a_duplicate_at_the_gateway(provider: UnionpayProvider) -> None:
    request = payment(PaymentMethod.APP)
    await provider.create_payment(request)
    with pytest.raises(GatewayError, match="12"):
        await provider.create_payment(request)


# --- notifications --------------------------------------------------------------------


async def test_back_notification_delivered_and_accepted(
    provider: UnionpayProvider,
    receiver: tuple[NotifyReceiver, str],
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    notify, notify_url = receiver
    request = payment(PaymentMethod.QR_CODE, notify_url, amount_fen=4321)
    action = await provider.create_payment(request)
    assert action.qr_code
    paid_now = await http.post(
        action.qr_code, data={"outcome": "success"}, headers={"accept": "application/json"}
    )
    assert paid_now.json()["delivered"] == 200
    verdict = await notify.next()
    assert verdict.status_code == 200 and verdict.rejected is None
    event = verdict.event
    assert event.kind is EventKind.PAYMENT_SUCCEEDED
    assert (event.out_trade_no, event.amount_fen, event.currency) == (
        request.out_trade_no,
        4321,
        "CNY",
    )
    assert event.provider_trade_no and event.occurred_at.tzinfo is not None
    assert "accNo" not in event.detail
    assert (await sim_state(http, simulator, request.out_trade_no))["deliveries"] == [200]


async def test_duplicate_delayed_and_out_of_order_notifications(
    provider: UnionpayProvider,
    receiver: tuple[NotifyReceiver, str],
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    notify, notify_url = receiver
    request = payment(PaymentMethod.QR_CODE, notify_url)
    action = await provider.create_payment(request)
    assert action.qr_code
    await http.post(
        action.qr_code, data={"outcome": "success"}, headers={"accept": "application/json"}
    )
    first = (await notify.next()).event

    again = await http.post(
        f"{simulator.url}/control/notifications/{request.out_trade_no}/redeliver",
        data={"count": "2"},
    )
    assert again.json()["delivered"] == [200, 200]
    for _ in range(2):
        assert (await notify.next()).event.event_id == first.event_id

    later = await http.post(
        f"{simulator.url}/control/notifications/{request.out_trade_no}/redeliver",
        data={"delay": "0.2"},
    )
    assert later.status_code == 202
    assert (await notify.next()).event.event_id == first.event_id

    refund_no = new_no("rf")
    result = await provider.refund(
        RefundRequest(request.out_trade_no, refund_no, 800, 8800, "CNY", notify_url=notify_url)
    )
    assert result.state is RefundState.PENDING
    refunded = (await notify.next()).event
    assert refunded.kind is EventKind.REFUND_SUCCEEDED
    assert (refunded.out_trade_no, refunded.out_refund_no, refunded.amount_fen) == (
        request.out_trade_no,
        refund_no,
        800,
    )
    # The payment's notification arriving after the refund's is still the same fact.
    await http.post(f"{simulator.url}/control/notifications/{request.out_trade_no}/redeliver")
    late = (await notify.next()).event
    assert (late.kind, late.event_id) == (EventKind.PAYMENT_SUCCEEDED, first.event_id)


async def test_front_notification_is_verified_like_the_back_one(
    provider: UnionpayProvider, driver: UnionpayDriver, http: httpx.AsyncClient
) -> None:
    request = payment(PaymentMethod.PAGE)
    action = await provider.create_payment(request)
    assert action.form_html
    page = await driver.submit(action.form_html)
    tn = await driver.tn_of(request.out_trade_no)
    browser = await http.post(f"{driver.base_url}/pay/{tn}", data={"outcome": "success"})
    front_url, front_fields = read_form(browser.text)
    assert page.status_code == 200 and front_url == request.return_url
    front_event = await provider.parse_notification(form_notification(front_fields))
    back_event = await provider.parse_notification(await driver.notification(request.out_trade_no))
    assert front_event is not None and back_event is not None
    assert front_event.event_id == back_event.event_id
    assert front_event.kind is EventKind.PAYMENT_SUCCEEDED
    with pytest.raises(NotificationRejected):
        await provider.parse_notification(form_notification({**front_fields, "txnAmt": "1"}))


def _rejections(genuine: dict[str, str]) -> dict[str, NotificationRequest]:
    c, o = chain(), other_chain()
    wrong_owner = pki.issue(
        pki.platform_cn("某某支付公司"),
        c.platform_key,
        "Stand-in UnionPay Middle",
        c.middle_key,
        ca=False,
    )
    no_sig = {k: v for k, v in genuine.items() if k != "signature"}
    no_cert = {k: v for k, v in genuine.items() if k != "signPubKeyCert"}
    return {
        "forged with another key": form_notification(
            {**genuine, "signature": message.sign(genuine, o.platform_key)}
        ),
        "signed under another CA": form_notification(platform_signed(genuine, o)),
        "certificate of another owner": form_notification(
            {
                **genuine,
                "signPubKeyCert": pki.cert_pem(wrong_owner),
                "signature": message.sign(
                    {**genuine, "signPubKeyCert": pki.cert_pem(wrong_owner)}, c.platform_key
                ),
            }
        ),
        "tampered amount": form_notification({**genuine, "txnAmt": "1"}),
        "tampered orderId": form_notification({**genuine, "orderId": "ut00000000000"}),
        "unsigned": form_notification(no_sig),
        "no certificate": form_notification(no_cert),
        "other currency": form_notification(platform_signed({**genuine, "currencyCode": "840"})),
        "amount not fen": form_notification(platform_signed({**genuine, "txnAmt": "88.00"})),
        "wrong version": form_notification(platform_signed({**genuine, "version": "5.0.0"})),
        "malformed body": NotificationRequest("POST", {}, {}, b"\xff\xfe not a form"),
        "json body": NotificationRequest("POST", {}, {}, b'{"respCode": "00"}'),
        "field twice": NotificationRequest(
            "POST", {}, {}, urlencode(genuine).encode() + b"&txnAmt=1"
        ),
        "oversized body": NotificationRequest(
            "POST", {}, {}, urlencode(genuine).encode() + b"&pad=" + b"x" * 70_000
        ),
        "not a POST": NotificationRequest("GET", {}, {}, urlencode(genuine).encode()),
        "empty body": NotificationRequest("POST", {}, {}, b""),
    }


async def test_bad_notifications_rejected_without_secrets_in_logs(
    provider: UnionpayProvider, driver: UnionpayDriver, caplog: pytest.LogCaptureFixture
) -> None:
    _, notification = await paid(provider, driver)
    genuine = fields_of(notification)
    assert await provider.parse_notification(notification) is not None
    secret_line = pki.key_pem(chain().merchant_key).splitlines()[2]
    for case, bad in _rejections(genuine).items():
        caplog.clear()
        with (
            caplog.at_level(logging.INFO, logger=LOGGER),
            pytest.raises(NotificationRejected) as caught,
        ):
            await provider.parse_notification(bad)
        assert caught.value.args[0], case
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert any("rejected" in line for line in lines), f"{case}: no log line"
        assert not any(secret_line in line for line in lines), f"{case}: key in the log"
        assert secret_line not in str(caught.value)


async def test_genuine_notification_of_another_merid_is_a_mismatch(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    _, notification = await paid(provider, driver)
    other = platform_signed({**fields_of(notification), "merId": "898111111111111"})
    with pytest.raises(NotificationMismatch) as caught:
        await provider.parse_notification(form_notification(other))
    assert "898111111111111" in str(caught.value) and MER_ID in str(caught.value)


async def test_reply_is_200_only_when_accepted(provider: UnionpayProvider) -> None:
    assert provider.notification_reply(accepted=True).status_code == 200
    assert provider.notification_reply(accepted=False).status_code != 200


async def test_test_environment_owner_needs_validate_cn_name_off(
    provider: UnionpayProvider,
    simulator: LoopbackServer,
    http: httpx.AsyncClient,
    driver: UnionpayDriver,
) -> None:
    _, notification = await paid(provider, driver)
    test_env = gateway_test_env_chain()
    fields = platform_signed(fields_of(notification), test_env)
    trusting_test_env = {
        "middle_cert": pki.cert_pem(test_env.middle_cert),
        "root_cert": pki.cert_pem(test_env.root_cert),
    }
    strict = UnionpayProvider(
        settings(simulator.url, **trusting_test_env), branch=BRANCH, http=http
    )
    with pytest.raises(NotificationRejected, match="not owned by UnionPay"):
        await strict.parse_notification(form_notification(fields))
    lenient = UnionpayProvider(
        settings(simulator.url, validate_cn_name=False, **trusting_test_env),
        branch=BRANCH,
        http=http,
    )
    assert await lenient.parse_notification(form_notification(fields)) is not None


@cache
def gateway_test_env_chain() -> pki.Chain:
    """A chain like the test environment's, whose signing certificate names 00040000:SIGN."""
    return pki.issue_chain(owner=message.TEST_CERT_OWNER)


# --- query, refund, close -------------------------------------------------------------


async def test_query_follows_the_attempt(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    assert (await provider.query(new_no())).state is AttemptState.UNKNOWN
    request = payment(PaymentMethod.QR_CODE, amount_fen=2500)
    await provider.create_payment(request)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    event = await provider.parse_notification(notification)
    result = await provider.query(request.out_trade_no)
    assert result.state is AttemptState.SUCCEEDED and result.amount_fen == 2500
    assert event is not None and [e.event_id for e in result.events] == [event.event_id]
    assert result.provider_trade_no == event.provider_trade_no


async def test_failed_payment_queries_failed(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    request = payment(PaymentMethod.APP)
    await provider.create_payment(request)
    assert await driver.settle(request.out_trade_no, "fail") is None
    assert (await provider.query(request.out_trade_no)).state is AttemptState.FAILED


async def test_partial_full_idempotent_and_over_refund(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    out_trade_no, _ = await paid(provider, driver, 1000)

    def refund(no: str, fen: int) -> RefundRequest:
        return RefundRequest(out_trade_no, no, fen, 1000, "CNY", notify_url="http://127.0.0.1:9/n")

    first = new_no("rf")
    assert (await provider.refund(refund(first, 300))).state is RefundState.PENDING
    repeated = await provider.refund(refund(first, 300))
    assert repeated.state is RefundState.SUCCEEDED
    assert (await sim_state(http, simulator, out_trade_no))["refundedFen"] == 300
    over = await provider.refund(refund(new_no("rf"), 701))
    assert over.state is RefundState.FAILED and over.message and "36" in over.message
    assert (await provider.refund(refund(new_no("rf"), 700))).state is RefundState.PENDING
    assert (await sim_state(http, simulator, out_trade_no))["refundedFen"] == 1000
    assert (await provider.refund(refund(new_no("rf"), 1))).state is RefundState.FAILED


async def test_refund_of_unpaid_attempt_fails(provider: UnionpayProvider) -> None:
    request = payment(PaymentMethod.QR_CODE)
    await provider.create_payment(request)
    result = await provider.refund(
        RefundRequest(request.out_trade_no, new_no("rf"), 100, 8800, "CNY")
    )
    assert result.state is RefundState.FAILED and "PENDING" in (result.message or "")


async def test_close(provider: UnionpayProvider, driver: UnionpayDriver) -> None:
    await provider.close(new_no())
    request = payment(PaymentMethod.QR_CODE)
    await provider.create_payment(request)
    await provider.close(request.out_trade_no)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.CLOSED
    out_trade_no, _ = await paid(provider, driver)
    with pytest.raises(GatewayError, match="refund it instead"):
        await provider.close(out_trade_no)
    assert (await provider.query(out_trade_no)).state is AttemptState.SUCCEEDED


async def test_payment_after_close_still_wins(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    request = payment(PaymentMethod.QR_CODE)
    await provider.create_payment(request)
    await provider.close(request.out_trade_no)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    event = await provider.parse_notification(notification)
    assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
    assert (await provider.query(request.out_trade_no)).state is AttemptState.SUCCEEDED


# --- failures and the retry policy ----------------------------------------------------


async def test_query_retries_gateway_errors(
    provider: UnionpayProvider,
    simulator: LoopbackServer,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = payment(PaymentMethod.QR_CODE)
    await provider.create_payment(request)
    await fault(http, simulator, "queryTrans.do", "error", count=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING
    assert sum("try" in r.getMessage() for r in caplog.records) == 2
    await fault(http, simulator, "queryTrans.do", "error", count=3)
    with pytest.raises(GatewayError) as caught:
        await provider.query(request.out_trade_no)
    assert caught.value.retryable and "3 tries" in str(caught.value)


async def test_query_retries_a_stalled_gateway(
    simulator: LoopbackServer, http: httpx.AsyncClient
) -> None:
    quick = UnionpayProvider(settings(simulator.url, timeout_seconds=0.3), branch=BRANCH, http=http)
    request = payment(PaymentMethod.QR_CODE)
    await quick.create_payment(request)
    await fault(http, simulator, "queryTrans.do", "stall", count=1, stall_seconds=2)
    assert (await quick.query(request.out_trade_no)).state is AttemptState.PENDING


async def test_create_is_tried_once(
    provider: UnionpayProvider, simulator: LoopbackServer, http: httpx.AsyncClient
) -> None:
    await fault(http, simulator, "appTransReq.do", "error", count=2)
    with pytest.raises(GatewayError) as caught:
        await provider.create_payment(payment(PaymentMethod.APP))
    assert caught.value.outcome_unknown and not caught.value.retryable
    # One fault is left: the adapter did not try again on its own.
    with pytest.raises(GatewayError):
        await provider.create_payment(payment(PaymentMethod.APP))
    assert (await provider.create_payment(payment(PaymentMethod.APP))).app_payload


async def test_closed_port_is_not_an_unknown_outcome(http: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = UnionpayProvider(settings(f"http://127.0.0.1:{port}"), branch=BRANCH, http=http)
    with pytest.raises(GatewayError) as caught:
        await nowhere.create_payment(payment(PaymentMethod.QR_CODE))
    assert not caught.value.outcome_unknown


async def test_answers_with_bad_signatures_are_not_trusted(
    provider: UnionpayProvider, simulator: LoopbackServer, http: httpx.AsyncClient
) -> None:
    await fault(http, simulator, "backTransReq.do", "bad_signature", count=1)
    with pytest.raises(GatewayError, match="verification"):
        await provider.create_payment(payment(PaymentMethod.QR_CODE))


async def test_refund_retried_with_the_same_order_refunds_once(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    simulator: LoopbackServer,
    http: httpx.AsyncClient,
) -> None:
    out_trade_no, _ = await paid(provider, driver, 600)
    await fault(http, simulator, "backTransReq.do", "error", count=1)
    result = await provider.refund(
        RefundRequest(
            out_trade_no, new_no("rf"), 600, 600, "CNY", notify_url="http://127.0.0.1:9/n"
        )
    )
    assert result.state is RefundState.PENDING
    assert (await sim_state(http, simulator, out_trade_no))["refundedFen"] == 600


# --- plugin and demo ------------------------------------------------------------------


def test_registered_as_a_plugin() -> None:
    found = {ep.name: ep for ep in entry_points(group="branchpay.providers")}
    module = found["unionpay"].load()
    assert module.BRANCHPAY_PLUGIN_API == PLUGIN_API_VERSION
    assert module.register_providers() == [UnionpayProvider]


async def test_demo_keys_and_simulator(tmp_path: Path, http: httpx.AsyncClient) -> None:
    secrets_dir = tmp_path / "secrets"
    demo.ensure_demo_keys(secrets_dir)
    for name in demo.FILES:
        assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
    before = {name: (secrets_dir / name).read_text() for name in demo.FILES}
    demo.ensure_demo_keys(secrets_dir)
    assert before == {name: (secrets_dir / name).read_text() for name in demo.FILES}
    with LoopbackServer(demo.demo_simulator(secrets_dir)) as server:
        branch_settings = settings(
            server.url,
            mer_id=demo.DEMO_MER_ID,
            sign_cert=before[demo.MERCHANT_CERT],
            sign_cert_private_key=before[demo.MERCHANT_KEY],
            middle_cert=before[demo.MIDDLE_CERT],
            root_cert=before[demo.ROOT_CERT],
        )
        demo_provider = UnionpayProvider(branch_settings, branch="demo", http=http)
        request = payment(PaymentMethod.QR_CODE)
        await demo_provider.create_payment(request)
        notification = await UnionpayDriver(server.url, http).settle(
            request.out_trade_no, "success"
        )
        assert notification is not None
        event = await demo_provider.parse_notification(notification)
        assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED


@pytest.mark.parametrize(
    ("txn_time", "day"),
    [
        ("20261125000000", "2026-11-25"),
        ("20261125225959", "2026-11-25"),
        ("20261125230000", "2026-11-26"),
        ("20261231233000", "2027-01-01"),
    ],
)
def test_settlement_day_runs_from_23_to_23(txn_time: str, day: str) -> None:
    assert message.settlement_day(txn_time).isoformat() == day


async def test_full_refund_on_the_payment_day_is_a_void(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    receiver: tuple[NotifyReceiver, str],
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    notify, notify_url = receiver
    out_trade_no, _ = await paid(provider, driver, 900)
    refund_no = new_no("rf")
    result = await provider.refund(
        RefundRequest(out_trade_no, refund_no, 900, 900, "CNY", notify_url=notify_url)
    )
    assert result.state is RefundState.PENDING
    assert (await sim_state(http, simulator, refund_no))["txnType"] == "31"
    voided = (await notify.next()).event
    assert (voided.kind, voided.out_trade_no, voided.out_refund_no, voided.amount_fen) == (
        EventKind.REFUND_SUCCEEDED,
        out_trade_no,
        refund_no,
        900,
    )
    again = await provider.refund(
        RefundRequest(out_trade_no, refund_no, 900, 900, "CNY", notify_url=notify_url)
    )
    assert again.state is RefundState.SUCCEEDED
    assert (await sim_state(http, simulator, out_trade_no))["refundedFen"] == 900


async def test_partial_refund_is_a_return_not_a_void(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    out_trade_no, _ = await paid(provider, driver, 900)
    refund_no = new_no("rf")
    await provider.refund(
        RefundRequest(out_trade_no, refund_no, 899, 900, "CNY", notify_url="http://127.0.0.1:9/n")
    )
    assert (await sim_state(http, simulator, refund_no))["txnType"] == "04"


@pytest.mark.parametrize("number", ["ut" + "0" * 20, "2613250000001234abcd", "26112512000"])
async def test_a_number_without_the_time_prefix_is_refused_at_create(
    provider: UnionpayProvider, number: str
) -> None:
    with pytest.raises(GatewayError, match="12-digit UTC creation time"):
        await provider.create_payment(payment(PaymentMethod.QR_CODE, out_trade_no=number))
    with pytest.raises(GatewayError, match="12-digit UTC creation time"):
        await provider.refund(RefundRequest(new_no(), "rf" + uuid.uuid4().hex[:20], 1, 1, "CNY"))


@pytest.mark.parametrize("method", [PaymentMethod.PAGE, PaymentMethod.QR_CODE])
async def test_txn_time_is_the_number_prefix_in_beijing_time_however_old(
    provider: UnionpayProvider,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
    method: PaymentMethod,
) -> None:
    made = datetime(2026, 11, 25, 15, 59, 30, tzinfo=UTC)
    number = stamped_no(made)
    action = await provider.create_payment(payment(method, out_trade_no=number))
    if method is PaymentMethod.PAGE:
        assert action.form_html
        sent = read_form(action.form_html)[1]["txnTime"]
    else:
        sent = (await sim_state(http, simulator, number))["txnTime"]
    # 15:59:30 UTC is 23:59:30 the same day in Beijing.
    assert sent == "20261125235930"


async def test_a_new_process_queries_refunds_and_closes_by_the_number_alone(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    out_trade_no, _ = await paid(provider, driver, 1000)
    unpaid = payment(PaymentMethod.QR_CODE)
    await provider.create_payment(unpaid)
    # A restart: a provider built afresh, nothing kept from the first one.
    restarted = UnionpayProvider(settings(simulator.url), branch=BRANCH, http=http)
    result = await restarted.query(out_trade_no)
    assert result.state is AttemptState.SUCCEEDED and result.amount_fen == 1000
    assert (await restarted.query(unpaid.out_trade_no)).state is AttemptState.PENDING
    await restarted.close(unpaid.out_trade_no)
    assert (await restarted.query(unpaid.out_trade_no)).state is AttemptState.CLOSED
    refund = RefundRequest(
        out_trade_no, new_no("rf"), 300, 1000, "CNY", notify_url="http://127.0.0.1:9/n"
    )
    assert (await restarted.refund(refund)).state is RefundState.PENDING
    again = await UnionpayProvider(settings(simulator.url), branch=BRANCH, http=http).refund(refund)
    assert again.state is RefundState.SUCCEEDED
    assert (await sim_state(http, simulator, out_trade_no))["refundedFen"] == 300


@pytest.mark.parametrize("number", ["short12", "订单号12345678", "ut-12345678", "u" * 41])
async def test_order_ids_the_gateway_would_refuse_are_not_sent(
    provider: UnionpayProvider, number: str
) -> None:
    with pytest.raises(GatewayError, match="orderId"):
        await provider.create_payment(payment(PaymentMethod.QR_CODE, out_trade_no=number))


def test_certificate_chain_agrees_with_openssl(tmp_path: Path) -> None:
    """openssl and the adapter accept the same chain and refuse the same stranger."""
    c, o = chain(), other_chain()
    root, middle = tmp_path / "root.pem", tmp_path / "middle.pem"
    root.write_text(pki.cert_pem(c.root_cert))
    middle.write_text(pki.cert_pem(c.middle_cert))
    for signer, trusted in ((c.platform_cert, True), (o.platform_cert, False)):
        leaf = tmp_path / "leaf.pem"
        leaf.write_text(pki.cert_pem(signer))
        verdict = subprocess.run(
            ["openssl", "verify", "-CAfile", root, "-untrusted", middle, leaf],
            capture_output=True,
            check=False,
        )
        assert (verdict.returncode == 0) is trusted, verdict.stdout + verdict.stderr
        try:
            message.verify_platform_cert(
                signer, middle=c.middle_cert, root=c.root_cert, validate_owner=True
            )
        except message.SignatureInvalid:
            assert not trusted
        else:
            assert trusted


async def test_refund_whose_answer_was_lost_is_not_made_twice(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    simulator: LoopbackServer,
    http: httpx.AsyncClient,
) -> None:
    out_trade_no, _ = await paid(provider, driver, 800)
    await fault(http, simulator, "backTransReq.do", "lost_answer", count=1)
    refund = RefundRequest(
        out_trade_no, new_no("rf"), 200, 800, "CNY", notify_url="http://127.0.0.1:9/n"
    )
    # The gateway made the refund; the repeat is refused as a duplicate and the refund queried.
    assert (await provider.refund(refund)).state is RefundState.SUCCEEDED
    assert (await sim_state(http, simulator, out_trade_no))["refundedFen"] == 200


async def test_refund_that_keeps_failing_leaves_the_outcome_open(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    simulator: LoopbackServer,
    http: httpx.AsyncClient,
) -> None:
    out_trade_no, _ = await paid(provider, driver, 800)
    refund = RefundRequest(
        out_trade_no, new_no("rf"), 200, 800, "CNY", notify_url="http://127.0.0.1:9/n"
    )
    await fault(http, simulator, "backTransReq.do", "lost_answer", count=3)
    with pytest.raises(GatewayError) as caught:
        await provider.refund(refund)
    assert caught.value.retryable and caught.value.outcome_unknown
    # Asked again later with the same number, it reports the one refund made.
    assert (await provider.refund(refund)).state is RefundState.SUCCEEDED
    assert (await sim_state(http, simulator, out_trade_no))["refundedFen"] == 200


async def test_close_that_cannot_query_changes_nothing(
    provider: UnionpayProvider, simulator: LoopbackServer, http: httpx.AsyncClient
) -> None:
    request = payment(PaymentMethod.QR_CODE)
    await provider.create_payment(request)
    await fault(http, simulator, "queryTrans.do", "error", count=3)
    with pytest.raises(GatewayError):
        await provider.close(request.out_trade_no)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING


async def test_closed_marks_live_in_the_marks_branchpay_binds(
    http: httpx.AsyncClient, simulator: LoopbackServer, mongo_uri: str, db_name: str
) -> None:
    from api.store import Store
    from api.store.marks import COLLECTION, StoreMarks

    unpaid = payment(PaymentMethod.QR_CODE)
    stores = [Store.connect(mongo_uri, db_name) for _ in range(2)]
    try:
        # Two API processes, each with its own instance and store client.
        first, second = (
            UnionpayProvider(settings(simulator.url), branch=BRANCH, http=http) for _ in stores
        )
        first.marks = StoreMarks(stores[0].collection(COLLECTION), "unionpay")
        second.marks = StoreMarks(stores[1].collection(COLLECTION), "unionpay")
        await first.create_payment(unpaid)
        await first.close(unpaid.out_trade_no)
        assert (await second.query(unpaid.out_trade_no)).state is AttemptState.CLOSED
    finally:
        for store in stores:
            await store.close()
