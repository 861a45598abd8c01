"""What a handheld's reads mean: cycle counts, returns and finds. Pure logic: no I/O, no clock
of its own (every call gets `now_us`, the gateway clock), one Workflow per handheld device.

The pipeline wires it like this (see docs/messages.md for the message shapes):

    wf = Workflow(device, settings.locations, engine.state_of)
    out = wf.on_reads(batch, now)      # driver's sink.reads for this device
    out = wf.on_event(event, now)      # driver's sink.event (barcode, trigger)
    out = wf.tick(now)                 # every engine tick
    wf.reload(settings.locations)      # SIGHUP: new location labels, bizSteps, dispositions
    for m in out.movements: engine.apply(m); outbox <- movement_body(m)   (stream "movements")
    for body in out.counts: outbox <- body (+ seq/site/gateway)           (stream "counts")
    for body in out.find: publish QoS 0, not through the outbox          (topic "find/{device}")
    for kind in out.feedback: driver.alert(kind)                          ("ok" | "error")
    for line in out.log: log it (operator-facing reason)

Workflows, as issue 5 defines them:
- count: the operator scans a location label (matched against `[locations.NAME] barcode`),
  then holds the trigger; from pull to release (plus a short grace for the reader's last round)
  or count_window_s is one session. Its unique EPCs become one `counts` message, in parts of
  count_part_size EPCs with the same session id, each with the per-GTIN quantities of its
  EPCs. A count is a snapshot for reconciliation, not a movement; but tags the engine places
  elsewhere were just found here, so they also yield `moved` movements (misplaced stock
  found, bizStep cycle_counting). Tags the engine does not know are left to reconciliation.
  A pull without a fresh location scan, or at a location the device may not count, is
  rejected with "error" feedback and a log line, and its reads are never booked.
- returns: every unique tag read is booked into the returns location (bizStep receiving,
  disposition returned: GS1 CBV has no "returning" step): `arrived`, or `moved` if the engine
  had it elsewhere. A tag booked within dedup_window_s, or already there, is not booked again.
- find: no movements. Reads, with their peak RSSI, go out as QoS 0 `find` messages for a
  hot/cold UI; scanning a product barcode (GTIN) or an EPC narrows them to that target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.model import Movement, MovementType, Observed, TagRead, TagState, decode_epc, iso_ms
from gateway.model import new_id as _new_id

if TYPE_CHECKING:
    from drivers.base import DeviceEvent
    from gateway.config import DeviceSettings, LocationSettings

Lookup = Callable[[str], TagState | None]


@dataclass(slots=True)
class WorkflowOutput:
    movements: list[Movement] = field(default_factory=list)
    counts: list[dict[str, Any]] = field(default_factory=list)
    find: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)  # "ok" | "error", for driver.alert()
    log: list[str] = field(default_factory=list)

    def extend(self, other: WorkflowOutput) -> None:
        self.movements += other.movements
        self.counts += other.counts
        self.find += other.find
        self.feedback += other.feedback
        self.log += other.log

    def __bool__(self) -> bool:
        return bool(self.movements or self.counts or self.find or self.feedback or self.log)


@dataclass(slots=True)
class _Seen:
    """The evidence for one tag within a session."""

    reads: int
    rssi_peak: float
    first_us: int
    last_us: int

    def add(self, read: TagRead) -> None:
        self.reads += read.count
        self.rssi_peak = max(self.rssi_peak, read.rssi)
        self.first_us = min(self.first_us, read.time_us)
        self.last_us = max(self.last_us, read.time_us)

    def observed(self) -> Observed:
        return Observed(self.reads, self.rssi_peak, self.first_us, self.last_us)


def _collect(seen: dict[str, _Seen], reads: Sequence[TagRead]) -> None:
    for read in reads:
        s = seen.get(read.epc)
        if s is None:
            seen[read.epc] = _Seen(read.count, read.rssi, read.time_us, read.time_us)
        else:
            s.add(read)


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


class Workflow:
    """One handheld's workflow; which one is `device.options.workflow`."""

    def __init__(
        self,
        device: DeviceSettings,
        locations: Mapping[str, LocationSettings],
        lookup: Lookup,
    ) -> None:
        self.device = device
        self.name = device.name
        self.locations = locations
        self.lookup = lookup
        options = device.options
        self.kind: str = getattr(options, "workflow", "count")
        impl: _Flow
        if self.kind == "count":
            impl = _Count(self, options)
        elif self.kind == "returns":
            impl = _Returns(self, options)
        elif self.kind == "find":
            impl = _Find(self, options)
        else:
            raise ValueError(f"{device.name}: unknown workflow {self.kind!r}")
        self._impl = impl

    def on_reads(self, batch: Sequence[TagRead], now_us: int) -> WorkflowOutput:
        out = self._impl.timers(now_us)
        out.extend(self._impl.reads(batch, now_us))
        return out

    def on_event(self, event: DeviceEvent, now_us: int) -> WorkflowOutput:
        out = self._impl.timers(now_us)
        if event.kind == "barcode":
            code = event.data.get("barcode")
            if isinstance(code, str) and code:
                out.extend(self._impl.barcode(code.strip(), now_us))
        elif event.kind == "trigger":
            state = event.data.get("state")
            if state in ("single", "double", "off"):
                out.extend(self._impl.trigger(state, now_us))
        return out

    def tick(self, now_us: int) -> WorkflowOutput:
        return self._impl.timers(now_us)

    def reload(self, locations: Mapping[str, LocationSettings]) -> list[str]:
        """SIGHUP: the site's new locations (labels, bizStep, disposition) apply from now on.
        The device's own options are a [[readers]] change: they wait for a restart. Returns
        log lines for what could not follow."""
        self.locations = locations
        return self._impl.reload()

    @property
    def busy(self) -> bool:
        """True while a count session is open (e.g. to hold a shutdown briefly)."""
        return isinstance(self._impl, _Count) and self._impl.session is not None


