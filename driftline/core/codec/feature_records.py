"""Bulk single-object encoding of ``driftline.FeatureRecord`` for one view.

The worker emits one record per event, and the generic path (build a dict, validate it, let
fastavro walk the schema) cost more than everything else in the worker together. Within one view
most of a record is constant: the header, the view and version strings, every map key. This
encoder precomputes those bytes and writes each row's doubles with numpy, so a batch costs one
small join per record. Its output is byte-for-byte what the generic encoder writes (tested).

Avro binary, for reference: long = zig-zag varint; string = long length + UTF-8; map = blocks of
(long count, entries) ended by a 0 count; union = long branch index + the value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from driftline.core.codec.schema_set import SchemaSet, default_schema_set
from driftline.core.codec.single_object import HEADER_SIZE, header

SCHEMA = "driftline.FeatureRecord"


def zigzag_varint(n: int) -> bytes:
    """One Avro ``long``."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SHORT_LENGTHS = [bytes((2 * n,)) for n in range(64)]  # one-byte zig-zag lengths


def avro_string(text: str) -> bytes:
    data = text.encode("utf-8")
    n = len(data)
    return (_SHORT_LENGTHS[n] if n < 64 else zigzag_varint(n)) + data


_GROUP_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def zigzag_varints(values: np.ndarray) -> list[bytes]:
    """Many Avro ``long`` values at once (vectorised; equal to ``zigzag_varint`` each)."""
    v = np.asarray(values, dtype=np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    groups = np.stack([(z >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(10)], axis=1)
    width = 1 + (z[:, None] >= _GROUP_LIMITS[None, :]).sum(axis=1)  # 7-bit groups needed
    more = np.arange(10)[None, :] < (width[:, None] - 1)
    data = (groups | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8)
    return [row[:w].tobytes() for row, w in zip(data, width.tolist(), strict=True)]


class FeatureRecordEncoder:
    """Encodes the feature records of one view version, a batch at a time."""

    def __init__(self, view: str, view_version: str, feature_names: Sequence[str],
                 slice_names: Sequence[str], schemas: SchemaSet | None = None) -> None:
        schema = (schemas or default_schema_set()).get(SCHEMA)
        field_order = [f["name"] for f in schema.declared["fields"]]
        expected = ["event_id", "entity_id", "event_time", "view", "view_version", "values",
                    "slices"]
        if field_order != expected:  # the layout below is written for exactly this schema
            raise ValueError(f"{SCHEMA} fields are {field_order}, the encoder expects {expected}")
        self.header = header(schema)
        self.view_part = avro_string(view) + avro_string(view_version)
        self.n = len(feature_names)
        self.key_parts = [avro_string(name) for name in feature_names]
        self.values_count = zigzag_varint(self.n) if self.n else b""
        # A row without nulls has a fixed layout: key, branch 1 (double), 8 bytes, per feature.
        self.offsets = []
        template = bytearray()
        for key in self.key_parts:
            template += key + b"\x02"
            self.offsets.append(len(template))
            template += b"\x00" * 8
        self.template = np.frombuffer(bytes(template), dtype=np.uint8)
        self.slice_keys = [avro_string(name) for name in slice_names]
        self.slices_count = zigzag_varint(len(slice_names)) if slice_names else b""
        self._slice_blocks: dict[tuple[str, ...], bytes] = {}

    def _slices(self, values: tuple[str, ...]) -> bytes:
        """The encoded slices map; slice combinations repeat, so each is encoded once."""
        cached = self._slice_blocks.get(values)
        if cached is None:
            if len(self._slice_blocks) > 100_000:  # high-cardinality slices must not grow memory
                self._slice_blocks.clear()
            parts = [self.slices_count]
            for key, value in zip(self.slice_keys, values, strict=True):
                parts += (key, avro_string(value))
            parts.append(b"\x00")
            cached = self._slice_blocks[values] = b"".join(parts)
        return cached

    def _values_block(self, values: np.ndarray) -> list[bytes]:
        """The encoded ``values`` map of every row."""
        rows = len(values)
        if self.n == 0:
            return [b"\x00"] * rows
        dense = np.tile(self.template, (rows, 1))
        raw = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(rows, self.n, 8)
        for k, offset in enumerate(self.offsets):
            dense[:, offset:offset + 8] = raw[:, k]
        nulls = np.isnan(values)
        blocks = []
        count, end = self.values_count, b"\x00"
        for i, (row, has_null) in enumerate(zip(dense, nulls.any(axis=1).tolist(), strict=True)):
            if not has_null:
                blocks.append(count + row.tobytes() + end)
                continue
            parts = [count]
            for k, key in enumerate(self.key_parts):
                parts.append(key + (b"\x00" if nulls[i, k] else b"\x02" + raw[i, k].tobytes()))
            parts.append(end)
            blocks.append(b"".join(parts))
        return blocks

    def encode_batch(self, event_ids: Sequence[str], entity_ids: Sequence[str],
                     event_times_ms: Sequence[int], values: np.ndarray,
                     slices: Sequence[Sequence[str]]) -> list[bytes]:
        """One single-object message per row; ``slices`` holds one column per slice name."""
        blocks = self._values_block(values)
        slice_rows = list(zip(*slices, strict=True)) if self.slice_keys else None
        times = zigzag_varints(np.asarray(event_times_ms, dtype=np.int64))
        tail = self.view_part
        out = []
        for i, (event_id, entity_id, t) in enumerate(
                zip(event_ids, entity_ids, times, strict=True)):
            slices_block = self._slices(slice_rows[i]) if slice_rows is not None else b"\x00"
            out.append(b"".join((self.header, avro_string(event_id), avro_string(entity_id), t,
                                 tail, blocks[i], slices_block)))
        return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro ``long`` at `pos`: (value, next position)."""
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def leading_string(single_object: bytes) -> bytes:
    """The first field of a single-object record whose first field is a string (``event_id``
    of a TransactionEvent, a FeatureRecord, a Prediction), without decoding the rest: for
    tools that only need to recognise a record, such as the benchmarks' latency readers."""
    length, pos = _read_varint(single_object, HEADER_SIZE)
    return single_object[pos:pos + length]


def _string_span(data: bytes, pos: int) -> tuple[int, int]:
    """Where the bytes of the Avro string at `pos` start and end (one-byte lengths inline: the
    common case); the UTF-8 is not checked here."""
    first = data[pos]
    if first < 0x80:
        if first & 1:
            raise ValueError("negative string length")
        return pos + 1, pos + 1 + (first >> 1)
    n, pos = _read_varint(data, pos)
    if n < 0:
        raise ValueError("negative string length")
    return pos, pos + n


def _map_of_strings_end(data: bytes, pos: int) -> int:
    """Where an Avro map of strings starting at `pos` ends (ValueError if malformed)."""
    while True:
        count, pos = _read_varint(data, pos)
        if count == 0:
            return pos
        if count < 0:  # a block with its byte size (allowed by the spec)
            count = -count
            _, pos = _read_varint(data, pos)
        for _ in range(2 * count):
            n, pos = _read_varint(data, pos)
            if n < 0:
                raise ValueError("negative string length")
            text = data[pos:pos + n]
            text.decode()  # UnicodeDecodeError, a ValueError, unless UTF-8
            if 0 in text:
                raise ValueError("a NUL character")  # refused by validation too
            pos += n
        if pos > len(data):
            raise ValueError("truncated map")


@dataclass
class FastBatch:
    """Feature records read by the fast path, with their raw pieces for re-encoding."""

    index: list[int] = field(default_factory=list)  # position in the input batch
    heads: list[bytes] = field(default_factory=list)  # event_id, entity_id, event_time bytes
    slices: list[bytes] = field(default_factory=list)  # the encoded slices map
    values: list[bytes] = field(default_factory=list)  # the encoded values map
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    others: list[int] = field(default_factory=list)  # left for the generic decoder
    _entity_ids: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def entity_ids(self) -> list[str]:
        """Each record's entity id (what a rollout routes by), read from its head once, on
        first use: without a rollout nothing needs them."""
        if self._entity_ids is None:
            # The reader checked both strings (UTF-8, no NUL): one join and one decode.
            keys = []
            for head in self.heads:
                _, id_end = _string_span(head, 0)
                start, end = _string_span(head, id_end)
                keys.append(head[start:end])
            self._entity_ids = b"\x00".join(keys).decode().split("\x00") if keys else []
        return self._entity_ids

    def take(self, rows: Sequence[int] | np.ndarray) -> FastBatch:
        """The records at `rows` (positions in this batch), e.g. one rollout arm's share;
        ``others`` stays with the whole batch and is empty here."""
        rows = [int(k) for k in rows]
        return FastBatch(index=[self.index[k] for k in rows], heads=[self.heads[k] for k in rows],
                         slices=[self.slices[k] for k in rows],
                         values=[self.values[k] for k in rows], matrix=self.matrix[rows])


class FeatureRecordReader:
    """Reads feature records of one view version straight into a matrix.

    Records laid out exactly as :class:`FeatureRecordEncoder` writes them with no null value
    (every record in steady state) take the fast path: a few slices per record and one numpy
    view for the doubles. Anything else — another view or version, a null, another map order,
    another writer schema, and anything the decoder would refuse (a NaN or an infinity, a string
    that is not UTF-8 or holds a NUL) — is left to the generic, validating decoder (``others``).
    """

    def __init__(self, view: str, view_version: str, feature_names: Sequence[str],
                 schemas: SchemaSet | None = None) -> None:
        encoder = FeatureRecordEncoder(view, view_version, feature_names, (), schemas)
        self.header = encoder.header
        self.view_part = encoder.view_part
        self.n = encoder.n
        self.block = encoder.values_count + encoder.template.tobytes() + b"\x00"
        constant = np.ones(len(self.block), dtype=bool)
        start = len(encoder.values_count)
        for offset in encoder.offsets:
            constant[start + offset:start + offset + 8] = False
        self.constant = constant
        self.double_at = np.array([start + o for o in encoder.offsets], dtype=np.intp)
        self._good_tails: set[bytes] = set()

    def read(self, messages: Sequence[bytes]) -> FastBatch:
        out = FastBatch()
        header, view_part, size = self.header, self.view_part, len(self.block)
        good_tails = self._good_tails
        blocks = []
        for i, data in enumerate(messages):
            try:
                if data[:10] != header:
                    raise ValueError
                id_start, id_end = _string_span(data, 10)
                key_start, key_end = _string_span(data, id_end)
                if not data[10:key_end].isascii():  # all-ASCII bytes are valid UTF-8
                    data[id_start:id_end].decode()  # UnicodeDecodeError is a ValueError
                    data[key_start:key_end].decode()
                if 0 in data[id_start:id_end] or 0 in data[key_start:key_end]:
                    raise ValueError  # a NUL: the validating decoder refuses and names it
                _, pos = _read_varint(data, key_end)
                head_end = pos
                if data[pos:pos + len(view_part)] != view_part:
                    raise ValueError
                pos += len(view_part)
                block = data[pos:pos + size]
                tail = data[pos + size:]
                if len(block) != size:
                    raise ValueError
                if tail not in good_tails:  # slices repeat: check each distinct map once
                    if _map_of_strings_end(tail, 0) != len(tail):
                        raise ValueError
                    if len(good_tails) < 10_000:
                        good_tails.add(tail)
            except (ValueError, IndexError):
                out.others.append(i)
                continue
            out.index.append(i)
            out.heads.append(data[10:head_end])
            blocks.append(block)
            out.slices.append(tail)
        if not blocks:
            out.matrix = np.zeros((0, self.n))
            return out
        raw = np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(len(blocks), size)
        template = np.frombuffer(self.block, dtype=np.uint8)
        columns = raw[:, self.double_at[:, None] + np.arange(8)[None, :]]  # (rows, n, 8)
        matrix = np.ascontiguousarray(columns).view("<f8").reshape(len(raw), self.n)
        # NaN and infinities are no feature values (null is): the generic decoder dead-letters
        # such a record, naming the field.
        fits = ((raw[:, self.constant] == template[self.constant]).all(axis=1)
                & np.isfinite(matrix).all(axis=1))
        if not fits.all():
            misfits = [out.index[k] for k in np.flatnonzero(~fits)]
            keep = np.flatnonzero(fits).tolist()
            out.index = [out.index[k] for k in keep]
            out.heads = [out.heads[k] for k in keep]
            out.slices = [out.slices[k] for k in keep]
            blocks = [blocks[k] for k in keep]
            matrix = matrix[fits]
            out.others = sorted(out.others + misfits)
        out.matrix = matrix
        out.values = blocks
        return out


class PredictionWriter:
    """Single-object ``driftline.Prediction`` messages from a :class:`FastBatch` and scores.

    A prediction repeats its record's identity, slices and inputs; those bytes are copied from
    the record rather than decoded and encoded again (the inputs map is the record's values
    map, byte for byte, since the model's inputs are the view's features in view order). The
    rollout ``arm`` and the model call's ``latency_ms`` are the same for a whole `write`.
    """

    def __init__(self, model_name: str, model_version: int, view: str, view_version: str,
                 threshold: float, schemas: SchemaSet | None = None) -> None:
        schema = (schemas or default_schema_set()).get("driftline.Prediction")
        fields = schema.declared["fields"]
        order = [f["name"] for f in fields]
        expected = ["event_id", "entity_id", "event_time", "score", "decision", "threshold",
                    "model_name", "model_version", "view", "view_version", "slices", "inputs",
                    "arm", "latency_ms"]
        if order != expected:
            raise ValueError(f"driftline.Prediction fields are {order}, expected {expected}")
        self.arms = tuple(next(f for f in fields if f["name"] == "arm")["driftline.allowed"])
        self._arm_bytes = {arm: avro_string(arm) for arm in self.arms}
        self.header = header(schema)
        self.threshold = threshold
        self.threshold_bytes = np.float64(threshold).astype("<f8").tobytes()
        self.model_part = (avro_string(model_name) + zigzag_varint(model_version)
                           + avro_string(view) + avro_string(view_version))

    def write(self, batch: FastBatch, scores: np.ndarray, arm: str = "production",
              latency_ms: float = 0.0) -> list[bytes]:
        arm_bytes = self._arm_bytes.get(arm)
        if arm_bytes is None:
            raise ValueError(f"unknown arm {arm!r} (arms: {', '.join(self.arms)})")
        score_bytes = np.ascontiguousarray(scores, dtype="<f8").tobytes()
        decisions = (scores >= self.threshold).tolist()
        head, tail = self.header, self.threshold_bytes + self.model_part
        trailer = arm_bytes + struct.pack("<d", latency_ms)
        out = []
        for k, (record_head, slices, values, decision) in enumerate(
                zip(batch.heads, batch.slices, batch.values, decisions, strict=True)):
            out.append(b"".join((head, record_head, score_bytes[8 * k:8 * k + 8],
                                 b"\x01" if decision else b"\x00", tail, slices, values,
                                 trailer)))
        return out
