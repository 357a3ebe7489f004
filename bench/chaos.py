"""Chaos soak: steady traffic, SIGKILLed services, Redis outages, and an account of every event.

Run by hand: ``.venv/bin/python bench/chaos.py --duration 300 --rate 2000 --seed 7`` (writes
``bench/results/chaos-<date>.md``); ``tests/integration/test_chaos.py`` runs a short version.

Method
------
1. **Servers.** The embedded broker (or any Kafka given by ``--bootstrap``), and a redis-server of
   the soak's own with an append-only file fsync'd on every write (``appendfsync always``), so
   Redis can be crashed and restarted without losing an acknowledged write. A trained model
   registry (fraud v1 in Production), then ``driftline worker`` (one, or ``--workers``) and
   ``driftline serve`` as child processes, started the way ``driftline dev`` starts them (dev
   profile).
2. **Traffic.** A seeded plan of ``rate x duration`` messages, produced at a steady rate by a
   producer thread to explicit partitions (crc32 of the key), with idempotence, so every message's
   partition and offset are known from its delivery report. Good events are ``DemoGenerator``
   transactions (event time in 2023, never ahead of the wall clock; out of order by < 30 s,
   inside the 60 s allowed lateness), 90% Avro single-object and 10% JSON. A known fraction is
   bad, each kind with the dead-letter reason it must get: garbage bytes and empty values and
   truncated JSON and Avro (``decode_error``), a non-numeric or NaN amount and a missing field
   (``validation_error``), an unknown Avro fingerprint (``unknown_schema``) and, when the worker
   runs the event-time guard (``driftline/core/event_time.py``), events a century ahead
   (``future_event_time``) and in 1970 (``invalid_event_time``). A further fraction of good
   events is moved two hours back: those are late by the partition's watermark and must be
   dead-lettered as ``late``. Lateness is decided by the oracle from the actual offset order, not
   assumed. The plan ends with one good event in every partition, so a partition's committed
   offset reaching its end proves every message before it was processed.
3. **Chaos.** While the producer runs, two seeded lanes act, each after a random pause
   (``--gap``). Lane A repeats rounds of {SIGKILL a feature worker, a Redis outage} in random
   order (with ``--pause``, also: SIGSTOP a worker past its session timeout, then SIGCONT, so it
   resumes as a zombie whose partitions moved); an outage has a random length (``--outage``) and
   is alternately a crash (SIGKILL, then a restart on the same port and append-only file) and a
   hang (SIGSTOP, then SIGCONT). Lane B SIGKILLs the scorer, only while lane A is idle, so the
   new scorer always has feature records to make progress on. A killed service is restarted at
   once, and a lane's next action waits for its recovery:
   * **recovery after a kill**: from the SIGKILL to the first batch the replacement process has
     completed (``/health`` ``batches`` >= 1: for the worker, a batch whose state transaction
     committed in Redis; for the scorer, a batch whose predictions were flushed and whose offsets
     were committed). It includes the restart, the group join and the state rebuild.
   * **recovery after an outage**: from Redis accepting commands again to the worker's committed
     offsets in Redis (``StateKeys.offsets``, one hash per partition) moving past where they
     stood when Redis went away (or, if later, when it came back).
   * **outage seconds**: from the SIGKILL or SIGSTOP to the restarted Redis listening again or
     the SIGCONT;
   * **recovery after a worker pause**: from the SIGCONT to that process completing a batch.
4. **Drain.** After the last message, the worker must commit every partition to its end; it is
   then stopped (SIGTERM), the features topic is read to its end, the scorer must commit that end
   in its group; then it is stopped too, and every topic, the Parquet offline store and the Redis
   online values are read back with independent clients (raw confluent-kafka and fastavro, the
   schemas in ``schemas/``, pyarrow, redis-py).
5. **Account** (``account``, pure, tested on corrupted results with no server): the naive oracle
   (``tests/unit/features/feature_oracle.py``) replays each partition's decodable events in offset
   order and says which are applied and which late, and their feature values. Then, per message:
   * applied event: exactly one row in the features Parquet and one in the events archive, with
     the oracle's values; at least one record on the features topic, every copy with the oracle's
     values; at least one prediction, every copy identical, its inputs the oracle's values and
     its score onnxruntime's on them; no dead letter;
   * late or bad message: at least one dead letter for its partition and offset with the expected
     reason and the original bytes (same CRC-32), and nothing else (late events are archived in
     the events Parquet, exactly once, with what they arrived with);
   * every entity's online values in Redis equal the oracle's final values;
   * nothing observed that was not produced.
   An **event lost** is a produced message missing a required outcome anywhere. The topics are
   at-least-once by design (no broker transactions), so extra copies there are counted and
   reported as duplicates before de-duplication; Parquet and Redis must be exactly once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the oracle lives under tests/
    sys.path.insert(0, str(ROOT))

import fastavro  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.dataset as pa_dataset  # noqa: E402
import redis  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402

from driftline.adapters import kafka  # noqa: E402
from driftline.adapters.redis_layout import OnlineKeys, StateKeys  # noqa: E402
from driftline.commands import local_servers  # noqa: E402
from driftline.commands.dev_stack import spawn_service, wait_consuming  # noqa: E402
from driftline.commands.local_servers import ManagedProcess  # noqa: E402
from driftline.core.codec.schema_set import SchemaSet  # noqa: E402
from driftline.core.codec.single_object import encode  # noqa: E402
from driftline.core.demo_events import DemoConfig, DemoGenerator  # noqa: E402
from driftline.core.features import FeatureView, load_definitions  # noqa: E402
from driftline.feature_defs import DEFINITIONS_DIR  # noqa: E402
from driftline.settings import Settings  # noqa: E402
from tests.unit.features.feature_oracle import run_oracle_by_partition  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = ROOT / "schemas"
VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
EVENT_SCHEMA = "driftline.TransactionEvent"
CENTURY_MS = 100 * 365 * 86_400_000
LATE_SHIFT_MS = 2 * 3_600_000
RTOL = ATOL = 1e-9

# Message kinds. GOOD and LATE are decodable events the engine sees (the oracle decides which are
# applied and which late); every other kind has one fixed dead-letter reason.
GOOD, LATE = "good", "late"
EXPECTED_REASON = {
    "garbage": "decode_error",
    "empty": "decode_error",
    "truncated_json": "decode_error",
    "truncated_avro": "decode_error",
    "bad_amount": "validation_error",
    "nan_amount": "validation_error",
    "missing_field": "validation_error",
    "unknown_schema": "unknown_schema",
    "future": "future_event_time",
    "ancient": "invalid_event_time",
}
GUARD_KINDS = ("future", "ancient")
ENGINE_KINDS = (GOOD, LATE)


# -- the plan: what is produced ----------------------------------------------------------------
@dataclass
class ProducedLog:
    """Every message of the soak in plan order, with where it landed (from delivery reports)."""

    kinds: list[str]
    events: list[dict | None]  # the event as produced (None for undecodable kinds)
    keys: list[bytes | None]
    partitions: list[int]
    values: list[bytes | None]  # pre-built values of the bad kinds; good ones encode lazily
    formats: list[str]  # avro | json for events, "" otherwise
    offsets: np.ndarray = field(default=None)  # type: ignore[assignment]
    crcs: np.ndarray = field(default=None)  # type: ignore[assignment]
    delivery_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.kinds)
        if self.offsets is None:
            self.offsets = np.full(n, -1, dtype=np.int64)
        if self.crcs is None:
            self.crcs = np.zeros(n, dtype=np.uint32)

    def __len__(self) -> int:
        return len(self.kinds)

    def value(self, i: int, schemas: SchemaSet) -> bytes:
        if self.values[i] is not None:
            return self.values[i]
        event = self.events[i]
        if self.formats[i] == "json":
            return json.dumps(event).encode()
        return encode(EVENT_SCHEMA, event, schemas)

    def end_offsets(self) -> dict[int, int]:
        """Next offset of every partition written to (its last delivered offset + 1)."""
        ends: dict[int, int] = {}
        for p, o in zip(self.partitions, self.offsets.tolist(), strict=True):
            if o >= 0:
                ends[p] = max(ends.get(p, 0), o + 1)
        return ends


def partition_of(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


def make_plan(n_messages: int, seed: int, partitions: int, n_entities: int = 2000,
              bad_fraction: float = 0.01, late_fraction: float = 0.002,
              guard: bool = False, json_fraction: float = 0.1,
              schemas: SchemaSet | None = None) -> ProducedLog:
    """The seeded message plan: ``n_messages`` in all, a tail of good events that ends every
    partition with a good one, bad kinds spread uniformly (guard kinds only if `guard`)."""
    schemas = schemas or SchemaSet.load()
    rng = np.random.default_rng(seed)
    gen = DemoGenerator(DemoConfig(seed=seed, n_entities=n_entities, events_per_second=20.0,
                                   shuffle_within_ms=30_000))
    n_bad = int(round(n_messages * bad_fraction))
    bad_slots = set(rng.choice(np.arange(n_messages // 20, n_messages), size=n_bad,
                               replace=False).tolist()) if n_bad else set()
    events = gen.events(n_messages - len(bad_slots))
    n_late = int(round(len(events) * late_fraction))
    late_idx = set(rng.choice(np.arange(len(events) // 20, len(events)), size=n_late,
                              replace=False).tolist()) if n_late else set()
    bad_kinds = [k for k in EXPECTED_REASON if guard or k not in GUARD_KINDS]
    kinds: list[str] = []
    evs: list[dict | None] = []
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    formats: list[str] = []
    fmt = rng.random(n_messages + 10 * partitions) < json_fraction
    e = n_bad_made = 0
    for slot in range(n_messages):
        if slot in bad_slots:
            kind = bad_kinds[n_bad_made % len(bad_kinds)]  # round robin: every kind occurs
            n_bad_made += 1
            template = events[min(e, len(events) - 1)]
            event, key, value = _bad_message(kind, template, slot, seed, rng, schemas)
            kinds.append(kind)
            evs.append(event)
            keys.append(key)
            values.append(value)
            formats.append("")
            continue
        event = events[e]
        kind = GOOD
        if e in late_idx:
            event = dict(event, event_time=event["event_time"] - LATE_SHIFT_MS)
            kind = LATE
        e += 1
        kinds.append(kind)
        evs.append(event)
        keys.append(event["entity_id"].encode())
        values.append(None)
        formats.append("json" if fmt[slot] else "avro")
    # The tail: good events until every partition's last message is a good one.
    covered: set[int] = set()
    while len(covered) < partitions:
        for event in gen.events(4 * partitions):
            key = event["entity_id"].encode()
            covered.add(partition_of(key, partitions))
            kinds.append(GOOD)
            evs.append(event)
            keys.append(key)
            values.append(None)
            formats.append("avro")
            if len(covered) == partitions:
                break
    parts = [partition_of(k, partitions) if k is not None else 0 for k in keys]
    return ProducedLog(kinds, evs, keys, parts, values, formats)


def _bad_message(kind: str, template: dict, slot: int, seed: int, rng: np.random.Generator,
                 schemas: SchemaSet) -> tuple[dict | None, bytes, bytes]:
    """(event or None, key, value) of one bad message of `kind`; every one is unique."""
    event = dict(template, event_id=f"bad-{seed}-{slot}")
    key = template["entity_id"].encode()
    avro = encode(EVENT_SCHEMA, event, schemas)
    if kind == "garbage":
        return None, key, b"\x17\x99" + rng.bytes(int(rng.integers(4, 40))) + str(slot).encode()
    if kind == "empty":
        return None, key, b""
    if kind == "truncated_json":
        return None, key, json.dumps(event).encode()[:-7]
    if kind == "truncated_avro":
        return None, key, avro[:-3]
    if kind == "bad_amount":
        return None, key, json.dumps(dict(event, amount="12.5x")).encode()
    if kind == "nan_amount":
        return None, key, json.dumps(dict(event, amount=float("nan"))).encode()
    if kind == "missing_field":
        return None, key, json.dumps({k: v for k, v in event.items() if k != "amount"}).encode()
    if kind == "unknown_schema":
        return None, key, b"\xc3\x01" + rng.bytes(8) + avro[10:]
    if kind == "future":
        event["event_time"] = int(time.time() * 1000) + CENTURY_MS
        return event, key, encode(EVENT_SCHEMA, event, schemas)
    if kind == "ancient":
        event["event_time"] = 1_000
        return event, key, encode(EVENT_SCHEMA, event, schemas)
    raise ValueError(kind)


def guard_wired() -> bool:
    """Whether the worker runs the event-time guard (``driftline/core/event_time.py`` exists and
    the worker's ingest or feature stage uses it); only then are guard kinds produced."""
    try:
        import driftline.core.event_time  # noqa: F401
    except ImportError:
        return False
    sources = [ROOT / "agents" / name for name in ("ingest.py", "features.py", "worker.py")]
    return any("EventTimeGuard" in p.read_text() for p in sources if p.exists())


# -- what was observed ---------------------------------------------------------------------------
@dataclass
class Observed:
    """Everything read back after the soak (raw clients only: confluent-kafka, fastavro with
    ``schemas/``, pyarrow, redis-py; no Driftline code on the reading side)."""

    events_topic: str
    feature_ids: list[str]
    feature_values: np.ndarray  # (n, n_features), NaN where null
    prediction_ids: list[str]
    prediction_scores: np.ndarray
    prediction_versions: list[int]
    prediction_inputs: np.ndarray  # (n, n_features)
    dead_letters: list[tuple[str, int, int, str, int]]  # topic, partition, offset, reason, crc
    parquet_features: pd.DataFrame  # event_id, partition, offset, feature columns
    parquet_events: pd.DataFrame  # event_id, partition, offset
    online: dict[str, tuple[int, np.ndarray]]  # entity -> (_event_time, values)
    online_extra_keys: int = 0  # online rows of entities no applied event belongs to
    pending_files: int = 0


# -- the account ---------------------------------------------------------------------------------
@dataclass
class Accounting:
    produced: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    late: int = 0
    dead_lettered_expected: int = 0
    lost: int = 0
    lost_where: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)  # extra copies before de-dup
    exactly_once_violations: dict[str, int] = field(default_factory=dict)
    wrong: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    online_checked: int = 0
    online_correct: int = 0
    predictions_scored_checked: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and not any(self.exactly_once_violations.values())
                and not any(self.wrong.values()) and not any(self.unexpected.values())
                and self.online_correct == self.online_checked)

    def failures(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{self.lost} events lost ({_nonzero(self.lost_where)})")
        for title, counts in (("not exactly once", self.exactly_once_violations),
                              ("wrong", self.wrong), ("unexpected", self.unexpected)):
            if any(counts.values()):
                out.append(f"{title}: {_nonzero(counts)}")
        if self.online_correct != self.online_checked:
            out.append(f"online values: {self.online_correct} of {self.online_checked} correct")
        return out


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _rows_close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return np.ones(a.shape[0], dtype=bool)
    return np.isclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True).all(axis=1)