class _Flow:
    def __init__(self, wf: Workflow, options: Any) -> None:
        self.wf = wf
        self.options = options

    def reads(self, batch: Sequence[TagRead], now_us: int) -> WorkflowOutput:
        return WorkflowOutput()

    def barcode(self, code: str, now_us: int) -> WorkflowOutput:
        return WorkflowOutput()

    def trigger(self, state: str, now_us: int) -> WorkflowOutput:
        return WorkflowOutput()

    def timers(self, now_us: int) -> WorkflowOutput:
        return WorkflowOutput()

    def reload(self) -> list[str]:
        """Recompute what was derived from wf.locations."""
        return []


# --- count -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    id: str
    location: str
    started_us: int
    ends_by_us: int  # count_window_s after the pull
    released_us: int | None = None
    seen: dict[str, _Seen] = field(default_factory=dict)


class _Count(_Flow):
    def __init__(self, wf: Workflow, options: Any) -> None:
        super().__init__(wf, options)
        self.allowed: frozenset[str] = frozenset(getattr(options, "allowed_locations", ()) or ())
        self.window_us = _us(getattr(options, "count_window_s", 60.0))
        self.grace_us = _us(getattr(options, "release_grace_s", 0.5))
        self.location_timeout_us = _us(getattr(options, "location_timeout_s", 300.0))
        self.part_size = max(1, int(getattr(options, "count_part_size", 500)))
        self.location: str | None = None
        self.by_barcode: dict[str, str] = {}
        self.reload()
        self.location_at_us = 0
        self.session: _Session | None = None
        # Between a rejected (or window-closed) pull and its release, reads are dropped.
        self.ignoring = False

    def reload(self) -> list[str]:
        self.by_barcode = {
            loc.barcode: name for name, loc in self.wf.locations.items() if loc.barcode is not None
        }
        if self.location is not None and self.location not in self.wf.locations:
            gone, self.location = self.location, None
            return [f"{self.wf.name}: location {gone} is no longer configured; scan a label again"]
        return []

    def allowed_here(self, location: str) -> bool:
        return not self.allowed or location in self.allowed

    def barcode(self, code: str, now_us: int) -> WorkflowOutput:
        out = WorkflowOutput()
        location = self.by_barcode.get(code)
        # Any scan replaces the last location: after a wrong label, counting on at the
        # previous shelf would book the count somewhere the operator is not standing.
        self.location = None
        if location is None:
            out.feedback.append("error")
            out.log.append(f"{self.wf.name}: unknown location barcode {code!r}")
        elif not self.allowed_here(location):
            out.feedback.append("error")
            out.log.append(f"{self.wf.name}: location {location} is not allowed for this device")
        else:
            self.location, self.location_at_us = location, now_us
            out.feedback.append("ok")
            out.log.append(f"{self.wf.name}: at location {location}")
        return out

    def trigger(self, state: str, now_us: int) -> WorkflowOutput:
        out = WorkflowOutput()
        if state == "off":
            self.ignoring = False
            if self.session is not None and self.session.released_us is None:
                self.session.released_us = now_us
            return out
        if self.session is not None and self.session.released_us is not None:
            # Pulled again within the release grace: the last session is over for sure.
            s = self.session
            out.extend(self.close(s, min(s.released_us or now_us, s.ends_by_us)))
        if state != "single" or self.session is not None or self.ignoring:
            return out  # a double press scans a barcode; a held trigger is one session
        reason = self.rejection(now_us)
        if reason is not None:
            self.ignoring = True
            out.feedback.append("error")
            out.log.append(f"{self.wf.name}: count rejected: {reason}")
            return out
        assert self.location is not None
        self.session = _Session(_new_id(), self.location, now_us, now_us + self.window_us)
        return out

    def rejection(self, now_us: int) -> str | None:
        if self.location is None:
            return "no location scanned"
        if now_us - self.location_at_us > self.location_timeout_us:
            self.location = None
            return "location scan expired, scan the location label again"
        if not self.allowed_here(self.location):
            return f"location {self.location} is not allowed for this device"
        return None

    def reads(self, batch: Sequence[TagRead], now_us: int) -> WorkflowOutput:
        if self.session is not None:
            _collect(self.session.seen, batch)
        # Reads with no session (rejected pull, window over, reader not reporting its trigger)
        # are never booked: a count needs a location and a pull.
        return WorkflowOutput()

    def timers(self, now_us: int) -> WorkflowOutput:
        s = self.session
        if s is None:
            return WorkflowOutput()
        if s.released_us is not None and now_us >= s.released_us + self.grace_us:
            return self.close(s, min(s.released_us, s.ends_by_us))
        if now_us >= s.ends_by_us:
            out = self.close(s, s.ends_by_us)
            if s.released_us is None:
                self.ignoring = True
                out.log.append(f"{self.wf.name}: count window elapsed; release the trigger")
            return out
        return WorkflowOutput()

    def close(self, s: _Session, ended_us: int) -> WorkflowOutput:
        self.session = None
        out = WorkflowOutput()
        epcs = sorted(s.seen)
        out.counts = self.count_messages(s, epcs, ended_us)
        out.movements = self.misplaced(s, epcs)
        out.feedback.append("ok")
        line = f"{self.wf.name}: counted {len(epcs)} tags at {s.location}"
        if out.movements:
            line += f"; misplaced stock found: {len(out.movements)} tags moved here"
        out.log.append(line)
        return out

    def count_messages(self, s: _Session, epcs: list[str], ended_us: int) -> list[dict[str, Any]]:
        parts = [epcs[i : i + self.part_size] for i in range(0, len(epcs), self.part_size)]
        parts = parts or [[]]  # an empty shelf is a count too
        messages = []
        for number, part in enumerate(parts, start=1):
            quantities, unidentified = quantities_of(part)
            messages.append(
                {
                    "schema": "fc-edge/count/1",
                    "session": s.id,
                    "part": number,
                    "of": len(parts),
                    "location": s.location,
                    "device": self.wf.name,
                    "started": iso_ms(s.started_us),
                    "ended": iso_ms(ended_us),
                    "total": len(epcs),  # unique EPCs over all parts, to check completeness
                    "epcs": part,
                    "quantities": quantities,  # per GTIN, of this part's EPCs
                    "unidentified": unidentified,  # EPCs of this part with no GTIN
                }
            )
        return messages

    def misplaced(self, s: _Session, epcs: list[str]) -> list[Movement]:
        target = self.wf.locations.get(s.location)
        moves = []
        for epc in epcs:
            state = self.wf.lookup(epc)
            if state is None or not state.present or state.location in (None, s.location):
                continue
            seen = s.seen[epc]
            moves.append(
                Movement(
                    type="moved",
                    epc=epc,
                    from_=state.location,
                    to=s.location,
                    time_us=seen.last_us,
                    source=self.wf.name,
                    via=self.wf.name,
                    biz_step="cycle_counting",
                    disposition=target.disposition if target else None,
                    observed=seen.observed(),
                )
            )
        return moves


