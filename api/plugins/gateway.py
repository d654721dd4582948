"""Calls from a provider adapter to its payment platform: settings, retries, failure classes.

Every provider has the same four settings (:class:`GatewaySettings`) and calls
its platform through :func:`call_gateway`, which repeats what is safe to repeat
with bounded exponential back-off and turns every failure into one
:class:`~api.plugins.contract.GatewayError`.

A transport failure is classified once, here, by :func:`may_have_reached`:

- *surely not sent*: the request never left this process, so the platform
  cannot have acted on it: ``ConnectError``, ``ConnectTimeout``,
  ``PoolTimeout`` (no connection was obtained from the pool), ``ProxyError``
  (the proxy refused to open the tunnel), ``UnsupportedProtocol`` and
  ``InvalidURL``;
- *may have reached the platform*: everything else, from the moment a
  connection was open (``ReadTimeout``, ``WriteTimeout``, ``ReadError``,
  ``WriteError``, ``CloseError``, ``LocalProtocolError``,
  ``RemoteProtocolError``, ``DecodingError``, ...), and any error this module
  does not know.

An attempt whose create call surely was not sent is FAILED; one whose call may
have reached the platform stays PENDING (``outcome_unknown``) until
reconciliation asks the platform.

Every call is counted once, with all its tries, in
``branchpay_gateway_calls_total`` by outcome: ``ok``; ``may_have_reached``
(the call changes state and may have reached the platform: the attempt's
outcome is unknown); ``timeout`` (the last try timed out, and nothing is in
doubt); ``platform_error`` (the platform answered an error, or the request
surely was not sent). The provider and operation labels come from the
service that called the provider (``metrics.gateway_call``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.plugins.contract import GatewayError
from api.telemetry import metrics

T = TypeVar("T")

# The request never left: nothing can have reached the platform.
NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
)


def may_have_reached(error: BaseException) -> bool:
    """False only when ``error`` proves the request never left this process."""
    return not isinstance(error, NOT_SENT)


class TransientFailure(Exception):
    """One failed try that a repeat may cure (HTTP 5xx, a platform's "system busy").

    Raised by the ``send`` function given to :func:`call_gateway`; transport
    errors of httpx need no wrapping, the helper classifies them itself.
    """

    def __init__(self, reason: str, *, may_have_reached: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.may_have_reached = may_have_reached


class GatewaySettings(BaseModel):
    """The settings every provider shares; a provider's ``Settings`` subclasses it.

    A subclass adds its platform's ids and keys and may give ``gateway`` a
    default (the production URL) or other defaults for the other three.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    gateway: str = Field(description="base URL of the platform's API (or of its simulator)")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="per try")
    max_attempts: int = Field(
        default=3, ge=1, le=6, description="tries of the calls that are safe to repeat"
    )
    backoff_seconds: float = Field(
        default=0.5, ge=0, le=10, description="first back-off; doubles after each failed try"
    )

    @field_validator("gateway")
    @classmethod
    def _gateway_is_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("gateway must be an http(s) URL")
        return value


async def call_gateway(
    send: Callable[[], Awaitable[T]],
    *,
    settings: GatewaySettings,
    operation: str,
    repeatable: bool,
    changes_state: bool = True,
    logger: logging.Logger,
) -> T:
    """Run ``send`` (one try of the call) until it returns, at most ``max_attempts`` times.

    ``repeatable``: the platform documents the call as safe to repeat (query,
    close, refund under the same number); only then is it tried more than
    once. ``changes_state``: false for a query, whose outcome is never in
    doubt. ``operation`` names the call in messages ("Alipay
    alipay.trade.query"). A ``GatewayError`` raised by ``send`` passes through
    unchanged; a :class:`TransientFailure` or an httpx error is tried again
    while tries are left, then raised as a ``GatewayError`` with
    ``retryable=repeatable`` and ``outcome_unknown`` when any try may have
    reached the platform.
    """
    tries = settings.max_attempts if repeatable else 1
    reached = timed_out = False
    started = time.perf_counter()
    record = metrics.recorder()
    for attempt in range(1, tries + 1):
        try:
            answer = await send()
        except GatewayError as error:
            outcome = "may_have_reached" if error.outcome_unknown else "platform_error"
            record.gateway(outcome, time.perf_counter() - started)
            raise
        except TransientFailure as failure:
            reason = failure.reason
            reached = reached or failure.may_have_reached
            timed_out = False
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            sent = may_have_reached(error)
            reason = f"{'no answer' if sent else 'not sent'} ({type(error).__name__})"
            reached = reached or sent
            timed_out = isinstance(error, httpx.TimeoutException)
        else:
            record.gateway("ok", time.perf_counter() - started)
            return answer
        if attempt < tries:
            pause = settings.backoff_seconds * 2 ** (attempt - 1)
            logger.warning(
                "%s failed (%s); try %d of %d in %.2f s",
                operation,
                reason,
                attempt + 1,
                tries,
                pause,
            )
            await asyncio.sleep(pause)
    logger.error("%s failed: try %d of %d was the last (%s)", operation, tries, tries, reason)
    outcome_unknown = reached and changes_state
    record.gateway(
        "may_have_reached" if outcome_unknown else "timeout" if timed_out else "platform_error",
        time.perf_counter() - started,
    )
    raise GatewayError(
        f"{operation} failed after {tries} {'try' if tries == 1 else 'tries'}: {reason}",
        retryable=repeatable,
        outcome_unknown=outcome_unknown,
    )
