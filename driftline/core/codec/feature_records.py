"""Bulk single-object encoding of ``driftline.FeatureRecord`` for one view.

The worker emits one record per event, and the generic path (build a dict, validate it, let
fastavro walk the schema) cost more than everything else in the worker together. Within one view
most of a record is constant: the header, the view and version strings, every map key. This
encoder precomputes those bytes, takes the batch's strings as UTF-8 in one buffer
(`utf8.utf8_columns`) and writes every record into one buffer in a compiled loop
(`record_kernels.feature_records`), so a batch costs one slice per record. Its output is
byte-for-byte what the generic encoder writes (tested). The scorer's side,
`FeatureRecordReader` and `PredictionWriter`, reads such records a batch at a time with numpy
(and the values maps with nulls with a compiled loop) and copies their bytes into predictions.

Avro binary, for reference: long = zig-zag varint; string = long length + UTF-8; map = blocks of
(long count, entries) ended by a 0 count; union = long branch index + the value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from driftline.core.codec import record_kernels, utf8
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
        self._parts = [np.frombuffer(part, dtype=np.uint8) for part in (
            self.header, self.view_part, self.values_count, self.slices_count)]
        self.key_table = _joined(self.key_parts)  # the keys as the compiled loops take them
        self._slice_keys = _joined(self.slice_keys)

    def encode_batch(self, event_ids: Sequence[str], entity_ids: Sequence[str],
                     event_times_ms: Sequence[int] | np.ndarray, values: np.ndarray,
                     slices: Sequence[Sequence[str]]) -> list[bytes]:
        """One single-object message per row; ``slices`` holds one column per slice name, and
        a NaN in `values` is a null."""
        return self.encode_keyed(event_ids, entity_ids, event_times_ms, values, slices)[0]

    def encode_keyed(self, event_ids: Sequence[str], entity_ids: Sequence[str],
                     event_times_ms: Sequence[int] | np.ndarray, values: np.ndarray,
                     slices: Sequence[Sequence[str]]) -> tuple[list[bytes], list[bytes]]:
        """`encode_batch`, and each row's entity id as UTF-8 bytes (its Kafka key)."""
        if len(slices) != len(self.slice_keys):
            raise ValueError(f"{len(slices)} slice columns for {len(self.slice_keys)} slices")
        strings = utf8.utf8_columns([event_ids, entity_ids, *slices])
        v = np.asarray(event_times_ms, dtype=np.int64)
        times = ((v << 1) ^ (v >> 63)).view(np.uint64)
        matrix = np.ascontiguousarray(values, dtype="<f8").reshape(len(v), self.n)
        header, view_part, values_count, slices_count = self._parts
        out, ends = record_kernels.feature_records(
            header, view_part, values_count, *self.key_table, slices_count, *self._slice_keys,
            strings.data, strings.starts, strings.lengths, times, matrix)
        flat = out.tobytes()  # one copy, then one slice per row
        cuts = [0, *ends.tolist()]
        return ([flat[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)],
                strings.bytes_of(1))


