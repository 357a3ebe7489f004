"""LabelJoin against a naive dict-based oracle, its boundaries, bounded state and restore."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from driftline.adapters.redis_state import pack, unpack
from driftline.core.monitoring.id_index import IdIndex, fingerprint
from driftline.core.monitoring.label_join import (
    JoinCounts,
    LabelBatch,
    LabelJoin,
    OutcomeBatch,
    PredictionBatch,
    rows_by_model,
)
from driftline.core.state import MemoryStateBackend, PartitionState

H = 10_000  # horizon used by the generated streams, ms
INPUTS = ("amount", "hour")
SLICES = ("segment",)


# ---------------------------------------------------------------- the oracle


@dataclass
class Oracle:
    """The documented semantics, one record at a time with dicts (no fingerprints, no arrays)."""

    horizon: int
    pending: dict[str, dict] = field(default_factory=dict)
    early: dict[str, dict] = field(default_factory=dict)
    joined: dict[str, int] = field(default_factory=dict)
    watermark: float = -math.inf

    def process(self, preds: list[dict], labels: list[dict]) -> tuple[list[dict], JoinCounts]:
        cutoff = self.watermark - self.horizon
        new_p: dict[str, dict] = {}
        dup_p = 0
        for p in preds:
            i = p["event_id"]
            if i in new_p or i in self.pending or self._joined(i, cutoff):
                dup_p += 1
            else:
                new_p[i] = p
        new_l: dict[str, dict] = {}
        dup_l = 0
        for lab in labels:
            i = lab["event_id"]
            if i in new_l or i in self.early or self._joined(i, cutoff):
                dup_l += 1
            else:
                new_l[i] = lab
        pairs = []
        for i, lab in new_l.items():
            p = self.pending.get(i, new_p.get(i))
            if p is not None and abs(lab["label_time"] - p["event_time"]) <= self.horizon:
                pairs.append((p, lab))
        for i, p in new_p.items():
            lab = self.early.get(i)
            if lab is not None and abs(lab["label_time"] - p["event_time"]) <= self.horizon:
                pairs.append((p, lab))
        done = {p["event_id"] for p, _ in pairs}
        for p, lab in pairs:
            i = p["event_id"]
            self.pending.pop(i, None)
            self.early.pop(i, None)
            self.joined[i] = max(p["event_time"], lab["label_time"])
        self.pending.update({i: p for i, p in new_p.items() if i not in done})
        self.early.update({i: lab for i, lab in new_l.items() if i not in done})
        times = [p["event_time"] for p in preds] + [lab["label_time"] for lab in labels]
        self.watermark = max([self.watermark, *times])
        cutoff = self.watermark - self.horizon
        old_p = [i for i, p in self.pending.items() if p["event_time"] < cutoff]
        old_l = [i for i, lab in self.early.items() if lab["label_time"] < cutoff]
        for i in old_p:
            del self.pending[i]
        for i in old_l:
            del self.early[i]
        self.joined = {i: t for i, t in self.joined.items() if t >= cutoff}
        outcomes = sorted(
            ({**p, "label": lab["label"], "label_time": lab["label_time"]} for p, lab in pairs),
            key=lambda o: (o["label_time"], o["event_id"]),
        )
        counts = JoinCounts(len(pairs), dup_p, dup_l, len(old_p), len(old_l))
        return outcomes, counts

    def _joined(self, event_id: str, cutoff: float) -> bool:
        return event_id in self.joined and self.joined[event_id] >= cutoff


# ---------------------------------------------------------------- generated streams


def make_stream(seed: int, n: int = 3_000, horizon: int = H) -> list[tuple[list, list]]:
    """Batches of (prediction dicts, label dicts) exercising every rule of the join.

    Event times advance ~50 ms per event; label delays cluster around 0, H and beyond, including
    exactly H and H + 1, and negative delays down to -2H; 10% of events have no label, 3% of
    labels no prediction; predictions and labels are re-sent (at once, after the join, after the
    horizon); some labels that cannot join are corrected by a later one that can; the two topics
    lag each other by random amounts, so labels often arrive first; and the
    topics are cut into batches at random processing times. Predictions name their rollout arm
    and latency, except 10% that leave both out (written before the schema had them).
    """
    rng = np.random.default_rng(seed)
    rollout = np.random.default_rng([seed, 1])  # its own draws: the streams stay as they were
    t0 = 1_700_000_000_000
    event_time = t0 + np.cumsum(rng.integers(0, 100, n))
    kind = rng.choice(7, n, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05])
    delay = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4, kind == 5],
        [rng.integers(0, horizon // 10, n), rng.integers(horizon - 50, horizon + 50, n),
         np.full(n, horizon), np.full(n, horizon + 1), rng.integers(-horizon - 5, 0, n),
         rng.integers(horizon, 2 * horizon, n)],
        -rng.integers(horizon + 1, 2 * horizon, n),  # a label far older than its event
    )
    preds, labels = [], []
    for i in range(n):
        e = int(event_time[i])
        pred = {
            "event_id": f"ev-{seed}-{i:06d}" + ("x" * int(rng.integers(0, 3))),
            "event_time": e,
            "score": float(rng.random()),
            "decision": bool(rng.random() < 0.3),
            "model_name": ["fraud", "fraud-challenger"][int(rng.integers(2))],
            "model_version": int(rng.integers(1, 4)),
            "slices": {"segment": ["consumer", "student", ""][int(rng.integers(3))]},
            "inputs": {"amount": float(rng.lognormal(3, 1)),
                       "hour": None if rng.random() < 0.1 else float(rng.integers(24))},
        }
        if rollout.random() < 0.9:
            pred["arm"] = str(rollout.choice(["production", "candidate"], p=[0.8, 0.2]))
            pred["latency_ms"] = float(rollout.gamma(2.0, 3.0))
        preds.append((e + rng.integers(0, 2_000), pred))
        if rng.random() < 0.05:  # a re-send, maybe much later than the original
            resend = e + int(rng.choice([1_000, horizon // 2, 3 * horizon]))
            preds.append((resend, {**pred, "score": -1.0}))
        if rng.random() < 0.9:
            lt = e + int(delay[i])
            lab = {"event_id": pred["event_id"], "label": int(rng.integers(2)), "label_time": lt}
            # A label older than its event is a backfill: it is produced after the event.
            arrival = lt if lt >= e else e + int(rng.integers(0, horizon // 2))
            labels.append((arrival + rng.integers(0, 2_000), lab))
            if rng.random() < 0.05:
                again = lt + int(rng.choice([0, 1_000, horizon // 2, 3 * horizon]))
                labels.append((again, {**lab, "label": 1 - lab["label"]}))
            if kind[i] in (3, 5, 6) and rng.random() < 0.3:  # a correction that can join
                fixed = e + int(rng.integers(0, horizon // 10))
                labels.append((fixed + int(rng.integers(0, 2 * horizon)),
                               {**lab, "label_time": fixed}))
        if rng.random() < 0.03:
            lt = e + int(rng.integers(0, horizon))
            labels.append((lt, {"event_id": f"orphan-{seed}-{i}", "label": 1, "label_time": lt}))
    # Topic lag: each topic is consumed at processing time = arrival + its own slowly varying
    # lag, so either topic can run ahead of the other by more than typical label delays.
    def consumed(stream, phase):
        stream.sort(key=lambda r: r[0])
        at = np.array([r[0] for r in stream], dtype=np.float64)
        lag = 0.6 * horizon * (1 + np.sin(at / (2 * horizon) + phase)) / 2
        return np.maximum.accumulate(at + lag), [r[1] for r in stream]
    p_at, p_recs = consumed(preds, 0.0)
    l_at, l_recs = consumed(labels, 2.0)
    end = max(p_at[-1], l_at[-1]) + 1
    cuts = np.sort(rng.uniform(min(p_at[0], l_at[0]), end, n // 20))
    cuts = np.concatenate([cuts, [end]])
    p_cut, l_cut = np.searchsorted(p_at, cuts), np.searchsorted(l_at, cuts)
    batches, pi, li = [], 0, 0
    for pc, lc in zip(p_cut, l_cut, strict=True):
        batches.append((p_recs[pi:pc], l_recs[li:lc]))
        pi, li = pc, lc
    return batches


def to_batches(preds: list[dict], labels: list[dict]) -> tuple[PredictionBatch, LabelBatch]:
    return (PredictionBatch.from_records(preds, INPUTS, SLICES), LabelBatch.from_records(labels))


def outcome_rows(batch: OutcomeBatch) -> list[tuple]:
    rows = []
    for k in range(len(batch)):
        inputs = tuple(None if math.isnan(v) else v for v in batch.inputs[k].tolist())
        rows.append((
            str(batch.event_id[k]), int(batch.event_time_ms[k]), int(batch.label_time_ms[k]),
            float(batch.score[k]), bool(batch.decision[k]), int(batch.label[k]),
            str(batch.model_name[k]), int(batch.model_version[k]),
            str(batch.slices["segment"][k]), inputs, str(batch.arm[k]),
            float(batch.latency_ms[k]),
        ))
    return rows


def oracle_rows(outcomes: list[dict]) -> list[tuple]:
    return [
        (o["event_id"], o["event_time"], o["label_time"], o["score"], o["decision"], o["label"],
         o["model_name"], o["model_version"], o["slices"]["segment"],
         tuple(o["inputs"].get(n) for n in INPUTS), o.get("arm", "production"),
         o.get("latency_ms", 0.0))
        for o in outcomes
    ]


# ---------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_oracle_batch_by_batch(seed):
    join, oracle = LabelJoin(INPUTS, SLICES, horizon_ms=H), Oracle(H)
    totals, seen_arms = JoinCounts(), set()
    for preds, labels in make_stream(seed):
        result = join.process(*to_batches(preds, labels))
        expected, counts = oracle.process(preds, labels)
        assert outcome_rows(result.outcomes) == oracle_rows(expected)
        seen_arms.update(result.outcomes.arm.tolist())
        assert result.counts == counts
        assert result.watermark_ms == oracle.watermark
        totals = totals + counts
    assert join.totals == totals
    # Every rule was exercised, so agreement means something.
    assert min(totals.as_tuple()) > 10, totals
    assert join.state_rows["predictions"] == len(oracle.pending)
    assert join.state_rows["labels"] == len(oracle.early)
    assert 0.5 < totals.coverage < 1, totals
    assert {"production", "candidate"} <= seen_arms


def test_a_label_exactly_one_horizon_late_joins_and_one_ms_more_does_not():
    join = LabelJoin(horizon_ms=H)
    p = PredictionBatch.from_records([_pred("a", 0), _pred("b", 0)])
    assert join.process(p, _labels()).counts.joined == 0
    result = join.process(_preds(), _labels(("a", H), ("b", H + 1)))
    assert result.outcomes.event_id.tolist() == ["a"]
    assert result.outcomes.label_delay_ms.tolist() == [H]
    # "b" expired unlabelled (its event time is now below W - H); its label waits a horizon.
    assert (result.counts.predictions_expired, join.state_rows["labels"]) == (1, 1)


def test_retention_boundary_is_inclusive():
    join = LabelJoin(horizon_ms=H)
    join.process(PredictionBatch.from_records([_pred("a", 1_000)]), _labels())
    # W - H == 1_000: "a" is still retained and still joins.
    assert join.process(_preds(), _labels(("zzz", H + 1_000))).counts.predictions_expired == 0
    assert join.process(_preds(), _labels(("a", H + 1_000))).counts.joined == 1
    join.process(PredictionBatch.from_records([_pred("b", 2_000)]), _labels())
    # W - H == 2_001: "b" (event time 2_000) expires in the batch that moves W there.
    result = join.process(_preds(), _labels(("other", H + 2_001)))
    assert result.counts.predictions_expired == 1
    assert join.process(_preds(), _labels(("b", H + 2_001))).counts.joined == 0


def test_a_label_before_its_prediction_joins_and_duplicates_are_ignored():
    join = LabelJoin(horizon_ms=H)
    r1 = join.process(_preds(), _labels(("a", 5_000), ("a", 5_000)))
    assert (r1.counts.joined, r1.counts.duplicate_labels) == (0, 1)
    r2 = join.process(PredictionBatch.from_records([_pred("a", 4_000), _pred("a", 4_500)]),
                      _labels())
    assert r2.outcomes.event_id.tolist() == ["a"]
    assert r2.outcomes.event_time_ms.tolist() == [4_000]  # the first prediction is the one
    assert r2.counts.duplicate_predictions == 1
    # After the join, re-sends of either half are duplicates for a horizon, then forgotten.
    r3 = join.process(PredictionBatch.from_records([_pred("a", 4_000)]), _labels(("a", 5_000)))
    assert (r3.counts.duplicate_predictions, r3.counts.duplicate_labels) == (1, 1)
    join.process(PredictionBatch.from_records([_pred("tick", 5_000 + H + 1)]), _labels())
    r4 = join.process(_preds(), _labels(("a", 5_000 + H + 1)))
    assert (r4.counts.duplicate_labels, join.state_rows["labels"]) == (0, 1)


def test_negative_delay_and_outcome_columns():
    join = LabelJoin(INPUTS, SLICES, horizon_ms=H)
    rec = {**_pred("a", 10_000), "slices": {"segment": "student"},
           "inputs": {"amount": 3.5}, "score": 0.25, "decision": False}
    result = join.process(PredictionBatch.from_records([rec], INPUTS, SLICES),
                          _labels(("a", 9_000)))
    o = result.outcomes
    assert o.label_delay_ms.tolist() == [-1_000]
    assert o.slices["segment"].tolist() == ["student"]
    assert o.inputs[0, 0] == 3.5 and math.isnan(o.inputs[0, 1])
    assert (o.score.tolist(), o.decision.tolist(), o.label.tolist()) == ([0.25], [False], [1])
    assert (o.model_name.tolist(), o.model_version.tolist()) == (["m"], [1])
    # A record without arm and latency_ms (written before the schema had them): the defaults.
    assert (o.arm.tolist(), o.latency_ms.tolist()) == (["production"], [0.0])
    assert o.latency_ms.dtype == np.float64


def test_arm_and_latency_ride_with_their_prediction_whichever_half_comes_first():
    join = LabelJoin(horizon_ms=H)
    first = join.process(PredictionBatch.from_records([_pred("p-first", 1_000, "candidate", 8.5),
                                                       _pred("same-batch", 1_000, "shadow", 2.0)]),
                         _labels(("l-first", 1_500), ("same-batch", 1_200)))
    assert _arm_latency(first.outcomes) == [("same-batch", "shadow", 2.0)]
    second = join.process(PredictionBatch.from_records([_pred("l-first", 1_400, "candidate", 3.25),
                                                        _pred("unlabelled", 1_400)]),
                          _labels(("p-first", 2_000)))
    assert _arm_latency(second.outcomes) == [("l-first", "candidate", 3.25),
                                             ("p-first", "candidate", 8.5)]
    # A re-sent prediction is a duplicate: the first one's arm and latency are kept.
    join.process(PredictionBatch.from_records([_pred("unlabelled", 1_400, "candidate", 99.0)]),
                 _labels())
    third = join.process(_preds(), _labels(("unlabelled", 3_000)))
    assert _arm_latency(third.outcomes) == [("unlabelled", "production", 0.0)]


@pytest.mark.parametrize("through", ["snapshot", "deltas"])
def test_a_restored_join_keeps_the_arm_and_latency_of_waiting_predictions(through):
    live = LabelJoin(INPUTS, SLICES, horizon_ms=H)
    log = []
    for preds in ([_pred("a", 1_000, "candidate", 12.5)], [_pred("b", 1_100)]):
        log.append(live.process(PredictionBatch.from_records(preds, INPUTS, SLICES),
                                _labels()).state_delta)
    log = [live.snapshot()] if through == "snapshot" else log
    restored = LabelJoin.restore([_savez_roundtrip(piece) for piece in log], INPUTS, SLICES,
                                 horizon_ms=H)
    for join in (live, restored):
        result = join.process(_preds(INPUTS, SLICES), _labels(("a", 2_000), ("b", 2_000)))
        assert _arm_latency(result.outcomes) == [("a", "candidate", 12.5),
                                                 ("b", "production", 0.0)]


def test_outcomes_are_ordered_by_label_time_then_event_id():
    join = LabelJoin(horizon_ms=H)
    join.process(PredictionBatch.from_records([_pred(i, 0) for i in "abcd"]), _labels())
    result = join.process(_preds(), _labels(("d", 7), ("c", 5), ("b", 7), ("a", 9)))
    assert result.outcomes.event_id.tolist() == ["c", "b", "d", "a"]


# ---------------------------------------------------------------- state: bounded, restorable


def steady_stream(seed: int, n_batches: int, per_batch: int = 200):
    """A fixed rate of one prediction per 2 ms of event time; labels 0-3 s late, 10% of events
    never labelled, 2% of labels without a prediction."""
    rng = np.random.default_rng(seed)
    n = n_batches * per_batch
    event_time = 2 * np.arange(1, n + 1, dtype=np.int64)
    ids = np.char.add("e", np.arange(n).astype(str))
    labelled = rng.random(n) < 0.9
    orphan = rng.random(n) < 0.02
    orphan_ids = np.char.add("o", np.flatnonzero(orphan).astype(str))
    label_ids = np.concatenate([ids[labelled], orphan_ids])
    label_time = np.concatenate([event_time[labelled] + rng.integers(0, 3_000, labelled.sum()),
                                 event_time[orphan]])
    order = np.argsort(label_time, kind="stable")
    label_ids, label_time = label_ids[order], label_time[order]
    for k in range(n_batches):
        rows = slice(k * per_batch, (k + 1) * per_batch)
        now = event_time[rows][-1]
        due = slice(np.searchsorted(label_time, event_time[rows][0] - 2, "right"),
                    np.searchsorted(label_time, now, "right"))
        m = per_batch
        preds = PredictionBatch(
            ids[rows], event_time[rows], np.full(m, 0.5), np.ones(m, bool), np.full(m, "m"),
            np.ones(m, np.int64), {}, np.zeros((m, 0)))
        labels = LabelBatch(label_ids[due], np.ones(due.stop - due.start, np.int64),
                            label_time[due])
        yield preds, labels


def test_state_does_not_grow_with_stream_length_at_a_fixed_rate():
    horizon = 10_000  # 5,000 events' worth
    join = LabelJoin(horizon_ms=horizon)
    peaks = {"early": (0, 0), "late": (0, 0)}  # (rows, bytes) peaks: storage is a sawtooth
    for k, batch in enumerate(steady_stream(0, 1_000), start=1):
        join.process(*batch)
        phase = "early" if 250 <= k < 500 else "late" if k >= 750 else None  # 10-20, 30-40 H
        if phase:
            rows, nbytes = peaks[phase]
            peaks[phase] = (max(rows, sum(join.state_rows.values())),
                            max(nbytes, join.state_bytes))
    assert peaks["late"][0] <= 1.1 * peaks["early"][0], peaks
    assert peaks["late"][1] <= 1.1 * peaks["early"][1], peaks
    # Retained: about a horizon of joined ids, unlabelled predictions and orphan labels.
    assert peaks["late"][0] < 2 * 5_000, peaks
    assert join.totals.joined > 150_000


def _savez_roundtrip(arrays):
    """Through the bytes the Redis state backend stores (np.savez, loaded without pickle)."""
    return unpack(pack(arrays))


@pytest.mark.parametrize("stop", [7, 45, 101])
def test_restore_mid_stream_gives_identical_outcomes_and_counters(stop):
    batches = make_stream(11)
    backend = MemoryStateBackend()
    state = PartitionState(backend, topics=[], stores=["join"], compact_every=10)
    state.assign([0])
    live = LabelJoin(INPUTS, SLICES, horizon_ms=H)
    deltas = []
    for preds, labels in batches[:stop]:
        result = live.process(*to_batches(preds, labels))
        deltas.append(result.state_delta)
        txn = state.begin([0])
        state.append(txn, 0, "join", result.state_delta, live.snapshot)
        state.commit(txn)
    log = [_savez_roundtrip(piece) for piece in backend.logs[("join", 0)]]
    assert not any(a.dtype == object for piece in log for a in piece.values())
    restored = LabelJoin.restore(log, INPUTS, SLICES, horizon_ms=H)
    # Overlaps change nothing: older deltas before a later snapshot, a delta applied twice.
    base = int(log[0]["batch"][0]) if log[0]["snapshot"][0] else 4
    older = deltas[max(0, base - 4) : base - 1]
    again = LabelJoin.restore([*older, *log, log[-1]], INPUTS, SLICES, horizon_ms=H)
    assert restored.totals == live.totals and restored.watermark_ms == live.watermark_ms
    for preds, labels in batches[stop:]:
        want = live.process(*to_batches(preds, labels))
        for other in (restored, again):
            got = other.process(*to_batches(preds, labels))
            assert outcome_rows(got.outcomes) == outcome_rows(want.outcomes)
            assert got.counts == want.counts
    a, b = live.snapshot(), restored.snapshot()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_restore_refuses_state_of_another_shape():
    join = LabelJoin(INPUTS, SLICES, horizon_ms=H)
    join.process(*to_batches([], []))
    with pytest.raises(ValueError, match="horizon"):
        LabelJoin.restore([join.snapshot()], INPUTS, SLICES, horizon_ms=2 * H)


def test_restore_refuses_state_of_format_1_which_kept_no_arm_or_latency():
    join = LabelJoin(INPUTS, SLICES, horizon_ms=H)
    join.process(PredictionBatch.from_records([_pred("a", 1_000)], INPUTS, SLICES), _labels())
    old = {k: v for k, v in join.snapshot().items()
           if k not in ("predictions.arm", "predictions.latency_ms")}
    old["format"] = np.array([1], dtype=np.int64)
    with pytest.raises(ValueError, match=r"format 1 is not 2; .*arm and latency_ms"):
        LabelJoin.restore([old], INPUTS, SLICES, horizon_ms=H)


# ---------------------------------------------------------------- building blocks


def test_batches_built_without_arm_and_latency_get_the_defaults_and_take_concat_keep_them():
    n = 4
    ids, t = np.array(["a", "b", "c", "d"]), np.arange(n, dtype=np.int64)
    names, versions = np.array(["m", "m", "m", "n"]), np.array([1, 2, 1, 1], dtype=np.int64)
    score, decision, label = np.full(n, 0.5), np.ones(n, bool), np.ones(n, np.int64)
    p = PredictionBatch(ids, t, score, decision, names, versions, {}, np.zeros((n, 0)))
    o = OutcomeBatch(ids, t, t + 1, score, decision, label, names, versions, {},
                     np.zeros((n, 0)))
    for batch in (p, o):
        assert batch.arm.tolist() == ["production"] * n
        assert batch.latency_ms.tolist() == [0.0] * n
    o = OutcomeBatch(ids, t, t + 1, score, decision, label, names, versions, {},
                     np.zeros((n, 0)), arm=np.array(["production", "candidate", "production",
                                                     "shadow"]), latency_ms=t * 1.5)
    both = OutcomeBatch.concat([o.take(slice(2, None)), o.take(np.array([1, 0, 0, 0]) == 1),
                                o.take(np.array([1]))])
    assert both.arm.tolist() == ["production", "shadow", "production", "candidate"]
    assert both.latency_ms.tolist() == [3.0, 4.5, 0.0, 1.5]
    groups = {key: (o.arm[rows].tolist(), o.latency_ms[rows].tolist())
              for key, rows in rows_by_model(o.model_name, o.model_version)}
    assert groups == {("m", 1): (["production", "production"], [0.0, 3.0]),
                      ("m", 2): (["candidate"], [1.5]), ("n", 1): (["shadow"], [4.5])}


def test_fingerprint_ignores_array_width_and_separates_ids():
    ids = np.array([f"ev-{i}" for i in range(50_000)] + ["", "a", "a\x00b", "ab"])
    h1, h2 = fingerprint(ids)
    assert len(set(zip(h1.tolist(), h2.tolist(), strict=True))) == len(ids)
    wide = np.array(["ab", "x" * 40])
    assert fingerprint(wide)[0][0] == fingerprint(np.array(["ab"]))[0][0]
    assert fingerprint(wide)[1][0] == fingerprint(np.array(["ab"]))[1][0]


def test_id_index_against_a_dict():
    rng = np.random.default_rng(3)
    index, reference = IdIndex(), {}
    for _ in range(40):
        keys = np.unique(rng.integers(1, 5_000, 700)).astype(np.uint64)  # (0, 0) is reserved
        rng.shuffle(keys)
        values = rng.integers(0, 10**9, len(keys))
        index.put(keys, keys * np.uint64(7), values)
        reference.update(zip(keys.tolist(), values.tolist(), strict=True))
    probe = np.arange(1, 6_000, dtype=np.uint64)
    got = index.get(probe, probe * np.uint64(7), default=-5)
    assert got.tolist() == [reference.get(k, -5) for k in range(1, 6_000)]
    assert index.get(probe[1:10], probe[1:10]).tolist() == [-1] * 9  # h2 must match too
    h1, h2, values = index.items()
    assert dict(zip(h1.tolist(), values.tolist(), strict=True)) == reference
    assert len(index) == len(reference)


# ---------------------------------------------------------------- helpers


def _pred(event_id: str, event_time: int, arm: str | None = None,
          latency_ms: float | None = None) -> dict:
    """A Prediction dict; without `arm` and `latency_ms` unless given, like an older record."""
    record = {"event_id": event_id, "event_time": event_time, "score": 0.5, "decision": True,
              "model_name": "m", "model_version": 1}
    if arm is not None:
        record["arm"] = arm
    if latency_ms is not None:
        record["latency_ms"] = latency_ms
    return record


def _preds(input_names: tuple[str, ...] = (), slice_names: tuple[str, ...] = ()
           ) -> PredictionBatch:
    return PredictionBatch.from_records([], input_names, slice_names)


def _arm_latency(outcomes: OutcomeBatch) -> list[tuple[str, str, float]]:
    return list(zip(outcomes.event_id.tolist(), outcomes.arm.tolist(),
                    outcomes.latency_ms.tolist(), strict=True))


def _labels(*pairs: tuple[str, int]) -> LabelBatch:
    return LabelBatch.from_records(
        [{"event_id": i, "label": 1, "label_time": t} for i, t in pairs]
    )


def test_a_label_far_older_than_its_prediction_does_not_unhook_the_prediction():
    join = LabelJoin(horizon_ms=H)
    join.process(PredictionBatch.from_records([_pred("a", 5 * H)]), _labels())
    # Delay -(H + 1): no join, and this label is past the horizon at once: it expires.
    r1 = join.process(_preds(), _labels(("a", 4 * H - 1)))
    assert (r1.counts.joined, r1.counts.labels_expired) == (0, 1)
    # The prediction is still waiting for its label, and still guards against re-sends.
    r2 = join.process(PredictionBatch.from_records([_pred("a", 5 * H)]), _labels(("a", 5 * H)))
    assert (r2.counts.joined, r2.counts.duplicate_predictions) == (1, 1)
