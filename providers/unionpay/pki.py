"""Stand-in certificates for the simulator, the demo and the tests.

UnionPay signs with a certificate issued by its middle CA under its root CA,
and names itself as owner in the CN (``...@中国银联股份有限公司@...``); a
merchant signs with the certificate UnionPay issued it. :func:`issue_chain`
makes the same shape with fresh RSA 2048 keys, so nothing real is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from providers.unionpay import message


@dataclass(frozen=True)
class Chain:
    """UnionPay's side (root, middle, signing key and certificate) and one merchant's."""

    root_cert: x509.Certificate
    middle_key: rsa.RSAPrivateKey
    middle_cert: x509.Certificate
    platform_key: rsa.RSAPrivateKey
    platform_cert: x509.Certificate
    merchant_key: rsa.RSAPrivateKey
    merchant_cert: x509.Certificate


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def issue(
    subject_cn: str,
    key: rsa.RSAPrivateKey,
    issuer_cn: str,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    valid_from: datetime | None = None,
    valid_days: int = 3650,
) -> x509.Certificate:
    start = valid_from or datetime.now(UTC) - timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def platform_cn(owner: str = message.UNIONPAY_CERT_OWNER) -> str:
    return f"041@Z0000001@{owner}@00000001"


def issue_chain(owner: str = message.UNIONPAY_CERT_OWNER) -> Chain:
    root_key, middle_key = new_key(), new_key()
    root_cn, middle_cn = "Stand-in UnionPay Root", "Stand-in UnionPay Middle"
    platform_key, merchant_key = new_key(), new_key()
    return Chain(
        root_cert=issue(root_cn, root_key, root_cn, root_key, ca=True),
        middle_key=middle_key,
        middle_cert=issue(middle_cn, middle_key, root_cn, root_key, ca=True),
        platform_key=platform_key,
        platform_cert=issue(platform_cn(owner), platform_key, middle_cn, middle_key, ca=False),
        merchant_key=merchant_key,
        merchant_cert=issue("merchant@sign", merchant_key, middle_cn, middle_key, ca=False),
    )


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
