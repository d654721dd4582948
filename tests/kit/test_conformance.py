"""The conformance kit passes the sandbox provider, and fails broken providers clearly."""

from __future__ import annotations

import dataclasses
import uuid
from typing import ClassVar

import httpx
import pytest
from pydantic import BaseModel

from api.plugins.contract import (
    NotificationRequest,
    PaymentMethod,
    ProviderEvent,
    RefundRequest,
    RefundResult,
)
from providers.kit.conformance import ProviderConformance
from providers.sandbox import SandboxProvider, SandboxSettings, signing
from providers.sandbox.driver import SandboxDriver

Failed = pytest.fail.Exception


class TestSandboxConformance(ProviderConformance):
    """The built-in sandbox is the kit's reference provider."""


class TestSandboxConformanceOddAmount(ProviderConformance):
    """An odd amount, so partial refunds do not split evenly."""

    @pytest.fixture
    def amount_fen(self) -> int:
        return 1999


class _TrustingProvider(SandboxProvider):
    """Accepts any notification: re-signs what arrives instead of verifying it."""

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        own = signing.signed_headers(self._secret, request.body)
        headers = {**request.headers, **{k.lower(): v for k, v in own.items()}}
        return await super().parse_notification(dataclasses.replace(request, headers=headers))


class _FreshIdProvider(SandboxProvider):
    """Gives every delivery of the same notification a new event id."""

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        event = await super().parse_notification(request)
        return event and dataclasses.replace(event, event_id=uuid.uuid4().hex)


class _RenumberingRefundProvider(SandboxProvider):
    """Sends each refund under a new number, so a repeated refund is paid twice."""

    async def refund(self, request: RefundRequest) -> RefundResult:
        renumbered = dataclasses.replace(request, out_refund_no="rn" + uuid.uuid4().hex[:20])
        return await super().refund(renumbered)


class _PlainSecretSettings(BaseModel):
    gateway: str
    secret: str


class _LeakyProvider(SandboxProvider):
    Settings: ClassVar[type[BaseModel]] = _PlainSecretSettings


def _broken(
    cls: type[SandboxProvider], good: SandboxProvider, http: httpx.AsyncClient
) -> SandboxProvider:
    return cls(good.settings, branch=good.branch, http=http)


def _args(provider: SandboxProvider, gateway: SandboxDriver) -> dict[str, object]:
    return {
        "provider": provider,
        "gateway": gateway,
        "amount_fen": 8800,
        "notify_url": "http://127.0.0.1:9/notify/sandbox/zj_mobile",
        "payment_methods": (PaymentMethod.QR_CODE,),
    }


async def test_kit_catches_a_provider_that_trusts_forged_notifications(
    provider: SandboxProvider, gateway: SandboxDriver, http: httpx.AsyncClient
) -> None:
    suite = ProviderConformance()
    trusting = _broken(_TrustingProvider, provider, http)
    with pytest.raises(Failed, match="accepted the forged notification"):
        await suite.test_forged_notification_rejected(**_args(trusting, gateway))  # type: ignore[arg-type]
    with pytest.raises(Failed, match="accepted the unsigned notification"):
        await suite.test_unsigned_notification_rejected(**_args(trusting, gateway))  # type: ignore[arg-type]


async def test_kit_catches_unstable_event_ids(
    provider: SandboxProvider, gateway: SandboxDriver, http: httpx.AsyncClient
) -> None:
    suite = ProviderConformance()
    fresh = _broken(_FreshIdProvider, provider, http)
    with pytest.raises(AssertionError, match="re-deliveries must be recognisable"):
        await suite.test_duplicate_notification_same_event_id(**_args(fresh, gateway))  # type: ignore[arg-type]


async def test_kit_catches_a_refund_paid_twice(
    provider: SandboxProvider, gateway: SandboxDriver, http: httpx.AsyncClient
) -> None:
    suite = ProviderConformance()
    renumbering = _broken(_RenumberingRefundProvider, provider, http)
    with pytest.raises(AssertionError, match="refunded twice"):
        await suite.test_refund_same_number_refunds_once(**_args(renumbering, gateway))  # type: ignore[arg-type]


def test_kit_catches_a_secret_kept_in_plain_text(
    provider: SandboxProvider, http: httpx.AsyncClient
) -> None:
    settings = _PlainSecretSettings(
        gateway=str(provider.settings.gateway),
        secret=provider.settings.secret.get_secret_value(),
    )
    leaky = _LeakyProvider(settings, branch="zj_mobile", http=http)
    with pytest.raises(AssertionError, match="'secret' looks like a secret but is str"):
        ProviderConformance().test_secret_settings_are_hidden(leaky)


def test_kit_catches_a_malformed_name(provider: SandboxProvider, http: httpx.AsyncClient) -> None:
    class BadName(SandboxProvider):
        name: ClassVar[str] = "Sandbox Pay"

    bad = BadName(provider.settings, branch="zj_mobile", http=http)
    with pytest.raises(AssertionError, match=r"name must match"):
        ProviderConformance().test_class_attributes(bad)


def test_sandbox_settings_fixture_is_the_sandbox_model(provider: SandboxProvider) -> None:
    assert isinstance(provider.settings, SandboxSettings)
