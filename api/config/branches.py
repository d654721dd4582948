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


def provider_view(provider: type[Provider]) -> ProviderView:
    return ProviderView(provider.name, provider.display_name, tuple(provider.methods))
