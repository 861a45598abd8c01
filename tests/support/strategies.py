"""Shared hypothesis strategies: values a TOML or JSON parser can hand over; and every path
into a parsed document, for mutating one."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import strategies as st

KEY_CHARS = st.characters(codec="utf-8", exclude_categories=["Cs"])

scalars = st.one_of(
    st.none(),  # not TOML, but JSON has it and a caller may pass it
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),  # nan and inf are valid TOML floats
    st.text(KEY_CHARS, max_size=12),
    st.sampled_from(["", " ", "a/b", "#", "+", "x\x00y", "${NOPE_UNSET}", "1GiB", "mqtt://h:1"]),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
    st.times(),
)

# Non-empty: an empty TOML key ("" = 1) at the top level gives an error line without a key
# (reported; harmless).
keys = st.one_of(
    st.text(KEY_CHARS, min_size=1, max_size=8), st.sampled_from(["1", "0", "-1", "a b", "x/y"])
)

toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, (*prefix, i))
    return out
