"""The load generator: a separate process keeping a fixed number of requests in flight.

``measure(spec, api_pid)`` starts a fresh process that runs ``concurrency``
workers for ``warmup`` then ``duration`` seconds over one keep-alive
HTTP/1.1 connection each (httpx), or straight against the store for the
driver target. Requests started in the window are counted, and so is a
request that spans the whole window (started in the warm-up, still running
at the close), which a store slower than the window would otherwise leave
the window without. After the close, requests in flight get up to
``min(duration, MAX_DRAIN_SECONDS)`` more to finish; those still running
then are cancelled and counted with their elapsed time as a lower bound
(see ``bench.percentiles``), so a slow store yields "> 15,012 ms", never
nothing. Latencies are kept whole and sorted for exact percentiles. The
process tells the parent when the measured window opens, so the parent reads
the API's CPU seconds at that moment and again when the generator is done.

``measure_together(specs, api_pid)`` runs several generators against one API
at once (the hostile scenario: ordinary traffic, an attacker, a probe): each
sets up its client, then all start on one signal, so their windows open
together; the API's CPU in the window is then shared and reported as a
whole, not per request. A spec with an ``interval`` paces each worker (one
request every ``interval`` seconds, latency counted from when it was due, so
a stall counts against every probe it delays); ``quiet_warmup`` sends
nothing before the window. The ``/healthz`` probe is a bare HTTP/1.1 GET on
a new connection (``scenarios.health_probe``), so a generator short of CPU
does not make the API look slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import multiprocessing
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.synchronize import Event
from typing import Any

import httpx
from httpx_ws import HTTPXWSException as WebSocketException

from bench.percentiles import Latencies, Percentile
from bench.procstat import cpu_seconds, rss_bytes
from bench.scenarios import (
    Answer,
    RoundTripFailed,
    Scenario,
    Spec,
    Target,
    answer,
    health_probe,
    http_request,
    pay_round_trip,
    store_call,
    webhook_round_trip,
)

# Longest a single measurement may take beyond its planned time before the
# parent gives up on the generator process.
GRACE_SECONDS = 120.0
READY = "ready"
WINDOW_OPEN = "window open"
# Generous: with a slow store and many requests in flight, queueing alone takes
# tens of seconds; a request is only abandoned when something is truly stuck.
REQUEST_TIMEOUT = 300.0
IDLE_SAMPLE_SECONDS = 2.0
IDLE_MAX_WINDOWS = 5
IDLE_AGREEMENT = 0.02  # CPU seconds per second
# How long requests in flight at the close may still finish; below GRACE_SECONDS.
MAX_DRAIN_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the generator saw in the measured window."""

    # Completed in time; ``censored`` more were still running when the generator stopped.
    requests: int
    censored: int
    errors: int
    # What went wrong, by exception name or "unexpected answer", with counts.
    failures: dict[str, int]
    # Every request counted, by its answer's label ("served", "pages: 429 RATE_LIMITED").
    answers: dict[str, int]
    seconds: float
    p50: Percentile
    p90: Percentile
    p99: Percentile
    max: Percentile
    generator_cpu: float
    # The measured window, in ``time.perf_counter`` seconds: CLOCK_MONOTONIC on Linux, the
    # same clock in every process, so another process's timestamps can be placed in it.
    window: tuple[float, float] = (math.nan, math.nan)
    # Latencies of named parts of each request counted (``Answer.parts``), in seconds.
    parts: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def part(self, name: str) -> Outcome:
        """The same window with one part of each request as its latency."""
        measured = Latencies.of(self.parts.get(name, ()))
        return replace(
            self,
            requests=len(measured),
            censored=0,
            errors=0,
            failures={},
            answers={},
            p50=measured.percentile(0.50),
            p90=measured.percentile(0.90),
            p99=measured.percentile(0.99),
            max=measured.max,
            parts={},
        )


