"""Run an ASGI app with uvicorn on a loopback port in a background thread.

Tests and ``make run`` use it to host gateway simulators next to branchpay.
The socket is bound before the thread starts, so ``url`` is known at once even
for a free port (``port=0``), and ``start()`` returns only once uvicorn
accepts connections.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class LoopbackServer:
    """An ASGI app served on ``host:port`` until :meth:`stop` (or the ``with`` block ends)."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 10.0,
    ) -> None:
        if host not in _LOOPBACK_HOSTS:
            raise ValueError(f"LoopbackServer only binds loopback addresses, not {host!r}")
        self.app = app
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        if self._socket is None:
            raise RuntimeError("LoopbackServer is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> LoopbackServer:
        if self._thread is not None:
            raise RuntimeError("LoopbackServer is already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="auto",
            # Keep-alive clients must not hold up stop() for long.
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"loopback-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_until_started()
        return self

    def _wait_until_started(self) -> None:
        assert self._server is not None and self._thread is not None
        step = 0.01
        waited = 0.0
        # uvicorn offers no event to await across threads; poll its flag.
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("the ASGI app failed to start (see the log above)")
            if waited >= self.startup_timeout:
                self.stop()
                raise TimeoutError(f"server did not start within {self.startup_timeout} s")
            self._thread.join(step)
            waited += step

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._server = None
        self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
