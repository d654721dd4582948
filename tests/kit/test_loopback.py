"""LoopbackServer: serves an ASGI app on loopback, reports its URL, stops cleanly."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from providers.kit.loopback import LoopbackServer


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello {request.url.path}")


def _app() -> Starlette:
    return Starlette(routes=[Route("/{rest:path}", _hello)])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_free_port_serves_until_stopped() -> None:
    with LoopbackServer(_app()) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert server.port > 0
        response = httpx.get(f"{server.url}/ping")
        assert response.text == "hello /ping"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/ping")


def test_given_port_and_explicit_start_stop() -> None:
    port = _free_port()
    server = LoopbackServer(_app(), port=port).start()
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        with httpx.Client() as client:
            # A keep-alive connection left open must not hold up stop().
            assert client.get(f"{server.url}/a").status_code == 200
            server.stop()
            with pytest.raises(httpx.TransportError):
                client.get(f"http://127.0.0.1:{port}/a")
    finally:
        server.stop()


def test_port_in_use_fails_at_start() -> None:
    with LoopbackServer(_app()) as first, pytest.raises(OSError):
        LoopbackServer(_app(), port=first.port).start()


def test_refuses_non_loopback_address() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoopbackServer(_app(), host="0.0.0.0")


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = LoopbackServer(_app()).url