def oracle_for(produced: ProducedLog, view: FeatureView, guard: bool
               ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[int, np.ndarray]]]:
    """Run the oracle over what the engine sees, per partition in offset order.

    Returns (late flag per message, values per message (NaN rows where not applied), the final
    online values per entity). Messages the engine never sees have late False and NaN values."""
    n = len(produced)
    seen = set(ENGINE_KINDS) | (set() if guard else set(GUARD_KINDS))
    by_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, kind in enumerate(produced.kinds):
        if kind in seen and produced.offsets[i] >= 0:
            by_partition[produced.partitions[i]].append((int(produced.offsets[i]), i))
    order = {p: [i for _, i in sorted(rows)] for p, rows in by_partition.items()}
    streams = {p: [produced.events[i] for i in idx] for p, idx in order.items()}
    if sum(map(len, streams.values())) < 50_000 or len(streams) < 2:
        results = run_oracle_by_partition(view, streams)
    else:  # one process per partition: the oracle is a slow, deliberately naive Python loop
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(len(streams), os.cpu_count() or 1)) as pool:
            futures = {p: pool.submit(run_oracle_by_partition, view, {p: events})
                       for p, events in streams.items()}
            results = {p: future.result()[p] for p, future in futures.items()}
    late = np.zeros(n, dtype=bool)
    values = np.full((n, len(view.feature_names)), np.nan)
    online: dict[str, tuple[int, np.ndarray]] = {}
    for p, idx in order.items():
        index = np.asarray(idx, dtype=np.int64)
        late[index] = results[p].late
        values[index] = results[p].values
        online.update(results[p].final_online)
    return late, values, online


