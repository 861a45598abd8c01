"""The outbox's own thread: the only thread that touches SQLite.

gateway/outbox.py is single-threaded by contract (every method but `stats()` on one thread).
OutboxThread keeps that contract by construction: it owns the Outbox and a one-worker
executor, and offers the event loop only coroutines that run the outbox's methods on that
worker, plus `stats()`, which any thread may read. The ingest, delivery and daemon owners hold
an OutboxThread, never the Outbox itself, so none of them can call SQLite from the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.config import OutboxSettings
from gateway.model import Outgoing, TagState
from gateway.outbox import Outbox, OutboxStats, Stored

T = TypeVar("T")


class OutboxThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._outbox: Outbox | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the outbox thread (tests and benches reach the Outbox this way)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def is_open(self) -> bool:
        return self._outbox is not None

    @property
    def outbox(self) -> Outbox:
        """The Outbox itself: for `call()`, or for `stats()` and counters on any thread."""
        if self._outbox is None:
            raise RuntimeError("the outbox is not open")
        return self._outbox

    def stats(self) -> OutboxStats | None:
        """From any thread: the figures as of the last change, or None before the outbox is
        open (outbox.py keeps the snapshot on its thread; no query runs here)."""
        return self._outbox.stats() if self._outbox is not None else None

    # --- start-up -----------------------------------------------------------------------------

    async def open(
        self, path: Path, settings: OutboxSettings
    ) -> tuple[list[TagState], dict[str, int]]:
        """Open the file; return what a restart resumes from: tag states and source cursors."""

        def open_and_read() -> tuple[Outbox, list[TagState], dict[str, int]]:
            outbox = Outbox(
                path,
                max_bytes=settings.max_bytes,
                when_full=settings.when_full,
                synchronous=settings.synchronous,
            )
            return outbox, list(outbox.tag_states()), outbox.cursors()

        self._outbox, states, cursors = await self.call(open_and_read)
        return states, cursors

    # --- the outbox's operations, each on its thread ------------------------------------------

    async def commit(
        self, messages: Sequence[Outgoing], states: Sequence[TagState], cursors: Mapping[str, int]
    ) -> None:
        await self.call(self.outbox.commit, messages, states, cursors)

    async def lease(self, limit: int) -> list[Stored]:
        return await self.call(self.outbox.lease, limit)

    async def rewind(self, rowid: int) -> None:
        await self.call(self.outbox.rewind, rowid)

    async def ack(self, rowids: Sequence[int]) -> None:
        await self.call(self.outbox.ack, rowids)

    async def prune_tag_states(self, absent_before_us: int) -> int:
        return await self.call(self.outbox.prune_tag_states, absent_before_us)

    async def close(self) -> int | None:
        """Close the file and end the thread; returns the messages left waiting (None if the
        outbox never opened)."""
        left: int | None = None
        if self._outbox is not None:
            left = self._outbox.stats().depth
            await self.call(self._outbox.close)
        self._executor.shutdown(wait=True)
        return left
