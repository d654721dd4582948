"""The branches as partners see them: plugins.toml's branch tables and their effective providers."""

from __future__ import annotations

from dataclasses import dataclass

from api.plugins.contract import PaymentMethod, Provider


@dataclass(frozen=True, slots=True)
class ProviderView:
    name: str
    display_name: str
    methods: tuple[PaymentMethod, ...]


@dataclass(frozen=True, slots=True)
class BranchView:
    code: str
    name: str
    province: str
    operator: str
    providers: tuple[ProviderView, ...]


def provider_view(
    provider: type[Provider], offered: tuple[PaymentMethod, ...] | None = None
) -> ProviderView:
    """The provider as partners see it: the methods the branch offers with it (its table's
    ``methods``, in the provider's order; all of the provider's when the table names none)."""
    methods = tuple(m for m in provider.methods if offered is None or m in offered)
    return ProviderView(provider.name, provider.display_name, methods)
