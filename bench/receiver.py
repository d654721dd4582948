"""The partner's webhook receiver of scenario (w): a process of its own that answers 200 at once.

A few lines of asyncio, not a web framework: on the bench's two cores the
receiver's own CPU is taken from the API, so it should cost as little as a
partner's would. It stamps each delivery when its whole body has arrived
(``time.perf_counter``: CLOCK_MONOTONIC on Linux, the same clock in every
process, so the load generator compares it with its own), answers
``200`` with an empty body, and only then reads the event's type and order.
It does not verify signatures: the bench measures branchpay's side, and
``tests/services/test_webhooks.py`` verifies them.

Besides ``POST /hook`` (the endpoint the bench registers), three reads for the bench:

- ``GET /received``: every delivery so far, ``[at, wall, type, orderId, eventTimestamp]``
  (``wall`` and the event's ``timestamp`` are Unix seconds, for the lag from the write);
- ``GET /count/{type}``: how many of that type arrived, and when the last did;
- ``GET /wait/{type}/{orderId}``: held until that order's event of that type has
  arrived (or ``WAIT_SECONDS`` passed: 504), then ``{"at": ...}``, its arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from api.dev.devdb import free_port
from bench.server import listening_process

WAIT_SECONDS = 30.0
HOOK_PATH = "/hook"
MAX_BODY = 1024 * 1024

# One delivery as the receiver saw it: arrival (perf_counter), arrival (Unix), type, order id,
# the event's own timestamp (Unix, when the change was written).
Delivery = tuple[float, float, str, str, float]


class Receiver:
    """What arrived, and who waits for what."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._arrived: dict[tuple[str, str], float] = {}
        self._waiting: dict[tuple[str, str], asyncio.Event] = {}

    def record(self, at: float, wall: float, body: bytes) -> None:
        try:
            event = json.loads(body)
            kind, order = str(event["type"]), str(event["data"]["order"]["id"])
            written = datetime.fromisoformat(event["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            kind, order, written = "unreadable", "", float("nan")
        self.deliveries.append((at, wall, kind, order, written))
        self._arrived.setdefault((kind, order), at)
        if (waiting := self._waiting.pop((kind, order), None)) is not None:
            waiting.set()

    async def arrival(self, kind: str, order: str) -> float | None:
        if (kind, order) not in self._arrived:
            waiting = self._waiting.setdefault((kind, order), asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiting.wait(), WAIT_SECONDS)
        return self._arrived.get((kind, order))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after the other until the peer closes it."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _version = request_line.split(" ", 2)
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in header_lines if line)
                }
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    writer.write(_answer(413, b""))
                    break
                body = await reader.readexactly(length) if length else b""
                if method == "POST" and target == HOOK_PATH:
                    at, wall = time.perf_counter(), time.time()
                    writer.write(_answer(200, b""))
                    await writer.drain()
                    self.record(at, wall, body)
                else:
                    writer.write(await self._read(method, target))
                    await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _read(self, method: str, target: str) -> bytes:
        parts = target.strip("/").split("/")
        if method == "GET" and parts == ["received"]:
            return _answer(200, json.dumps(self.deliveries).encode())
        if method == "GET" and len(parts) == 2 and parts[0] == "count":
            of_kind = [
                at for at, _wall, kind, _order, _written in self.deliveries if kind == parts[1]
            ]
            last = of_kind[-1] if of_kind else None
            return _answer(200, json.dumps({"count": len(of_kind), "last": last}).encode())
        if method == "GET" and len(parts) == 3 and parts[0] == "wait":
            at = await self.arrival(parts[1], parts[2])
            if at is None:
                return _answer(504, b'{"error": "not received"}')
            return _answer(200, json.dumps({"at": at}).encode())
        return _answer(404, b"")


def _answer(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 404: "Not Found", 413: "Content Too Large", 504: "Gateway Timeout"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, '')}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _serve_forever(port: int) -> None:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def running_receiver(log_path: Path) -> Iterator[str]:
    """The receiver in a process of its own; yields its base URL once it listens."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.receiver", "--port", str(port)]
    with listening_process(command, port, log_path, "the webhook receiver") as url:
        yield url


def received(url: str) -> list[Delivery]:
    """Every delivery the receiver at ``url`` got so far."""
    answer = httpx.get(f"{url}/received", timeout=30.0)
    answer.raise_for_status()
    rows: list[Any] = answer.json()
    return [(float(a), float(w), str(k), str(o), float(t)) for a, w, k, o, t in rows]


def count(url: str, kind: str) -> tuple[int, float | None]:
    """How many deliveries of ``kind`` the receiver got, and the arrival of the last one."""
    answer = httpx.get(f"{url}/count/{kind}", timeout=30.0)
    answer.raise_for_status()
    figures: dict[str, Any] = answer.json()
    return int(figures["count"]), figures["last"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.port))


if __name__ == "__main__":
    main()
