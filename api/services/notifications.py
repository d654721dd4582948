"""Platform notifications: verify with the branch's provider, apply once, decide the answer.

The HTTP route only turns the request into a ``NotificationRequest`` and the
``NotificationReply`` back into HTTP. What the platform is told is decided
here: accepted (applied, or a repeat of one applied), rejected (forged,
tampered, or refused by the payment rules: it must not be retried as is),
or not applied (our failure or a store outage: the platform must deliver it
again, and gets that answer within the request's store deadline).

A notification whose signature verifies but that is not about this branch's
merchant or attempt (another merchant or sub-merchant id under the same
service-provider key, another out-trade-number, an amount that is not the
attempt's) is a *mismatch*: it is answered as accepted, so the platform stops
re-sending it, kept once in ``notification_mismatches`` (without its body),
counted as ``rejected_mismatch`` and logged; it changes nothing.

The route names the branch and, for a branch paying through a
service-provider account, the account (``/notify/{provider}/{branch}/{account}``),
so the branch's own keys verify it; a route whose account is not the one the
branch is configured with is unknown (404).
"""

from __future__ import annotations

import hashlib
import logging

from api.config.live import ProviderRegistry
from api.plugins.contract import (
    NotificationMismatch,
    NotificationRejected,
    NotificationReply,
    NotificationRequest,
    Provider,
    ProviderEvent,
)
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
        self,
        provider_name: str,
        branch: str,
        incoming: NotificationRequest,
        account: str | None = None,
    ) -> NotificationReply:
        """The answer for the platform; 404 when the branch does not enable that provider.

        Traced as a ``notification`` span whose ``branchpay.notification_result`` says
        what it came to (docs/operations.md, Traces).
        """
        with spans.span("notification", provider=provider_name, branch=branch):
            return await self._receive(provider_name, branch, incoming, account)

    async def _receive(
        self,
        provider_name: str,
        branch: str,
        incoming: NotificationRequest,
        account: str | None,
    ) -> NotificationReply:
        provider = self.registry.provider(branch, provider_name)
        config = self.registry.provider_config(branch, provider_name)
        if provider is None or config is None or config.account != account:
            spans.note(notification_result="unknown_route")
            return NOT_FOUND
        context.bind(provider=provider_name, branch=branch)
        where = f"{provider_name}/{branch}"
        record = metrics.recorder()
        try:
            event = await provider.parse_notification(incoming)
        except NotificationMismatch as mismatch:
            return await self._mismatch(provider, branch, incoming, str(mismatch), None)
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
            why = await self.payments.mismatch(provider_name, branch, event)
            if why is not None:
                return await self._mismatch(provider, branch, incoming, why, event)
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

    async def _mismatch(
        self,
        provider: Provider,
        branch: str,
        incoming: NotificationRequest,
        why: str,
        event: ProviderEvent | None,
    ) -> NotificationReply:
        """Keep, count and log a genuine notification that is not ours; the platform may stop."""
        name = provider.name
        log.warning("notification for %s/%s refused after its signature: %s", name, branch, why)
        digest = hashlib.sha256(
            name.encode() + b"\0" + branch.encode() + b"\0" + incoming.body
        ).hexdigest()
        await self.payments.store.payments.record_mismatch(
            {
                "_id": digest,
                "provider": name,
                "branch": branch,
                "reason": why,
                "eventId": event.event_id if event else None,
                "kind": event.kind.value if event else None,
                "outTradeNo": event.out_trade_no if event else None,
                "amountFen": event.amount_fen if event else None,
                "receivedAt": self.payments.context.now(),
            }
        )
        metrics.recorder().notification(name, "rejected_mismatch")
        spans.note(notification_result="rejected_mismatch")
        return provider.notification_reply(accepted=True)