def quantities_of(epcs: Sequence[str]) -> tuple[dict[str, int], int]:
    """Per-GTIN quantities of EPCs (SGTINs), and how many had no GTIN."""
    quantities: dict[str, int] = {}
    unidentified = 0
    for epc in epcs:
        item = decode_epc(epc)
        gtin = item.get("gtin") if item else None
        if gtin is None:
            unidentified += 1
        else:
            quantities[gtin] = quantities.get(gtin, 0) + 1
    return dict(sorted(quantities.items())), unidentified


# --- returns -----------------------------------------------------------------------------------


class _Returns(_Flow):
    def __init__(self, wf: Workflow, options: Any) -> None:
        super().__init__(wf, options)
        location = getattr(options, "returns_location", None)
        if location is None or location not in wf.locations:
            raise ValueError(f"{wf.name}: returns workflow needs an existing returns_location")
        self.location: str = location
        self.window_us = _us(getattr(options, "dedup_window_s", 300.0))
        self.booked: dict[str, int] = {}  # epc -> when this workflow booked it
        self.pending_log: list[str] = []
        self.biz_step = self.disposition = ""
        self.pending_log += self.reload()

    def reload(self) -> list[str]:
        settings = self.wf.locations.get(self.location)
        if settings is None:  # only with a [[readers]] change, which waits for a restart
            return [
                f"{self.wf.name}: returns location {self.location} is no longer configured; "
                "booking returns there as before until a restart"
            ]
        self.biz_step = settings.biz_step or "receiving"
        self.disposition = settings.disposition or "returned"
        if settings.disposition not in (None, "returned"):
            return [
                f"{self.wf.name}: returns location {self.location} has disposition "
                f"{settings.disposition!r}, not 'returned'"
            ]
        return []

    def reads(self, batch: Sequence[TagRead], now_us: int) -> WorkflowOutput:
        out = WorkflowOutput(log=self.pending_log)
        self.pending_log = []
        seen: dict[str, _Seen] = {}
        _collect(seen, batch)
        for epc, evidence in seen.items():
            booked_at = self.booked.get(epc)
            if booked_at is not None and now_us - booked_at < self.window_us:
                continue
            state = self.wf.lookup(epc)
            present = state is not None and state.present and state.location is not None
            if present and state is not None and state.location == self.location:
                self.booked[epc] = now_us  # already here: nothing to book, and no lookup again
                continue
            kind: MovementType = "moved" if present else "arrived"
            out.movements.append(
                Movement(
                    type=kind,
                    epc=epc,
                    from_=state.location if present and state is not None else None,
                    to=self.location,
                    time_us=evidence.last_us,
                    source=self.wf.name,
                    via=self.wf.name,
                    biz_step=self.biz_step,
                    disposition=self.disposition,
                    observed=evidence.observed(),
                )
            )
            self.booked[epc] = now_us
        if out.movements:
            out.feedback.append("ok")
            out.log.append(
                f"{self.wf.name}: {len(out.movements)} returned tags booked to {self.location}"
            )
        return out

    def timers(self, now_us: int) -> WorkflowOutput:
        if self.booked:
            expired = [e for e, t in self.booked.items() if now_us - t >= self.window_us]
            for epc in expired:
                del self.booked[epc]
        return WorkflowOutput()