def account(produced: ProducedLog, observed: Observed, view: FeatureView = VIEW,
            guard: bool = False, score: Callable[[np.ndarray], np.ndarray] | None = None,
            oracle: tuple | None = None) -> Accounting:
    """Compare what was produced with what was observed; see the module docstring."""
    acc = Accounting(produced=len(produced), by_kind=dict(Counter(produced.kinds)))
    late, values, online = oracle or oracle_for(produced, view, guard)
    n = len(produced)
    names = list(view.feature_names)
    kinds = np.asarray(produced.kinds, dtype=object)
    engine = np.isin(kinds, ENGINE_KINDS if guard else (*ENGINE_KINDS, *GUARD_KINDS))
    delivered = produced.offsets >= 0
    applied = engine & ~late & delivered
    expected_reason = np.array([EXPECTED_REASON.get(k, "") for k in produced.kinds],
                               dtype=object)
    if not guard:  # unguarded future/ancient events are judged by the engine like any other
        expected_reason[engine] = ""
    expected_reason[engine & late] = "late"
    to_dlq = (expected_reason != "") & delivered
    acc.applied = int(applied.sum())
    acc.late = int((engine & late).sum())
    acc.dead_lettered_expected = int(to_dlq.sum())
    not_delivered = int((~delivered).sum())
    missing = np.zeros(n, dtype=bool)
    missing |= ~delivered

    def example(text: str) -> None:
        if len(acc.examples) < 20:
            acc.examples.append(text)

    id_index = {produced.events[i]["event_id"]: i for i in range(n)
                if produced.events[i] is not None and delivered[i]}

    def lookup(ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((id_index.get(x, -1) for x in ids), dtype=np.int64, count=len(ids))

    # Parquet features: exactly one row per applied event, the oracle's values.
    pf = observed.parquet_features
    idx = lookup(pf["event_id"].tolist()) if len(pf) else np.zeros(0, dtype=np.int64)
    known = idx >= 0
    counts = np.bincount(idx[known], minlength=n)
    stray = known.copy()
    stray[known] = ~applied[idx[known]]
    acc.unexpected["parquet rows of unknown events"] = int((~known).sum())
    acc.unexpected["parquet rows of late or bad events"] = int(stray.sum())
    lost_parquet = applied & (counts == 0)
    acc.exactly_once_violations["parquet rows beyond one per event"] = \
        int(np.maximum(counts[applied] - 1, 0).sum())
    ok_rows = known & ~stray
    if ok_rows.any():
        got = pf[names].to_numpy(dtype=np.float64)[ok_rows]
        close = _rows_close(got, values[idx[ok_rows]])
        at = idx[ok_rows]
        where_ok = (pf["offset"].to_numpy()[ok_rows] == produced.offsets[at]) & (
            pf["partition"].to_numpy()[ok_rows] == np.asarray(produced.partitions)[at])
        acc.wrong["parquet feature values"] = int((~close).sum())
        acc.wrong["parquet partitions and offsets"] = int((~where_ok).sum())
        for j in np.flatnonzero(~close)[:3]:
            example(f"parquet values of {pf['event_id'].iloc[np.flatnonzero(ok_rows)[j]]} "
                    f"differ from the oracle")
    missing |= lost_parquet
    acc.lost_where["parquet features"] = int(lost_parquet.sum())

    # Parquet events archive: exactly one row per event the engine saw (applied or late).
    pe = observed.parquet_events
    idx = lookup(pe["event_id"].tolist()) if len(pe) else np.zeros(0, dtype=np.int64)
    known = idx >= 0
    counts = np.bincount(idx[known], minlength=n)
    archived = engine & delivered
    allowed = archived | (np.isin(kinds, GUARD_KINDS) & delivered)  # a guard may archive
    acc.unexpected["archived events never produced"] = int((~known).sum())
    acc.unexpected["archived bad events"] = int((counts > 0)[~allowed].sum())
    acc.exactly_once_violations["archive rows beyond one per event"] = \
        int(np.maximum(counts - 1, 0).sum())
    lost_archive = archived & (counts == 0)
    missing |= lost_archive
    acc.lost_where["parquet events archive"] = int(lost_archive.sum())

    # Features topic: at least one record per applied event, every copy the oracle's values.
    idx = lookup(observed.feature_ids)
    known = idx >= 0
    counts = np.bincount(idx[known], minlength=n)
    acc.unexpected["feature records of unknown events"] = int((~known).sum())
    acc.unexpected["feature records of late or bad events"] = int((counts > 0)[~applied].sum())
    lost_features = applied & (counts == 0)
    missing |= lost_features
    acc.lost_where["features topic"] = int(lost_features.sum())
    acc.duplicates["features topic"] = int(np.maximum(counts[applied] - 1, 0).sum())
    good = known.copy()
    good[known] = applied[idx[known]]
    if good.any():
        close = _rows_close(observed.feature_values[good], values[idx[good]])
        acc.wrong["feature record values"] = int((~close).sum())

    # Predictions: at least one per applied event; copies identical; inputs = the oracle's values.
    idx = lookup(observed.prediction_ids)
    known = idx >= 0
    counts = np.bincount(idx[known], minlength=n)
    acc.unexpected["predictions of unknown events"] = int((~known).sum())
    acc.unexpected["predictions of late or bad events"] = int((counts > 0)[~applied].sum())
    lost_predictions = applied & (counts == 0)
    missing |= lost_predictions
    acc.lost_where["predictions"] = int(lost_predictions.sum())
    acc.duplicates["predictions"] = int(np.maximum(counts[applied] - 1, 0).sum())
    good = known.copy()
    good[known] = applied[idx[known]]
    if good.any():
        gi = idx[good]
        close = _rows_close(observed.prediction_inputs[good], values[gi])
        acc.wrong["prediction inputs"] = int((~close).sum())
        scores = observed.prediction_scores[good]
        versions = np.asarray(observed.prediction_versions)[good]
        first_score = np.full(n, np.nan)
        first_version = np.full(n, -1)
        first_score[gi[::-1]] = scores[::-1]  # the first copy of each event wins
        first_version[gi[::-1]] = versions[::-1]
        differ = (scores != first_score[gi]) | (versions != first_version[gi])
        acc.wrong["prediction copies that differ"] = int(differ.sum())
        if score is not None:
            unique = np.unique(gi)
            expected = score(values[unique].astype(np.float32))
            mismatch = ~np.isclose(first_score[unique], expected, rtol=1e-6, atol=1e-7)
            acc.wrong["prediction scores vs onnxruntime"] = int(mismatch.sum())
            acc.predictions_scored_checked = len(unique)

    # Dead letters: at least one per late or bad message, with its reason and original bytes.
    where = {(p, o): i for i, (p, o) in enumerate(zip(produced.partitions,
                                                      produced.offsets.tolist(), strict=True))
             if o >= 0}
    dlq_counts = np.zeros(n, dtype=np.int64)
    wrong_reason = wrong_bytes = unknown_dl = 0
    for topic, p, o, reason, crc in observed.dead_letters:
        i = where.get((p, o)) if topic == observed.events_topic else None
        if i is None:
            unknown_dl += 1
            example(f"dead letter from {topic}/{p}@{o} ({reason}) matches no produced message")
            continue
        dlq_counts[i] += 1
        if reason != expected_reason[i]:
            wrong_reason += 1
            example(f"dead letter {p}@{o} ({produced.kinds[i]}): reason {reason!r}, "
                    f"expected {expected_reason[i] or 'none (a good event)'!r}")
        if crc != int(produced.crcs[i]):
            wrong_bytes += 1
    acc.wrong["dead-letter reasons"] = wrong_reason
    acc.wrong["dead-letter original bytes"] = wrong_bytes
    acc.unexpected["dead letters of no produced message"] = unknown_dl
    lost_dlq = to_dlq & (dlq_counts == 0)
    missing |= lost_dlq
    acc.lost_where["dead letters"] = int(lost_dlq.sum())
    acc.duplicates["dead letters"] = int(np.maximum(dlq_counts[to_dlq] - 1, 0).sum())
    acc.lost_where["never delivered by the producer"] = not_delivered

    # Online values: every entity's row equals the oracle's final values.
    acc.online_checked = len(online)
    correct = 0
    for entity, (event_time, want) in online.items():
        got = observed.online.get(entity)
        if got is None:
            example(f"no online row for {entity}")
            continue
        if got[0] == event_time and _rows_close(got[1][None, :], want[None, :])[0]:
            correct += 1
        else:
            example(f"online values of {entity} differ from the oracle")
    acc.online_correct = correct
    acc.unexpected["online rows of unknown entities"] = observed.online_extra_keys + sum(
        1 for entity in observed.online if entity not in online)

    acc.lost = int(missing.sum())
    for i in np.flatnonzero(missing)[:5]:
        ev = produced.events[i]
        example(f"lost: message {i} ({produced.kinds[i]}, "
                f"{ev['event_id'] if ev else 'no id'}) at {produced.partitions[i]}@"
                f"{produced.offsets[i]}")
    return acc


# -- reading back --------------------------------------------------------------------------------
def _schema(name: str):
    return fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))


