"""The sandbox provider against its simulator, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import queue
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pluggy
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.plugins import hookspecs
from api.plugins.contract import (
    ActionKind,
    AttemptState,
    EventKind,
    GatewayError,
    NotificationRejected,
    NotificationRequest,
    PaymentMethod,
    PaymentRequest,
    RefundRequest,
    RefundState,
)
from providers.kit.loopback import LoopbackServer
from providers.sandbox import SandboxProvider, SandboxSettings, signing
from providers.sandbox.demo import demo_simulator, ensure_demo_keys
from providers.sandbox.simulator import create_app

BRANCH = "zj_mobile"


class NotifySink:
    """branchpay's notify endpoint stand-in: records deliveries, answers as scripted."""

    def __init__(self) -> None:
        self.received: queue.Queue[NotificationRequest] = queue.Queue()
        self.answers: list[int] = []

    async def notify(self, request: Request) -> Response:
        self.received.put(
            NotificationRequest(
                method=request.method,
                headers={k.lower(): v for k, v in request.headers.items()},
                query=dict(request.query_params),
                body=await request.body(),
            )
        )
        status = self.answers.pop(0) if self.answers else 200
        return Response(b'{"code":"SUCCESS"}', status_code=status)

    async def next(self, timeout: float = 5.0) -> NotificationRequest:
        return await asyncio.to_thread(self.received.get, timeout=timeout)

    def nothing_more(self) -> bool:
        return self.received.empty()


@pytest.fixture(scope="module")
def secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def simulator_url(secret: str) -> Iterator[str]:
    with LoopbackServer(create_app(secret.encode(), retry_delays=(0.05, 0.1))) as server:
        yield server.url


@pytest.fixture(scope="module")
def sink_server() -> Iterator[tuple[NotifySink, str]]:
    sink = NotifySink()
    app = Starlette(routes=[Route("/notify/sandbox/{branch}", sink.notify, methods=["POST"])])
    with LoopbackServer(app) as server:
        yield sink, f"{server.url}/notify/sandbox/{BRANCH}"


@pytest.fixture
def sink(sink_server: tuple[NotifySink, str]) -> Iterator[NotifySink]:
    sink, _ = sink_server
    yield sink
    while not sink.received.empty():
        sink.received.get_nowait()
    sink.answers.clear()


@pytest.fixture
def notify_url(sink_server: tuple[NotifySink, str]) -> str:
    return sink_server[1]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _settings(url: str, secret: str, **extra: object) -> SandboxSettings:
    return SandboxSettings.model_validate({"gateway": url, "secret": secret, **extra})


@pytest.fixture
def provider(simulator_url: str, secret: str, http: httpx.AsyncClient) -> SandboxProvider:
    settings = _settings(simulator_url, secret, backoff_seconds=0.01)
    return SandboxProvider(settings, branch=BRANCH, http=http)


def _request(
    notify_url: str,
    method: PaymentMethod = PaymentMethod.PAGE,
    amount_fen: int = 8800,
    **extra: object,
) -> PaymentRequest:
    fields: dict[str, object] = {
        "out_trade_no": "sb" + secrets.token_hex(10),
        "amount_fen": amount_fen,
        "currency": "CNY",
        "subject": "Top-up <b>100</b>",
        "method": method,
        "notify_url": notify_url,
        "expires_at": datetime.now(UTC) + timedelta(minutes=15),
        "return_url": "https://partner.example/done",
    }
    fields.update(extra)
    return PaymentRequest(**fields)  # type: ignore[arg-type]


async def _pay(http: httpx.AsyncClient, url: str, outcome: str = "success") -> httpx.Response:
    return await http.post(url, data={"outcome": outcome}, headers={"accept": "application/json"})


async def _fault(http: httpx.AsyncClient, simulator_url: str, **fault: object) -> None:
    response = await http.post(f"{simulator_url}/control/faults", json=fault)
    response.raise_for_status()