@dataclass(frozen=True, slots=True)
class Measurement:
    spec: Spec
    outcome: Outcome
    # CPU seconds charged to the process serving the requests during the window,
    # less its idle background rate: the API's tree for HTTP targets, the
    # generator itself for the driver target.
    server_cpu: float
    idle_cpu_rate: float
    rss_before: int | None
    rss_after: int | None
    # The API served other generators in the same window: ``server_cpu`` is theirs
    # together, so there is no figure per request.
    cpu_shared: bool = False

    @property
    def throughput(self) -> float:
        return self.outcome.requests / self.outcome.seconds if self.outcome.seconds else 0.0

    @property
    def cpu_per_request(self) -> float:
        if self.cpu_shared or not self.outcome.requests:
            return math.nan
        return self.server_cpu / self.outcome.requests

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.spec.scenario.value,
            "target": self.spec.target.value,
            "orders": self.spec.orders,
            "database": self.spec.database,
            "concurrency": self.spec.concurrency,
            "durationSeconds": self.spec.duration,
            "requests": self.outcome.requests,
            "censored": self.outcome.censored,
            "errors": self.outcome.errors,
            "failures": self.outcome.failures,
            "answers": self.outcome.answers,
            "throughputPerSecond": self.throughput,
            **_percentile_json("p50", self.outcome.p50),
            **_percentile_json("p90", self.outcome.p90),
            **_percentile_json("p99", self.outcome.p99),
            **_percentile_json("max", self.outcome.max),
            "cpuMsPerRequest": self.cpu_per_request * 1000,
            "apiCpuSeconds": self.server_cpu,
            "cpuShared": self.cpu_shared,
            "idleCpuPerSecond": self.idle_cpu_rate,
            "generatorCpuMsPerRequest": (
                self.outcome.generator_cpu / self.outcome.requests * 1000
                if self.outcome.requests
                else None
            ),
            "rssBeforeBytes": self.rss_before,
            "rssAfterBytes": self.rss_after,
        }


def _percentile_json(name: str, figure: Percentile) -> dict[str, Any]:
    return {f"{name}Ms": figure.seconds * 1000, f"{name}LowerBound": figure.lower_bound}


