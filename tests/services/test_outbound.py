"""Outbound webhook HTTP: URL and address rules, DNS rebinding, limits, against loopback servers.

Nothing here leaves the machine: public addresses appear only in static checks
or as answers of an injected resolver, and no test connects to one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from api.services.outbound import (
    OutboundClient,
    OutboundPolicy,
    OutboundResult,
    RefusalCode,
    TargetRefused,
    check_target,
    check_url,
)
from providers.kit.loopback import LoopbackServer

PUBLIC = "93.184.215.14"
LOOPBACK = OutboundPolicy(allow_loopback=True, total_timeout=0.5)
STRICT = OutboundPolicy(total_timeout=0.5)


@dataclasses.dataclass
class Received:
    path: str
    host: str | None
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A partner's webhook endpoint on loopback that records what reaches it."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.app = Starlette(
            routes=[
                Route("/ok", self._ok, methods=["POST"]),
                Route("/status/{code:int}", self._status, methods=["POST"]),
                Route("/redirect", self._redirect, methods=["POST"]),
                Route("/landing", self._ok, methods=["GET", "POST"]),
                Route("/large", self._large, methods=["POST"]),
            ]
        )

    async def _record(self, request: Request) -> None:
        self.received.append(
            Received(
                request.url.path,
                request.headers.get("host"),
                dict(request.headers),
                await request.body(),
            )
        )

    async def _ok(self, request: Request) -> Response:
        await self._record(request)
        return PlainTextResponse("accepted")

    async def _status(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=request.path_params["code"])

    async def _redirect(self, request: Request) -> Response:
        await self._record(request)
        return RedirectResponse("/landing", status_code=302)

    async def _large(self, request: Request) -> Response:
        await self._record(request)
        return Response(b"x" * (1024 * 1024))

    def paths(self) -> list[str]:
        return [entry.path for entry in self.received]


class ScriptedResolver:
    """Answers each lookup with the next scripted answer, the last one from then on."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[Receiver, LoopbackServer]]:
    receiver = Receiver()
    with LoopbackServer(receiver.app) as server:
        yield receiver, server


@pytest.fixture
def receiver(receiver_server: tuple[Receiver, LoopbackServer]) -> Receiver:
    receiver_server[0].received.clear()
    return receiver_server[0]


@pytest.fixture
def receiver_port(receiver_server: tuple[Receiver, LoopbackServer]) -> int:
    return receiver_server[1].port


@pytest.fixture
def receiver_url(receiver_server: tuple[Receiver, LoopbackServer]) -> str:
    return receiver_server[1].url


@contextlib.asynccontextmanager
async def outbound(policy: OutboundPolicy) -> AsyncIterator[OutboundClient]:
    client = OutboundClient(policy)
    try:
        yield client
    finally:
        await client.aclose()


async def post(policy: OutboundPolicy, url: str, body: bytes = b"{}") -> OutboundResult:
    async with outbound(policy) as client:
        return await client.post(url, {"Content-Type": "application/json"}, body)


@contextlib.asynccontextmanager
async def tcp_server(
    handle: asyncio.Event, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, list[None]]]:
    """A raw loopback server that counts connections and holds each open until ``handle`` is set."""
    connections: list[None] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(None)
        try:
            await handle.wait()
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        handle.set()
        server.close()
        await server.wait_closed()


def refusal(url: str, policy: OutboundPolicy = STRICT) -> TargetRefused:
    with pytest.raises(TargetRefused) as raised:
        check_url(url, policy)
    return raised.value


# --- answers -------------------------------------------------------------


async def test_a_200_answer_is_delivered_with_headers_and_body(
    receiver: Receiver, receiver_url: str
) -> None:
    async with outbound(LOOPBACK) as client:
        result = await client.post(
            f"{receiver_url}/ok", {"X-Branchpay-Signature": "sig"}, b'{"event":"paid"}'
        )

    assert (result.status, result.error, result.retryable) == (200, None, False)
    assert result.body == b"accepted"
    [received] = receiver.received
    assert received.body == b'{"event":"paid"}'
    assert received.headers["x-branchpay-signature"] == "sig"


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True)])
async def test_5xx_and_429_are_retryable(
    receiver: Receiver, receiver_url: str, status: int, retryable: bool
) -> None:
    result = await post(LOOPBACK, f"{receiver_url}/status/{status}")

    assert (result.status, result.error, result.retryable) == (status, None, retryable)


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_other_4xx_are_not_retryable(
    receiver: Receiver, receiver_url: str, status: int
) -> None:
    result = await post(LOOPBACK, f"{receiver_url}/status/{status}")

    assert (result.status, result.error, result.retryable) == (status, None, False)


async def test_a_redirect_is_not_followed(receiver: Receiver, receiver_url: str) -> None:
    result = await post(LOOPBACK, f"{receiver_url}/redirect")

    assert (result.status, result.error, result.retryable) == (302, None, False)
    assert receiver.paths() == ["/redirect"]


