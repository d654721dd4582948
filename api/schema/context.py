"""What every resolver can reach: the services, the branch directory and per-request loaders."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from api.config.branches import BranchView
from api.config.live import LoadedConfig
from api.domain.pii import PiiVault
from api.domain.principal import Permission, Principal
from api.schema.errors import ApiError, ErrorCode
from api.services.bills import BillReconciliation
from api.services.budget import SharedBudget
from api.services.config_edits import ConfigEdits
from api.services.orders import OrderService
from api.services.payments import PaymentService
from api.services.webhooks import WebhookService
from api.settings import Settings
from api.store import Store
from api.store.changes import ChangeHub

Document = dict[str, Any]


@dataclass
class Services:
    """Built once per process by the app; shared by all requests."""

    settings: Settings
    store: Store
    orders: OrderService
    branches: Callable[[], Mapping[str, BranchView]]
    # plugins.toml in force: last reload, a refused edit (configStatus).
    config_status: Callable[[], LoadedConfig]
    vault: PiiVault
    # The process's change streams, shared by every subscription (api/store/changes.py).
    changes: ChangeHub
    payments: PaymentService | None = None
    # The API keys' query-cost budgets (api/services/budget.py), spent by RequestLimits.
    budget: SharedBudget | None = None
    webhooks: WebhookService | None = None
    bills: BillReconciliation | None = None
    # Provider switches through the API (setProviderEnabled, providerSettings).
    config_edits: ConfigEdits | None = None


def _payments_loader(store: Store) -> DataLoader[ObjectId, list[Document]]:
    async def load(order_ids: list[ObjectId]) -> list[list[Document]]:
        found = await store.payments.of_orders(order_ids)
        return [found[order_id] for order_id in order_ids]

    return DataLoader(load_fn=load)


@dataclass
class Context:
    request: Request | WebSocket
    services: Services
    principal: Principal | None = None  # the caller's API key; set by the gate or on WS connect
    connection_params: dict[str, Any] | None = None  # graphql-transport-ws connection_init payload
    token: str | None = None  # a WebSocket's API key, checked again for every operation
    payments_by_order: DataLoader[ObjectId, list[Document]] = field(init=False)
    # Objects built once per request and shared by its resolvers (e.g. a Branch per code).
    memo: dict[Any, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.payments_by_order = _payments_loader(self.services.store)

    @property
    def store(self) -> Store:
        return self.services.store

    def branch(self, code: str) -> BranchView | None:
        """The branch, if it exists and the caller's key may see it."""
        if self.principal is None or not self.principal.sees_branch(code):
            return None
        return self.services.branches().get(code)

    def sees(self, branch: str) -> bool:
        return self.principal is not None and self.principal.sees_branch(branch)

    def require(self, permission: Permission) -> Principal:
        """The caller, if its role has ``permission``; FORBIDDEN otherwise."""
        if self.principal is None:
            raise ApiError(ErrorCode.UNAUTHENTICATED, "send a valid API key")
        if not self.principal.may(permission):
            raise ApiError(
                ErrorCode.FORBIDDEN, f"a {self.principal.role.value} key may not do this"
            )
        return self.principal
