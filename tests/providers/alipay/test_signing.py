"""RSA2 signatures, amounts and settings of the Alipay provider.

Signatures are cross-checked with python-alipay-sdk, code nobody here wrote:
it accepts what we sign and we accept what it signs, and each side rejects
what was changed after signing. The SDK also talks to our simulator over
loopback HTTP as a merchant would, verifying the simulator's signed answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from alipay import AliPay
from alipay.exceptions import AliPayValidationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from api.plugin import (
    PLUGIN_API_VERSION,
    KeyFormatError,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
)
from api.plugins.contract import (
    EventKind,
    NotificationRejected,
    PaymentMethod,
    PaymentRequest,
)
from providers.alipay import AlipayProvider
from providers.alipay.amounts import AmountError, fen_to_yuan, yuan_to_fen
from providers.alipay.driver import AlipayGatewayDriver, notification_request
from providers.alipay.settings import PRODUCTION_GATEWAY, AlipaySettings
from providers.alipay.signing import (
    notification_string,
    request_string,
    response_members,
    sign,
    verify,
)
from tests.providers.alipay.support import (
    APP_ID,
    RunningSimulator,
    alipay_http,
    alipay_provider,
    alipay_simulator,
    app_key,
    platform_key,
    rsa_key,
    settings_for,
)

__all__ = ["alipay_http", "alipay_provider", "alipay_simulator"]


def sdk(private: rsa.RSAPrivateKey, public: rsa.RSAPublicKey, appid: str = APP_ID) -> AliPay:
    return AliPay(
        appid=appid,
        app_private_key_string=private_key_pem(private),
        alipay_public_key_string=public_key_pem(public),
        sign_type="RSA2",
    )


def merchant_sdk() -> AliPay:
    """The SDK as the merchant uses it: app key to sign, Alipay key to verify."""
    return sdk(app_key(), platform_key().public_key())


def platform_sdk() -> AliPay:
    """The SDK's signer loaded with the platform key: signs as Alipay would."""
    return sdk(platform_key(), app_key().public_key())


def sample_request_params() -> dict[str, str]:
    return {
        "app_id": APP_ID,
        "method": "alipay.trade.precreate",
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": "2026-11-25 23:05:00",
        "version": "1.0",
        "notify_url": "https://branchpay.example/notify/alipay/zj",
        "biz_content": json.dumps(
            {"out_trade_no": "zj20261125000001", "total_amount": "88.88", "subject": "5G 套餐"},
            ensure_ascii=False,
            separators=(",", ":"),
        ),
    }


# --- signing round trips and the SDK ------------------------------------------


def test_request_string_sorts_drops_sign_and_empties() -> None:
    params = {"b": "2", "a": "1", "sign": "x", "empty": "", "sign_type": "RSA2"}
    assert request_string(params) == "a=1&b=2&sign_type=RSA2"
    assert notification_string(params) == "a=1&b=2&empty="


def test_sign_verify_round_trip_and_tampering() -> None:
    message = request_string(sample_request_params())
    signature = sign(app_key(), message)
    assert verify(app_key().public_key(), message, signature)
    assert not verify(app_key().public_key(), message.replace("88.88", "88.89"), signature)
    assert not verify(platform_key().public_key(), message, signature)
    assert not verify(app_key().public_key(), message, "not base64!")


def test_our_request_signature_is_the_sdks() -> None:
    params = sample_request_params()
    ours = sign(app_key(), request_string(params))
    signed = dict(parse_qsl(merchant_sdk().sign_data(dict(params))))
    # PKCS#1 v1.5 is deterministic: the same key over the same string gives the same bytes.
    assert signed["sign"] == ours
    assert verify(app_key().public_key(), request_string(signed), signed["sign"])
    tampered = signed | {"biz_content": signed["biz_content"].replace("88.88", "0.01")}
    assert not verify(app_key().public_key(), request_string(tampered), signed["sign"])


def test_sdk_accepts_our_notification_signature_and_rejects_tampering() -> None:
    params = {
        "notify_id": "2026112500222100500000000001",
        "app_id": APP_ID,
        "out_trade_no": "zj20261125000001",
        "total_amount": "88.88",
        "trade_status": "TRADE_SUCCESS",
        "sign_type": "RSA2",
    }
    signature = sign(platform_key(), notification_string(params))
    assert merchant_sdk().verify(dict(params), signature)
    assert not merchant_sdk().verify(params | {"total_amount": "0.01"}, signature)


