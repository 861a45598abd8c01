"""Scenario files for the simulated handheld: what the operator does, on a timeline.

```json
{
  "description": "...",
  "round_s": 0.15,                      // one inventory round while the trigger is held
  "start": "first_command",             // or "now": when the clock starts
  "groups": {                           // named sets of tags in range
    "shelf": [{"epc": "3034...", "rssi": -52},
              {"sgtin": {"company_prefix": "0614141", "item_reference": "812345",
                         "serial_from": 1, "count": 20}, "rssi": -55}]
  },
  "steps": [
    {"at": 0.5, "do": "scan", "barcode": "LOC-SHELF-A1"},
    {"at": 1.0, "do": "pull", "hold_s": 1.5, "tags": ["shelf"]},
    {"at": 3.0, "do": "noise", "bytes": 64},
    {"at": 3.1, "do": "truncate"},       // the next EP: line is cut short
    {"at": 3.2, "do": "garble"},         // lines of junk
    {"at": 3.3, "do": "cut"},            // half a line without its CR LF
    {"at": 3.4, "do": "error", "command": ".iv", "code": 9},
    {"at": 4.0, "do": "vanish", "for_s": 1.0}
  ]
}
```
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema

from simulators.tsl.reader import SimulatedReader, TagInRange

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["steps"],
    "additionalProperties": False,
    "properties": {
        "description": {"type": "string"},
        "round_s": {"type": "number", "exclusiveMinimum": 0},
        "start": {"enum": ["first_command", "now"]},
        "seed": {"type": "integer"},
        "groups": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
        },
        "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
    },
    "$defs": {
        "tag": {
            "type": "object",
            "properties": {
                "epc": {"type": "string", "pattern": "^[0-9A-Fa-f]{4,124}$"},
                "rssi": {"type": "number", "maximum": 0, "minimum": -128},
                "sgtin": {
                    "type": "object",
                    "required": ["company_prefix", "item_reference", "serial_from", "count"],
                    "properties": {
                        "company_prefix": {"type": "string", "pattern": "^[0-9]{6,12}$"},
                        "item_reference": {"type": "string", "pattern": "^[0-9]{1,7}$"},
                        "serial_from": {"type": "integer", "minimum": 0},
                        "count": {"type": "integer", "minimum": 1},
                        "filter": {"type": "integer", "minimum": 0, "maximum": 7},
                    },
                },
            },
            "oneOf": [{"required": ["epc"]}, {"required": ["sgtin"]}],
        },
        "step": {
            "type": "object",
            "required": ["at", "do"],
            "properties": {
                "at": {"type": "number", "minimum": 0},
                "do": {
                    "enum": [
                        "scan",
                        "pull",
                        "noise",
                        "truncate",
                        "garble",
                        "cut",
                        "error",
                        "vanish",
                        "tags",
                    ]
                },
                "barcode": {"type": ["string", "null"]},
                "hold_s": {"type": "number", "exclusiveMinimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}},
                "bytes": {"type": "integer", "minimum": 1},
                "command": {"type": "string", "pattern": "^\\.[a-z]{2}$"},
                "code": {"type": "integer", "minimum": 1, "maximum": 255},
                "for_s": {"type": "number", "minimum": 0},
            },
        },
    },
}

# SGTIN-96 partition table (GS1 Tag Data Standard): company prefix digits -> (partition,
# company prefix bits, item reference bits).
_PARTITIONS = {12: (0, 40, 4), 11: (1, 37, 7), 10: (2, 34, 10), 9: (3, 30, 14)}
_PARTITIONS |= {8: (4, 27, 17), 7: (5, 24, 20), 6: (6, 20, 24)}


def sgtin96(company_prefix: str, item_reference: str, serial: int, filter_value: int = 1) -> str:
    """Encode an SGTIN-96 EPC (hex). `item_reference` includes the indicator digit."""
    partition, cp_bits, ir_bits = _PARTITIONS[len(company_prefix)]
    if len(company_prefix) + len(item_reference) != 13:
        raise ValueError("company prefix + item reference must be 13 digits")
    if not 0 <= serial < 1 << 38:
        raise ValueError("SGTIN-96 serials are below 2^38")
    value = 0x30
    value = value << 3 | filter_value
    value = value << 3 | partition
    value = value << cp_bits | int(company_prefix)
    value = value << ir_bits | int(item_reference)
    value = value << 38 | serial
    return f"{value:024X}"


def expand_group(entries: list[dict[str, Any]]) -> list[TagInRange]:
    tags: list[TagInRange] = []
    for entry in entries:
        rssi = float(entry.get("rssi", -55.0))
        if "epc" in entry:
            tags.append(TagInRange(entry["epc"].upper(), rssi))
            continue
        g = entry["sgtin"]
        for serial in range(g["serial_from"], g["serial_from"] + g["count"]):
            epc = sgtin96(g["company_prefix"], g["item_reference"], serial, g.get("filter", 1))
            tags.append(TagInRange(epc, rssi))
    return tags


class ScenarioError(ValueError):
    pass


def load(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise ScenarioError(f"{path}: {where}: {exc.message}") from None
    groups = data.get("groups", {})
    for i, step in enumerate(data["steps"]):
        for name in step.get("tags", []):
            if name not in groups:
                raise ScenarioError(f"{path}: steps/{i}/tags: unknown group {name!r}")
    return data


class ScenarioRunner:
    """Plays a scenario's steps against a reader; `vanish` is delegated to the transport."""

    def __init__(
        self,
        scenario: dict[str, Any],
        reader: SimulatedReader,
        vanish: Callable[[float], None],
        log: Callable[[dict[str, Any]], None] = lambda event: None,
    ) -> None:
        self.scenario = scenario
        self.reader = reader
        self.vanish = vanish
        self.log = log
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self.groups = {k: expand_group(v) for k, v in scenario.get("groups", {}).items()}
        reader.round_s = float(scenario.get("round_s", reader.round_s))
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.scenario.get("start", "first_command") == "now":
            self._launch()
        else:
            self.reader.on_first_command = self._launch

    def _launch(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tsl-sim-scenario", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        t0 = time.monotonic()
        for step in sorted(self.scenario["steps"], key=lambda s: s["at"]):
            if self.stop_event.wait(max(0.0, t0 + step["at"] - time.monotonic())):
                return
            self.log({"event": "step", **step})
            self.play(step)
        self.done.set()
        self.log({"event": "done"})

    def tags_of(self, names: list[str]) -> list[TagInRange]:
        return [tag for name in names for tag in self.groups[name]]

    def play(self, step: dict[str, Any]) -> None:
        r = self.reader
        action = step["do"]
        if action == "scan":
            r.double_press(step.get("barcode"))
        elif action == "pull":
            if "tags" in step:
                r.set_tags(self.tags_of(step["tags"]))
            r.press_and_hold(float(step.get("hold_s", 1.0)), self.stop_event)
        elif action == "tags":
            r.set_tags(self.tags_of(step.get("tags", [])))
        elif action == "noise":
            r.noise(int(step.get("bytes", 32)))
        elif action == "truncate":
            r.truncate_next_epc()
        elif action == "garble":
            r.garble()
        elif action == "cut":
            r.cut_line()
        elif action == "error":
            r.fail_next(step.get("command", ".iv"), int(step.get("code", 1)))
        elif action == "vanish":
            self.vanish(float(step.get("for_s", 1.0)))
