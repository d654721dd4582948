"""The live provider registry: lookups, live reload, rejection of bad files, atomic swaps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest
from pydantic import BaseModel, SecretStr

from api.config.live import ProviderRegistry
from api.config.model import ConfigError, PluginsConfig
from api.plugins import hookimpl
from api.plugins.contract import PaymentMethod, Provider

Write = Callable[[str], Path]
APPLIED_WITHIN = 2.0


async def eventually(predicate: Callable[[], bool], within: float = APPLIED_WITHIN) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def registry(
    write_config: Write, valid_text: str, pm: pluggy.PluginManager, http: httpx.AsyncClient
) -> ProviderRegistry:
    path = write_config(valid_text)
    loaded = ProviderRegistry(path, pm, http)
    loaded.load()
    return loaded


@pytest.fixture
async def watched(registry: ProviderRegistry) -> AsyncIterator[ProviderRegistry]:
    task = asyncio.create_task(registry.watch())
    await asyncio.wait_for(registry.wait_until_watching(), timeout=5)
    yield registry
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def names(classes: list[type[Provider]]) -> list[str]:
    return [cls.name for cls in classes]


async def test_load_serves_branches_and_one_provider_per_branch(
    registry: ProviderRegistry, http: httpx.AsyncClient, wallet_key: str
) -> None:
    status = registry.status
    assert (status.ok, status.error, status.generation) == (True, None, 1)
    assert status.loaded_at.utcoffset() is not None
    assert status.path == registry.path

    assert list(registry.config.branches) == ["zj", "bj"]
    zj = registry.branch("zj")
    assert zj is not None
    assert zj.name == "China Mobile Zhejiang"
    assert registry.branch("xx") is None
    assert names(registry.enabled("zj")) == ["cardpay"]
    assert names(registry.enabled("bj")) == ["wallet", "cardpay"]
    assert registry.enabled("xx") == []

    disabled = registry.provider("zj", "wallet")  # still serves notifications and refunds
    assert disabled is not None
    assert (disabled.branch, disabled.http) == ("zj", http)
    assert disabled.settings.signing_key == wallet_key  # type: ignore[attr-defined]
    card_zj, card_bj = registry.provider("zj", "cardpay"), registry.provider("bj", "cardpay")
    assert card_zj is not None and card_bj is not None and card_zj is not card_bj
    assert card_bj.settings.merchant_id == "100002"  # type: ignore[attr-defined]
    assert registry.provider("zj", "paypal") is None


async def test_invalid_file_stops_start_up(
    write_config: Write, pm: pluggy.PluginManager, http: httpx.AsyncClient
) -> None:
    path = write_config("[branches.zj]\nname = 1\n")
    fresh = ProviderRegistry(path, pm, http)
    with pytest.raises(ConfigError):
        fresh.load()
    assert fresh.status.ok is False
    assert fresh.status.error is not None and "[branches.zj] name:" in fresh.status.error
    with pytest.raises(RuntimeError):
        fresh.config  # noqa: B018


async def test_valid_change_applies_within_two_seconds(
    watched: ProviderRegistry, valid_text: str
) -> None:
    seen: list[PluginsConfig] = []
    watched.subscribe(seen.append)
    unchanged = watched.provider("zj", "cardpay")
    changed = watched.provider("bj", "cardpay")

    text = valid_text.replace("enabled = false", "enabled = true")
    watched.path.write_text(text.replace('merchant_id = "100002"', 'merchant_id = "100003"'))
    await eventually(lambda: watched.status.generation == 2)

    assert names(watched.enabled("zj")) == ["cardpay", "wallet"]
    assert watched.status.ok
    assert [config.branches["zj"].enabled_providers() for config in seen] == [["cardpay", "wallet"]]
    assert watched.provider("zj", "cardpay") is unchanged  # same settings: instance kept
    rebuilt = watched.provider("bj", "cardpay")
    assert rebuilt is not changed
    assert rebuilt is not None and rebuilt.settings.merchant_id == "100003"  # type: ignore[attr-defined]


async def test_editor_saving_through_rename_is_followed(
    watched: ProviderRegistry, valid_text: str
) -> None:
    temporary = watched.path.with_name(".plugins.toml.swp")
    temporary.write_text(valid_text.replace('name = "China Mobile Zhejiang"', 'name = "ZJ"'))
    os.replace(temporary, watched.path)

    await eventually(lambda: watched.status.generation == 2)
    branch = watched.branch("zj")
    assert branch is not None and branch.name == "ZJ"


async def test_invalid_change_is_rejected_until_fixed(
    watched: ProviderRegistry, valid_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    serving = watched.provider("zj", "cardpay")
    leaked = "sk-live-0123456789abcdef"
    broken = valid_text.replace(
        'signing_key = { env = "BP_TEST_WALLET_KEY" }', f'signing_key = "{leaked}"', 1
    )

    with caplog.at_level(logging.ERROR, logger="branchpay.config"):
        watched.path.write_text(broken)
        await eventually(lambda: not watched.status.ok)

    status = watched.status
    assert status.generation == 1
    assert status.error is not None
    assert "[branches.zj.providers.wallet] signing_key: secret must be given as" in status.error
    assert watched.provider("zj", "cardpay") is serving  # the last good set keeps serving
    assert names(watched.enabled("bj")) == ["wallet", "cardpay"]
    assert any(
        r.name == "branchpay.config" and "signing_key" in r.getMessage() for r in caplog.records
    )
    assert leaked not in caplog.text
    assert leaked not in status.error

    watched.path.write_text(valid_text.replace("enabled = false", "enabled = true"))
    await eventually(lambda: watched.status.ok)
    assert watched.status.generation == 2
    assert watched.status.error is None
    assert names(watched.enabled("zj")) == ["cardpay", "wallet"]


async def test_file_briefly_missing_then_rewritten_in_pieces(
    watched: ProviderRegistry, valid_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    final = valid_text.replace("enabled = false", "enabled = true")
    with caplog.at_level(logging.ERROR, logger="branchpay.config"):
        watched.path.unlink()
        # Shorter than the grace a vanished file gets; an editor's save takes this long.
        await asyncio.sleep(0.3)
        with watched.path.open("w") as file:
            file.write(final[: len(final) // 2])
            file.flush()
            file.write(final[len(final) // 2 :])
        await eventually(lambda: watched.status.generation == 2)

    assert watched.status.ok
    assert names(watched.enabled("zj")) == ["cardpay", "wallet"]
    assert "cannot be read" not in caplog.text


async def test_file_that_stays_missing_is_reported_and_old_config_serves(
    watched: ProviderRegistry, valid_text: str
) -> None:
    watched.path.unlink()
    await eventually(lambda: not watched.status.ok, within=APPLIED_WITHIN + 1.0)
    assert watched.status.error is not None and "cannot be read" in watched.status.error
    assert names(watched.enabled("zj")) == ["cardpay"]

    watched.path.write_text(valid_text)
    await eventually(lambda: watched.status.ok)
    assert watched.status.generation == 2


async def test_explicit_reload(registry: ProviderRegistry, valid_text: str) -> None:
    first_loaded_at = registry.status.loaded_at
    registry.path.write_text(valid_text.replace('operator = "China Telecom"\n', ""))
    rejected = await registry.reload()
    assert rejected.ok is False
    assert rejected.error is not None and "[branches.bj] operator: missing" in rejected.error
    assert (rejected.generation, rejected.loaded_at) == (1, first_loaded_at)

    registry.path.write_text(valid_text.replace('name = "China Telecom Beijing"', 'name = "BJ"'))
    accepted = await registry.reload()
    assert (accepted.ok, accepted.error, accepted.generation) == (True, None, 2)
    assert accepted.loaded_at > first_loaded_at
    branch = registry.branch("bj")
    assert branch is not None and branch.name == "BJ"


async def test_readers_never_see_half_a_config(registry: ProviderRegistry, valid_text: str) -> None:
    """A thread reading all the time sees each branch set whole while reloads swap it."""
    stop = threading.Event()
    faults: list[str] = []
    reads = 0

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            config = registry.config
            labels = {branch.province for branch in config.branches.values()}
            if len(labels) != 1 and labels != {"Zhejiang", "Beijing"}:
                faults.append(f"mixed generations: {labels}")
            if registry.provider("zj", "cardpay") is None:
                faults.append("no cardpay provider during reload")
            reads += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for generation in range(20):
            text = valid_text.replace('province = "Zhejiang"', f'province = "P{generation}"')
            text = text.replace('province = "Beijing"', f'province = "P{generation}"')
            registry.path.write_text(text)
            status = await registry.reload()
            assert status.ok, status.error
            await asyncio.sleep(0)
    finally:
        stop.set()
        await asyncio.to_thread(reader.join)
    assert faults == []
    assert reads > 0
    assert registry.status.generation == 21


class FragileSettings(BaseModel):
    key: SecretStr


class FragilePay(Provider):
    name = "fragile"
    display_name = "Fragile"
    methods = (PaymentMethod.APP,)
    Settings = FragileSettings

    def __init__(self, settings: BaseModel, *, branch: str, http: httpx.AsyncClient) -> None:
        super().__init__(settings, branch=branch, http=http)
        secret = settings.key.get_secret_value()  # type: ignore[attr-defined]
        raise ValueError(f"key {secret} has the wrong length")


class FragilePlugin:
    @hookimpl
    def register_providers(self) -> list[Any]:
        return [FragilePay]


async def test_provider_that_cannot_start_rejects_the_file(
    registry: ProviderRegistry,
    valid_text: str,
    config_dir: Path,
    pm: pluggy.PluginManager,
    http: httpx.AsyncClient,
) -> None:
    (config_dir / "secrets" / "fragile.key").write_text("fragile-secret-value\n")
    pm.register(FragilePlugin(), name="fragile")
    fresh = ProviderRegistry(registry.path, pm, http)
    registry.path.write_text(
        valid_text + "\n[branches.bj.providers.fragile]\nenabled = true\n"
        'key = { file = "secrets/fragile.key" }\n'
    )
    with pytest.raises(ConfigError) as caught:
        fresh.load()
    [problem] = caught.value.problems
    assert problem == (
        f"{registry.path}: [branches.bj.providers.fragile] provider could not start with these"
        " settings: ValueError: invalid value (details withheld: they would reveal a secret)"
    )


async def test_symlink_swap_without_an_event_for_the_file_is_seen(
    config_dir: Path,
    valid_text: str,
    pm: pluggy.PluginManager,
    http: httpx.AsyncClient,
) -> None:
    """A Kubernetes ConfigMap volume swaps a ``..data`` link; no event names plugins.toml."""
    for version, name in (("v1", "China Mobile Zhejiang"), ("v2", "Zhejiang v2")):
        (config_dir / version).mkdir()
        text = valid_text.replace('name = "China Mobile Zhejiang"', f'name = "{name}"')
        (config_dir / version / "plugins.toml").write_text(text)
    (config_dir / "..data").symlink_to("v1")
    path = config_dir / "plugins.toml"
    path.symlink_to("..data/plugins.toml")
    registry = ProviderRegistry(path, pm, http)
    registry.load()
    task = asyncio.create_task(registry.watch())
    try:
        await asyncio.wait_for(registry.wait_until_watching(), timeout=5)
        (config_dir / "..data_tmp").symlink_to("v2")
        os.replace(config_dir / "..data_tmp", config_dir / "..data")
        await eventually(lambda: registry.status.generation == 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    branch = registry.branch("zj")
    assert branch is not None and branch.name == "Zhejiang v2"
