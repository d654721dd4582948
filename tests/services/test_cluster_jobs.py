"""Three API processes on one store: each background job's work is done once.

The service under test runs in this process; two more `branchpay serve` processes
join it on the same store, plugins.toml and sandbox simulator. The simulator
counts the API calls it gets (its fault queue sees every authenticated call), a
real webhook receiver counts deliveries, and the store holds the orders' status
histories and the leases.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from providers.kit.simulator import Fault, FaultQueue
from tests.services.conftest import (
    PayService,
    Receiver,
    create_endpoint,
    object_id,
    serve_process,
    webhook_service,
)


class CallLog(FaultQueue):
    """The simulator's fault queue, also recording each API call's path and wall time."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def take(self, operation: str, kinds: Iterable[str] | None = None) -> Fault | None:
        with self.lock:
            self.calls.append((operation, time.time()))
        return super().take(operation, kinds)

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [at for called, at in self.calls if called == path]


def count_calls(service: PayService) -> CallLog:
    log = CallLog()
    service.gateway.faults = log
    return log


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(service: PayService, **env: str) -> subprocess.Popen[bytes]:
        process, _ = serve_process(service, tmp_path, f"serve-{len(started)}", **env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def pending_payment(service: PayService) -> tuple[str, str]:
    """A new order with a PENDING sandbox attempt: (order id, outTradeNo)."""
    order = service.create_order()
    started = service.start_payment(order["id"])
    assert started["userErrors"] == [], started
    return order["id"], started["payment"]["outTradeNo"]


def test_three_processes_expire_deliver_and_requery_each_piece_once(
    start_payments: Callable[..., PayService],
    receiver: Receiver,
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    every = 1.5
    service = webhook_service(
        start_payments,
        expiry_interval_seconds=0.5,
        reconcile_interval_seconds=every,
        reconcile_min_age_seconds=0,
    )
    calls = count_calls(service)
    create_endpoint(service, service.client, receiver.url, ["order.expired"], ["zj"])
    for _ in range(2):
        processes(
            service,
            BRANCHPAY_EXPIRY_INTERVAL_SECONDS="0.5",
            BRANCHPAY_RECONCILE_INTERVAL_SECONDS=str(every),
            BRANCHPAY_RECONCILE_MIN_AGE_SECONDS="0",
            BRANCHPAY_WEBHOOKS_ALLOW_LOOPBACK="1",
            BRANCHPAY_WEBHOOK_POLL_SECONDS="0.2",
        )
    waiting = [pending_payment(service) for _ in range(2)]
    expiring = [pending_payment(service) for _ in range(8)]
    # Their time runs out at once, for all three processes to find.
    service.db.orders.update_many(
        {"_id": {"$in": [object_id(order_id) for order_id, _ in expiring]}},
        {"$set": {"expiresAt": datetime.now(UTC) - timedelta(seconds=1)}},
    )
    wait_until(
        lambda: all(service.order_doc(o)["status"] == "EXPIRED" for o, _ in expiring),
        60,
        "every expiring order EXPIRED",
    )
    received = receiver.wait_for(lambda got: len(got) >= len(expiring), timeout=60)
    # The other processes had their chances to expire or deliver twice: give them some more.
    wait_until(lambda: len(calls.times(f"/api/payments/{waiting[0][1]}")) >= 4, 60, "4 sweeps")
    for order_id, out_trade_no in expiring:
        history = [h["status"] for h in service.order_doc(order_id)["statusHistory"]]
        assert history.count("EXPIRED") == 1, history
        # One sweep closed the attempt at its platform, not one per process.
        assert len(calls.times(f"/api/payments/{out_trade_no}/close")) == 1
        events = list(
            service.db.webhook_events.find(
                {"orderId": object_id(order_id), "type": "order.expired"}
            )
        )
        assert len(events) == 1, events
    delivered = [r.event["data"]["order"]["id"] for r in receiver.received]
    assert sorted(delivered) == sorted(o for o, _ in expiring), received
    # Each sweep asks the platform once about each PENDING attempt: one sweep at a time,
    # the next one `every` after the last one finished, whichever process runs it.
    for _, out_trade_no in waiting:
        times = calls.times(f"/api/payments/{out_trade_no}")
        # How many sweeps fit depends on the machine's load (3 on a loaded CI); two give a gap.
        assert len(times) >= 2, times
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= every - 0.05, gaps


def lease(service: PayService, name: str) -> dict[str, object] | None:
    return service.db.leases.find_one({"_id": f"job:{name}"})


def pid_of(owner: object) -> int:
    return int(str(owner).split(":")[1])


def test_a_killed_holder_leaves_its_sweep_to_another_once_its_lease_expires(
    start_payments: Callable[..., PayService],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    # This process takes no part in the reconciliation (its interval is an hour).
    service = start_payments()
    calls = count_calls(service)
    env = {
        "BRANCHPAY_RECONCILE_INTERVAL_SECONDS": "1",
        "BRANCHPAY_RECONCILE_MIN_AGE_SECONDS": "0",
        "BRANCHPAY_JOB_LEASE_SECONDS": "2",
    }
    workers = {process.pid: process for process in (processes(service, **env) for _ in range(2))}
    order_id, out_trade_no = pending_payment(service)
    query = f"/api/payments/{out_trade_no}"
    wait_until(lambda: len(calls.times(query)) >= 1, 30, "a first sweep")
    # The next query stalls at the platform, which meanwhile has been paid.
    faults = httpx.post(f"{service.gateway_url}/control/faults", json={"delay": 120})
    faults.raise_for_status()
    service.settle(out_trade_no)
    asked = len(calls.times(query))
    wait_until(lambda: len(calls.times(query)) > asked, 30, "the stalled query")
    holder = lease(service, "reconcile")
    assert holder is not None and pid_of(holder["owner"]) in workers, holder
    # Still held, renewed by its stalled holder, and nothing applied yet.
    time.sleep(2.5)
    held = lease(service, "reconcile")
    assert held is not None and held["owner"] == holder["owner"]
    assert service.order_doc(order_id)["status"] == "PENDING_PAYMENT"
    victim = workers.pop(pid_of(holder["owner"]))
    expires = held["expiresAt"]
    assert isinstance(expires, datetime)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    wait_until(lambda: service.order_doc(order_id)["status"] == "PAID", 30, "the takeover")
    taken = lease(service, "reconcile")
    assert taken is not None and pid_of(taken["owner"]) in workers, taken
    # The survivor queried the attempt again, and only once the dead one's lease ran out.
    takeover = calls.times(query)[asked + 1]
    assert takeover >= expires.timestamp() - 0.05
