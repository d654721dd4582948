"""Lifecycle hooks see the payment flow; a raising implementation never breaks it.

Also: the service's periodic reconciliation settles an attempt whose
notification never arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy
import pytest

from api.plugins import hookimpl
from api.plugins.manager import load_plugin_manager
from tests.services.conftest import PayService, order_feed
from tests.services.test_payments_expiry import expire_now


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def order_created(self, order: Mapping[str, Any]) -> None:
        self.calls.append("order_created")

    @hookimpl
    def payment_succeeded(self, order: Mapping[str, Any], payment: Mapping[str, Any]) -> None:
        assert order["status"] == "PAID" and payment["status"] == "SUCCEEDED"
        self.calls.append("payment_succeeded")

    @hookimpl
    def refund_succeeded(
        self, order: Mapping[str, Any], payment: Mapping[str, Any], refund: Mapping[str, Any]
    ) -> None:
        self.calls.append(f"refund_succeeded:{refund['amountFen']}")

    @hookimpl
    def order_expired(self, order: Mapping[str, Any]) -> None:
        self.calls.append("order_expired")


class Raising:
    @hookimpl
    def order_created(self, order: Mapping[str, Any]) -> None:
        raise RuntimeError("plugin bug")

    @hookimpl
    def payment_succeeded(self, order: Mapping[str, Any], payment: Mapping[str, Any]) -> None:
        raise RuntimeError("plugin bug")

    @hookimpl
    def refund_succeeded(
        self, order: Mapping[str, Any], payment: Mapping[str, Any], refund: Mapping[str, Any]
    ) -> None:
        raise RuntimeError("plugin bug")

    @hookimpl
    def order_expired(self, order: Mapping[str, Any]) -> None:
        raise RuntimeError("plugin bug")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The installed plugins plus a recording one and one whose every hook raises."""
    recording = Recorder()

    def plugins() -> pluggy.PluginManager:
        pm = load_plugin_manager()
        pm.register(Raising(), name="raising")
        pm.register(recording, name="recorder")
        return pm

    monkeypatch.setattr("api.web.app.load_plugin_manager", plugins)
    return recording


async def test_hooks_see_the_lifecycle_and_a_raising_one_breaks_nothing(
    start_payments: Callable[..., PayService], recorder: Recorder
) -> None:
    service = start_payments(expiry_interval_seconds=0.2)
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    assert service.deliver(service.settle(payment["outTradeNo"])).status_code == 200
    assert service.order(order["id"])["status"] == "PAID"
    assert service.refund(payment["id"], 900)["userErrors"] == []

    unpaid = service.create_order()
    async with order_feed(service.client, unpaid["id"]) as feed:
        await feed.next()
        expire_now(service, unpaid)
        await feed.statuses_until("EXPIRED")

    assert recorder.calls == [
        "order_created",
        "payment_succeeded",
        "refund_succeeded:900",
        "order_created",
        "order_expired",
    ]
    assert service.order(order["id"])["status"] == "PARTIALLY_REFUNDED"


async def test_periodic_reconciliation_settles_an_attempt_whose_notification_was_lost(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(reconcile_interval_seconds=0.3, reconcile_min_age_seconds=0)
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]

    async with order_feed(service.client, order["id"]) as feed:
        await feed.next()
        service.settle(payment["outTradeNo"])  # the platform never delivers its notification
        assert await feed.statuses_until("PAID") == ["PAID"]

    assert service.db.payment_events.count_documents({}) == 1
