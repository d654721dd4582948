"""A cancelled task stops even when the driver swallowed its cancellation (Python 3.11).

On Python 3.11, ``asyncio.wait_for`` with a timeout returns the result instead
of raising CancelledError when the task is cancelled just as the awaited
operation completes (CPython gh-86296; fixed in 3.12 by a new wait_for, not
backported). PyMongo sends every command through such a wait_for, so a task
cancelled during a store call can carry on as if it had not been: with PyMongo
4.20.1 on 3.11.7, about one in five cancellations of a task looping on
``find_one`` under a deadline was lost; none on 3.12.1. The task is still
marked (``Task.cancelling()``), so loops that run until they are cancelled (a
subscription's feed, the background jobs) check it after their store calls.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop and has not yet."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
