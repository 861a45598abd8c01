"""Build frozen dataclasses from parsed TOML, collecting every error with its dotted key.

Each config section is a dataclass; this module walks its type hints, so a section's
validation is its declaration. Errors are collected, not raised one by one, so an operator
sees everything wrong with a file at once: `readers[1].antennas.3.location: unknown location`.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

# field(metadata={PARSE: fn}) converts the raw value first; fn raises ValueError with a reason.
PARSE = "parse"


class Errors:
    """Collects `key: message` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}" if path else message)

    def __bool__(self) -> bool:
        return bool(self.lines)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


_MISSING = object()


def build(cls: type, raw: Any, path: str, errors: Errors) -> Any:
    """Build dataclass `cls` from `raw`; returns None (and records errors) when it can't."""
    if not isinstance(raw, dict):
        errors.add(path, f"expected a table, got {type_name(raw)}")
        return None
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    keys = {key_of(f): f for f in fields.values()}
    ok = True
    for key in raw:
        if key not in keys:
            close = ", ".join(sorted(keys))
            errors.add(join(path, key), f"unknown key (allowed here: {close})")
            ok = False  # a typo must never be silently ignored (e.g. a misspelt ca_file)
    values: dict[str, Any] = {}
    for key, f in keys.items():
        sub = join(path, key)
        if key not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.add(sub, "missing required key")
                ok = False
            continue
        value = raw[key]
        parser: Callable[[Any], Any] | None = f.metadata.get(PARSE)
        if parser is not None:
            try:
                values[f.name] = parser(value)
            except (ValueError, TypeError) as exc:
                errors.add(sub, str(exc))
                ok = False
            continue
        converted = convert(hints[f.name], value, sub, errors)
        if converted is _MISSING:
            ok = False
        else:
            values[f.name] = converted
    if not ok:
        return None
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:  # __post_init__ checks that span several keys
        message = str(exc)
        key, sep, rest = message.partition(": ")
        if sep and key in keys:  # "state_dir: missing ..." names one key: point at it
            errors.add(join(path, key), rest)
        else:
            errors.add(path, message)
        return None


def key_of(f: dataclasses.Field[Any]) -> str:
    """The TOML key of a field: its name, without a trailing underscore (`from_` -> `from`)."""
    return f.name.rstrip("_")


def convert(tp: Any, value: Any, path: str, errors: Errors) -> Any:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        real = [option for option in options if option is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own errors, with their own keys
            return convert(real[0], value, path, errors)
        trial = Errors()
        for option in options:
            if option is type(None):
                continue
            result = convert(option, value, path, trial)
            if result is not _MISSING:
                return result
        errors.add(path, trial.lines[0].split(": ", 1)[-1] if trial.lines else "invalid value")
        return _MISSING
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        errors.add(path, f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return _MISSING
    if origin in (list, tuple):
        if not isinstance(value, list):
            errors.add(path, f"expected a list, got {type_name(value)}")
            return _MISSING
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [convert(item_tp, v, join(path, i), errors) for i, v in enumerate(value)]
        if any(i is _MISSING for i in items):
            return _MISSING
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            errors.add(path, f"expected a table, got {type_name(value)}")
            return _MISSING
        key_tp, val_tp = get_args(tp)
        out: dict[Any, Any] = {}
        bad = False
        for k, v in value.items():
            sub = join(path, k)
            key = k
            if key_tp is int:
                try:
                    key = int(k)
                except ValueError:
                    errors.add(sub, "key must be a whole number")
                    bad = True
                    continue
            converted = convert(val_tp, v, sub, errors)
            if converted is _MISSING:
                bad = True
            else:
                out[key] = converted
        return _MISSING if bad else types.MappingProxyType(out)
    if dataclasses.is_dataclass(tp):
        result = build(typing.cast(type, tp), value, path, errors)
        return _MISSING if result is None else result
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.add(path, f"expected a number, got {type_name(value)}")
            return _MISSING
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.add(path, f"expected a whole number, got {type_name(value)}")
            return _MISSING
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.add(path, f"expected true or false, got {type_name(value)}")
            return _MISSING
        return value
    if tp is str:
        if not isinstance(value, str):
            errors.add(path, f"expected a string, got {type_name(value)}")
            return _MISSING
        return value
    raise TypeError(f"confschema cannot convert to {tp!r}")  # a programming error, not input


def type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


# --- reading files ------------------------------------------------------------------------------


def read_toml(path: Path, what: str = "file") -> dict[str, Any]:
    """Parse a TOML file; ValueError with one operator-facing line when it cannot be read.
    Shared by the gateway config and the equipment register maps."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path.name}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path.name}: not UTF-8 text") from None


# --- shared value parsers ----------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: Any) -> int:
    """'1GiB', '500MB', 1048576 -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = (m.group(2) or "B").upper()
            size = int(float(m.group(1)) * _UNITS[unit])
            if size > 0:
                return size
    raise ValueError(f"expected a size such as '1GiB', '500MB' or a byte count, got {value!r}")


def parse_duration(value: Any) -> float:
    """Durations are numbers of seconds (keys end in _s); must be positive."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of seconds, got {type_name(value)}")
    if value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


def parse_host_port(value: Any) -> tuple[str, int]:
    """'127.0.0.1:9464' or '[::1]:9464' -> (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected HOST:PORT with a numeric port, got {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


MAX_DECODER_PROCESSES = 64


def parse_process_count(value: Any) -> int | str:
    """`decoder_processes`: "auto" (the cores but one; two on two) or 0..64 (0: in-process)."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_DECODER_PROCESSES:
            return value
        raise ValueError(
            f"must be 0 (decode in the gateway process) to {MAX_DECODER_PROCESSES}, got {value}"
        )
    raise ValueError(f'expected "auto" or a number of processes (0 = none), got {value!r}')


def process_count(default: int | str) -> Any:
    """A dataclass field holding a number of processes or "auto"."""
    return dataclasses.field(default=default, metadata={PARSE: parse_process_count})


_TOPIC_BAD = re.compile(r"[+#/\x00]")


def check_topic_name(value: Any) -> str:
    """A name used as one MQTT topic level: non-empty, no wildcards, no slash."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type_name(value)}")
    if not value or _TOPIC_BAD.search(value) or value.strip() != value:
        raise ValueError(f"{value!r} cannot be used in a topic (empty, '+', '#', '/' or spaces)")
    return value


def duration(default: float | None = None, **meta: Any) -> Any:
    """A dataclass field holding seconds (key ending `_s`)."""
    return dataclasses.field(default=default, metadata={PARSE: parse_duration, **meta})


def topic_name(**kw: Any) -> Any:
    return dataclasses.field(metadata={PARSE: check_topic_name}, **kw)
