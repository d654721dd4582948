"""Keys, settings and a notify receiver shared by the WeChat Pay test modules.

Keys are generated once per test session (RSA 2048 with cryptography); the
receiver is a Starlette app on loopback that parses each callback with a
provider and hands the verdict to the test's event loop.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.plugins.contract import (
    NotificationRejected,
    NotificationRequest,
    Provider,
    ProviderEvent,
)
from providers.wechatpay import WechatpaySettings
from providers.wechatpay.simulator import Merchant, create_app

MCHID = "1900000109"
APPID = "wxd678efh567hg6787"
CERT_SERIAL_NO = "444F4864EA9B34415C0A6E1FE4DF1DE2A9E1AF8C"
PLATFORM_KEY_ID = "PUB_KEY_ID_0119000001092025112500000001"
BRANCH = "zj"

# A provider table's key settings in a plugins.toml of a test (before str.format, so the
# braces are doubled), reading the files write_key_files writes.
KEY_SETTINGS = f"""\
private_key = {{{{ file = "wechatpay-merchant.pem" }}}}
cert_serial_no = "{CERT_SERIAL_NO}"
apiv3_key = {{{{ file = "wechatpay-apiv3.key" }}}}
platform_public_key = {{{{ file = "wechatpay-platform-public.pem" }}}}
platform_public_key_id = "{PLATFORM_KEY_ID}"
"""


@dataclass(frozen=True)
class Keys:
    merchant: RSAPrivateKey
    platform: RSAPrivateKey
    stranger: RSAPrivateKey
    apiv3_key: str

    @property
    def merchant_pem(self) -> str:
        return private_pem(self.merchant)

    @property
    def stranger_pem(self) -> str:
        return private_pem(self.stranger)

    @property
    def platform_pem(self) -> str:
        return private_pem(self.platform)

    @property
    def platform_public_pem(self) -> str:
        return public_pem(self.platform)

    @property
    def merchant_public_pem(self) -> str:
        return public_pem(self.merchant)


def private_pem(key: RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _rsa() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def session_keys() -> Keys:
    alphabet = string.ascii_letters + string.digits
    return Keys(
        merchant=_rsa(),
        platform=_rsa(),
        stranger=_rsa(),
        apiv3_key="".join(secrets.choice(alphabet) for _ in range(32)),
    )


def merchant(keys: Keys, *, mchid: str = MCHID, appid: str = APPID) -> Merchant:
    return Merchant(
        mchid=mchid,
        appid=appid,
        public_key=keys.merchant.public_key(),
        cert_serial_no=CERT_SERIAL_NO,
        apiv3_key=keys.apiv3_key.encode(),
    )


def settings(keys: Keys, gateway: str, **overrides: Any) -> WechatpaySettings:
    values: dict[str, Any] = {
        "mchid": MCHID,
        "appid": APPID,
        "private_key": keys.merchant_pem,
        "cert_serial_no": CERT_SERIAL_NO,
        "apiv3_key": keys.apiv3_key,
        "platform_public_key": keys.platform_public_pem,
        "platform_public_key_id": PLATFORM_KEY_ID,
        "gateway": gateway,
        "timeout_seconds": 2.0,
        "max_attempts": 3,
        "backoff_seconds": 0.01,
    }
    values.update(overrides)
    return WechatpaySettings.model_validate(values)


@dataclass
class Verdict:
    notification: NotificationRequest
    event: ProviderEvent | None
    rejected: str | None


class NotifyReceiver:
    """branchpay's /notify/wechatpay/{branch} in miniature, on a loopback thread."""

    def __init__(
        self, provider: Provider, loop: asyncio.AbstractEventLoop, *, unavailable_for: int = 0
    ) -> None:
        self.provider = provider
        self.loop = loop
        self.unavailable_for = unavailable_for  # first deliveries answered 503, unparsed
        self.verdicts: asyncio.Queue[Verdict] = asyncio.Queue()
        self.app = Starlette(
            routes=[Route("/notify/wechatpay/{branch}", self.notify, methods=["POST"])]
        )

    async def notify(self, request: Request) -> Response:
        notification = NotificationRequest(
            method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query_params),
            body=await request.body(),
        )
        if self.unavailable_for > 0:
            self.unavailable_for -= 1
            unavailable = Verdict(notification, None, "branchpay unavailable")
            self.loop.call_soon_threadsafe(self.verdicts.put_nowait, unavailable)
            return Response(status_code=503)
        try:
            event = await self.provider.parse_notification(notification)
        except NotificationRejected as exc:
            verdict = Verdict(notification, None, str(exc))
        else:
            verdict = Verdict(notification, event, None)
        self.loop.call_soon_threadsafe(self.verdicts.put_nowait, verdict)
        reply = self.provider.notification_reply(accepted=verdict.rejected is None)
        return Response(reply.body, reply.status_code, media_type=reply.media_type)

    async def next(self, timeout: float = 10.0) -> Verdict:
        return await asyncio.wait_for(self.verdicts.get(), timeout)


def write_key_files(directory: Path) -> None:
    """The session's merchant key, APIv3 key and platform public key, as KEY_SETTINGS reads them."""
    keys = session_keys()
    for name, text in (
        ("wechatpay-merchant.pem", keys.merchant_pem),
        ("wechatpay-apiv3.key", keys.apiv3_key + "\n"),
        ("wechatpay-platform-public.pem", keys.platform_public_pem),
    ):
        (directory / name).write_text(text)
        (directory / name).chmod(0o600)


def simulator_app(*merchants: Merchant, **options: Any) -> Starlette:
    """The simulator knowing these merchants, signing with the session's platform key
    under PLATFORM_KEY_ID; ``options`` as create_app takes them."""
    keys = session_keys()
    return create_app(
        merchants=list(merchants),
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        **options,
    )
