"""Platform notifications: verify with the branch's provider, apply once, decide the answer.

The HTTP route only turns the request into a ``NotificationRequest`` and the
``NotificationReply`` back into HTTP. What the platform is told is decided
here: accepted (applied, or a repeat of one applied), rejected (forged,
tampered, or refused by the payment rules: it must not be retried as is),
or not applied (our failure or a store outage: the platform must deliver it
again, and gets that answer within the request's store deadline).
"""

from __future__ import annotations

import logging

from api.config.live import ProviderRegistry
from api.plugins.contract import NotificationRejected, NotificationReply, NotificationRequest
from api.services.payments import PaymentService
from api.store.outage import is_store_outage, report_store_outage
from api.telemetry import context, metrics, spans

log = logging.getLogger("branchpay.notifications")

NOT_FOUND = NotificationReply(status_code=404, body=b"not found", media_type="text/plain")


class Notifications:
    def __init__(self, registry: ProviderRegistry, payments: PaymentService) -> None:
        self.registry = registry
        self.payments = payments

    async def receive(
        self, provider_name: str, branch: str, incoming: NotificationRequest
    ) -> NotificationReply:
        """The answer for the platform; 404 when the branch does not enable that provider.

        Traced as a ``notification`` span whose ``branchpay.notification_result`` says
        what it came to (docs/operations.md, Traces).
        """
        with spans.span("notification", provider=provider_name, branch=branch):
            return await self._receive(provider_name, branch, incoming)

    async def _receive(
        self, provider_name: str, branch: str, incoming: NotificationRequest
    ) -> NotificationReply:
        provider = self.registry.provider(branch, provider_name)
        if provider is None:
            spans.note(notification_result="unknown_route")
            return NOT_FOUND
        context.bind(provider=provider_name, branch=branch)
        where = f"{provider_name}/{branch}"
        record = metrics.recorder()
        try:
            event = await provider.parse_notification(incoming)
        except NotificationRejected as rejected:
            log.warning("notification for %s rejected: %s", where, rejected)
            record.notification(provider_name, "rejected_signature")
            spans.note(notification_result="rejected_signature")
            return provider.notification_reply(accepted=False)
        except Exception:
            # A provider bug: nothing was applied, so the platform must deliver it again.
            log.exception("notification for %s could not be parsed", where)
            record.notification(provider_name, "rejected_other")
            spans.note(notification_result="unparsed")
            return provider.notification_reply(accepted=False)
        if event is None:
            record.notification(provider_name, "applied")
            spans.note(notification_result="ignored")
            return provider.notification_reply(accepted=True)
        spans.note(event_id=event.event_id, event_kind=event.kind.value)
        try:
            result = await self.payments.apply_event(provider_name, branch, event)
        except Exception as error:
            # Not stored or not applied: the platform must deliver it again.
            if is_store_outage(error):
                report_store_outage(error, f"notification {event.event_id} for {where}")
            else:
                log.exception("notification %s for %s not applied", event.event_id, where)
            record.notification(provider_name, "rejected_other")
            spans.note(notification_result="not_applied")
            return provider.notification_reply(accepted=False)
        if not result.accepted:
            log.warning("notification %s for %s refused: %s", event.event_id, where, result.note)
            outcome = "rejected_other"
        else:
            outcome = "duplicate" if result.duplicate else "applied"
        record.notification(provider_name, outcome)
        spans.note(notification_result=outcome)
        return provider.notification_reply(accepted=result.accepted)
