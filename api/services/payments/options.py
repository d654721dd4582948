"""Which providers and methods an order can be paid with, and why not the others.

``Order.paymentOptions`` lists every provider table of the order's branch, in
the branch's order, with every method the provider has; an option that cannot
be used for this order carries one reason code, so a frontend never offers a
button that will fail. ``startPayment`` refuses an unusable choice with the
same reason (as its userError code), so the two never disagree.

The reasons, first match wins:

1. ``PROVIDER_DISABLED``: the branch's table says ``enabled = false``.
2. ``ACCOUNT_UNAVAILABLE``: the branch pays through a service-provider account
   that is suspended (``[accounts.<name>.<provider>] enabled = false``).
3. ``METHOD_NOT_OFFERED``: the branch's table lists its ``methods`` without it.
4. ``METHOD_NOT_FOR_OFFERING``: ``methods_by_kind`` leaves it out for a kind of
   offering the order holds (e.g. handsets only by PAGE and WAP).
5. ``AMOUNT_OUT_OF_LIMITS``: the order's total is outside the platform's limits
   or the branch's ``min_amount_fen`` / ``max_amount_fen``.
6. ``PAYER_ID_REQUIRED``: JSAPI needs the payer's id at the platform (openid,
   buyer id), and the caller said it has none.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from api.config.live import ProviderRegistry
from api.config.model import ProviderConfig
from api.domain.problems import UserErrorCode
from api.plugins.contract import NEEDS_AUTH_CODE, NEEDS_PAYER_ID, PaymentMethod, Provider


class Unavailable(enum.StrEnum):
    """Why an option cannot be used for this order; each member's comment is its meaning."""

    PROVIDER_DISABLED = "PROVIDER_DISABLED"  # the branch switched the provider off
    ACCOUNT_UNAVAILABLE = "ACCOUNT_UNAVAILABLE"  # its service-provider account is suspended
    METHOD_NOT_OFFERED = "METHOD_NOT_OFFERED"  # the branch does not offer this method with it
    METHOD_NOT_FOR_OFFERING = "METHOD_NOT_FOR_OFFERING"  # not for a kind of offering in the order
    AMOUNT_OUT_OF_LIMITS = "AMOUNT_OUT_OF_LIMITS"  # the total is outside the allowed amounts
    PAYER_ID_REQUIRED = "PAYER_ID_REQUIRED"  # the method needs the payer's id at the platform


# The userError startPayment answers for each reason.
USER_ERROR = {
    Unavailable.PROVIDER_DISABLED: UserErrorCode.PROVIDER_NOT_ENABLED,
    Unavailable.ACCOUNT_UNAVAILABLE: UserErrorCode.ACCOUNT_UNAVAILABLE,
    Unavailable.METHOD_NOT_OFFERED: UserErrorCode.METHOD_NOT_OFFERED,
    Unavailable.METHOD_NOT_FOR_OFFERING: UserErrorCode.METHOD_NOT_OFFERED,
    Unavailable.AMOUNT_OUT_OF_LIMITS: UserErrorCode.AMOUNT_OUT_OF_LIMITS,
    Unavailable.PAYER_ID_REQUIRED: UserErrorCode.PAYER_ID_REQUIRED,
}


class Needs(enum.StrEnum):
    """What startPayment must carry for the method beside the order and provider."""

    AUTH_CODE = "AUTH_CODE"  # the scanned payment code (authCode)
    PAYER_ID = "PAYER_ID"  # the payer's id at the platform (payerId)


@dataclass(frozen=True, slots=True)
class PaymentOption:
    provider: str
    display_name: str
    method: PaymentMethod
    reason: Unavailable | None
    detail: str | None  # the reason in words, for a person
    needs: tuple[Needs, ...]

    @property
    def available(self) -> bool:
        return self.reason is None


def needs_of(method: PaymentMethod) -> tuple[Needs, ...]:
    needs: list[Needs] = []
    if method in NEEDS_AUTH_CODE:
        needs.append(Needs.AUTH_CODE)
    if method in NEEDS_PAYER_ID:
        needs.append(Needs.PAYER_ID)
    return tuple(needs)


def order_kinds(order: Mapping[str, Any]) -> set[str]:
    items: Sequence[Mapping[str, Any]] = order.get("items", [])
    return {str(item["kind"]) for item in items if "kind" in item}


def amount_limits(cls: type[Provider], config: ProviderConfig) -> tuple[int, int]:
    """The amounts (fen, inclusive) the branch takes with the provider: platform and branch."""
    low, high = cls.amount_limits_fen
    if config.min_amount_fen is not None:
        low = max(low, config.min_amount_fen)
    if config.max_amount_fen is not None:
        high = min(high, config.max_amount_fen)
    return low, high


def why_not(
    cls: type[Provider],
    config: ProviderConfig,
    method: PaymentMethod,
    order: Mapping[str, Any],
    *,
    payer_id_known: bool,
) -> tuple[Unavailable, str] | None:
    """Why the order cannot be paid so (reason and words), or None when it can."""
    if not config.enabled:
        return Unavailable.PROVIDER_DISABLED, f"the branch switched {cls.name} off"
    if config.account is not None and not config.account_enabled:
        return (
            Unavailable.ACCOUNT_UNAVAILABLE,
            f"the service-provider account {config.account} is suspended",
        )
    offered = config.methods if config.methods is not None else cls.methods
    if method not in offered:
        listed = ", ".join(m.value for m in offered)
        return (
            Unavailable.METHOD_NOT_OFFERED,
            f"the branch offers {cls.name} by {listed} only",
        )
    for kind in sorted(order_kinds(order)):
        allowed = config.methods_by_kind.get(kind)
        if allowed is not None and method not in allowed:
            return (
                Unavailable.METHOD_NOT_FOR_OFFERING,
                f"{method.value} is not offered for {kind} offerings with {cls.name}",
            )
    low, high = amount_limits(cls, config)
    total = int(order["totalFen"])
    if not low <= total <= high:
        return (
            Unavailable.AMOUNT_OUT_OF_LIMITS,
            f"{cls.name} takes {low} to {high} fen; the order is {total} fen",
        )
    if method in NEEDS_PAYER_ID and not payer_id_known:
        return Unavailable.PAYER_ID_REQUIRED, f"{method.value} needs the payer's id (payerId)"
    return None


def payment_options(
    registry: ProviderRegistry, order: Mapping[str, Any], *, payer_id_known: bool
) -> list[PaymentOption]:
    """Every (provider, method) of the order's branch, each with why it cannot be used."""
    branch = registry.branch(order["branch"])
    if branch is None:
        return []
    installed = registry.installed
    options: list[PaymentOption] = []
    for name, config in branch.providers.items():
        cls = installed.get(name)
        if cls is None:
            continue
        for method in cls.methods:
            reason = why_not(cls, config, method, order, payer_id_known=payer_id_known)
            options.append(
                PaymentOption(
                    provider=name,
                    display_name=cls.display_name,
                    method=method,
                    reason=reason[0] if reason else None,
                    detail=reason[1] if reason else None,
                    needs=needs_of(method),
                )
            )
    return options
