"""One TOML writer, for the configs fc-edge writes itself: the demo's site, the simulator's
gateway config, the benchmarks' and the tests' configs. Enough TOML for a gateway config, no
more: tables, arrays of tables ([[readers]]), and inline tables inside an array-of-tables
element (antennas, stations). tomllib reads what it writes (tests/unit/test_devkit.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def key(name: str) -> str:
    """A key as TOML spells it: bare when it may be, else quoted."""
    return name if _BARE_KEY.match(name) else json.dumps(name)


def value(v: Any) -> str:
    """A value inline: scalars, arrays and (inline) tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's string escapes are all valid in a TOML basic string
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Sequence):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(data: Mapping[str, Any]) -> str:
    """A document: nested dicts become [tables], lists of dicts [[arrays of tables]]."""
    out: list[str] = []

    def table(path: list[str], values: Mapping[str, Any], in_array: bool) -> None:
        for name, v in values.items():
            if in_array or not (isinstance(v, dict) or _is_table_list(v)):
                out.append(f"{key(name)} = {value(v)}")
        if in_array:
            return
        for name, v in values.items():
            sub = [*path, key(name)]
            if isinstance(v, dict):
                if v and all(isinstance(x, dict) for x in v.values()):
                    for child, inner in v.items():  # a table of tables: only children get headers
                        out.append(f"\n[{'.'.join([*sub, key(child)])}]")
                        table([*sub, key(child)], inner, False)
                else:
                    out.append(f"\n[{'.'.join(sub)}]")
                    table(sub, v, False)
            elif _is_table_list(v):
                for element in v:
                    out.append(f"\n[[{'.'.join(sub)}]]")
                    table(sub, element, True)

    table([], data, False)
    return "\n".join(out).lstrip("\n") + "\n"
