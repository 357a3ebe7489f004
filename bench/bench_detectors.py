"""Detector replay: delay, detections and false alarms of the monitor's detectors, and their speed.

Run by hand, one bench at a time, never as a timed unit test (results: bench/README.md)::

    .venv/bin/python bench/bench_detectors.py            # ~2 min on the shared 2-core VM
    .venv/bin/python bench/bench_detectors.py --quick    # ~20 s smoke run

**1. Concept-drift replay.** For each of river's synthetic streams SEA (variant 0 -> 3, i.e.
threshold 8 -> 9.5, no noise), STAGGER (function 0 -> 1), Agrawal (function 0 -> 4) and Sine
(SINE1 -> reversed SINE1) and each seed (``--seeds``, 10): a river ``HoeffdingTreeClassifier``
learns ``--pretrain`` samples of the first concept (its own seed), then runs prequentially
(``predict_proba_one``, then ``learn_one``) over 20,000 samples whose concept changes abruptly at
sample 10,000: samples 0..9,999 come from the first concept's generator, 10,000..19,999 from the
second's (other seeds). That is river's ``ConceptDriftStream(position=10_000, width=1)`` without
the coin flips of its sigmoid around the position. The replay runs twice: with 10,000 samples of
pre-training, so the error before the change is (close to) stationary, and with none, so the
model is still learning during the first half: its falling error is a real change of the error
stream, which ADWIN reports and which then restarts the detectors (counted as false alarms,
since they are no concept drift). The model keeps learning after the change, so the error spike
is transient; every detector sees the same one.

Each step is one outcome: ``score`` = P(class 1), ``decision = score >= 0.5``, ``label``. The
same outcomes go to every detector configuration:

* ``driftline``: `ConceptDriftMonitor` with its defaults (ADWIN on ``|label - score|``, DDM at
  drift threshold 5 on ``decision != label``, 1,000-outcome warm-up (``--warmup``), both
  restarted after an alarm), fed as `OutcomeBatch`es of ``--replay-batch`` (1,000), each
  labelled at once (label time = event time, as in a prequential evaluation);
* ``river ADWIN``: ``river.drift.ADWIN()`` at its defaults (grace period 10) on
  ``|label - score|``, the same values, resetting itself after each detection as river does;
* ``river ADWIN 0/1``: the same on ``decision != label`` (how river's examples feed it);
* ``river DDM``: ``river.drift.binary.DDM()`` at its defaults (drift threshold 3, warm start 30)
  on ``decision != label``, resetting itself after each detection.

Definitions, per stream and configuration, over the seeds:

* **detected**: runs with an alarm at an outcome in [10,000, 15,000);
* **delay**: for those runs, the position of the first such alarm minus 10,000 (an alarm raised
  by the first outcome of the new concept has delay 0); mean and range;
* **false alarms / 100k**: alarms at outcomes before 10,000, per 100,000 outcomes before the
  change (10 seeds give exactly 100,000 of them, so this is also the count);
* **alarms after**: mean number of alarms at outcomes 10,000..19,999 per run. More than one is
  not necessarily false: as the model re-learns, its error falls again, a change too;
* **delay goal**: driftline's mean delay no greater than river ADWIN's on the same runs (a run
  without a detection counted as 5,000), with at least as many detections.

An outcome on which both families of the driftline monitor fire counts once. Each configuration
is also fed the outcomes of section 2's first stream in join order (calibrated scores, labels
drawn from them: a stationary error stream, on which every alarm is false).

**2. Stationary stream through the whole monitor.** A synthetic fraud-like world: the 19 input
names of ``transactions_v1`` with heavy-tailed amounts (rounded to cents), small counts (few
distinct values, so collapsed bins), NaN where a feature is undefined (missing bins in use);
slice attributes ``segment`` (4 values), ``channel`` (3) and ``country`` (15; three rarer than 1%,
pooled into ``other``), drawn independently of everything else, so no slice differs from another
and every fairness alarm is false; a calibrated score ``sigmoid(linear in three inputs + noise)``
(positive rate ~7.5%), ``decision = score >= 0.5`` (~3.7% selected), and the label drawn as
Bernoulli(score). The reference profile is `ReferenceProfile.from_columns` over ``--train-rows``
(200,000) rows of the same world (another seed). Then ``--outcomes`` (1,000,000) events, 72 ms
apart in event time (20 h, ~50,000 outcomes in the fairness window of 1 h), each labelled 1 to 30
minutes later (uniform), are cut into batches of ``--batch`` (5,000) predictions plus the labels
whose label time falls in the same span (the labels still due at the end are flushed with empty
prediction batches), joined by `LabelJoin` (7-day horizon) and fed to
``Monitor.observe(predictions, outcomes)`` with the default `MonitorConfig`: PSI over 19 inputs +
score + 3 slices, label PSI, fairness on the three attributes, ADWIN + DDM. Every alarm it
returns is false; they are counted per family (``psi`` includes the label). ``--stationary-seeds``
(5) such streams run, each with its own world and reference seed. Shown with the counts, as the
margins to the thresholds: the largest PSI any evaluation saw, and the largest fairness difference
gap (max - min rate over the supported values) and gap lower bound any evaluation saw; and the
number of pairwise intervals one fairness evaluation covers.

**3. Throughput.** On the first stationary stream: the pipeline (`LabelJoin.process` +
`Monitor.observe`) as timed during section 2, and each family alone over the same batches, fresh
instances: `LabelJoin.process`, `ConceptDriftMonitor.update`, `PsiMonitor.update` (the 23
prediction subjects; then the label), `FairnessMonitor.update` + ``evaluate`` (once per batch, as
the monitor does), and river's ``ADWIN.update`` and ``DDM.update`` called once per value. CPU time
(``time.process_time``) and wall time (``time.perf_counter``) of the calls alone; building the
inputs is outside the timing. The PSI calibration (simulated null distributions, once per process
and reference) is timed separately as startup.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import river
from river import tree
from river.datasets import synth
from river.drift import ADWIN
from river.drift.binary import DDM

from driftline.core.monitoring.concept import ConceptDriftMonitor, DetectorConfig
from driftline.core.monitoring.fairness import DP_RATIO, FairnessConfig, FairnessMonitor
from driftline.core.monitoring.label_join import (
    LabelBatch,
    LabelJoin,
    OutcomeBatch,
    PredictionBatch,
)
from driftline.core.monitoring.monitor import LABEL, Alarm, Monitor, MonitorConfig
from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.monitoring.psi import PsiMonitor

# ---------------------------------------------------------------- 1. concept-drift replay

CHANGE = 10_000  # the drift position
LENGTH = 20_000
PRETRAIN = 10_000
HORIZON = 5_000  # an alarm within this many outcomes after the change is a detection

# name -> (generator of (concept, seed), first concept, second concept, what changes)
STREAMS: dict[str, tuple[Callable[[int, int], synth.base.SyntheticDataset], int, int, str]] = {
    "SEA": (lambda f, s: synth.SEA(variant=f, seed=s), 0, 3, "threshold 8 -> 9.5"),
    "STAGGER": (lambda f, s: synth.STAGGER(classification_function=f, seed=s), 0, 1,
                "function 0 -> 1"),
    "Agrawal": (lambda f, s: synth.Agrawal(classification_function=f, seed=s), 0, 4,
                "function 0 -> 4"),
    "Sine": (lambda f, s: synth.Sine(classification_function=f, seed=s), 0, 1,
             "SINE1 -> reversed"),
}
CONFIGS = ("driftline", "river ADWIN", "river ADWIN 0/1", "river DDM")


def replay_outcomes(stream: str, seed: int, pretrain: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) of a pre-trained Hoeffding tree run prequentially over the stream."""
    make, first, second, _ = STREAMS[stream]
    model = tree.HoeffdingTreeClassifier()
    for x, y in itertools.islice(make(first, 3 * seed), pretrain):
        model.learn_one(x, y)
    samples = itertools.chain(itertools.islice(make(first, 3 * seed + 1), CHANGE),
                              itertools.islice(make(second, 3 * seed + 2), LENGTH - CHANGE))
    score, label = np.empty(LENGTH), np.empty(LENGTH, dtype=np.int64)
    for i, (x, y) in enumerate(samples):
        score[i] = model.predict_proba_one(x).get(1, 0.0)  # True == 1 for boolean labels
        label[i] = int(y)
        model.learn_one(x, y)
    return score, label


