"""Discovery of provider plugins and calls of their lifecycle hooks.

Plugins are found through the entry-point group ``branchpay.providers``: the
built-in providers are registered there by branchpay's own pyproject.toml,
third-party packages register theirs the same way. A plugin module may declare
the plugin API it was written for::

    BRANCHPAY_PLUGIN_API = 1

A major version higher than :data:`PLUGIN_API_VERSION` stops loading with an
error naming the plugin, rather than failing later in the middle of a payment.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pluggy
from pydantic import BaseModel

from api.plugins import hookspecs
from api.plugins.contract import PaymentMethod, Provider

ENTRY_POINT_GROUP = "branchpay.providers"
PLUGIN_API_VERSION = 2
PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")

logger = logging.getLogger("branchpay.plugins")


class PluginError(Exception):
    """Plugins could not be loaded; ``problems`` has one line per plugin problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin, for ``branchpay plugins``."""

    name: str
    distribution: str | None  # None for a plugin registered in code, not installed
    version: str | None
    providers: tuple[type[Provider], ...]


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows branchpay's hooks and has no plugin yet."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugin_manager(group: str = ENTRY_POINT_GROUP) -> pluggy.PluginManager:
    """Every plugin installed under the entry-point ``group``, checked for its API version."""
    pm = new_plugin_manager()
    try:
        pm.load_setuptools_entrypoints(group)
    except Exception as exc:
        raise PluginError(
            [f"entry-point group {group}: a plugin failed to load: {type(exc).__name__}: {exc}"]
        ) from exc
    check_plugin_api(pm)
    return pm


def discover_new_plugins(pm: pluggy.PluginManager, group: str = ENTRY_POINT_GROUP) -> int:
    """Register plugins installed since ``pm`` was loaded; returns how many were new.

    Lets a running service pick up a provider package pip-installed after it
    started, once plugins.toml names the provider.
    """
    importlib.invalidate_caches()
    try:
        added = pm.load_setuptools_entrypoints(group)
    except Exception as exc:
        raise PluginError(
            [f"entry-point group {group}: a plugin failed to load: {type(exc).__name__}: {exc}"]
        ) from exc
    if added:
        check_plugin_api(pm)
    return added


def check_plugin_api(pm: pluggy.PluginManager) -> None:
    """Refuse plugins written for a newer plugin API than this branchpay provides."""
    problems: list[str] = []
    for name, plugin in pm.list_name_plugin():
        declared = getattr(plugin, "BRANCHPAY_PLUGIN_API", None)
        if declared is None:
            continue
        major = _major(declared)
        if major is None or major < 1:
            problems.append(
                f"plugin {_describe(pm, name, plugin)}: BRANCHPAY_PLUGIN_API = {declared!r}"
                " is not a plugin API version (write an integer such as 1)"
            )
        elif major > PLUGIN_API_VERSION:
            problems.append(
                f"plugin {_describe(pm, name, plugin)} needs branchpay plugin API {declared},"
                f" this branchpay provides {PLUGIN_API_VERSION}: upgrade branchpay or install"
                " a release of the plugin written for this API"
            )
    if problems:
        raise PluginError(problems)


def installed_providers(pm: pluggy.PluginManager) -> dict[str, type[Provider]]:
    """Provider classes by name, from every plugin's ``register_providers``.

    Raises :class:`PluginError` for a malformed provider class or a name two
    plugins both claim.
    """
    check_plugin_api(pm)
    problems: list[str] = []
    providers: dict[str, type[Provider]] = {}
    owners: dict[str, str] = {}
    for name, plugin, classes in _providers_by_plugin(pm, problems):
        owner = _describe(pm, name, plugin)
        for cls in classes:
            fault = _provider_class_fault(cls)
            if fault:
                problems.append(f"plugin {owner}: {fault}")
                continue
            previous = providers.get(cls.name)
            if previous is cls:
                continue
            if previous is not None:
                problems.append(
                    f"provider name {cls.name!r} is registered twice: by {owners[cls.name]}"
                    f" and by {owner}; uninstall one of them"
                )
                continue
            providers[cls.name] = cls
            owners[cls.name] = owner
    if problems:
        raise PluginError(problems)
    return providers


def installed_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered plugin with its distribution and the providers it ships."""
    problems: list[str] = []
    shipped = {name: classes for name, _, classes in _providers_by_plugin(pm, problems)}
    if problems:
        raise PluginError(problems)
    distributions = _distributions(pm)
    plugins = []
    for name, plugin in pm.list_name_plugin():
        dist = distributions.get(id(plugin))
        plugins.append(
            PluginInfo(
                name=name,
                distribution=dist.project_name if dist else None,
                version=dist.version if dist else None,
                providers=tuple(shipped.get(name, ())),
            )
        )
    return sorted(plugins, key=lambda info: (info.distribution or "", info.name))


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[str]:
    """Call every implementation of a lifecycle hook on its own.

    An implementation that raises is logged and skipped so the others still
    run and the payment flow carries on. Returns the names of the plugins whose
    implementation failed. Hook wrappers do not apply to lifecycle hooks and are
    not called.
    """
    caller = getattr(pm.hook, hook_name, None)
    if caller is None or caller.spec is None:
        raise ValueError(f"{hook_name!r} is not a branchpay hook")
    missing = [arg for arg in caller.spec.argnames if arg not in kwargs]
    if missing:
        raise TypeError(f"hook {hook_name} needs {', '.join(missing)}")
    failed: list[str] = []
    # pluggy keeps implementations in reverse call order.
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            if inspect.iscoroutine(result):
                result.close()
                raise TypeError("lifecycle hooks are called synchronously; drop `async`")
        except Exception:
            logger.exception("plugin %s: hook %s failed; carrying on", impl.plugin_name, hook_name)
            failed.append(impl.plugin_name)
    return failed