# --- the plugin and its settings --------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.load_setuptools_entrypoints("branchpay.providers", name="sandbox")
    provided = [cls for result in manager.hook.register_providers() for cls in result]
    assert provided == [SandboxProvider]
    assert SandboxProvider.display_name == "Sandbox (test payments)"
    # Every method but in-app pay (JSAPI), which only a platform's own app has.
    assert set(SandboxProvider.methods) == set(PaymentMethod) - {PaymentMethod.JSAPI}


def test_settings_keep_the_secret_out_of_repr_and_errors(secret: str) -> None:
    settings = _settings("http://127.0.0.1:8009", secret)
    assert secret not in repr(settings) and secret not in str(settings)
    assert settings.timeout_seconds == 10
    short = "tooshort"
    with pytest.raises(ValidationError) as info:
        _settings("http://127.0.0.1:8009", short)
    assert short not in str(info.value)
    with pytest.raises(ValidationError, match="gateway"):
        _settings("not a url", secret)


# --- create and the payer's side ---------------------------------------------------------


async def test_page_and_wap_redirect_to_a_pay_page_showing_amount_and_subject(
    provider: SandboxProvider, http: httpx.AsyncClient, notify_url: str
) -> None:
    for method in (PaymentMethod.PAGE, PaymentMethod.WAP):
        request = _request(notify_url, method, amount_fen=12345)
        action = await provider.create_payment(request)
        assert action.kind is ActionKind.REDIRECT
        assert action.url is not None and action.url.endswith(f"/pay/{request.out_trade_no}")
        page = await http.get(action.url)
        assert page.status_code == 200
        assert "123.45" in page.text
        assert "Top-up &lt;b&gt;100&lt;/b&gt;" in page.text  # the subject is escaped
        assert all(f'value="{o}"' in page.text for o in ("success", "fail", "close"))


async def test_qr_code_is_the_pay_url(
    provider: SandboxProvider, notify_url: str, http: httpx.AsyncClient
) -> None:
    action = await provider.create_payment(_request(notify_url, PaymentMethod.QR_CODE))
    assert action.kind is ActionKind.QR_CODE
    assert action.qr_code == action.url and action.qr_code is not None
    assert (await http.get(action.qr_code)).status_code == 200


async def test_app_payload_is_signed_and_opens_the_attempt(
    provider: SandboxProvider, simulator_url: str, notify_url: str, http: httpx.AsyncClient
) -> None:
    request = _request(notify_url, PaymentMethod.APP, amount_fen=500)
    action = await provider.create_payment(request)
    assert action.kind is ActionKind.APP_SDK and action.app_payload is not None
    opened = await http.post(f"{simulator_url}/app/open", content=action.app_payload)
    assert opened.status_code == 200
    assert opened.json()["pay_url"].endswith(f"/pay/{request.out_trade_no}")
    altered = json.loads(action.app_payload)
    altered["amount_fen"] = 1
    refused = await http.post(f"{simulator_url}/app/open", json=altered)
    assert refused.status_code == 401


async def test_browser_payment_sends_a_signed_notification_the_adapter_accepts(
    provider: SandboxProvider, http: httpx.AsyncClient, notify_url: str, sink: NotifySink
) -> None:
    request = _request(notify_url)
    action = await provider.create_payment(request)
    assert action.url is not None
    result_page = await http.post(action.url, data={"outcome": "success"})
    assert result_page.status_code == 200 and "Payment succeeded" in result_page.text
    assert "https://partner.example/done" in result_page.text
    delivered = await sink.next()
    event = await provider.parse_notification(delivered)
    assert event is not None
    assert event.kind is EventKind.PAYMENT_SUCCEEDED
    assert (event.out_trade_no, event.amount_fen, event.currency) == (
        request.out_trade_no,
        8800,
        "CNY",
    )
    again = await http.post(action.url, data={"outcome": "fail"})
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("outcome", "kind", "state"),
    [
        ("fail", EventKind.PAYMENT_FAILED, AttemptState.FAILED),
        ("close", EventKind.PAYMENT_CLOSED, AttemptState.CLOSED),
    ],
)
async def test_unsuccessful_outcomes_are_notified_and_queried(
    provider: SandboxProvider,
    http: httpx.AsyncClient,
    notify_url: str,
    sink: NotifySink,
    outcome: str,
    kind: EventKind,
    state: AttemptState,
) -> None:
    request = _request(notify_url)
    action = await provider.create_payment(request)
    assert action.url is not None
    assert (await _pay(http, action.url, outcome)).json()["status"] == state.value
    event = await provider.parse_notification(await sink.next())
    assert event is not None and event.kind is kind
    assert (await provider.query(request.out_trade_no)).state is state