def read_topic(bootstrap: str, topic: str, partitions: int, idle_s: float = 3.0,
               timeout_s: float = 300.0) -> list[tuple[int, int, bytes]]:
    """Every message of `topic` from the beginning: (partition, offset, value). No group join
    (explicit assignment); done when every partition reported its end and nothing came for
    `idle_s` (the embedded broker's ListOffsets cannot be trusted for the end)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-read-{time.time_ns()}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out: list[tuple[int, int, bytes]] = []
    at_end: set[int] = set()
    last = time.monotonic()
    deadline = last + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(10000, 0.2)
            for msg in batch:
                err = msg.error()
                if err is None:
                    out.append((msg.partition(), msg.offset(), msg.value() or b""))
                    at_end.discard(msg.partition())
                    last = time.monotonic()
                elif err.code() == -191:  # _PARTITION_EOF
                    at_end.add(msg.partition())
            if len(at_end) == partitions and time.monotonic() - last >= idle_s:
                break
    finally:
        consumer.close()
    return out


def _decode_all(messages: Sequence[tuple[int, int, bytes]], schema) -> list[dict]:
    out = []
    for _, _, value in messages:
        if value[:2] != b"\xc3\x01":
            raise AssertionError(f"not an Avro single-object record: {value[:12]!r}")
        out.append(fastavro.schemaless_reader(io.BytesIO(value[10:]), schema))
    return out


def _value_matrix(maps: Sequence[dict], names: Sequence[str]) -> np.ndarray:
    out = np.full((len(maps), len(names)), np.nan)
    for r, m in enumerate(maps):
        for c, name in enumerate(names):
            v = m.get(name)
            if v is not None:
                out[r, c] = v
    return out


def read_online(client: redis.Redis, keys: OnlineKeys, view: FeatureView,
                entities: Sequence[str]) -> tuple[dict[str, tuple[int, np.ndarray]], int]:
    names = list(view.feature_names)
    online: dict[str, tuple[int, np.ndarray]] = {}
    for start in range(0, len(entities), 1000):
        chunk = entities[start:start + 1000]
        pipe = client.pipeline(transaction=False)
        for entity in chunk:
            pipe.hgetall(keys.feature(view.name, entity))
        for entity, raw in zip(chunk, pipe.execute(), strict=True):
            if raw:
                row = {k.decode(): v.decode() for k, v in raw.items()}
                online[entity] = (int(row["_event_time"]),
                                  np.array([float(row[n]) for n in names]))
    wanted = {keys.feature(view.name, e).encode() for e in entities}
    extra = sum(1 for key in client.scan_iter(keys.pattern(view.name), count=1000)
                if key not in wanted)
    return online, extra


def _read_parquet(base: Path) -> pd.DataFrame:
    """Every published row under `base` (the layout of docs and offline_store.py: files
    ``date=*/p{partition}-{first}-{last}.parquet``; pending and temporary files are not rows)."""
    files = sorted(str(p) for p in base.glob("date=*/*.parquet")) if base.exists() else []
    if not files:
        return pd.DataFrame()
    return pa_dataset.dataset(files, format="parquet").to_table().to_pandas()


def read_back(settings: Settings, client: redis.Redis, entities: Sequence[str],
              feature_messages: Sequence[tuple[int, int, bytes]] | None = None) -> Observed:
    """Read every output of the soak; `feature_messages` is the features topic if already read
    (after the worker stopped)."""
    p = settings.partitions
    names = list(VIEW.feature_names)
    if feature_messages is None:
        feature_messages = read_topic(settings.kafka_bootstrap, settings.topic_features, p)
    features = _decode_all(feature_messages, _schema("FeatureRecord"))
    predictions = _decode_all(read_topic(settings.kafka_bootstrap, settings.topic_predictions, p),
                              _schema("Prediction"))
    dlq_schema = _schema("DeadLetter")
    dead = [(r["source_topic"], r["source_partition"], r["source_offset"], r["reason"],
             zlib.crc32(r["original"]))
            for r in _decode_all(read_topic(settings.kafka_bootstrap, settings.topic_dlq, p),
                                 dlq_schema)]
    offline = settings.data_dir / "offline"
    pf = _read_parquet(offline / "features" / f"view={VIEW.name}")
    pe = _read_parquet(offline / "events" / f"topic={settings.topic_events}")
    if not len(pf):
        pf = pd.DataFrame(columns=["event_id", "partition", "offset", *names])
    if not len(pe):
        pe = pd.DataFrame(columns=["event_id", "partition", "offset"])
    pending = sum(1 for _ in (settings.data_dir / "offline").rglob("*.pending-*"))
    online, extra = read_online(client, OnlineKeys.for_settings(settings), VIEW, entities)
    return Observed(
        events_topic=settings.topic_events,
        feature_ids=[r["event_id"] for r in features],
        feature_values=_value_matrix([r["values"] for r in features], names),
        prediction_ids=[r["event_id"] for r in predictions],
        prediction_scores=np.array([r["score"] for r in predictions], dtype=np.float64),
        prediction_versions=[r["model_version"] for r in predictions],
        prediction_inputs=_value_matrix([r["inputs"] for r in predictions], names),
        dead_letters=dead, parquet_features=pf[["event_id", "partition", "offset", *names]],
        parquet_events=pe[["event_id", "partition", "offset"]], online=online,
        online_extra_keys=extra, pending_files=pending)


def onnx_scorer(registry: Path, model: str = "fraud", version: int = 1
                ) -> Callable[[np.ndarray], np.ndarray]:
    """Independent recomputation of scores: raw onnxruntime, one thread (as the scorer runs)."""
    import onnxruntime as ort

    path = registry / model / "versions" / str(version) / "model.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def score(matrix: np.ndarray) -> np.ndarray:
        out = [session.run(["probabilities"], {"features": matrix[i:i + 10000]})[0][:, 1]
               for i in range(0, len(matrix), 10000)]
        return np.concatenate(out) if out else np.zeros(0)
    return score


# -- the soak ------------------------------------------------------------------------------------
@dataclass
class Kill:
    service: str
    at_s: float  # since the soak's start
    ready_s: float | None = None  # SIGKILL -> replacement has partitions assigned
    recovery_s: float | None = None  # SIGKILL -> replacement completed a batch


@dataclass
class Outage:
    mode: str  # crash (SIGKILL + restart) | hang (SIGSTOP + SIGCONT)
    at_s: float
    seconds: float = 0.0
    recovery_s: float | None = None  # Redis back -> worker committed offsets move on


@dataclass
class Pause:
    """A feature worker frozen with SIGSTOP for longer than its group session (a zombie)."""

    slot: str
    at_s: float
    seconds: float = 0.0
    recovery_s: float | None = None  # SIGCONT -> that process completes a batch again


@dataclass
class SoakReport:
    config: dict[str, Any]
    guard: bool
    produced: int = 0
    produce_seconds: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)
    accounting: Accounting | None = None
    timings: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    error: str | None = None

    def kills_survived(self, service: str) -> int:
        return sum(1 for k in self.kills if k.service == service and k.recovery_s is not None)

    def recoveries(self, service: str) -> list[float]:
        return [k.recovery_s for k in self.kills if k.service == service
                and k.recovery_s is not None]

    @property
    def outage_seconds(self) -> float:
        return sum(o.seconds for o in self.outages)

    @property
    def events_lost(self) -> int | None:
        return None if self.accounting is None else self.accounting.lost

    @property
    def ok(self) -> bool:
        return (self.error is None and self.accounting is not None and self.accounting.ok
                and all(k.recovery_s is not None for k in self.kills)
                and all(o.recovery_s is not None for o in self.outages)
                and all(p.recovery_s is not None for p in self.pauses))

    def failures(self) -> list[str]:
        out = [self.error] if self.error else []
        out += [f"{k.service} killed at {k.at_s:.1f}s never recovered" for k in self.kills
                if k.recovery_s is None]
        out += [f"Redis {o.mode} at {o.at_s:.1f}s: the worker never moved on" for o in
                self.outages if o.recovery_s is None]
        out += [f"{p.slot} paused at {p.at_s:.1f}s never completed a batch again"
                for p in self.pauses if p.recovery_s is None]
        if self.accounting is None:
            out.append("no accounting")
        else:
            out += self.accounting.failures()
        return out

    def figures(self) -> list[tuple[str, str]]:
        """The report's figures as (what, value) rows."""
        a = self.accounting
        rows = [("events produced", f"{self.produced:,} in {self.produce_seconds:.0f} s "
                 f"({self.produced / max(self.produce_seconds, 1e-9):,.0f}/s)")]
        if a is not None:
            bad = {k: v for k, v in a.by_kind.items() if k not in ENGINE_KINDS}
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(bad.items()))
            rows += [
                ("good events applied (features, Parquet, Redis, predictions)", f"{a.applied:,}"),
                ("late events (dead-lettered `late`, oracle's watermark rule)", f"{a.late:,}"),
                ("bad messages (dead-lettered with their reason)",
                 f"{sum(bad.values()):,} ({kinds})"),
            ]
        for service in ("worker", "scorer"):
            rec = self.recoveries(service)
            n = sum(1 for k in self.kills if k.service == service)
            rows.append((f"{service} SIGKILLs survived",
                         f"{self.kills_survived(service)} of {n}"))
            rows.append((f"{service} recovery after kill, s (each; max)",
                         (", ".join(f"{r:.1f}" for r in rec) + f"; max {max(rec):.1f}")
                         if rec else "-"))
        rows.append(("Redis outages", ", ".join(f"{o.mode} {o.seconds:.1f} s" for o in
                                                self.outages) or "none"))
        rows.append(("outage seconds", f"{self.outage_seconds:.1f}"))
        rec = [o.recovery_s for o in self.outages if o.recovery_s is not None]
        rows.append(("worker recovery after Redis is back, s (each; max)",
                     (", ".join(f"{r:.1f}" for r in rec) + f"; max {max(rec):.1f}")
                     if rec else "-"))
        if self.pauses:
            rows.append(("worker pauses (SIGSTOP past the session timeout), s; recovery, s",
                         ", ".join(f"{p.seconds:.1f}; {p.recovery_s or float('nan'):.1f}"
                                   for p in self.pauses)))
        if a is not None:
            dup, once = a.duplicates, a.exactly_once_violations
            wrong_scores = a.wrong.get("prediction scores vs onnxruntime", 0)
            rows += [
                ("**events lost**", f"**{a.lost}**"),
                ("duplicates before de-duplication: features topic",
                 f"{dup.get('features topic', 0):,}"),
                ("duplicates before de-duplication: predictions", f"{dup.get('predictions', 0):,}"),
                ("duplicates before de-duplication: dead letters",
                 f"{dup.get('dead letters', 0):,}"),
                ("Parquet / archive rows beyond one per event",
                 f"{once.get('parquet rows beyond one per event', 0)} / "
                 f"{once.get('archive rows beyond one per event', 0)}"),
                ("online values equal to the oracle (entities)",
                 f"{a.online_correct:,} of {a.online_checked:,}"),
                ("predictions equal to onnxruntime on the oracle's values",
                 f"{a.predictions_scored_checked - wrong_scores:,} of "
                 f"{a.predictions_scored_checked:,}"),
                ("every accounting check", "passed" if a.ok else "; ".join(a.failures())),
            ]
        return rows

    def command(self) -> str:
        c = self.config
        return (f"python bench/chaos.py --duration {c['duration_s']:g} --rate {c['rate']:g} "
                f"--seed {c['seed']}")

    def markdown(self) -> str:
        c = self.config
        lines = [
            f"# Chaos soak, {c['date']}",
            "",
            f"`{c.get('command') or self.command()}` ({c['partitions']} partitions, "
            f"{c['entities']:,} entities, "
            f"bad fraction {c['bad_fraction']}, late fraction {c['late_fraction']}, worker "
            f"batch size {c['batch_size']}, gaps {c['gap']} s, outages {c['outage']} s, "
            f"event-time guard kinds {'on' if self.guard else 'off'}, "
            f"{c.get('workers', 1)} feature worker(s)"
            + (f", worker pauses {c['pause']} s" if c.get("pause") else "") + "); "
            f"{c['machine']}; broker {c['broker']}.",
            "",
            f"Result: **{'PASS' if self.ok else 'FAIL'}**"
            + ("" if self.ok else f" ({'; '.join(self.failures())})"),
            "",
            "| figure | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in self.figures()],
            "",
            "Phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()),
            "",
            "## Timeline",
            "",
            "```",
            *self.log,
            "```",
        ]
        if self.accounting is not None and self.accounting.examples:
            lines += ["", "## Examples of problems", "",
                      *[f"- {e}" for e in self.accounting.examples]]
        return "\n".join(lines) + "\n"


