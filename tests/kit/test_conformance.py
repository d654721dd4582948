"""The conformance kit passes the sandbox provider, and fails broken providers clearly."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO, ClassVar

import httpx
import pytest
from pydantic import BaseModel

from api.plugins.contract import (
    BillLine,
    BillTotals,
    BillUnavailable,
    BillUnavailableReason,
    NotificationRequest,
    PaymentMethod,
    Provider,
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


class _WithoutBills(SandboxProvider):
    """The sandbox as a provider that never implemented bills."""

    download_bill = Provider.download_bill  # type: ignore[assignment]
    read_bill = Provider.read_bill  # type: ignore[assignment]


class _EagerBillProvider(SandboxProvider):
    """Reads the whole bill before yielding its first line."""

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        return iter(list(super().read_bill(source)))


class _UtcAsBeijingProvider(SandboxProvider):
    """Reads the bill's times eight hours off, as if Beijing wall time were UTC."""

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        for item in super().read_bill(source):
            if isinstance(item, BillLine):
                item = dataclasses.replace(item, occurred_at=item.occurred_at + timedelta(hours=8))
            yield item


class _NoBillForTomorrowProvider(SandboxProvider):
    """Says there is no bill for a day that is merely not ready."""

    async def download_bill(self, day: date, destination: BinaryIO) -> None:
        try:
            await super().download_bill(day, destination)
        except BillUnavailable as missing:
            raise BillUnavailable(str(missing), reason=BillUnavailableReason.NO_BILL) from None


class _LosingRefundsProvider(SandboxProvider):
    """Drops refund lines but keeps the bill's totals."""

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        for item in super().read_bill(source):
            if not (isinstance(item, BillLine) and item.out_refund_no):
                yield item


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
        "payer_id": None,
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


async def test_kit_skips_the_bill_cases_of_a_provider_without_bills(
    provider: SandboxProvider, gateway: SandboxDriver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    plain = _broken(_WithoutBills, provider, http)
    assert not plain.supports_bills
    with pytest.raises(pytest.skip.Exception, match="does not support daily bills"):
        await ProviderConformance().test_bill_has_the_payment_and_the_refund(
            **_args(plain, gateway),  # type: ignore[arg-type]
            tmp_path=tmp_path,
        )


async def test_kit_catches_a_bill_read_all_at_once(
    provider: SandboxProvider, gateway: SandboxDriver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    eager = _broken(_EagerBillProvider, provider, http)
    with pytest.raises(AssertionError, match="before yielding its first line"):
        await ProviderConformance().test_read_bill_is_lazy(
            **_args(eager, gateway),  # type: ignore[arg-type]
            tmp_path=tmp_path,
        )


async def test_kit_catches_bill_times_eight_hours_off(
    provider: SandboxProvider, gateway: SandboxDriver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    shifted = _broken(_UtcAsBeijingProvider, provider, http)
    with pytest.raises(AssertionError, match="a Beijing time read as UTC"):
        await ProviderConformance().test_bill_has_the_payment_and_the_refund(
            **_args(shifted, gateway),  # type: ignore[arg-type]
            tmp_path=tmp_path,
        )


async def test_kit_catches_a_day_to_come_reported_as_no_bill(
    provider: SandboxProvider, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    wrong = _broken(_NoBillForTomorrowProvider, provider, http)
    with pytest.raises(AssertionError, match="expected NOT_READY"):
        await ProviderConformance().test_bill_of_a_day_to_come_is_not_ready(wrong, tmp_path)


async def test_kit_catches_totals_that_are_not_the_sums_of_the_lines(
    provider: SandboxProvider, gateway: SandboxDriver, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    losing = _broken(_LosingRefundsProvider, provider, http)
    suite = ProviderConformance()
    # Some refund on today's bill, so the dropped lines change the sums.
    await suite.test_partial_then_rest_refund(**_args(provider, gateway))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="are not the sums of its"):
        await suite.test_bill_totals_are_the_sums_of_its_lines(
            **_args(losing, gateway),  # type: ignore[arg-type]
            tmp_path=tmp_path,
        )
