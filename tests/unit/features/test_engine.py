"""FeatureEngine against the naive oracle: values, lateness, batching, restore and expiry."""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from driftline.core.features import (
    AGGREGATIONS,
    EventBatch,
    FeatureEngine,
    FeatureView,
    load_definitions,
)
from driftline.feature_defs import DEFINITIONS_DIR
from tests.unit.features.feature_oracle import run_oracle

LATENESS_MS = 30_000
WINDOWS = {
    "r30s": "{kind: rolling, size: 30s}",
    "r10m": "{kind: rolling, size: 10m}",
    "t1m": "{kind: tumbling, size: 1m}",
    "h5m": "{kind: hopping, size: 5m, hop: 1m}",
}
# Long windows are aggregated per slice from a cache (core/features/slices.py).
LONG_WINDOWS = {"r8h": "{kind: rolling, size: 8h}", "r6h": "{kind: rolling, size: 6h}"}
FIELD_OF = {"distinct_count": "merchant_id", "count": None, "seconds_since_previous": None}


def _every_aggregation_yaml(windows: dict[str, str] = WINDOWS,
                            aggregations: Sequence[str] = AGGREGATIONS) -> str:
    features = []
    for (wname, window), agg in itertools.product(windows.items(), aggregations):
        field = FIELD_OF.get(agg, "amount")
        field_line = f", field: {field}" if field else ""
        features.append(f"  {agg}_{wname}: {{aggregation: {agg}{field_line}, window: {window}}}")
    names = [line.split(":")[0].strip() for line in features]
    return f"""
entities:
  card: {{key: entity_id}}
sources:
  tx:
    topic: driftline.events
    schema: driftline.TransactionEvent
    event_time: event_time
    allowed_lateness: {LATENESS_MS // 1000}s
    fields: {{entity_id: string, amount: numeric, merchant_id: string, segment: string}}
features:
{chr(10).join(features)}
views:
  every: {{entity: card, source: tx, features: [{", ".join(names)}]}}
"""


@pytest.fixture(scope="module")
def every_view(tmp_path_factory: pytest.TempPathFactory) -> FeatureView:
    path = tmp_path_factory.mktemp("defs") / "every.yaml"
    path.write_text(_every_aggregation_yaml())
    return load_definitions(path).view("every")


@pytest.fixture(scope="module")
def long_view(tmp_path_factory: pytest.TempPathFactory) -> FeatureView:
    path = tmp_path_factory.mktemp("defs") / "long.yaml"
    path.write_text(_every_aggregation_yaml(LONG_WINDOWS))
    return load_definitions(path).view("every")


@pytest.fixture(scope="module")
def demo_view() -> FeatureView:
    return load_definitions(DEFINITIONS_DIR).view("transactions_v1")