async def _drive(spec: Spec, parent: Connection, go: Event) -> Outcome:
    async with contextlib.AsyncExitStack() as stack:
        call: Callable[[random.Random], Awaitable[Answer]]
        if spec.target is Target.DRIVER:
            from api.store import Store

            store = Store.connect(spec.mongodb_uri, spec.database)
            stack.push_async_callback(store.close)
            query = store_call(spec, store)

            async def call(rng: random.Random) -> Answer:
                ok = await query(rng)
                return Answer(ok, "served" if ok else "unexpected answer")

        elif spec.scenario is Scenario.HEALTH:
            call = health_probe(spec.base_url)
        else:
            # A round trip (d) holds its subscription's connection while it
            # posts to the API and to the simulator: three per worker; (w) also
            # waits on the webhook receiver.
            connections = {Scenario.PAY: 3, Scenario.WEBHOOK: 4}.get(spec.scenario, 1)
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=spec.base_url,
                    headers=dict(spec.headers),
                    limits=httpx.Limits(
                        max_connections=spec.concurrency * connections,
                        max_keepalive_connections=spec.concurrency * connections,
                    ),
                    timeout=httpx.Timeout(REQUEST_TIMEOUT),
                )
            )

            async def call(rng: random.Random) -> Answer:
                if spec.scenario is Scenario.PAY:
                    paid = await pay_round_trip(client, rng)
                    return Answer(paid, "served" if paid else "unexpected answer")
                if spec.scenario is Scenario.WEBHOOK:
                    return await webhook_round_trip(client, rng, spec)
                request = http_request(spec, rng)
                response = await client.request(request.method, request.path, json=request.json)
                return answer(spec, request, response.status_code, response.content)

        # Set up; then start with every other generator of the same measurement.
        parent.send(READY)
        if not await asyncio.to_thread(go.wait, GRACE_SECONDS):
            raise RuntimeError("no start signal from the bench")
        started = time.perf_counter()
        window_from = started + spec.warmup
        window_to = window_from + spec.duration
        latencies: list[float] = []
        failures: dict[str, int] = {}
        answers: dict[str, int] = {}
        parts: dict[str, list[float]] = {}
        last_done = window_from
        # When each request in flight began (was due, when paced), by a number of its own.
        in_flight: dict[int, float] = {}
        numbers = itertools.count()

        async def send(rng: random.Random, began: float) -> None:
            nonlocal last_done
            number = next(numbers)
            in_flight[number] = began
            failure = None
            label = "served"
            timed: tuple[tuple[str, float], ...] = ()
            try:
                answered = await call(rng)
                label, timed = answered.label, answered.parts
                if not answered.ok:
                    failure = answered.label
            except (
                httpx.HTTPError,
                OSError,
                TimeoutError,
                ValueError,
                RoundTripFailed,
                WebSocketException,
                # httpx-ws runs the socket in a task group, which wraps what it raises.
                ExceptionGroup,
            ) as error:
                failure = label = type(error).__name__
            done = time.perf_counter()
            del in_flight[number]
            if began >= window_from or done >= window_to:
                latencies.append(done - began)
                answers[label] = answers.get(label, 0) + 1
                for name, seconds in timed:
                    parts.setdefault(name, []).append(seconds)
                if failure is not None:
                    failures[failure] = failures.get(failure, 0) + 1
                last_done = max(last_done, done)

        async def worker(index: int) -> None:
            rng = random.Random(spec.seed * 10_000 + index)
            due = window_from if spec.quiet_warmup else started
            while (began := max(due, time.perf_counter())) < window_to:
                if (ahead := due - time.perf_counter()) > 0:
                    await asyncio.sleep(ahead)
                await send(rng, began)
                due = time.perf_counter()

        async def prober(index: int) -> None:
            # A probe goes out when due, whether or not the ones before it came back, as a
            # load balancer's do: a stall delays every probe due in it, and no queue builds
            # behind a slow one. Its latency counts from when it was due.
            rng = random.Random(spec.seed * 10_000 + index)
            # Workers spread their probes evenly over the interval.
            due = started + spec.interval * index / spec.concurrency
            sent: set[asyncio.Task[None]] = set()
            try:
                while due < window_to:
                    if (ahead := due - time.perf_counter()) > 0:
                        await asyncio.sleep(ahead)
                    probe = asyncio.create_task(send(rng, due))
                    sent.add(probe)
                    probe.add_done_callback(sent.discard)
                    due += spec.interval
                await asyncio.gather(*sent)
            finally:
                for probe in sent:
                    probe.cancel()

        async def open_window() -> float:
            await asyncio.sleep(spec.warmup)
            parent.send(WINDOW_OPEN)
            return time.process_time()

        opener = asyncio.create_task(open_window())
        loop = prober if spec.interval else worker
        workers = [asyncio.create_task(loop(i)) for i in range(spec.concurrency)]
        drain_until = window_to + min(spec.duration, MAX_DRAIN_SECONDS)
        finished, running = await asyncio.wait(
            workers,
            timeout=max(0.0, drain_until - time.perf_counter()),
            return_when=asyncio.FIRST_EXCEPTION,
        )
        stopped = time.perf_counter()
        censored = [stopped - began for began in in_flight.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for task in finished:
            task.result()
        cpu_from = await opener
        generator_cpu = time.process_time() - cpu_from
    measured = Latencies.of(latencies, censored)
    return Outcome(
        requests=len(latencies),
        censored=len(censored),
        errors=sum(failures.values()),
        failures=failures,
        answers=answers,
        seconds=last_done - window_from,
        p50=measured.percentile(0.50),
        p90=measured.percentile(0.90),
        p99=measured.percentile(0.99),
        max=measured.max,
        generator_cpu=generator_cpu,
        window=(window_from, window_to),
        parts={name: tuple(values) for name, values in parts.items()},
    )


def _generator_main(spec: Spec, parent: Connection, go: Event) -> None:
    parent.send(asyncio.run(_drive(spec, parent, go)))
    parent.close()


def _receive(
    generator: multiprocessing.process.BaseProcess, pipe: Connection, within: float
) -> Any:
    """The generator's next message; an error as soon as it dies or goes quiet too long."""
    if pipe not in wait([pipe, generator.sentinel], timeout=within) or not pipe.poll():
        raise RuntimeError(
            f"the load generator stopped without reporting (exit code {generator.exitcode})"
        )
    try:
        return pipe.recv()
    except EOFError:
        generator.join()
        raise RuntimeError(
            f"the load generator died (exit code {generator.exitcode}); its error is above"
        ) from None


def idle_cpu_rate(api_pid: int, seconds: float = IDLE_SAMPLE_SECONDS) -> float:
    """CPU seconds per second the API spends with no request: its background work.

    The expiry job, the config watcher and the driver's monitors cost a little
    every second; at a few requests per second that would swamp the figure per
    request, so it is subtracted over the measured window. Sample it before
    any load: a process still draining requests would look busy.

    With ``--workers N`` the API answers /readyz as soon as one worker is up,
    while another may still be importing: windows are sampled until two in a
    row agree (within 0.02 CPU seconds per second), so start-up is not taken
    for background work.
    """
    rates: list[float] = []
    for _ in range(IDLE_MAX_WINDOWS):
        started, cpu_from = time.perf_counter(), cpu_seconds(api_pid)
        time.sleep(seconds)
        rates.append((cpu_seconds(api_pid) - cpu_from) / (time.perf_counter() - started))
        if len(rates) > 1 and abs(rates[-1] - rates[-2]) < IDLE_AGREEMENT:
            break
    return min(rates[-2:])


def measure(spec: Spec, api_pid: int | None, idle_rate: float = 0.0) -> Measurement:
    """Run ``spec`` in a new process; ``api_pid`` is the API's (None for the driver target).

    ``idle_rate`` is the API's background CPU rate, taken off its CPU in the window.
    """
    return measure_together([spec], api_pid, idle_rate)[0]


def measure_together(
    specs: Sequence[Spec], api_pid: int | None, idle_rate: float = 0.0
) -> list[Measurement]:
    """Run each spec in a process of its own, all starting together, against one API.

    With more than one spec the API's CPU in the window is theirs together: each
    measurement carries the whole figure, marked ``cpu_shared``.
    """
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    generators: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    server_cpu = 0.0
    try:
        for spec in specs:
            pipe, child_end = context.Pipe(duplex=False)
            process: multiprocessing.process.BaseProcess = context.Process(
                target=_generator_main, args=(spec, child_end, go), name="bench-loadgen"
            )
            process.start()
            child_end.close()
            generators.append((process, pipe))
        for process, pipe in generators:
            if _receive(process, pipe, GRACE_SECONDS) != READY:
                raise RuntimeError("the load generator did not get ready")
        go.set()
        for (process, pipe), spec in zip(generators, specs, strict=True):
            if _receive(process, pipe, spec.warmup + GRACE_SECONDS) != WINDOW_OPEN:
                raise RuntimeError("the load generator did not start its measured window")
        window_from, cpu_from = time.perf_counter(), cpu_seconds(api_pid) if api_pid else 0.0
        rss_before = rss_bytes(api_pid) if api_pid else None
        outcomes: list[Outcome] = [
            _receive(process, pipe, spec.duration + GRACE_SECONDS)
            for (process, pipe), spec in zip(generators, specs, strict=True)
        ]
        if api_pid:
            window = time.perf_counter() - window_from
            server_cpu = max(0.0, cpu_seconds(api_pid) - cpu_from - idle_rate * window)
        rss_after = rss_bytes(api_pid) if api_pid else None
    except BaseException:
        # The others would wait for a start or run a whole window for nothing.
        for process, _pipe in generators:
            process.terminate()
        raise
    finally:
        for process, _pipe in generators:
            process.join(timeout=GRACE_SECONDS)
            if process.is_alive():
                process.terminate()
                process.join()
    shared = len(specs) > 1
    return [
        Measurement(
            spec,
            outcome,
            server_cpu if api_pid else outcome.generator_cpu,
            idle_rate,
            rss_before,
            rss_after,
            cpu_shared=shared,
        )
        for spec, outcome in zip(specs, outcomes, strict=True)
    ]
