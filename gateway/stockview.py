"""Stock by location from the movement streams of every gateway of a site: what `fc-edge
listen` keeps, and the rule an IMS needs once a site runs more than one gateway.

Each gateway speaks only for its own readers: it announces a tag `arrived` when one of its
zones first sees it and `departed` when its zones have not read it for `departed_after_s`. A
tag carried from gateway A's zone to gateway B's zone therefore shows up as two unrelated
events on two streams — A's `departed` (to = null) and B's `arrived` (from = null) — in either
order: B usually confirms the arrival long before A gives the tag up.

The rule (docs/messages.md, "Several gateways on one site"):

- Each gateway's word about a tag is a *claim*: the location its last `arrived`/`moved` named,
  since that movement's `time`. A gateway's `departed` withdraws only its own claim; it cannot
  say anything about where another gateway has seen the tag since.
- The tag's location is the claim with the newest `time` (event time, not the order in which
  messages came). So A's late `departed` cannot take the tag away from B, whichever came first.
- A *cross-gateway move* is an `arrived` with `from` null, or a `moved`, at gateway B for a tag
  whose last known place — its current location, or where it was last departed by absence
  (to = null) — belongs to another gateway. An arrival through a portal from an offsite
  location is an arrival from there, not a cross-gateway move.

Times are compared as the messages' ISO 8601 UTC strings: every gateway writes them in one
fixed-width form (`gateway.model.iso_ms`), in which text order is time order.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (key TEXT, gateway TEXT, location TEXT, since TEXT,
    PRIMARY KEY (key, gateway)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gone (key TEXT PRIMARY KEY, gateway TEXT, location TEXT, time TEXT)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cross_moves (key TEXT, from_gateway TEXT, from_location TEXT,
    to_gateway TEXT, to_location TEXT, time TEXT);
"""


class Place(NamedTuple):
    """Where one gateway has (or last had) a tag, and since when."""

    gateway: str
    location: str
    time: str


@dataclass(frozen=True, slots=True)
class CrossMove:
    """A tag that one gateway gave up (or still holds) and another gateway found."""

    key: str
    from_gateway: str
    from_location: str
    to_gateway: str
    to_location: str
    time: str

    def as_event(self) -> dict[str, Any]:
        return {
            "event": "cross_gateway_move",
            "key": self.key,
            "from_gateway": self.from_gateway,
            "from": self.from_location,
            "to_gateway": self.to_gateway,
            "to": self.to_location,
            "time": self.time,
        }


class StockView:
    """The stock of one site, kept in `db` (the listener's SQLite state, or memory)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(SCHEMA)

    def apply(self, m: dict[str, Any]) -> CrossMove | None:
        """Book one movement; the cross-gateway move it completes, if any."""
        key = m.get("epc") or m.get("object_id")
        gateway, location, time = m.get("gateway"), m.get("to"), m.get("time")
        if not (key and isinstance(gateway, str) and isinstance(time, str)):
            return None  # not a movement a stock can place (schema-checked upstream)
        if m.get("type") == "departed":
            self._withdraw(key, gateway, m.get("from"), location, time)
            return None
        if not isinstance(location, str):
            return None
        before = self.where(key)
        last_gone = self._gone(key)
        self.db.execute(
            "INSERT INTO claims VALUES (?, ?, ?, ?) ON CONFLICT(key, gateway) DO UPDATE SET"
            " location = excluded.location, since = excluded.since",
            (key, gateway, location, time),
        )
        self.db.execute("DELETE FROM gone WHERE key = ?", (key,))
        now = Place(gateway, location, time)
        if self.where(key) != now or not _found_elsewhere(m):
            return None  # a newer claim elsewhere still stands, or it came from offsite
        prior = before or last_gone
        if prior is None or prior.gateway == gateway:
            return None
        move = CrossMove(key, prior.gateway, prior.location, gateway, location, time)
        self.db.execute("INSERT INTO cross_moves VALUES (?, ?, ?, ?, ?, ?)", _row(move))
        return move

    def _withdraw(self, key: str, gateway: str, left: object, to: object, time: str) -> None:
        """A gateway's departure ends its own claim only. Departed by absence (to = null), the
        tag may turn up at another gateway: remember where it was last seen."""
        self.db.execute("DELETE FROM claims WHERE key = ? AND gateway = ?", (key, gateway))
        if to is None and isinstance(left, str) and self.where(key) is None:
            self.db.execute(
                "INSERT OR REPLACE INTO gone VALUES (?, ?, ?, ?)", (key, gateway, left, time)
            )
        else:  # it left through a portal to an offsite location, or another gateway has it
            self.db.execute("DELETE FROM gone WHERE key = ?", (key,))

    def where(self, key: str) -> Place | None:
        """The tag's location now: its newest claim (ties: the greater gateway id, so that
        every consumer of the same messages agrees)."""
        row = self.db.execute(
            "SELECT gateway, location, since FROM claims WHERE key = ?"
            " ORDER BY since DESC, gateway DESC LIMIT 1",
            (key,),
        ).fetchone()
        return Place(*row) if row else None

    def _gone(self, key: str) -> Place | None:
        row = self.db.execute(
            "SELECT gateway, location, time FROM gone WHERE key = ?", (key,)
        ).fetchone()
        return Place(*row) if row else None

    def stock(self) -> dict[str, int]:
        """Tags per location, each tag counted once, where its newest claim puts it."""
        rows = self.db.execute(
            "SELECT location, COUNT(*) FROM claims c WHERE NOT EXISTS (SELECT 1 FROM claims n"
            " WHERE n.key = c.key AND (n.since, n.gateway) > (c.since, c.gateway))"
            " GROUP BY location ORDER BY location"
        )
        return dict(rows)

    def cross_moves(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM cross_moves").fetchone()[0])


def _found_elsewhere(m: dict[str, Any]) -> bool:
    """A move between on-site locations, or a first sighting that came through no portal."""
    return m.get("type") == "moved" or (m.get("type") == "arrived" and m.get("from") is None)


def _row(move: CrossMove) -> tuple[str, ...]:
    return (
        move.key,
        move.from_gateway,
        move.from_location,
        move.to_gateway,
        move.to_location,
        move.time,
    )