def make_stream(seed: int, n_sessions: int, n_entities: int, span_ms: int) -> pd.DataFrame:
    """Bursty sessions per entity, arrival shuffled within the lateness, plus late stragglers."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(n_entities) + 5.0) ** 0.8
    session_entity = rng.choice(n_entities, n_sessions, p=weights / weights.sum())
    sizes = rng.geometric(0.2, n_sessions)
    entity = np.repeat(session_entity, sizes)
    gaps = rng.exponential(20_000, len(entity))
    starts = np.repeat(rng.integers(0, span_ms, n_sessions), sizes)
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.cumsum(sizes) - sizes], sizes)
    # 500 ms resolution so equal event times (ties broken by seq) occur.
    time = (1_700_000_000_000 + (starts + offsets) // 500 * 500).astype(np.int64)
    arrival = np.argsort(time + rng.uniform(0, 0.9 * LATENESS_MS, len(time)), kind="stable")
    entity, time = entity[arrival], time[arrival].copy()
    # Stragglers beyond the lateness, and events exactly at / one ms below the watermark.
    for i in rng.choice(np.arange(1, len(time)), 60, replace=False):
        prior = time[:i].max()
        time[i] = prior - LATENESS_MS - rng.choice([0, 1, int(rng.integers(2, 600_000))])
    n = len(time)
    amount = np.round(rng.lognormal(3, 1, n), 2) * np.where(rng.random(n) < 0.05, -1, 1)
    return pd.DataFrame(
        {
            "entity_id": [f"card-{e:05d}" for e in entity],
            "entity": [f"card-{e:05d}" for e in entity],
            "event_time": time,
            "seq": np.arange(1_000, 1_000 + n, dtype=np.int64) * 3,  # gaps, like offsets
            "amount": amount,
            "merchant_id": [f"m{m}" for m in rng.zipf(1.5, n) % 300],
            "segment": rng.choice(["retail", "business"], n),
        }
    )


def to_batch(events: pd.DataFrame) -> EventBatch:
    return EventBatch(
        entity=events["entity_id"].to_numpy(dtype=str),
        event_time_ms=events["event_time"].to_numpy(np.int64),
        seq=events["seq"].to_numpy(np.int64),
        fields={
            "amount": events["amount"].to_numpy(np.float64),
            "merchant_id": events["merchant_id"].to_numpy(dtype=str),
        },
    )


def run(engine: FeatureEngine, batch: EventBatch, ends: list[int]):
    """Feed ``batch`` cut at ``ends``; returns applied, values, per-batch online, final online."""
    applied, values, per_batch, final = [], [], [], {}
    start = 0
    for end in ends:
        out = engine.process(batch.take(slice(start, end)))
        applied.append(out.applied)
        values.append(out.values)
        online = {}
        for e, t, v in zip(
            out.online_entity, out.online_event_time_ms, out.online_values, strict=True
        ):
            online[str(e)] = (int(t), v)
        per_batch.append(online)
        final.update(online)
        start = end
    return np.concatenate(applied), np.concatenate(values), per_batch, final


def random_cuts(n: int, seed: int, count: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted({*rng.choice(np.arange(1, n), count - 1, replace=False).tolist(), n})


def assert_online_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for entity, (t, values) in expected.items():
        assert actual[entity][0] == t, entity
        np.testing.assert_allclose(actual[entity][1], values, rtol=1e-9, atol=1e-9, err_msg=entity)


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    events = make_stream(seed=7, n_sessions=4_000, n_entities=2_000, span_ms=3 * 3_600_000)
    assert 15_000 < len(events) < 25_000 and events["entity"].nunique() > 1_000
    return events


def cache_every_entity(monkeypatch: pytest.MonkeyPatch, cached_from: int | None) -> None:
    """Cache the long windows' slices of entities from ``cached_from`` rows (None: default)."""
    if cached_from is not None:
        from driftline.core.features import slices

        monkeypatch.setattr(slices, "CACHED_FROM_ROWS", cached_from)


@pytest.mark.parametrize(("view_name", "cached_from"), [
    ("every", None), ("long", None), ("long", 0), ("demo", None), ("demo", 0)])
def test_matches_oracle_for_any_batching(view_name, cached_from, every_view, long_view, demo_view,
                                         stream, monkeypatch):
    cache_every_entity(monkeypatch, cached_from)
    view = {"every": every_view, "long": long_view, "demo": demo_view}[view_name]
    batch = to_batch(stream)
    cuts = random_cuts(len(stream), seed=3, count=25)
    oracle = run_oracle(view, stream, cuts)
    assert 20 <= oracle.late.sum() <= 60  # the stream really has late events

    for ends in ([len(stream)], cuts):
        applied, values, per_batch, final = run(FeatureEngine(view), batch, ends)
        np.testing.assert_array_equal(~applied, oracle.late)
        np.testing.assert_allclose(values, oracle.values, rtol=1e-9, atol=1e-9)
        assert_online_equal(final, oracle.final_online)
    for actual, expected in zip(per_batch, oracle.batch_online, strict=True):
        assert_online_equal(actual, expected)


