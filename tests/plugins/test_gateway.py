"""api/plugins/gateway.py: every httpx exception classified once, and the bounded retries."""

from __future__ import annotations

import inspect
import logging

import httpx
import pytest

from api.plugins.contract import GatewayError
from api.plugins.gateway import (
    GatewaySettings,
    TransientFailure,
    call_gateway,
    may_have_reached,
)

# Every exception class httpx exports, and whether the request may have reached
# the platform when it is raised. A new httpx class fails the completeness test.
REACHED = {
    "ConnectError": False,
    "ConnectTimeout": False,
    "PoolTimeout": False,  # no connection was obtained from the pool
    "ProxyError": False,  # the proxy refused the tunnel
    "UnsupportedProtocol": False,
    "InvalidURL": False,
    "ReadTimeout": True,
    "WriteTimeout": True,
    "ReadError": True,
    "WriteError": True,
    "CloseError": True,
    "LocalProtocolError": True,
    "RemoteProtocolError": True,
    "ProtocolError": True,
    "NetworkError": True,
    "TimeoutException": True,
    "TransportError": True,
    "RequestError": True,
    "HTTPError": True,
    "HTTPStatusError": True,
    "DecodingError": True,
    "TooManyRedirects": True,
    "CookieConflict": True,
    "StreamError": True,
    "StreamConsumed": True,
    "StreamClosed": True,
    "ResponseNotRead": True,
    "RequestNotRead": True,
}

SETTINGS = GatewaySettings(gateway="http://127.0.0.1:9", max_attempts=3, backoff_seconds=0)
logger = logging.getLogger("tests.gateway")


def httpx_exceptions() -> dict[str, type[Exception]]:
    return {
        name: value
        for name in httpx.__all__
        if inspect.isclass(value := getattr(httpx, name)) and issubclass(value, Exception)
    }


def instance(cls: type[Exception]) -> Exception:
    request = httpx.Request("POST", "http://127.0.0.1:9/")
    if cls is httpx.HTTPStatusError:
        return cls("500", request=request, response=httpx.Response(500, request=request))
    if issubclass(cls, httpx.RequestError):
        return cls("boom", request=request)
    if issubclass(cls, httpx.StreamError) and cls is not httpx.StreamError:
        return cls()
    return cls("boom")


def test_the_table_names_every_httpx_exception() -> None:
    assert set(httpx_exceptions()) == set(REACHED)


@pytest.mark.parametrize("name", sorted(REACHED))
def test_classification(name: str) -> None:
    assert may_have_reached(instance(httpx_exceptions()[name])) is REACHED[name]


@pytest.mark.parametrize("name", ["ConnectError", "PoolTimeout", "ReadTimeout", "WriteError"])
async def test_a_create_is_sent_once_and_says_whether_it_may_have_reached(name: str) -> None:
    tries = 0

    async def send() -> None:
        nonlocal tries
        tries += 1
        raise instance(httpx_exceptions()[name])

    with pytest.raises(GatewayError) as raised:
        await call_gateway(
            send, settings=SETTINGS, operation="create", repeatable=False, logger=logger
        )
    assert tries == 1
    assert not raised.value.retryable
    assert raised.value.outcome_unknown is REACHED[name]


async def test_a_repeatable_call_is_tried_max_attempts_times_then_raised() -> None:
    tries = 0

    async def send() -> None:
        nonlocal tries
        tries += 1
        raise TransientFailure("HTTP 503") if tries % 2 else httpx.ConnectError("refused")

    with pytest.raises(GatewayError, match="after 3 tries: HTTP 503") as raised:
        await call_gateway(
            send, settings=SETTINGS, operation="refund", repeatable=True, logger=logger
        )
    assert tries == 3
    assert raised.value.retryable and raised.value.outcome_unknown


async def test_a_query_is_never_outcome_unknown_and_a_success_returns() -> None:
    answers: list[object] = [httpx.ReadTimeout("slow"), "paid"]

    async def send() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert (
        await call_gateway(
            send,
            settings=SETTINGS,
            operation="query",
            repeatable=True,
            changes_state=False,
            logger=logger,
        )
        == "paid"
    )

    async def timeout() -> None:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(GatewayError) as raised:
        await call_gateway(
            timeout,
            settings=SETTINGS,
            operation="query",
            repeatable=True,
            changes_state=False,
            logger=logger,
        )
    assert not raised.value.outcome_unknown


async def test_a_gateway_error_from_send_passes_through_untried() -> None:
    tries = 0

    async def send() -> None:
        nonlocal tries
        tries += 1
        raise GatewayError("refused: bad signature")

    with pytest.raises(GatewayError, match="bad signature"):
        await call_gateway(send, settings=SETTINGS, operation="x", repeatable=True, logger=logger)
    assert tries == 1


def test_settings_refuse_a_gateway_that_is_not_an_http_url() -> None:
    with pytest.raises(ValueError, match="http"):
        GatewaySettings(gateway="ftp://example.invalid")
