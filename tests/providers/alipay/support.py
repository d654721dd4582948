"""Keys, the running simulator and provider factories shared by the Alipay tests.

Imported by the Alipay test modules beside it
(``from tests.providers.alipay.support import ...``, explicit names). Keys are
RSA 2048, generated once per process; the simulator runs on a free loopback
port for the whole session.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.plugin import private_key_pem, public_key_pem
from api.plugins.contract import NotificationRequest
from providers.alipay import AlipayProvider, AlipaySettings
from providers.alipay.simulator import AlipaySimulator, create_app
from providers.kit.loopback import LoopbackServer

APP_ID = "2021000000000001"
OTHER_APP_ID = "2021000000000002"
SELLER_ID = "2088000000000001"
BRANCH = "zj"


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One RSA 2048 key per name for the whole run (generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def app_key() -> rsa.RSAPrivateKey:
    return rsa_key("app")


def platform_key() -> rsa.RSAPrivateKey:
    return rsa_key("platform")


def settings_for(gateway: str, /, **overrides: Any) -> AlipaySettings:
    values: dict[str, Any] = {
        "app_id": APP_ID,
        "private_key": private_key_pem(app_key()),
        "alipay_public_key": public_key_pem(platform_key().public_key()),
        "seller_id": SELLER_ID,
        "gateway": gateway,
        "timeout_seconds": 2.0,
        "backoff_seconds": 0.01,
    }
    values.update(overrides)
    return AlipaySettings(**values)


@dataclass
class RunningSimulator:
    url: str
    simulator: AlipaySimulator

    @property
    def gateway(self) -> str:
        return f"{self.url}/gateway.do"


@pytest.fixture(scope="session")
def alipay_simulator() -> Iterator[RunningSimulator]:
    app = create_app(
        apps={
            APP_ID: app_key().public_key(),
            OTHER_APP_ID: rsa_key("other-app").public_key(),
        },
        alipay_private_key=platform_key(),
        seller_id=SELLER_ID,
    )
    with LoopbackServer(app) as server:
        yield RunningSimulator(server.url, app.state.simulator)


@pytest.fixture(scope="session")
async def alipay_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def alipay_provider(
    alipay_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> AlipayProvider:
    return AlipayProvider(settings_for(alipay_simulator.gateway), branch=BRANCH, http=alipay_http)


@pytest.fixture
async def clear_faults(
    alipay_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> AsyncIterator[None]:
    yield
    await alipay_http.delete(f"{alipay_simulator.url}/_control/faults")


@dataclass
class NotifyReceiver:
    """A branchpay-like notify endpoint on loopback that records what arrives.

    It answers ``success`` like an accepting branch; the test's event loop is
    woken for every request so a test awaits a delivery instead of sleeping.
    """

    loop: asyncio.AbstractEventLoop
    received: list[NotificationRequest] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def notify(request: Request) -> Response:
            received = NotificationRequest(
                method=request.method,
                headers={k.lower(): v for k, v in request.headers.items()},
                query=dict(request.query_params),
                body=await request.body(),
            )
            with self._lock:
                self.received.append(received)
            asyncio.run_coroutine_threadsafe(self._wake(), self.loop)
            return Response(b"success", media_type="text/plain")

        return Starlette(routes=[Route("/notify/alipay/{branch}", notify, methods=["POST"])])

    async def _wake(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[NotificationRequest]:
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)

        await asyncio.wait_for(enough(), timeout)
        with self._lock:
            return list(self.received)


@pytest.fixture
async def notify_receiver() -> AsyncIterator[tuple[NotifyReceiver, str]]:
    receiver = NotifyReceiver(asyncio.get_running_loop())
    with LoopbackServer(receiver.app()) as server:
        yield receiver, f"{server.url}/notify/alipay/{BRANCH}"