def test_a_long_window_without_a_value_field_matches_the_oracle(stream, tmp_path, monkeypatch):
    """Counts and gaps alone read no field: the window's count takes a pass of its own."""
    cache_every_entity(monkeypatch, 0)
    path = tmp_path / "counts.yaml"
    path.write_text(_every_aggregation_yaml(LONG_WINDOWS, ["count", "seconds_since_previous"]))
    view = load_definitions(path).view("every")
    oracle = run_oracle(view, stream, [len(stream)])
    applied, values, _, final = run(FeatureEngine(view), to_batch(stream), [len(stream)])
    np.testing.assert_array_equal(~applied, oracle.late)
    np.testing.assert_allclose(values, oracle.values, rtol=1e-9, atol=1e-9)
    assert_online_equal(final, oracle.final_online)


def test_every_aggregation_and_window_is_exercised(every_view, stream):
    oracle = run_oracle(every_view, stream.iloc[:3_000], [3_000])
    for i, name in enumerate(every_view.feature_names):
        column = oracle.values[~oracle.late, i]
        finite = column[np.isfinite(column)]
        assert len(np.unique(finite)) > 3, name  # not constant: the feature is really tested


@pytest.mark.parametrize("view_name", ["long", "demo"])
@pytest.mark.parametrize("cached_from", [None, 0])
def test_results_do_not_depend_on_batching_bitwise(view_name, cached_from, long_view, demo_view,
                                                   stream, monkeypatch):
    cache_every_entity(monkeypatch, cached_from)
    view = long_view if view_name == "long" else demo_view
    batch = to_batch(stream)
    one = run(FeatureEngine(view), batch, [len(stream)])
    many = run(FeatureEngine(view), batch, random_cuts(len(stream), seed=11, count=200))
    np.testing.assert_array_equal(one[1], many[1])
    assert one[3].keys() == many[3].keys()
    for entity, (t, values) in one[3].items():
        assert many[3][entity][0] == t
        np.testing.assert_array_equal(many[3][entity][1], values, err_msg=entity)


