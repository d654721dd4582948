"""Provider switches through the API: who may flip one, and the audit record of each flip.

The edit itself is api/config/edit.py's, the same as ``branchpay providers
enable|disable``; the running watcher (api/config/live.py) then applies it, as
after the CLI. A service may edit only when started with ``config_editing``
(``BRANCHPAY_CONFIG_EDITING``; on under ``serve --demo``); otherwise the refusal
names the command an admin runs instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from api.config.edit import EditRefused, ProviderEdit, Refusal, command, set_provider_enabled
from api.config.live import ProviderRegistry
from api.domain.principal import Permission, Principal
from api.domain.problems import ServiceError, UserErrorCode
from api.store.audit import AuditAction, AuditLog

REFUSALS = {
    Refusal.UNKNOWN_BRANCH: (UserErrorCode.UNKNOWN_BRANCH, ("branch",)),
    Refusal.UNKNOWN_PROVIDER: (UserErrorCode.UNKNOWN_PROVIDER, ("provider",)),
    Refusal.NOT_CONFIGURED: (UserErrorCode.PROVIDER_NOT_CONFIGURED, ("provider",)),
    Refusal.INVALID: (UserErrorCode.CONFIG_INVALID, ()),
    Refusal.UNREADABLE: (UserErrorCode.CONFIG_EDIT_FAILED, ()),
    Refusal.CHANGED: (UserErrorCode.CONFIG_EDIT_FAILED, ()),
}


@dataclass(frozen=True)
class ProviderSwitch:
    name: str
    enabled: bool
    account: str | None = None  # the service-provider account it pays through


class ConfigEdits:
    def __init__(self, registry: ProviderRegistry, audit: AuditLog, *, allowed: bool) -> None:
        self.registry = registry
        self.audit = audit
        self.allowed = allowed

    def switches(self, branch: str) -> list[ProviderSwitch]:
        """Every provider the branch configures, enabled or not, in its order (as in force)."""
        found = self.registry.config.branches.get(branch)
        if found is None:
            return []
        return [ProviderSwitch(name, p.enabled, p.account) for name, p in found.providers.items()]

    async def set_enabled(
        self, principal: Principal, branch: str, provider: str, enabled: bool
    ) -> ProviderEdit:
        """Edit plugins.toml for ``principal`` (branch_admin of ``branch``, or ops); audited."""
        if not principal.may_on(Permission.ADMIN, branch):
            # A branch outside the key's scope looks like one that does not exist.
            raise ServiceError(UserErrorCode.UNKNOWN_BRANCH, "no such branch", ("branch",))
        if not self.allowed:
            raise ServiceError(
                UserErrorCode.CONFIG_EDITING_OFF,
                "this service does not edit plugins.toml (BRANCHPAY_CONFIG_EDITING is off);"
                f" run `{command(branch, provider, enabled)}` on its host instead",
            )
        path = self.registry.path
        try:
            # File reads, validation (secret files included) and fsync: off the event loop.
            edit = await asyncio.to_thread(
                set_provider_enabled, path, branch, provider, enabled, self.registry.installed
            )
        except EditRefused as refused:
            code, field = REFUSALS[refused.refusal]
            message = "; ".join([refused.message, *refused.problems])
            raise ServiceError(code, message, field) from None
        if edit.changed:
            await self.audit.record(
                principal.name,
                AuditAction.PROVIDER_ENABLED if enabled else AuditAction.PROVIDER_DISABLED,
                provider,
                {"file": str(path), "via": "setProviderEnabled"},
                branch=branch,
            )
        return edit
