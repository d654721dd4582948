"""Text from clients: the length limit of every string input, and what no string may hold.

``LIMITS`` is the one table of them: the checks below, the schema's
descriptions and docs/security.md's "Limits" table are all written from it (a
test compares the docs with it). Lengths count Unicode code points, Python's
``len``, so a Chinese name of 64 characters fits as well as a Latin one.

No string may hold a control character (NUL and the other C0 and C1 codes;
multi-line text may hold tab, LF and CR) or a lone surrogate. A lone surrogate
(a JSON ``"\\ud800"`` without its pair) is not Unicode text at all: it cannot be
encoded as UTF-8, so BSON could never store it and every later step would fail
on it. Both are refused where the input is read, before anything is written.

Pure: no I/O. The services turn a refusal into a ``userErrors`` entry with a
code, the query resolvers into a top-level ``BAD_USER_INPUT``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# C0 controls (NUL included), DEL, C1 controls, and every surrogate code point:
# a Python str holds a surrogate only when it came unpaired, since a pair in
# JSON or GraphQL is decoded to the one character it encodes.
_FORBIDDEN_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same, but tab, LF and CR are allowed in text that may span lines.
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class TextLimit:
    """How long one string input may be, and whether it may span lines.

    ``inputs`` names where clients send it, as docs/security.md lists it;
    ``rule`` says what else the input must be, for the same table.
    """

    inputs: str
    max_chars: int
    min_chars: int = 0
    multiline: bool = False
    rule: str = ""

    @property
    def summary(self) -> str:
        """The limit in words, e.g. ``1 to 64 characters``."""
        if self.min_chars == self.max_chars:
            return f"{self.max_chars} characters"
        if self.min_chars:
            return f"{self.min_chars} to {self.max_chars} characters"
        return f"at most {self.max_chars} characters"

    def problem(self, value: str, name: str) -> str | None:
        """Why ``value`` cannot be the input ``name``, or None when it can.

        Checks the length first: a value over its limit is refused without a scan.
        """
        if len(value) > self.max_chars or len(value) < self.min_chars:
            return f"{name} must be {self.summary}"
        forbidden = (_FORBIDDEN_IN_TEXT if self.multiline else _FORBIDDEN_IN_LINE).search(value)
        if forbidden is None:
            return None
        if "\ud800" <= forbidden.group() <= "\udfff":
            return f"{name} is not valid Unicode text: it holds a lone surrogate"
        allowed = "; tab and line breaks are allowed" if self.multiline else ""
        return (
            f"{name} must not hold control characters such as NUL "
            f"(found U+{ord(forbidden.group()):04X}){allowed}"
        )


def quoted(value: str, limit: TextLimit) -> str:
    """``value`` as a message may repeat it: quoted, escaped, and cut at its limit."""
    if len(value) > limit.max_chars:
        return repr(value[: limit.max_chars]) + "..."
    return repr(value)


CUSTOMER_NAME = TextLimit(
    "`createOrder` `customer.name`",
    64,
    min_chars=1,
    rule="one line; surrounding spaces are stripped first",
)
PHONE = TextLimit(
    "`createOrder` `customer.phone`, `orders` `filter.customerPhone`",
    32,
    rule="then a mainland China mobile number (spaces, dashes, +86 allowed)",
)
ID_CARD = TextLimit(
    "`createOrder` `customer.idCardNumber`",
    32,
    rule="then an 18-character resident ID card number with its check character",
)
IDEMPOTENCY_KEY = TextLimit(
    "`createOrder`, `refundPayment` `idempotencyKey`",
    64,
    min_chars=8,
    rule="letters, digits, `_ - : .`",
)
BRANCH_CODE = TextLimit(
    "branch codes: `createOrder` `branch`, `catalog(branch)`, `branch(code)`, "
    "`orders` `filter.branches`",
    8,
    rule="2 to 8 lower-case letters; any other code is an unknown branch",
)
OPTION = TextLimit(
    "`createOrder` `items.options` `name` and `value`",
    64,
    rule="one of the offering's options and choices",
)
PROVIDER = TextLimit(
    "`startPayment` `provider`",
    32,
    rule="a provider the order's branch enables",
)
RETURN_URL = TextLimit(
    "`startPayment` `returnUrl`",
    1024,
    rule="an http(s) URL with a host",
)
WEBHOOK_URL = TextLimit(
    "`createWebhookEndpoint` / `updateWebhookEndpoint` `url`",
    2048,
    min_chars=1,
    rule="an https URL of a public host (http: loopback, when allowed)",
)
WEBHOOK_DESCRIPTION = TextLimit(
    "`createWebhookEndpoint` / `updateWebhookEndpoint` `description`",
    200,
    rule="free text on one line",
)
CANCEL_REASON = TextLimit(
    "`cancelOrder` `reason`",
    200,
    multiline=True,
    rule="free text; tab and line breaks allowed",
)
REFUND_REASON = TextLimit(
    "`refundPayment` `reason`",
    200,
    multiline=True,
    rule="free text; tab and line breaks allowed",
)
GLOBAL_ID = TextLimit(
    "IDs: `orderId`, `paymentId`, `offeringId`, `order(id)`, `node(id)`, `orderEvents(orderId)`",
    200,
    rule="an ID the API returned",
)
ORDERS_CURSOR = TextLimit(
    "`orders(after)`",
    100,
    rule="a cursor `orders` returned",
)
AUDIT_CURSOR = TextLimit(
    "`auditLog(after)`",
    24,
    min_chars=24,
    rule="an `endCursor` `auditLog` returned",
)

DELIVERIES_CURSOR = TextLimit(
    "`WebhookEndpoint.deliveries(after)`",
    24,
    min_chars=24,
    rule="an `endCursor` `deliveries` returned",
)
DISCREPANCY_NOTE = TextLimit(
    "`resolveDiscrepancy` `note`",
    500,
    min_chars=1,
    multiline=True,
    rule="free text; tab and line breaks allowed",
)
RECONCILIATION_ID = TextLimit(
    "`reconciliation(id)`, `resolveDiscrepancy` `id`",
    300,
    rule="an `id` the API returned",
)
DISCREPANCIES_CURSOR = TextLimit(
    "`Reconciliation.discrepancies(after)`",
    300,
    rule="an `endCursor` `discrepancies` returned",
)

LIMITS: tuple[TextLimit, ...] = (
    CUSTOMER_NAME,
    PHONE,
    ID_CARD,
    IDEMPOTENCY_KEY,
    BRANCH_CODE,
    OPTION,
    PROVIDER,
    RETURN_URL,
    WEBHOOK_URL,
    WEBHOOK_DESCRIPTION,
    CANCEL_REASON,
    REFUND_REASON,
    GLOBAL_ID,
    ORDERS_CURSOR,
    AUDIT_CURSOR,
    DELIVERIES_CURSOR,
    DISCREPANCY_NOTE,
    RECONCILIATION_ID,
    DISCREPANCIES_CURSOR,
)
