"""A webhook event's ``data``: the order as the endpoint owner's key sees it over GraphQL.

The webhook service (api/services/webhooks.py) asks for it through a callable
it is given, so the body of a delivery is exactly what the owner's key would
read with ``order(id)``: the same fields, the same masking of personal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import strawberry
from bson import ObjectId
from starlette.requests import Request

from api.domain.principal import Principal
from api.schema.context import Context, Services
from api.schema.ids import to_global_id

Document = dict[str, Any]

MONEY = "{ amountFen currency }"
ORDER_QUERY = f"""
query WebhookOrder($id: ID!) {{
  order(id: $id) {{
    id status total {MONEY} createdAt updatedAt expiresAt
    branch {{ code name }}
    customer {{ name phone idCardNumber }}
    items {{
      offeringId kind title quantity unitPrice {MONEY} subtotal {MONEY}
      options {{ name value priceDelta {MONEY} }}
    }}
    payments {{
      id provider method status amount {MONEY} outTradeNo providerTradeNo
      createdAt updatedAt flagged
      refunds {{ id amount {MONEY} status outRefundNo createdAt }}
    }}
  }}
}}
"""

# What a resolver may read of the request: nothing but its presence.
_SCOPE = {"type": "http", "method": "POST", "path": "/graphql", "headers": [], "query_string": b""}


class EventView:
    """Renders events through the schema, as the given principal."""

    def __init__(self, schema: strawberry.Schema, services: Services) -> None:
        self.schema = schema
        # The owner's query budget is not spent on what branchpay sends it.
        self.services = replace(services, budget=None)

    async def __call__(self, principal: Principal, event: Mapping[str, Any]) -> Document | None:
        context = Context(
            request=Request(dict(_SCOPE)), services=self.services, principal=principal
        )
        result = await self.schema.execute(
            ORDER_QUERY,
            variable_values={"id": to_global_id("Order", str(event["orderId"]))},
            context_value=context,
        )
        if result.errors or not result.data or result.data.get("order") is None:
            return None
        order: Document = result.data["order"]
        data: Document = {"order": order}
        payment_id = event.get("paymentId")
        if isinstance(payment_id, ObjectId):
            wanted = to_global_id("Payment", str(payment_id))
            payment = next((p for p in order["payments"] if p["id"] == wanted), None)
            data["payment"] = payment
            if event.get("refund") and payment is not None:
                data["refund"] = next(
                    (r for r in payment["refunds"] if r["outRefundNo"] == event["refund"]), None
                )
        return data
