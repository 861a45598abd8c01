"""Stopping an equipment driver's move handshake while the daemon cancels the driver."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace as NS
from typing import Any

from drivers.equipment import MoveHandshake


def test_a_cancel_of_the_stopping_task_is_not_swallowed_while_the_booking_winds_down() -> None:
    """The daemon cancels a driver whose close() is stopping a booking that takes a moment to
    end. The old stop() awaited the booking inside suppress(CancelledError), so the daemon's
    cancel was swallowed and the driver task lived on past its shutdown (seen as a 25 s SIGTERM
    grace in the kill -9 chaos test)."""

    async def booking() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(0.2))  # winding down: an ack being written
            raise

    async def main() -> tuple[bool, bool]:
        handshake = MoveHandshake(NS(name="robot"), "cursor")  # type: ignore[arg-type]
        handshake._task = asyncio.create_task(booking())
        await asyncio.sleep(0)
        after_stop: list[Any] = []

        async def close() -> None:
            await handshake.stop()
            after_stop.append("went on")  # must not be reached: this task was cancelled

        closing = asyncio.create_task(close())
        await asyncio.sleep(0.05)
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        return closing.cancelled(), bool(after_stop)

    cancelled, went_on = asyncio.run(main())
    assert cancelled and not went_on


def test_stop_ends_a_booking_and_returns_when_nobody_cancels_the_stopping_task() -> None:
    async def main() -> bool:
        handshake = MoveHandshake(NS(name="robot"), "cursor")  # type: ignore[arg-type]
        handshake._task = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        await handshake.stop()
        return handshake._task.cancelled()

    assert asyncio.run(main())
