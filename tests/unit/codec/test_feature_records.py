"""The bulk FeatureRecord encoder must write exactly what the generic, validating encoder does."""

from __future__ import annotations

import io

import fastavro
import numpy as np
import pytest

from driftline.core.codec.decoder import Decoder
from driftline.core.codec.feature_records import FeatureRecordEncoder, zigzag_varint
from driftline.core.codec.schema_set import default_schema_set
from driftline.core.codec.single_object import encode, header

NAMES = ["txn_count_5m", "amount_sum_1h", "seconds_since_prev", "größe"]


@pytest.mark.parametrize("slices, names", [(("segment", "channel"), NAMES), ((), NAMES),
                                           (("segment",), [])])
def test_bulk_encoding_is_byte_identical_to_the_generic_encoder(slices, names):
    rng = np.random.default_rng(1)
    n = 300
    values = rng.normal(0, 1e6, size=(n, len(NAMES)))
    values[rng.random((n, len(NAMES))) < 0.2] = np.nan
    values[0] = [0.0, -0.0, 1.7976931348623157e308, -5e-324]
    values[1] = np.nan
    values[2] = [np.inf, -np.inf, 1.0, 2.0]
    values = values[:, :len(names)]
    event_ids = [f"ev-{i}-é" * (1 + i % 40) for i in range(n)]
    entities = [f"card-{i % 17}" if i % 5 else ["", "ü" * 40, "x" * 8200][i % 3]
                for i in range(n)]
    times = rng.integers(-(2**62), 2**62, size=n)
    times[:7] = [0, -1, 1_700_000_000_000, 2**63 - 1, -(2**63), 63, -65]
    columns = [[f"{s}-{i % 3}" for i in range(n)] for s in slices]
    encoder = FeatureRecordEncoder("transactions_v1", "0123456789ab", names, slices)
    got, keys = encoder.encode_keyed(event_ids, entities, times, values, columns)
    assert encoder.encode_batch(event_ids, entities, times.tolist(), values, columns) == got
    assert keys == [entity.encode() for entity in entities]
    decoder = Decoder("driftline.FeatureRecord")
    for i in range(n):
        record = {
            "event_id": event_ids[i], "entity_id": entities[i], "event_time": int(times[i]),
            "view": "transactions_v1", "view_version": "0123456789ab",
            "values": {k: (None if np.isnan(v) else float(v))
                       for k, v in zip(names, values[i], strict=True)},
            "slices": {s: columns[j][i] for j, s in enumerate(slices)},
        }
        assert got[i] == unvalidated_encoding(record), f"row {i}"
        if i != 2 or not names:  # row 2 holds infinities, which validation refuses
            assert got[i] == encode("driftline.FeatureRecord", record)
            assert decoder.decode(got[i]) == record


def unvalidated_encoding(record):
    """fastavro's single-object encoding of `record`, without Driftline's validation."""
    schema = default_schema_set().get("driftline.FeatureRecord")
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema.wire, record)
    return header(schema) + body.getvalue()


def test_an_empty_batch_encodes_to_no_records():
    encoder = FeatureRecordEncoder("v", "0123456789ab", NAMES, ("segment",))
    assert encoder.encode_keyed([], [], [], np.zeros((0, len(NAMES))), [[]]) == ([], [])


def test_a_slice_column_per_slice_name_is_required():
    encoder = FeatureRecordEncoder("v", "0123456789ab", NAMES, ("segment", "channel"))
    with pytest.raises(ValueError, match="2 slices"):
        encoder.encode_batch(["e"], ["c"], [1], np.zeros((1, len(NAMES))), [["s"]])


@pytest.mark.parametrize("n, expected", [(0, b"\x00"), (-1, b"\x01"), (1, b"\x02"),
                                         (63, b"\x7e"), (64, b"\x80\x01"),
                                         (-65, b"\x81\x01")])
def test_zigzag_varint_matches_the_avro_spec(n, expected):
    assert zigzag_varint(n) == expected


def _records(n, seed=0, nulls=0.0):
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 50.0, size=(n, len(NAMES)))
    values[rng.random((n, len(NAMES))) < nulls] = np.nan
    ids = [f"ev-{i}" for i in range(n)]
    entities = [f"card-{i % 7}" for i in range(n)]
    times = (1_700_000_000_000 + rng.integers(0, 10**9, size=n)).tolist()
    slices = [[f"seg-{i % 3}" for i in range(n)], ["pos"] * n]
    return ids, entities, times, values, slices


def test_reader_takes_the_fast_path_and_leaves_everything_else_to_the_generic_decoder():
    from driftline.core.codec.feature_records import FeatureRecordReader

    encoder = FeatureRecordEncoder("v", "0123456789ab", NAMES, ("segment", "channel"))
    ids, entities, times, values, slices = _records(200, nulls=0.02)
    messages = encoder.encode_batch(ids, entities, times, values, slices)
    other_version = FeatureRecordEncoder("v", "ffffffffffff", NAMES, ("segment",)).encode_batch(
        ["x"], ["card-x"], [1], values[:1], [["s"]])
    truncated = messages[5][:-3]
    batch = [*messages, other_version[0], truncated, b"garbage"]
    fast = FeatureRecordReader("v", "0123456789ab", NAMES).read(batch)
    assert np.isnan(values).any(axis=1).sum() > 10  # records with nulls are fast too
    assert fast.index == list(range(200))
    assert fast.others == [200, 201, 202]
    assert fast.matrix.tobytes() == values.tobytes()  # a null is NaN, as the generic path has it
    assert all(m.endswith(v + s) for m, v, s in zip(messages, fast.values, fast.slices,
                                                     strict=True))


