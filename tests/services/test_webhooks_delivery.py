"""Webhooks under concurrency, crashes, attacks and branch scopes, against real processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import ObjectId
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from providers.kit.loopback import LoopbackServer
from tests.services.conftest import CREATE_WEBHOOK_ENDPOINT as CREATE
from tests.services.conftest import (
    PayService,
    Receiver,
    SecondProcess,
    create_endpoint,
    serve_process,
    verified,
    webhook_service,
)
from tests.services.test_webhooks import ENDPOINT


def deliveries(service: PayService, **query: Any) -> list[dict[str, Any]]:
    return list(service.db.webhook_deliveries.find(query))


def test_twenty_parallel_notifications_over_two_processes_send_one_event_per_endpoint(
    start_payments: Callable[..., PayService],
    second_process: Callable[[PayService], SecondProcess],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = webhook_service(start_payments)
    monkeypatch.setenv("BRANCHPAY_WEBHOOKS_ALLOW_LOOPBACK", "true")
    monkeypatch.setenv("BRANCHPAY_WEBHOOK_POLL_SECONDS", "0.2")
    other = second_process(service)
    first, secret = create_endpoint(
        service, service.client, receiver.url, ["order.paid", "payment.succeeded"], ["zj"]
    )
    second, other_secret = create_endpoint(
        service, service.client, receiver.url, ["order.paid"], ["zj"]
    )
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    notification = service.settle(payment["outTradeNo"])

    async def both() -> list[httpx.Response]:
        here = service.deliver_many(notification, 10)
        async with httpx.AsyncClient(timeout=30.0) as http:
            there = asyncio.gather(
                *(
                    http.post(
                        f"{other.url}/notify/sandbox/zj",
                        content=notification["body"].encode(),
                        headers=notification["headers"],
                    )
                    for _ in range(10)
                )
            )
            a, b = await asyncio.gather(here, there)
        return [*a, *b]

    answers = asyncio.run(both())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    got = receiver.wait_for(lambda r: len(r) >= 3)
    time.sleep(1.0)  # anything doubled would arrive meanwhile
    types = sorted(r.event["type"] for r in receiver.received)
    assert types == ["order.paid", "order.paid", "payment.succeeded"]
    paid = [r for r in got if r.event["type"] == "order.paid"]
    assert paid[0].headers["webhook-id"] == paid[1].headers["webhook-id"]
    signers = []
    for received in got:
        try:
            verified(secret, received)
            signers.append("first")
        except Exception:
            verified(other_secret, received)
            signers.append("second")
    assert sorted(signers) == ["first", "first", "second"]
    assert len(deliveries(service, endpointId=first)) == 2
    assert len(deliveries(service, endpointId=second)) == 1
    assert service.db.webhook_events.count_documents({"type": "order.paid"}) == 1


class Stalling:
    """A receiver whose first request is held (never answered); the rest get 200."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.first_arrived = threading.Event()
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.url = ""

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            await request.body()
            with self.lock:
                self.ids.append(request.headers["webhook-id"])
                first = len(self.ids) == 1
            if first:
                self.first_arrived.set()
                while not self.released.is_set():  # held until the test ends
                    await asyncio.sleep(0.1)
            return Response("ok")

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.fixture
def stalling() -> Iterator[Stalling]:
    receiver = Stalling()
    server = LoopbackServer(receiver.app()).start()
    receiver.url = f"{server.url}/hook"
    yield receiver
    receiver.released.set()
    server.stop()


