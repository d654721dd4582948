"""The sandbox's GatewayDriver for the conformance kit, over the simulator's controls."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx

from api.plugin import NotificationRequest
from providers.kit.driver import GatewayDriver, SettleOutcome
from providers.sandbox import signing


class SandboxDriver(GatewayDriver):
    """Settles attempts through ``/control`` and spoils notifications for the kit."""

    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def settle(self, out_trade_no: str, outcome: SettleOutcome) -> NotificationRequest | None:
        response = await self.http.post(
            f"{self.base_url}/control/payments/{out_trade_no}/settle",
            json={"outcome": outcome, "deliver": False},
        )
        response.raise_for_status()
        return self._request(response.json()["notification"])

    @staticmethod
    def _request(notification: dict[str, Any]) -> NotificationRequest:
        return NotificationRequest(
            method="POST",
            headers={"content-type": "application/json", **notification["headers"]},
            query={},
            body=notification["body"].encode(),
        )

    async def redeliver(self, out_trade_no: str) -> NotificationRequest:
        # The control route signs the latest notification anew on every call.
        response = await self.http.get(
            f"{self.base_url}/control/notifications/{out_trade_no}/latest"
        )
        response.raise_for_status()
        return self._request(response.json())

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        headers = dict(notification.headers)
        impostor = secrets.token_bytes(32)
        headers.update(
            {k.lower(): v for k, v in signing.signed_headers(impostor, notification.body).items()}
        )
        return NotificationRequest(
            notification.method, headers, notification.query, notification.body
        )

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        data = json.loads(notification.body)
        data["amount_fen"] = int(data["amount_fen"]) + 1
        body = json.dumps(data, separators=(",", ":")).encode()
        return NotificationRequest(
            notification.method, dict(notification.headers), notification.query, body
        )

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        headers = {
            k: v for k, v in notification.headers.items() if k != signing.SIGNATURE_HEADER.lower()
        }
        return NotificationRequest(
            notification.method, headers, notification.query, notification.body
        )