def _savez_roundtrip(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return {k: loaded[k] for k in loaded.files}


@pytest.mark.parametrize(("view_name", "cached_from"), [("every", None), ("long", None),
                                                        ("long", 0)])
def test_restore_from_snapshot_and_deltas_continues_like_live(view_name, cached_from, every_view,
                                                              long_view, stream, monkeypatch):
    cache_every_entity(monkeypatch, cached_from)
    every_view = every_view if view_name == "every" else long_view
    batch = to_batch(stream)
    cuts = random_cuts(len(stream), seed=5, count=30)
    live = FeatureEngine(every_view)
    starts = [0, *cuts[:-1]]
    for s, e in zip(starts[:10], cuts[:10], strict=True):
        live.process(batch.take(slice(s, e)))
    snapshot = _savez_roundtrip(live.snapshot())
    deltas = []
    for s, e in zip(starts[10:20], cuts[10:20], strict=True):
        deltas.append(_savez_roundtrip(live.process(batch.take(slice(s, e))).state_delta))
    from_log = FeatureEngine.restore(every_view, [snapshot, *deltas])
    from_snapshot = FeatureEngine.restore(every_view, [_savez_roundtrip(live.snapshot())])
    for engine in (from_log, from_snapshot):
        assert engine.state_rows == live.state_rows
        assert engine.watermark_ms == live.watermark_ms
        for key, value in live.snapshot().items():
            np.testing.assert_array_equal(engine.snapshot()[key], value, err_msg=key)
    for s, e in zip(starts[20:], cuts[20:], strict=True):
        part = batch.take(slice(s, e))
        expected = live.process(part)
        for engine in (from_log, from_snapshot):
            got = engine.process(part)
            np.testing.assert_array_equal(got.applied, expected.applied)
            np.testing.assert_array_equal(got.values, expected.values)
            np.testing.assert_array_equal(got.online_entity, expected.online_entity)
            np.testing.assert_array_equal(got.online_values, expected.online_values)


def _strings_stored_as_they_were(piece: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A snapshot or delta in the format before string columns were coded: each string column
    a fixed-width unicode array of its own."""
    old = {k: v for k, v in piece.items() if not k.endswith((".words", ".codes"))}
    for key in [k[:-len(".codes")] for k in piece if k.endswith(".codes")]:
        old[key] = piece[f"{key}.words"][piece[f"{key}.codes"]]
    return old


def test_string_columns_are_stored_as_sorted_words_and_codes_and_old_logs_still_restore(
        every_view, stream):
    """Strings in a snapshot are their distinct words (sorted: a snapshot depends on the rows,
    not on an engine's codes) and an int32 code per row; non-ASCII ids come back as they
    went in; a log written before (one unicode array per string column) restores the same."""
    events = stream.iloc[:3_500].copy()
    events["entity_id"] = [f"kunde-{e}-ü€" if i % 3 == 0 else e
                           for i, e in enumerate(events["entity_id"])]
    batch = to_batch(events)
    live = FeatureEngine(every_view)
    snapshot = live.process(batch.take(slice(0, 1_000))).state_delta
    deltas = [live.process(batch.take(slice(a, a + 1_000))).state_delta for a in (1_000, 2_000)]
    for piece in [snapshot, *deltas, live.snapshot()]:
        for key in [k for k in piece if k.endswith(".codes")]:
            words = piece[key.replace(".codes", ".words")]
            assert piece[key].dtype == np.int32 and words.dtype.kind == "U"
            assert words.tolist() == sorted(set(words.tolist()))  # sorted, each once
            assert piece[key].max() == len(words) - 1
    assert {"entity.words", "entity.codes"} <= set(live.snapshot()) and "entity" not in deltas[0]
    state = _savez_roundtrip(live.snapshot())
    assert set(state["entity.words"][state["entity.codes"]]) == set(
        events.loc[events["seq"].isin(state["seq"]), "entity_id"])
    assert any(not w.isascii() for w in state["entity.words"].tolist())
    log = [_savez_roundtrip(p) for p in (snapshot, *deltas)]
    for restored in (FeatureEngine.restore(every_view, log),
                     FeatureEngine.restore(every_view, [_strings_stored_as_they_were(p)
                                                        for p in log])):
        for key, value in live.snapshot().items():
            np.testing.assert_array_equal(restored.snapshot()[key], value, err_msg=key)
        rest = batch.take(slice(3_000, 3_500))
        np.testing.assert_array_equal(restored.process(rest).values,
                                      copy.deepcopy(live).process(rest).values)


def test_restore_rejects_other_view_version(every_view, demo_view):
    with pytest.raises(ValueError, match="view version"):
        FeatureEngine.restore(demo_view, [FeatureEngine(every_view).snapshot()])


def test_expiry_bounds_state_on_a_long_stream(every_view):
    # 40 hours of traffic; the largest window plus lateness is ~10.5 minutes.
    events = make_stream(seed=1, n_sessions=10_000, n_entities=300, span_ms=40 * 3_600_000)
    engine = FeatureEngine(every_view)
    batch = to_batch(events)
    sizes = []
    for start in range(0, len(events), 1_000):
        engine.process(batch.take(slice(start, start + 1_000)))
        sizes.append(engine.state_rows)
    assert max(sizes) < len(events) / 50
    # Every retained row is still reachable by a query at the watermark.
    assert engine.snapshot()["event_time_ms"].min() >= engine.watermark_ms - 10 * 60_000 + 1


def test_late_event_updates_online_but_not_emitted_rows(demo_view):
    engine = FeatureEngine(demo_view)
    records = [
        {"entity_id": "a", "event_time": 100_000, "amount": 1.0, "merchant_id": "m"},
        {"entity_id": "a", "event_time": 50_000, "amount": 2.0, "merchant_id": "n"},  # within 60s
        {"entity_id": "a", "event_time": 30_000, "amount": 4.0, "merchant_id": "n"},  # late
    ]
    out = engine.process(EventBatch.from_records(records, [1, 2, 3], demo_view))
    col = demo_view.feature_names.index("amount_sum_5m")
    assert out.applied.tolist() == [True, True, False]
    assert out.values[:, col].tolist()[:2] == [1.0, 2.0] and np.isnan(out.values[2, col])
    assert out.online_values[0, col] == 3.0 and out.watermark_ms == 40_000
    ssp = demo_view.feature_names.index("seconds_since_prev")
    assert np.isnan(out.values[0, ssp]) and out.online_values[0, ssp] == 50.0


def test_empty_batch_and_bad_seq(demo_view):
    engine = FeatureEngine(demo_view)
    empty = EventBatch.from_records([], [], demo_view)
    assert engine.process(empty).values.shape == (0, len(demo_view.features))
    record = {"entity_id": "a", "event_time": 1, "amount": 1.0, "merchant_id": "m"}
    engine.process(EventBatch.from_records([record], [5], demo_view))
    with pytest.raises(ValueError, match="seq"):
        engine.process(EventBatch.from_records([record], [5], demo_view))


@pytest.mark.parametrize("view_name", ["every", "long"])
def test_distinct_count_by_marking_and_by_sorting_agree(view_name, every_view, long_view, stream,
                                                        monkeypatch):
    from driftline.core.features import slices

    cache_every_entity(monkeypatch, 0)
    view = every_view if view_name == "every" else long_view
    batch = to_batch(stream)
    cuts = random_cuts(len(stream), seed=13, count=40)
    results = []
    for factor in (0, 10**9):  # 0: always sort the pairs; 10**9: always mark a dense table
        monkeypatch.setattr(slices, "DENSE_DISTINCT_FACTOR", factor)
        results.append(run(FeatureEngine(view), batch, cuts))
    columns = [i for i, f in enumerate(view.features) if f.aggregation == "distinct_count"]
    assert len(columns) == len(WINDOWS if view_name == "every" else LONG_WINDOWS)
    np.testing.assert_array_equal(results[0][1][:, columns], results[1][1][:, columns])
    for (_, sorted_values), (_, marked_values) in zip(
        results[0][3].values(), results[1][3].values(), strict=True
    ):
        np.testing.assert_array_equal(sorted_values[columns], marked_values[columns])


def test_long_window_caches_stay_exact_when_the_vocabularies_are_compacted(long_view,
                                                                           monkeypatch):
    # 90 hours of short-lived cards: each makes four payments 10 minutes apart at one merchant
    # of its own, so the dictionaries of cards and merchants are compacted while the 6 h and 8 h
    # windows' slice caches hold their codes. A card's slices are cached from its third payment
    # on and read by its fourth. Every tenth card pays twice more, 8 h 25 min and 8 h 50 min
    # after its first: by then only one retained row is left, so it is no longer cached, and
    # the last payment must read the one before from the rows.
    cache_every_entity(monkeypatch, 3)
    rng = np.random.default_rng(3)
    n = 9_000
    born = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * 36_000
    back = np.arange(0, n, 10)
    minute = 60_000
    time = np.concatenate([born + k * 10 * minute for k in range(4)]
                          + [born[back] + 505 * minute, born[back] + 530 * minute])
    card = np.concatenate([np.arange(n)] * 4 + [back, back])
    order = np.argsort(time, kind="stable")
    events = pd.DataFrame({
        "entity_id": [f"card-{c}" for c in card[order]],
        "event_time": time[order],
        "seq": np.arange(len(time), dtype=np.int64),
        "amount": np.round(rng.lognormal(3, 1, len(time)), 2),
        "merchant_id": [f"m-{c}" for c in card[order]],
    })
    events["entity"] = events["entity_id"]
    engine = FeatureEngine(long_view)
    cuts = list(range(50, len(time), 50)) + [len(time)]
    applied, values, _, final = run(engine, to_batch(events), cuts)
    assert len(engine._vocab["entity"]) < n / 2  # compacted, not just grown
    for cache in engine._caches.values():  # some cards are cached, not all
        assert 0 < len(cache.cached) < 200
    oracle = run_oracle(long_view, events, cuts)
    np.testing.assert_array_equal(~applied, oracle.late)
    np.testing.assert_allclose(values, oracle.values, rtol=1e-9, atol=1e-9)
    assert_online_equal(final, oracle.final_online)