def _get_json(url: str, timeout: float = 1.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _stream_health(body: dict | None) -> dict:
    if not body:
        return {}
    return body.get("stream", body)


@dataclass
class _Lane:
    kinds: tuple[str, ...]
    rng: random.Random
    queue: list[str] = field(default_factory=list)
    next_at: float = 0.0
    action: _Kill | _Outage | _Pause | None = None
    done: bool = False


class _Kill:
    """SIGKILL a service, restart it at once; over when the replacement completed a batch."""

    def __init__(self, soak: Soak, slot: str) -> None:
        self.soak = soak
        self.service = service_of(slot)
        self.kill = Kill(self.service, soak.now())
        soak.report.kills.append(self.kill)
        old = soak.services[slot]
        self.t_kill = time.monotonic()
        os.kill(old.proc.pid, signal.SIGKILL)
        old.proc.wait(10)
        self.new = soak.spawn(slot)
        soak.say(f"SIGKILL {slot} (pid {old.proc.pid}); restarted as pid {self.new.proc.pid}")
        self.next_poll = 0.0

    @property
    def recovered(self) -> bool:
        return self.kill.recovery_s is not None

    def step(self, now: float) -> bool:
        if now < self.next_poll:
            return False
        self.next_poll = now + 0.1
        kill, new = self.kill, self.new
        if not new.alive():
            self.soak.say(f"{self.service} replacement exited with {new.proc.returncode}:\n"
                          f"{new.log_tail(30)}")
            return True
        stream = _stream_health(_get_json(f"{new.address}/health", timeout=0.5))
        now = time.monotonic()
        if kill.ready_s is None and stream.get("assigned_partitions"):
            kill.ready_s = now - self.t_kill
        if stream.get("batches", 0) >= 1:
            kill.recovery_s = now - self.t_kill
            self.soak.say(f"{self.service} recovered {kill.recovery_s:.1f}s after the kill "
                          f"(partitions assigned at {kill.ready_s or 0:.1f}s)")
            return True
        if now - self.t_kill > self.soak.recovery_timeout_s:
            self.soak.say(f"{self.service} did not recover within "
                          f"{self.soak.recovery_timeout_s:.0f}s")
            return True
        return False


class _Outage:
    """Take Redis away for `length` seconds (crash: SIGKILL, then a restart on the same port and
    append-only file; hang: SIGSTOP, then SIGCONT); over when the worker commits again."""

    def __init__(self, soak: Soak, mode: str, length: float) -> None:
        assert soak.redis is not None
        self.soak = soak
        self.mode = mode
        self.outage = Outage(mode, soak.now())
        soak.report.outages.append(self.outage)
        before = soak.committed() or {}
        self.baseline = sum(before.values())
        self.t_stop = time.monotonic()
        if mode == "crash":
            os.kill(soak.redis.proc.pid, signal.SIGKILL)
            soak.redis.proc.wait(10)
        else:
            os.kill(soak.redis.proc.pid, signal.SIGSTOP)
        soak.say(f"Redis {'SIGKILL (crash)' if mode == 'crash' else 'SIGSTOP (hang)'} "
                 f"for {length:.1f}s")
        self.back_at = self.t_stop + length
        self.t_back: float | None = None
        self.first_read = True

    @property
    def recovered(self) -> bool:
        return self.outage.recovery_s is not None

    def step(self, now: float) -> bool:
        soak = self.soak
        if self.t_back is None:
            if now < self.back_at:
                return False
            if self.mode == "crash":
                soak.redis = local_servers.start_redis(soak.work_dir / "redis",
                                                       port=soak.redis_port, persist=True)
            else:
                os.kill(soak.redis.proc.pid, signal.SIGCONT)
            self.t_back = time.monotonic()
            self.outage.seconds = self.t_back - self.t_stop
            return False
        committed = soak.committed()
        now = time.monotonic()
        if committed is not None:
            total = sum(committed.values())
            if self.first_read:
                self.baseline, self.first_read = max(self.baseline, total), False
            elif total > self.baseline:
                self.outage.recovery_s = now - self.t_back
                soak.say(f"Redis back after {self.outage.seconds:.1f}s; the worker committed "
                         f"again {self.outage.recovery_s:.1f}s later")
                return True
        if now - self.t_back > soak.recovery_timeout_s:
            soak.say(f"the worker did not commit within {soak.recovery_timeout_s:.0f}s of "
                     f"Redis coming back")
            return True
        return False


class _Pause:
    """SIGSTOP a feature worker for `length` seconds (past its session timeout, so the group
    moves its partitions and it resumes as a zombie), then SIGCONT; over when that process has
    completed a batch after the SIGCONT."""

    def __init__(self, soak: Soak, slot: str, length: float) -> None:
        self.soak = soak
        self.proc = soak.services[slot]
        self.pause = Pause(slot, soak.now())
        soak.report.pauses.append(self.pause)
        self.before = _stream_health(_get_json(f"{self.proc.address}/health")).get("batches", 0)
        self.t_stop = time.monotonic()
        os.kill(self.proc.proc.pid, signal.SIGSTOP)
        soak.say(f"SIGSTOP {slot} (pid {self.proc.proc.pid}) for {length:.1f}s")
        self.back_at = self.t_stop + length
        self.t_back: float | None = None
        self.next_poll = 0.0

    @property
    def recovered(self) -> bool:
        return self.pause.recovery_s is not None

    def step(self, now: float) -> bool:
        if self.t_back is None:
            if now < self.back_at:
                return False
            os.kill(self.proc.proc.pid, signal.SIGCONT)
            self.t_back = time.monotonic()
            self.pause.seconds = self.t_back - self.t_stop
            return False
        if now < self.next_poll:
            return False
        self.next_poll = now + 0.1
        batches = _stream_health(_get_json(f"{self.proc.address}/health", timeout=0.5)).get(
            "batches", 0)
        now = time.monotonic()
        if batches > self.before:
            self.pause.recovery_s = now - self.t_back
            self.soak.say(f"{self.pause.slot} SIGCONT after {self.pause.seconds:.1f}s; it "
                          f"completed a batch again {self.pause.recovery_s:.1f}s later")
            return True
        if not self.proc.alive() or now - self.t_back > self.soak.recovery_timeout_s:
            self.soak.say(f"{self.pause.slot} did not complete a batch within "
                          f"{self.soak.recovery_timeout_s:.0f}s of SIGCONT "
                          f"(alive: {self.proc.alive()})")
            return True
        return False


def service_of(slot: str) -> str:
    return "scorer" if slot == "scorer" else "worker"


class Soak:
    """One soak run: servers, services, producer thread, chaos schedule, drain, account."""

    def __init__(self, duration_s: float, rate: float, seed: int, work_dir: Path,
                 bootstrap: str | None = None, registry: Path | None = None,
                 partitions: int = 3, entities: int = 2000, bad_fraction: float = 0.01,
                 late_fraction: float = 0.002, batch_size: int = 2000,
                 gap: tuple[float, float] = (1.0, 4.0), outage: tuple[float, float] = (2.0, 6.0),
                 guard: bool | None = None, recovery_timeout_s: float = 120.0,
                 action_margin_s: float = 15.0, workers: int = 1,
                 pause: tuple[float, float] | None = None,
                 out: Callable[[str], None] = print) -> None:
        self.duration_s = duration_s
        self.rate = rate
        self.seed = seed
        self.work_dir = Path(work_dir)
        self.bootstrap = bootstrap
        self.registry = registry
        self.partitions = partitions
        self.entities = entities
        self.bad_fraction = bad_fraction
        self.late_fraction = late_fraction
        self.batch_size = batch_size
        self.gap = gap
        self.outage = outage
        self.guard = guard_wired() if guard is None else guard
        self.recovery_timeout_s = recovery_timeout_s
        self.action_margin_s = action_margin_s
        self.worker_slots = ["worker"] if workers == 1 else [f"worker{i + 1}"
                                                             for i in range(workers)]
        self.pause = pause
        self.out = out
        self.log_dir = self.work_dir / "logs"
        self.servers: list[ManagedProcess] = []
        self.redis: ManagedProcess | None = None
        self.redis_port = 0
        self.services: dict[str, ManagedProcess] = {}
        self.spawned = Counter()
        self.t0 = time.monotonic()
        self.producer_done = threading.Event()
        self.producer_error: BaseException | None = None
        broker = "given: " + bootstrap if bootstrap else "embedded Tansu"
        self.report = SoakReport(config={
            "date": dt.date.today().isoformat(), "duration_s": duration_s, "rate": rate,
            "seed": seed, "partitions": partitions, "entities": entities,
            "bad_fraction": bad_fraction, "late_fraction": late_fraction,
            "batch_size": batch_size, "gap": list(gap), "outage": list(outage),
            "workers": workers, "pause": list(pause) if pause else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "broker": broker,
        }, guard=self.guard)

    # -- logging ---------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        line = f"[{self.now():7.1f}s] {text}"
        self.report.log.append(line)
        self.out(line)

    # -- servers ---------------------------------------------------------------------------
    def start_servers(self) -> None:
        if not self.bootstrap:
            self.servers.append(local_servers.start_broker(self.log_dir))
            self.bootstrap = self.servers[-1].address
        self.redis = local_servers.start_redis(self.work_dir / "redis", persist=True)
        self.redis_port = int(self.redis.address.rsplit(":", 1)[1].split("/")[0])
        run = f"chaos{self.seed}x{os.getpid()}x{time.time_ns() % 10**8}"
        topics = {f"topic_{role}": f"{run}.{role}" for role in Settings().topics}
        self.settings = Settings(
            profile="dev", kafka_bootstrap=self.bootstrap, redis_url=self.redis.address,
            data_dir=self.work_dir / "data", partitions=self.partitions,
            group_features=f"{run}-features", group_scorer=f"{run}-scorer",
            batch_size=self.batch_size, worker_port=0, scorer_port=0, **topics)
        kafka.create_topics(self.settings)
        self.client = redis.Redis.from_url(self.redis.address, socket_timeout=1.0,
                                           socket_connect_timeout=1.0)

    def prepare_registry(self) -> None:
        target = self.settings.data_dir / "registry"
        if self.registry is not None:
            shutil.copytree(self.registry, target)
            return
        from driftline.commands.training import train_initial
        from driftline.core.registry import ModelRegistry

        report = train_initial(ModelRegistry(target), VIEW, n_events=6000, seed=1,
                               created_at_ms=1)[1]
        self.say(f"trained {report.summary()}")

    def spawn(self, slot: str) -> ManagedProcess:
        """Start the service of `slot` (a worker slot or "scorer"); logs `{slot}-{n}.log`."""
        self.spawned[slot] += 1
        proc = spawn_service(self.settings, service_of(slot), self.log_dir,
                             name=f"{slot}-{self.spawned[slot]}")
        self.services[slot] = proc
        return proc

    def stop_all(self) -> None:
        if self.redis is not None and self.redis.alive():
            try:
                os.kill(self.redis.proc.pid, signal.SIGCONT)  # never leave it stopped
            except ProcessLookupError:
                pass
        for proc in self.services.values():
            proc.stop()
        if self.redis is not None:
            self.redis.stop()
        for proc in reversed(self.servers):
            proc.stop()

    # -- traffic ---------------------------------------------------------------------------
    def produce(self, plan: ProducedLog) -> None:
        schemas = SchemaSet.load()
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                             "enable.idempotence": True, "acks": "all"})
        topic = self.settings.topic_events

        def delivered(i: int):
            def callback(err, msg) -> None:
                if err is None:
                    plan.offsets[i] = msg.offset()
                else:
                    plan.delivery_errors.append(f"message {i}: {err}")
            return callback

        try:
            start = time.monotonic()
            n = len(plan)
            i = 0
            while i < n:
                due = min(n, int((time.monotonic() - start) * self.rate) + 1)
                while i < due:
                    value = plan.value(i, schemas)
                    plan.crcs[i] = zlib.crc32(value)
                    producer.produce(topic, value, key=plan.keys[i],
                                     partition=plan.partitions[i], on_delivery=delivered(i))
                    i += 1
                producer.poll(0)
                time.sleep(0.005)
            left = producer.flush(60)
            if left:
                plan.delivery_errors.append(f"{left} messages undelivered after 60 s")
            self.report.produce_seconds = time.monotonic() - start
        except BaseException as exc:  # surfaced by run(); the chaos loop stops on it
            self.producer_error = exc
        finally:
            self.producer_done.set()

    def committed(self) -> dict[int, int] | None:
        topic = self.settings.topic_events
        keys = StateKeys(self.settings.group_features, topic)
        try:
            pipe = self.client.pipeline(transaction=False)
            for p in range(self.settings.partitions):
                pipe.hget(keys.offsets(p), topic)
            return {p: int(o) for p, o in enumerate(pipe.execute()) if o is not None}
        except redis.RedisError:
            return None

    # -- chaos -----------------------------------------------------------------------------
    def chaos(self) -> None:
        """Two lanes of seeded actions until the producer is nearly done, in the main thread
        (children die with the thread that spawned them). Lane A: rounds of (SIGKILL the worker,
        Redis outage) in random order; lane B: SIGKILL the scorer, started only while lane A is
        idle, so the replacement scorer always has feature records to make progress on. Each
        lane waits for its action's recovery, then a random pause, then acts again."""
        kinds = ("worker", "redis", "pause") if self.pause else ("worker", "redis")
        lanes = [_Lane(kinds, random.Random(self.seed * 7919 + 1)),
                 _Lane(("scorer",), random.Random(self.seed * 7919 + 2))]
        for lane in lanes:
            lane.next_at = time.monotonic() + lane.rng.uniform(*self.gap)
        end_at = self.t_produce + len(self.plan) / self.rate
        outages = 0
        while True:
            now = time.monotonic()
            for lane in lanes:
                if lane.action is not None:
                    if lane.action.step(now):
                        if not lane.action.recovered:  # stop adding chaos, go and count
                            for other in lanes:
                                other.done = True
                        lane.action = None
                        lane.next_at = time.monotonic() + lane.rng.uniform(*self.gap)
                    continue
                if lane.done or now < lane.next_at:
                    continue
                if self.producer_done.is_set() or now + self.action_margin_s > end_at:
                    lane.done = True
                    continue
                if lane is lanes[1] and lanes[0].action is not None:
                    continue  # the scorer is killed only while the worker and Redis are up
                if not lane.queue:
                    lane.queue = list(lane.kinds)
                    lane.rng.shuffle(lane.queue)
                kind = lane.queue.pop(0)
                if kind == "redis":
                    lane.action = _Outage(self, ("crash", "hang")[outages % 2],
                                          lane.rng.uniform(*self.outage))
                    outages += 1
                elif kind == "pause":
                    lane.action = _Pause(self, lane.rng.choice(self.worker_slots),
                                         lane.rng.uniform(*self.pause))
                elif kind == "worker":
                    lane.action = _Kill(self, lane.rng.choice(self.worker_slots))
                else:
                    lane.action = _Kill(self, kind)
            if all(lane.done and lane.action is None for lane in lanes):
                return
            time.sleep(0.02)

    def wait_committed(self, ends: dict[int, int], timeout_s: float = 300.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
                self.services[slot].alive() for slot in self.worker_slots):
            now = self.committed() or {}
            if all(now.get(p, 0) >= end for p, end in ends.items()):
                return True
            time.sleep(0.1)
        self.say(f"the worker did not commit {ends} within {timeout_s:.0f}s "
                 f"(at {self.committed()})")
        return False

    def wait_scored(self, ends: dict[int, int], timeout_s: float = 300.0) -> bool:
        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": self.settings.group_scorer})
        tps = [TopicPartition(self.settings.topic_features, p) for p in ends]
        deadline = time.monotonic() + timeout_s
        got: dict[int, int] = {}
        try:
            while time.monotonic() < deadline and self.services["scorer"].alive():
                try:
                    got = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=5)}
                except Exception:  # noqa: BLE001 - a coordinator moving; ask again
                    got = {}
                if got and all(got.get(p, -1) >= end for p, end in ends.items()):
                    return True
                time.sleep(0.2)
        finally:
            consumer.close()
        self.say(f"the scorer did not commit {ends} within {timeout_s:.0f}s (at {got})")
        return False

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> SoakReport:
        timings = self.report.timings
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            timings[name] = time.monotonic() - mark
            mark = time.monotonic()

        try:
            n = int(self.duration_s * self.rate)
            self.plan = make_plan(n, self.seed, self.partitions, self.entities,
                                  self.bad_fraction, self.late_fraction, guard=self.guard)
            self.say(f"plan: {len(self.plan):,} messages "
                     f"({dict(sorted(Counter(self.plan.kinds).items()))}), guard kinds "
                     f"{'on' if self.guard else 'off'}")
            self.start_servers()
            self.prepare_registry()
            started = [self.spawn(slot) for slot in [*self.worker_slots, "scorer"]]
            for proc in started:
                wait_consuming(proc)
            self.say(f"servers and services up (broker {self.bootstrap}, "
                     f"redis {self.redis.address})")
            phase("setup")
            self.t_produce = time.monotonic()
            thread = threading.Thread(target=self.produce, args=(self.plan,), daemon=True)
            thread.start()
            self.chaos()
            thread.join()
            if self.producer_error is not None:
                raise self.producer_error
            self.report.produced = int((self.plan.offsets >= 0).sum())
            self.say(f"produced {self.report.produced:,} messages in "
                     f"{self.report.produce_seconds:.1f}s; {len(self.plan.delivery_errors)} "
                     f"delivery errors")
            phase("soak")
            ends = self.plan.end_offsets()
            drained = self.wait_committed(ends)
            for slot in self.worker_slots:
                self.services[slot].stop()
            feature_messages = read_topic(self.bootstrap, self.settings.topic_features,
                                          self.partitions)
            feature_ends: dict[int, int] = {}
            for p, offset, _ in feature_messages:
                feature_ends[p] = max(feature_ends.get(p, 0), offset + 1)
            scored = self.wait_scored(feature_ends)
            self.services["scorer"].stop()
            self.say(f"drained: worker {'done' if drained else 'NOT done'}, scorer "
                     f"{'done' if scored else 'NOT done'}")
            phase("drain")
            entities = sorted({e["entity_id"] for e, k in zip(self.plan.events, self.plan.kinds,
                                                              strict=True)
                               if e is not None and k in ENGINE_KINDS})
            observed = read_back(self.settings, self.client, entities, feature_messages)
            registry = self.settings.data_dir / "registry"
            phase("read back")
        except BaseException as exc:
            self.report.error = f"{type(exc).__name__}: {exc}"
            self.say(f"soak aborted: {self.report.error}")
            raise
        finally:
            self.stop_all()
        oracle = oracle_for(self.plan, VIEW, self.guard)
        phase("oracle")
        self.report.accounting = account(self.plan, observed, VIEW, self.guard,
                                         score=onnx_scorer(registry), oracle=oracle)
        phase("account")
        if observed.pending_files:
            self.say(f"note: {observed.pending_files} pending Parquet files left after a "
                     f"graceful stop")
        return self.report


