"""The providers a branch configures, and switching one on or off (``setProviderEnabled``)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from api.config.edit import command
from api.domain.principal import Permission
from api.domain.problems import ServiceError, UserErrorCode
from api.schema.context import Context
from api.schema.mutation import user_errors
from api.schema.types import UserError


@strawberry.type(description="A provider table of a branch in plugins.toml, enabled or not.")
class ProviderSetting:
    branch: str
    provider: str
    enabled: bool
    account: str | None = strawberry.field(
        default=None,
        description="The service-provider account ([accounts.<name>]) it pays through; null"
        " when the branch has its own keys.",
    )


@strawberry.input
class SetProviderEnabledInput:
    branch: str
    provider: str = strawberry.field(description="An installed provider the branch configures.")
    enabled: bool


@strawberry.type
class SetProviderEnabledPayload:
    setting: ProviderSetting | None
    changed: bool = strawberry.field(
        description="False when the provider was already so (the file is left unchanged)."
    )
    command: str = strawberry.field(
        description="The `branchpay providers enable|disable` command making the same edit."
    )
    warning: str | None = strawberry.field(
        description="Set when the branch has no enabled provider left."
    )
    user_errors: list[UserError]


@strawberry.type
class ConfigEditQuery:
    @strawberry.field(
        description="Every provider the branch configures, enabled or not, in its order of"
        " preference, as in force now (ops, branch_admin)."
    )
    def provider_settings(self, info: Info[Context, None], branch: str) -> list[ProviderSetting]:
        info.context.require(Permission.ADMIN)
        edits = info.context.services.config_edits
        if edits is None or not info.context.sees(branch):
            return []
        return [
            ProviderSetting(branch=branch, provider=s.name, enabled=s.enabled, account=s.account)
            for s in edits.switches(branch)
        ]


@strawberry.type
class ConfigEditMutation:
    @strawberry.mutation(
        description="Enable or disable a provider of a branch: edits plugins.toml as `branchpay"
        " providers enable|disable` does (comments kept, validated, atomic), audited; a running"
        " service applies it within 2 s. Only when the service runs with"
        " BRANCHPAY_CONFIG_EDITING (ops, branch_admin of the branch)."
    )
    async def set_provider_enabled(
        self, info: Info[Context, None], input: SetProviderEnabledInput
    ) -> SetProviderEnabledPayload:
        principal = info.context.require(Permission.ADMIN)
        edits = info.context.services.config_edits
        line = command(input.branch, input.provider, input.enabled)
        try:
            if edits is None:
                raise ServiceError(UserErrorCode.CONFIG_EDITING_OFF, f"run `{line}` instead")
            edit = await edits.set_enabled(principal, input.branch, input.provider, input.enabled)
        except ServiceError as refused:
            return SetProviderEnabledPayload(
                setting=None,
                changed=False,
                command=line,
                warning=None,
                user_errors=user_errors([refused.problem]),
            )
        warning = (
            f"branch {edit.branch} now has no enabled provider;"
            " it cannot take new payments until one is enabled"
            if edit.no_enabled_provider
            else None
        )
        return SetProviderEnabledPayload(
            setting=ProviderSetting(
                branch=edit.branch, provider=edit.provider, enabled=edit.enabled
            ),
            changed=edit.changed,
            command=line,
            warning=warning,
            user_errors=[],
        )