async def test_a_stalled_server_times_out_and_is_retryable() -> None:
    async with tcp_server(asyncio.Event()) as (port, connections):
        result = await post(LOOPBACK, f"http://127.0.0.1:{port}/hook")

    assert (result.status, result.error, result.retryable) == (None, "timeout", True)
    assert len(connections) == 1


async def test_a_large_body_is_read_only_up_to_max_body(
    receiver: Receiver, receiver_url: str
) -> None:
    policy = dataclasses.replace(LOOPBACK, max_body=64 * 1024)

    result = await post(policy, f"{receiver_url}/large")

    assert (result.status, result.error) == (200, None)
    assert result.body == b"x" * policy.max_body


async def test_a_closed_port_is_a_retryable_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    result = await post(LOOPBACK, f"http://127.0.0.1:{port}/hook")

    assert (result.status, result.error, result.retryable) == (None, "connect_error", True)


async def test_environment_proxies_are_not_used(
    receiver: Receiver, receiver_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    result = await post(LOOPBACK, f"{receiver_url}/ok")

    assert result.status == 200


# --- check_url -----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http://example.com/hook",
        "https://user:pass@example.com/hook",
        "https://@example.com/hook",
        "https://example.com/" + "a" * 2048,
        "https://example.com/ho\x00ok",
        "https://example.com/hook\r\nX-Injected: 1",
        "https://example.com/ho ok",
        "https://example.com/\thook",
        "https://example.com/\x7f",
        "https:///hook",
        "https://example.com:0/hook",
        "https://example.com:65536/hook",
        "https://example.com:http/hook",
        "https://[::1/hook",
        "https://2130706433/hook",
        "https://0x7f.1/hook",
        "https://127.1/hook",
        "https://exa%6dple.com/hook",
        "hook.example.com/path",
    ],
)
def test_check_url_refuses_malformed_urls(url: str) -> None:
    assert refusal(url).code == "WEBHOOK_URL_INVALID"


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.100.100.200/latest/meta-data/",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
        "https://240.0.0.1/hook",
        "https://255.255.255.255/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://[::ffff:169.254.169.254]/hook",
        "https://[::a00:1]/hook",
        "https://[2002:a00:1::]/hook",
        "https://[64:ff9b::a9fe:a9fe]/hook",
        "https://[fc00::1]/hook",
        "https://[fe80::1]/hook",
        "https://[ff02::1]/hook",
        "https://[::]/hook",
        "https://127.0.0.1/hook",
        "http://127.0.0.1:8000/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
        "http://LOCALHOST.:8000/hook",
    ],
)
def test_check_url_refuses_addresses_off_the_public_internet(url: str) -> None:
    assert refusal(url).code == "WEBHOOK_TARGET_FORBIDDEN"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cret@example.com/hook?token=t0ken",
        "https://10.0.0.1/hook?token=t0ken",
        "http://example.com/hook?token=t0ken",
        "https://example.com/hook?token=t0ken&pad=" + "a" * 2048,
        "https://example.com/hook?token=t0ken\n",
    ],
)
def test_refusal_messages_never_quote_the_url(url: str) -> None:
    message = refusal(url).message

    assert "s3cret" not in message
    assert "t0ken" not in message
    assert "example.com" not in message


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "https://hooks.example.com:8443/branchpay?tenant=zj",
        "https://bücher.example/hook",
        f"https://{PUBLIC}/hook",
        "https://[2606:4700::1111]/hook",
        "https://[::ffff:93.184.215.14]/hook",
    ],
)
def test_check_url_accepts_public_https_urls(url: str) -> None:
    check_url(url, STRICT)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://127.8.9.10/hook",
        "http://[::1]:8000/hook",
        "http://localhost:8000/hook",
        "https://127.0.0.1/hook",
        "http://receiver.test:8000/hook",
    ],
)
def test_check_url_accepts_loopback_when_allowed(url: str) -> None:
    check_url(url, LOOPBACK)


def test_plain_http_to_a_public_address_is_refused_even_when_loopback_is_allowed() -> None:
    assert refusal(f"http://{PUBLIC}/hook", LOOPBACK).code == RefusalCode.URL_INVALID


# --- check_target --------------------------------------------------------


@pytest.mark.parametrize(
    "answer", [["10.0.0.5"], [PUBLIC, "10.0.0.5"], ["169.254.169.254"], ["::1"], ["not-an-ip"]]
)
async def test_check_target_refuses_a_name_with_any_disallowed_address(answer: list[str]) -> None:
    resolver = ScriptedResolver(answer)
    policy = dataclasses.replace(STRICT, resolver=resolver)

    with pytest.raises(TargetRefused) as raised:
        await check_target("https://hooks.partner.test/hook", policy)

    assert raised.value.code == RefusalCode.TARGET_FORBIDDEN
    assert resolver.calls == [("hooks.partner.test", 443)]


