"""The sandbox's GatewayDriver for the conformance kit, over the simulator's controls.

Payment codes pick the payer's behaviour by their last digit (see
:mod:`providers.sandbox.simulator`): 1 pays at once, 2 confirms after 2
queries, 3 never confirms.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx

from api.plugin import NotificationRequest
from providers.kit.driver import CodeBehaviour, GatewayDriver, SettleOutcome, behaviour_code
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

    async def code_notification(self, out_trade_no: str) -> NotificationRequest | None:
        """The notification the simulator sent when a confirming payer paid."""
        return await self.redeliver(out_trade_no)

    def payment_code(self, behaviour: CodeBehaviour) -> str:
        return behaviour_code("99", 18, behaviour)

    async def taken_fen(self, out_trade_no: str) -> int:
        response = await self.http.get(f"{self.base_url}/control/payments/{out_trade_no}/taken")
        response.raise_for_status()
        return int(response.json()["taken_fen"])

    async def resign(
        self,
        notification: NotificationRequest,
        *,
        amount_fen: int | None = None,
        merchant: str | None = None,
        out_trade_no: str | None = None,
    ) -> NotificationRequest:
        # Only the simulator holds the genuine key: it re-signs what it sent.
        response = await self.http.post(
            f"{self.base_url}/control/notifications/resign",
            json={
                "body": notification.body.decode(),
                "amount_fen": amount_fen,
                "merchant_id": merchant,
                "out_trade_no": out_trade_no,
            },
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
