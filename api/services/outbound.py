"""Outbound HTTP to partners' webhook URLs, refusing every target off the public internet.

A partner registers a URL and branchpay POSTs its notifications there. If no
one checked that URL, anyone who can register one could make branchpay call its
own network (SSRF): a cloud metadata endpoint, the store, an admin port.

- :func:`check_url` judges the URL's form and a literal IP host.
- :func:`check_target` also resolves a host name now (for registration).
- :class:`OutboundClient` resolves the name again at every connection, refuses
  it when any address is not allowed, and connects to the very address it
  judged. A name that was public at registration may point at 127.0.0.1 later
  (DNS rebinding). TLS still verifies the name, which is sent as SNI.
  Redirects are not followed and no environment proxy or ``.netrc`` is used.
  ``total_timeout`` bounds the whole exchange and ``max_body`` bounds the body
  that is read.

An address is allowed when it is global unicast. Loopback is allowed only with
``allow_loopback``. An IPv6 address that carries an IPv4 address (mapped
``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``) is judged by that IPv4 address. Only https is accepted,
except plain http to loopback with ``allow_loopback``. For a host name that
means every address it resolves to is loopback.

Every code a caller can get:

- ``TargetRefused.code`` (:class:`RefusalCode`): ``WEBHOOK_URL_INVALID``,
  ``WEBHOOK_TARGET_FORBIDDEN``, ``WEBHOOK_HOST_UNRESOLVED``.
- ``OutboundResult.error`` (:class:`FailureReason`, retryable unless marked):
  ``timeout``, ``connect_error``, ``unresolved``, ``protocol_error``,
  ``network_error``, ``target_forbidden`` (not retryable), ``url_invalid``
  (not retryable).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import urlsplit

import httpx

__all__ = [
    "FailureReason",
    "OutboundClient",
    "OutboundPolicy",
    "OutboundResult",
    "RefusalCode",
    "TargetRefused",
    "check_target",
    "check_url",
]

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = IPv4Address | IPv6Address

_MAX_URL_LENGTH = 2048
_LOOPBACK_NAMES = frozenset({"localhost"})
_HOST_CHARACTERS = re.compile(r"[\w.-]+")
# A last label like these makes a name that resolvers read as an IPv4 address
# (``2130706433``, ``0x7f.1``), so the name would slip past the literal-IP rule.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_IPV4_COMPATIBLE = ip_network("::/96")
_NAT64 = ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class OutboundPolicy:
    """What outbound calls may reach and how long and how much they may take."""

    allow_loopback: bool = False
    connect_timeout: float = 5.0
    total_timeout: float = 15.0
    max_body: int = 64 * 1024
    resolver: Resolver | None = None


class RefusalCode(StrEnum):
    URL_INVALID = "WEBHOOK_URL_INVALID"
    TARGET_FORBIDDEN = "WEBHOOK_TARGET_FORBIDDEN"
    HOST_UNRESOLVED = "WEBHOOK_HOST_UNRESOLVED"


class TargetRefused(Exception):
    """A URL or host that outbound calls must not reach; ``message`` never quotes the URL."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FailureReason(StrEnum):
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    UNRESOLVED = "unresolved"
    PROTOCOL_ERROR = "protocol_error"
    NETWORK_ERROR = "network_error"
    TARGET_FORBIDDEN = "target_forbidden"
    URL_INVALID = "url_invalid"

    @property
    def retryable(self) -> bool:
        return self not in (FailureReason.TARGET_FORBIDDEN, FailureReason.URL_INVALID)


_REFUSAL_REASONS = {
    RefusalCode.URL_INVALID: FailureReason.URL_INVALID,
    RefusalCode.TARGET_FORBIDDEN: FailureReason.TARGET_FORBIDDEN,
    RefusalCode.HOST_UNRESOLVED: FailureReason.UNRESOLVED,
}


@dataclass(frozen=True)
class OutboundResult:
    """How one POST ended: an HTTP answer (``error`` is None) or a failure reason."""

    status: int | None
    latency_ms: float
    body: bytes
    error: str | None
    retryable: bool


def _invalid(message: str) -> TargetRefused:
    return TargetRefused(RefusalCode.URL_INVALID, message)


def _forbidden(message: str) -> TargetRefused:
    return TargetRefused(RefusalCode.TARGET_FORBIDDEN, message)