@pytest.mark.parametrize("answer", [[], socket.gaierror(socket.EAI_NONAME, "unknown")])
async def test_check_target_refuses_a_name_that_does_not_resolve(
    answer: list[str] | Exception,
) -> None:
    policy = dataclasses.replace(STRICT, resolver=ScriptedResolver(answer))

    with pytest.raises(TargetRefused) as raised:
        await check_target("https://hooks.partner.test/hook", policy)

    assert raised.value.code == RefusalCode.HOST_UNRESOLVED


async def test_check_target_accepts_a_name_with_public_addresses_only() -> None:
    resolver = ScriptedResolver([PUBLIC, "2606:4700::1111"])

    await check_target(
        "https://hooks.partner.test:8443/hook", dataclasses.replace(STRICT, resolver=resolver)
    )

    assert resolver.calls == [("hooks.partner.test", 8443)]


async def test_check_target_judges_a_literal_address_without_resolving() -> None:
    resolver = ScriptedResolver(["10.0.0.5"])

    await check_target(f"https://{PUBLIC}/hook", dataclasses.replace(STRICT, resolver=resolver))

    assert resolver.calls == []


async def test_plain_http_to_a_name_needs_every_address_on_loopback() -> None:
    policy = dataclasses.replace(LOOPBACK, resolver=ScriptedResolver(["127.0.0.1", PUBLIC]))

    with pytest.raises(TargetRefused) as raised:
        await check_target("http://receiver.test:8000/hook", policy)

    assert raised.value.code == RefusalCode.URL_INVALID


async def test_check_target_resolves_localhost_with_the_system_resolver() -> None:
    await check_target("http://localhost:8000/hook", LOOPBACK)

    with pytest.raises(TargetRefused):
        await check_target("https://localhost/hook", STRICT)


# --- the connection goes to the address judged -----------------------------


async def test_dns_rebinding_to_loopback_is_refused_at_connection_time() -> None:
    resolver = ScriptedResolver([PUBLIC], ["127.0.0.1"])
    policy = dataclasses.replace(STRICT, resolver=resolver)

    async with tcp_server(asyncio.Event()) as (port, connections):
        url = f"https://rebind.test:{port}/hook"
        await check_target(url, policy)
        result = await post(policy, url)

    assert (result.status, result.error, result.retryable) == (None, "target_forbidden", False)
    assert connections == []
    assert resolver.calls == [("rebind.test", port), ("rebind.test", port)]


async def test_every_post_resolves_again() -> None:
    resolver = ScriptedResolver(["127.0.0.1"], ["10.0.0.5"])
    policy = dataclasses.replace(LOOPBACK, resolver=resolver)

    async with tcp_server(asyncio.Event()) as (port, connections), outbound(policy) as client:
        first = await client.post(f"http://receiver.test:{port}/hook", {}, b"")
        second = await client.post(f"http://receiver.test:{port}/hook", {}, b"")

    assert (first.error, second.error) == ("timeout", "target_forbidden")
    assert len(connections) == 1


async def test_a_name_is_sent_to_its_resolved_address_with_its_host_header(
    receiver: Receiver, receiver_port: int
) -> None:
    resolver = ScriptedResolver(["127.0.0.1"])
    policy = dataclasses.replace(LOOPBACK, resolver=resolver)

    result = await post(policy, f"http://receiver.test:{receiver_port}/ok")

    assert (result.status, result.error) == (200, None)
    assert [entry.host for entry in receiver.received] == [f"receiver.test:{receiver_port}"]
    assert resolver.calls == [("receiver.test", receiver_port)]


async def test_a_name_that_stops_resolving_is_a_retryable_failure() -> None:
    resolver = ScriptedResolver(socket.gaierror(socket.EAI_AGAIN, "try again"))
    policy = dataclasses.replace(LOOPBACK, resolver=resolver)

    result = await post(policy, "http://receiver.test:8000/hook")

    assert (result.status, result.error, result.retryable) == (None, "unresolved", True)


def _self_signed(name: str, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_to_a_resolved_name_sends_the_name_as_sni_and_verifies_it(
    tmp_path: Path,
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed("receiver.test", tmp_path))
    server_names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    policy = dataclasses.replace(LOOPBACK, resolver=ScriptedResolver(["127.0.0.1"]))

    async with tcp_server(asyncio.Event(), context) as (port, _):
        result = await post(policy, f"https://receiver.test:{port}/hook")

    # The stand-in certificate is trusted by no one, so verification must fail.
    assert (result.status, result.error) == (None, "connect_error")
    assert server_names == ["receiver.test"]


# --- post() checks the URL itself -------------------------------------------


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://10.0.0.1/hook", "target_forbidden"),
        ("https://169.254.169.254/latest/meta-data/", "target_forbidden"),
        ("http://127.0.0.1:8000/hook", "target_forbidden"),
        ("ftp://example.com/hook", "url_invalid"),
        ("http://example.com/hook", "url_invalid"),
    ],
)
async def test_post_refuses_what_check_url_refuses_without_connecting(url: str, error: str) -> None:
    result = await post(STRICT, url)

    assert (result.status, result.error, result.retryable) == (None, error, False)
