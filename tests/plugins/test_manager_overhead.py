"""What a lifecycle hook call costs over calling the plugin's function directly.

pytest-benchmark records the three figures (``make bench`` reads them from
its JSON and prints the difference against the 5 µs target); no test here
asserts a time, only that each way of calling reached the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from api.plugins import hookimpl
from api.plugins.manager import new_plugin_manager, notify

ORDER: Mapping[str, Any] = {"_id": "bench", "branch": "zj", "status": "PENDING_PAYMENT"}


class OrderCounter:
    """A plugin that counts the orders it is told about."""

    def __init__(self) -> None:
        self.seen = 0
        self.last: Mapping[str, Any] | None = None

    @hookimpl
    def order_created(self, order: Mapping[str, Any]) -> None:
        self.seen += 1
        self.last = order


@pytest.fixture
def plugin() -> OrderCounter:
    return OrderCounter()


@pytest.fixture
def plugins(plugin: OrderCounter) -> pluggy.PluginManager:
    manager = new_plugin_manager()
    manager.register(plugin, name="counter")
    return manager


def test_direct_call(benchmark: BenchmarkFixture, plugin: OrderCounter) -> None:
    benchmark.group = "order_created"
    benchmark(plugin.order_created, order=ORDER)
    assert plugin.seen > 0 and plugin.last is ORDER


def test_hook_call(
    benchmark: BenchmarkFixture, plugin: OrderCounter, plugins: pluggy.PluginManager
) -> None:
    benchmark.group = "order_created"
    # pluggy drops None results: an empty list means every implementation returned.
    assert benchmark(plugins.hook.order_created, order=ORDER) == []
    assert plugin.seen > 0 and plugin.last is ORDER


def test_notify_call(
    benchmark: BenchmarkFixture, plugin: OrderCounter, plugins: pluggy.PluginManager
) -> None:
    """branchpay's own ``notify``, which the order service calls for every event."""
    benchmark.group = "order_created"
    assert benchmark(notify, plugins, "order_created", order=ORDER) == []
    assert plugin.seen > 0 and plugin.last is ORDER
