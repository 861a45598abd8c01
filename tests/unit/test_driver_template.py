"""Driver.run, the one reconnect loop every connected driver uses, with a tiny scripted driver
on a real asyncio loop: the states it shows, the causes it counts, the backoff it sleeps, and
close() called exactly once per attempt, also when run() is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from drivers.base import Driver, SessionEnded
from drivers.runtime import Backoff
from gateway.config import DeviceSettings
from tests.support.helpers import RecordingSink

HANG = "hang"  # a connect() that never returns: only a cancel ends it


class RecordedBackoff(Backoff):
    """A real Backoff, with short delays, that notes the attempt number of every sleep."""

    def __init__(self) -> None:
        super().__init__(initial_s=0.01, cap_s=0.04)
        self.slept_at: list[int] = []

    async def sleep(self) -> float:
        self.slept_at.append(self.attempt)
        return await super().sleep()


class Scripted(Driver):
    """connect() takes its outcomes from a script (an exception to raise, "ok", or HANG);
    serve() hands over data, then loses the connection as `serve_ends` says."""

    def __init__(self, script: list[Any], serve_ends: BaseException | None = None) -> None:
        super().__init__(DeviceSettings("dev-1", "scripted", {}, None), RecordingSink())
        self.recorder: RecordingSink = self.sink  # type: ignore[assignment]
        self.script = script
        self.serve_ends = serve_ends or SessionEnded("connection_lost", "peer closed")
        self.calls: list[str] = []

    def make_backoff(self) -> Backoff:
        return RecordedBackoff()

    async def connect(self) -> None:
        self.calls.append("connect")
        outcome = self.script.pop(0) if self.script else HANG
        if outcome == HANG:
            await asyncio.Event().wait()
        if isinstance(outcome, BaseException):
            raise outcome

    async def serve(self) -> None:
        self.calls.append("serve")
        self.mark_data()
        await asyncio.sleep(0)
        if isinstance(self.serve_ends, BaseException):
            raise self.serve_ends

    async def close(self) -> None:
        self.calls.append("close")

    def states(self) -> list[tuple[str, str | None]]:
        with self.recorder.lock:
            return [(h.state, h.detail) for _, h in self.recorder.states]


async def run_until(driver: Scripted, done: Callable[[], bool]) -> None:
    """Run the driver until `done()`, then cancel it the way the pipeline does."""
    task = asyncio.create_task(driver.run())
    async with asyncio.timeout(10):
        while not done():
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_two_failed_connects_then_a_session_that_drops_then_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = Scripted([SessionEnded("refused", "nobody listens"), ValueError("a bug"), "ok"])
    caplog.set_level(logging.ERROR, logger="drivers.base")
    run(run_until(driver, lambda: driver.calls.count("connect") == 4))

    # Every attempt was closed once, the hanging fourth one by the cancel, and nothing twice.
    assert driver.calls == [
        *("connect", "close"),
        *("connect", "close"),
        *("connect", "serve", "close"),
        *("connect", "close"),
    ]
    # The first "connecting" is the initial state: no transition, nothing published.
    assert driver.states() == [
        ("backoff", "nobody listens"),
        ("connecting", None),
        ("backoff", "internal_error"),
        ("connecting", None),
        ("up", None),
        ("backoff", "peer closed"),
        ("connecting", None),
        ("stopped", None),
    ]
    health = driver.health()
    assert health.reconnects == {"refused": 1, "internal_error": 1, "connection_lost": 1}
    assert health.errors == {"internal": 1}  # the bug is counted and logged, not fatal
    assert health.last_data_us is not None
    assert any("dev-1: unexpected error" in r.getMessage() for r in caplog.records)
    # The backoff grew over the failed connects and started over after the good session.
    assert isinstance(driver.backoff, RecordedBackoff)
    assert driver.backoff.slept_at == [0, 1, 0]


def test_cancel_during_the_backoff_sleep_closes_nothing_twice() -> None:
    driver = Scripted([SessionEnded("refused")] * 1000)
    run(run_until(driver, lambda: driver.calls.count("close") == 3))
    assert driver.calls.count("connect") == driver.calls.count("close")
    assert driver.states()[-1] == ("stopped", None)
    assert driver.health().state == "stopped"


def test_cancel_while_serving_closes_the_connection_once() -> None:
    never_ends = asyncio.Event()

    class Serving(Scripted):
        async def serve(self) -> None:
            self.calls.append("serve")
            await never_ends.wait()

    driver = Serving(["ok"])
    run(run_until(driver, lambda: "serve" in driver.calls))
    assert driver.calls == ["connect", "serve", "close"]
    assert [state for state, _ in driver.states()] == ["up", "stopped"]
    assert not driver.health().reconnects


def test_serve_returning_is_a_lost_connection() -> None:
    class Returning(Scripted):
        async def serve(self) -> None:
            self.calls.append("serve")

    driver = Returning(["ok", "ok"])
    run(run_until(driver, lambda: driver.calls.count("connect") == 3))
    assert driver.health().reconnects == {"connection_lost": 2}
    assert driver.calls.count("connect") == driver.calls.count("close") == 3


def test_a_driver_that_fills_no_step_says_so() -> None:
    driver = Driver(DeviceSettings("dev-2", "bare", {}, None), RecordingSink())

    async def one_attempt() -> None:
        with pytest.raises(NotImplementedError, match="must implement connect"):
            await driver.connect()

    run(one_attempt())
