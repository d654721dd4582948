"""The one module a payment provider plugin imports: branchpay's plugin contract.

Everything here is public and typed (branchpay ships ``py.typed``); the modules
it comes from are not, and may move. A plugin package writes::

    from api.plugin import GatewaySettings, Provider, hookimpl, ...

    BRANCHPAY_PLUGIN_API = 2

What is here:

- the provider contract: :class:`Provider` (with its durable :class:`Marks`),
  the values that cross it
  (requests, actions, events, results and their enums) and the errors a
  provider raises (:class:`NotificationRejected`, :class:`GatewayError`);
- the hooks: :data:`hookimpl` and :data:`PLUGIN_API_VERSION`; the demo's
  :class:`DemoGateway` (the ``demo_gateways`` hook) and :func:`write_secret`
  (a 0600 file that is never overwritten, for demo keys);
- the gateway toolkit: :class:`GatewaySettings`, :func:`call_gateway`,
  :class:`TransientFailure`, :func:`may_have_reached`;
- RSA keys (:func:`load_private_key`, :func:`load_public_key`, ...) and Beijing
  time (:data:`BEIJING`, :func:`to_beijing`, :func:`from_beijing`,
  :func:`beijing_day`, :func:`day_bounds`);
- daily bills (optional): :class:`BillLine`, :class:`BillTotals` and their
  enums, the errors :class:`BillUnavailable` and :class:`BillRejected`, and
  :func:`yuan_to_fen` / :func:`fen_to_yuan` for the bills' yuan amounts.

The test and simulator toolkit for plugin authors is ``providers.kit``.
"""

from api.domain.beijing import BEIJING, beijing_now, from_beijing, to_beijing
from api.domain.bills import beijing_day, day_bounds, fen_to_yuan, yuan_to_fen
from api.plugins.contract import (
    ActionKind,
    AttemptState,
    BillLine,
    BillLineKind,
    BillLineStatus,
    BillRejected,
    BillTotals,
    BillUnavailable,
    BillUnavailableReason,
    EventKind,
    GatewayError,
    Marks,
    MemoryMarks,
    NotificationMismatch,
    NotificationRejected,
    NotificationReply,
    NotificationRequest,
    PaymentAction,
    PaymentMethod,
    PaymentRequest,
    Provider,
    ProviderError,
    ProviderEvent,
    QueryResult,
    RefundRequest,
    RefundResult,
    RefundState,
    ReverseResult,
    ReverseState,
    new_reference,
)
from api.plugins.demo import DemoGateway, write_secret
from api.plugins.gateway import (
    NOT_SENT,
    GatewaySettings,
    TransientFailure,
    call_gateway,
    may_have_reached,
)
from api.plugins.hookspecs import hookimpl
from api.plugins.manager import PLUGIN_API_VERSION
from api.plugins.rsa import (
    KeyFormatError,
    load_private_key,
    load_public_key,
    new_private_key,
    private_key_pem,
    public_key_pem,
)

__all__ = [
    "BEIJING",
    "NOT_SENT",
    "PLUGIN_API_VERSION",
    "ActionKind",
    "AttemptState",
    "BillLine",
    "BillLineKind",
    "BillLineStatus",
    "BillRejected",
    "BillTotals",
    "BillUnavailable",
    "BillUnavailableReason",
    "DemoGateway",
    "EventKind",
    "GatewayError",
    "GatewaySettings",
    "KeyFormatError",
    "Marks",
    "MemoryMarks",
    "NotificationMismatch",
    "NotificationRejected",
    "NotificationReply",
    "NotificationRequest",
    "PaymentAction",
    "PaymentMethod",
    "PaymentRequest",
    "Provider",
    "ProviderError",
    "ProviderEvent",
    "QueryResult",
    "RefundRequest",
    "RefundResult",
    "RefundState",
    "ReverseResult",
    "ReverseState",
    "TransientFailure",
    "beijing_day",
    "beijing_now",
    "call_gateway",
    "day_bounds",
    "fen_to_yuan",
    "from_beijing",
    "hookimpl",
    "load_private_key",
    "load_public_key",
    "may_have_reached",
    "new_private_key",
    "new_reference",
    "private_key_pem",
    "public_key_pem",
    "to_beijing",
    "write_secret",
    "yuan_to_fen",
]
