"""LLRP 1.0.1 reader simulator: several readers, each an asyncio TCP server on its own port,
modelled on an Impinj Speedway R420 (whose real capabilities and config responses it serves),
or, with `ReaderSpec(profile="zebra")`, on a Zebra FX reader (profiles.py). `stale_session_s`
starts a reader held by a client gone without closing (new clients are refused until then).

It never imports drivers/ nor sllurp at runtime: `codec.py` is its own encoder/decoder.

In-process use (tests)::

    from simulators.llrp import ReaderSpec, SimServer

    sim = SimServer([ReaderSpec("dock-07", reads=[(0.5, 1, "3034...", -52)])], speed=1.0)
    with sim.running() as sim:                       # own loop on a daemon thread
        port = sim.reader("dock-07").port
        wait_for(lambda: sim.reader("dock-07").active)   # a client is inventorying
        sim.reader("dock-07").add_reads_in(0.1, [(2, "3034...", -60)])
        sim.reader("dock-07").set_fault("drop_mid_frame")
        sim.reader("dock-07").set_fault("refuse", seconds=3)
        sim.reader("dock-07").set_fault("clear")
        sim.reader("dock-07").status()               # connected, active, rospecs, faults, stats

or `async with SimServer(...) as sim:` inside a running loop. The SimReader methods are
thread-safe (they run on the simulator's loop).

Reads: `(t_s, antenna, epc_hex, rssi_dbm)` with t relative to the simulator's start; each is
reported t_s/speed seconds after start, with First/LastSeenTimestampUTC = start_epoch_us +
t_s*1e6/speed. Reads due in the same playback round go out in one RO_ACCESS_REPORT. Reads due
while no client is connected or no ROSpec is active are dropped and counted
(stats["reads_dropped_no_client" | "reads_dropped_no_rospec_active" | "reads_dropped_silent"]).
`Generator(tags, rate, tags_per_report)` instead pushes N distinct tags at a target rate.

Faults (`SimReader.set_fault(name, seconds=None, kind=None)` or
`POST /readers/NAME/fault {"fault": name, "seconds": s, "kind": k}` on the control port):

- ``drop``: abort the connection (one-shot; fires now, or as soon as a client connects).
- ``drop_mid_frame``: the next RO_ACCESS_REPORT is cut after half its bytes, then the
  connection closes (one-shot; fires with the next report).
- ``malformed``: send one frame no client can parse (one-shot, like drop): kind ``length``
  (default; a length of ~2 GB, the client waits forever), ``type`` (unknown message type) or
  ``short`` (length below the header size).
- ``silent``: keep the socket open, send nothing (no responses, reports, keepalives, not even
  the connection event of a new client), read and ignore everything; lasts until ``clear``.
- ``refuse``: accept and at once close new connections for `seconds` (default 5).
- ``no_mode_table``: answer GET_READER_CAPABILITIES without UHFC1G2RFModeTable (until clear).
- ``clear``: end every fault; a silent session that never got its connection event gets it now.
"""

from simulators.llrp.server import (
    FAULTS,
    FaultError,
    Generator,
    Read,
    ReaderSpec,
    SimReader,
    SimServer,
)

__all__ = ["FAULTS", "FaultError", "Generator", "Read", "ReaderSpec", "SimReader", "SimServer"]
