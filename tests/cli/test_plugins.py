"""The admin commands: ``providers enable|disable``, ``config check``, ``plugins``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pluggy
import pytest

from api.cli import plugins
from api.config.live import ProviderRegistry

Write = Callable[[str], Path]
Capture = pytest.CaptureFixture[str]
FIRST_CHOICE = "enabled = true   # the branch's first choice"


def edit(action: str, branch: str, provider: str, path: Path) -> argparse.Namespace:
    return argparse.Namespace(action=action, branch=branch, provider=provider, plugins_toml=path)


def test_disable_changes_only_that_value_and_replaces_the_file_atomically(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
) -> None:
    path = write_config(valid_text)
    path.chmod(0o640)
    inode = path.stat().st_ino

    assert plugins.providers(edit("disable", "zj", "cardpay", path), pm=pm) == 0

    expected = valid_text.replace(FIRST_CHOICE, FIRST_CHOICE.replace("true", "false"))
    assert path.read_bytes() == expected.encode()
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["plugins.toml", "secrets"]
    assert "zj: cardpay disabled in" in capsys.readouterr().out


def test_enable_keeps_layout_of_a_crlf_file(
    write_config: Write, valid_text: str, pm: pluggy.PluginManager
) -> None:
    crlf = valid_text.replace("\n", "\r\n")
    path = write_config("")
    path.write_bytes(crlf.encode())

    assert plugins.providers(edit("enable", "zj", "wallet", path), pm=pm) == 0

    expected = crlf.replace("enabled = false", "enabled = true", 1)
    assert path.read_bytes() == expected.encode()


def test_already_in_that_state_leaves_the_file_alone(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
) -> None:
    path = write_config(valid_text)
    before = path.stat()
    assert plugins.providers(edit("enable", "bj", "wallet", path), pm=pm) == 0
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "bj: wallet is already enabled" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("branch", "provider", "message"),
    [
        ("xx", "cardpay", "error: unknown branch 'xx' in {path} (branches: zj, bj)"),
        ("zj", "paypal", "error: unknown provider 'paypal' (installed: cardpay, wallet)"),
        (
            "bj",
            "cardpay",
            "error: branch bj has no [branches.bj.providers.cardpay] table in {path};"
            " add one with the provider's settings first",
        ),
    ],
)
def test_unknown_branch_or_provider_or_missing_table(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
    branch: str,
    provider: str,
    message: str,
) -> None:
    text = valid_text[: valid_text.index("[branches.bj.providers.cardpay]")]
    path = write_config(text)
    assert plugins.providers(edit("disable", branch, provider, path), pm=pm) == 1
    assert message.format(path=path) in capsys.readouterr().err
    assert path.read_text() == text


def test_edit_that_leaves_the_file_invalid_is_refused(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_config(valid_text)
    monkeypatch.delenv("BP_TEST_WALLET_KEY")

    assert plugins.providers(edit("disable", "zj", "cardpay", path), pm=pm) == 1

    err = capsys.readouterr().err
    assert f"refused: {path} would be invalid after this change; nothing written:" in err
    assert (
        f"{path}: [branches.bj.providers.wallet] signing_key:"
        " environment variable BP_TEST_WALLET_KEY is not set" in err
    )
    assert path.read_text() == valid_text


def test_disabling_the_last_enabled_provider_warns(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
) -> None:
    path = write_config(valid_text)
    assert plugins.providers(edit("disable", "zj", "cardpay", path), pm=pm) == 0
    assert "warning: branch zj now has no enabled provider" in capsys.readouterr().err
    assert FIRST_CHOICE.replace("true", "false") in path.read_text()


def test_config_check_summarises_a_valid_file(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
) -> None:
    path = write_config(valid_text)
    assert plugins.config_check(argparse.Namespace(plugins_toml=path), pm=pm) == 0
    assert capsys.readouterr().out.splitlines() == [
        "OK: 2 branches, providers per branch:",
        "  zj  China Mobile Zhejiang: cardpay, wallet (disabled)",
        "  bj  China Telecom Beijing: wallet, cardpay",
    ]


def test_config_check_lists_problems_and_fails(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
) -> None:
    path = write_config(valid_text.replace("secrets/card.pem", "secrets/x.pem"))
    assert plugins.config_check(argparse.Namespace(plugins_toml=path), pm=pm) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path} is invalid:",
        f"  {path}: [branches.zj.providers.cardpay] private_key:"
        " file secrets/x.pem cannot be read (No such file or directory)",
        f"  {path}: [branches.bj.providers.cardpay] private_key:"
        " file secrets/x.pem cannot be read (No such file or directory)",
    ]


def test_config_check_uses_the_environment_path(
    write_config: Write,
    valid_text: str,
    pm: pluggy.PluginManager,
    capsys: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRANCHPAY_PLUGINS_TOML", str(write_config(valid_text)))
    assert plugins.config_check(argparse.Namespace(), pm=pm) == 0
    assert capsys.readouterr().out.startswith("OK: 2 branches")


def test_plugins_lists_providers_with_their_methods(
    pm: pluggy.PluginManager, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert plugins.plugins(argparse.Namespace(), pm=pm) == 0
    out = capsys.readouterr().out
    assert "(registered in code)" in out
    assert "cardpay (Card Pay): PAGE, QR_CODE" in out
    assert "wallet (Wallet): WAP" in out


async def test_a_running_server_applies_an_admin_edit(
    write_config: Write, valid_text: str, pm: pluggy.PluginManager
) -> None:
    path = write_config(valid_text)
    async with httpx.AsyncClient() as http:
        registry = ProviderRegistry(path, pm, http)
        registry.load()
        watcher = asyncio.create_task(registry.watch())
        try:
            await asyncio.wait_for(registry.wait_until_watching(), timeout=5)
            assert plugins.providers(edit("disable", "bj", "wallet", path), pm=pm) == 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2.0
            while registry.status.generation < 2:
                assert loop.time() < deadline, "edit not applied within 2 s"
                await asyncio.sleep(0.02)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    assert [cls.name for cls in registry.enabled("bj")] == ["cardpay"]
    assert registry.provider("bj", "wallet") is not None
