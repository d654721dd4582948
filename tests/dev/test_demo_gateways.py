"""The demo's gateway simulators: found through the ``demo_gateways`` hook, ports from one setting."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import httpx
import pluggy
import pytest
from rich.console import Console

import providers.sandbox as sandbox_plugin
from api.dev.demo import demo_gateways, ensure_demo_keys, ports, start_demo_simulators
from api.plugin import DemoGateway, hookimpl, write_secret
from api.plugins.manager import load_plugin_manager, new_plugin_manager
from providers.kit.bills import CURRENT_DAY_ENV
from providers.sandbox.simulator import create_app

BUILT_INS = ["alipay", "sandbox", "unionpay", "wechatpay"]


class ThirdParty:
    """A plugin registered in code, as an installed package's module would be."""

    @hookimpl
    def demo_gateways(self) -> list[DemoGateway]:
        def keys(secrets_dir: Path) -> None:
            write_secret(secrets_dir / "thirdpay.key", "k" * 32)

        def simulator(secrets_dir: Path) -> object:
            return create_app((secrets_dir / "thirdpay.key").read_bytes())

        return [DemoGateway("thirdpay", keys, simulator, path="/api")]  # type: ignore[arg-type]


def with_third_party() -> pluggy.PluginManager:
    plugins = load_plugin_manager()
    plugins.register(ThirdParty(), name="thirdpay")
    return plugins


def test_every_built_in_provider_offers_its_demo_through_the_hook() -> None:
    assert [g.provider for g in demo_gateways(load_plugin_manager())] == BUILT_INS
    assert demo_gateways(new_plugin_manager()) == []


def test_one_setting_moves_every_port_and_zero_means_free_ports() -> None:
    gateways = demo_gateways(with_third_party())
    assert ports(gateways, 9100) == {
        "alipay": 9100,
        "sandbox": 9101,
        "thirdpay": 9102,
        "unionpay": 9103,
        "wechatpay": 9104,
    }
    assert set(ports(gateways, 0).values()) == {0}


def test_keys_and_default_gateway_files_before_the_simulators_run(tmp_path: Path) -> None:
    ensure_demo_keys(with_third_party(), tmp_path, 9100)
    assert (tmp_path / "thirdpay.gateway").read_text() == "http://127.0.0.1:9102/api\n"
    assert (tmp_path / "alipay.gateway").read_text() == "http://127.0.0.1:9100/gateway.do\n"
    assert (tmp_path / "thirdpay.key").stat().st_mode & 0o777 == 0o600


def test_simulators_on_free_ports_write_their_urls(tmp_path: Path) -> None:
    plugins = with_third_party()
    ensure_demo_keys(plugins, tmp_path, 0)
    with contextlib.ExitStack() as stack:
        started = start_demo_simulators(plugins, tmp_path, 0, stack, Console(quiet=True))
        assert sorted(started) == sorted([*BUILT_INS, "thirdpay"])
        for provider, url in started.items():
            written = (tmp_path / f"{provider}.gateway").read_text().strip()
            assert written.startswith(url) and not url.endswith(":0"), (provider, written)
        assert httpx.get(started["thirdpay"] + "/pay/nothing").status_code == 404


def test_a_taken_port_skips_that_simulator_and_says_how_to_move_them(tmp_path: Path) -> None:
    plugins = load_plugin_manager()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1]
        console = Console(record=True, width=200)
        with contextlib.ExitStack() as stack:
            started = start_demo_simulators(plugins, tmp_path, base, stack, console)
    assert "alipay" not in started
    assert "BRANCHPAY_SIMULATOR_PORT" in console.export_text()


@pytest.mark.parametrize(("setting", "publishes"), [(None, True), ("0", False)])
def test_the_demo_simulators_publish_todays_bill_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, publishes: bool
) -> None:
    if setting is None:
        monkeypatch.delenv(CURRENT_DAY_ENV, raising=False)
    else:
        monkeypatch.setenv(CURRENT_DAY_ENV, setting)
    plugins = new_plugin_manager()
    plugins.register(sandbox_plugin, name="sandbox")
    with contextlib.ExitStack() as stack:
        started = start_demo_simulators(plugins, tmp_path, 0, stack, Console(quiet=True))
        policy = httpx.get(started["sandbox"] + "/control/bills").json()
    assert policy["publishCurrentDay"] is publishes