async def test_we_accept_a_notification_the_sdk_signed(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    out_trade_no = "sdk" + uuid.uuid4().hex[:20]
    params = {
        "notify_time": "2026-11-25 23:10:00",
        "notify_type": "trade_status_sync",
        "notify_id": uuid.uuid4().hex,
        "charset": "utf-8",
        "version": "1.0",
        "app_id": APP_ID,
        "seller_id": alipay_provider.config.seller_id or "",
        "trade_no": "2026112522001400000000000001",
        "out_trade_no": out_trade_no,
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "1288.50",
        "gmt_payment": "2026-11-25 23:09:59",
        "subject": "iPhone 合约机",
    }
    signer = platform_sdk()
    ordered = "&".join(f"{k}={v}" for k, v in signer._ordered_data(dict(params)))
    params |= {"sign_type": "RSA2", "sign": signer._sign(ordered)}
    event = await alipay_provider.parse_notification(notification_request(urlencode(params)))
    assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
    assert (event.amount_fen, event.out_trade_no) == (128850, out_trade_no)
    assert event.occurred_at == datetime(2026, 11, 25, 15, 9, 59, tzinfo=UTC)
    with pytest.raises(NotificationRejected, match="sign"):
        tampered = params | {"total_amount": "1.00"}
        await alipay_provider.parse_notification(notification_request(urlencode(tampered)))


async def test_sdk_as_merchant_against_the_simulator_over_http(
    alipay_simulator: RunningSimulator,
) -> None:
    client = merchant_sdk()
    client._gateway = alipay_simulator.gateway
    out_trade_no = "sdk" + uuid.uuid4().hex[:20]
    # The SDK uses blocking urllib; run it off the event loop the simulator shares none of.
    created = await asyncio.to_thread(
        client.api_alipay_trade_precreate, "SIM 卡", out_trade_no, "66.60"
    )
    assert created["code"] == "10000" and created["qr_code"].startswith(alipay_simulator.url)
    queried = await asyncio.to_thread(client.api_alipay_trade_query, out_trade_no)
    assert (queried["trade_status"], queried["total_amount"]) == ("WAIT_BUYER_PAY", "66.60")

    wrong_key = sdk(app_key(), rsa_key("forger").public_key())
    wrong_key._gateway = alipay_simulator.gateway
    with pytest.raises(AliPayValidationError):
        await asyncio.to_thread(wrong_key.api_alipay_trade_query, out_trade_no)


async def test_sdk_verifies_the_app_order_string_we_sign(alipay_provider: AlipayProvider) -> None:
    action = await alipay_provider.create_payment(
        PaymentRequest(
            out_trade_no="app" + uuid.uuid4().hex[:20],
            amount_fen=990,
            currency="CNY",
            subject="Top-up 9.90",
            method=PaymentMethod.APP,
            notify_url="https://branchpay.example/notify/alipay/zj",
            expires_at=datetime.now(UTC) + timedelta(minutes=10),
        )
    )
    assert action.app_payload
    params = dict(parse_qsl(action.app_payload))
    signature = params.pop("sign")
    # The SDK's verify leaves sign_type out; request signatures include it.
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    merchant_side = sdk(platform_key(), app_key().public_key())
    assert merchant_side._verify(message, signature)
    assert not merchant_side._verify(message.replace("9.90", "0.99"), signature)


async def test_driver_spoils_notifications_three_ways(alipay_http: httpx.AsyncClient) -> None:
    params = {"app_id": APP_ID, "total_amount": "88.00", "sign_type": "RSA2"}
    params["sign"] = sign(platform_key(), notification_string(params))
    genuine = notification_request(urlencode(params))
    driver = AlipayGatewayDriver("http://127.0.0.1:9", alipay_http, forger_key=rsa_key("forger"))
    public = platform_key().public_key()

    def verdict(n: Any) -> bool:
        p = dict(parse_qsl(n.body.decode()))
        return "sign" in p and verify(public, notification_string(p), p["sign"])

    assert verdict(genuine)
    assert not verdict(driver.forge(genuine))
    tampered = dict(parse_qsl(driver.tamper(genuine).body.decode()))
    assert tampered["total_amount"] == "88.01" and not verdict(driver.tamper(genuine))
    assert not verdict(driver.unsigned(genuine))


def test_response_members_keep_the_signed_text_byte_for_byte() -> None:
    inner = '{"code":"10000", "msg":"Success","sub":{"a":"}{"},"n":1.50}'
    text = f' {{ "alipay_trade_query_response" : {inner} ,"sign":"abc"}} '
    members = response_members(text)
    assert members == {"alipay_trade_query_response": inner, "sign": '"abc"'}
    for bad in ("[]", '{"a":1', '{"a":1}x', '{"a":1,"a":2}', ""):
        with pytest.raises(ValueError):
            response_members(bad)


# --- amounts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fen", "yuan"),
    [(1, "0.01"), (10, "0.10"), (100, "1.00"), (8888, "88.88"), (100_000_000_00, "100000000.00")],
)
def test_fen_to_yuan(fen: int, yuan: str) -> None:
    assert fen_to_yuan(fen) == yuan
    assert yuan_to_fen(yuan) == fen


