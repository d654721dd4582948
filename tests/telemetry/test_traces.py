"""Traces, for real: `branchpay serve --demo` sends its spans to an OTLP/HTTP receiver.

A partner creates an order, starts a sandbox payment, the payer pays at the
sandbox simulator, whose signed notification marks the order PAID, and the
order.paid webhook reaches a real receiver. The spans the collector gets,
after the service stopped (what the batch still held is flushed then), are
those of the GraphQL operations, their store commands, the gateway call, the
notification and the delivery, each request's under a root span carrying its
request id. Both with and without the GraphQL fast path.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.dev.devdb import free_port
from api.telemetry.traces import _without_query, traces_url
from tests.cli.test_serve import ROOT, environment, interrupt, wait_ready
from tests.conftest import GraphQLClient
from tests.dev.test_demo import CREATE, START, create_key, pay_as_payer
from tests.schema.test_mutation import offering_id
from tests.services.conftest import (
    CREATE_WEBHOOK_ENDPOINT,
    Receiver,
    receiver,  # noqa: F401 (a fixture)
)
from tests.telemetry.collector import (
    Collector,
    ReceivedSpan,
    collector,  # noqa: F401 (a fixture)
)

CUSTOMER = {"name": "Han Meimei", "phone": "13800138000"}
CREATE_ORDER = CREATE.replace("mutation(", "mutation CreateOrder(", 1)
STATUS = "query($id: ID!) { order(id: $id) { status } }"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    return tmp_path


def _tree(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    """``root`` and every span below it."""
    below: list[ReceivedSpan] = [root]
    for span in below:
        below.extend(s for s in spans if s.parent_id == span.span_id)
    return below


def _one(spans: list[ReceivedSpan], check: Callable[[ReceivedSpan], bool]) -> ReceivedSpan:
    found = [span for span in spans if check(span)]
    assert len(found) == 1, [(s.name, s.attributes) for s in found] or sorted(
        {s.name for s in spans}
    )
    return found[0]


def _root_of(spans: list[ReceivedSpan], request_id: str) -> ReceivedSpan:
    return _one(spans, lambda s: s.attributes.get("branchpay.request_id") == request_id)


def _is_store(span: ReceivedSpan) -> bool:
    return span.kind == "CLIENT" and span.attributes.get("db.system") == "mongodb"


def _is_http_call(span: ReceivedSpan) -> bool:
    return span.kind == "CLIENT" and "opentelemetry.instrumentation.httpx" in span.scope


@pytest.mark.parametrize("fast_path", ["true", "false"])
def test_a_paid_order_is_traced_from_request_to_webhook(
    workdir: Path,
    collector: Collector,  # noqa: F811 (the fixture)
    receiver: Receiver,  # noqa: F811 (the fixture)
    fast_path: str,
) -> None:
    api_port, db_port = free_port(), free_port()
    url = f"http://127.0.0.1:{api_port}"
    env = environment(workdir, db_port) | {
        "BRANCHPAY_SEED_DEMO_ORDERS": "0",
        "BRANCHPAY_OTEL_ENDPOINT": collector.url,
        "BRANCHPAY_OTEL_SERVICE_NAME": "branchpay-test",
        "BRANCHPAY_GRAPHQL_FAST_PATH": fast_path,
        # Nothing leaves before the shutdown: the test sees the flush at the end.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--demo", "--port", str(api_port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # createOrder sends its own X-Request-ID; startPayment gets one generated.
    sent = f"create-{uuid.uuid4().hex[:8]}"
    try:
        wait_ready(process, url)
        key = create_key(workdir, env, "--role", "ops", "--name", "trace-ops")
        partner = GraphQLClient(url, key)
        registered = partner.data(
            CREATE_WEBHOOK_ENDPOINT,
            {"input": {"url": receiver.url, "events": ["order.paid"], "branches": ["zj"]}},
        )["createWebhookEndpoint"]
        assert registered["userErrors"] == [], registered

        def post(
            query: str, variables: dict[str, Any], headers: dict[str, str] | None = None
        ) -> tuple[Any, str]:
            response = partner.http.post(
                "/graphql", json={"query": query, "variables": variables}, headers=headers
            )
            body = response.json()
            assert not body.get("errors"), body
            return body["data"], response.headers["x-request-id"]

        created, create_id = post(
            CREATE_ORDER,
            {
                "input": {
                    "branch": "zj",
                    "items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 1}],
                    "customer": CUSTOMER,
                    "idempotencyKey": f"trace-{uuid.uuid4().hex}",
                }
            },
            {"x-request-id": sent},
        )
        assert create_id == sent
        order_id = created["createOrder"]["order"]["id"]
        started, start_id = post(
            START,
            {"input": {"orderId": order_id, "provider": "sandbox", "method": "QR_CODE"}},
        )
        assert started["startPayment"]["userErrors"] == [], started
        pay_as_payer(started["startPayment"]["action"]["qrCode"])
        deadline = time.monotonic() + 20
        while partner.data(STATUS, {"id": order_id})["order"]["status"] != "PAID":
            assert time.monotonic() < deadline, "the order was not paid"
            time.sleep(0.1)
        receiver.wait_for(lambda got: len(got) == 1)
        # A delivery's span ends once its try is recorded, just after the receiver answered.
        time.sleep(1.0)
        assert collector.received() == [], "spans left before the shutdown"
    finally:
        output = interrupt(process)

    spans = collector.wait_for(lambda got: any(s.name == "webhook delivery" for s in got))
    assert collector.content_types == {"application/x-protobuf"}
    assert {s.service for s in spans} == {"branchpay-test"}, output

    # createOrder: the request's root span with the request id, the operation, its store commands.
    root = _root_of(spans, create_id)
    assert (root.name, root.kind, root.parent_id) == ("POST /graphql", "SERVER", "")
    assert root.attributes["http.response.status_code"] == 200
    create_tree = _tree(spans, root)
    operation = _one(create_tree, lambda s: s.scope == "strawberry" and s.parent_id == root.span_id)
    assert operation.name == "mutation CreateOrder"
    assert operation.attributes["graphql.operation.type"] == "mutation"
    assert operation.attributes["graphql.operation.name"] == "CreateOrder"
    assert "createOrder(input: $input)" in operation.attributes["query"]
    assert {"GraphQL Parsing", "GraphQL Validation"} <= {
        s.name for s in create_tree if s.parent_id == operation.span_id
    }
    commands = [s for s in _tree(spans, operation) if _is_store(s)]
    assert any(s.name.endswith(".insert") for s in commands), [s.name for s in commands]
    assert all(s.attributes["db.name"] for s in commands)

    # startPayment: the gateway call to the sandbox simulator, inside the operation.
    start_root = _root_of(spans, start_id)
    start_operation = _one(
        _tree(spans, start_root), lambda s: s.scope == "strawberry" and s.name == "mutation"
    )  # an anonymous operation is named by its type
    (gateway_call,) = [s for s in _tree(spans, start_operation) if _is_http_call(s)]
    assert gateway_call.name == "POST"
    assert gateway_call.attributes["http.status_code"] in (200, 201)

    # The simulator's notification: its own request, the notification span, its store writes.
    notification = _one(spans, lambda s: s.name == "notification")
    assert notification.attributes["branchpay.provider"] == "sandbox"
    assert notification.attributes["branchpay.branch"] == "zj"
    assert notification.attributes["branchpay.notification_result"] == "applied"
    notify_root = _one(spans, lambda s: s.span_id == notification.parent_id)
    assert notify_root.name == "POST /notify/{provider}/{branch}"
    assert notify_root.attributes["branchpay.request_id"]
    assert any(_is_store(s) for s in _tree(spans, notification))

    # The webhook delivery: a trace of its own, with the POST to the receiver inside.
    delivery = _one(spans, lambda s: s.name == "webhook delivery")
    assert delivery.parent_id == ""
    assert delivery.attributes["branchpay.branch"] == "zj"
    assert delivery.attributes["branchpay.delivery_status"] == "SUCCEEDED"
    assert delivery.attributes["branchpay.response_status"] == 200
    (sent,) = [s for s in _tree(spans, delivery) if _is_http_call(s)]
    assert sent.attributes["http.url"] == receiver.url
    assert any(_is_store(s) for s in _tree(spans, delivery))

    # The probes wait_ready sent are not traced; nor are their store pings.
    assert not [s for s in spans if s.attributes.get("url.path") == "/readyz"]
    # Nothing of the customer, and no store command or call outside a span of ours.
    text = repr([(s.name, s.attributes) for s in spans])
    assert CUSTOMER["phone"] not in text and CUSTOMER["name"] not in text
    assert all(s.parent_id for s in spans if s.kind == "CLIENT")


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otel.example/base/", "https://otel.example/base/v1/traces"),
        ("http://127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318/v1/traces"),
    ],
)
def test_the_endpoint_is_a_base_url_as_otel_exporter_otlp_endpoint_is(
    endpoint: str, url: str
) -> None:
    assert traces_url(endpoint) == url


def test_a_calls_url_is_recorded_without_its_query(
    collector: Collector,  # noqa: F811 (the fixture)
) -> None:
    """A gateway URL may carry a signature, a webhook URL a partner's token."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def call() -> int:
        async with httpx.AsyncClient() as client:
            HTTPXClientInstrumentor.instrument_client(
                client, tracer_provider=provider, request_hook=_without_query
            )
            answer = await client.get(f"{collector.url}/v1/traces?sign=s3cret&token=t0ken")
            return answer.status_code

    assert asyncio.run(call()) == 405  # a real answer: the collector only takes POST
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["http.url"] == f"{collector.url}/v1/traces"
    assert "s3cret" not in repr(dict(span.attributes))
