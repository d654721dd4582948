"""Alipay public-key certificate mode (公钥证书) beside public-key mode.

The tests make their own CA with cryptography: a root file like Alipay's
(RSA-signed roots and an ECDSA one that the root SN leaves out), the Alipay
public key certificate of the simulator's platform key and the app's public
key certificate. One simulator serves an app in certificate mode and one in
public-key mode: requests must carry (or not carry) the SNs, and answers to the
certificate-mode app carry ``alipay_cert_sn``. The conformance kit runs again in
certificate mode.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from api.plugin import BEIJING, private_key_pem, public_key_pem
from api.plugins.contract import (
    ActionKind,
    AttemptState,
    EventKind,
    GatewayError,
    NotificationRejected,
    PaymentMethod,
    PaymentRequest,
)
from providers.alipay import AlipayProvider, AlipaySettings
from providers.alipay.certs import (
    CertificateError,
    cert_sn,
    load_certificates,
    root_cert_sn,
)
from providers.alipay.driver import AlipayGatewayDriver
from providers.alipay.signing import request_string, response_members, sign
from providers.alipay.simulator import create_app
from providers.kit.conformance import ProviderConformance
from providers.kit.loopback import LoopbackServer
from tests.providers.alipay.support import (
    BRANCH,
    SELLER_ID,
    alipay_http,
    app_key,
    platform_key,
    rsa_key,
    settings_for,
)

__all__ = ["alipay_http"]

CERT_APP_ID = "2021000000000701"
KEY_APP_ID = "2021000000000702"
FORM = {"content-type": "application/x-www-form-urlencoded;charset=utf-8"}
ROOT_DN = [
    (NameOID.COUNTRY_NAME, "CN"),
    (NameOID.ORGANIZATION_NAME, "Stand-in Ant Financial"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "Certification Authority"),
    (NameOID.COMMON_NAME, "Stand-in Ant Financial Certification Authority R1"),
]
ROOT_DN_TEXT = (
    "CN=Stand-in Ant Financial Certification Authority R1,OU=Certification Authority,"
    "O=Stand-in Ant Financial,C=CN"
)


def name(parts: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


def issue(
    subject: x509.Name,
    public_key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool,
    digest: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    start = datetime.now(UTC) - timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, digest or hashes.SHA256())


def pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


@cache
def pki() -> dict[str, Any]:
    """A root file (RSA-SHA256 root, ECDSA root, RSA-SHA384 root), Alipay's and the app's certs."""
    root_key = rsa_key("cert-root")
    root = issue(name(ROOT_DN), root_key.public_key(), name(ROOT_DN), root_key, ca=True)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_dn = name([(NameOID.COMMON_NAME, "Stand-in ECC root")])
    ec_root = issue(ec_dn, ec_key.public_key(), ec_dn, ec_key, ca=True)
    other_key = rsa_key("cert-root-2")
    other_dn = name([(NameOID.COUNTRY_NAME, "CN"), (NameOID.COMMON_NAME, "Stand-in Root 2")])
    other_root = issue(
        other_dn, other_key.public_key(), other_dn, other_key, ca=True, digest=hashes.SHA384()
    )
    alipay_cert = issue(
        name([(NameOID.COMMON_NAME, "支付宝(中国)网络技术有限公司-2088000000000001")]),
        platform_key().public_key(),
        name(ROOT_DN),
        root_key,
        ca=False,
    )
    app_cert = issue(
        name([(NameOID.COMMON_NAME, CERT_APP_ID)]),
        app_key().public_key(),
        name(ROOT_DN),
        root_key,
        ca=False,
    )
    return {
        "root": root,
        "ec_root": ec_root,
        "other_root": other_root,
        "root_file": pem(root, ec_root, other_root),
        "alipay_cert": alipay_cert,
        "app_cert": app_cert,
    }


def cert_settings(gateway: str, **overrides: Any) -> AlipaySettings:
    values: dict[str, Any] = {
        "app_id": CERT_APP_ID,
        "private_key": private_key_pem(app_key()),
        "app_cert": pem(pki()["app_cert"]),
        "alipay_cert": pem(pki()["alipay_cert"]),
        "alipay_root_cert": pki()["root_file"],
        "seller_id": SELLER_ID,
        "gateway": gateway,
        "timeout_seconds": 2.0,
        "backoff_seconds": 0.01,
    }
    values.update(overrides)
    return AlipaySettings(**values)


def simulator_app(alipay_cert_sn: str | None = None) -> Any:
    return create_app(
        apps={CERT_APP_ID: app_key().public_key(), KEY_APP_ID: app_key().public_key()},
        alipay_private_key=platform_key(),
        seller_id=SELLER_ID,
        app_cert_sns={CERT_APP_ID: cert_sn(pki()["app_cert"])},
        alipay_cert_sn=alipay_cert_sn or cert_sn(pki()["alipay_cert"]),
        alipay_root_cert_sn=root_cert_sn(load_certificates(pki()["root_file"])),
    )


@pytest.fixture(scope="module")
def cert_simulator() -> Iterator[str]:
    with LoopbackServer(simulator_app()) as server:
        yield server.url


def qr_request() -> PaymentRequest:
    return PaymentRequest(
        out_trade_no="zj" + uuid.uuid4().hex[:20],
        amount_fen=8800,
        currency="CNY",
        subject="Certificate mode",
        method=PaymentMethod.QR_CODE,
        notify_url="https://branchpay.example/notify/alipay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )


# --- the serial numbers ---------------------------------------------------------------


def test_cert_sn_is_md5_of_the_issuer_dn_and_the_decimal_serial() -> None:
    certificate = pki()["alipay_cert"]
    expected = hashlib.md5(f"{ROOT_DN_TEXT}{certificate.serial_number}".encode()).hexdigest()
    assert cert_sn(certificate) == expected and len(expected) == 32


def test_root_sn_joins_the_rsa_signed_certificates_only() -> None:
    root, other = pki()["root"], pki()["other_root"]
    chain = load_certificates(pki()["root_file"])
    assert len(chain) == 3
    # The ECDSA root is left out, as Alipay's SDK leaves out the SM2 one.
    assert root_cert_sn(chain) == f"{cert_sn(root)}_{cert_sn(other)}"
    with pytest.raises(CertificateError, match="no RSA-signed"):
        root_cert_sn([pki()["ec_root"]])


# --- settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"alipay_public_key": public_key_pem(platform_key().public_key())}, "not both"),
        ({"alipay_root_cert": None}, "alipay_root_cert"),
        ({"app_cert": None, "alipay_cert": None}, "app_cert, alipay_cert"),
        ({"app_cert": "-----BEGIN CERTIFICATE-----\nnot a cert"}, "not PEM"),
        ({"alipay_cert": pki()["root_file"]}, "expected one certificate"),
        ({"private_key": private_key_pem(rsa_key("other-app"))}, "not the certificate of"),
    ],
)
def test_certificate_settings_are_checked_at_load(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        cert_settings("http://127.0.0.1:9/gateway.do", **changes)
    # The error names the setting and the fault, never the text it was given.
    shown = str(caught.value)
    body = pem(pki()["app_cert"]).splitlines()[1]
    assert "not a cert" not in shown and body not in shown
    assert pki()["root_file"].splitlines()[1] not in shown


def test_neither_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="alipay_public_key"):
        cert_settings(
            "http://127.0.0.1:9/gateway.do", app_cert=None, alipay_cert=None, alipay_root_cert=None
        )


# --- both modes against one simulator ---------------------------------------------------------


def signed_query(app_id: str, out_trade_no: str, **common: str) -> bytes:
    """A trade query as an app signs it, with the extra common parameters given."""
    params = {
        "app_id": app_id,
        "method": "alipay.trade.query",
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": datetime.now(UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        "version": "1.0",
        "biz_content": json.dumps({"out_trade_no": out_trade_no}),
        **common,
    }
    params["sign"] = sign(app_key(), request_string(params))
    return urlencode(params).encode()


async def test_certificate_mode_requests_carry_the_sns_and_answers_name_alipays_cert(
    cert_simulator: str, alipay_http: httpx.AsyncClient
) -> None:
    provider = AlipayProvider(
        cert_settings(f"{cert_simulator}/gateway.do"), branch=BRANCH, http=alipay_http
    )
    request = qr_request()
    assert (await provider.create_payment(request)).kind is ActionKind.QR_CODE
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING
    page = await provider.create_payment(page_request())
    assert page.url is not None
    sent = parse_qs(urlsplit(page.url).query)
    assert sent["app_cert_sn"] == [cert_sn(pki()["app_cert"])]
    assert sent["alipay_root_cert_sn"] == [root_cert_sn(load_certificates(pki()["root_file"]))]
    # What Alipay answers a certificate-mode app: alipay_cert_sn beside the signed member.
    sns = {
        "app_cert_sn": cert_sn(pki()["app_cert"]),
        "alipay_root_cert_sn": root_cert_sn(load_certificates(pki()["root_file"])),
    }
    answer = await alipay_http.post(
        f"{cert_simulator}/gateway.do",
        content=signed_query(CERT_APP_ID, request.out_trade_no, **sns),
        headers=FORM,
    )
    members = response_members(answer.text)
    assert json.loads(members["alipay_cert_sn"]) == cert_sn(pki()["alipay_cert"])
    assert json.loads(members["alipay_trade_query_response"])["code"] == "10000"


@pytest.mark.parametrize(
    ("app_id", "common", "sub_code"),
    [
        (CERT_APP_ID, {}, "isv.invalid-app-cert-sn"),
        (CERT_APP_ID, {"app_cert_sn": "0" * 32}, "isv.invalid-app-cert-sn"),
        (KEY_APP_ID, {"app_cert_sn": "0" * 32}, "isv.cert-mode-not-enabled"),
    ],
)
async def test_the_simulator_checks_the_sns_it_receives(
    cert_simulator: str,
    alipay_http: httpx.AsyncClient,
    app_id: str,
    common: dict[str, str],
    sub_code: str,
) -> None:
    answer = await alipay_http.post(
        f"{cert_simulator}/gateway.do", content=signed_query(app_id, "zj1", **common), headers=FORM
    )
    members = response_members(answer.text)
    refusal = json.loads(members["alipay_trade_query_response"])
    # A gateway-level refusal, unsigned as Alipay leaves them.
    assert (refusal["code"], refusal["sub_code"]) == ("40002", sub_code)
    assert "sign" not in members


async def test_public_key_mode_still_works_beside_certificate_mode(
    cert_simulator: str, alipay_http: httpx.AsyncClient
) -> None:
    provider = AlipayProvider(
        settings_for(f"{cert_simulator}/gateway.do", app_id=KEY_APP_ID),
        branch=BRANCH,
        http=alipay_http,
    )
    request = qr_request()
    await provider.create_payment(request)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING
    page = await provider.create_payment(page_request())
    assert page.url is not None and "app_cert_sn" not in page.url


async def test_another_root_file_is_refused_by_alipay(
    cert_simulator: str, alipay_http: httpx.AsyncClient
) -> None:
    provider = AlipayProvider(
        cert_settings(f"{cert_simulator}/gateway.do", alipay_root_cert=pem(pki()["other_root"])),
        branch=BRANCH,
        http=alipay_http,
    )
    with pytest.raises(GatewayError, match="unsigned"):
        await provider.create_payment(qr_request())


async def test_an_answer_naming_a_renewed_alipay_certificate_is_not_believed(
    alipay_http: httpx.AsyncClient,
) -> None:
    with LoopbackServer(simulator_app(alipay_cert_sn="f" * 32)) as server:
        provider = AlipayProvider(
            cert_settings(f"{server.url}/gateway.do"), branch=BRANCH, http=alipay_http
        )
        with pytest.raises(GatewayError, match="alipay_cert_sn") as caught:
            await provider.create_payment(qr_request())
        assert caught.value.outcome_unknown
        with pytest.raises(GatewayError, match="alipay_cert_sn"):
            await provider.query("zj" + uuid.uuid4().hex[:20])


async def test_a_notification_is_verified_with_the_key_in_alipay_cert(
    cert_simulator: str, alipay_http: httpx.AsyncClient
) -> None:
    provider = AlipayProvider(
        cert_settings(f"{cert_simulator}/gateway.do"), branch=BRANCH, http=alipay_http
    )
    driver = AlipayGatewayDriver(cert_simulator, alipay_http, forger_key=rsa_key("forger"))
    request = qr_request()
    await provider.create_payment(request)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    event = await provider.parse_notification(notification)
    assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
    with pytest.raises(NotificationRejected, match="sign"):
        await provider.parse_notification(driver.forge(notification))


def page_request() -> PaymentRequest:
    return PaymentRequest(
        out_trade_no="zj" + uuid.uuid4().hex[:20],
        amount_fen=8800,
        currency="CNY",
        subject="Certificate mode",
        method=PaymentMethod.PAGE,
        notify_url="https://branchpay.example/notify/alipay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        return_url="https://branchpay.example/return",
    )


# --- the conformance kit, in certificate mode --------------------------------------------


@pytest.fixture
def provider(cert_simulator: str, alipay_http: httpx.AsyncClient) -> AlipayProvider:
    return AlipayProvider(
        cert_settings(f"{cert_simulator}/gateway.do"), branch=BRANCH, http=alipay_http
    )


@pytest.fixture
def gateway(cert_simulator: str, alipay_http: httpx.AsyncClient) -> AlipayGatewayDriver:
    return AlipayGatewayDriver(cert_simulator, alipay_http, forger_key=rsa_key("forger"))


@pytest.fixture
def payer_id() -> str:
    return "2088102177846880"


class TestAlipayCertificateModeConformance(ProviderConformance):
    pass
