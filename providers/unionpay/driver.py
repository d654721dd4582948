"""The conformance kit's GatewayDriver over the UnionPay simulator.

For PAGE and WAP the gateway learns of an attempt only when the payer's
browser posts the signed form; :meth:`UnionpayDriver.submit` plays that
browser, and :meth:`settle` does so with a form handed to :meth:`remember`
(the conformance kit hands every action over through :meth:`present`).
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from api.plugin import ActionKind, NotificationRequest, PaymentAction
from providers.kit.driver import CodeBehaviour, SettleOutcome, behaviour_code
from providers.unionpay import message, pki


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        elif tag == "input" and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")


def read_form(form_html: str) -> tuple[str, dict[str, str]]:
    """The action URL and fields of an auto-submitting form."""
    reader = _FormReader()
    reader.feed(form_html)
    return reader.action, reader.fields


def form_notification(fields: dict[str, str]) -> NotificationRequest:
    """A notification as UnionPay posts it: the fields as a UTF-8 form."""
    return NotificationRequest(
        method="POST",
        headers={"content-type": "application/x-www-form-urlencoded;charset=UTF-8"},
        query={},
        body=urlencode(fields).encode("utf-8"),
    )


def _fields(notification: NotificationRequest) -> dict[str, str]:
    return dict(parse_qsl(notification.body.decode("utf-8"), keep_blank_values=True))


class UnionpayDriver:
    """Settles attempts at the simulator at ``base_url`` as the payer would."""

    def __init__(
        self, base_url: str, http: httpx.AsyncClient, forger_key: RSAPrivateKey | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.forger_key = forger_key or pki.new_key()
        self.forms: dict[str, str] = {}

    def remember(self, out_trade_no: str, form_html: str) -> None:
        """Keep a PAGE/WAP form, to post it when the attempt is settled."""
        self.forms[out_trade_no] = form_html

    async def present(self, out_trade_no: str, action: PaymentAction) -> None:
        """Keep a front-consume form for :meth:`settle`, as the payer's browser holds it."""
        if action.kind is ActionKind.FORM_POST and action.form_html:
            self.remember(out_trade_no, action.form_html)

    async def submit(self, form_html: str) -> httpx.Response:
        """Post a front-consume form to the gateway, as the payer's browser does."""
        action, fields = read_form(form_html)
        return await self.http.post(action, data=fields)

    async def tn_of(self, out_trade_no: str) -> str | None:
        response = await self.http.get(f"{self.base_url}/control/transactions/{out_trade_no}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        tn: str = response.json()["tn"]
        return tn

    async def settle(self, out_trade_no: str, outcome: SettleOutcome) -> NotificationRequest | None:
        tn = await self.tn_of(out_trade_no)
        if tn is None and out_trade_no in self.forms:
            (await self.submit(self.forms[out_trade_no])).raise_for_status()
            tn = await self.tn_of(out_trade_no)
        if tn is None:
            raise LookupError(f"the simulator has no attempt {out_trade_no}")
        paid = await self.http.post(
            f"{self.base_url}/pay/{tn}",
            data={"outcome": outcome, "deliver": "0"},
            headers={"accept": "application/json"},
        )
        paid.raise_for_status()
        if outcome != "success":
            return None  # UnionPay notifies successful transactions only.
        return await self.notification(out_trade_no)

    async def notification(self, order_id: str, index: int = -1) -> NotificationRequest:
        """A notification the simulator made for ``order_id``, without sending it."""
        response = await self.http.get(
            f"{self.base_url}/control/notifications/{order_id}", params={"index": index}
        )
        response.raise_for_status()
        return NotificationRequest(
            method="POST",
            headers={"content-type": "application/x-www-form-urlencoded;charset=UTF-8"},
            query={},
            body=response.content,
        )

    async def redeliver(self, out_trade_no: str) -> NotificationRequest:
        """The latest notification again, as UnionPay re-sends it.

        UnionPay's RSA-SHA256 (PKCS#1 v1.5) signature over the same fields is
        deterministic: a copy signed anew equals the first byte for byte.
        """
        return await self.notification(out_trade_no)

    async def resign(
        self,
        notification: NotificationRequest,
        *,
        amount_fen: int | None = None,
        merchant: str | None = None,
        out_trade_no: str | None = None,
    ) -> NotificationRequest:
        """The notification with txnAmt, merId or orderId changed, signed with UnionPay's key.

        Only the simulator holds the genuine key: it re-signs what it made.
        """
        response = await self.http.post(
            f"{self.base_url}/control/notifications/resign",
            json={
                "body": notification.body.decode("utf-8"),
                "txnAmt": None if amount_fen is None else message.format_fen(amount_fen),
                "merId": merchant,
                "orderId": out_trade_no,
            },
        )
        response.raise_for_status()
        return form_notification(dict(parse_qsl(response.text, keep_blank_values=True)))

    # --- counter sales (PAYMENT_CODE) --------------------------------------------------

    def payment_code(self, behaviour: CodeBehaviour) -> str:
        """A new UnionPay code (62 + 17 digits) whose last digit the simulator reads as
        ``behaviour``: 1 pays at once, 2 confirms after 2 queries, 3 never confirms."""
        return behaviour_code("62", 19, behaviour)

    async def taken_fen(self, out_trade_no: str) -> int:
        """What the simulator's ledger holds as taken for the sale (paid less returned)."""
        response = await self.http.get(f"{self.base_url}/control/transactions/{out_trade_no}/taken")
        response.raise_for_status()
        return int(response.json()["takenFen"])

    async def code_notification(self, out_trade_no: str) -> NotificationRequest | None:
        """The back notification the simulator made when the payer paid, or None."""
        response = await self.http.get(f"{self.base_url}/control/notifications/{out_trade_no}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return form_notification(dict(parse_qsl(response.text, keep_blank_values=True)))

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        fields = _fields(notification)
        fields["signature"] = message.sign(fields, self.forger_key)
        return form_notification(fields)

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        fields = _fields(notification)
        fields["txnAmt"] = str(int(fields["txnAmt"]) + 1)
        return form_notification(fields)

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        fields = _fields(notification)
        del fields["signature"]
        return form_notification(fields)
