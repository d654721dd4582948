"""The live provider set: plugins.toml as last loaded, and one provider per branch.

:class:`ProviderRegistry` keeps the last good configuration together with a
:class:`~api.plugins.contract.Provider` instance for every provider a branch
configures (enabled or not: a disabled provider still handles notifications,
refunds and queries of payments it started). Reloading builds a complete new
set first (keeping the instances whose settings did not change) and then swaps
it in with one assignment, so a reader sees either the
old set or the new one, never a mixture, and a request never fails because a
reload is under way. An invalid file is rejected: the last good set keeps
serving and the problems stay in :attr:`ProviderRegistry.status` until a valid
file loads.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pluggy
from watchfiles import Change, awatch

from api.config.model import BranchConfig, ConfigError, PluginsConfig, ProviderConfig
from api.config.secrets import redact, secret_values
from api.config.validate import load_config
from api.config.wording import table_path
from api.plugins.contract import Marks, Provider
from api.plugins.manager import PluginError, discover_new_plugins, installed_providers
from api.telemetry import metrics

logger = logging.getLogger("branchpay.config")

# An editor that saves through a temporary file leaves the name unbound for a
# moment; only a file that stays missing this long is reported.
MISSING_GRACE_SECONDS = 1.0
# A file still being written changes again within this time; it is read once it holds still.
SETTLE_SECONDS = 0.1
# How often the watcher looks at the file even without an event (events can be
# missed on network file systems and across some rename sequences).
TICK_MILLISECONDS = 500
RESTART_SECONDS = 1.0

Subscriber = Callable[[PluginsConfig], None]
# Content is part of it: timestamps are too coarse to tell two quick writes apart.
_FileSignature = tuple[int, int, bytes]  # inode, mtime in ns, SHA-256 of the content


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """What an admin needs to know about the configuration in force."""

    ok: bool  # the file as it is now on disk is in force
    loaded_at: datetime  # when the configuration in force was loaded (UTC); before: created
    path: Path
    error: str | None  # why the file on disk is not in force, if it is not
    generation: int  # counts successful loads; 0 before the first
    checked_at: datetime | None = None  # when the file was last read (UTC)


class ChangeKind(enum.StrEnum):
    BRANCH_ADDED = "BRANCH_ADDED"
    BRANCH_REMOVED = "BRANCH_REMOVED"
    PROVIDER_ADDED = "PROVIDER_ADDED"
    PROVIDER_REMOVED = "PROVIDER_REMOVED"
    PROVIDER_ENABLED = "PROVIDER_ENABLED"
    PROVIDER_DISABLED = "PROVIDER_DISABLED"
    SETTINGS_CHANGED = "SETTINGS_CHANGED"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One difference between two configurations; ``fields`` name settings, never values."""

    kind: ChangeKind
    branch: str
    provider: str | None = None
    fields: tuple[str, ...] = ()


def config_changes(before: PluginsConfig, after: PluginsConfig) -> list[ConfigChange]:
    """What ``after`` changes of ``before``, branch by branch and provider by provider."""
    changes: list[ConfigChange] = []
    for code in before.branches.keys() - after.branches.keys():
        changes.append(ConfigChange(ChangeKind.BRANCH_REMOVED, code))
    for code, branch in after.branches.items():
        old = before.branches.get(code)
        if old is None:
            changes.append(ConfigChange(ChangeKind.BRANCH_ADDED, code))
            continue
        for name in old.providers.keys() - branch.providers.keys():
            changes.append(ConfigChange(ChangeKind.PROVIDER_REMOVED, code, name))
        for name, provider in branch.providers.items():
            previous = old.providers.get(name)
            if previous is None:
                changes.append(ConfigChange(ChangeKind.PROVIDER_ADDED, code, name))
                continue
            if previous.enabled != provider.enabled:
                kind = (
                    ChangeKind.PROVIDER_ENABLED
                    if provider.enabled
                    else ChangeKind.PROVIDER_DISABLED
                )
                changes.append(ConfigChange(kind, code, name))
            was, now = previous.settings.model_dump(), provider.settings.model_dump()
            if fields := tuple(
                sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            ):
                changes.append(ConfigChange(ChangeKind.SETTINGS_CHANGED, code, name, fields))
    return changes