def outcome_batch(score: np.ndarray, label: np.ndarray) -> OutcomeBatch:
    """Outcomes one second apart, labelled at once; event time / 1000 is the position."""
    n = len(score)
    times = np.arange(n, dtype=np.int64) * 1000
    return OutcomeBatch(
        event_id=np.char.add("e", np.arange(n).astype(str)), event_time_ms=times,
        label_time_ms=times, score=score, decision=score >= 0.5, label=label,
        model_name=np.full(n, "model"), model_version=np.ones(n, dtype=np.int64),
        slices={}, inputs=np.zeros((n, 0)))


def driftline_alarms(score: np.ndarray, label: np.ndarray, batch: int,
                     config: DetectorConfig) -> list[int]:
    """Positions of the `ConceptDriftMonitor`'s alarms (both families at one outcome: once)."""
    outcomes = outcome_batch(score, label)
    monitor = ConceptDriftMonitor(config)
    found: set[int] = set()
    for start in range(0, len(outcomes), batch):
        found.update(a.event_time_ms // 1000 for a in
                     monitor.update(outcomes.take(slice(start, start + batch))).alarms)
    return sorted(found)


def river_alarms(detector: ADWIN | DDM, values: np.ndarray) -> list[int]:
    """Positions at which a river detector (resetting itself after a detection) fires."""
    found = []
    update = detector.update
    for i, v in enumerate(values.tolist()):
        update(v)
        if detector.drift_detected:
            found.append(i)
    return found


