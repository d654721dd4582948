"""The conformance kit's view of the Alipay simulator (a GatewayDriver).

``settle`` asks the running simulator to settle a trade and hands back the
notification Alipay would send, without sending it; ``resign`` has the
simulator change a field of one and sign it anew with Alipay's key. The three
spoiled copies are built here: re-signed with a key that is not Alipay's, an amount changed
after signing, and the signature removed.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from api.plugin import ActionKind, NotificationRequest, PaymentAction
from providers.alipay.amounts import fen_to_yuan, yuan_to_fen
from providers.alipay.signing import notification_string, sign
from providers.kit.driver import CodeBehaviour, SettleOutcome, behaviour_code

FORM_HEADERS = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}


class AlipayGatewayDriver:
    """Drives an :class:`~providers.alipay.simulator.AlipaySimulator` over HTTP."""

    def __init__(
        self,
        simulator_url: str,
        http: httpx.AsyncClient,
        *,
        forger_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.simulator_url = simulator_url.rstrip("/")
        self.http = http
        self._forger_key = forger_key

    async def present(self, out_trade_no: str, action: PaymentAction) -> None:
        """Open the cashier as the payer does: the page/wap URL, or the app's order string.

        Alipay creates a page, wap or app trade only then; a QR code's trade exists already.
        """
        if action.kind is ActionKind.REDIRECT and action.url:
            opened = await self.http.get(action.url)
        elif action.kind is ActionKind.APP_SDK and action.app_payload:
            opened = await self.http.post(
                f"{self.simulator_url}/gateway.do",
                content=action.app_payload,
                headers=FORM_HEADERS,
            )
        else:
            return
        opened.raise_for_status()

    async def settle(self, out_trade_no: str, outcome: SettleOutcome) -> NotificationRequest | None:
        response = await self.http.post(
            f"{self.simulator_url}/_control/settle/{out_trade_no}",
            data={"outcome": outcome, "deliver": "0"},
        )
        if response.status_code == 404:
            raise LookupError(
                f"the simulator has no trade {out_trade_no}: page, wap and app trades "
                "exist only once the payer opened the cashier"
            )
        response.raise_for_status()
        body = response.json()["notification"]
        return None if body is None else notification_request(body)

    async def redeliver(self, out_trade_no: str) -> NotificationRequest:
        """The trade's latest notification as Alipay re-sends it: new notify_time, signed anew."""
        response = await self.http.get(
            f"{self.simulator_url}/_control/notifications/{out_trade_no}",
            params={"resigned": "1"},
        )
        response.raise_for_status()
        return notification_request(response.json()["notifications"][-1])

    async def resign(
        self,
        notification: NotificationRequest,
        *,
        amount_fen: int | None = None,
        merchant: str | None = None,
        out_trade_no: str | None = None,
    ) -> NotificationRequest:
        """The notification with one thing changed, signed anew by the simulator.

        ``merchant`` becomes the ``app_id``: a notification of another app.
        """
        changes = {
            "amount_fen": None if amount_fen is None else str(amount_fen),
            "app_id": merchant,
            "out_trade_no": out_trade_no,
        }
        response = await self.http.post(
            f"{self.simulator_url}/_control/notifications/resign",
            data={
                "body": notification.body.decode("utf-8"),
                **{k: v for k, v in changes.items() if v is not None},
            },
        )
        response.raise_for_status()
        return notification_request(response.json()["notification"])

    def payment_code(self, behaviour: CodeBehaviour) -> str:
        """A new Alipay payment code (18 digits from 28) whose last digit is the payer's
        behaviour at the simulator: 1 pays at once, 2 confirms after 2 queries, 3 never."""
        return behaviour_code("28", 18, behaviour)

    async def taken_fen(self, out_trade_no: str) -> int:
        response = await self.http.get(f"{self.simulator_url}/_control/trades/{out_trade_no}/taken")
        response.raise_for_status()
        return int(response.json()["taken_fen"])

    async def code_notification(self, out_trade_no: str) -> NotificationRequest | None:
        """The notification the simulator sent when a confirming payer paid."""
        url = f"{self.simulator_url}/_control/notifications/{out_trade_no}"
        response = await self.http.get(url)
        response.raise_for_status()
        sent = response.json()["notifications"]
        return notification_request(sent[-1]) if sent else None

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        if self._forger_key is None:
            self._forger_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        params = _params(notification)
        params["sign"] = sign(self._forger_key, notification_string(params))
        return notification_request(urlencode(params))

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        params = _params(notification)
        params["total_amount"] = fen_to_yuan(yuan_to_fen(params["total_amount"]) + 1)
        return notification_request(urlencode(params))

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        params = _params(notification)
        params.pop("sign", None)
        return notification_request(urlencode(params))


def notification_request(body: str) -> NotificationRequest:
    """The request Alipay's notification POST arrives as."""
    return NotificationRequest(
        method="POST", headers=dict(FORM_HEADERS), query={}, body=body.encode("utf-8")
    )


def _params(notification: NotificationRequest) -> dict[str, str]:
    return dict(parse_qsl(notification.body.decode("utf-8"), keep_blank_values=True))