def _reached(address: IPAddress) -> IPAddress:
    """What a connection to ``address`` reaches: the IPv4 address an IPv6 one carries, or itself."""
    if isinstance(address, IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _allowed(address: IPAddress, policy: OutboundPolicy) -> bool:
    address = _reached(address)
    if address.is_loopback:
        return policy.allow_loopback
    # Python counts some multicast ranges as global.
    return address.is_global and not address.is_multicast


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # as httpx connects to it: lowercase, IDNA-encoded, IPv6 without brackets
    port: int
    address: IPAddress | None  # the host, when it is a literal IP address


def _parse(url: str) -> _Target:
    if len(url) > _MAX_URL_LENGTH:
        raise _invalid(f"the URL is longer than {_MAX_URL_LENGTH} characters")
    if any(char.isspace() or unicodedata.category(char).startswith("C") for char in url):
        raise _invalid("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid("the URL's host or port cannot be read") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid("the URL's scheme must be https")
    if "@" in parts.netloc:
        raise _invalid("the URL must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise _invalid("the URL has no host")
    if port is not None and not 1 <= port <= 65535:
        raise _invalid("the URL's port must be between 1 and 65535")
    address = _literal_address(host)
    if address is None:
        last_label = host.removesuffix(".").rpartition(".")[2]
        if not _HOST_CHARACTERS.fullmatch(host) or _NUMERIC_LABEL.fullmatch(last_label):
            raise _invalid("the URL's host is neither a host name nor an IP address")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise _invalid("the URL's host or port cannot be read") from None
    # The host judged here must be the host httpx connects to.
    if parsed.host != host:
        raise _invalid("the URL's host cannot be read unambiguously")
    default_port = 443 if parts.scheme == "https" else 80
    return _Target(parts.scheme, parsed.raw_host.decode("ascii"), port or default_port, address)


def _judge_addresses(addresses: list[IPAddress], scheme: str, policy: OutboundPolicy) -> None:
    """Refuse unless every address is allowed, and plain http unless every one is loopback."""
    if not all(_allowed(address, policy) for address in addresses):
        raise _forbidden("the URL's host is not on the public internet")
    if scheme != "https" and not all(_reached(address).is_loopback for address in addresses):
        raise _invalid("the URL's scheme must be https")


def _judge(target: _Target, policy: OutboundPolicy) -> None:
    if target.address is not None:
        _judge_addresses([target.address], target.scheme, policy)
    elif target.host.removesuffix(".") in _LOOPBACK_NAMES:
        if not policy.allow_loopback:
            raise _forbidden("the URL's host is not on the public internet")
    elif target.scheme != "https" and not policy.allow_loopback:
        # Plain http is for loopback hosts in development; whether a name is
        # one shows when it resolves.
        raise _invalid("the URL's scheme must be https")


def check_url(url: str, policy: OutboundPolicy) -> None:
    """Refuse ``url`` unless its form and a literal IP host are fit for outbound calls.

    A host name is not resolved here: :func:`check_target` does that.
    """
    _judge(_parse(url), policy)


async def check_target(url: str, policy: OutboundPolicy) -> None:
    """:func:`check_url`, then refuse a host name unless every address it resolves to is allowed."""
    target = _parse(url)
    _judge(target, policy)
    if target.address is None:
        await _resolve(target, policy)


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _resolve(target: _Target, policy: OutboundPolicy) -> IPAddress:
    """The first address the target's host name resolves to, once all of them are judged."""
    resolve = policy.resolver or _system_resolver
    try:
        async with asyncio.timeout(policy.connect_timeout):
            answers = await resolve(target.host, target.port)
    except (OSError, TimeoutError):
        answers = []
    if not answers:
        raise TargetRefused(RefusalCode.HOST_UNRESOLVED, "the URL's host name does not resolve")
    addresses = [_literal_address(answer) for answer in answers]
    judged = [address for address in addresses if address is not None]
    if len(judged) != len(addresses):
        raise _forbidden("the URL's host resolves to something that is not an IP address")
    _judge_addresses(judged, target.scheme, policy)
    return judged[0]


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """Judges each request's host at connection time and connects to the address it judged."""

    def __init__(self, policy: OutboundPolicy) -> None:
        # Pooled connections are keyed by address only: reusing one for another
        # name would send that name's request where its certificate was never checked.
        super().__init__(limits=httpx.Limits(max_keepalive_connections=0))
        self._policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        default_port = 443 if url.scheme == "https" else 80
        host = url.raw_host.decode("ascii")
        target = _Target(url.scheme, host, url.port or default_port, _literal_address(host))
        if target.address is not None:
            _judge_addresses([target.address], target.scheme, self._policy)
            return await super().handle_async_request(request)
        address = await _resolve(target, self._policy)
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=str(address)),
            headers=request.headers,  # keeps the Host header httpx derived from the name
            stream=request.stream,
            extensions=extensions,
        )
        return await super().handle_async_request(pinned)


def _status_retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _failure_reason(error: Exception) -> FailureReason:
    if isinstance(error, TargetRefused):
        return _REFUSAL_REASONS[error.code]
    if isinstance(error, TimeoutError | httpx.TimeoutException):
        return FailureReason.TIMEOUT
    if isinstance(error, httpx.ConnectError):
        return FailureReason.CONNECT_ERROR
    if isinstance(error, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return FailureReason.URL_INVALID
    if isinstance(error, httpx.ProtocolError):
        return FailureReason.PROTOCOL_ERROR
    return FailureReason.NETWORK_ERROR


class OutboundClient:
    """POSTs to URLs that pass :func:`check_url`, judging the address at every connection."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._http = httpx.AsyncClient(
            transport=_PinnedTransport(policy),
            follow_redirects=False,
            timeout=httpx.Timeout(policy.total_timeout, connect=policy.connect_timeout),
            trust_env=False,
            # The body is read raw, as decoding could inflate it past max_body; ask for it plain.
            headers={"Accept-Encoding": "identity"},
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> OutboundResult:
        """POST ``body``; network trouble and refused targets end in a result, never raise."""
        started = time.perf_counter()
        try:
            check_url(url, self._policy)
            async with asyncio.timeout(self._policy.total_timeout):
                status, answer = await self._exchange(url, headers, body)
        except (TargetRefused, TimeoutError, httpx.TransportError, httpx.InvalidURL) as error:
            reason = _failure_reason(error)
            return OutboundResult(None, _since(started), b"", reason, reason.retryable)
        return OutboundResult(status, _since(started), answer, None, _status_retryable(status))

    async def _exchange(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        limit = self._policy.max_body
        received = bytearray()
        async with self._http.stream("POST", url, headers=headers, content=body) as response:
            async for chunk in response.aiter_raw():
                received += chunk
                if len(received) >= limit:
                    break
            return response.status_code, bytes(received[:limit])

    async def aclose(self) -> None:
        await self._http.aclose()


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
