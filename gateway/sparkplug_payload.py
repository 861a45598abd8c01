"""Sparkplug B payloads: the protobuf schema, metric values in and out, topics.

The schema is the part of Eclipse Tahu's `sparkplug_b.proto` (Sparkplug 3.0) that fc-edge
speaks: Payload {timestamp, metrics, seq} and Metric {name, timestamp, datatype,
is_historical, is_null, and the scalar values}, with the official package name and field
numbers, declared here and encoded by Google's `protobuf` (pysparkplug, the obvious library,
pins paho-mqtt<2, which the gateway's publisher needs). Fields we do not declare (templates,
datasets, properties) are kept as unknown fields by protobuf when a command carries them, so
a command is read whatever else it holds. The tests decode what the gateway publishes with
Tahu's own generated schema, not with this one.

The schema lives in a descriptor pool of its own, so it never clashes with another copy of
sparkplug_b.proto loaded into protobuf's default pool in the same process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

NAMESPACE = "spBv1.0"
SEQ_MODULUS = 256  # seq runs 0..255, then wraps to 0


class DataType(IntEnum):
    """Sparkplug B data types (the spec's DataType enum; the ones fc-edge uses and reads)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


# Which protobuf field carries a value of each type (spec 6.4.16, Tahu's encoder alike).
_VALUE_FIELD = {
    DataType.INT8: "int_value",
    DataType.INT16: "int_value",
    DataType.INT32: "int_value",
    DataType.UINT8: "int_value",
    DataType.UINT16: "int_value",
    DataType.UINT32: "int_value",
    DataType.INT64: "long_value",
    DataType.UINT64: "long_value",
    DataType.DATETIME: "long_value",
    DataType.FLOAT: "float_value",
    DataType.DOUBLE: "double_value",
    DataType.BOOLEAN: "boolean_value",
    DataType.STRING: "string_value",
    DataType.TEXT: "string_value",
}
_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}


def _schema() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="fc_edge_sparkplug_b.proto", package="org.eclipse.tahu.protobuf", syntax="proto2"
    )
    payload = file.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    # (name, number, type, in the `value` oneof)
    metric_fields = [
        ("name", 1, f.TYPE_STRING, False),
        ("alias", 2, f.TYPE_UINT64, False),
        ("timestamp", 3, f.TYPE_UINT64, False),
        ("datatype", 4, f.TYPE_UINT32, False),
        ("is_historical", 5, f.TYPE_BOOL, False),
        ("is_transient", 6, f.TYPE_BOOL, False),
        ("is_null", 7, f.TYPE_BOOL, False),
        ("int_value", 10, f.TYPE_UINT32, True),
        ("long_value", 11, f.TYPE_UINT64, True),
        ("float_value", 12, f.TYPE_FLOAT, True),
        ("double_value", 13, f.TYPE_DOUBLE, True),
        ("boolean_value", 14, f.TYPE_BOOL, True),
        ("string_value", 15, f.TYPE_STRING, True),
        ("bytes_value", 16, f.TYPE_BYTES, True),
    ]
    for name, number, kind, in_value in metric_fields:
        field = metric.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
        if in_value:
            field.oneof_index = 0
    payload.field.add(name="timestamp", number=1, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    payload.field.add(
        name="metrics",
        number=2,
        type=f.TYPE_MESSAGE,
        type_name=".org.eclipse.tahu.protobuf.Payload.Metric",
        label=f.LABEL_REPEATED,
    )
    payload.field.add(name="seq", number=3, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    payload.field.add(name="uuid", number=4, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    payload.field.add(name="body", number=5, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())
PayloadMessage: type[Message] = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")
)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: a name, its Sparkplug type, its value (None: null), when, and whether it is
    history (a value from a time the node could not publish it)."""

    name: str
    datatype: DataType
    value: Any
    timestamp_ms: int | None = None
    historical: bool = False


def encode(metrics: list[Metric], *, timestamp_ms: int, seq: int | None) -> bytes:
    """A Payload with `metrics`; `seq` None only for NDEATH, which carries none."""
    payload: Any = PayloadMessage()
    payload.timestamp = timestamp_ms
    if seq is not None:
        payload.seq = seq
    for m in metrics:
        out = payload.metrics.add()
        out.name = m.name
        out.datatype = int(m.datatype)
        out.timestamp = m.timestamp_ms if m.timestamp_ms is not None else timestamp_ms
        if m.historical:
            out.is_historical = True
        if m.value is None:
            out.is_null = True
        else:
            setattr(out, _VALUE_FIELD[m.datatype], _wire_value(m.datatype, m.value))
    return bytes(payload.SerializeToString())


def _wire_value(datatype: DataType, value: Any) -> Any:
    """Signed integers travel as their two's complement in the unsigned field (spec 6.4.16)."""
    bits = _SIGNED_BITS.get(datatype)
    if bits is not None and value < 0:
        width = 32 if bits < 64 else 64
        return value + (1 << width)
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        return float(value)
    return value


class BadPayload(ValueError):
    """A payload that is not a Sparkplug B protobuf, or a metric it cannot mean."""


@dataclass(frozen=True, slots=True)
class ReceivedMetric:
    name: str
    datatype: int
    value: Any  # None when null or when the value field does not match the datatype


def decode(data: bytes) -> list[ReceivedMetric]:
    """The metrics of a received payload (an NCMD); BadPayload if it is not protobuf."""
    payload: Any = PayloadMessage()
    try:
        payload.ParseFromString(data)
    except (DecodeError, RuntimeWarning) as exc:  # protobuf's parser reports garbage so
        raise BadPayload(f"not a Sparkplug B payload: {exc}") from None
    return [_received(m) for m in payload.metrics]


def _received(m: Any) -> ReceivedMetric:
    held = m.WhichOneof("value")
    try:
        expected = _VALUE_FIELD[DataType(m.datatype)]
    except ValueError:
        expected = None
    value = getattr(m, held) if held is not None and held == expected else None
    return ReceivedMetric(m.name, m.datatype, value)


def datatype_of(value: Any) -> DataType:
    """The Sparkplug type that carries a Python value as it is (an equipment point's)."""
    if isinstance(value, bool):
        return DataType.BOOLEAN
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return DataType.INT64
    if isinstance(value, float) and math.isfinite(value):
        return DataType.DOUBLE
    return DataType.STRING


def as_metric_value(value: Any) -> Any:
    """A value datatype_of() types as STRING, as that string (None stays null)."""
    if value is None or datatype_of(value) is not DataType.STRING or isinstance(value, str):
        return value
    return str(value)


class Seq:
    """The edge node's message sequence: 0 at each NBIRTH, +1 per message, 255 -> 0."""

    def __init__(self) -> None:
        self._next = 0

    def reset(self) -> int:
        """The NBIRTH's seq (0); the next message gets 1."""
        self._next = 1
        return 0

    def take(self) -> int:
        seq = self._next
        self._next = (seq + 1) % SEQ_MODULUS
        return seq


@dataclass(frozen=True, slots=True)
class Topics:
    group_id: str
    edge_node_id: str

    def node(self, kind: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"

    def device(self, kind: str, device: str) -> str:
        return f"{self.node(kind)}/{device}"

    @staticmethod
    def state(primary_host_id: str) -> str:
        return f"{NAMESPACE}/STATE/{primary_host_id}"
