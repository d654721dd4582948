"""What every resolver can reach: the services, the branch directory and per-request loaders."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from api.branches import BranchView
from api.orders import OrderService
from api.payments.service import PaymentService
from api.settings import Settings
from api.store import Store

Document = dict[str, Any]


@dataclass
class Services:
    """Built once per process by the app; shared by all requests."""

    settings: Settings
    store: Store
    orders: OrderService
    branches: Callable[[], Mapping[str, BranchView]]
    payments: PaymentService | None = None


def _payments_loader(store: Store) -> DataLoader[ObjectId, list[Document]]:
    async def load(order_ids: list[ObjectId]) -> list[list[Document]]:
        found: dict[ObjectId, list[Document]] = {order_id: [] for order_id in order_ids}
        cursor = (
            store.collection("payments").find({"orderId": {"$in": order_ids}}).sort("createdAt", 1)
        )
        for payment in await cursor.to_list():
            found[payment["orderId"]].append(payment)
        return [found[order_id] for order_id in order_ids]

    return DataLoader(load_fn=load)


@dataclass
class Context:
    request: Request | WebSocket
    services: Services
    payments_by_order: DataLoader[ObjectId, list[Document]] = field(init=False)

    def __post_init__(self) -> None:
        self.payments_by_order = _payments_loader(self.services.store)

    @property
    def store(self) -> Store:
        return self.services.store

    def branch(self, code: str) -> BranchView | None:
        return self.services.branches().get(code)
