"""call_gateway counts each platform call once, by the provider and operation its caller names.

Against a real HTTP server on loopback: a stalled answer, a refused connection
and a good answer, as ``branchpay_gateway_calls_total`` reports them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from api.dev.devdb import free_port
from api.plugins.contract import GatewayError
from api.plugins.gateway import GatewaySettings, call_gateway
from api.telemetry import metrics
from providers.kit.loopback import LoopbackServer

logger = logging.getLogger("tests.gateway_metrics")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params.get("stall", "0")))
    return PlainTextResponse("ok")


@pytest.fixture(scope="module")
def platform() -> Iterator[str]:
    server = LoopbackServer(Starlette(routes=[Route("/", slow)])).start()
    yield server.url
    server.stop()


def calls(operation: str, outcome: str) -> float:
    labels = {"provider": "sandbox", "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("branchpay_gateway_calls_total", labels) or 0.0


async def call(url: str, operation: str, *, changes_state: bool) -> None:
    settings = GatewaySettings(
        gateway="http://127.0.0.1:9", timeout_seconds=0.2, max_attempts=2, backoff_seconds=0
    )
    async with httpx.AsyncClient(timeout=0.2) as http:

        async def send() -> httpx.Response:
            return await http.get(url)

        with metrics.gateway_call("sandbox", operation):
            await call_gateway(
                send,
                settings=settings,
                operation="test call",
                repeatable=True,
                changes_state=changes_state,
                logger=logger,
            )


@pytest.mark.parametrize(
    ("path", "changes_state", "outcome"),
    [
        ("/?stall=1", False, "timeout"),  # a query that timed out: nothing in doubt
        ("/?stall=1", True, "may_have_reached"),  # a close that timed out: in doubt
        (None, True, "platform_error"),  # connection refused: surely not sent
        ("/", True, "ok"),
    ],
)
async def test_each_call_is_counted_once_with_its_outcome(
    platform: str, path: str | None, changes_state: bool, outcome: str
) -> None:
    metrics.known_labels(branches=(), providers=("sandbox",))
    metrics.configure(True)
    url = f"{platform}{path}" if path else f"http://127.0.0.1:{free_port()}/"
    operation = "query" if not changes_state else "close"
    before = {
        name: calls(operation, name)
        for name in ("ok", "timeout", "may_have_reached", "platform_error")
    }
    if outcome == "ok":
        await call(url, operation, changes_state=changes_state)
    else:
        with pytest.raises(GatewayError):
            await call(url, operation, changes_state=changes_state)
    after = {name: calls(operation, name) for name in before}
    assert {name: after[name] - before[name] for name in before if after[name] != before[name]} == {
        outcome: 1
    }


async def test_a_call_outside_a_labelled_caller_is_other_and_unknown(platform: str) -> None:
    metrics.configure(True)
    labels = {"provider": "unknown", "operation": "other", "outcome": "ok"}
    before = REGISTRY.get_sample_value("branchpay_gateway_calls_total", labels) or 0.0
    settings = GatewaySettings(gateway="http://127.0.0.1:9")
    async with httpx.AsyncClient() as http:

        async def send() -> httpx.Response:
            return await http.get(f"{platform}/")

        await call_gateway(send, settings=settings, operation="x", repeatable=False, logger=logger)
    assert REGISTRY.get_sample_value("branchpay_gateway_calls_total", labels) == before + 1