def _joined(parts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte strings in one buffer, with where each starts and its length (numba takes no list
    of arrays)."""
    lengths = np.array([len(part) for part in parts], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.frombuffer(b"".join(parts) or b"\x00", dtype=np.uint8), starts, lengths


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
        first use."""
        if self._entity_ids is None:
            self._entity_ids = _entity_ids(self.heads)
        return self._entity_ids

    def take(self, rows: Sequence[int] | np.ndarray) -> FastBatch:
        """The records at `rows` (positions in this batch), e.g. one rollout arm's share;
        ``others`` stays with the whole batch and is empty here."""
        rows = [int(k) for k in rows]
        return FastBatch(index=[self.index[k] for k in rows], heads=[self.heads[k] for k in rows],
                         slices=[self.slices[k] for k in rows],
                         values=[self.values[k] for k in rows], matrix=self.matrix[rows])


_TIME_WINDOW = 10  # bytes of a 64-bit varint at most: a longer one is checked one by one
_PADDING = bytes(2 * 64 + 8)
"""Zero bytes after a joined batch. Every window the reader reads starts inside a message, and
the farthest any reaches past that message's end is its ids' window (under 128 bytes): so all
stay inside the buffer, and what they read past a message is masked out or never used."""


def _windows(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """The `width` bytes at each of `starts`, a row each. One take from a strided view copies
    each window in one piece; a two-dimensional fancy index would compute an index per byte."""
    return sliding_window_view(buf, width)[starts]


def _entity_ids(heads: list[bytes]) -> list[str]:
    """The entity_id in each head (event_id, entity_id, event_time), all decoded at once: the
    ids joined with a NUL after each (the reader let no NUL in an id through), one decode and
    one split. Ids are cut with arrays where both lengths take one byte (ids under 64 bytes),
    one by one elsewhere."""
    count = len(heads)
    if not count:
        return []
    lengths = np.fromiter(map(len, heads), dtype=np.int64, count=count)
    starts = np.zeros(count, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    buf = np.frombuffer(b"".join([*heads, _PADDING]), dtype=np.uint8)
    id_length = buf[starts]
    key_at = starts + 1 + (id_length >> 1)  # entity_id's length, if event_id's took one byte
    key_length = buf[key_at]
    short = (id_length < 0x80) & (key_length < 0x80)
    rows = np.flatnonzero(short)
    key_length = (key_length[rows] >> 1).astype(np.intp)
    ids = _windows(buf, key_at[rows] + 1, int(key_length.max(initial=0)) + 1)
    ids[np.arange(len(rows)), key_length] = 0  # the separator
    text = ids[np.arange(ids.shape[1])[None, :] <= key_length[:, None]].tobytes().decode()
    keys = text.split("\x00")[:-1]
    if len(rows) == count:
        return keys
    out = [""] * count
    for k, key in zip(rows.tolist(), keys, strict=True):
        out[k] = key
    for k in np.flatnonzero(~short).tolist():
        head = heads[k]
        _, id_end = _string_span(head, 0)
        start, end = _string_span(head, id_end)
        out[k] = head[start:end].decode()
    return out


class _BytePattern:
    """Constant bytes, some positions free, compared at many places of a buffer at once, eight
    bytes at a time (numpy reduces along a short row slowly, a byte at a time even more so)."""

    def __init__(self, pattern: bytes, free: np.ndarray | None = None) -> None:
        self.width = 8 * -(-len(pattern) // 8)  # up to seven bytes past the pattern, masked
        mask = np.zeros(self.width, dtype=np.uint8)
        mask[:len(pattern)] = 0xFF
        if free is not None:
            mask[:len(pattern)][free] = 0
        template = np.zeros(self.width, dtype=np.uint8)
        template[:len(pattern)] = np.frombuffer(pattern, dtype=np.uint8)
        self.mask = mask.view(np.uint64)
        self.template = (template & mask).view(np.uint64)

    def windows(self, buf: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The bytes `matches` compares, at each of `starts` (a row each)."""
        return _windows(buf, starts, self.width)

    def matches(self, windows: np.ndarray) -> np.ndarray:
        """Whether each row of `windows` holds the pattern."""
        words = windows.view(np.uint64)
        if len(self.mask) > 8:  # a long pattern: one pass along the rows
            return ((words & self.mask) == self.template).all(axis=1)
        fits = np.ones(len(words), dtype=bool)
        for k in range(len(self.mask)):  # a few words: a column each is faster
            fits &= (words[:, k] & self.mask[k]) == self.template[k]
        return fits


class FeatureRecordReader:
    """Reads feature records of one view version straight into a matrix.

    Records laid out exactly as :class:`FeatureRecordEncoder` writes them take the fast path:
    a few slices per record and one numpy view for the doubles, or, for a values map with nulls
    (a card's first event has no ``seconds_since_prev``), a compiled loop over that map
    (`record_kernels.values_maps`; a null is NaN in the matrix, as the generic path scores it).
    Anything else — another view or version, another map order, another writer schema, and
    anything the decoder would refuse (a NaN or an infinity written as a double, a string that
    is not UTF-8 or holds a NUL) — is left to the generic, validating decoder (``others``).

    A batch is checked as a whole, with numpy on one buffer joining its messages: a loop over
    the records in Python cost more than scoring them. What the arrays cannot settle cheaply
    (an id of 64 bytes or more, whose length takes a second varint byte; an id that is not
    ASCII or holds a NUL; an ``event_time`` varint longer than ten bytes) is checked record by
    record (`_locate`), with the same outcome.
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
        self._header = _BytePattern(self.header)
        self._view_part = _BytePattern(self.view_part)
        self._block = _BytePattern(self.block, free=~constant)
        # A block with nulls is 8 bytes shorter per null and read by a compiled loop.
        self.shortest_block = len(self.block) - 8 * self.n
        self.key_parts = encoder.key_parts
        self._count = np.frombuffer(encoder.values_count, dtype=np.uint8)
        self._keys = encoder.key_table
        self._padding = _PADDING + bytes(self._block.width)  # a block window past a short record

    def read(self, messages: Sequence[bytes]) -> FastBatch:
        count = len(messages)
        lengths = np.fromiter(map(len, messages), dtype=np.int64, count=count)
        starts = np.zeros(count, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        buf = np.frombuffer(b"".join([*messages, self._padding]), dtype=np.uint8)
        rows, head_ends, block_starts = self._candidates(messages, buf, starts, lengths)
        matrix, fits = self._values(buf, starts[rows] + block_starts)
        sizes = np.full(len(rows), len(self.block), dtype=np.int64)
        misfits = np.flatnonzero(~fits)
        if len(misfits):  # blocks with nulls (or not this view's at all)
            at = rows[misfits]
            nulls, null_sizes, ok = record_kernels.values_maps(
                buf, starts[at] + block_starts[misfits], starts[at] + lengths[at], self._count,
                *self._keys)
            fits[misfits[ok]] = True
            matrix[misfits[ok]] = nulls[ok]
            sizes[misfits[ok]] = null_sizes[ok]
        # The slices, the one variable part left, as bytes: a record's own, read once per map.
        fast = np.flatnonzero(fits)
        picked = (messages if len(fast) == count  # every record, in order
                  else [messages[i] for i in rows[fast].tolist()])
        block_ends = block_starts[fast] + sizes[fast]
        tail_starts = block_ends.tolist()
        tails = [data[start:] for data, start in zip(picked, tail_starts, strict=True)]
        good = self._tails_are_good(tails)
        if not good.all():
            fast = fast[good]
            picked = [data for data, ok in zip(picked, good.tolist(), strict=True) if ok]
            tails = [tail for tail, ok in zip(tails, good.tolist(), strict=True) if ok]
            block_ends = block_ends[good]
        taken = np.zeros(count, dtype=bool)
        taken[rows[fast]] = True
        head_ends, block_starts = head_ends[fast].tolist(), block_starts[fast].tolist()
        return FastBatch(
            index=rows[fast].tolist(),
            heads=[data[HEADER_SIZE:end] for data, end in zip(picked, head_ends, strict=True)],
            slices=tails,
            values=[data[start:end] for data, start, end in zip(
                picked, block_starts, block_ends.tolist(), strict=True)],
            matrix=matrix if len(fast) == len(matrix) else matrix[fast],
            others=np.flatnonzero(~taken).tolist())

    def _candidates(self, messages: Sequence[bytes], buf: np.ndarray, starts: np.ndarray,
                    lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The records laid out as this view's up to their values block (which `_values`
        checks, and the slices after it `_tails_are_good`): their positions in the batch, and
        where, in each record, its head (event_id, entity_id, event_time) ends and its values
        block starts. `buf` holds the records joined (at `starts`), then `_PADDING`.

        Each step narrows `rows` (and `at`, where each record starts in `buf`) to the records
        still in the running: one that fails a check is left to the generic decoder, one the
        step cannot settle with arrays goes to `_locate`.
        """
        deferred = []
        rows = np.flatnonzero(lengths > HEADER_SIZE)  # shorter: no header, or no event_id
        rows = rows[self._header.matches(self._header.windows(buf, starts[rows]))]
        at = starts[rows]
        # event_id, then entity_id: a one-byte length is a string under 64 bytes; an odd one
        # is negative, and the record must go on after the string.
        ends, string_ends = np.full(len(rows), HEADER_SIZE), []
        for _ in range(2):
            length = buf[at + ends]
            longer = length >= 0x80
            deferred.append(rows[longer])
            ends = ends + 1 + (length >> 1)
            keep = ~longer & ((length & 1) == 0) & (ends < lengths[rows])
            rows, at, ends = rows[keep], at[keep], ends[keep]
            string_ends = [e[keep] for e in string_ends] + [ends]
        id_end, key_end = string_ends
        # Both ids ASCII (so UTF-8) without a NUL: a byte under 0x01 or over 0x7f wraps past
        # 0x7e once 1 is taken away. entity_id's length byte between them may be 0 (empty).
        if len(rows):
            ids = _windows(buf, at + HEADER_SIZE + 1, int((key_end - HEADER_SIZE - 1).max()))
            odd = (ids - np.uint8(1)) >= 0x7F
            odd[np.arange(len(rows)), id_end - HEADER_SIZE - 1] = False
            first = odd.argmax(axis=1)
            unusual = odd[np.arange(len(rows)), first] & (first < key_end - HEADER_SIZE - 1)
            deferred.append(rows[unusual])
            rows, at, key_end = rows[~unusual], at[~unusual], key_end[~unusual]
        # event_time: its varint ends at the first byte under 0x80. Then the view and its
        # version, and a whole values block.
        last = _windows(buf, at + key_end, _TIME_WINDOW) < 0x80
        first = last.argmax(axis=1)
        ended = last[np.arange(len(rows)), first]
        deferred.append(rows[~ended])
        head_end = key_end + first + 1
        block_start = head_end + len(self.view_part)
        keep = ended & (block_start + self.shortest_block <= lengths[rows])
        rows, at, head_end, block_start = rows[keep], at[keep], head_end[keep], block_start[keep]
        keep = self._view_part.matches(self._view_part.windows(buf, at + head_end))
        rows, head_end, block_start = rows[keep], head_end[keep], block_start[keep]

        located = [(i, self._locate(messages[i])) for i in np.concatenate(deferred).tolist()]
        extra = np.array([(i, *spans) for i, spans in located if spans is not None],
                         dtype=np.int64).reshape(-1, 3)
        if not len(extra):
            return rows, head_end, block_start
        order = np.argsort(np.concatenate([rows, extra[:, 0]]), kind="stable")
        return (np.concatenate([rows, extra[:, 0]])[order],
                np.concatenate([head_end, extra[:, 1]])[order],
                np.concatenate([block_start, extra[:, 2]])[order])

    def _locate(self, data: bytes) -> tuple[int, int] | None:
        """`_candidates` for one record, whatever its lengths and ids: where its head ends and
        its values block starts, or None if it is not laid out as this view's or the decoder
        would refuse one of its ids."""
        try:
            if data[:HEADER_SIZE] != self.header:
                return None
            id_start, id_end = _string_span(data, HEADER_SIZE)
            key_start, key_end = _string_span(data, id_end)
            if not data[HEADER_SIZE:key_end].isascii():  # all-ASCII bytes are valid UTF-8
                data[id_start:id_end].decode()  # UnicodeDecodeError is a ValueError
                data[key_start:key_end].decode()
            if 0 in data[id_start:id_end] or 0 in data[key_start:key_end]:
                return None  # a NUL: the validating decoder refuses and names it
            _, head_end = _read_varint(data, key_end)
        except (ValueError, IndexError):
            return None
        block_start = head_end + len(self.view_part)
        if (data[head_end:block_start] != self.view_part
                or len(data) < block_start + self.shortest_block):
            return None
        return head_end, block_start

    def _values(self, buf: np.ndarray, block_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The doubles of the values blocks at `block_at` (positions in `buf`), a row each, and
        whether each block is this view's: every constant byte the template's (each key, each
        branch index, the counts) and every value finite. NaN and infinities are no feature
        values (null is): the generic decoder dead-letters such a record, naming the field."""
        if not len(block_at):
            return np.zeros((0, self.n)), np.zeros(0, dtype=bool)
        blocks = self._block.windows(buf, block_at)
        # The doubles are unaligned: read through a float view advancing a byte at a time.
        doubles = np.ndarray((len(blocks), blocks.shape[1] - 7), dtype="<f8", buffer=blocks,
                             strides=(blocks.shape[1], 1))
        matrix = doubles[:, self.double_at]
        return matrix, self._block.matches(blocks) & np.isfinite(matrix).all(axis=1)

    def _tails_are_good(self, tails: list[bytes]) -> np.ndarray:
        """Whether each tail is a well-formed slices map ending its record. Slice combinations
        repeat, so each distinct map is parsed once and remembered (up to 10,000 of them)."""
        good_tails = self._good_tails
        good = np.fromiter(map(good_tails.__contains__, tails), dtype=bool, count=len(tails))
        for k in np.flatnonzero(~good).tolist():
            tail = tails[k]
            try:
                good[k] = _map_of_strings_end(tail, 0) == len(tail)
            except (ValueError, IndexError):
                continue
            if good[k] and len(good_tails) < 10_000:
                good_tails.add(tail)
        return good


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
        rows = len(batch.heads)
        # Each row's score and decision, cut from one buffer; the rest is copied per row.
        scored = np.empty((rows, 9), dtype=np.uint8)
        scored[:, :8] = np.ascontiguousarray(scores, dtype="<f8").view(np.uint8).reshape(rows, 8)
        scored[:, 8] = scores >= self.threshold
        flat = scored.tobytes()
        return list(map(b"".join, zip(
            repeat(self.header, rows), batch.heads, [flat[k:k + 9] for k in range(0, 9 * rows, 9)],
            repeat(self.threshold_bytes + self.model_part, rows), batch.slices, batch.values,
            repeat(arm_bytes + struct.pack("<d", latency_ms), rows), strict=True)))
