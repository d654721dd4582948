"""Certificates, settings and a notify receiver shared by the UnionPay test modules.

The stand-in UnionPay chain (root, middle, signing certificate) and the
merchant's signing certificate are generated once per session (RSA 2048). The
receiver is branchpay's ``/notify/unionpay/{branch}`` in miniature: a Starlette
app on loopback that runs each notification through a provider, answers with
its reply and hands the verdict to the test's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.plugins.contract import NotificationRejected, NotificationRequest, Provider
from providers.unionpay import message, pki
from providers.unionpay.settings import UnionpaySettings
from providers.unionpay.simulator import create_app

MER_ID = "777290058110048"
BRANCH = "zj-mobile"

# A provider table's certificate settings in a plugins.toml of a test (before
# str.format, so the braces are doubled), reading the files write_cert_files writes.
CERT_SETTINGS = """\
sign_cert = {{ file = "unionpay-sign-cert.pem" }}
sign_cert_private_key = {{ file = "unionpay-sign-key.pem" }}
middle_cert = {{ file = "unionpay-middle.pem" }}
root_cert = {{ file = "unionpay-root.pem" }}
"""


@cache
def chain() -> pki.Chain:
    return pki.issue_chain()


@cache
def other_chain() -> pki.Chain:
    """Someone else's CA, signing key and merchant: what a forger has."""
    return pki.issue_chain()


def simulator_app(*mer_ids: str) -> Starlette:
    """The simulator signing as the stand-in UnionPay, knowing the merchant under each merId."""
    c = chain()
    return create_app(
        sign_key=c.platform_key,
        sign_cert=c.platform_cert,
        merchants={mer_id: c.merchant_cert for mer_id in mer_ids or (MER_ID,)},
        delivery_backoff=0.01,
    )


def platform_signed(fields: dict[str, str], c: pki.Chain | None = None) -> dict[str, str]:
    """Fields signed by a stand-in UnionPay (ours unless another chain is given)."""
    c = c or chain()
    out = {k: v for k, v in fields.items() if k != "signature"}
    out["signPubKeyCert"] = pki.cert_pem(c.platform_cert)
    out["signature"] = message.sign(out, c.platform_key)
    return out


def settings(gateway: str, **overrides: Any) -> UnionpaySettings:
    return _settings(gateway, tuple(sorted(overrides.items())))


@cache
def _settings(gateway: str, overrides: tuple[tuple[str, Any], ...]) -> UnionpaySettings:
    # Validation parses and checks every key; the model is frozen, so share it.
    c = chain()
    values: dict[str, Any] = {
        "mer_id": MER_ID,
        "sign_cert": pki.cert_pem(c.merchant_cert),
        "sign_cert_private_key": pki.key_pem(c.merchant_key),
        "middle_cert": pki.cert_pem(c.middle_cert),
        "root_cert": pki.cert_pem(c.root_cert),
        "gateway": gateway,
        "timeout_seconds": 2.0,
        "max_attempts": 3,
        "backoff_seconds": 0.05,
    }
    if gateway.startswith("http://127.0.0.1"):
        values["file_transfer"] = gateway  # the simulator serves the file transfer too
    values.update(overrides)
    return UnionpaySettings.model_validate(values)


@dataclass(frozen=True)
class Verdict:
    status_code: int
    event: Any
    rejected: str | None


class NotifyReceiver:
    """Parses notifications with ``provider`` and queues each verdict for the test."""

    def __init__(self, provider: Provider, loop: asyncio.AbstractEventLoop) -> None:
        self.provider = provider
        self.loop = loop
        self.verdicts: asyncio.Queue[Verdict] = asyncio.Queue()
        self.app = Starlette(
            routes=[Route("/notify/unionpay/{branch}", self.notify, methods=["POST"])]
        )

    async def notify(self, request: Request) -> Response:
        notification = NotificationRequest(
            method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query_params),
            body=await request.body(),
        )
        try:
            event = await self.provider.parse_notification(notification)
        except NotificationRejected as exc:
            verdict = Verdict(400, None, str(exc))
        else:
            verdict = Verdict(200, event, None)
        self.loop.call_soon_threadsafe(self.verdicts.put_nowait, verdict)
        reply = self.provider.notification_reply(accepted=verdict.rejected is None)
        return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)

    async def next(self, timeout: float = 10.0) -> Verdict:
        return await asyncio.wait_for(self.verdicts.get(), timeout)


def write_cert_files(directory: Path) -> None:
    """The session chain's merchant certificate and key, middle and root, as CERT_SETTINGS reads."""
    c = chain()
    (directory / "unionpay-sign-cert.pem").write_text(pki.cert_pem(c.merchant_cert))
    key_file = directory / "unionpay-sign-key.pem"
    key_file.write_text(pki.key_pem(c.merchant_key))
    key_file.chmod(0o600)
    (directory / "unionpay-middle.pem").write_text(pki.cert_pem(c.middle_cert))
    (directory / "unionpay-root.pem").write_text(pki.cert_pem(c.root_cert))
