"""The simulator toolkit: loopback-only delivery, bounded retries, faults, pages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from providers.kit import simulator as kit
from providers.kit.simulator import Fault, FaultQueue, Notifier, is_loopback_url, pay_page

OUTSIDE = "http://203.0.113.7/notify/x/zj"


class Recorder:
    """A transport that answers from a list of statuses and records every request."""

    def __init__(self, *statuses: int, text: str = "ok") -> None:
        self.statuses = list(statuses)
        self.text = text
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(status, text=self.text)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def signer(counter: list[int], body: bytes = b"{}") -> Callable[[], tuple[dict[str, str], bytes]]:
    def sign() -> tuple[dict[str, str], bytes]:
        counter.append(1)
        return {"x-try": str(len(counter))}, body

    return sign


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000/notify", True),
        ("http://127.8.9.10/notify", True),
        ("https://localhost/notify", True),
        ("http://LOCALHOST:9/n", True),
        ("http://[::1]:8000/notify", True),
        ("http://203.0.113.7/notify", False),
        ("http://0.0.0.0/notify", False),
        ("http://[::ffff:8.8.8.8]/notify", False),
        ("http://127.0.0.1.evil.example/notify", False),
        ("http://localhost.evil.example/notify", False),
        ("http://example.com@203.0.113.7/notify", False),
        ("ftp://127.0.0.1/notify", False),
        ("/notify/relative", False),
        ("http://[::1/broken", False),
        ("", False),
    ],
)
def test_only_loopback_targets_count_as_loopback(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


async def test_retries_after_each_delay_until_accepted_signing_every_try() -> None:
    recorder = Recorder(500, 502, 200, 200)
    notifier = Notifier(retry_delays=(0.0, 0.0, 0.0), transport=recorder.transport)
    tries: list[int] = []
    delivery = await notifier.deliver("http://127.0.0.1:9/n", signer(tries), ref="n1")
    assert delivery.statuses == [500, 502, 200] and delivery.accepted
    assert len(tries) == 3, "signed anew for every try"
    assert [r.headers["x-try"] for r in recorder.requests] == ["1", "2", "3"]
    assert notifier.log == [delivery] and delivery.as_json()["ref"] == "n1"


async def test_retries_are_bounded() -> None:
    recorder = Recorder(503)
    notifier = Notifier(retry_delays=(0.0, 0.0), transport=recorder.transport)
    delivery = await notifier.deliver("http://127.0.0.1:9/n", signer([]))
    assert delivery.statuses == [503, 503, 503] and not delivery.accepted
    assert len(recorder.requests) == 3
    with pytest.raises(ValueError, match="at most"):
        Notifier(retry_delays=[0.0] * Notifier.MAX_TRIES)
    with pytest.raises(ValueError, match="negative"):
        Notifier(retry_delays=(-1.0,))


async def test_a_transport_failure_is_a_try_without_a_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    notifier = Notifier(retry_delays=(0.0,), transport=httpx.MockTransport(refuse))
    delivery = await notifier.deliver("http://127.0.0.1:9/n", signer([]))
    assert delivery.statuses == [None, None] and delivery.reply == "ConnectError"


async def test_accept_decides_what_ends_the_tries() -> None:
    recorder = Recorder(200, text="fail")
    notifier = Notifier(
        retry_delays=(0.0,),
        accept=lambda r: r.status_code == 200 and r.text == "success",
        transport=recorder.transport,
    )
    delivery = await notifier.deliver("http://127.0.0.1:9/n", signer([]))
    assert delivery.statuses == [200, 200] and not delivery.accepted and delivery.reply == "fail"


async def test_a_non_loopback_target_is_never_contacted() -> None:
    recorder = Recorder(200)
    notifier = Notifier(retry_delays=(0.0, 0.0), transport=recorder.transport)
    tries: list[int] = []
    delivery = await notifier.deliver(OUTSIDE, signer(tries))
    assert recorder.requests == [] and tries == []
    assert delivery.statuses == [None] and delivery.reply == kit.NOT_LOOPBACK
    assert not delivery.accepted and notifier.log == [delivery]


async def test_background_deliveries_can_be_drained_and_cancelled() -> None:
    recorder = Recorder(500, 200)
    notifier = Notifier(retry_delays=(0.01,), transport=recorder.transport)
    task = notifier.in_background("http://127.0.0.1:9/n", signer([]), ref="bg")
    assert notifier.pending == 1
    await notifier.drain()
    assert notifier.pending == 0 and task.result().statuses == [500, 200]

    slow = Notifier(transport=recorder.transport)
    stalled = slow.in_background("http://127.0.0.1:9/n", signer([]), delay=60)
    await slow.aclose()
    assert stalled.cancelled() and slow.log == []


async def test_the_lifespan_cancels_what_is_still_being_delivered() -> None:
    notifier = Notifier(transport=Recorder(200).transport)
    async with notifier.lifespan(object()):
        task = notifier.in_background("http://127.0.0.1:9/n", signer([]), delay=60)
    assert task.cancelled()


def test_faults_match_by_operation_and_are_used_up() -> None:
    queue = FaultQueue()
    queue.add(Fault("error", remaining=2, target="queryTrans.do"))
    queue.add(Fault("stall", target="/v3/refund", prefix=True, seconds=1.5))
    queue.add(Fault("any"))
    assert queue.take("backTransReq.do") is not None and len(queue) == 2  # "any" used up
    assert queue.peek("/v3/refund/domestic/refunds") is not None and len(queue) == 2
    assert queue.take("/v3/refund/domestic/refunds").kind == "stall"  # type: ignore[union-attr]
    assert queue.take("/v3/pay") is None
    first = queue.take("queryTrans.do")
    assert first is not None and first.remaining == 1 and len(queue) == 1
    assert queue.take("queryTrans.do", kinds={"lost_answer"}) is None
    assert queue.take("queryTrans.do") is not None and not queue and queue.pending == []


def test_one_fault_per_target_replaces_the_pending_one() -> None:
    queue = FaultQueue(one_per_target=True)
    queue.add(Fault("error", remaining=3, target="a"))
    assert queue.add(Fault("stall", target="a")) == 1
    assert queue.add(Fault("error", remaining=0, target="b")) == 2
    assert queue.pending[1].remaining == 1, "a fault applies to one call at least"
    queue.clear()
    assert len(queue) == 0


def test_the_pay_page_escapes_and_shows_the_state() -> None:
    text = pay_page("T", lines=["<b>tea</b>", ""], amount_fen=12345, action="/pay/1?a=<x>")
    assert "&lt;b&gt;tea&lt;/b&gt;" in text and "123.45" in text
    assert 'action="/pay/1?a=&lt;x&gt;"' in text
    assert text.count("<button") == 3 and 'value="close"' in text
    settled = pay_page("T", lines=[], amount_fen=5, settled="paid")
    assert "<button" not in settled and "This payment is paid." in settled and "0.05" in settled


async def test_read_fields_takes_json_form_and_query() -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(await kit.read_fields(request))

    app = Starlette(routes=[Route("/c", echo, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/c?x=1", json={"count": 2})).json() == {"x": "1", "count": 2}
        assert (await c.post("/c", data={"times": "3"})).json() == {"times": "3"}
        assert (await c.post("/c?x=1")).json() == {"x": "1"}


# --- every simulator refuses a non-loopback notify target -------------------------------


def _sandbox(secrets: Path) -> tuple[Notifier, Callable[[str], Any]]:
    from providers.sandbox import demo

    demo.ensure_demo_keys(secrets)
    gateway = demo.demo_simulator(secrets).state.gateway

    async def send(url: str) -> None:
        gateway._deliver_in_background(url, b'{"id":"ntf_1"}')
        await gateway.notifier.drain()

    return gateway.notifier, send


def _alipay(secrets: Path) -> tuple[Notifier, Callable[[str], Any]]:
    from providers.alipay import demo
    from providers.alipay.simulator import Notification, Trade

    demo.ensure_demo_keys(secrets)
    simulator = demo.demo_simulator(secrets).state.simulator

    async def send(url: str) -> None:
        trade = Trade("app", "o1", "t1", 1, "s", "alipay.trade.page.pay", url, datetime.now(UTC))
        delivery = await simulator._deliver(trade, Notification({"notify_id": "n1"}, url))
        assert simulator.deliveries[-1] is delivery

    return simulator.notifier, send


def _wechatpay(secrets: Path) -> tuple[Notifier, Callable[[str], Any]]:
    from providers.wechatpay import demo
    from providers.wechatpay.simulator import Attempt

    demo.ensure_demo_keys(secrets)
    gateway = demo.demo_simulator(secrets).state.gateway
    merchant = next(iter(gateway.merchants.values()))

    async def send(url: str) -> None:
        attempt = Attempt(merchant, "o1", "NATIVE", {}, 1, url, None, "wx1")
        await gateway.notify(attempt, b"{}", url)

    gateway.redelivery_delays = (0.0, 0.0)
    return gateway.notifier, send


def _unionpay(secrets: Path) -> tuple[Notifier, Callable[[str], Any]]:
    from providers.unionpay import demo
    from providers.unionpay.simulator import Transaction

    demo.ensure_demo_keys(secrets)
    gateway = demo.demo_simulator(secrets).state.gateway
    gateway.notifier.retry_delays = (0.0, 0.0)

    async def send(url: str) -> None:
        txn = Transaction("m", "o1", "20260101000000", "01", "01", "000201", 1, back_url=url)
        await gateway.deliver(txn, {"orderId": "o1"})
        assert txn.deliveries == [None if url == OUTSIDE else 200]

    return gateway.notifier, send


@pytest.mark.parametrize("make", [_sandbox, _alipay, _wechatpay, _unionpay])
async def test_every_simulator_refuses_a_non_loopback_notify_target(
    make: Callable[[Path], tuple[Notifier, Callable[[str], Any]]], tmp_path: Path
) -> None:
    notifier, send = make(tmp_path)
    recorder = Recorder(200)
    notifier.transport = recorder.transport
    await send(OUTSIDE)
    assert recorder.requests == [], "a simulator must never talk to the outside world"
    assert notifier.log[-1].reply == kit.NOT_LOOPBACK and notifier.log[-1].statuses == [None]
    await send("http://127.0.0.1:9/notify")  # the same path reaches a loopback target
    assert len(recorder.requests) == 1 and notifier.log[-1].accepted


# --- every simulator serves the shared controls under its own prefix ------------------------

SHARED_CONTROLS = [
    # (provider, prefix, the simulator's own documented way to inject a fault)
    ("sandbox", "/control", {"json": {"status": 503, "count": 2}}),
    ("alipay", "/_control", {"data": {"kind": "http_500", "times": "2"}}),
    ("wechatpay", "/control", {"json": {"kind": "error", "times": 2}}),
    ("unionpay", "/control", {"json": {"endpoint": "queryTrans.do", "mode": "error", "count": 2}}),
]


@pytest.mark.parametrize(("provider", "prefix", "fault"), SHARED_CONTROLS)
async def test_every_simulator_lists_its_deliveries_and_faults_and_clears_them(
    provider: str, prefix: str, fault: dict[str, Any], tmp_path: Path
) -> None:
    import importlib

    demo = importlib.import_module(f"providers.{provider}.demo")
    demo.ensure_demo_keys(tmp_path)
    app = demo.demo_simulator(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        assert (await client.get(f"{prefix}/deliveries")).json() == []
        assert (await client.get(f"{prefix}/faults")).json() == {"pending_faults": []}
        assert (await client.post(f"{prefix}/faults", **fault)).status_code < 300
        pending = (await client.get(f"{prefix}/faults")).json()["pending_faults"]
        assert len(pending) == 1 and pending[0]["remaining"] == 2
        assert (await client.delete(f"{prefix}/faults")).status_code < 300
        assert (await client.get(f"{prefix}/faults")).json() == {"pending_faults": []}
