"""The branch admin's commands: ``plugins``, ``providers enable|disable``, ``config check``.

Each command takes the parsed ``argparse`` arguments and returns the process
exit code (api/cli.py declares the command line). The file is
``args.plugins_toml`` when given, else ``BRANCHPAY_PLUGINS_TOML`` or
./plugins.toml. ``providers enable|disable`` edit plugins.toml in place with tomlkit, so
comments and layout survive; the edited document is validated before anything
is written, and the write replaces the file atomically, so a running server
never reads half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import tempfile
from pathlib import Path

import pluggy
import tomlkit
from rich.console import Console
from rich.table import Table
from tomlkit.exceptions import TOMLKitError

from api.config.model import ConfigError, PluginsConfig, default_path
from api.config.validate import load_config, parse_config
from api.config.wording import table_path
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
    branch, name = args.branch, args.provider
    verb = "enabled" if enabled else "disabled"
    try:
        installed = _installed(pm)
    except PluginError as exc:
        _print_problems(err, "plugins could not be loaded:", exc.problems)
        return 1
    try:
        original = path.read_bytes()
    except OSError as exc:
        _say(err, f"error: {path}: cannot be read ({exc.strerror or exc})")
        return 1
    try:
        document = tomlkit.parse(original.decode("utf-8"))
    except (UnicodeDecodeError, TOMLKitError):
        return _refuse_invalid(err, path, original, installed)

    branches = document.get("branches")
    if not isinstance(branches, dict) or branch not in branches:
        known = ", ".join(branches) if isinstance(branches, dict) else "none"
        _say(err, f"error: unknown branch {branch!r} in {path} (branches: {known})")
        return 1
    branch_table = branches[branch]
    configured = branch_table.get("providers") if isinstance(branch_table, dict) else None
    if not isinstance(configured, dict) or name not in configured:
        if name not in installed:
            _say(
                err,
                f"error: unknown provider {name!r}"
                f" (installed: {', '.join(sorted(installed)) or 'none'})",
            )
        else:
            _say(
                err,
                f"error: branch {branch} has no {table_path('branches', branch, 'providers', name)}"
                f" table in {path}; add one with the provider's settings first"
                " (see docs/configuration.md)",
            )
        return 1
    provider_table = configured[name]
    if not isinstance(provider_table, dict):
        return _refuse_invalid(err, path, original, installed)
    if provider_table.get("enabled") is enabled:
        _say(out, f"{branch}: {name} is already {verb}; {path} left unchanged")
        return 0
    provider_table["enabled"] = enabled
    edited = tomlkit.dumps(document)

    try:
        config = parse_config(edited, path, installed)
    except ConfigError as exc:
        _print_problems(
            err,
            f"refused: {path} would be invalid after this change; nothing written:",
            exc.problems,
        )
        return 1
    if path.read_bytes() != original:
        _say(err, f"error: {path} changed while it was being edited; nothing written, try again")
        return 1
    _replace_atomically(path, edited.encode("utf-8"))
    _say(out, f"{branch}: {name} {verb} in {path}; a running server applies it within 2 s")
    if not config.branches[branch].enabled_providers():
        _say(
            err,
            f"warning: branch {branch} now has no enabled provider;"
            " it cannot take new payments until one is enabled",
        )
    return 0


def _refuse_invalid(
    err: Console, path: Path, original: bytes, installed: dict[str, type[Provider]]
) -> int:
    try:
        parse_config(original.decode("utf-8"), path, installed)
    except UnicodeDecodeError:
        _say(err, f"error: {path}: not UTF-8 text; nothing written")
    except ConfigError as exc:
        _print_problems(err, f"refused: {path} is invalid; nothing written:", exc.problems)
    else:
        _say(err, f"error: {path} cannot be edited safely; nothing written")
    return 1


def _replace_atomically(path: Path, content: bytes) -> None:
    """Write a sibling temporary file, then rename it over ``path`` in one step."""
    target = path.resolve()
    mode = stat.S_IMODE(target.stat().st_mode)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
