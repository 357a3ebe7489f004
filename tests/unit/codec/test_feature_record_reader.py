"""The batch-vectorised ``FeatureRecordReader`` against the per-record reader it replaced.

The reader checks a whole batch with numpy and settles the few records its arrays cannot (long
or non-ASCII ids, long varints) one by one. Its contract is the per-record reader's, kept
below as ``reference_read`` (with the ``entity_ids`` and ``PredictionWriter.write`` of that
version): every batch must come out the same, field by field and the matrix bit for bit, and
the predictions written from it byte for byte. The batches are built from parts, each drawn
valid or broken in the ways that matter to the layout: ids of every length, encoding and
content (non-ASCII, invalid UTF-8, NUL, empty), length varints minimal, padded or negative,
``event_time`` varints up to sixteen bytes, other headers, views and versions, nulls, NaN and
infinities, other key orders, slices maps valid or not, and whole messages truncated, extended,
flipped or replaced by garbage. A broken reader is shown to fail the same check.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from driftline.core.codec import SchemaSet
from driftline.core.codec.feature_records import (
    FastBatch,
    FeatureRecordEncoder,
    FeatureRecordReader,
    PredictionWriter,
    _map_of_strings_end,
    _read_varint,
    _string_span,
    avro_string,
    zigzag_varint,
)
from driftline.core.codec.single_object import header

SCHEMAS = SchemaSet.load()
VIEW, VERSION = "transactions_v1", "0123456789ab"
SLICE_NAMES = ("segment", "channel")


# -- the per-record reader the batch reader replaced (its contract) ----------------------------
def reference_read(reader: FeatureRecordReader, messages: Sequence[bytes]) -> FastBatch:
    """``FeatureRecordReader.read`` as it was: one record at a time."""
    out = FastBatch()
    header_, view_part = reader.header, reader.view_part
    count, keys = zigzag_varint(reader.n) if reader.n else b"", reader.key_parts
    good_tails: set[bytes] = set()
    blocks, rows = [], []
    for i, data in enumerate(messages):
        try:
            if data[:10] != header_:
                raise ValueError
            id_start, id_end = _string_span(data, 10)
            key_start, key_end = _string_span(data, id_end)
            if not data[10:key_end].isascii():
                data[id_start:id_end].decode()
                data[key_start:key_end].decode()
            if 0 in data[id_start:id_end] or 0 in data[key_start:key_end]:
                raise ValueError
            _, pos = _read_varint(data, key_end)
            head_end = pos
            if data[pos:pos + len(view_part)] != view_part:
                raise ValueError
            pos += len(view_part)
            block_start, row = pos, []
            if data[pos:pos + len(count)] != count:
                raise ValueError
            pos += len(count)
            for key in keys:  # each key, then null or a finite double
                if data[pos:pos + len(key)] != key:
                    raise ValueError
                pos += len(key)
                branch = data[pos]
                if branch == 0:
                    row.append(math.nan)
                    pos += 1
                elif branch == 2 and len(data) >= pos + 9:
                    (value,) = struct.unpack("<d", data[pos + 1:pos + 9])
                    if not math.isfinite(value):
                        raise ValueError
                    row.append(value)
                    pos += 9
                else:
                    raise ValueError
            if data[pos] != 0:
                raise ValueError
            block, tail = data[block_start:pos + 1], data[pos + 1:]
            if tail not in good_tails:
                if _map_of_strings_end(tail, 0) != len(tail):
                    raise ValueError
                good_tails.add(tail)
        except (ValueError, IndexError):
            out.others.append(i)
            continue
        out.index.append(i)
        out.heads.append(data[10:head_end])
        blocks.append(block)
        rows.append(row)
        out.slices.append(tail)
    out.matrix = np.array(rows, dtype=np.float64).reshape(len(rows), reader.n)
    out.values = blocks
    return out


def reference_entity_ids(heads: Sequence[bytes]) -> list[str]:
    keys = []
    for head in heads:
        _, id_end = _string_span(head, 0)
        start, end = _string_span(head, id_end)
        keys.append(head[start:end])
    return b"\x00".join(keys).decode().split("\x00") if keys else []


def reference_write(writer: PredictionWriter, batch: FastBatch, scores: np.ndarray, arm: str,
                    latency_ms: float) -> list[bytes]:
    score_bytes = np.ascontiguousarray(scores, dtype="<f8").tobytes()
    decisions = (scores >= writer.threshold).tolist()
    tail = writer.threshold_bytes + writer.model_part
    trailer = writer._arm_bytes[arm] + struct.pack("<d", latency_ms)
    return [b"".join((writer.header, head, score_bytes[8 * k:8 * k + 8],
                      b"\x01" if decision else b"\x00", tail, slices, values, trailer))
            for k, (head, slices, values, decision) in enumerate(
                zip(batch.heads, batch.slices, batch.values, decisions, strict=True))]


def check_same(reader: FeatureRecordReader, messages: list[bytes]) -> FastBatch:
    """The reader's batch equals the reference's, and so do what is made from it."""
    got = reader.read(messages)
    want = reference_read(reader, messages)
    assert got.index == want.index, "index"
    assert got.others == want.others, "others"
    assert got.heads == want.heads, "heads"
    assert got.slices == want.slices, "slices"
    assert got.values == want.values, "values"
    assert (got.matrix.dtype, got.matrix.shape) == (want.matrix.dtype, want.matrix.shape)
    assert got.matrix.tobytes() == want.matrix.tobytes(), "matrix"
    assert got.entity_ids == reference_entity_ids(want.heads), "entity_ids"
    rows = np.arange(0, len(got.index), 2)
    part = got.take(rows)
    assert (part.index, part.heads, part.slices, part.values, part.entity_ids) == (
        [want.index[k] for k in rows], [want.heads[k] for k in rows],
        [want.slices[k] for k in rows], [want.values[k] for k in rows],
        reference_entity_ids([want.heads[k] for k in rows])), "take"
    writer = PredictionWriter("fraud", 3, VIEW, VERSION, 0.5, SCHEMAS)
    scores = np.linspace(0.0, 1.0, len(got.index), dtype=np.float32)  # as the model returns
    assert writer.write(got, scores, "candidate", 2.5) == reference_write(
        writer, want, scores, "candidate", 2.5), "predictions"
    return got


# -- batches built from parts, each valid or not -----------------------------------------------
NAMES = ["txn_count_5m", "amount_sum_1h", "größe", "x" * 70]  # one key needs a 2-byte length
ASCII = "abcdefghijklmnopqrstuvwxyz0123456789-_:."


def length_bytes(rnd: random.Random, n: int) -> bytes:
    """An Avro length: mostly minimal, sometimes padded with continuation bytes (still valid
    varint arithmetic), off by one, or negative."""
    kind = rnd.choices(["minimal", "padded", "off", "negative"], [20, 2, 1, 1])[0]
    if kind == "padded":
        z = 2 * n
        return bytes([(z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, z >> 14])
    if kind == "off":
        return zigzag_varint(max(0, n + rnd.choice([-1, 1])))
    if kind == "negative":
        return zigzag_varint(-1 - n)
    return zigzag_varint(n)


def id_bytes(rnd: random.Random) -> bytes:
    kind = rnd.choices(["short", "long", "empty", "unicode", "nul", "invalid", "binary"],
                       [30, 4, 2, 3, 1, 1, 1])[0]
    if kind == "short":
        return "".join(rnd.choices(ASCII, k=rnd.randint(1, 40))).encode()
    if kind == "long":  # 64 bytes or more: a two-byte length
        return "".join(rnd.choices(ASCII, k=rnd.randint(60, 140))).encode()
    if kind == "unicode":
        return ("kunde-" + "".join(rnd.choices("äöüß€😀", k=rnd.randint(1, 25)))).encode()
    if kind == "nul":
        return b"ev-\x00-" + str(rnd.randint(0, 99)).encode()
    if kind == "invalid":
        return b"ev-\xb0\xff"
    if kind == "binary":
        return rnd.randbytes(rnd.randint(0, 12))
    return b""


def time_bytes(rnd: random.Random) -> bytes:
    """An event_time varint: minimal (up to ten bytes), padded to up to sixteen, unterminated."""
    value = rnd.choice([0, -1, 1_700_000_000_000 + rnd.randint(0, 10**9),
                        rnd.randint(-(2**63), 2**63 - 1)])
    minimal = zigzag_varint(value)
    kind = rnd.choices(["minimal", "padded", "unterminated"], [20, 2, 1])[0]
    if kind == "padded":
        pad = rnd.randint(1, 16 - len(minimal)) if len(minimal) < 16 else 0
        return bytes([minimal[0] | 0x80]) + bytes([b | 0x80 for b in minimal[1:]]) + \
            b"\x80" * (pad - 1) + b"\x00" if pad else minimal
    if kind == "unterminated":
        return b"\x80" * rnd.randint(1, 14)
    return minimal


def values_row(rnd: random.Random, n: int) -> np.ndarray:
    row = np.array([rnd.choice([rnd.gauss(0, 1e6), rnd.random(), 0.0, -0.0, 5e-324,
                                1.7976931348623157e308, float(rnd.randint(0, 9))])
                    for _ in range(n)])
    if n and rnd.random() < 0.1:
        row[rnd.randrange(n)] = math.nan  # a null: another layout
    return row


def values_block(names: list[str], row: np.ndarray) -> bytes:
    """The encoded values map of one row, written here from the Avro rules (NaN: null)."""
    parts = [zigzag_varint(len(names))] if names else []
    for name, value in zip(names, row.tolist(), strict=True):
        parts.append(avro_string(name) + (b"\x00" if math.isnan(value)
                                          else b"\x02" + struct.pack("<d", value)))
    return b"".join([*parts, b"\x00"])


def slices_block(values: list[str]) -> bytes:
    """The encoded slices map (SLICE_NAMES to `values`)."""
    parts = [zigzag_varint(len(values))] if values else []
    for name, value in zip(SLICE_NAMES, values, strict=True):
        parts.append(avro_string(name) + avro_string(value))
    return b"".join([*parts, b"\x00"])


def record(rnd: random.Random, names: list[str]) -> bytes:
    """One feature record from parts; most parts valid, each one sometimes not."""
    version = VERSION if rnd.random() < 0.9 else "ffffffffffff"
    order = names if rnd.random() < 0.95 else rnd.sample(names, len(names))
    encoder = FeatureRecordEncoder(VIEW if rnd.random() < 0.97 else "other", version, order,
                                   SLICE_NAMES, SCHEMAS)
    head = encoder.header if rnd.random() < 0.95 else header(
        SCHEMAS.get(rnd.choice(["driftline.Prediction", "driftline.TransactionEvent"])))
    event_id, entity_id = id_bytes(rnd), id_bytes(rnd)
    block = values_block(order, values_row(rnd, len(order)))
    if len(order) and rnd.random() < 0.05:  # NaN or an infinity where a double goes
        k = rnd.randrange(len(order))
        at = encoder.offsets[k] + len(encoder.values_count)
        bad = struct.pack("<d", rnd.choice([math.nan, math.inf, -math.inf]))
        if block[at - 1:at] == b"\x02":
            block = block[:at] + bad + block[at + 8:]
    slices = slices_block([rnd.choice(["pos", "online", "", "ü", "a\x00b", "z" * 70])
                           for _ in SLICE_NAMES])
    if rnd.random() < 0.03:
        slices = rnd.choice([b"", b"\x00\x00", b"\x02\x02a\x02b", b"\x03\x00", rnd.randbytes(5)])
    return b"".join((head, length_bytes(rnd, len(event_id)), event_id,
                     length_bytes(rnd, len(entity_id)), entity_id, time_bytes(rnd),
                     encoder.view_part, block, slices))


def mutated(rnd: random.Random, message: bytes) -> bytes:
    kind = rnd.choice(["truncate", "extend", "flip", "garbage", "short"])
    if kind == "truncate":
        return message[:rnd.randint(0, len(message))]
    if kind == "extend":
        return message + rnd.randbytes(rnd.randint(1, 4))
    if kind == "flip" and message:
        at = rnd.randrange(len(message))
        return message[:at] + bytes([message[at] ^ rnd.randint(1, 255)]) + message[at + 1:]
    if kind == "short":
        return message[:rnd.randint(0, 12)]
    return rnd.randbytes(rnd.randint(0, 600))


def batch(rnd: random.Random, names: list[str], size: int) -> list[bytes]:
    messages = [record(rnd, names) for _ in range(size)]
    for k in range(size):
        if rnd.random() < 0.1:
            messages[k] = mutated(rnd, messages[k])
    return messages


# -- the checks -----------------------------------------------------------------------------
def fuzz(make: Callable[[list[str]], FeatureRecordReader], **overrides) -> Callable[[], None]:
    """Small batches, hypothesis choosing every part (and shrinking a failure)."""

    @settings(max_examples=max(1, 3 * settings.default.max_examples), **overrides)
    @given(rnd=st.randoms(use_true_random=False), features=st.integers(0, len(NAMES)),
           size=st.integers(0, 12))
    def run(rnd: random.Random, features: int, size: int) -> None:
        names = NAMES[:features]
        check_same(make(names), batch(rnd, names, size))

    return run


def real_reader(names: list[str]) -> FeatureRecordReader:
    return FeatureRecordReader(VIEW, VERSION, names, SCHEMAS)


def test_small_batches_read_as_the_per_record_reader_read_them():
    fuzz(real_reader)()


@pytest.mark.parametrize("seed", range(12))
def test_large_mixed_batches_read_as_the_per_record_reader_read_them(seed):
    """Thousands of records a batch, as the scorer reads them, every kind mixed in."""
    rnd = random.Random(seed)
    names = NAMES[:seed % (len(NAMES) + 1)]
    reader = real_reader(names)
    for _ in range(2):  # the second batch meets slices maps the first one remembered
        fast = check_same(reader, batch(rnd, names, 1500))
        assert len(fast.index) > 300 and len(fast.others) > 300  # both outcomes well used


def test_every_kind_of_record_is_exercised():
    """The parts reach both outcomes and the per-record path: the comparison is not idle."""
    rnd = random.Random(99)
    names = NAMES[:3]
    reader, deferred = real_reader(names), []
    original = reader._locate
    reader._locate = lambda data: deferred.append(data) or original(data)
    fast = check_same(reader, batch(rnd, names, 3000))
    taken = [original(data) is not None for data in deferred]
    assert 50 < sum(taken) < len(taken), "some records of the per-record path are fast, not all"
    assert any(len(fast.heads[k]) > 64 for k in range(len(fast.heads)))
    assert any(not e.isascii() for e in fast.entity_ids)


def test_a_steady_state_batch_takes_no_record_by_record_path():
    """Records as the worker writes them are settled by the arrays alone."""
    encoder = FeatureRecordEncoder(VIEW, VERSION, NAMES[:3], SLICE_NAMES, SCHEMAS)
    rng = np.random.default_rng(2)
    n = 500
    messages = encoder.encode_batch([f"ev-{i}" for i in range(n)], [f"card-{i % 9}" for i in
                                                                    range(n)],
                                    (1_700_000_000_000 + np.arange(n)).tolist(),
                                    rng.gamma(2.0, 50.0, size=(n, 3)),
                                    [["a", "b"] * (n // 2), ["pos"] * n])
    reader = real_reader(NAMES[:3])
    reader._locate = None  # called, it would raise
    fast = check_same(reader, messages)
    assert fast.index == list(range(n))


# -- the check can fail ---------------------------------------------------------------------
class _LeavesWhatItCannotVectorise(FeatureRecordReader):
    """Sends every record its arrays cannot settle (long or non-ASCII ids ...) to ``others``."""

    def _locate(self, data):
        return None


class _TrustsEveryTail(FeatureRecordReader):
    """Takes any bytes after the values block for a slices map."""

    def _tails_are_good(self, tails):
        return np.ones(len(tails), dtype=bool)


@pytest.mark.parametrize("broken", [_LeavesWhatItCannotVectorise, _TrustsEveryTail])
def test_the_comparison_fails_on_a_broken_reader(broken):
    with pytest.raises(AssertionError):
        fuzz(lambda names: broken(VIEW, VERSION, names, SCHEMAS),
             phases=[Phase.generate])()
