"""Editing plugins.toml in place: enabling or disabling one provider of one branch.

One piece of code for ``branchpay providers enable|disable`` (api/cli/plugins.py)
and the ``setProviderEnabled`` mutation. The file is edited with tomlkit, so
comments and layout survive; the edited document is validated against the
installed providers before anything is written; the write replaces the file
atomically (a sibling temporary file renamed over it), so a running server's
watcher never reads half a file and applies the change as after any edit.
A refusal is an :class:`EditRefused` naming why; the file is then unchanged.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from api.config.model import ConfigError, PluginsConfig
from api.config.validate import parse_config
from api.config.wording import table_path
from api.plugins.contract import Provider


class Refusal(enum.StrEnum):
    UNREADABLE = "UNREADABLE"  # the file cannot be read
    UNKNOWN_BRANCH = "UNKNOWN_BRANCH"  # no such branch table
    UNKNOWN_PROVIDER = "UNKNOWN_PROVIDER"  # no installed provider of that name
    NOT_CONFIGURED = "NOT_CONFIGURED"  # installed, but the branch has no table for it
    INVALID = "INVALID"  # the file, or the file after the change, is invalid
    CHANGED = "CHANGED"  # the file changed while it was being edited


class EditRefused(Exception):
    """Why an edit was refused; ``problems`` are the validation's, when it was invalid."""

    def __init__(self, refusal: Refusal, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message
        self.problems = list(problems or [])


@dataclass(frozen=True)
class ProviderEdit:
    """What an edit did: ``changed`` is False when the provider was already so."""

    path: Path
    branch: str
    provider: str
    enabled: bool
    changed: bool
    # The branch has no enabled provider left: it cannot take new payments.
    no_enabled_provider: bool = False
    config: PluginsConfig | None = field(default=None, compare=False)


def command(branch: str, provider: str, enabled: bool) -> str:
    """The command line that makes the same edit (shown when a service may not edit)."""
    return f"branchpay providers {'enable' if enabled else 'disable'} {branch} {provider}"


def set_provider_enabled(
    path: Path,
    branch: str,
    provider: str,
    enabled: bool,
    installed: Mapping[str, type[Provider]],
) -> ProviderEdit:
    """Set ``enabled`` of ``[branches.<branch>.providers.<provider>]`` in ``path``."""
    try:
        original = path.read_bytes()
    except OSError as exc:
        raise EditRefused(
            Refusal.UNREADABLE, f"{path}: cannot be read ({exc.strerror or exc})"
        ) from None
    try:
        document = tomlkit.parse(original.decode("utf-8"))
    except (UnicodeDecodeError, TOMLKitError):
        raise _invalid(path, original, installed) from None

    branches = document.get("branches")
    if not isinstance(branches, dict) or branch not in branches:
        known = ", ".join(branches) if isinstance(branches, dict) else "none"
        raise EditRefused(
            Refusal.UNKNOWN_BRANCH, f"unknown branch {branch!r} in {path} (branches: {known})"
        )
    branch_table = branches[branch]
    configured = branch_table.get("providers") if isinstance(branch_table, dict) else None
    if not isinstance(configured, dict) or provider not in configured:
        if provider not in installed:
            raise EditRefused(
                Refusal.UNKNOWN_PROVIDER,
                f"unknown provider {provider!r}"
                f" (installed: {', '.join(sorted(installed)) or 'none'})",
            )
        raise EditRefused(
            Refusal.NOT_CONFIGURED,
            f"branch {branch} has no {table_path('branches', branch, 'providers', provider)}"
            f" table in {path}; add one with the provider's settings first"
            " (see docs/configuration.md)",
        )
    provider_table = configured[provider]
    if not isinstance(provider_table, dict):
        raise _invalid(path, original, installed)
    if provider_table.get("enabled") is enabled:
        return ProviderEdit(path, branch, provider, enabled, changed=False)
    provider_table["enabled"] = enabled
    edited = tomlkit.dumps(document)
    try:
        config = parse_config(edited, path, installed)
    except ConfigError as exc:
        raise EditRefused(
            Refusal.INVALID,
            f"{path} would be invalid after this change; nothing written",
            exc.problems,
        ) from None
    if path.read_bytes() != original:
        raise EditRefused(
            Refusal.CHANGED,
            f"{path} changed while it was being edited; nothing written, try again",
        )
    replace_atomically(path, edited.encode("utf-8"))
    return ProviderEdit(
        path,
        branch,
        provider,
        enabled,
        changed=True,
        no_enabled_provider=not config.branches[branch].enabled_providers(),
        config=config,
    )


def _invalid(path: Path, original: bytes, installed: Mapping[str, type[Provider]]) -> EditRefused:
    try:
        parse_config(original.decode("utf-8"), path, installed)
    except UnicodeDecodeError:
        return EditRefused(Refusal.INVALID, f"{path}: not UTF-8 text; nothing written")
    except ConfigError as exc:
        return EditRefused(Refusal.INVALID, f"{path} is invalid; nothing written", exc.problems)
    return EditRefused(Refusal.INVALID, f"{path} cannot be edited safely; nothing written")


def replace_atomically(path: Path, content: bytes) -> None:
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