# --- find --------------------------------------------------------------------------------------


class _Find(_Flow):
    def __init__(self, wf: Workflow, options: Any) -> None:
        super().__init__(wf, options)
        self.target_gtin: str | None = None
        self.target_epc: str | None = None

    def barcode(self, code: str, now_us: int) -> WorkflowOutput:
        out = WorkflowOutput()
        if code.isdigit() and len(code) in (8, 12, 13, 14):
            self.target_gtin, self.target_epc = code.zfill(14), None
            out.log.append(f"{self.wf.name}: finding GTIN {self.target_gtin}")
        elif len(code) % 4 == 0 and 8 <= len(code) <= 124 and _is_hex(code):
            self.target_gtin, self.target_epc = None, code.upper()
            out.log.append(f"{self.wf.name}: finding EPC {self.target_epc}")
        else:
            out.feedback.append("error")
            out.log.append(f"{self.wf.name}: {code!r} is neither a GTIN nor an EPC")
            return out
        out.feedback.append("ok")
        return out

    def wanted(self, epc: str) -> bool:
        if self.target_epc is not None:
            return epc == self.target_epc
        if self.target_gtin is not None:
            item = decode_epc(epc)
            return item is not None and item.get("gtin") == self.target_gtin
        return True

    def reads(self, batch: Sequence[TagRead], now_us: int) -> WorkflowOutput:
        seen: dict[str, _Seen] = {}
        _collect(seen, [r for r in batch if self.wanted(r.epc)])
        if not seen:
            return WorkflowOutput()
        tags = [
            {"epc": epc, "rssi": round(s.rssi_peak, 1), "reads": s.reads}
            for epc, s in sorted(seen.items(), key=lambda kv: -kv[1].rssi_peak)
        ]
        body: dict[str, Any] = {
            "schema": "fc-edge/find/1",
            "device": self.wf.name,
            "time": iso_ms(now_us),
            "target": self.target_epc or self.target_gtin,
            "tags": tags,
        }
        return WorkflowOutput(find=[body])


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