def run_soak(duration_s: float = 300, rate: float = 2000, seed: int = 7,
             work_dir: Path | None = None, **options: Any) -> SoakReport:
    """Run one soak (see the module docstring) and return its report; servers are always
    stopped. `work_dir` keeps logs, the Redis append-only file and the offline store."""
    keep = work_dir is not None
    work = Path(work_dir) if keep else Path(tempfile.mkdtemp(prefix="driftline-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return Soak(duration_s, rate, seed, work, **options).run()
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=2000, help="messages per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--entities", type=int, default=20000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2000, help="the worker's batch size")
    parser.add_argument("--bad-fraction", type=float, default=0.01)
    parser.add_argument("--late-fraction", type=float, default=0.002)
    parser.add_argument("--gap", type=float, nargs=2, default=(2.0, 8.0), metavar=("MIN", "MAX"),
                        help="pause before each chaos action, seconds")
    parser.add_argument("--outage", type=float, nargs=2, default=(2.0, 10.0),
                        metavar=("MIN", "MAX"), help="length of each Redis outage, seconds")
    parser.add_argument("--workers", type=int, default=1, help="feature worker processes")
    parser.add_argument("--pause", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="also SIGSTOP a worker this long (past its session timeout)")
    parser.add_argument("--guard-kinds", choices=("auto", "on", "off"), default="auto",
                        help="produce future/ancient events (auto: if the worker has the guard)")
    parser.add_argument("--bootstrap", help="a running Kafka instead of the embedded broker")
    parser.add_argument("--work-dir", type=Path, help="keep logs and data here")
    parser.add_argument("--out", type=Path, help="results file (default "
                        "bench/results/chaos-<date>.md; '-' for none)")
    args = parser.parse_args(argv)
    guard = {"auto": None, "on": True, "off": False}[args.guard_kinds]
    report = run_soak(args.duration, args.rate, args.seed, work_dir=args.work_dir,
                      bootstrap=args.bootstrap, partitions=args.partitions,
                      entities=args.entities, bad_fraction=args.bad_fraction,
                      late_fraction=args.late_fraction, batch_size=args.batch_size,
                      gap=tuple(args.gap), outage=tuple(args.outage), guard=guard,
                      workers=args.workers, pause=tuple(args.pause) if args.pause else None)
    argv = sys.argv[1:] if argv is None else list(argv)
    report.config["command"] = " ".join(["python bench/chaos.py", *argv])
    text = report.markdown()
    print()
    print(text)
    out = args.out or BENCH_DIR / "results" / f"chaos-{report.config['date']}.md"
    if str(out) != "-":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
