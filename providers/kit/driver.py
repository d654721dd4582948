"""The platform's side of a conformance run, as a provider package provides it.

A package implements :class:`GatewayDriver` over its own simulator: it settles
attempts the way a payer would and hands back the signed notification the
platform would send, plus three spoiled copies of it that a correct adapter
must reject. The optional methods below open more of the kit's cases; the
conformance module's docstring says which case needs which.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Literal, Protocol, runtime_checkable

from api.plugin import NotificationRequest

SettleOutcome = Literal["success", "fail", "close"]
CodeBehaviour = Literal["pay", "confirm", "never"]

# How the built-in simulators read a payment code: its last digit is the payer's
# behaviour (any other digit: the code is declined).
CODE_BEHAVIOURS: Mapping[str, CodeBehaviour] = {"1": "pay", "2": "confirm", "3": "never"}


def behaviour_code(prefix: str, length: int, behaviour: CodeBehaviour) -> str:
    """A new ``length``-digit payment code starting ``prefix``, random in the middle, whose
    last digit is ``behaviour`` as CODE_BEHAVIOURS reads it (a driver's ``payment_code``)."""
    last = next(digit for digit, meant in CODE_BEHAVIOURS.items() if meant == behaviour)
    middle = "".join(secrets.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return prefix + middle + last


@runtime_checkable
class GatewayDriver(Protocol):
    async def settle(self, out_trade_no: str, outcome: SettleOutcome) -> NotificationRequest | None:
        """Make the simulator settle the attempt as the payer would.

        Returns the signed notification the platform sends for it (not
        delivered anywhere), or None when the platform sends none for that
        outcome.
        """
        ...

    # Optional (plugin API 2): the conformance kit's re-signed duplicate case uses it.
    #
    #     async def redeliver(self, out_trade_no: str) -> NotificationRequest:
    #         """The platform's next delivery of the attempt's latest notification,
    #         signed anew (new timestamp, nonce, signature), not sent anywhere."""

    # Optional (plugin API 2): the kit calls it with each attempt's action before settling it.
    #
    #     async def present(self, out_trade_no: str, action: PaymentAction) -> None:
    #         """Follow the action as the payer would: open the URL, post the form,
    #         hand the payload to the app, so the platform knows the attempt."""

    # Optional: the kit's checks beyond the signature use it.
    #
    #     async def resign(self, notification: NotificationRequest, *,
    #                      amount_fen: int | None = None,
    #                      merchant: str | None = None,
    #                      out_trade_no: str | None = None) -> NotificationRequest:
    #         """The notification with one thing changed and signed anew with the
    #         platform's genuine key: the amount paid, the merchant (another
    #         merchant or sub-merchant id under the same key; any value for
    #         ``merchant`` means "not this branch's"), or the out-trade-number."""

    # Optional: the kit's counter (PAYMENT_CODE) cases use it, for providers with that method.
    #
    #     def payment_code(self, behaviour: CodeBehaviour) -> str:
    #         """A payment code the simulator will treat so: "pay" charges it at
    #         once; "confirm" answers "payer confirming" to the pay call and to the
    #         first queries, then paid; "never" keeps the payer confirming for ever
    #         (until a reverse)."""
    #
    #     async def taken_fen(self, out_trade_no: str) -> int:
    #         """What the simulator's ledger holds as taken from the payer for the
    #         attempt: paid minus refunded or reversed (0 when never paid)."""
    #
    # Pick how the simulator recognises the behaviour from the code (the built-in
    # ones: its last digit, CODE_BEHAVIOURS, codes made with behaviour_code) and
    # document it in the simulator's docstring; every code must match the provider's
    # payment_code_pattern and be new (payment codes are one-time).
    #
    # Optional, for platforms that notify a counter sale (Alipay, UnionPay, the sandbox):
    #
    #     async def code_notification(self, out_trade_no: str) -> NotificationRequest | None:
    #         """The notification the platform sent when a confirming payer paid
    #         (not delivered anywhere), or None when it sends none."""

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        """The same notification signed with a key that is not the platform's."""
        ...

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        """The genuine notification with its amount changed after signing."""
        ...

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        """The notification with its signature removed."""
        ...
