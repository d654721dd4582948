"""Alipay public-key certificate mode (公钥证书): the certificates and their serial numbers.

In certificate mode every request carries ``app_cert_sn`` (of the app's public
key certificate) and ``alipay_root_cert_sn`` (of Alipay's root certificate
file), and Alipay's answers and notifications are verified with the public key
in Alipay's public key certificate, whose SN answers carry as
``alipay_cert_sn``. The SNs are computed as Alipay's SDKs do
(``AntCertificationUtil`` of the Java SDK):

- a certificate's SN is the lowercase hex MD5 of its issuer DN in RFC 2253
  form (``CN=…,OU=…,O=…,C=…``, Java's ``getIssuerX500Principal().getName()``)
  followed by its serial number in decimal;
- the root SN joins with ``_`` the SNs of the certificates in the root file
  signed with RSA (signature algorithm OID under ``1.2.840.113549.1.1``, as the
  Java SDK filters); the file's other (SM2, ECC) certificates are left out.
"""

from __future__ import annotations

import hashlib

from cryptography import x509

_RSA_SIGNATURES = "1.2.840.113549.1.1."


class CertificateError(ValueError):
    """Text that is not the certificate(s) asked for; never carries the text."""


def load_certificate(text: str) -> x509.Certificate:
    """The one PEM certificate in ``text``."""
    certificates = load_certificates(text)
    if len(certificates) != 1:
        raise CertificateError(f"expected one certificate, found {len(certificates)}")
    return certificates[0]


def load_certificates(text: str) -> list[x509.Certificate]:
    """Every PEM certificate in ``text`` (Alipay's root file holds several), in order."""
    try:
        certificates = x509.load_pem_x509_certificates(text.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise CertificateError("not PEM certificates (-----BEGIN CERTIFICATE-----)") from None
    return certificates


def cert_sn(certificate: x509.Certificate) -> str:
    """Alipay's SN of a certificate: MD5(issuer DN + decimal serial), 32 hex digits."""
    issuer = certificate.issuer.rfc4514_string()
    digest = hashlib.md5(f"{issuer}{certificate.serial_number}".encode(), usedforsecurity=False)
    return digest.hexdigest()


def root_cert_sn(certificates: list[x509.Certificate]) -> str:
    """``alipay_root_cert_sn``: the SNs of the RSA-signed certificates, joined with ``_``."""
    rsa_signed = [
        c
        for c in certificates
        if c.signature_algorithm_oid.dotted_string.startswith(_RSA_SIGNATURES)
    ]
    if not rsa_signed:
        raise CertificateError("the root certificate file holds no RSA-signed certificate")
    return "_".join(cert_sn(c) for c in rsa_signed)