def all_configs(score: np.ndarray, label: np.ndarray, batch: int,
                config: DetectorConfig) -> dict[str, list[int]]:
    error = np.abs(label - score)
    miss = ((score >= 0.5).astype(np.int64) != label).astype(np.int64)
    return {
        "driftline": driftline_alarms(score, label, batch, config),
        "river ADWIN": river_alarms(ADWIN(), error),
        "river ADWIN 0/1": river_alarms(ADWIN(), miss.astype(np.float64)),
        "river DDM": river_alarms(DDM(), miss),
    }


@dataclass
class ReplayRow:
    stream: str
    config: str
    runs: int = 0
    delays: list[int] = field(default_factory=list)
    before: int = 0  # false alarms before the change, summed over runs
    after: int = 0  # alarms at or after the change, summed over runs
    # per run: this config's first detection minus river ADWIN's (a miss counts as HORIZON)
    versus_river: list[int] = field(default_factory=list)

    @property
    def detected(self) -> str:
        return f"{len(self.delays)}/{self.runs}"

    @property
    def mean_delay(self) -> str:
        return f"{np.mean(self.delays):,.0f}" if self.delays else "-"

    @property
    def delay_range(self) -> str:
        return f"{min(self.delays):,}-{max(self.delays):,}" if self.delays else "-"


def first_detection(alarms: list[int]) -> int | None:
    return next((a - CHANGE for a in alarms if CHANGE <= a < CHANGE + HORIZON), None)


