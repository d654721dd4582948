"""The plain JSON ceiling that `make bench` measures GraphQL against, and the bench app factory.

The bench's API process (``app_factory``) mounts, behind the service's own
API-key gate, two read endpoints that run
the same store queries as the ``orders`` and ``order`` resolvers and answer
with the same JSON document GraphQL gives for the bench's selection
(``bench/scenarios.py``), built by hand with no schema in between:

    GET /bench/orders?branch=zj&status=PAID&first=50
    GET /bench/order/{global id}

The difference between the two is then the cost of GraphQL itself (parsing,
validation, execution, type construction), which is what the targets bound.
Both sit behind the same API-key gate and answer what the key may see: the
branches of its scope, personal data masked unless its role reveals it.
The product never mounts them: they bypass every schema extension.

``BENCH_UNLIMITED_KEYS`` names keys whose query-cost budget has no limit: the
hostile scenario runs the API with the real default budget, which its
attacker's key faces, while the bench's own key drives ordinary traffic far
beyond one partner's budget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.config.branches import BranchView
from api.domain.order import OrderStatus
from api.domain.pii import PiiVault, reveal_customer
from api.domain.principal import Principal
from api.schema.context import Services
from api.schema.errors import ApiError
from api.schema.ids import encode_cursor, object_id_of, to_global_id
from api.services.budget import SharedBudget, Spend
from api.settings import Settings
from api.store.orders import ORDER_FIELDS, OrderQuery, Position
from api.telemetry.logs import configure_logging

Document = dict[str, Any]
UNLIMITED_KEYS = "BENCH_UNLIMITED_KEYS"


def _money(amount_fen: int, currency: str) -> Document:
    return {"amountFen": amount_fen, "currency": currency}


def _payment(doc: Document) -> Document:
    return {
        "id": to_global_id("Payment", str(doc["_id"])),
        "provider": doc["provider"],
        "status": doc["status"],
        "amount": {"amountFen": doc["amountFen"]},
        "outTradeNo": doc["outTradeNo"],
    }


def _order(
    doc: Document,
    payments: list[Document],
    branches: Mapping[str, BranchView],
    principal: Principal,
    vault: PiiVault,
) -> Document:
    currency = doc.get("currency", "CNY")
    view = branches.get(doc["branch"])
    stored = doc["customer"]
    phone, _id_card = reveal_customer(vault, stored, reveal=principal.sees_pii_of(doc["branch"]))
    return {
        "id": to_global_id("Order", str(doc["_id"])),
        "status": doc["status"],
        "createdAt": doc["createdAt"].isoformat(),
        "updatedAt": doc["updatedAt"].isoformat(),
        "expiresAt": doc["expiresAt"].isoformat(),
        "branch": {"code": doc["branch"], "name": view.name if view else doc["branch"]},
        "total": _money(doc["totalFen"], currency),
        "customer": {"name": stored["name"], "phone": phone},
        "items": [
            {
                "offeringId": to_global_id("Offering", item["offeringId"]),
                "kind": item["kind"],
                "title": item["title"],
                "quantity": item["quantity"],
                "unitPrice": {"amountFen": item["unitPriceFen"]},
                "subtotal": {"amountFen": item["subtotalFen"]},
            }
            for item in doc["items"]
        ],
        "payments": [_payment(payment) for payment in payments],
    }


def _bad_request(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


def bench_routes(services: Callable[[], Services]) -> list[Route]:
    """The plain endpoints, reading through the app's own store and branch directory."""

    async def orders(request: Request) -> Response:
        current = services()
        principal: Principal = request.state.principal  # set by ApiKeyGate
        params = request.query_params
        try:
            limit = int(params.get("first", "50"))
            statuses = [OrderStatus(s) for s in params.getlist("status")] or None
        except ValueError as error:
            return _bad_request(str(error))
        if not 0 < limit <= current.settings.max_page_size:
            return _bad_request(f"first must be between 1 and {current.settings.max_page_size}")
        # The resolver's scoping: the requested branches the key may see.
        branches = principal.scope(params.getlist("branch") or None)
        query = OrderQuery(branches=branches, statuses=statuses)
        docs = await current.store.orders.page(query, None, limit + 1, ORDER_FIELDS)
        page = docs[:limit]
        payments = await current.store.payments.of_orders([doc["_id"] for doc in page])
        directory = current.branches()
        edges = [
            {
                "cursor": encode_cursor(Position(doc["createdAt"], doc["_id"])),
                "node": _order(doc, payments[doc["_id"]], directory, principal, current.vault),
            }
            for doc in page
        ]
        return JSONResponse(
            {
                "data": {
                    "orders": {
                        "edges": edges,
                        "pageInfo": {
                            "hasNextPage": len(docs) > limit,
                            "endCursor": edges[-1]["cursor"] if edges else None,
                        },
                    }
                }
            }
        )

    async def order(request: Request) -> Response:
        current = services()
        principal: Principal = request.state.principal  # set by ApiKeyGate
        try:
            order_id = object_id_of(request.path_params["id"], "Order")
        except ApiError as error:
            return _bad_request(error.message)
        doc = await current.store.orders.get(order_id, ORDER_FIELDS)
        if doc is None or not principal.sees_branch(doc["branch"]):
            return JSONResponse({"data": {"order": None}})
        payments = await current.store.payments.of_orders([order_id])
        node = _order(doc, payments[order_id], current.branches(), principal, current.vault)
        return JSONResponse({"data": {"order": node}})

    return [
        Route("/bench/orders", orders, methods=["GET"]),
        Route("/bench/order/{id}", order, methods=["GET"]),
    ]


class BenchBudget(SharedBudget):
    """The keys' budget of a bench API: the service's own, except for the keys it names."""

    def __init__(
        self,
        settings: Settings,
        unlimited: Collection[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
            name="per-key",
            timeout=settings.rate_limit_store_timeout_seconds,
            fallback_seconds=settings.rate_limit_fallback_seconds,
            clock=clock,
        )
        self.unlimited = frozenset(f"key:{name}" for name in unlimited)

    async def take(self, key: str, amount: int = 1) -> Spend:
        if key in self.unlimited:
            return Spend(0, self.burst, 0.0)
        return await super().take(key, amount)


def bench_app(settings: Settings, unlimited: Collection[str] = (), **options: Any) -> Starlette:
    """The service's app with the plain endpoints behind its gate, and the keys ``unlimited``."""
    from api.web.app import create_app

    budget = BenchBudget(settings, unlimited)
    return create_app(settings, gated_routes=bench_routes, budget=budget, **options)


def app_factory() -> Starlette:
    """The app for ``uvicorn bench.plain:app_factory --factory``, configured from the environment.

    uvicorn's ``--workers`` needs an import string, not an app object; this is
    it. ``BENCH_UNLIMITED_KEYS`` (comma-separated) names the keys let past the
    budget.
    """
    names = [name for name in os.environ.get(UNLIMITED_KEYS, "").split(",") if name]
    settings = Settings()
    # As `branchpay serve` logs: a line a request at INFO, none at BRANCHPAY_LOG_LEVEL=WARNING.
    configure_logging(settings)
    return bench_app(settings, names)