def serve(
    service: PayService, tmp_path: Path, name: str, **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    return serve_process(
        service,
        tmp_path,
        name,
        BRANCHPAY_WEBHOOKS_ALLOW_LOOPBACK="true",
        BRANCHPAY_WEBHOOK_POLL_SECONDS="0.2",
        **env,
    )


def test_a_process_killed_mid_delivery_leaves_it_to_another_after_the_lease(
    start_payments: Callable[..., PayService], stalling: Stalling, tmp_path: Path
) -> None:
    # This process records events but sends nothing: the two below deliver.
    service = webhook_service(start_payments, webhook_delivery=False)
    timing = {"BRANCHPAY_WEBHOOK_TIMEOUT_SECONDS": "30", "BRANCHPAY_WEBHOOK_LEASE_SECONDS": "31"}
    doomed, _ = serve(service, tmp_path, "doomed", **timing)
    create_endpoint(service, service.client, stalling.url, ["order.created"], ["zj"])
    service.create_order()
    assert stalling.first_arrived.wait(30), "the first process never tried the delivery"
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    (claimed,) = deliveries(service)
    assert claimed["status"] == "PENDING" and claimed["tries"] == 0  # its try was never recorded
    # Another process, started after the crash: it must wait for the lease, then deliver.
    survivor, _ = serve(service, tmp_path, "survivor", **timing)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(stalling.ids) < 2:
            time.sleep(0.2)
        assert len(stalling.ids) == 2 and stalling.ids[0] == stalling.ids[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and deliveries(service)[0]["status"] != "SUCCEEDED":
            time.sleep(0.1)
        (done,) = deliveries(service)
        assert done["status"] == "SUCCEEDED" and done["tries"] == 1
        assert done["attempts"][0]["at"] >= claimed["nextAttemptAt"]  # not before the lease ended
    finally:
        survivor.terminate()
        survivor.wait(20)


REFUSED_TARGETS = [
    ("https://10.0.0.7/hook", "WEBHOOK_TARGET_FORBIDDEN"),
    ("https://169.254.169.254/latest/meta-data", "WEBHOOK_TARGET_FORBIDDEN"),
    ("https://100.100.100.200/latest/meta-data", "WEBHOOK_TARGET_FORBIDDEN"),
    ("https://[::ffff:192.168.1.1]/hook", "WEBHOOK_TARGET_FORBIDDEN"),
    ("https://203.0.113.9/hook", "WEBHOOK_TARGET_FORBIDDEN"),
    ("http://93.184.216.34/hook", "WEBHOOK_URL_INVALID"),
    ("ftp://127.0.0.1/hook", "WEBHOOK_URL_INVALID"),
    ("https://user:pw@example.test/hook", "WEBHOOK_URL_INVALID"),
    ("https://a\u0001b.test/", "WEBHOOK_URL_INVALID"),
    ("https://" + "a" * 3000 + ".test/", "WEBHOOK_URL_INVALID"),
]


def test_private_and_metadata_targets_are_refused_at_registration(
    start_payments: Callable[..., PayService],
) -> None:
    service = webhook_service(start_payments)
    for url, code in REFUSED_TARGETS:
        payload = service.client.data(
            CREATE, {"input": {"url": url, "events": ["order.paid"], "branches": ["zj"]}}
        )["createWebhookEndpoint"]
        assert payload["endpoint"] is None and payload["secret"] is None, url
        assert [e["code"] for e in payload["userErrors"]] == [code], url
        assert "pw" not in payload["userErrors"][0]["message"]
    assert service.db.webhook_endpoints.count_documents({}) == 0


def test_loopback_is_refused_unless_allowed(start_payments: Callable[..., PayService]) -> None:
    service = start_payments()  # BRANCHPAY_WEBHOOKS_ALLOW_LOOPBACK left off, as in production
    payload = service.client.data(
        CREATE,
        {"input": {"url": "http://127.0.0.1:9/hook", "events": ["order.paid"], "branches": ["zj"]}},
    )["createWebhookEndpoint"]
    assert [e["code"] for e in payload["userErrors"]] == ["WEBHOOK_TARGET_FORBIDDEN"]


def test_a_target_that_became_private_fails_at_delivery_without_being_contacted(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments, webhook_retry_scale=0.001)
    endpoint_id, _ = create_endpoint(
        service, service.client, receiver.url, ["order.created"], ["zj"]
    )
    # As if its name now resolved to a private address: the check at connection time refuses it.
    service.db.webhook_endpoints.update_one(
        {"_id": endpoint_id}, {"$set": {"url": "https://10.0.0.7/hook"}}
    )
    service.create_order()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = deliveries(service, endpointId=endpoint_id, status="FAILED")
        if found:
            break
        time.sleep(0.1)
    (failed,) = found
    assert failed["tries"] == 1 and failed["attempts"][0]["error"] == "target_forbidden"
    assert receiver.received == []


def test_a_partner_of_one_branch_never_reaches_another_branch(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments)
    zhejiang = service.client_for("partner", "zj")
    refused = zhejiang.data(
        CREATE, {"input": {"url": receiver.url, "events": ["order.created"], "branches": ["bj"]}}
    )["createWebhookEndpoint"]
    assert [e["code"] for e in refused["userErrors"]] == ["UNKNOWN_BRANCH"]
    beijing_id, _ = create_endpoint(
        service, service.client_for("partner", "bj"), receiver.url, ["order.created"], ["bj"]
    )
    zj_id, _ = create_endpoint(service, zhejiang, receiver.url, ["order.created"], ["zj"])
    assert zhejiang.data(ENDPOINT, {"id": beijing_id})["webhookEndpoint"] is None
    listed = zhejiang.data("{ webhookEndpoints { id } }")["webhookEndpoints"]
    assert [e["id"] for e in listed] == [zj_id]
    service.create_order(branch="bj", offering="bj-plan-39")
    got = receiver.wait_for(lambda r: len(r) >= 1)
    time.sleep(0.5)
    assert [r.event["branch"] for r in receiver.received] == ["bj"]
    assert deliveries(service, endpointId=zj_id) == []
    assert got[0].event["data"]["order"]["branch"]["code"] == "bj"
    # Nor may it touch Beijing's endpoint, its deliveries or its events.
    update = zhejiang.post(
        "mutation($id: ID!) { updateWebhookEndpoint(input: {id: $id, enabled: false})"
        " { endpoint { id } userErrors { code } } }",
        {"id": beijing_id},
    )["data"]["updateWebhookEndpoint"]
    assert [e["code"] for e in update["userErrors"]] == ["WEBHOOK_ENDPOINT_NOT_FOUND"]
    replay = zhejiang.post(
        "mutation($e: String!) { replayWebhookEvent(input: {eventId: $e})"
        " { deliveries userErrors { code } } }",
        {"e": got[0].headers["webhook-id"]},
    )["data"]["replayWebhookEvent"]
    assert replay == {"deliveries": 0, "userErrors": [{"code": "WEBHOOK_EVENT_NOT_FOUND"}]}


def test_replay_sends_the_same_event_again_and_a_revoked_owner_pauses_the_endpoint(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments)
    partner = service.client_for("partner", "zj")
    endpoint_id, secret = create_endpoint(service, partner, receiver.url, ["order.created"], ["zj"])
    service.create_order()
    (first,) = receiver.wait_for(lambda r: len(r) >= 1)
    replay = partner.data(
        "mutation($e: String!) { replayWebhookEvent(input: {eventId: $e})"
        " { deliveries userErrors { code } } }",
        {"e": first.headers["webhook-id"]},
    )["replayWebhookEvent"]
    assert replay == {"deliveries": 1, "userErrors": []}
    _, again = receiver.wait_for(lambda r: len(r) >= 2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert verified(secret, again) == verified(secret, first)

    service.db.api_keys.update_one(
        {"name": service.key_name(partner)}, {"$set": {"revokedAt": datetime.now(UTC)}}
    )
    service.create_order()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        endpoint = service.db.webhook_endpoints.find_one({"_id": endpoint_id})
        if endpoint and endpoint.get("pausedReason"):
            break
        time.sleep(0.1)
    assert endpoint is not None and endpoint["pausedReason"] == "paused: the owner key was revoked"
    assert len(receiver.received) == 2  # nothing was sent for the revoked key
    (waiting,) = deliveries(service, endpointId=endpoint_id, status="PENDING")
    audit = service.db.audit_log.find_one({"action": "WEBHOOK_ENDPOINT_PAUSED"})
    assert audit is not None and audit["target"] == endpoint_id
    # An ops key may not take over a partner's endpoint (it would see unmasked data).
    taken = service.client.data(
        "mutation($id: ID!) { updateWebhookEndpoint(input: {id: $id, enabled: true})"
        " { endpoint { id } userErrors { code } } }",
        {"id": endpoint_id},
    )["updateWebhookEndpoint"]
    assert taken["userErrors"] == [{"code": "WEBHOOK_OWNER_REVOKED"}]
    # Another partner key of the branch enables it again, and so becomes the owner.
    successor = service.client_for("partner", "zj")
    enabled = successor.data(
        "mutation($id: ID!) { updateWebhookEndpoint(input: {id: $id, enabled: true})"
        " { endpoint { enabled ownerKey } userErrors { code } } }",
        {"id": endpoint_id},
    )["updateWebhookEndpoint"]
    assert enabled["endpoint"] == {"enabled": True, "ownerKey": service.key_name(successor)}
    *_, resumed = receiver.wait_for(lambda r: len(r) >= 3)
    assert resumed.headers["webhook-id"] == waiting["eventId"]  # the paused event, not lost
    assert resumed.event["data"]["order"]["customer"]["phone"] == "139****5678"
    assert ObjectId.is_valid(endpoint_id.removeprefix("we_"))