def _providers_by_plugin(
    pm: pluggy.PluginManager, problems: list[str]
) -> Iterator[tuple[str, object, list[Any]]]:
    """(plugin name, plugin, classes it returned) for each ``register_providers`` implementation.

    Called one implementation at a time so every class can be traced to the
    plugin that returned it.
    """
    for impl in reversed(pm.hook.register_providers.get_hookimpls()):
        owner = _describe(pm, impl.plugin_name, impl.plugin)
        try:
            returned = impl.function()
        except Exception as exc:
            problems.append(
                f"plugin {owner}: register_providers failed: {type(exc).__name__}: {exc}"
            )
            continue
        if not isinstance(returned, list | tuple):
            problems.append(f"plugin {owner}: register_providers must return a list of classes")
            continue
        yield impl.plugin_name, impl.plugin, list(returned)


def _provider_class_fault(cls: Any) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        return f"{cls!r} is not a subclass of api.plugins.contract.Provider"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not PROVIDER_NAME.match(name):
        return f"{cls.__qualname__}.name must match {PROVIDER_NAME.pattern}"
    display_name = getattr(cls, "display_name", None)
    if not isinstance(display_name, str) or not display_name:
        return f"provider {name}: display_name must be a non-empty string"
    methods = getattr(cls, "methods", None)
    if (
        not isinstance(methods, tuple)
        or not methods
        or not all(isinstance(method, PaymentMethod) for method in methods)
    ):
        return f"provider {name}: methods must be a non-empty tuple of PaymentMethod"
    settings = getattr(cls, "Settings", None)
    if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
        return f"provider {name}: Settings must be a pydantic model class"
    return None


def _distributions(pm: pluggy.PluginManager) -> dict[int, Any]:
    return {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}


def _describe(pm: pluggy.PluginManager, name: str, plugin: object) -> str:
    dist = _distributions(pm).get(id(plugin))
    if dist is None:
        return repr(name)
    return f"{name!r} (distribution {dist.project_name} {dist.version})"


def _major(declared: object) -> int | None:
    if isinstance(declared, bool):
        return None
    if isinstance(declared, int):
        return declared
    if isinstance(declared, str):
        head = declared.split(".", 1)[0]
        return int(head) if head.isdigit() else None
    return None
