"""Example Pay's GatewayDriver for branchpay's conformance kit."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qsl, urlencode

import httpx

from api.plugin import NotificationRequest
from branchpay_example_provider import signing
from providers.kit import GatewayDriver, SettleOutcome


def _request(fields: dict[str, str]) -> NotificationRequest:
    return NotificationRequest(
        method="POST",
        headers={"content-type": "application/x-www-form-urlencoded"},
        query={},
        body=urlencode(fields).encode(),
    )


def _fields(notification: NotificationRequest) -> dict[str, str]:
    return dict(parse_qsl(notification.body.decode()))


class ExamplePayDriver(GatewayDriver):
    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def settle(self, out_trade_no: str, outcome: SettleOutcome) -> NotificationRequest | None:
        response = await self.http.post(
            f"{self.base_url}/control/settle/{out_trade_no}", json={"outcome": outcome}
        )
        response.raise_for_status()
        return _request(dict(parse_qsl(response.json()["body"])))

    async def redeliver(self, out_trade_no: str) -> NotificationRequest:
        response = await self.http.post(f"{self.base_url}/control/redeliver/{out_trade_no}")
        response.raise_for_status()
        return _request(dict(parse_qsl(response.json()["body"])))

    async def resign(
        self,
        notification: NotificationRequest,
        *,
        amount_fen: int | None = None,
        merchant: str | None = None,
        out_trade_no: str | None = None,
    ) -> NotificationRequest:
        # Only the gateway holds the merchant's key: it re-signs its latest notification.
        response = await self.http.post(
            f"{self.base_url}/control/resign/{_fields(notification)['out_trade_no']}",
            json={"amount": amount_fen, "merchant_id": merchant, "out_trade_no": out_trade_no},
        )
        response.raise_for_status()
        return _request(dict(parse_qsl(response.json()["body"])))

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        fields = _fields(notification)
        fields["sign"] = signing.sign(secrets.token_bytes(32), fields)
        return _request(fields)

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        fields = _fields(notification)
        fields["amount"] = str(int(fields["amount"]) + 100)
        return _request(fields)

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        fields = _fields(notification)
        del fields["sign"]
        return _request(fields)
