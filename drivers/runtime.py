"""What every reconnect loop shares: capped, jittered backoff and a blocking call on a daemon
thread. Standard library only, so that the MQTT publisher (and anything else) may use it
without importing the driver interface or any driver."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from typing import Any


class Backoff:
    """Capped exponential backoff with full jitter, reset after a good session.

    Every reconnect loop in the project uses this one (drivers and the MQTT publisher).
    """

    def __init__(self, initial_s: float = 0.5, cap_s: float = 30.0, factor: float = 2.0) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.factor = factor
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * self.factor**self.attempt)
        self.attempt += 1
        # Full jitter, but never less than half the ceiling: keeps reconnect storms apart
        # without ever hammering a device that just refused us.
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay


def raise_if_cancel_swallowed() -> None:
    """Raise the cancellation a library swallowed. Python 3.11's asyncio.wait_for returns the
    result when the awaited future completes just as the task is cancelled, and forgets the
    cancel (pymodbus awaits every answer that way): a driver polling in a loop would then run
    on past the daemon's stop, which waits for it until its shutdown timeout (exit 70). The
    task still counts the request (Task.cancelling()), so a loop can honour it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def run_in_daemon_thread(
    fn: Callable[[], Any],
    name: str,
    *,
    on_cancel: Callable[[], None] | None = None,
    join_timeout_s: float | None = None,
) -> Any:
    """Run a blocking call on a daemon thread of its own and await its result (never the
    shared executor, which a call lasting hours would hog, and a daemon thread never blocks
    interpreter exit, unlike asyncio.to_thread's).

    Cancelling the await calls `on_cancel` (e.g. set the stop flag `fn` watches), then, if
    `join_timeout_s` is given, waits that long for the thread to end; otherwise the thread is
    left to finish alone. Its result or exception after a cancel is dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            outcome = (False, exc)
        else:
            outcome = (True, result)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.cancel()  # a late result is dropped, never logged as "never retrieved"
        if on_cancel is not None:
            on_cancel()
        if join_timeout_s is not None:
            await loop.run_in_executor(None, thread.join, join_timeout_s)
        raise
