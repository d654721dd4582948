"""Plugin discovery through entry points, provider name clashes, API versions, lifecycle hooks.

Third-party plugins are real installed distributions: each test writes a
``*.dist-info`` with an ``entry_points.txt`` and a module onto a directory put
on ``sys.path``, which is how pip leaves an installed package.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from api.plugins import hookimpl
from api.plugins.manager import (
    PluginError,
    PluginInfo,
    installed_plugins,
    installed_providers,
    load_plugin_manager,
    new_plugin_manager,
    notify,
)

PLUGIN_SOURCE = """\
from pydantic import BaseModel

from api.plugins.contract import PaymentMethod, Provider
from api.plugins import hookimpl

{api_line}


class Settings(BaseModel):
    key: str = "value"


class {class_name}(Provider):
    name = {provider!r}
    display_name = {display!r}
    methods = (PaymentMethod.PAGE, PaymentMethod.QR_CODE)
    Settings = Settings


@hookimpl
def register_providers():
    return [{class_name}]
"""


class Site:
    """A directory on sys.path where the test installs distributions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.group = f"bp_test_{uuid.uuid4().hex[:8]}.providers"
        self.modules: list[str] = []

    def install(
        self, distribution: str, version: str, provider: str, *, api: object | None = None
    ) -> str:
        module = f"bp_test_{uuid.uuid4().hex[:12]}"
        api_line = "" if api is None else f"BRANCHPAY_PLUGIN_API = {api!r}"
        (self.root / f"{module}.py").write_text(
            PLUGIN_SOURCE.format(
                api_line=api_line,
                class_name=f"{provider.title()}Provider",
                provider=provider,
                display=provider.title(),
            )
        )
        info = self.root / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
        )
        (info / "entry_points.txt").write_text(f"[{self.group}]\n{provider} = {module}\n")
        self.modules.append(module)
        return module


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    installed = Site(root)
    yield installed
    for module in installed.modules:
        sys.modules.pop(module, None)


def test_installed_distribution_is_discovered(site: Site) -> None:
    site.install("acme-pay", "1.2.0", "acmepay", api=1)
    pm = load_plugin_manager(site.group)

    providers = installed_providers(pm)
    assert list(providers) == ["acmepay"]
    assert providers["acmepay"].display_name == "Acmepay"
    assert installed_plugins(pm) == [
        PluginInfo(
            name="acmepay",
            distribution="acme-pay",
            version="1.2.0",
            providers=(providers["acmepay"],),
        )
    ]


def test_builtin_sandbox_registers_through_the_entry_point_group() -> None:
    pm = load_plugin_manager()
    assert "sandbox" in installed_providers(pm)
    [sandbox] = [info for info in installed_plugins(pm) if info.name == "sandbox"]
    assert sandbox.distribution == "branchpay"
    assert [cls.name for cls in sandbox.providers] == ["sandbox"]


def test_clash_between_installed_distributions_names_both(site: Site) -> None:
    site.install("acme-pay", "1.0.0", "acmepay")
    module = site.install("other-pay", "2.0.0", "otherpay")
    # The second distribution's module also claims the name "acmepay".
    source = (site.root / f"{module}.py").read_text()
    (site.root / f"{module}.py").write_text(source.replace("'otherpay'", "'acmepay'"))

    with pytest.raises(PluginError) as caught:
        installed_providers(load_plugin_manager(site.group))
    [problem] = caught.value.problems
    assert "provider name 'acmepay' is registered twice" in problem
    assert "(distribution acme-pay 1.0.0)" in problem
    assert "(distribution other-pay 2.0.0)" in problem


def test_plugin_for_a_newer_api_is_refused_by_name(site: Site) -> None:
    site.install("acme-pay", "1.0.0", "acmepay", api=1)
    site.install("future-pay", "3.0.0", "futurepay", api=3)
    with pytest.raises(PluginError) as caught:
        load_plugin_manager(site.group)
    [problem] = caught.value.problems
    assert problem.startswith(
        "plugin 'futurepay' (distribution future-pay 3.0.0) needs branchpay plugin API 3,"
        " this branchpay provides 2"
    )


def test_minor_api_version_of_our_major_is_accepted(site: Site) -> None:
    site.install("acme-pay", "1.0.0", "acmepay", api="1.3")
    assert list(installed_providers(load_plugin_manager(site.group))) == ["acmepay"]


def test_api_version_is_checked_for_plugins_registered_in_code() -> None:
    class FuturePlugin:
        BRANCHPAY_PLUGIN_API = 3

        @hookimpl
        def register_providers(self) -> list[Any]:
            return []

    pm = new_plugin_manager()
    pm.register(FuturePlugin(), name="future")
    with pytest.raises(PluginError, match="plugin 'future' needs branchpay plugin API 3"):
        installed_providers(pm)


def test_plugin_that_fails_to_import_is_reported(site: Site) -> None:
    module = site.install("broken-pay", "0.1.0", "brokenpay")
    (site.root / f"{module}.py").write_text("import does_not_exist_anywhere\n")
    with pytest.raises(PluginError) as caught:
        load_plugin_manager(site.group)
    [problem] = caught.value.problems
    assert site.group in problem
    assert "does_not_exist_anywhere" in problem


def test_malformed_provider_class_is_reported(pm: pluggy.PluginManager) -> None:
    class Nameless:
        pass

    class BadPlugin:
        @hookimpl
        def register_providers(self) -> list[Any]:
            return [Nameless]

    pm.register(BadPlugin(), name="bad")
    with pytest.raises(PluginError) as caught:
        installed_providers(pm)
    assert caught.value.problems == [
        f"plugin 'bad': {Nameless!r} is not a subclass of api.plugins.contract.Provider"
    ]


class Recorder:
    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []

    @hookimpl
    def order_created(self, order: dict[str, Any]) -> None:
        self.orders.append(order)


class Broken:
    @hookimpl
    def order_created(self, order: dict[str, Any]) -> None:
        raise RuntimeError("webhook endpoint down")


class AsyncByMistake:
    @hookimpl
    async def order_created(self, order: dict[str, Any]) -> None:
        raise AssertionError("never runs")


def test_notify_isolates_a_failing_implementation(caplog: pytest.LogCaptureFixture) -> None:
    pm = new_plugin_manager()
    first, last = Recorder(), Recorder()
    pm.register(first, name="first")
    pm.register(Broken(), name="broken")
    pm.register(AsyncByMistake(), name="async")
    pm.register(last, name="last")
    order = {"_id": "o1", "branch": "zj"}

    with caplog.at_level(logging.ERROR, logger="branchpay.plugins"):
        failed = notify(pm, "order_created", order=order)

    assert first.orders == [order]
    assert last.orders == [order]
    assert sorted(failed) == ["async", "broken"]
    messages = [r.getMessage() for r in caplog.records if r.name == "branchpay.plugins"]
    assert "plugin broken: hook order_created failed; carrying on" in messages
    assert "plugin async: hook order_created failed; carrying on" in messages


def test_notify_rejects_unknown_hooks_and_missing_arguments() -> None:
    pm = new_plugin_manager()
    with pytest.raises(ValueError, match="'order_shipped' is not a branchpay hook"):
        notify(pm, "order_shipped", order={})
    with pytest.raises(TypeError, match="hook payment_succeeded needs payment"):
        notify(pm, "payment_succeeded", order={})
