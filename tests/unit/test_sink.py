"""GatewaySink's backpressure: a driver thread is held back while the ingest loop is behind."""

from __future__ import annotations

import asyncio
import threading
import time

from gateway.ingest import GatewaySink, ReadsItem
from gateway.model import TagRead

READ = TagRead("3074257BF7194E4000001A85", "r1", 1, -50.0, 1_764_000_000_000_000)


def sink_with_room_for(rows: int) -> GatewaySink:
    return GatewaySink({}, lambda device, health: None, max_queued_reads=rows)


def offer_in_thread(sink: GatewaySink, n: int) -> threading.Thread:
    thread = threading.Thread(target=sink.reads, args=([READ] * n,), daemon=True)
    thread.start()
    return thread


def test_a_driver_thread_waits_while_the_queue_is_full_and_goes_on_when_it_is_taken() -> None:
    sink = sink_with_room_for(100)
    sink.reads([READ] * 100)  # this (test) thread is a driver thread: the queue is now full
    thread = offer_in_thread(sink, 10)
    thread.join(0.3)
    assert thread.is_alive() and sink.rows == 100  # held back, nothing dropped
    taken = sink.take()
    thread.join(2)
    assert not thread.is_alive()
    assert sum(len(item.reads) for item in taken if isinstance(item, ReadsItem)) == 100
    assert sink.rows == 10
    assert sink.held_back_s >= 0.3


def test_release_lets_every_held_thread_go_and_nothing_waits_after() -> None:
    sink = sink_with_room_for(10)
    sink.reads([READ] * 10)
    thread = offer_in_thread(sink, 5)
    thread.join(0.2)
    assert thread.is_alive()
    sink.release()
    thread.join(2)
    assert not thread.is_alive() and sink.rows == 15
    started = time.monotonic()
    sink.reads([READ] * 5)  # over the bound, released: not held
    assert time.monotonic() - started < 0.5 and sink.rows == 20


def test_the_event_loops_own_thread_is_never_held() -> None:
    async def main() -> int:
        sink = sink_with_room_for(10)
        sink.bind(asyncio.get_running_loop(), asyncio.Event())
        sink.reads([READ] * 10)
        sink.reads([READ] * 10)  # an async driver (replay) on the loop: would deadlock if held
        return sink.rows

    assert asyncio.run(asyncio.wait_for(main(), 5)) == 20
