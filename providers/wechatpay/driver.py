"""WeChat Pay's side of a conformance run: settles attempts on the simulator.

:class:`WechatpayDriver` implements ``providers.kit.driver.GatewayDriver``
over a running :mod:`providers.wechatpay.simulator`. Its spoiled copies of a
callback are what an attacker could send: one signed with a key that is not
the platform's, one whose encrypted amount changed after signing, one
without a signature, and (for replay tests) the genuine one signed at another
time (``sign_anew``). ``resign`` asks the simulator, which alone holds the
platform's key, to change one field of a callback it made and sign it anew.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from typing import Literal

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from api.plugins.contract import NotificationRequest
from providers.kit.driver import CodeBehaviour, behaviour_code
from providers.wechatpay import signing


class WechatpayDriver:
    """Plays the payer and the platform against one simulator."""

    def __init__(
        self,
        simulator_url: str,
        *,
        platform_private_key: RSAPrivateKey,
        platform_public_key_id: str,
        apiv3_key: bytes,
    ) -> None:
        self.simulator_url = simulator_url.rstrip("/")
        self.platform_private_key = platform_private_key
        self.platform_public_key_id = platform_public_key_id
        self.apiv3_key = apiv3_key
        self._stranger_key: RSAPrivateKey | None = None

    async def settle(
        self, out_trade_no: str, outcome: Literal["success", "fail", "close"]
    ) -> NotificationRequest | None:
        async with httpx.AsyncClient(base_url=self.simulator_url, timeout=10) as client:
            paid = await client.post(
                f"/pay/{out_trade_no}",
                data={"outcome": outcome, "deliver": "0"},
                headers={"Accept": "application/json"},
            )
            paid.raise_for_status()
            if outcome != "success":
                # WeChat Pay calls back for successful payments only.
                return None
            return await self.latest(client, out_trade_no)

    def payment_code(self, behaviour: CodeBehaviour) -> str:
        """A new 18-digit code (10-15 first) whose last digit tells the simulator ``behaviour``."""
        return behaviour_code("1" + secrets.choice("012345"), 18, behaviour)

    async def taken_fen(self, out_trade_no: str) -> int:
        async with httpx.AsyncClient(base_url=self.simulator_url, timeout=10) as client:
            answer = await client.get(f"/control/payments/{out_trade_no}/taken")
        answer.raise_for_status()
        return int(answer.json()["taken_fen"])

    async def latest(self, client: httpx.AsyncClient, out_trade_no: str) -> NotificationRequest:
        """The attempt's most recent callback, freshly signed, not delivered."""
        answer = await client.get(f"/control/notifications/{out_trade_no}")
        answer.raise_for_status()
        last = answer.json()["notifications"][-1]
        return NotificationRequest(
            method="POST",
            headers={k.lower(): v for k, v in last["headers"].items()}
            | {"content-type": "application/json"},
            query={},
            body=last["body"].encode(),
        )

    async def redeliver(self, out_trade_no: str) -> NotificationRequest:
        """The latest callback as WeChat Pay re-sends it: new timestamp, nonce and signature."""
        async with httpx.AsyncClient(base_url=self.simulator_url, timeout=10) as client:
            return await self.latest(client, out_trade_no)

    async def resign(
        self,
        notification: NotificationRequest,
        *,
        amount_fen: int | None = None,
        merchant: str | None = None,
        out_trade_no: str | None = None,
    ) -> NotificationRequest:
        """The callback with one thing changed, sealed and signed by the simulator's genuine key.

        ``merchant`` becomes the resource's ``mchid`` (``sub_mchid`` in partner mode).
        """
        async with httpx.AsyncClient(base_url=self.simulator_url, timeout=10) as client:
            answer = await client.post(
                "/control/notifications/resign",
                json={
                    "body": notification.body.decode(),
                    "amount_fen": amount_fen,
                    "merchant": merchant,
                    "out_trade_no": out_trade_no,
                },
            )
        answer.raise_for_status()
        made = answer.json()
        return NotificationRequest(
            method="POST",
            headers={k.lower(): v for k, v in made["headers"].items()}
            | {"content-type": "application/json"},
            query={},
            body=made["body"].encode(),
        )

    def sign_anew(
        self,
        notification: NotificationRequest,
        *,
        timestamp: int | None = None,
        key: RSAPrivateKey | None = None,
        serial: str | None = None,
    ) -> NotificationRequest:
        """The same body signed again, at another time, with another key or key id."""
        headers = dict(notification.headers)
        stamp = str(timestamp) if timestamp is not None else headers["wechatpay-timestamp"]
        nonce = headers.get("wechatpay-nonce") or signing.new_nonce()
        message = signing.response_message(stamp, nonce, notification.body)
        headers.update(
            {
                "wechatpay-timestamp": stamp,
                "wechatpay-nonce": nonce,
                "wechatpay-serial": serial or self.platform_public_key_id,
                "wechatpay-signature": signing.sign(key or self.platform_private_key, message),
                "wechatpay-signature-type": signing.SCHEMA,
            }
        )
        return replace(notification, headers=headers)

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        if self._stranger_key is None:
            self._stranger_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.sign_anew(notification, key=self._stranger_key)

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        envelope = json.loads(notification.body)
        resource = envelope["resource"]
        plaintext = signing.decrypt_resource(
            self.apiv3_key,
            resource["ciphertext"],
            nonce=resource["nonce"],
            associated_data=resource.get("associated_data", ""),
        )
        if plaintext is None:
            raise ValueError("the notification is not encrypted with this driver's APIv3 key")
        fact = json.loads(plaintext)
        amount_field = "refund" if "refund" in fact["amount"] else "total"
        fact["amount"][amount_field] += 1
        resource["ciphertext"] = signing.encrypt_resource(
            self.apiv3_key,
            json.dumps(fact, ensure_ascii=False).encode(),
            nonce=resource["nonce"],
            associated_data=resource.get("associated_data", ""),
        )
        return replace(notification, body=json.dumps(envelope, ensure_ascii=False).encode())

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        headers = {k: v for k, v in notification.headers.items() if k != "wechatpay-signature"}
        return replace(notification, headers=headers)
