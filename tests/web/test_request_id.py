"""api/web/request_id.py: every answer names its request id, the last resort's 500 too.

The log lines themselves are read from a real `branchpay serve` in
tests/telemetry/test_logs.py; here the app runs in-process behind uvicorn.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from httpx_ws import aconnect_ws
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.telemetry.context import sane_request_id
from api.web.app import create_app
from tests.conftest import RunningService

GENERATED = re.compile(r"[0-9a-f]{32}")


def _app_with_a_bug(settings: Any, **options: Any) -> Any:
    async def bug(request: Request) -> Response:
        raise RuntimeError("a bug with secret detail")

    return create_app(settings, gated_routes=lambda services: [Route("/bug", bug)], **options)


def test_the_last_resorts_answer_carries_the_request_id_as_its_error_id(
    start_service: Any,
) -> None:
    service: RunningService = start_service(app_factory=_app_with_a_bug)
    for sent, expected in ((None, None), ("ticket-42", "ticket-42"), ("bad id", None)):
        headers = {"x-request-id": sent} if sent else {}
        answer = service.client.http.get("/bug", headers=headers)
        assert answer.status_code == 500
        request_id = answer.headers["x-request-id"]
        assert request_id == expected if expected else GENERATED.fullmatch(request_id)
        (error,) = answer.json()["errors"]
        assert error["extensions"] == {"code": "INTERNAL", "errorId": request_id}
        assert "secret" not in answer.text


def test_health_answers_carry_a_new_id_each(start_service: Any) -> None:
    service: RunningService = start_service()
    ids = {httpx.get(f"{service.url}/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(GENERATED.fullmatch(i) for i in ids)


def test_a_websocket_handshake_answers_with_the_connection_id(start_service: Any) -> None:
    service: RunningService = start_service()
    asyncio.run(_handshake(service))


async def _handshake(service: RunningService) -> None:
    async with (
        httpx.AsyncClient(timeout=10.0) as http,
        aconnect_ws(
            f"{service.url}/graphql",
            http,
            subprotocols=["graphql-transport-ws"],
            headers={"x-request-id": "ws-connection-1"},
        ) as ws,
    ):
        assert ws.response is not None
        assert ws.response.headers["x-request-id"] == "ws-connection-1"
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"Authorization": f"Bearer {service.client.key}"},
            }
        )
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"


def test_only_sane_ids_are_kept() -> None:
    assert sane_request_id("a-B_9.z:1/2+3=4@x") == "a-B_9.z:1/2+3=4@x"
    assert sane_request_id("x" * 128) == "x" * 128
    for insane in ("", "x" * 129, "two words", "line\nbreak", "line\r\n", 'q"uote', "é", None):
        assert sane_request_id(insane) is None, insane
