"""The platform's side of a conformance run, as a provider package provides it.

A package implements :class:`GatewayDriver` over its own simulator: it settles
attempts the way a payer would and hands back the signed notification the
platform would send, plus three spoiled copies of it that a correct adapter
must reject.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from api.plugin import NotificationRequest

SettleOutcome = Literal["success", "fail", "close"]


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

    def forge(self, notification: NotificationRequest) -> NotificationRequest:
        """The same notification signed with a key that is not the platform's."""
        ...

    def tamper(self, notification: NotificationRequest) -> NotificationRequest:
        """The genuine notification with its amount changed after signing."""
        ...

    def unsigned(self, notification: NotificationRequest) -> NotificationRequest:
        """The notification with its signature removed."""
        ...
