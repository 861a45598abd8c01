"""Regenerate config/captures/dock-03.jsonl: 40 SGTIN-96 tags received through dock-03.

The pallet is read by the outside antenna (1) from t=2.0 to 4.4 s and by the inside antenna (2)
from 3.6 to 6.0 s, then stays inside and is read about once a second until t=12 s.
"""

import json
import random
from pathlib import Path

from epcpy.epc_schemes.sgtin import SGTIN, SGTINFilterValue


def main() -> None:
    rnd = random.Random(3)
    epcs = []
    for i in range(40):
        tag = SGTIN(f"urn:epc:id:sgtin:4912345.067890.{1000 + i}")
        scheme = SGTIN.BinaryCodingScheme.SGTIN_96
        epcs.append(tag.hex(binary_coding_scheme=scheme, filter_value=SGTINFilterValue.POS_ITEM))
    lines = []
    for t10 in range(20, 121):
        t = t10 / 10
        for epc in epcs:
            if 2.0 <= t <= 4.4 and rnd.random() < 0.7:
                lines.append((t, 1, epc, -55 + rnd.gauss(0, 3)))
            if 3.6 <= t <= 6.0 and rnd.random() < 0.7:
                lines.append((t, 2, epc, -52 + rnd.gauss(0, 3)))
            if t > 6.0 and t10 % 10 == 0 and rnd.random() < 0.7:
                lines.append((t, 2, epc, -60 + rnd.gauss(0, 3)))
    out = Path(__file__).resolve().parent.parent / "config" / "captures" / "dock-03.jsonl"
    with out.open("w") as f:
        for t, antenna, epc, rssi in lines:
            rec = {"t": t, "reader": "dock-03", "antenna": antenna, "epc": epc, "rssi": round(rssi)}
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