async def test_notification_is_retried_until_branchpay_answers_2xx(
    provider: SandboxProvider, http: httpx.AsyncClient, notify_url: str, sink: NotifySink
) -> None:
    sink.answers.extend([500, 503])
    action = await provider.create_payment(_request(notify_url))
    assert action.url is not None
    await _pay(http, action.url)
    deliveries = [await sink.next() for _ in range(3)]
    events = [await provider.parse_notification(d) for d in deliveries]
    assert len({e.event_id for e in events if e is not None}) == 1
    assert sink.nothing_more()


async def test_redelivery_repeats_the_same_event(
    provider: SandboxProvider,
    http: httpx.AsyncClient,
    simulator_url: str,
    notify_url: str,
    sink: NotifySink,
) -> None:
    request = _request(notify_url)
    action = await provider.create_payment(request)
    assert action.url is not None
    await _pay(http, action.url)
    first = await provider.parse_notification(await sink.next())
    response = await http.post(
        f"{simulator_url}/control/notifications/{request.out_trade_no}/redeliver",
        params={"count": 3},
    )
    assert response.json()["statuses"] == [200, 200, 200]
    repeats = [await provider.parse_notification(await sink.next()) for _ in range(3)]
    assert first is not None
    assert {e.event_id for e in repeats if e is not None} == {first.event_id}


# --- notifications the adapter must refuse -------------------------------------------------


def _signed(secret: str, body: bytes, *, now: float | None = None) -> NotificationRequest:
    headers = {
        k.lower(): v for k, v in signing.signed_headers(secret.encode(), body, now=now).items()
    }
    return NotificationRequest("POST", {"content-type": "application/json", **headers}, {}, body)


def _body(**overrides: object) -> bytes:
    data: dict[str, object] = {
        "id": "ntf_1",
        "type": "payment.succeeded",
        "out_trade_no": "sb0123456789",
        "trade_no": "sbx1",
        "amount_fen": 8800,
        "currency": "CNY",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    data.update(overrides)
    return json.dumps(data).encode()


async def test_genuine_notification_built_outside_the_simulator_is_accepted(
    provider: SandboxProvider, secret: str
) -> None:
    event = await provider.parse_notification(_signed(secret, _body()))
    assert event is not None and event.event_id == "ntf_1" and event.amount_fen == 8800


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("stale", "five-minute"),
        ("future", "five-minute"),
        ("other branch's secret", "does not match"),
        ("no timestamp", "missing"),
        ("malformed body", "malformed body"),
        ("fractional amount", "whole number"),
        ("naive time", "UTC offset"),
    ],
)
async def test_bad_notifications_are_rejected(
    provider: SandboxProvider, secret: str, case: str, reason: str
) -> None:
    now = time.time()
    notification = {
        "stale": lambda: _signed(secret, _body(), now=now - 301),
        "future": lambda: _signed(secret, _body(), now=now + 301),
        "other branch's secret": lambda: _signed(secrets.token_urlsafe(32), _body()),
        "no timestamp": lambda: NotificationRequest(
            "POST",
            {
                k: v
                for k, v in _signed(secret, _body()).headers.items()
                if k != "x-sandbox-timestamp"
            },
            {},
            _body(),
        ),
        "malformed body": lambda: _signed(secret, b"{not json"),
        "fractional amount": lambda: _signed(secret, _body(amount_fen=88.5)),
        "naive time": lambda: _signed(secret, _body(occurred_at="2026-11-25T10:00:00")),
    }[case]()
    with pytest.raises(NotificationRejected, match=reason) as info:
        await provider.parse_notification(notification)
    assert secret not in str(info.value)


