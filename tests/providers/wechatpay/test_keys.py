"""A merchant switching from platform certificates to the WeChat Pay public key.

During the switch WeChat Pay signs some callbacks with the public key and the
rest with the platform certificate, and signs its answers with the public key
only when the request's ``Wechatpay-Serial`` asks for it. A branch that lists
its platform certificate beside the public key verifies each by the serial it
names; an unknown serial is refused, and a certificate not configured is never
fetched.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from api.plugins.contract import (
    AttemptState,
    GatewayError,
    NotificationRejected,
    NotificationRequest,
    PaymentMethod,
    PaymentRequest,
    new_reference,
)
from providers.kit.loopback import LoopbackServer
from providers.wechatpay import WechatpayProvider
from providers.wechatpay.driver import WechatpayDriver
from providers.wechatpay.simulator import Gateway, PlatformCertificate
from tests.providers.wechatpay.support import (
    BRANCH,
    PLATFORM_KEY_ID,
    merchant,
    session_keys,
    settings,
    simulator_app,
)

CERT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(key: rsa.RSAPrivateKey, serial: int) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


CERT_SERIAL = 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1
CERT_PEM = certificate_pem(CERT_KEY, CERT_SERIAL)
# Another (retired) certificate in the same file.
OLD_PEM = certificate_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), 77)


@pytest.fixture(scope="module")
def simulator() -> Iterator[tuple[str, Gateway]]:
    keys = session_keys()
    app = simulator_app(
        merchant(keys),
        platform_certificate=PlatformCertificate(CERT_KEY, format(CERT_SERIAL, "X")),
    )
    with LoopbackServer(app) as server:
        yield server.url, app.state.gateway


@pytest.fixture
def url(simulator: tuple[str, Gateway]) -> str:
    return simulator[0]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def mid_switch(url: str, http: httpx.AsyncClient) -> WechatpayProvider:
    config = settings(session_keys(), url, platform_certificates=OLD_PEM + CERT_PEM)
    return WechatpayProvider(config, branch=BRANCH, http=http)


@pytest.fixture
def key_only(url: str, http: httpx.AsyncClient) -> WechatpayProvider:
    return WechatpayProvider(settings(session_keys(), url), branch=BRANCH, http=http)


@pytest.fixture
def driver(url: str) -> WechatpayDriver:
    keys = session_keys()
    return WechatpayDriver(
        url,
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


@pytest.fixture(autouse=True)
def signed_by_the_public_key(url: str) -> Iterator[None]:
    yield
    signing(url, callbacks="public_key", replies="requested")


def signing(url: str, **plan: str) -> dict[str, Any]:
    answer = httpx.put(f"{url}/control/signing", json=plan)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def qr_order() -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=new_reference(),
        amount_fen=5900,
        currency="CNY",
        subject="China Mobile Zhejiang 5G plan",
        method=PaymentMethod.QR_CODE,
        notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )


async def paid_callback(
    provider: WechatpayProvider, driver: WechatpayDriver, url: str, callbacks: str
) -> NotificationRequest:
    signing(url, callbacks=callbacks)
    request = qr_order()
    await provider.create_payment(request)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    return notification


async def test_a_merchant_mid_switch_accepts_callbacks_signed_either_way(
    mid_switch: WechatpayProvider, driver: WechatpayDriver, url: str
) -> None:
    by_key = await paid_callback(mid_switch, driver, url, "public_key")
    assert by_key.headers["wechatpay-serial"] == PLATFORM_KEY_ID
    by_certificate = await paid_callback(mid_switch, driver, url, "certificate")
    assert by_certificate.headers["wechatpay-serial"] == format(CERT_SERIAL, "X")
    for notification in (by_key, by_certificate):
        event = await mid_switch.parse_notification(notification)
        assert event is not None and event.amount_fen == 5900


async def test_an_unknown_serial_or_the_wrong_key_under_a_serial_is_refused(
    mid_switch: WechatpayProvider, driver: WechatpayDriver, url: str
) -> None:
    genuine = await paid_callback(mid_switch, driver, url, "certificate")
    unknown = driver.sign_anew(genuine, key=CERT_KEY, serial="1A2B3C4D5E6F")
    with pytest.raises(NotificationRejected, match="Wechatpay-Serial is not"):
        await mid_switch.parse_notification(unknown)
    # The certificate's serial, signed with the public key's private key: no.
    crossed = driver.sign_anew(genuine, serial=format(CERT_SERIAL, "X"))
    with pytest.raises(NotificationRejected, match="does not verify with the platform certificate"):
        await mid_switch.parse_notification(crossed)
    # Key ids are matched exactly: never read as hex, never case-folded.
    for serial in ("PUB_KEY_ID_" + "0" * 28, PLATFORM_KEY_ID.lower()):
        unlike = driver.sign_anew(genuine, serial=serial)
        with pytest.raises(NotificationRejected, match="Wechatpay-Serial is not"):
            await mid_switch.parse_notification(unlike)


async def test_a_branch_without_the_certificate_refuses_what_it_signs(
    key_only: WechatpayProvider, mid_switch: WechatpayProvider, driver: WechatpayDriver, url: str
) -> None:
    by_certificate = await paid_callback(mid_switch, driver, url, "certificate")
    with pytest.raises(NotificationRejected, match="Wechatpay-Serial is not"):
        await key_only.parse_notification(by_certificate)


async def test_requests_ask_for_the_public_key_and_answers_verify_either_way(
    mid_switch: WechatpayProvider,
    key_only: WechatpayProvider,
    simulator: tuple[str, Gateway],
) -> None:
    url, _ = simulator
    request = qr_order()
    await key_only.create_payment(request)
    # Requests name the public key id, so WeChat Pay signs answers with the public key.
    assert (await key_only.query(request.out_trade_no)).state is AttemptState.PENDING
    # Before the switch is started in the console, answers come signed by the certificate.
    signing(url, replies="certificate")
    assert (await mid_switch.query(request.out_trade_no)).state is AttemptState.PENDING
    with pytest.raises(GatewayError, match="not trusted"):
        await key_only.query(request.out_trade_no)


async def test_the_simulator_signs_by_the_serial_a_request_names(
    mid_switch: WechatpayProvider, url: str, http: httpx.AsyncClient
) -> None:
    request = qr_order()
    await mid_switch.create_payment(request)
    path = f"/v3/pay/transactions/out-trade-no/{request.out_trade_no}?mchid=1900000109"
    headers = mid_switch._signed_headers("GET", path, b"")
    asked = await http.get(url + path, headers=headers)
    assert asked.headers["wechatpay-serial"] == PLATFORM_KEY_ID
    del headers["Wechatpay-Serial"]
    unasked = await http.get(url + path, headers=headers)
    assert unasked.headers["wechatpay-serial"] == format(CERT_SERIAL, "X")
    assert json.loads(unasked.content)["trade_state"] == "NOTPAY"


def test_platform_certificates_must_parse(url: str) -> None:
    with pytest.raises(ValidationError, match=r"PEM X\.509 certificates") as caught:
        settings(session_keys(), url, platform_certificates="not a certificate")
    assert "not a certificate" not in str(caught.value)
    both = settings(session_keys(), url, platform_certificates=OLD_PEM + CERT_PEM)
    assert both.platform_certificates == OLD_PEM + CERT_PEM


async def test_a_serial_written_with_leading_zeros_still_names_the_certificate(
    mid_switch: WechatpayProvider, driver: WechatpayDriver, url: str
) -> None:
    genuine = await paid_callback(mid_switch, driver, url, "certificate")
    padded = driver.sign_anew(genuine, key=CERT_KEY, serial="00" + format(CERT_SERIAL, "x"))
    assert await mid_switch.parse_notification(padded) is not None
