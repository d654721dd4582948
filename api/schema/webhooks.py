"""Partner webhooks over GraphQL: endpoints, their deliveries, replays (docs/webhooks.md)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from api.domain.principal import Permission, Principal
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import DELIVERIES_CURSOR
from api.domain.webhooks import DeliveryStatus, WebhookEventType
from api.schema.context import Context
from api.schema.errors import ApiError, ErrorCode, bad_input
from api.schema.ids import object_id_cursor
from api.schema.mutation import user_errors
from api.schema.types import UserError
from api.services.webhooks import UNSET, WebhookService

Document = dict[str, Any]

EVENT_TYPES = ", ".join(f"`{kind.value}`" for kind in WebhookEventType)


@strawberry.enum(description="Where a delivery stands.")
class WebhookDeliveryStatus(enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@strawberry.type(description="One try of a delivery.")
class WebhookAttempt:
    at: datetime
    http_status: int | None = strawberry.field(description="None: no answer (see `error`).")
    latency_ms: float
    response: str = strawberry.field(description="The first 1 KiB of the receiver's answer.")
    error: str | None = strawberry.field(
        description="Why no answer was read: timeout, connect_error, target_forbidden, ..."
    )


@strawberry.type(description="One event for one endpoint, with every try.")
class WebhookDelivery:
    id: strawberry.ID
    event_id: str = strawberry.field(description="The `webhook-id` header; the same on every try.")
    event_type: str
    status: WebhookDeliveryStatus
    tries: int
    created_at: datetime
    next_attempt_at: datetime | None = strawberry.field(
        description="When the next try is due, for a PENDING delivery."
    )
    attempts: list[WebhookAttempt] = strawberry.field(description="Oldest first; the last 30.")

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> WebhookDelivery:
        pending = doc["status"] == DeliveryStatus.PENDING.value
        return cls(
            id=strawberry.ID(doc["_id"]),
            event_id=doc["eventId"],
            event_type=doc["type"],
            status=WebhookDeliveryStatus(doc["status"]),
            tries=int(doc.get("tries", 0)),
            created_at=doc["createdAt"],
            next_attempt_at=doc.get("nextAttemptAt") if pending else None,
            attempts=[
                WebhookAttempt(
                    at=a["at"],
                    http_status=a.get("status"),
                    latency_ms=float(a.get("latencyMs", 0.0)),
                    response=a.get("response", ""),
                    error=a.get("error"),
                )
                for a in doc.get("attempts", [])
            ],
        )


@strawberry.type
class WebhookDeliveryPage:
    nodes: list[WebhookDelivery]
    has_next_page: bool
    end_cursor: str | None = strawberry.field(description="Pass as `after` for the next page.")


def _webhooks(info: Info[Context, None]) -> tuple[WebhookService, Principal]:
    principal = info.context.require(Permission.WEBHOOKS)
    service = info.context.services.webhooks
    if service is None:
        raise ApiError(ErrorCode.INTERNAL, "webhooks are not running in this process")
    return service, principal


@strawberry.type(description="Where branchpay sends a partner's events, signed (docs/webhooks.md).")
class WebhookEndpoint:
    id: strawberry.ID
    url: str
    events: list[str] = strawberry.field(description=f"Event types it takes: {EVENT_TYPES}.")
    branches: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None = strawberry.field(
        description="Why it is disabled: by whom, or three days of failed tries."
    )
    paused_reason: str | None = strawberry.field(
        description="Why its deliveries wait (its owner key was revoked): another key of the "
        "owner's role takes it over by enabling it; nothing is lost meanwhile."
    )
    owner_key: str = strawberry.field(
        description="The key whose view of the data the deliveries show."
    )
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None = strawberry.field(
        description="Since when every try failed; disabled after three days of it."
    )

    @strawberry.field(description="Its deliveries, newest first.")
    async def deliveries(
        self,
        info: Info[Context, None],
        first: int = 20,
        after: str | None = None,
        status: WebhookDeliveryStatus | None = None,
    ) -> WebhookDeliveryPage:
        service, principal = _webhooks(info)
        limit = info.context.services.settings.max_page_size
        if not 0 <= first <= limit:
            raise bad_input(f"first must be between 0 and {limit}")
        before = object_id_cursor(after, DELIVERIES_CURSOR, "deliveries")
        docs = await service.deliveries(
            principal,
            str(self.id),
            status=DeliveryStatus(status.value) if status else None,
            first=first + 1,
            before=before,
        )
        docs = docs or []
        nodes = [WebhookDelivery.from_doc(d) for d in docs[:first]]
        return WebhookDeliveryPage(
            nodes=nodes,
            has_next_page=len(docs) > first,
            end_cursor=str(docs[:first][-1]["seq"]) if nodes else after,
        )

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> WebhookEndpoint:
        return cls(
            id=strawberry.ID(doc["_id"]),
            url=doc["url"],
            events=list(doc["events"]),
            branches=list(doc["branches"]),
            description=doc.get("description", ""),
            enabled=bool(doc.get("enabled")),
            disabled_reason=doc.get("disabledReason"),
            paused_reason=doc.get("pausedReason"),
            owner_key=doc["ownerKey"],
            created_at=doc["createdAt"],
            updated_at=doc["updatedAt"],
            failing_since=doc.get("failingSince"),
        )


@strawberry.input
class CreateWebhookEndpointInput:
    url: str = strawberry.field(
        description="https, of a host with a public address (http only to loopback, when allowed)."
    )
    events: list[str] = strawberry.field(description=f"At least one of {EVENT_TYPES}.")
    branches: list[str] = strawberry.field(description="Branches the key sees; at least one.")
    description: str | None = None


@strawberry.input
class UpdateWebhookEndpointInput:
    id: strawberry.ID
    url: str | None = None
    events: list[str] | None = None
    branches: list[str] | None = None
    enabled: bool | None = strawberry.field(
        default=None,
        description="true enables it again; for an endpoint paused by a revoked owner key, "
        "the calling key (of the owner's role) becomes its owner.",
    )
    description: str | None = None


@strawberry.input
class WebhookEndpointIdInput:
    id: strawberry.ID


@strawberry.input
class ReplayWebhookEventInput:
    event_id: str


@strawberry.input
class RetryWebhookDeliveriesInput:
    endpoint_id: strawberry.ID
    since: datetime = strawberry.field(description="FAILED deliveries created since then.")


@strawberry.type
class WebhookEndpointPayload:
    endpoint: WebhookEndpoint | None
    secret: str | None = strawberry.field(
        description="The signing secret (whsec_...): returned by create and rotate, never again."
    )
    user_errors: list[UserError]


@strawberry.type
class DeleteWebhookEndpointPayload:
    deleted_id: strawberry.ID | None
    user_errors: list[UserError]


@strawberry.type
class ResendWebhookPayload:
    deliveries: int = strawberry.field(description="How many deliveries were made due again.")
    user_errors: list[UserError]


def _endpoint_payload(result: Any) -> WebhookEndpointPayload:
    return WebhookEndpointPayload(
        endpoint=WebhookEndpoint.from_doc(result.endpoint) if result.endpoint else None,
        secret=result.secret,
        user_errors=user_errors(result.problems),
    )


def _given(value: Any) -> Any:
    return UNSET if value is None else value


@strawberry.type
class WebhookQuery:
    @strawberry.field(description="The webhook endpoints the key manages, oldest first.")
    async def webhook_endpoints(
        self, info: Info[Context, None], branches: list[str] | None = None
    ) -> list[WebhookEndpoint]:
        service, principal = _webhooks(info)
        return [WebhookEndpoint.from_doc(d) for d in await service.endpoints(principal, branches)]

    @strawberry.field(description="One webhook endpoint the key manages.")
    async def webhook_endpoint(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> WebhookEndpoint | None:
        service, principal = _webhooks(info)
        doc = await service.endpoint(principal, str(id)[:100])
        return WebhookEndpoint.from_doc(doc) if doc else None


@strawberry.type
class WebhookMutation:
    @strawberry.mutation(description="Register an endpoint; the payload's secret is shown once.")
    async def create_webhook_endpoint(
        self, info: Info[Context, None], input: CreateWebhookEndpointInput
    ) -> WebhookEndpointPayload:
        service, principal = _webhooks(info)
        result = await service.create(
            principal,
            url=input.url,
            events=input.events,
            branches=input.branches,
            description=input.description,
        )
        return _endpoint_payload(result)

    @strawberry.mutation(description="Change an endpoint; fields left out stay as they are.")
    async def update_webhook_endpoint(
        self, info: Info[Context, None], input: UpdateWebhookEndpointInput
    ) -> WebhookEndpointPayload:
        service, principal = _webhooks(info)
        result = await service.update(
            principal,
            str(input.id)[:100],
            url=_given(input.url),
            events=_given(input.events),
            branches=_given(input.branches),
            enabled=_given(input.enabled),
            description=_given(input.description),
        )
        return _endpoint_payload(result)

    @strawberry.mutation(
        description="A new signing secret; the old one keeps signing beside it for 24 hours."
    )
    async def rotate_webhook_secret(
        self, info: Info[Context, None], input: WebhookEndpointIdInput
    ) -> WebhookEndpointPayload:
        service, principal = _webhooks(info)
        return _endpoint_payload(await service.rotate(principal, str(input.id)[:100]))

    @strawberry.mutation(description="Stop sending to an endpoint and remove it.")
    async def delete_webhook_endpoint(
        self, info: Info[Context, None], input: WebhookEndpointIdInput
    ) -> DeleteWebhookEndpointPayload:
        service, principal = _webhooks(info)
        result = await service.delete(principal, str(input.id)[:100])
        return DeleteWebhookEndpointPayload(
            deleted_id=None if result.problems else input.id,
            user_errors=user_errors(result.problems),
        )

    @strawberry.mutation(description="Send an event again (same id) to the key's endpoints.")
    async def replay_webhook_event(
        self, info: Info[Context, None], input: ReplayWebhookEventInput
    ) -> ResendWebhookPayload:
        service, principal = _webhooks(info)
        count, problems = await service.replay(principal, input.event_id[:100])
        return ResendWebhookPayload(deliveries=count, user_errors=user_errors(problems))

    @strawberry.mutation(description="Send the endpoint's FAILED deliveries since a time again.")
    async def retry_webhook_deliveries(
        self, info: Info[Context, None], input: RetryWebhookDeliveriesInput
    ) -> ResendWebhookPayload:
        service, principal = _webhooks(info)
        if input.since.tzinfo is None:
            problems = [
                Problem(
                    ("since",),
                    "since needs a time zone, e.g. 2026-11-25T08:00:00Z",
                    UserErrorCode.INVALID_TIME,
                )
            ]
            return ResendWebhookPayload(deliveries=0, user_errors=user_errors(problems))
        count, problems = await service.retry_deliveries(
            principal, str(input.endpoint_id)[:100], input.since
        )
        return ResendWebhookPayload(deliveries=count, user_errors=user_errors(problems))