def test_replies_in_the_sandbox_format(provider: SandboxProvider) -> None:
    accepted = provider.notification_reply(accepted=True)
    rejected = provider.notification_reply(accepted=False)
    assert (accepted.status_code, json.loads(accepted.body)) == (200, {"code": "SUCCESS"})
    assert rejected.status_code == 400 and json.loads(rejected.body)["code"] == "FAIL"
    assert accepted.media_type == rejected.media_type == "application/json"


# --- query, refund, close -------------------------------------------------------------------


async def test_refunds_are_notified_idempotent_and_bounded(
    provider: SandboxProvider, http: httpx.AsyncClient, notify_url: str, sink: NotifySink
) -> None:
    request = _request(notify_url, amount_fen=1000)
    action = await provider.create_payment(request)
    assert action.url is not None
    await _pay(http, action.url)
    await sink.next()

    def refund(number: str, fen: int) -> RefundRequest:
        return RefundRequest(request.out_trade_no, number, fen, 1000, "CNY", "test", notify_url)

    first = await provider.refund(refund("rfA0000001", 600))
    repeat = await provider.refund(refund("rfA0000001", 600))
    assert first.state is repeat.state is RefundState.SUCCEEDED
    assert first.provider_refund_no == repeat.provider_refund_no
    event = await provider.parse_notification(await sink.next())
    assert event is not None and event.kind is EventKind.REFUND_SUCCEEDED
    assert (event.amount_fen, event.out_refund_no) == (600, "rfA0000001")
    too_much = await provider.refund(refund("rfA0000002", 401))
    assert too_much.state is RefundState.FAILED and "400 fen left" in (too_much.message or "")
    rest = await provider.refund(refund("rfA0000003", 400))
    assert rest.state is RefundState.SUCCEEDED
    # The repeated number sent no second notification: the next one is the rest.
    rest_event = await provider.parse_notification(await sink.next())
    assert rest_event is not None
    assert (rest_event.amount_fen, rest_event.out_refund_no) == (400, "rfA0000003")


async def test_refund_of_an_unpaid_attempt_is_refused(
    provider: SandboxProvider, notify_url: str
) -> None:
    request = _request(notify_url)
    await provider.create_payment(request)
    result = await provider.refund(
        RefundRequest(request.out_trade_no, "rfB0000001", 100, 8800, "CNY")
    )
    assert result.state is RefundState.FAILED


async def test_query_carries_the_notification_event_id(
    provider: SandboxProvider, http: httpx.AsyncClient, notify_url: str, sink: NotifySink
) -> None:
    request = _request(notify_url)
    action = await provider.create_payment(request)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING
    assert action.url is not None
    await _pay(http, action.url)
    notified = await provider.parse_notification(await sink.next())
    result = await provider.query(request.out_trade_no)
    assert result.state is AttemptState.SUCCEEDED and result.amount_fen == 8800
    assert notified is not None
    assert [e.event_id for e in result.events] == [notified.event_id]


async def test_close_then_pay_is_refused_and_paid_attempt_cannot_close(
    provider: SandboxProvider, http: httpx.AsyncClient, notify_url: str, sink: NotifySink
) -> None:
    unpaid = _request(notify_url)
    action = await provider.create_payment(unpaid)
    await provider.close(unpaid.out_trade_no)
    await provider.close(unpaid.out_trade_no)  # closing twice is harmless
    assert action.url is not None
    assert (await _pay(http, action.url)).status_code == 409
    paid = _request(notify_url)
    paid_action = await provider.create_payment(paid)
    assert paid_action.url is not None
    await _pay(http, paid_action.url)
    await sink.next()
    with pytest.raises(GatewayError, match="close") as info:
        await provider.close(paid.out_trade_no)
    assert not info.value.retryable


