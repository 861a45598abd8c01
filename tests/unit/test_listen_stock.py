"""The stock view of `fc-edge listen` across gateways (gateway/stockview.py): a tag carried
from gateway A's zone to gateway B's zone is one `departed` (to = null) on A's stream and one
`arrived` (from = null) on B's, in either order; the view must end with the tag at B, once."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.listen import Listener, ListenState, parse_args
from gateway.stockview import CrossMove, StockView

EPC = "30352BD364424C80000003EB"


def mv(gateway: str, kind: str, t: int, to: str | None, frm: str | None = None, **kw: Any) -> dict:
    """A movement as a gateway publishes it (the fields the stock view reads), at second t."""
    return {
        "schema": "fc-edge/movement/1",
        "gateway": gateway,
        "type": kind,
        "epc": kw.get("epc", EPC),
        "object_id": None,
        "from": frm,
        "to": to,
        "time": f"2026-12-07T04:00:{t:02d}.000Z",
    }


def view() -> StockView:
    return StockView(sqlite3.connect(":memory:", isolation_level=None))


# A carried tag: A saw it in ZONE-A from t=1 (last read t=6, departed by absence); B found it
# in ZONE-B at t=8.
A_ARRIVES = mv("gw-a", "arrived", 1, "ZONE-A")
A_DEPARTS = mv("gw-a", "departed", 6, None, "ZONE-A")
B_ARRIVES = mv("gw-b", "arrived", 8, "ZONE-B")


def test_one_gateway_arrives_moves_and_departs() -> None:
    v = view()
    v.apply(mv("gw-a", "arrived", 1, "DOCK", "YARD"))
    assert v.stock() == {"DOCK": 1}
    v.apply(mv("gw-a", "moved", 3, "STAGING", "DOCK"))
    assert v.stock() == {"STAGING": 1}
    v.apply(mv("gw-a", "departed", 9, "TRUCK", "STAGING"))
    assert v.stock() == {} and v.cross_moves() == 0


def test_arrival_at_b_before_a_gives_the_tag_up_is_a_cross_gateway_move() -> None:
    v = view()
    assert v.apply(A_ARRIVES) is None
    move = v.apply(B_ARRIVES)
    assert move == CrossMove(EPC, "gw-a", "ZONE-A", "gw-b", "ZONE-B", B_ARRIVES["time"])
    assert v.stock() == {"ZONE-B": 1}
    # A's departure comes later but happened earlier: it withdraws A's claim only.
    assert v.apply(A_DEPARTS) is None
    assert v.stock() == {"ZONE-B": 1} and v.cross_moves() == 1


def test_departure_at_a_before_arrival_at_b_is_the_same_cross_gateway_move() -> None:
    v = view()
    v.apply(A_ARRIVES)
    v.apply(A_DEPARTS)
    assert v.stock() == {}
    move = v.apply(B_ARRIVES)
    assert move is not None and (move.from_gateway, move.from_location) == ("gw-a", "ZONE-A")
    assert v.stock() == {"ZONE-B": 1} and v.cross_moves() == 1


def test_any_interleaving_of_the_two_streams_ends_with_the_same_stock() -> None:
    """Each stream keeps its own order (seq); between streams anything goes."""
    a = [
        A_ARRIVES,
        mv("gw-a", "moved", 3, "ZONE-A2", "ZONE-A"),
        mv("gw-a", "departed", 6, None, "ZONE-A2"),
    ]
    b = [B_ARRIVES, mv("gw-b", "moved", 12, "ZONE-B2", "ZONE-B")]
    stay = [
        mv("gw-a", "arrived", 2, "ZONE-A", epc="E2"),
        mv("gw-b", "arrived", 4, "ZONE-B", epc="E3"),
    ]
    stocks, moves = set(), set()
    for positions in itertools.combinations(range(len(a) + len(b)), len(a)):
        v = view()
        for m in stay:
            v.apply(m)
        ia, ib = iter(a), iter(b)
        for i in range(len(a) + len(b)):
            v.apply(next(ia) if i in positions else next(ib))
        stocks.add(tuple(sorted(v.stock().items())))
        # The move is seen as one when A's word that it had the tag came before B's arrival
        # (B's arrival is then first in B's stream: position 0 went to A).
        moves.add((0 in positions, v.cross_moves()))
    assert stocks == {(("ZONE-A", 1), ("ZONE-B", 1), ("ZONE-B2", 1))}
    assert moves == {(True, 1), (False, 0)}  # the stock is right either way


def test_a_late_move_at_a_older_than_the_arrival_at_b_does_not_take_the_tag_back() -> None:
    v = view()
    v.apply(A_ARRIVES)
    v.apply(B_ARRIVES)
    assert v.apply(mv("gw-a", "moved", 5, "ZONE-A2", "ZONE-A")) is None
    assert v.stock() == {"ZONE-B": 1}
    # ...but a move at A newer than B's word is where the tag went next.
    move = v.apply(mv("gw-a", "moved", 20, "ZONE-A3", "ZONE-A2"))
    assert move is not None and (move.from_gateway, move.to_location) == ("gw-b", "ZONE-A3")
    assert v.stock() == {"ZONE-A3": 1}


def test_a_tag_a_never_gave_up_is_at_a_again_when_b_gives_it_up() -> None:
    """It went to B's field and back before A's departed_after_s: A never said anything."""
    v = view()
    v.apply(A_ARRIVES)
    v.apply(B_ARRIVES)
    v.apply(mv("gw-b", "departed", 9, None, "ZONE-B"))
    assert v.stock() == {"ZONE-A": 1}


def test_an_arrival_through_a_portal_from_offsite_is_no_cross_gateway_move() -> None:
    v = view()
    v.apply(A_ARRIVES)
    v.apply(A_DEPARTS)
    assert v.apply(mv("gw-b", "arrived", 30, "DOCK-B", "YARD")) is None
    assert v.stock() == {"DOCK-B": 1} and v.cross_moves() == 0


def test_a_departure_through_a_portal_is_not_remembered_as_a_tag_in_transit() -> None:
    v = view()
    v.apply(A_ARRIVES)
    v.apply(mv("gw-a", "departed", 6, "TRUCK", "ZONE-A"))
    assert v.apply(B_ARRIVES) is None  # it came back from off site: a plain arrival
    assert v.stock() == {"ZONE-B": 1} and v.cross_moves() == 0


def test_robot_totes_are_placed_by_object_id() -> None:
    v = view()
    v.apply({**mv("gw-a", "moved", 1, "BUFFER", "PICK"), "epc": None, "object_id": "TOTE-1"})
    assert v.stock() == {"BUFFER": 1}


def test_the_stock_survives_a_restart_of_the_consumer(tmp_path: Path) -> None:
    state = ListenState(str(tmp_path / "listen.db"))
    state.apply_movement(A_ARRIVES)
    state.db.close()
    state = ListenState(str(tmp_path / "listen.db"))
    assert state.apply_movement(B_ARRIVES) is not None
    state.apply_movement(A_DEPARTS)
    assert state.stock() == {"ZONE-B": 1}


def message(topic: str, obj: dict[str, Any]) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = json.dumps(obj).encode()
    return msg


def test_the_listener_reports_a_cross_gateway_move_and_counts_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    listener = Listener(parse_args(["--site", "S1"]))
    listener.out = io.StringIO()
    for n, (gw, seq, m) in enumerate(
        [("gw-a", 1, A_ARRIVES), ("gw-b", 1, B_ARRIVES), ("gw-a", 2, A_DEPARTS)]
    ):
        obj = {**m, "id": f"id-{n}", "seq": seq}
        listener.on_message(None, None, message(f"fc/S1/{gw}/movements", obj))  # type: ignore[arg-type]
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in events] == ["cross_gateway_move"]
    assert (events[0]["from_gateway"], events[0]["to"]) == ("gw-a", "ZONE-B")
    summary = listener.summary()
    assert summary["stock"] == {"ZONE-B": 1} and summary["cross_gateway_moves"] == 1
    assert summary["last_seq"] == {"gw-a/movements": 2, "gw-b/movements": 1}
    assert len(listener.out.getvalue().splitlines()) == 3


def test_listen_stops_even_if_the_mqtt_loop_does_not(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once in CI, `fc-edge listen` outlived SIGTERM by 15 s with no summary printed. A
    consumer asked to stop must stop: it waits LOOP_STOP_S for paho's network thread, then
    says so and goes on. The hang could not be called up again, so a client whose loop_stop
    never returns stands in for it (the one part that is not real here)."""
    import threading
    import time

    from gateway import listen

    monkeypatch.setattr(listen, "LOOP_STOP_S", 0.2)
    never = threading.Event()

    class StuckLoop:
        def loop_stop(self) -> None:
            never.wait()

    listener = Listener(parse_args(["--site", "S1"]))
    started = time.monotonic()
    listen._stop_loop(StuckLoop(), listener)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.0
    (warning,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert warning["event"] == "warning" and "MQTT loop" in warning["what"]
    never.set()
