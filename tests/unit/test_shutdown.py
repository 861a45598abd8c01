"""The last resort of a hung shutdown (gateway.daemon.shutdown_hung): exit 70 at once, with
every thread's stack and every asyncio task's await on stderr, so the hang can be found from
the journal."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_hung_shutdown_exits_70_and_shows_where_each_thread_was() -> None:
    script = textwrap.dedent(
        """
        import asyncio, threading, time
        from gateway.daemon import shutdown_hung

        def stuck_in_a_device_library():
            time.sleep(60)

        async def awaiting_what_never_comes():
            await asyncio.Event().wait()

        loop = asyncio.new_event_loop()
        # (held, as the daemon's TaskGroup holds its tasks: a task only the loop's weak set
        # knows of is garbage once collected, and then there is nothing to list)
        task = loop.create_task(awaiting_what_never_comes(), name="ingest")
        threading.Thread(target=loop.run_forever, daemon=True).start()
        threading.Thread(target=stuck_in_a_device_library, daemon=True).start()
        time.sleep(0.2)
        shutdown_hung(20.0, loop)
        print("not reached")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 70
    assert "not reached" not in done.stdout
    assert "shutdown did not finish in 20 s" in done.stderr
    assert "stuck_in_a_device_library" in done.stderr  # the hung thread's stack
    assert "task ingest:" in done.stderr  # and what each asyncio task awaits
    assert "awaiting_what_never_comes" in done.stderr
