"""The plugins.toml shipped in the repository loads with the installed plugins."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from api.config.model import ConfigError
from api.config.validate import load_config
from api.dev.demo import ensure_demo_keys
from api.plugins.manager import installed_providers, load_plugin_manager

SHIPPED = Path(__file__).resolve().parents[2] / "plugins.toml"
BRANCHES = [
    ("zj", "China Mobile Zhejiang", "Zhejiang", "China Mobile"),
    ("bj", "China Telecom Beijing", "Beijing", "China Telecom"),
    ("yn", "China Telecom Yunnan", "Yunnan", "China Telecom"),
    ("he", "China Telecom Hebei", "Hebei", "China Telecom"),
    ("sc", "China Telecom Sichuan", "Sichuan", "China Telecom"),
    ("cq", "China Telecom Chongqing", "Chongqing", "China Telecom"),
]
# The providers each branch offers, in its order, and whether new payments may use them.
OFFERED = {
    "zj": [("alipay", True), ("sandbox", True)],
    "bj": [("wechatpay", True), ("alipay", True), ("sandbox", True)],
    "yn": [("unionpay", True), ("sandbox", True)],
    "he": [("alipay", True), ("unionpay", True), ("sandbox", True)],
    "sc": [("wechatpay", True), ("sandbox", True)],
    "cq": [("sandbox", True), ("alipay", False)],
}


def demo_copy(tmp_path: Path) -> Path:
    """The shipped file beside the demo keys and gateway files `make run` creates."""
    path = tmp_path / "plugins.toml"
    shutil.copy(SHIPPED, path)
    ensure_demo_keys(load_plugin_manager(), tmp_path / ".data" / "secrets", 8009)
    return path


def test_shipped_file_loads_with_the_demo_keys(tmp_path: Path) -> None:
    config = load_config(demo_copy(tmp_path), installed_providers(load_plugin_manager()))

    assert [
        (branch.code, branch.name, branch.province, branch.operator)
        for branch in config.branches.values()
    ] == BRANCHES
    offered = {
        code: [(name, provider.enabled) for name, provider in branch.providers.items()]
        for code, branch in config.branches.items()
    }
    assert offered == OFFERED
    assert config.branches["zj"].enabled_providers()[0] == "alipay"  # Zhejiang: Alipay first
    for branch in config.branches.values():
        gateway = str(branch.providers["sandbox"].settings.gateway)  # type: ignore[attr-defined]
        # Until the demo starts the simulators, each gateway file names its default port
        # (the built-ins in name order from 8009: alipay, sandbox, unionpay, wechatpay).
        assert gateway.rstrip("/") == "http://127.0.0.1:8010"
    assert str(config.branches["zj"].providers["alipay"].settings.gateway) == (  # type: ignore[attr-defined]
        "http://127.0.0.1:8009/gateway.do"
    )


def test_shipped_file_without_the_demo_keys_names_each_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "plugins.toml"
    shutil.copy(SHIPPED, path)
    with pytest.raises(ConfigError) as raised:
        load_config(path, installed_providers(load_plugin_manager()))
    message = str(raised.value)
    assert ".data/secrets/sandbox.key cannot be read" in message
    assert "[branches.zj.providers.alipay] private_key" in message
