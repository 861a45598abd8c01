"""`fc-edge listen`: the reference IMS consumer.

stdout: exactly one line per NEW message id — the published object unchanged, plus
`received_at`. stderr: JSON lines for seq gaps per (gateway, stream), for each tag carried from
one gateway's zones to another's (gateway.stockview: the rule that reconciles their streams),
and a final summary. With --state FILE it keeps, across restarts, the ids it has seen, the last
seq per stream and the stock by location (SQLite), which is what an IMS does with these
messages.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sqlite3
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.model import iso_ms, now_us
from gateway.stockview import CrossMove, StockView

STREAM_OF_TOPIC = {
    "movements": "movements",
    "counts": "counts",
    "epcis": "epcis",
    "dropped": "notices",
}


class ListenState:
    """What the consumer remembers: seen ids, last seq per (gateway, stream), stock."""

    def __init__(self, path: str | None) -> None:
        self.db = sqlite3.connect(path or ":memory:", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS seqs (gateway TEXT, stream TEXT, last INTEGER,
                PRIMARY KEY (gateway, stream));
            """
        )
        self.stock_view = StockView(self.db)
        self.last_seq: dict[tuple[str, str], int] = {
            (g, s): n for g, s, n in self.db.execute("SELECT gateway, stream, last FROM seqs")
        }

    def is_new(self, msg_id: str) -> bool:
        cur = self.db.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (msg_id,))
        return cur.rowcount == 1

    def note_seq(self, gateway: str, stream: str, seq: int) -> tuple[int, int] | None:
        """Record seq; return the (first, last) missing range when it skips ahead."""
        key = (gateway, stream)
        last = self.last_seq.get(key, 0)
        gap = (last + 1, seq - 1) if seq > last + 1 else None
        if seq > last:
            self.last_seq[key] = seq
            self.db.execute(
                "INSERT INTO seqs VALUES (?, ?, ?) ON CONFLICT(gateway, stream)"
                " DO UPDATE SET last = excluded.last",
                (gateway, stream, seq),
            )
        return gap

    def apply_movement(self, m: dict[str, Any]) -> CrossMove | None:
        return self.stock_view.apply(m)

    def stock(self) -> dict[str, int]:
        return self.stock_view.stock()


class Listener:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state = ListenState(args.state)
        self.lock = threading.Lock()
        self.received = 0
        self.new = 0
        self.duplicates = 0
        self.gaps: list[dict[str, Any]] = []
        self.last_message = time.monotonic()
        self.connected = threading.Event()
        self.out = sys.stdout

    def topics(self) -> list[str]:
        base = f"{self.args.prefix}/{self.args.site}/+"
        topics = []
        for stream in self.args.streams.split(","):
            stream = stream.strip()
            topic = f"{base}/{stream}" if stream != "equipment" else f"{base}/equipment/+"
            if self.args.share:
                topic = f"$share/{self.args.share}/{topic}"
            topics.append(topic)
        return topics

    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.report({"event": "connect_refused", "reason": str(reason)})
            return
        client.subscribe([(t, 1) for t in self.topics()])
        self.connected.set()

    def on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        self.report({"event": "subscribed", "topics": self.topics()})

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            obj = json.loads(message.payload)
            msg_id = obj["id"]
        except (ValueError, KeyError, TypeError):
            self.report({"event": "bad_message", "topic": message.topic})
            return
        with self.lock:
            self.received += 1
            self.last_message = time.monotonic()
            if not self.state.is_new(msg_id):
                self.duplicates += 1
                return
            self.new += 1
            parts = message.topic.split("/")
            gateway = obj.get("gateway") or (parts[-2] if len(parts) >= 2 else "?")
            stream = STREAM_OF_TOPIC.get(
                parts[-1], "equipment" if "equipment" in parts else parts[-1]
            )
            seq = obj.get("seq")
            if isinstance(seq, int):
                gap = self.state.note_seq(gateway, stream, seq)
                if gap:
                    entry = {
                        "event": "seq_gap",
                        "gateway": gateway,
                        "stream": stream,
                        "from_seq": gap[0],
                        "to_seq": gap[1],
                    }
                    self.gaps.append(entry)
                    self.report(entry)
            if obj.get("schema", "").startswith("fc-edge/movement"):
                move = self.state.apply_movement(obj)
                if move is not None:
                    self.report(move.as_event())
            obj["received_at"] = iso_ms(now_us())
            self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self.out.flush()

    def report(self, entry: dict[str, Any]) -> None:
        sys.stderr.write(json.dumps(entry) + "\n")
        sys.stderr.flush()

    def summary(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "received": self.received,
            "new": self.new,
            "duplicates": self.duplicates,
            "gaps": len(self.gaps),
            "last_seq": {f"{g}/{s}": n for (g, s), n in sorted(self.state.last_seq.items())},
            "stock": self.state.stock(),
            "cross_gateway_moves": self.state.stock_view.cross_moves(),
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fc-edge listen", description=__doc__.split("\n")[0])
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--site", required=True)
    p.add_argument("--prefix", default="fc")
    p.add_argument("--streams", default="movements")
    p.add_argument("--share", help="consume as part of a shared subscription group (MQTT 5)")
    p.add_argument("--client-id", help="persistent session under this client id")
    p.add_argument("--state", help="SQLite file for seen ids, seqs and stock across restarts")
    p.add_argument("--ca-file")
    p.add_argument("--duration-s", type=float, help="stop after this many seconds")
    p.add_argument("--idle-exit-s", type=float, help="stop after this long without a message")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # SIGABRT (a harness giving up on it) prints every thread's stack
    args = parse_args(argv)
    listener = Listener(args)
    url = urlsplit(args.broker)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id or "", protocol=mqtt.MQTTv5
    )
    client.on_connect = listener.on_connect
    client.on_message = listener.on_message
    client.on_subscribe = listener.on_subscribe
    if url.scheme in ("mqtts", "ssl"):
        client.tls_set(ca_certs=args.ca_file)
    props = None
    if args.client_id:  # a persistent session: the broker keeps QoS 1 messages while we're away
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 7 * 24 * 3600
    client.reconnect_delay_set(1, 5)
    client.connect_async(
        url.hostname or "127.0.0.1",
        url.port or (8883 if url.scheme in ("mqtts", "ssl") else 1883),
        clean_start=not args.client_id,
        properties=props,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client.loop_start()
    started = time.monotonic()
    while not stop.wait(0.1):
        now = time.monotonic()
        if args.duration_s and now - started > args.duration_s:
            break
        if args.idle_exit_s and listener.new and now - listener.last_message > args.idle_exit_s:
            break
    client.disconnect()
    _stop_loop(client, listener)
    listener.report(listener.summary())
    return 0


LOOP_STOP_S = 5.0  # how long an exit waits for paho's network thread


def _stop_loop(client: mqtt.Client, listener: Listener) -> None:
    """Join paho's network thread, but not for ever: a consumer asked to stop must stop (the
    thread is a daemon, so the exit does not wait for it). If it did not end, say so."""
    stopper = threading.Thread(target=client.loop_stop, name="loop-stop", daemon=True)
    stopper.start()
    stopper.join(LOOP_STOP_S)
    if stopper.is_alive():
        listener.report(
            {"event": "warning", "what": f"MQTT loop still running {LOOP_STOP_S} s after stop"}
        )
