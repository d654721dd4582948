"""The app's background jobs end when cancelled, even when a job loses the cancellation.

On Python 3.11 ``asyncio.wait_for`` returns the result instead of raising when the
awaited operation completes as the cancel arrives (PyMongo's connection set-up awaits
one): the job returns normally with the cancel spent. The loop must still end, or the
app's shutdown waits for it for ever (issue 11: the second `make run` that hung).
"""

from __future__ import annotations

import asyncio

from api.web.app import _every


async def test_a_job_that_loses_its_cancellation_still_ends_the_loop() -> None:
    started = asyncio.Event()
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        loop = asyncio.get_running_loop()
        operation = loop.create_future()
        started.set()
        loop.call_soon(operation.set_result, None)  # completes as the cancel arrives
        await asyncio.wait_for(operation, timeout=10)

    task = asyncio.create_task(_every(60, job, "test"))
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled()
    assert runs == 1


async def test_a_job_cancelled_in_its_sleep_ends_the_loop() -> None:
    ran = asyncio.Event()

    async def job() -> None:
        ran.set()

    task = asyncio.create_task(_every(60, job, "test"))
    await ran.wait()
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled()
