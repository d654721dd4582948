"""API keys cached in memory: no store read for a known key, revocations within the second.

Against the real store: the key cache follows the keys' change stream through
the hub; on a store that cannot stream changes (SecantusDB ``--standalone``,
like a MongoDB without a replica set) it falls back to its time to live. Then
the whole service: `branchpay keys revoke` ends a key on three API processes and
closes its open subscriptions with 4403.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketDisconnect
from pymongo import AsyncMongoClient, monitoring

from api.dev import devdb
from api.domain.principal import Role
from api.store.changes import ALL_OPERATIONS, ChangeHub, Watched
from api.store.keys import KeyRing
from tests.conftest import GraphQLClient
from tests.services.conftest import PayServices, order_feed, serve_process

ROOT = Path(__file__).resolve().parents[2]


class KeyReads(monitoring.CommandListener):
    """Counts the finds on api_keys."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "api_keys":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@contextlib.asynccontextmanager
async def following(uri: str, db_name: str, ttl: float) -> AsyncIterator[tuple[KeyRing, KeyReads]]:
    """A KeyRing that follows the keys' stream of its own hub, and its reads of the store."""
    reads = KeyReads()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, event_listeners=[reads]
    )
    ring = KeyRing(client[db_name]["api_keys"])
    hub = ChangeHub(client[db_name], {"api_keys": Watched(ALL_OPERATIONS)}, timeout=2.0)
    follower = asyncio.create_task(ring.follow(hub, ttl=ttl))
    try:
        yield ring, reads
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await hub.aclose()
        await client.drop_database(db_name)
        await client.close()


async def test_a_known_key_is_not_read_again_and_a_revocation_arrives_by_the_stream(
    mongo_uri: str, db_name: str
) -> None:
    async with following(mongo_uri, db_name, ttl=60) as (ring, reads):
        deadline = time.monotonic() + 10
        while ring.live_epoch is None:  # the stream opens
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        revoked: list[str] = []
        ring.on_revoked = revoked.append
        _, key = await ring.create("shop-zj", Role.PARTNER, ["zj"], by="tests")
        for _ in range(5):
            principal = await ring.authenticate(key)
            assert principal is not None and principal.branches == frozenset({"zj"})
        assert reads.count == 1
        # A wrong secret for a known id is refused from memory too.
        assert await ring.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert reads.count == 1

        # Revoked by another process (another client): the stream tells this one.
        other: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        await other[db_name]["api_keys"].update_one(
            {"name": "shop-zj"}, {"$set": {"revokedAt": datetime.now(UTC)}}
        )
        await other.close()
        started = time.monotonic()
        while await ring.authenticate(key) is not None:
            assert time.monotonic() - started < 5, "the revoked key is still served"
            await asyncio.sleep(0.005)
        print(f"\nrevocation seen after {time.monotonic() - started:.3f} s")
        assert revoked == ["shop-zj"]


@pytest.fixture
def standalone_store(tmp_path: Path) -> Iterator[str]:
    """A SecantusDB that presents itself as a standalone server: it refuses change streams."""
    port = devdb.free_port()
    path = tmp_path / "standalone"
    path.mkdir()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("secantusd-py")),
            "--config",
            str(tmp_path / "empty.toml"),
            "--port",
            str(port),
            "--storage-path",
            str(path),
            "--standalone",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (tmp_path / "empty.toml").write_text("")
    try:
        deadline = time.monotonic() + 30
        while not devdb.port_in_use(port):
            assert server.poll() is None and time.monotonic() < deadline, "no standalone store"
            time.sleep(0.05)
        yield devdb.uri_of(port)
    finally:
        server.terminate()
        server.wait(10)


async def test_without_change_streams_a_key_is_trusted_for_its_time_to_live_only(
    standalone_store: str, db_name: str
) -> None:
    ttl = 1.0
    async with following(standalone_store, db_name, ttl=ttl) as (ring, reads):
        _, key = await ring.create("shop-bj", Role.PARTNER, ["bj"], by="tests")
        assert await ring.authenticate(key) is not None
        assert await ring.authenticate(key) is not None
        assert reads.count == 1  # cached, for the time to live
        assert ring.live_epoch is None
        other: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standalone_store)
        await other[db_name]["api_keys"].update_one(
            {"name": "shop-bj"}, {"$set": {"revokedAt": datetime.now(UTC)}}
        )
        await other.close()
        # No stream tells of it; once the time to live has passed the key is read again.
        await asyncio.sleep(ttl)
        assert await ring.authenticate(key) is None
        assert reads.count == 2


def test_a_revocation_through_the_cli_ends_the_key_on_every_process_and_closes_its_sockets(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    services = PayServices(tmp_path, mongo_uri, db_name)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        a = services.start()
        urls = [a.url]
        for name in ("b", "c"):
            process, url = serve_process(a, tmp_path, name)
            processes.append(process)
            urls.append(url)
        env = {
            **os.environ,
            "BRANCHPAY_MONGODB_URI": mongo_uri,
            "BRANCHPAY_DATABASE": db_name,
            "BRANCHPAY_PLUGINS_TOML": str(a.plugins_toml),
        }

        def branchpay(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "api", "keys", *args],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )

        created = branchpay("create", "--role", "partner", "--branch", "zj", "--name", "shop")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        order = a.create_order()
        clients = [GraphQLClient(url, key) for url in urls]
        asyncio.run(_revoked_everywhere(clients, order["id"], branchpay))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)
        services.stop()


async def _revoked_everywhere(clients: list[GraphQLClient], order_id: str, branchpay: Any) -> None:
    async with contextlib.AsyncExitStack() as stack:
        feeds = [await stack.enter_async_context(order_feed(c, order_id)) for c in clients]
        for feed, client in zip(feeds, clients, strict=True):
            first = await feed.next()
            assert first is not None and first["status"] == "PENDING_PAYMENT"
            assert client.data("{ branches { code } }") == {"branches": [{"code": "zj"}]}

        revoked = await asyncio.get_running_loop().run_in_executor(
            None, branchpay, "revoke", "shop"
        )
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()

        async def closed(feed: Any) -> tuple[int, float]:
            with pytest.raises(WebSocketDisconnect) as disconnect:
                await feed.ws.receive_json(timeout=5)
            return disconnect.value.code, time.monotonic() - started

        results = await asyncio.gather(*(closed(feed) for feed in feeds))
        assert [code for code, _ in results] == [4403] * len(feeds)
        async with httpx.AsyncClient(timeout=10) as http:
            for client in clients:
                answer = await http.post(
                    f"{client.base_url}/graphql",
                    json={"query": "{ branches { code } }"},
                    headers={"authorization": f"Bearer {client.key}"},
                )
                assert answer.status_code == 401
        print(f"\nsockets closed with 4403 after {', '.join(f'{t:.3f} s' for _, t in results)}")