async def test_expired_attempt_reads_closed_and_cannot_be_paid(
    provider: SandboxProvider, http: httpx.AsyncClient, notify_url: str
) -> None:
    request = _request(notify_url, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    action = await provider.create_payment(request)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.CLOSED
    assert action.url is not None
    assert (await _pay(http, action.url)).status_code == 409


async def test_same_number_for_another_amount_is_refused(
    provider: SandboxProvider, notify_url: str
) -> None:
    request = _request(notify_url)
    await provider.create_payment(request)
    with pytest.raises(GatewayError, match="refused the payment"):
        await provider.create_payment(
            _request(notify_url, out_trade_no=request.out_trade_no, amount_fen=1)
        )


# --- authentication and failures -----------------------------------------------------------


async def test_simulator_refuses_unsigned_and_wrongly_signed_calls(
    simulator_url: str, http: httpx.AsyncClient, notify_url: str
) -> None:
    assert (await http.get(f"{simulator_url}/api/payments/sb0123456789")).status_code == 401
    impostor = SandboxProvider(
        _settings(simulator_url, secrets.token_urlsafe(32)), branch=BRANCH, http=http
    )
    with pytest.raises(GatewayError, match="signature") as info:
        await impostor.create_payment(_request(notify_url))
    assert not info.value.retryable


async def test_query_retries_through_transient_5xx(
    provider: SandboxProvider, http: httpx.AsyncClient, simulator_url: str, notify_url: str
) -> None:
    request = _request(notify_url)
    await provider.create_payment(request)
    await _fault(http, simulator_url, status=503, count=2)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING


async def test_persistent_5xx_is_a_retryable_gateway_error(
    provider: SandboxProvider, http: httpx.AsyncClient, simulator_url: str
) -> None:
    await _fault(http, simulator_url, status=500, count=3)
    with pytest.raises(GatewayError) as info:
        await provider.close("sb0123456789")
    assert info.value.retryable and info.value.outcome_unknown


async def test_create_is_sent_once(
    provider: SandboxProvider, http: httpx.AsyncClient, simulator_url: str, notify_url: str
) -> None:
    await _fault(http, simulator_url, status=502, count=1)
    request = _request(notify_url)
    with pytest.raises(GatewayError) as info:
        await provider.create_payment(request)
    assert info.value.outcome_unknown and not info.value.retryable
    # Had the adapter retried, the second try would have opened the attempt.
    assert (await provider.query(request.out_trade_no)).state is AttemptState.UNKNOWN


async def test_time_out_is_outcome_unknown(
    simulator_url: str, secret: str, http: httpx.AsyncClient, notify_url: str
) -> None:
    impatient = SandboxProvider(
        _settings(simulator_url, secret, timeout_seconds=0.2, retries=0), branch=BRANCH, http=http
    )
    await _fault(http, simulator_url, delay=1.0, count=1)
    with pytest.raises(GatewayError) as info:
        await impatient.close("sb0123456789")
    assert info.value.outcome_unknown and info.value.retryable


async def test_unreachable_gateway_is_not_outcome_unknown(
    secret: str, http: httpx.AsyncClient
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    offline = SandboxProvider(
        _settings(f"http://127.0.0.1:{closed_port}", secret, backoff_seconds=0.01),
        branch=BRANCH,
        http=http,
    )
    with pytest.raises(GatewayError, match="not sent") as info:
        await offline.query("sb0123456789")
    assert info.value.retryable and not info.value.outcome_unknown


# --- demo set-up ----------------------------------------------------------------------------


async def test_demo_secret_and_simulator_work_with_the_adapter(
    tmp_path: Path, http: httpx.AsyncClient, notify_url: str
) -> None:
    ensure_demo_keys(tmp_path / "secrets")
    path = tmp_path / "secrets" / "sandbox.key"
    assert path.stat().st_mode & 0o777 == 0o600
    made = path.read_text()
    ensure_demo_keys(tmp_path / "secrets")
    assert path.read_text() == made, "a demo secret once made stays"
    with LoopbackServer(demo_simulator(tmp_path / "secrets")) as server:
        # The config loader hands the file's text over as is, newline or not.
        demo = SandboxProvider(
            _settings(server.url, path.read_text() + "\n"), branch=BRANCH, http=http
        )
        action = await demo.create_payment(_request(notify_url, PaymentMethod.QR_CODE))
        assert action.qr_code is not None and action.qr_code.startswith(server.url)
