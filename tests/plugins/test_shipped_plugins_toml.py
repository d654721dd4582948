"""The plugins.toml shipped in the repository loads with the installed plugins."""

from __future__ import annotations

import importlib
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from api.plugins.config import ConfigError, load_config
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
# The providers each branch is meant to offer once every adapter is installed.
INTENDED = {
    "zj": [("alipay", True), ("sandbox", True)],
    "bj": [("wechatpay", True), ("alipay", True), ("sandbox", True)],
    "yn": [("unionpay", True), ("sandbox", True)],
    "he": [("alipay", True), ("unionpay", True), ("sandbox", True)],
    "sc": [("wechatpay", True), ("sandbox", True)],
    "cq": [("sandbox", True), ("alipay", False)],
}
COMMENTED_OUT = re.compile(r"^# (\[branches\.[^\]]+\]|[a-z0-9_]+ = .*)$", re.MULTILINE)


def test_shipped_file_loads_with_the_sandbox(tmp_path: Path) -> None:
    path = tmp_path / "plugins.toml"
    shutil.copy(SHIPPED, path)
    secrets = tmp_path / ".data" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "sandbox.key").write_text("demo-hmac-key-made-by-the-test\n")

    config = load_config(path, installed_providers(load_plugin_manager()))

    assert [
        (branch.code, branch.name, branch.province, branch.operator)
        for branch in config.branches.values()
    ] == BRANCHES
    for code, branch in config.branches.items():
        assert branch.enabled_providers() == ["sandbox"], code
        settings = branch.providers["sandbox"].settings
        assert settings.secret.get_secret_value() == "demo-hmac-key-made-by-the-test"  # type: ignore[attr-defined]
        assert str(settings.gateway).rstrip("/") == "http://127.0.0.1:8009"  # type: ignore[attr-defined]


def test_shipped_file_without_the_sandbox_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "plugins.toml"
    shutil.copy(SHIPPED, path)
    with pytest.raises(ConfigError, match=r"\.data/secrets/sandbox\.key cannot be read"):
        load_config(path, installed_providers(load_plugin_manager()))


def test_commented_out_adapters_are_in_each_branchs_order() -> None:
    uncommented = COMMENTED_OUT.sub(r"\1", SHIPPED.read_text())
    document = tomllib.loads(uncommented)
    offered = {
        code: [(name, table["enabled"]) for name, table in branch["providers"].items()]
        for code, branch in document["branches"].items()
    }
    assert offered == INTENDED


def test_commented_out_adapters_load_with_the_demo_keys(tmp_path: Path) -> None:
    """Uncommented, the intended tables are valid settings for the installed adapters."""
    path = tmp_path / "plugins.toml"
    path.write_text(COMMENTED_OUT.sub(r"\1", SHIPPED.read_text()))
    secrets = tmp_path / ".data" / "secrets"
    for provider in ("sandbox", "alipay", "wechatpay", "unionpay"):
        demo = importlib.import_module(f"providers.{provider}.demo")
        demo.ensure_demo_keys(secrets)

    config = load_config(path, installed_providers(load_plugin_manager()))

    offered = {
        code: [(name, provider.enabled) for name, provider in branch.providers.items()]
        for code, branch in config.branches.items()
    }
    assert offered == INTENDED