@pytest.mark.parametrize("arm, latency_ms", [
    (None, 0.0), ("production", 1.25), ("candidate", 0.0371), ("shadow", 1e6)])
def test_predictions_written_from_raw_pieces_equal_the_generic_encoding(arm, latency_ms):
    from driftline.core.codec.feature_records import FeatureRecordReader, PredictionWriter

    encoder = FeatureRecordEncoder("v", "0123456789ab", NAMES, ("segment", "channel"))
    ids, entities, times, values, slices = _records(50, seed=4, nulls=0.1)
    assert np.isnan(values).any(axis=1).sum() > 5
    fast = FeatureRecordReader("v", "0123456789ab", NAMES).read(
        encoder.encode_batch(ids, entities, times, values, slices))
    scores = np.linspace(0, 1, 50)
    writer = PredictionWriter("fraud", 3, "v", "0123456789ab", 0.5)
    written = (writer.write(fast, scores) if arm is None  # the defaults: production, 0.0
               else writer.write(fast, scores, arm, latency_ms))
    decoder = Decoder("driftline.Prediction")
    for i, message in enumerate(written):
        record = {
            "event_id": ids[i], "entity_id": entities[i], "event_time": times[i],
            "score": float(scores[i]), "decision": bool(scores[i] >= 0.5), "threshold": 0.5,
            "model_name": "fraud", "model_version": 3, "view": "v",
            "view_version": "0123456789ab",
            "slices": {"segment": slices[0][i], "channel": slices[1][i]},
            "inputs": {name: None if np.isnan(v) else v
                       for name, v in zip(NAMES, values[i].tolist(), strict=True)},
            "arm": arm or "production", "latency_ms": latency_ms}
        assert message == encode("driftline.Prediction", record), f"prediction {i}"
        assert decoder.decode(message) == record


def test_the_writer_refuses_an_arm_the_schema_does_not_allow():
    from driftline.core.codec.feature_records import FastBatch, PredictionWriter

    writer = PredictionWriter("fraud", 3, "v", "0123456789ab", 0.5)
    assert writer.arms == ("production", "candidate", "shadow")
    with pytest.raises(ValueError, match="unknown arm 'canary' \\(arms: production, candidate, "
                                         "shadow\\)"):
        writer.write(FastBatch(), np.zeros(0), "canary")


def test_reader_gives_each_fast_record_its_entity_id_and_take_selects_rows():
    from driftline.core.codec.feature_records import FeatureRecordReader

    encoder = FeatureRecordEncoder("v", "0123456789ab", NAMES, ("segment",))
    ids, _, times, values, _ = _records(40, seed=5)
    # Short, long (two-byte length), non-ASCII and empty ids; a record with a null stays on the
    # fast path, two with an infinity leave it, and their ids with them.
    entities = [f"card-{i}" if i % 4 else f"kunde-{i}-ü" + "x" * (70 * (i % 8 == 0))
                for i in range(40)]
    entities[3] = ""
    values[7, 1] = np.nan
    values[11, 0] = np.inf
    values[13, 2] = -np.inf
    batch = encoder.encode_batch(ids, entities, times, values, [["s"] * 40])
    fast = FeatureRecordReader("v", "0123456789ab", NAMES).read(batch)
    assert fast.others == [11, 13]
    assert np.isnan(fast.matrix[7, 1]) and np.isnan(fast.matrix).sum() == 1
    assert fast.entity_ids == [entities[i] for i in fast.index]
    rows = [0, 5, 6, 30]
    part = fast.take(rows)
    assert part.index == [fast.index[k] for k in rows] and part.others == []
    assert part.entity_ids == [fast.entity_ids[k] for k in rows]
    assert (part.heads, part.slices, part.values) == (
        [fast.heads[k] for k in rows], [fast.slices[k] for k in rows],
        [fast.values[k] for k in rows])
    np.testing.assert_array_equal(part.matrix, fast.matrix[rows])
    assert FeatureRecordReader("v", "0123456789ab", NAMES).read([b"garbage"]).entity_ids == []


def test_leading_string_reads_the_event_id_alone():
    from driftline.core.codec.feature_records import leading_string
    long_id = "ev-" + "é" * 100  # a two-byte varint length
    for event_id in ("ev-1", long_id):
        record = {"event_id": event_id, "entity_id": "c", "event_time": 1, "score": 0.1,
                  "decision": False, "threshold": 0.5, "model_name": "f", "model_version": 1,
                  "view": "v", "view_version": "1"}
        assert leading_string(encode("driftline.Prediction", record)) == event_id.encode()
