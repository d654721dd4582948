"""The branch admin's commands: ``plugins``, ``providers enable|disable``, ``config check``.

Each command takes the parsed ``argparse`` arguments and returns the process
exit code (api/cli.py declares the command line). The file is
``args.plugins_toml`` when given, else ``BRANCHPAY_PLUGINS_TOML`` or
./plugins.toml. ``providers enable|disable`` edit plugins.toml through
api/config/edit.py, the code the ``setProviderEnabled`` mutation uses too:
tomlkit keeps comments and layout, the edited document is validated before
anything is written, and the write replaces the file atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pluggy
from rich.console import Console
from rich.table import Table

from api.config.edit import EditRefused, set_provider_enabled
from api.config.model import ConfigError, PluginsConfig, default_path
from api.config.validate import load_config
from api.plugins.contract import Provider
from api.plugins.manager import (
    PluginError,
    installed_plugins,
    installed_providers,
    load_plugin_manager,
)


def plugins(args: argparse.Namespace, *, pm: pluggy.PluginManager | None = None) -> int:
    """Show every installed plugin: distribution, version, providers and their methods."""
    out, err = _consoles()
    try:
        pm = pm or load_plugin_manager()
        found = installed_plugins(pm)
    except PluginError as exc:
        _print_problems(err, "plugins could not be loaded:", exc.problems)
        return 1
    table = Table(title="branchpay plugins")
    for column in ("Distribution", "Version", "Plugin", "Providers"):
        table.add_column(column)
    for info in found:
        table.add_row(
            info.distribution or "(registered in code)",
            info.version or "",
            info.name,
            "\n".join(_describe_provider(cls) for cls in info.providers) or "(hooks only)",
        )
    out.print(table)
    return 0


def providers(args: argparse.Namespace, *, pm: pluggy.PluginManager | None = None) -> int:
    """``providers enable|disable BRANCH PROVIDER`` (``args.action`` says which)."""
    return _set_enabled(args, args.action == "enable", pm)


def config_check(args: argparse.Namespace, *, pm: pluggy.PluginManager | None = None) -> int:
    """Validate plugins.toml against the installed plugins; non-zero exit when invalid."""
    out, err = _consoles()
    path = _path(args)
    try:
        config = load_config(path, _installed(pm))
    except PluginError as exc:
        _print_problems(err, "plugins could not be loaded:", exc.problems)
        return 1
    except ConfigError as exc:
        _print_problems(err, f"{path} is invalid:", exc.problems)
        return 1
    out.print(_summary(config), markup=False, highlight=False, soft_wrap=True)
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool, pm: pluggy.PluginManager | None) -> int:
    out, err = _consoles()
    path = _path(args)
    verb = "enabled" if enabled else "disabled"
    try:
        installed = _installed(pm)
    except PluginError as exc:
        _print_problems(err, "plugins could not be loaded:", exc.problems)
        return 1
    try:
        edit = set_provider_enabled(path, args.branch, args.provider, enabled, installed)
    except EditRefused as refused:
        if refused.problems:
            _print_problems(err, f"refused: {refused.message}:", refused.problems)
        else:
            _say(err, f"error: {refused.message}")
        return 1
    if not edit.changed:
        _say(out, f"{edit.branch}: {edit.provider} is already {verb}; {path} left unchanged")
        return 0
    _say(
        out,
        f"{edit.branch}: {edit.provider} {verb} in {path}; a running server applies it within 2 s",
    )
    if edit.no_enabled_provider:
        _say(
            err,
            f"warning: branch {edit.branch} now has no enabled provider;"
            " it cannot take new payments until one is enabled",
        )
    return 0


def _summary(config: PluginsConfig) -> str:
    lines = [f"OK: {len(config.branches)} branches, providers per branch:"]
    for code, branch in config.branches.items():
        providers = [
            name if provider.enabled else f"{name} (disabled)"
            for name, provider in branch.providers.items()
        ]
        lines.append(f"  {code}  {branch.name}: {', '.join(providers) or '(none)'}")
    return "\n".join(lines)


def _describe_provider(cls: type[Provider]) -> str:
    methods = ", ".join(method.value for method in cls.methods)
    return f"{cls.name} ({cls.display_name}): {methods}"


def _installed(pm: pluggy.PluginManager | None) -> dict[str, type[Provider]]:
    return installed_providers(pm or load_plugin_manager())


def _path(args: argparse.Namespace) -> Path:
    given = getattr(args, "plugins_toml", None)
    return Path(given) if given else default_path()


def _consoles() -> tuple[Console, Console]:
    return Console(), Console(stderr=True)


def _say(console: Console, line: str) -> None:
    # Table paths such as [branches.zj] would otherwise be read as rich markup.
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _print_problems(console: Console, heading: str, problems: list[str]) -> None:
    _say(console, heading)
    for problem in problems:
        _say(console, f"  {problem}")
