"""What every payment job shares: the store, the providers, the clock, the hooks.

Each job (start, facts, refunds, reconcile) is handed one :class:`PaymentContext`
and the other jobs it needs; none inherits from another. The one write helper
here, :meth:`PaymentContext.change`, is the version-guarded write of a domain
decision that every job uses to move an attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pluggy
from bson import ObjectId

from api.config.live import ProviderRegistry
from api.domain.payment import Attempt
from api.domain.problems import Problem, UserErrorCode
from api.plugins.manager import notify
from api.store import Store
from api.store.payments import attempt_fields, attempt_of

Document = dict[str, Any]
log = logging.getLogger("branchpay.payments")

# A version-guarded write retries when another writer changed the payment first;
# more losses in a row than this means something is wrong, not busy.
MAX_WRITE_RACES = 64


@dataclass(frozen=True, slots=True)
class PaymentContext:
    store: Store
    registry: ProviderRegistry
    base_url: Callable[[], str]
    plugins: pluggy.PluginManager | None
    clock: Callable[[], datetime]

    def now(self) -> datetime:
        now = self.clock()
        return now.replace(microsecond=(now.microsecond // 1000) * 1000)  # BSON keeps ms

    def notify_url(self, provider: str, branch: str) -> str:
        """Where the platform notifies: names the branch and the account it pays through."""
        url = f"{self.base_url()}/notify/{provider}/{branch}"
        config = self.registry.provider_config(branch, provider)
        if config is not None and config.account is not None:
            url += f"/{config.account}"
        return url

    def hook(self, name: str, **documents: Mapping[str, Any]) -> None:
        if self.plugins is None:
            return
        notify(self.plugins, name, **documents)

    async def change(
        self, payment_id: ObjectId, decide: Callable[[Attempt], Attempt | None]
    ) -> Document | None:
        """Write ``decide(attempt)`` under the version guard; None when it decides nothing."""
        for _ in range(MAX_WRITE_RACES):
            doc = await self.store.payments.get(payment_id)
            if doc is None:
                return None
            updated = decide(attempt_of(doc))
            if updated is None:
                return None
            now = self.now()
            written = await self.store.payments.write(doc, attempt_fields(updated, doc, now), now)
            if written is not None:
                return written
        raise RuntimeError(f"payment {payment_id}: too many concurrent writers")


def problem(field_name: str, message: str, code: UserErrorCode) -> list[Problem]:
    return [Problem((field_name,), message, code)]


def refund_doc(payment: Document, out_refund_no: str) -> Document | None:
    """The refund line of the payment document with that refund number."""
    return next((r for r in payment.get("refunds", []) if r["outRefundNo"] == out_refund_no), None)
