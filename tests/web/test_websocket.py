"""GraphQL over WebSocket keeps the HTTP rules: limits, budget, sizes, logins, revocation.

Each test talks graphql-transport-ws to the real app under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws

from tests.conftest import RunningService
from tests.schema.test_limits import BOMBS, BRANCHES_COST

LIVE = "subscription($id: ID!) { orderEvents(orderId: $id) { status } }"
CREATE = """mutation($input: CreateOrderInput!) {
  createOrder(input: $input) { order { id } userErrors { code message } }
}"""


@contextlib.asynccontextmanager
async def socket(
    service: RunningService, key: str | None, *, init: bool = True
) -> AsyncIterator[AsyncWebSocketSession]:
    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        aconnect_ws(f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]) as ws,
    ):
        if init:
            payload = {"Authorization": f"Bearer {key}"} if key else {}
            await ws.send_json({"type": "connection_init", "payload": payload})
            ack = await ws.receive_json(timeout=10)
            assert ack["type"] == "connection_ack", ack
        yield ws


async def closed_with(ws: AsyncWebSocketSession, timeout: float = 10) -> int:
    """The close code the server sends next (skipping other messages)."""
    with pytest.raises(WebSocketDisconnect) as closed:
        while True:
            await ws.receive_json(timeout=timeout)
    return closed.value.code


async def subscribe(ws: AsyncWebSocketSession, op: str, query: str, variables: Any = None) -> None:
    await ws.send_json(
        {"id": op, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}}
    )


def an_open_order(service: RunningService) -> str:
    """A new Zhejiang order, waiting for payment."""
    offerings = service.client.data('{ catalog(branch: "zj", kind: PLAN) { id } }')["catalog"]
    created = service.client.data(
        CREATE,
        {
            "input": {
                "branch": "zj",
                "items": [{"offeringId": offerings[0]["id"], "quantity": 1}],
                "customer": {"name": "Li Lei", "phone": "13912345678"},
                "idempotencyKey": f"ws-{time.monotonic_ns()}",
            }
        },
    )["createOrder"]
    assert created["userErrors"] == [], created
    order_id: str = created["order"]["id"]
    return order_id


@pytest.mark.parametrize("kind", [kind for kind, (_, limit) in BOMBS.items() if limit])
def test_bombs_over_websocket_are_refused_with_the_limit(start_service: Any, kind: str) -> None:
    service = start_service()
    asyncio.run(_bombs_over_websocket_are_refused_with_the_limit(service, kind))


async def _bombs_over_websocket_are_refused_with_the_limit(
    service: RunningService, kind: str
) -> None:
    query, limit = BOMBS[kind]
    assert limit is not None
    async with socket(service, service.client.key) as ws:
        await subscribe(ws, "bomb", query)
        message = await ws.receive_json(timeout=10)
        assert message["type"] == "error" and message["id"] == "bomb"
        assert message["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert limit in message["payload"][0]["message"]
        await subscribe(ws, "fine", "{ branches { code } }")
        answer = await ws.receive_json(timeout=10)
        assert answer["type"] == "next" and answer["payload"]["data"]["branches"]
        assert answer["payload"]["extensions"]["cost"]["requested"] == BRANCHES_COST


def test_operations_on_one_socket_spend_the_keys_budget(start_service: Any) -> None:
    service = start_service(
        rate_limit_per_second=0.1,
        rate_limit_burst=10 * (BRANCHES_COST + 1),
        max_query_cost=BRANCHES_COST,
    )
    asyncio.run(_operations_on_one_socket_spend_the_keys_budget(service))


async def _operations_on_one_socket_spend_the_keys_budget(service: RunningService) -> None:
    # Each operation costs its query's points and 1 on arrival: the bucket holds ten.
    # One at a time: sent at once, all 30 arrival points would be spent before any cost.
    key = service.client_for("partner", "zj").key
    async with socket(service, key) as ws:
        outcomes: dict[str, int] = {}
        for n in range(30):
            await subscribe(ws, f"q{n}", "{ branches { code } }")
            while True:
                message = await ws.receive_json(timeout=10)
                if message["type"] == "next":
                    outcomes["served"] = outcomes.get("served", 0) + 1
                elif message["type"] == "error":
                    code = message["payload"][0]["extensions"]["code"]
                    outcomes[code] = outcomes.get(code, 0) + 1
                    break
                elif message["type"] == "complete":
                    break
        assert outcomes == {"served": 10, "RATE_LIMITED": 20}
    # HTTP shares the budget: the key is spent there too.
    assert (
        httpx.post(
            f"{service.url}/graphql",
            json={"query": "{ branches { code } }"},
            headers={"authorization": f"Bearer {key}"},
        ).status_code
        == 429
    )


def test_a_revoked_keys_open_socket_is_closed_within_a_second(start_service: Any) -> None:
    service = start_service()
    asyncio.run(_a_revoked_keys_open_socket_is_closed_within_a_second(service))


async def _a_revoked_keys_open_socket_is_closed_within_a_second(service: RunningService) -> None:
    client = service.client_for("partner", "zj", "bj", "yn")
    order_id = an_open_order(service)
    async with socket(service, client.key) as ws:
        await subscribe(ws, "live", LIVE, {"id": order_id})
        first = await ws.receive_json(timeout=10)
        assert first["type"] == "next"
        name = service.db.api_keys.find_one({})  # any is fine to find the collection
        assert name is not None
        key_id = client.key.split("_")[1] if client.key else ""
        service.db.api_keys.update_one({"_id": key_id}, {"$set": {"revokedAt": datetime.now(UTC)}})
        revoked_at = time.monotonic()
        assert await closed_with(ws, timeout=5) == 4403
        # Measured, not a latency assertion: the watch runs every 0.5 s; 5 s is the test's bound.
        assert time.monotonic() - revoked_at < 5


def test_the_next_operation_of_a_revoked_key_closes_the_socket(start_service: Any) -> None:
    service = start_service(key_recheck_interval_seconds=3600)
    asyncio.run(_the_next_operation_of_a_revoked_key_closes_the_socket(service))


async def _the_next_operation_of_a_revoked_key_closes_the_socket(service: RunningService) -> None:
    client = service.client_for("partner", "zj")
    async with socket(service, client.key) as ws:
        await subscribe(ws, "a", "{ branches { code } }")
        assert (await ws.receive_json(timeout=10))["type"] == "next"
        key_id = client.key.split("_")[1] if client.key else ""
        service.db.api_keys.update_one({"_id": key_id}, {"$set": {"revokedAt": datetime.now(UTC)}})
        await subscribe(
            ws, "b", 'mutation { cancelOrder(input: {orderId: "x"}) { userErrors { code } } }'
        )
        assert await closed_with(ws) == 4403


def test_failed_logins_over_websocket_count_against_the_address(start_service: Any) -> None:
    service = start_service(failed_auth_per_second=0.01, failed_auth_burst=3)
    asyncio.run(_failed_logins_over_websocket_count_against_the_address(service))


async def _failed_logins_over_websocket_count_against_the_address(service: RunningService) -> None:
    codes = []
    for _ in range(5):
        async with socket(service, None, init=False) as ws:
            await ws.send_json(
                {"type": "connection_init", "payload": {"Authorization": "Bearer bp_0_x"}}
            )
            codes.append(await closed_with(ws))
    assert codes == [4403, 4403, 4403, 4429, 4429]
    # HTTP shares the count: the address is refused there too.
    answer = httpx.post(f"{service.url}/graphql", json={"query": "{ branches { code } }"})
    assert answer.status_code == 429


def test_a_message_over_the_size_limit_closes_with_4413(start_service: Any) -> None:
    service = start_service()
    asyncio.run(_a_message_over_the_size_limit_closes_with_4413(service))


async def _a_message_over_the_size_limit_closes_with_4413(service: RunningService) -> None:
    order_id = an_open_order(service)
    async with socket(service, service.client.key) as ws:
        cancel = (
            "mutation($i: CancelOrderInput!) { cancelOrder(input: $i) { userErrors { code } } }"
        )
        await subscribe(
            ws, "big", cancel, {"i": {"orderId": order_id, "reason": "x" * (5 * 1024 * 1024)}}
        )
        assert await closed_with(ws) == 4413
    order = service.client.data("query($id: ID!) { order(id: $id) { status } }", {"id": order_id})
    assert order["order"]["status"] in {"PENDING_PAYMENT", "PAID"}


def test_a_message_nested_too_deeply_closes_with_a_close_frame(start_service: Any) -> None:
    service = start_service()
    asyncio.run(_a_message_nested_too_deeply_closes_with_a_close_frame(service))


async def _a_message_nested_too_deeply_closes_with_a_close_frame(service: RunningService) -> None:
    async with socket(service, service.client.key) as ws:
        await ws.send_text("[" * 100_000 + "]" * 100_000)
        assert await closed_with(ws) == 4400


@pytest.mark.parametrize(
    "message",
    [
        [1, 2],
        {"type": 3},
        {"type": "subscribe", "id": 1, "payload": {"query": "{ branches { code } }"}},
        {"type": "subscribe", "id": "x" * 500, "payload": {"query": "{ branches { code } }"}},
        {"type": "subscribe", "id": "1", "payload": "{ branches { code } }"},
        {"type": "subscribe", "id": "1", "payload": {"query": ["a"]}},
        {
            "type": "subscribe",
            "id": "1",
            "payload": {"query": "{ branches { code } }", "variables": [1]},
        },
    ],
    ids=[
        "list",
        "type-not-string",
        "id-not-string",
        "id-too-long",
        "payload-string",
        "query-list",
        "variables-list",
    ],
)
def test_a_message_off_the_protocol_closes_with_4400(start_service: Any, message: Any) -> None:
    service = start_service()
    asyncio.run(_a_message_off_the_protocol_closes_with_4400(service, message))


async def _a_message_off_the_protocol_closes_with_4400(
    service: RunningService, message: Any
) -> None:
    async with socket(service, service.client.key) as ws:
        await ws.send_text(json.dumps(message))
        assert await closed_with(ws) == 4400


def test_connection_init_must_arrive_in_time(start_service: Any) -> None:
    service = start_service(ws_connection_init_timeout_seconds=0.5)
    asyncio.run(_connection_init_must_arrive_in_time(service))


async def _connection_init_must_arrive_in_time(service: RunningService) -> None:
    async with socket(service, None, init=False) as ws:
        assert await closed_with(ws) == 4408


def test_operations_are_bounded_per_socket_and_per_key(start_service: Any) -> None:
    service = start_service(ws_max_operations_per_connection=2, ws_max_subscriptions_per_key=3)
    asyncio.run(_operations_are_bounded_per_socket_and_per_key(service))


async def _operations_are_bounded_per_socket_and_per_key(service: RunningService) -> None:
    order_id = an_open_order(service)
    key = service.client_for("partner", "zj", "bj", "yn").key
    async with socket(service, key) as one, socket(service, key) as two:
        for ws, ops in ((one, ("a", "b", "c")), (two, ("d", "e"))):
            for op in ops:
                await subscribe(ws, op, LIVE, {"id": order_id})
                message = await ws.receive_json(timeout=10)
                if op in ("c",):
                    assert message["type"] == "error", message  # the socket's limit of 2
                elif op == "e":
                    assert message["type"] == "error", message  # the key's limit of 3
                    assert "ws_max_subscriptions_per_key" in message["payload"][0]["message"]
                else:
                    assert message["type"] == "next", message
    await asyncio.sleep(0)