@pytest.mark.parametrize("fen", [0, -1, 100_000_000_01])
def test_fen_to_yuan_refuses_what_alipay_refuses(fen: int) -> None:
    with pytest.raises(AmountError):
        fen_to_yuan(fen)


@pytest.mark.parametrize(
    ("yuan", "fen"),
    [("0", 0), ("0.00", 0), ("88", 8800), ("88.8", 8880), ("0.07", 7), ("19.99", 1999)],
)
def test_yuan_to_fen_exact(yuan: str, fen: int) -> None:
    assert yuan_to_fen(yuan) == fen


def test_yuan_to_fen_is_exact_where_float_is_not() -> None:
    # float("0.29") * 100 == 28.999999999999996
    assert yuan_to_fen("0.29") == 29 and yuan_to_fen("1.15") == 115


@pytest.mark.parametrize(
    "yuan",
    [
        "1.005",
        "-1.00",
        "+1.00",
        "1e2",
        " 1.00",
        "1.00 ",
        "1,00",
        "01.00",
        ".50",
        "1.",
        "\uff11.\uff10\uff10",  # full-width digits
        "NaN",
        "",
        "100000000.01",
        "1000000000.00",
    ],
)
def test_yuan_to_fen_refuses_malformed(yuan: str) -> None:
    with pytest.raises(AmountError):
        yuan_to_fen(yuan)


# --- settings and keys --------------------------------------------------------


def test_settings_default_to_production_and_hide_the_private_key() -> None:
    pem = private_key_pem(app_key())
    settings = AlipaySettings.model_validate(
        {
            "app_id": APP_ID,
            "private_key": pem,
            "alipay_public_key": public_key_pem(platform_key().public_key()),
        }
    )
    assert settings.gateway == PRODUCTION_GATEWAY
    body = "".join(pem.splitlines()[1:-1])
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert body[:32] not in shown and "PRIVATE KEY" not in shown


def test_bare_base64_keys_from_alipays_key_tool_load() -> None:
    der_private = app_key().private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der_public = (
        platform_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private = load_private_key(base64.b64encode(der_private).decode())
    public = load_public_key(base64.b64encode(der_public).decode())
    assert private.private_numbers() == app_key().private_numbers()
    assert public.public_numbers() == platform_key().public_key().public_numbers()


def _short_rsa_pem() -> str:
    return private_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))


def _ec_pem() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


@pytest.mark.parametrize(
    ("field", "bad", "reason"),
    [
        (
            "private_key",
            lambda: private_key_pem(app_key())[:-80] + "-----END PRIVATE KEY-----",
            "readable",
        ),
        ("private_key", lambda: public_key_pem(app_key().public_key()), "readable"),
        ("private_key", _short_rsa_pem, "2048"),
        ("private_key", _ec_pem, "not an RSA"),
        (
            "alipay_public_key",
            lambda: "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 20,
            "readable",
        ),
    ],
)
def test_bad_keys_fail_validation_without_showing_the_key(
    field: str, bad: Any, reason: str
) -> None:
    value = bad()
    values = {
        "app_id": APP_ID,
        "private_key": private_key_pem(app_key()),
        "alipay_public_key": public_key_pem(platform_key().public_key()),
        field: value,
    }
    with pytest.raises(ValidationError) as caught:
        AlipaySettings(**values)
    message = str(caught.value)
    assert reason in message and field in message
    key_text = "".join(value.splitlines()[1:-1]) or value
    assert key_text[:24] not in message
    with pytest.raises(KeyFormatError):
        (load_private_key if field == "private_key" else load_public_key)(value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("app_id", ""),
        ("app_id", "2021 0001"),
        ("gateway", "ftp://x/gateway.do"),
        ("seller_id", "1234"),
        ("max_attempts", 0),
        ("timeout_seconds", 0),
    ],
)
def test_other_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        settings_for("http://127.0.0.1:9/gateway.do", **{field: value})


def test_plugin_registers_the_provider() -> None:
    from importlib.metadata import entry_points

    import providers.alipay as plugin

    (entry,) = [e for e in entry_points(group="branchpay.providers") if e.name == "alipay"]
    assert entry.load() is plugin
    assert plugin.BRANCHPAY_PLUGIN_API == PLUGIN_API_VERSION
    assert plugin.register_providers() == [AlipayProvider]
    assert AlipayProvider.name == "alipay" and AlipayProvider.Settings is AlipaySettings