@dataclass(frozen=True, slots=True)
class _ProviderSet:
    config: PluginsConfig
    instances: dict[tuple[str, str], Provider]  # (branch, provider name)
    enabled: dict[str, list[type[Provider]]]  # branch -> classes in preference order


class ProviderRegistry:
    """plugins.toml with live reload, and the provider instances it configures."""

    def __init__(
        self,
        path: Path,
        pm: pluggy.PluginManager,
        http: httpx.AsyncClient,
        *,
        entry_point_group: str | None = None,
        marks: Callable[[str], Marks] | None = None,
    ) -> None:
        """``entry_point_group``: look there for newly installed plugins on each reload.

        ``marks``: provider name -> its durable marks, bound to every instance made
        (without it, instances keep the in-process default).
        """
        self._marks = marks
        # Told of every change a reload applies (the app records them in the audit log).
        self.on_applied: Callable[[list[ConfigChange]], Awaitable[None]] | None = None
        self._path = Path(path)
        self._pm = pm
        self._entry_point_group = entry_point_group
        self._http = http
        self._installed: dict[str, type[Provider]] | None = None
        self._current: _ProviderSet | None = None
        self._status = LoadedConfig(
            ok=False,
            loaded_at=datetime.now(UTC),
            path=self._path,
            error="not loaded yet",
            generation=0,
        )
        self._subscribers: list[Subscriber] = []
        self._seen: _FileSignature | None = None
        self._missing_since: float | None = None
        self._reloading = asyncio.Lock()
        self._watching = asyncio.Event()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def installed(self) -> dict[str, type[Provider]]:
        """Every installed provider class by name, configured or not."""
        if self._installed is None:
            self._installed = installed_providers(self._pm)
        return self._installed

    def load(self) -> LoadedConfig:
        """Load plugins.toml for the first time.

        Raises ConfigError for an invalid file (and PluginError for plugins that
        cannot be used, e.g. two claiming one provider name) so start-up stops.
        """
        signature = self._signature()
        try:
            provider_set = self._build()
        except ConfigError as exc:
            self._seen = signature
            self._reject(str(exc))
            raise
        self._seen = signature
        return self._swap(provider_set)

    async def reload(self) -> LoadedConfig:
        """Read plugins.toml again; an invalid file leaves the configuration in force alone."""
        async with self._reloading:
            signature = self._signature()
            self._seen = signature
            try:
                if self._entry_point_group and discover_new_plugins(
                    self._pm, self._entry_point_group
                ):
                    self._installed = None
                provider_set = self._build()
            except (ConfigError, PluginError) as exc:
                logger.error(
                    "%s rejected, configuration generation %d keeps serving: %s",
                    self._path,
                    self._status.generation,
                    exc,
                )
                return self._reject(str(exc))
            before = self._current.config if self._current is not None else None
            status = self._swap(provider_set)
            if before is not None and self.on_applied is not None:
                changes = config_changes(before, provider_set.config)
                try:
                    if changes:
                        await self.on_applied(changes)
                except Exception:
                    # The change is in force either way; its record is what failed.
                    logger.exception("%s: recording the applied changes failed", self._path)
            logger.info(
                "%s loaded: generation %d, branches %s",
                self._path,
                status.generation,
                ", ".join(provider_set.config.branches),
            )
            return status

    @property
    def config(self) -> PluginsConfig:
        return self._provider_set().config

    @property
    def status(self) -> LoadedConfig:
        return self._status

    def branch(self, code: str) -> BranchConfig | None:
        return self._provider_set().config.branches.get(code)

    def enabled(self, branch: str) -> list[type[Provider]]:
        """Provider classes new payments of ``branch`` may use, in the branch's order."""
        return list(self._provider_set().enabled.get(branch, ()))

    def provider(self, branch: str, name: str) -> Provider | None:
        """The branch's instance of a configured provider, enabled or not."""
        return self._provider_set().instances.get((branch, name))

    def provider_config(self, branch: str, name: str) -> ProviderConfig | None:
        """The branch's table for the provider (enabled or not), or None."""
        found = self.branch(branch)
        return found.providers.get(name) if found is not None else None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(config)`` after every successful load; returns an unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def wait_until_watching(self) -> None:
        """Return once :meth:`watch` is observing the file, so later edits are seen."""
        await self._watching.wait()

    async def watch(self) -> None:
        """Apply every change of plugins.toml within 2 s, until cancelled.

        Watches the file's directory rather than the file, so editors that save
        by writing a new file and renaming it over the old one are followed.
        """
        while True:
            try:
                async for _changes in awatch(
                    self._path.parent,
                    watch_filter=self._is_config_file,
                    debounce=300,
                    step=50,
                    rust_timeout=TICK_MILLISECONDS,
                    yield_on_timeout=True,
                    recursive=False,
                ):
                    self._watching.set()
                    await self._reload_if_changed()
            except Exception:
                # Live reload must outlive a vanished directory or a watcher fault.
                logger.exception("%s: watching failed; starting again", self._path)
                await asyncio.sleep(RESTART_SECONDS)

    def _is_config_file(self, _change: Change, changed: str) -> bool:
        return Path(changed).name == self._path.name

    async def _reload_if_changed(self) -> None:
        signature = self._signature()
        if signature == self._seen:
            self._missing_since = None
            return
        if signature is None:
            now = time.monotonic()
            if self._missing_since is None:
                self._missing_since = now
            elif now - self._missing_since >= MISSING_GRACE_SECONDS:
                self._seen = None
                self._missing_since = None
                await self.reload()
            return
        self._missing_since = None
        await asyncio.sleep(SETTLE_SECONDS)
        if self._signature() == signature:
            await self.reload()

    def _signature(self) -> _FileSignature | None:
        try:
            stat = os.stat(self._path)
            digest = hashlib.sha256(self._path.read_bytes()).digest()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, digest)

    def _provider_set(self) -> _ProviderSet:
        current = self._current
        if current is None:
            raise RuntimeError("ProviderRegistry.load() has not succeeded yet")
        return current

    def _build(self) -> _ProviderSet:
        config = load_config(self._path, self.installed)
        problems: list[str] = []
        instances: dict[tuple[str, str], Provider] = {}
        enabled: dict[str, list[type[Provider]]] = {}
        previous = self._current.instances if self._current else {}
        for code, branch in config.branches.items():
            enabled[code] = []
            for name, provider_config in branch.providers.items():
                cls = self.installed[name]
                kept = previous.get((code, name))
                # An instance whose settings did not change is kept, with whatever
                # it has cached (tokens, platform certificates).
                if type(kept) is cls and kept.settings == provider_config.settings:
                    instances[code, name] = kept
                    if provider_config.enabled:
                        enabled[code].append(cls)
                    continue
                try:
                    instance = cls(provider_config.settings, branch=code, http=self._http)
                    if self._marks is not None:
                        instance.marks = self._marks(name)
                    instances[code, name] = instance
                except Exception as exc:
                    reason = redact(str(exc), secret_values(provider_config.settings))
                    problems.append(
                        f"{self._path}: {table_path('branches', code, 'providers', name)}"
                        f" provider could not start with these settings:"
                        f" {type(exc).__name__}: {reason}"
                    )
                    continue
                if provider_config.enabled:
                    enabled[code].append(cls)
        if problems:
            raise ConfigError(problems)
        return _ProviderSet(config=config, instances=instances, enabled=enabled)

    def _swap(self, provider_set: _ProviderSet) -> LoadedConfig:
        now = datetime.now(UTC)
        self._current = provider_set
        metrics.known_labels(branches=provider_set.config.branches, providers=self.installed)
        metrics.recorder().config_reload("applied")
        self._status = LoadedConfig(
            ok=True,
            loaded_at=now,
            path=self._path,
            error=None,
            generation=self._status.generation + 1,
            checked_at=now,
        )
        for callback in list(self._subscribers):
            try:
                callback(provider_set.config)
            except Exception:
                logger.exception("a plugins.toml subscriber failed")
        return self._status

    def _reject(self, error: str) -> LoadedConfig:
        metrics.recorder().config_reload("refused")
        self._status = replace(self._status, ok=False, error=error, checked_at=datetime.now(UTC))
        return self._status