def replay(seeds: int, batch: int, pretrain: int,
           settings: DetectorConfig) -> tuple[list[ReplayRow], float]:
    started = time.perf_counter()
    rows = []
    for stream in STREAMS:
        table = {c: ReplayRow(stream, c) for c in CONFIGS}
        for seed in range(seeds):
            found = all_configs(*replay_outcomes(stream, seed, pretrain), batch, settings)
            river_first = first_detection(found["river ADWIN"])
            for config, alarms in found.items():
                row = table[config]
                row.runs += 1
                row.before += sum(a < CHANGE for a in alarms)
                row.after += sum(a >= CHANGE for a in alarms)
                delay = first_detection(alarms)
                if delay is not None:
                    row.delays.append(delay)
                theirs = HORIZON if river_first is None else river_first
                row.versus_river.append((HORIZON if delay is None else delay) - theirs)
        rows += table.values()
        print(f"  replayed {stream} x {seeds} seeds ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)
    return rows, time.perf_counter() - started


# ---------------------------------------------------------------- 2. the stationary world

INPUTS = ('txn_count_5m', 'txn_count_1h', 'txn_count_24h', 'amount_sum_5m', 'amount_sum_1h',
          'amount_sum_24h', 'amount_mean_5m', 'amount_mean_1h', 'amount_mean_24h',
          'amount_max_5m', 'amount_max_1h', 'amount_max_24h', 'amount_std_24h', 'merchants_1h',
          'merchants_24h', 'seconds_since_prev', 'amount_sum_this_hour', 'amount_min_hop_1h',
          'last_amount_24h')  # transactions_v1's inputs, in view order
SLICES = {
    "segment": (("retail", "student", "business", "premium"), (0.5, 0.2, 0.2, 0.1)),
    "channel": (("web", "app", "pos"), (0.5, 0.35, 0.15)),
    "country": (("US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "SE", "BR", "IN", "JP",
                 "MT", "IS", "LU"),
                (0.3, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.025, 0.02, 0.011,
                 0.006, 0.005, 0.003)),
}
MODEL = ("fraud", 1)
T0_MS = 1_700_000_000_000
SPACING_MS = 72  # 1,000,000 events in 20 h: ~50,000 outcomes in the fairness window of 1 h
DELAY_MS = (60_000, 1_800_000)


@dataclass(frozen=True)
class World:
    """n rows of the stationary world: inputs (n, 19), score, label, slices."""

    inputs: np.ndarray
    score: np.ndarray
    label: np.ndarray
    slices: dict[str, np.ndarray]


def draw(rng: np.random.Generator, n: int) -> World:
    activity = rng.gamma(2.0, 1.5, n)
    c5 = rng.poisson(0.2 * activity)
    c1h = c5 + rng.poisson(activity)
    c24 = c1h + rng.poisson(10 * activity)

    def amounts(count: np.ndarray, sigma: float) -> np.ndarray:
        value = np.round(rng.lognormal(3.0, sigma, n), 2)
        return np.where(count > 0, value, np.nan)

    mean5, mean1h, mean24 = amounts(c5, 0.9), amounts(c1h, 0.8), amounts(c24, 0.6)
    spread = 1 + rng.exponential(0.5, n)
    last = amounts(c24, 1.0)
    columns = [
        c5, c1h, c24,
        np.where(c5 > 0, np.round(mean5 * c5, 2), 0.0),
        np.where(c1h > 0, np.round(mean1h * c1h, 2), 0.0),
        np.where(c24 > 0, np.round(mean24 * c24, 2), 0.0),
        mean5, mean1h, mean24,
        np.round(mean5 * spread, 2), np.round(mean1h * spread, 2), np.round(mean24 * spread, 2),
        np.where(c24 >= 2, rng.lognormal(2.5, 0.7, n), np.nan),
        np.minimum(c1h, rng.binomial(c1h, 0.8)), np.minimum(c24, rng.binomial(c24, 0.5)),
        np.where(rng.random(n) < 0.02, np.nan, np.round(rng.exponential(3600 / (activity + 0.1)))),
        np.round(rng.lognormal(3.5, 1.2, n) * (rng.random(n) < 0.7), 2),
        np.round(mean1h * rng.uniform(0.2, 1.0, n), 2),
        last,
    ]
    inputs = np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
    logit = (-5.0 + 0.2 * c1h + 1.3 * np.nan_to_num(np.log(last) - 3.0)
             + 2.2 * (c5 >= 2) + rng.normal(0, 1.0, n))
    score = 1 / (1 + np.exp(-logit))
    label = (rng.random(n) < score).astype(np.int64)
    slices = {name: np.asarray(values)[rng.choice(len(values), n, p=np.array(p) / sum(p))]
              for name, (values, p) in SLICES.items()}
    return World(inputs, score, label, slices)


def reference(seed: int, rows: int) -> ReferenceProfile:
    world = draw(np.random.default_rng([seed, 1]), rows)
    return ReferenceProfile.from_columns(
        {name: world.inputs[:, j] for j, name in enumerate(INPUTS)}, score=world.score,
        slices=world.slices, label=world.label)


def stationary_batches(seed: int, n: int, batch: int
                       ) -> Iterator[tuple[PredictionBatch, LabelBatch]]:
    """n events in batches of `batch` predictions with the labels due in the same span, then
    the remaining labels with empty prediction batches."""
    rng = np.random.default_rng([seed, 2])
    world = draw(rng, n)
    event_time = T0_MS + np.arange(n, dtype=np.int64) * SPACING_MS
    label_time = event_time + rng.integers(*DELAY_MS, n)
    ids = np.char.add("txn-", np.arange(n).astype(str))
    by_label = np.argsort(label_time, kind="stable")
    sorted_label_time = label_time[by_label]
    names, versions = np.full(n, MODEL[0]), np.full(n, MODEL[1], dtype=np.int64)

    def labels(lo: int, hi: int) -> LabelBatch:
        rows = by_label[lo:hi]
        return LabelBatch(ids[rows], world.label[rows], label_time[rows])

    done = 0
    for start in range(0, n, batch):
        rows = slice(start, min(start + batch, n))
        until = int(np.searchsorted(sorted_label_time, event_time[rows.stop - 1], "right"))
        predictions = PredictionBatch(
            ids[rows], event_time[rows], world.score[rows], world.score[rows] >= 0.5,
            names[rows], versions[rows], {s: v[rows] for s, v in world.slices.items()},
            world.inputs[rows])
        yield predictions, labels(done, until)
        done = until
    empty = PredictionBatch(ids[:0], event_time[:0], world.score[:0], world.score[:0] >= 0.5,
                            names[:0], versions[:0], {s: v[:0] for s, v in world.slices.items()},
                            world.inputs[:0])
    for start in range(done, n, batch):
        yield empty, labels(start, min(start + batch, n))


@dataclass
class Timer:
    cpu: float = 0.0
    wall: float = 0.0

    def __enter__(self) -> Timer:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._cpu
        self.wall += time.perf_counter() - self._wall


@dataclass
class StationaryRun:
    seed: int
    outcomes: int
    alarms: list[Alarm]
    pipeline: Timer
    observe: Timer
    startup_s: float
    warnings: int
    largest_psi: dict[str, tuple[float, str]]  # feature/score/slice, label -> (PSI, subject)
    family_size: int  # pairwise fairness intervals in the last evaluation
    largest_gap: tuple[float, float]  # the largest difference gap and lower bound seen
    batches: list[tuple[PredictionBatch, LabelBatch]] = field(default_factory=list)
    outcome_batches: list[OutcomeBatch] = field(default_factory=list)


def stationary(seed: int, profile: ReferenceProfile, n: int, batch: int,
               keep: bool) -> StationaryRun:
    batches = list(stationary_batches(seed, n, batch))
    inputs = [name for name in profile.names if name != LABEL]
    config = MonitorConfig(fairness=FairnessConfig(attributes=tuple(SLICES)))
    started = time.perf_counter()  # the PSI calibration, once per process and reference
    PsiMonitor(profile.select(inputs), config.psi)
    PsiMonitor(profile.select([LABEL]), config.label_psi)
    startup = time.perf_counter() - started
    join = LabelJoin(INPUTS, tuple(SLICES))
    monitor = Monitor(lambda name, version: profile, config, INPUTS, tuple(SLICES))
    alarms: list[Alarm] = []
    pipeline, observe, outcomes = Timer(), Timer(), 0
    kept = []
    largest = {"inputs": (0.0, ""), LABEL: (0.0, "")}
    gap = (0.0, 0.0)
    for predictions, labels in batches:
        with pipeline:
            joined = join.process(predictions, labels).outcomes
            with observe:
                alarms += monitor.observe(predictions, joined)
        outcomes += len(joined)
        if keep:
            kept.append(joined)
        for _, _, subject, value in monitor.psi():
            key = LABEL if subject == LABEL else "inputs"
            if value > largest[key][0]:
                largest[key] = (value, subject)
        report = monitor.versions[MODEL].fairness.evaluate()  # the same as observe's: no events
        differences = [g for g in report.gaps if g.metric != DP_RATIO and g.compared >= 2]
        gap = (max([gap[0], *(g.statistic for g in differences)]),
               max([gap[1], *(g.low for g in differences)]))
    return StationaryRun(seed, outcomes, alarms, pipeline, observe, startup, monitor.warnings,
                         largest, report.family_size, gap, batches if keep else [], kept)


# ---------------------------------------------------------------- 3. throughput per family

_PROFILES: dict[int, ReferenceProfile] = {}  # stationary seed -> its reference profile


@dataclass
class Throughput:
    family: str
    per_call: str
    units: int  # updates made
    unit: str
    timer: Timer
    note: str = ""


def family_throughput(run: StationaryRun) -> tuple[list[Throughput], dict[str, int]]:
    """Each detector family alone over the stationary run's batches; also the alarms each
    concept configuration raised on its outcomes (all of them false)."""
    out = []
    join, t = LabelJoin(INPUTS, tuple(SLICES)), Timer()
    records = 0
    for predictions, labels in run.batches:
        with t:
            join.process(predictions, labels)
        records += len(predictions) + len(labels)
    out.append(Throughput("LabelJoin.process", f"{len(run.batches[0][0]):,} predictions + "
                          "their labels", records, "records", t,
                          f"{run.outcomes:,} outcomes"))

    outcomes = run.outcome_batches
    concept, t, found = ConceptDriftMonitor(), Timer(), []
    for batch in outcomes:
        with t:
            found += concept.update(batch).alarms
    out.append(Throughput("ConceptDriftMonitor.update", "one outcome batch", run.outcomes,
                          "outcomes", t, "ADWIN + DDM per outcome"))

    profile = _PROFILES[run.seed]
    inputs = [name for name in profile.names if name != LABEL]
    psi, t = PsiMonitor(profile.select(inputs)), Timer()
    predictions = 0
    for p, _ in run.batches:
        if not len(p):
            continue
        columns = {name: p.inputs[:, j] for j, name in enumerate(INPUTS)}
        columns["score"] = p.score
        columns.update(p.slices)
        with t:
            psi.update(columns, p.event_time_ms)
        predictions += len(p)
    out.append(Throughput("PsiMonitor.update", "one prediction batch", predictions,
                          "predictions", t, f"{len(inputs)} subjects each"))
    label_psi, t = PsiMonitor(profile.select([LABEL]),
                              MonitorConfig().label_psi), Timer()
    for batch in outcomes:
        with t:
            label_psi.update({LABEL: batch.label}, batch.event_time_ms)
    out.append(Throughput("PsiMonitor.update (label)", "one outcome batch", run.outcomes,
                          "outcomes", t))

    fairness, t = FairnessMonitor(FairnessConfig(attributes=tuple(SLICES))), Timer()
    for batch in outcomes:
        with t:
            fairness.update(batch.event_time_ms, batch.decision, batch.label, batch.slices)
            fairness.evaluate()
    out.append(Throughput("FairnessMonitor.update + evaluate", "one outcome batch",
                          run.outcomes, "outcomes", t, "3 attributes, 22 values"))

    error = np.concatenate([np.abs(b.label - b.score) for b in outcomes])
    miss = np.concatenate([(b.decision.astype(np.int64) != b.label).astype(np.int64)
                           for b in outcomes])
    river_found = {}
    for name, detector, values in (("river ADWIN", ADWIN(), error),
                                   ("river ADWIN 0/1", ADWIN(), miss.astype(np.float64)),
                                   ("river DDM", DDM(), miss)):
        with (t := Timer()):
            river_found[name] = len(river_alarms(detector, values))
        if name != "river ADWIN 0/1":
            out.append(Throughput(f"{name.split()[1]}.update (river, defaults)", "one value",
                                  len(values), "updates", t, "Python loop, one call a value"))
    counts = {"driftline": len({a.event_id for a in found}), **river_found}  # as in the replay
    return out, counts


# ---------------------------------------------------------------- the report


def replay_table(rows: list[ReplayRow]) -> list[str]:
    lines = ["| stream | detector | detected (<= 5,000 after) | mean delay | delay range | "
             "false alarms / 100k before the change | alarms after the change, per run |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        what = STREAMS[row.stream][3]
        before = row.before / (row.runs * CHANGE) * 100_000
        lines.append(f"| {row.stream} ({what}) | {row.config} | {row.detected} | "
                     f"{row.mean_delay} | {row.delay_range} | {before:.0f} | "
                     f"{row.after / row.runs:.1f} |")
    return lines


def goal_lines(rows: list[ReplayRow]) -> list[str]:
    lines = ["| stream | driftline mean delay | river ADWIN mean delay | driftline later / same / "
             "earlier (runs) | later by | delay goal |", "|---|---:|---:|---|---|---|"]
    for stream in STREAMS:
        ours = next(r for r in rows if r.stream == stream and r.config == "driftline")
        theirs = next(r for r in rows if r.stream == stream and r.config == "river ADWIN")
        diff = np.array(ours.versus_river)
        later = ", ".join(f"{d:,}" for d in sorted(diff[diff > 0])) or "-"
        met = np.mean(ours.delays or [HORIZON]) <= np.mean(theirs.delays or [HORIZON]) and \
            len(ours.delays) >= len(theirs.delays)
        lines.append(f"| {stream} | {ours.mean_delay} ({ours.detected}) | {theirs.mean_delay} "
                     f"({theirs.detected}) | {np.sum(diff > 0)} / {np.sum(diff == 0)} / "
                     f"{np.sum(diff < 0)} | {later} | {'met' if met else 'NOT met'} |")
    return lines


def stationary_concept_lines(counts: dict[str, int], n: int) -> list[str]:
    lines = ["| detector | alarms (all false) | per 100k outcomes |", "|---|---:|---:|"]
    for config in CONFIGS:
        lines.append(f"| {config} | {counts[config]} | {counts[config] / n * 100_000:.2f} |")
    return lines


def stationary_lines(runs: list[StationaryRun], n: int) -> list[str]:
    families = ("psi", "fairness", "adwin", "ddm")
    lines = ["| seed | outcomes | psi | fairness | adwin | ddm | **all alarms** | goal (<= 1) | "
             "PSI warnings | largest PSI: inputs / label (thresholds 0.25 / 0.05) | "
             "fairness intervals per evaluation | largest fairness difference gap: estimate "
             "/ lower bound (threshold 0.1) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|"]
    for run in runs:
        count = Counter(a.detector for a in run.alarms)
        total = len(run.alarms)
        (psi_in, name_in), (psi_label, _) = run.largest_psi["inputs"], run.largest_psi[LABEL]
        lines.append(f"| {run.seed} | {run.outcomes:,} | "
                     + " | ".join(str(count[f]) for f in families)
                     + f" | **{total}** | {'met' if total <= 1 else 'NOT met'} | {run.warnings} "
                     f"| {psi_in:.4f} ({name_in}) / {psi_label:.4f} | {run.family_size} | "
                     f"{run.largest_gap[0]:.3f} / {run.largest_gap[1]:.3f} |")
    for run in runs:
        for alarm in run.alarms:
            lines.append(f"\nseed {run.seed}: {alarm.detector} {alarm.subject}: {alarm.summary}")
    return lines


def throughput_lines(run: StationaryRun, families: list[Throughput]) -> list[str]:
    lines = ["| what | per call | updates | CPU: per s | wall: per s | note |",
             "|---|---|---:|---:|---:|---|"]
    for f in families:
        lines.append(f"| {f.family} | {f.per_call} | {f.units:,} {f.unit} | "
                     f"{f.units / f.timer.cpu:,.0f} | {f.units / f.timer.wall:,.0f} | {f.note} |")
    for name, timer in (("Monitor.observe", run.observe),
                        ("LabelJoin.process + Monitor.observe (the pipeline)", run.pipeline)):
        lines.append(f"| **{name}** | one batch | {run.outcomes:,} outcomes | "
                     f"**{run.outcomes / timer.cpu:,.0f}** | **{run.outcomes / timer.wall:,.0f}** "
                     f"| outcomes/s, whole monitor, one process |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, help="replay seeds per stream (10; --quick 3)")
    parser.add_argument("--outcomes", type=int,
                        help="events of each stationary stream (1,000,000; --quick 200,000)")
    parser.add_argument("--stationary-seeds", type=int, help="stationary streams (5; --quick 1)")
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000, help="predictions per batch")
    parser.add_argument("--replay-batch", type=int, default=1_000)
    parser.add_argument("--pretrain", type=int, nargs="+", default=[PRETRAIN, 0],
                        help="samples the replay's model learns before the stream; one replay "
                        "per value")
    parser.add_argument("--warmup", type=int, default=DetectorConfig().warmup,
                        help="the replay's driftline warm-up (DetectorConfig.warmup)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 1 min)")
    parser.add_argument("--out", help="also write the report (markdown) to this file")
    args = parser.parse_args()
    quick = {"seeds": 3, "outcomes": 200_000, "stationary_seeds": 1}
    full = {"seeds": 10, "outcomes": 1_000_000, "stationary_seeds": 5}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick and args.pretrain == [PRETRAIN, 0]:
        args.pretrain = [PRETRAIN]
    started, load_before = time.perf_counter(), os.getloadavg()

    replays = []
    for pretrain in args.pretrain:
        print(f"== 1. concept-drift replay: {len(STREAMS)} streams x {args.seeds} seeds, "
              f"pre-trained on {pretrain:,}", file=sys.stderr)
        replays.append((pretrain, *replay(args.seeds, args.replay_batch, pretrain,
                                          DetectorConfig(warmup=args.warmup))))

    runs = []
    for seed in range(args.stationary_seeds):
        print(f"== 2. stationary stream, seed {seed}: {args.outcomes:,} events",
              file=sys.stderr)
        _PROFILES[seed] = reference(seed, args.train_rows)
        runs.append(stationary(seed, _PROFILES[seed], args.outcomes, args.batch,
                               keep=seed == 0))
        print(f"  {len(runs[-1].alarms)} alarms ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)
    print("== 3. throughput per family", file=sys.stderr)
    families, counts = family_throughput(runs[0])
    runs[0].batches.clear()

    report = [
        f"python {platform.python_version()}, numpy {np.__version__}, river {river.__version__};"
        f" {platform.machine()}, shared 2-core VM ({os.cpu_count()} CPUs); load average "
        f"{load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
    ]
    for pretrain, rows, seconds in replays:
        report += [
            "",
            f"### Concept-drift replay: model pre-trained on {pretrain:,} samples ({args.seeds} "
            f"seeds per stream, change at {CHANGE:,} of {LENGTH:,}, driftline warm-up "
            f"{args.warmup:,}; {seconds:.0f} s)",
            "",
            *replay_table(rows),
            "",
            "Delay goal (no worse than river's ADWIN at its defaults on the same errors; a run "
            f"without a detection counts as {HORIZON:,}):",
            "",
            *goal_lines(rows),
        ]
    report += [
        "",
        f"### Concept detectors on the stationary error stream (seed 0's {runs[0].outcomes:,} "
        "outcomes, in join order)",
        "",
        *stationary_concept_lines(counts, runs[0].outcomes),
        "",
        f"### Stationary streams through the whole monitor ({args.outcomes:,} events each, "
        f"batches of {args.batch:,}): false alarms",
        "",
        *stationary_lines(runs, args.outcomes),
        "",
        f"### Throughput (stationary seed 0, batches of {args.batch:,}; PSI calibration at "
        f"startup {runs[0].startup_s:.1f} s, not included)",
        "",
        *throughput_lines(runs[0], families),
        "",
        f"Total run time {time.perf_counter() - started:.0f} s.",
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
