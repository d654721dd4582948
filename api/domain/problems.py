"""Why a mutation refuses a request: the one list of ``UserError.code`` values.

A refusal is a ``userErrors`` entry (``UserError { field message code }``) in
the mutation's payload; the resource is then null and nothing was written. An
order, payment or branch the API key may not see is refused exactly like one
that does not exist. docs/api.md lists these codes with their meaning, and a
test holds the two together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UserErrorCode(enum.StrEnum):
    """Every code a ``UserError`` can carry; each member's comment is its meaning."""

    UNKNOWN_BRANCH = "UNKNOWN_BRANCH"  # no such branch (or not the key's)
    UNKNOWN_OFFERING = "UNKNOWN_OFFERING"  # no such offering in the catalog
    OFFERING_OF_OTHER_BRANCH = "OFFERING_OF_OTHER_BRANCH"  # the offering is another branch's
    INVALID_QUANTITY = "INVALID_QUANTITY"  # a quantity out of range for the offering
    DUPLICATE_NUMBER = "DUPLICATE_NUMBER"  # the same mobile number twice in one order
    EMPTY_ORDER = "EMPTY_ORDER"  # an order without items
    TOO_MANY_ITEMS = "TOO_MANY_ITEMS"  # more items than one order may hold
    MISSING_OPTION = "MISSING_OPTION"  # a handset option that must be chosen was not
    UNKNOWN_OPTION = "UNKNOWN_OPTION"  # an option or choice the offering does not have
    INVALID_CUSTOMER = "INVALID_CUSTOMER"  # the customer's name is empty, too long or not text
    INVALID_PHONE = "INVALID_PHONE"  # not a mainland mobile number
    INVALID_ID_CARD = "INVALID_ID_CARD"  # not a resident ID card number (check character)
    INVALID_IDEMPOTENCY_KEY = "INVALID_IDEMPOTENCY_KEY"  # empty, too long or not text
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"  # the key was used for another request
    INVALID_ID = "INVALID_ID"  # a malformed ID
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"  # no such order (or not the key's)
    ORDER_NOT_CANCELLABLE = "ORDER_NOT_CANCELLABLE"  # paid, refunded or already ended
    ORDER_NOT_PAYABLE = "ORDER_NOT_PAYABLE"  # not waiting for payment
    ORDER_EXPIRED = "ORDER_EXPIRED"  # its time to pay has run out
    PROVIDER_NOT_ENABLED = "PROVIDER_NOT_ENABLED"  # the branch does not enable it (named)
    METHOD_NOT_SUPPORTED = "METHOD_NOT_SUPPORTED"  # the provider does not offer the method
    INVALID_RETURN_URL = "INVALID_RETURN_URL"  # not an http(s) URL, or too long
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"  # the platform failed (attempt FAILED/PENDING)
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"  # no such payment (or not the key's)
    INVALID_AMOUNT = "INVALID_AMOUNT"  # not a positive whole number of fen
    INVALID_REASON = "INVALID_REASON"  # a cancel or refund reason too long or not text
    PAYMENT_NOT_REFUNDABLE = "PAYMENT_NOT_REFUNDABLE"  # not paid, or flagged for review
    REFUND_EXCEEDS_PAID = "REFUND_EXCEEDS_PAID"  # more than what is left to refund
    REFUND_FAILED = "REFUND_FAILED"  # the platform refused; kept FAILED, amount released
    DUPLICATE_REFUND = "DUPLICATE_REFUND"  # that refund number is reserved already
    WEBHOOK_URL_INVALID = "WEBHOOK_URL_INVALID"  # not an https URL (http: loopback, if allowed)
    WEBHOOK_TARGET_FORBIDDEN = "WEBHOOK_TARGET_FORBIDDEN"  # a private, loopback or metadata address
    UNKNOWN_EVENT_TYPE = "UNKNOWN_EVENT_TYPE"  # not one of the webhook event types
    NO_EVENT_TYPES = "NO_EVENT_TYPES"  # an endpoint must take at least one event type
    INVALID_DESCRIPTION = "INVALID_DESCRIPTION"  # an endpoint description too long or not text
    WEBHOOK_ENDPOINT_NOT_FOUND = "WEBHOOK_ENDPOINT_NOT_FOUND"  # no such endpoint (or not the key's)
    WEBHOOK_EVENT_NOT_FOUND = "WEBHOOK_EVENT_NOT_FOUND"  # no such event (or not the key's)
    INVALID_TIME = "INVALID_TIME"  # a time without a time zone
    TOO_MANY_WEBHOOK_ENDPOINTS = "TOO_MANY_WEBHOOK_ENDPOINTS"  # 20 per branch at most
    WEBHOOK_OWNER_REVOKED = "WEBHOOK_OWNER_REVOKED"  # a key of the owner's role must take it over
    BILLS_NOT_SUPPORTED = "BILLS_NOT_SUPPORTED"  # the provider cannot download daily bills
    INVALID_DATE = "INVALID_DATE"  # a bill date in the future, or a range ending before it starts
    DISCREPANCY_NOT_FOUND = "DISCREPANCY_NOT_FOUND"  # no such discrepancy (or not the key's)
    DISCREPANCY_RESOLVED = "DISCREPANCY_RESOLVED"  # the discrepancy is resolved already
    INVALID_NOTE = "INVALID_NOTE"  # a resolution note empty, too long or not text
    CONFIG_EDITING_OFF = "CONFIG_EDITING_OFF"  # this service may not edit plugins.toml
    UNKNOWN_PROVIDER = "UNKNOWN_PROVIDER"  # no installed provider of that name
    PROVIDER_NOT_CONFIGURED = "PROVIDER_NOT_CONFIGURED"  # the branch has no table for it
    CONFIG_INVALID = "CONFIG_INVALID"  # plugins.toml is, or would be, invalid; unchanged
    CONFIG_EDIT_FAILED = "CONFIG_EDIT_FAILED"  # unreadable, or changed meanwhile; unchanged
    PROVIDER_REQUIRED = "PROVIDER_REQUIRED"  # no provider named, and the method cannot find one
    METHOD_NOT_OFFERED = "METHOD_NOT_OFFERED"  # the branch does not offer the method (here)
    AMOUNT_OUT_OF_LIMITS = "AMOUNT_OUT_OF_LIMITS"  # the total is outside the provider's amounts
    ACCOUNT_UNAVAILABLE = "ACCOUNT_UNAVAILABLE"  # the service-provider account is suspended
    PAYER_ID_REQUIRED = "PAYER_ID_REQUIRED"  # the method needs payerId (openid, buyer id)
    INVALID_PAYER_ID = "INVALID_PAYER_ID"  # not a payer id the platform issues
    AUTH_CODE_REQUIRED = "AUTH_CODE_REQUIRED"  # PAYMENT_CODE needs the scanned authCode
    INVALID_AUTH_CODE = "INVALID_AUTH_CODE"  # not a payment code of any wallet, or of the one named
    PAYMENT_DECLINED = "PAYMENT_DECLINED"  # the platform refused the payment code (attempt FAILED)


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a request is refused; ``field`` is the path in the input."""

    field: tuple[str, ...]
    message: str
    code: UserErrorCode


class ServiceError(Exception):
    """A service's refusal of a request, with the one :class:`Problem` that says why."""

    def __init__(self, code: UserErrorCode, message: str, field: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problem = Problem(field, message, code)

    @property
    def code(self) -> UserErrorCode:
        return self.problem.code
