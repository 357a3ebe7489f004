"""The retrain controller: drift events start retraining jobs, gates decide, rollouts promote.

`RetrainController` is the orchestration, driven from two places:

* `offer` takes decoded ``driftline.DriftEvent`` records (from ``DriftPipeline`` in
  ``retrain_service``, a batch loop over ``driftline.drift`` in its own consumer group). Each
  model has a `RetrainTrigger` (``core.retraining.trigger``) with its configured kinds, severity
  and cooldown: one job per model at a time, and a storm of events for one change starts one job
  whose lineage names them all. A drift-started job trains on the outcomes of events from the
  first event's ``detected_at`` (event time) on: the regime the drift announced, not the
  detector's whole window, which reaches back into the period before the change.
* `tick`, called about twice a second, picks up jobs requested by hand (``driftline retrain``
  drops a request file), watches running jobs and advances running rollouts.

A job runs outside the streaming path, as ``python -m driftline.commands.retrain_job`` (a child
process that dies with the controller). It registers its version atomically and tagged with
its job id, so a retried job finds the version instead of registering it twice, and it writes
its result file last. The controller's own state (triggers, jobs, rollouts) is one JSON file
replaced atomically after every change. After a crash, a job recorded as running whose
process is gone (its lock file is free) and that left no result is started again, up to
``max_attempts``, then marked failed with a ``failed`` event: never lost silently.

A registered candidate rolls out by the model's `RolloutPolicy`: *direct* promotes at once;
*shadow*, *canary* and *ab* write a serving plan into the registry (every scorer applies it on
the next ``driftline.ModelEvent``) and feed `RolloutState` with the outcomes the monitor writes
(``offline/outcomes``), arm by arm: the candidate's own outcomes for canary and A/B, and for
shadow the candidate re-scored on Production's outcome rows, whose inputs are exactly what both
versions saw live. Every step is a lineage record on ``driftline.models``
(``core.retraining.lineage``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq

from driftline.adapters.metrics import (
    GATE_PASSED,
    GATE_VALUE,
    RETRAIN_JOBS,
    ROLLOUT_ERRORS,
    ROLLOUT_OUTCOMES,
    ROLLOUT_SHARE,
)
from driftline.adapters.model_events import ModelEventPublisher
from driftline.adapters.offline_store import OfflineStore
from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.agents.ingest import wall_clock_ms
from driftline.commands.local_servers import die_with_parent
from driftline.core.atomic import atomic_write_json
from driftline.core.registry import ARCHIVED, PRODUCTION, STAGING, ModelRegistry, RegistryError
from driftline.core.retraining.config import RetrainingConfig
from driftline.core.retraining.lineage import lineage_record
from driftline.core.retraining.trigger import DriftSignal, RetrainTrigger
from driftline.core.rollout import (
    DIRECT,
    SHADOW,
    ABReport,
    Arm,
    Promote,
    Rollback,
    RolloutEvent,
    RolloutState,
    StepUp,
)

log = logging.getLogger(__name__)

STATE_FILE = "controller.json"
RUNNING, REGISTERED, REJECTED, FAILED = "running", "registered", "rejected", "failed"


@dataclass
class Job:
    """One retraining job as the controller tracks it (persisted in its state file)."""

    job_id: str
    model_name: str
    drift_ids: list[str]
    since_ms: int | None
    requested_at_ms: int
    reason: str
    attempt: int = 1
    status: str = RUNNING
    shuffle_labels: bool = False
    launched: bool = False  # its current attempt's process was started
    request_id: str | None = None
    drift_events: list[dict[str, Any]] = field(default_factory=list)  # what each drift id was
    parent_version: int | None = None
    version: int | None = None
    ended_at_ms: int | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Job:
        return cls(**dict(raw))


class JobRunner(Protocol):
    """Starts job processes and says whether one still runs."""

    def start(self, job: Job, spec_path: Path, log_path: Path) -> None: ...
    def running(self, job: Job, lock_path: Path) -> bool: ...


class SubprocessJobs:
    """Jobs as ``python -m driftline.commands.retrain_job SPEC`` children of the controller.

    A child dies with the controller (``PR_SET_PDEATHSIG``). A job this process did not start (a
    previous controller's) counts as running while it holds its lock file.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, job: Job, spec_path: Path, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.procs[job.job_id] = subprocess.Popen(
                [sys.executable, "-m", "driftline.commands.retrain_job", str(spec_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                preexec_fn=die_with_parent)

    def running(self, job: Job, lock_path: Path) -> bool:
        proc = self.procs.get(job.job_id)
        if proc is not None and proc.poll() is None:
            return True
        return lock_held(lock_path)


def lock_held(path: Path) -> bool:
    """Whether another process holds an exclusive ``flock`` on `path`."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


@dataclass
class _Rollout:
    job_id: str
    state: RolloutState
    seen: set[str] = field(default_factory=set)  # outcome files already counted

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state.snapshot(), "seen": sorted(self.seen)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> _Rollout:
        return cls(raw["job_id"], RolloutState.restore(raw["state"]), set(raw["seen"]))


class RetrainController:
    """See the module docstring. Thread-safe: `offer` and `tick` take one lock."""

    def __init__(self, *, root: Path, config: RetrainingConfig, registry: ModelRegistry,
                 offline: OfflineStore, publisher: ModelEventPublisher, runner: JobRunner,
                 views: Mapping[str, Any], threshold: float = 0.5,
                 clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.root = Path(root)
        self.config = config
        self.registry = registry
        self.offline = offline
        self.publisher = publisher
        self.runner = runner
        self.views = views  # the current feature views: promotion checks a model against them
        self.threshold = threshold
        self.clock_ms = clock_ms
        self.decisions: list[str] = []  # the latest trigger decisions, for /health
        self._lock = threading.RLock()
        self._sessions: dict[tuple[str, int], Any] = {}
        self._exported: dict[str, list[tuple[Any, tuple[str, ...]]]] = {}  # rollout gauges
        for folder in ("jobs", "requests"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.triggers: dict[str, RetrainTrigger] = {}
        self.jobs: dict[str, Job] = {}
        self.rollouts: dict[str, _Rollout] = {}
        self._load()
        for model in registry.models():  # every series at 0, so increase() sees the first
            for status in ("started", "retried", REGISTERED, REJECTED, FAILED):
                RETRAIN_JOBS.labels(model, status)

    # -- state ------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def _load(self) -> None:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        for name, snap in raw.get("triggers", {}).items():
            self.triggers[name] = RetrainTrigger.restore(snap,
                                                         self.config.for_model(name).trigger)
        self.jobs = {j: Job.from_dict(v) for j, v in raw.get("jobs", {}).items()}
        self.rollouts = {m: _Rollout.from_dict(v) for m, v in raw.get("rollouts", {}).items()}

    def _save(self) -> None:
        state = {"triggers": {n: t.snapshot() for n, t in self.triggers.items()},
                 "jobs": {j: dataclasses.asdict(job) for j, job in self.jobs.items()},
                 "rollouts": {m: r.to_dict() for m, r in self.rollouts.items()}}
        atomic_write_json(self.state_path, state, indent=1, sort_keys=True)

    def status(self) -> dict[str, Any]:
        """Jobs, rollouts and recent decisions, for ``/health`` and ``driftline retrain``."""
        with self._lock:
            return {
                "jobs": [dataclasses.asdict(j) for j in self.jobs.values()],
                "rollouts": {m: {"job_id": r.job_id, "kind": r.state.policy.kind,
                                 "status": r.state.status, "share": r.state.share,
                                 "candidate_version": r.state.candidate_version,
                                 "production_version": r.state.production_version,
                                 "outcomes": {a: c.outcomes for a, c in r.state.counts.items()}}
                             for m, r in self.rollouts.items()},
                "decisions": self.decisions[-20:],
            }

    def _trigger(self, model: str) -> RetrainTrigger:
        if model not in self.triggers:
            self.triggers[model] = RetrainTrigger(self.config.for_model(model).trigger)
        return self.triggers[model]

    def _decided(self, text: str) -> None:
        log.info("%s", text)
        self.decisions = [*self.decisions[-99:], text]

    # -- drift events -----------------------------------------------------------------------

    def offer(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Decode-checked drift events, in topic order; the state is saved before returning,
        so the batch loop may commit their offsets."""
        with self._lock:
            now = self.clock_ms()
            for record in records:
                if record.get("model_name") is None:
                    continue  # raw feature drift names no model to retrain
                signal = DriftSignal.from_record(record)
                decision = self._trigger(signal.model_name).offer(signal, now)
                self._decided(decision.reason)
                if decision.start:
                    job = self._start_job(signal.model_name, list(decision.job_triggers),
                                          since_ms=int(record["detected_at"]),
                                          reason=decision.reason)
                    job.drift_events.append(_drift_summary(signal.drift_id, record))
                elif decision.job_triggers:  # joined the running job
                    for job in self._running(signal.model_name):
                        job.drift_ids = list(decision.job_triggers)
                        if len(job.drift_events) < 20:
                            job.drift_events.append(_drift_summary(signal.drift_id, record))
            self._save()

    # -- requests by hand -------------------------------------------------------------------

    def _poll_requests(self) -> bool:
        changed = False
        for path in sorted((self.root / "requests").glob("*.json")):
            try:
                request = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written: rename makes it whole, so this is a stray file
            model = str(request["model_name"])
            if self.registry.production(model) is None:
                self._decided(f"request {request['request_id']} refused: {model} has no "
                              "Production version to retrain")
            elif not self._trigger(model).start_by_hand(model):
                self._decided(f"request {request['request_id']} for {model} refused: a job "
                              "for it is already running")
            else:
                self._start_job(model, [], since_ms=None,
                                reason=str(request.get("reason") or "requested by hand"),
                                shuffle_labels=bool(request.get("shuffle_labels")),
                                request_id=str(request["request_id"]))
            path.unlink()
            changed = True
        return changed

    # -- jobs -------------------------------------------------------------------------------

    def _running(self, model: str) -> list[Job]:
        return [j for j in self.jobs.values() if j.model_name == model and j.status == RUNNING]

    def _paths(self, job: Job) -> dict[str, Path]:
        folder = self.root / "jobs"
        return {"spec": folder / f"{job.job_id}.spec.json",
                "result": folder / f"{job.job_id}.result.json",
                "lock": folder / f"{job.job_id}.lock", "log": folder / f"{job.job_id}.log"}

    def _start_job(self, model: str, drift_ids: list[str], *, since_ms: int | None, reason: str,
                   shuffle_labels: bool = False, request_id: str | None = None) -> Job:
        now = self.clock_ms()
        production = self.registry.production(model)
        job = Job(job_id=f"{model}-{now}-{uuid.uuid4().hex[:6]}", model_name=model,
                  drift_ids=drift_ids, since_ms=since_ms, requested_at_ms=now, reason=reason,
                  shuffle_labels=shuffle_labels, request_id=request_id,
                  parent_version=None if production is None else production.version)
        self.jobs[job.job_id] = job  # launched by the next tick, from the ticker's thread
        self._announce_attempt(job)
        return job

    def _announce_attempt(self, job: Job) -> None:
        """The ``job_started`` lineage record of the job's current attempt."""
        self._publish([lineage_record(
            "job_started", job.model_name, 0, at_ms=self.clock_ms(), reason=job.reason,
            job_id=job.job_id, drift_ids=job.drift_ids, parent_version=job.parent_version,
            details={"attempt": job.attempt, "since_ms": job.since_ms,
                     "shuffle_labels": job.shuffle_labels})])

    def _launch(self, job: Job) -> None:
        cfg = self.config.for_model(job.model_name)
        paths = self._paths(job)
        spec = {"job_id": job.job_id, "model_name": job.model_name, "attempt": job.attempt,
                "drift_ids": job.drift_ids, "since_ms": job.since_ms,
                "requested_at_ms": job.requested_at_ms,
                "retraining": {"trainer": cfg.trainer, "seed": cfg.seed,
                               "data": dataclasses.asdict(cfg.data),
                               "gates": cfg.gates_mapping()},
                "shuffle_labels": job.shuffle_labels, "result_path": str(paths["result"]),
                "lock_path": str(paths["lock"])}
        atomic_write_json(paths["spec"], spec, indent=1)
        self.runner.start(job, paths["spec"], paths["log"])
        job.launched = True
        RETRAIN_JOBS.labels(job.model_name, "started" if job.attempt == 1 else "retried").inc()
        self._decided(f"job {job.job_id} started (attempt {job.attempt}): {job.reason}")

    def _poll_jobs(self) -> bool:
        changed = False
        for job in [j for j in self.jobs.values() if j.status == RUNNING]:
            paths = self._paths(job)
            if not job.launched:
                self._launch(job)
                changed = True
                continue
            result = _read_json(paths["result"])
            if result is not None:
                self._finish(job, result)
                changed = True
            elif not self.runner.running(job, paths["lock"]):
                # Gone without a result: killed with its controller, or crashed.
                result = _read_json(paths["result"])  # it may have finished in between
                if result is not None:
                    self._finish(job, result)
                elif job.attempt < self.config.for_model(job.model_name).max_attempts:
                    job.attempt += 1
                    job.reason = f"retry after an interrupted attempt {job.attempt - 1}"
                    self._launch(job)
                    self._announce_attempt(job)
                else:
                    self._finish(job, {"status": FAILED, "version": None, "error": (
                        f"interrupted {job.attempt} times without a result (see "
                        f"{paths['log']})")})
                changed = True
        return changed

    def _finish(self, job: Job, result: Mapping[str, Any]) -> None:
        now = self.clock_ms()
        job.result, job.status, job.ended_at_ms = dict(result), str(result["status"]), now
        job.version = result.get("version")
        model, training_range = job.model_name, result.get("training_range")
        RETRAIN_JOBS.labels(model, job.status).inc()
        common = {"job_id": job.job_id, "drift_ids": job.drift_ids,
                  "parent_version": job.parent_version, "training_range": training_range}
        records = []
        gates = result.get("gates")
        for gate in (gates or {}).get("gates", []):
            if gate.get("passed") is not None and gate.get("value") is not None:
                GATE_VALUE.labels(model, gate["name"]).set(gate["value"])
                GATE_PASSED.labels(model, gate["name"]).set(1 if gate["passed"] else 0)
        if gates:
            records.append(lineage_record(
                "gate_results", model, job.version or 0, at_ms=now,
                reason="passed" if gates["passed"] else f"failed {gates['failed']}",
                details={g["name"]: g["summary"] for g in gates["gates"]}, **common))
        if job.status == REGISTERED:
            records.append(lineage_record("registered", model, job.version, at_ms=now,
                                          reason=f"job {job.job_id} passed every gate",
                                          **common))
        elif job.status == REJECTED:
            failed = result.get("failed_gate") or {}
            records.append(lineage_record(
                "rejected", model, 0, at_ms=now,
                reason=failed.get("summary") or "a gate failed",
                details={"gate": failed.get("name"), "value": failed.get("value"),
                         "threshold": failed.get("threshold")}, **common))
        else:
            records.append(lineage_record("failed", model, job.version or 0, at_ms=now,
                                          reason=str(result.get("error") or "failed"),
                                          **common))
        self._publish(records)
        self._decided(f"job {job.job_id} {job.status}"
                      + (f": v{job.version}" if job.version else f": {records[-1]['reason']}"))
        if job.status == REGISTERED:
            self._roll_out(job)
        else:
            self._trigger(model).job_ended(model, now)

    # -- rollouts ---------------------------------------------------------------------------

    def _roll_out(self, job: Job) -> None:
        model, now = job.model_name, self.clock_ms()
        policy = self.config.for_model(model).rollout
        production = self.registry.production(model)
        state = RolloutState(policy, production_version=production.version if production else 0,
                             candidate_version=int(job.version), started_ms=now)
        if policy.kind == DIRECT or production is None:
            self._promote(job, state, "direct rollout: promoted once its gates passed")
            self._trigger(model).job_ended(model, now)
            return
        transition = self.registry.transition(model, job.version, STAGING, at_ms=now,
                                              reason=f"{policy.kind} rollout of job {job.job_id}",
                                              current_views=self.views)
        rollout = _Rollout(job.job_id, state, {str(p) for p in self._outcome_files()})
        self.rollouts[model] = rollout
        self.registry.set_serving_plan(model, state.plan(model).to_mapping())
        self._publish_transition(transition, job)
        self._decided(f"{model} v{job.version} rollout started: {policy.kind} beside "
                      f"v{state.production_version}")
        self._publish([lineage_record(
            "rollout_started", model, job.version, at_ms=now, stage=STAGING,
            reason=f"{policy.kind} rollout beside v{state.production_version}",
            job_id=job.job_id, drift_ids=job.drift_ids, parent_version=job.parent_version,
            details={"policy": json.dumps(policy.to_mapping(), sort_keys=True),
                     "share": state.share})])
        for event in state.opening_events():
            self._act(model, rollout, event)

    def _advance_rollouts(self) -> bool:
        changed = False
        for model, rollout in list(self.rollouts.items()):
            stage = self.registry.get(model, rollout.state.candidate_version).stage
            if stage != STAGING:  # promoted or archived by hand (an A/B test ends so)
                self.registry.set_serving_plan(model, None)
                self._decided(f"{model} v{rollout.state.candidate_version} rollout ended by "
                              f"hand: now {stage}")
                self._end_rollout(model)
                changed = True
                continue
            files = [p for p in self._outcome_files() if str(p) not in rollout.seen]
            for path in files:
                rollout.seen.add(str(path))
                for event in self._observe(model, rollout, pq.read_table(path).to_pydict()):
                    self._act(model, rollout, event)
                changed = True
                if model not in self.rollouts:
                    break  # ended
        return changed

    def _observe(self, model: str, rollout: _Rollout,
                 columns: Mapping[str, list]) -> list[RolloutEvent]:
        state = rollout.state
        names = np.asarray(columns.get("model_name", []), dtype=object)
        version = np.asarray(columns.get("model_version", []), dtype=np.int64)
        if not len(names):
            return []
        label = np.asarray(columns["label"], dtype=np.int64)
        decision = np.asarray(columns["decision"], dtype=bool)
        latency = np.asarray(columns.get("latency_ms", np.full(len(names), np.nan)),
                             dtype=np.float64)
        now = self.clock_ms()
        ours = names == model
        production = ours & (version == state.production_version)
        arms = {Arm.PRODUCTION: (decision[production] != label[production],
                                 _finite(latency[production]))}
        if state.policy.kind == SHADOW:
            # The shadow scored these very rows live: the inputs are logged in the outcome.
            idx = np.flatnonzero(production)
            if not len(idx):
                return []
            meta = self.registry.get(model, state.candidate_version)
            X = np.column_stack([np.asarray(columns[n], dtype=np.float64)[idx]
                                 for n in meta.inputs])
            scores = predict_scores(self._session(model, state.candidate_version), X)
            arms[Arm.SHADOW] = ((scores >= self.threshold) != label[idx], np.empty(0))
        else:
            cand = ours & (version == state.candidate_version)
            arms[Arm.CANDIDATE] = (decision[cand] != label[cand], _finite(latency[cand]))
        # One decision per file, with every arm's rows of it counted (see observe_together).
        return state.observe_together(arms, now)

    def _act(self, model: str, rollout: _Rollout, event: RolloutEvent) -> None:
        state, job = rollout.state, self.jobs.get(rollout.job_id)
        common = {"job_id": rollout.job_id, "drift_ids": job.drift_ids if job else [],
                  "parent_version": state.production_version}
        now = self.clock_ms()
        if not isinstance(event, Promote):  # a promotion says so in _promote
            verb = {"step_up": "stepped up", "rollback": "rolled back",
                    "ab_report": "A/B report"}[event.kind]
            self._decided(f"{model} v{state.candidate_version} {verb}: {event.reason}")
        if isinstance(event, StepUp):
            plan = state.plan(model)
            self.registry.set_serving_plan(model, plan.to_mapping() if plan else None)
            self._publish([lineage_record(
                "step_up", model, state.candidate_version, at_ms=now, stage=STAGING,
                reason=event.reason, details={"share": event.share,
                                              "previous_share": event.previous_share},
                **common)])
        elif isinstance(event, Rollback):
            self.registry.set_serving_plan(model, None)
            transition = self._transition(model, state.candidate_version, ARCHIVED,
                                          f"rolled back: {event.reason}")
            self._publish([lineage_record(
                "rolled_back", model, state.candidate_version, at_ms=now, stage=STAGING,
                to_stage=ARCHIVED, reason=event.reason,
                details={"objective": event.objective, "observed": event.observed,
                         "interval_low": event.interval[0], "interval_high": event.interval[1],
                         "limit": event.limit, "share": event.share}, **common)])
            if transition is not None:
                self._publish_transition(transition, job)
            self._end_rollout(model)
        elif isinstance(event, Promote):
            if job is not None:
                self._promote(job, state, event.reason)
            self._end_rollout(model)
        elif isinstance(event, ABReport):
            self._publish([lineage_record(
                "ab_report", model, state.candidate_version, at_ms=now, stage=STAGING,
                reason=event.reason,
                details={"production_errors": event.production_errors,
                         "production_outcomes": event.production_outcomes,
                         "candidate_errors": event.candidate_errors,
                         "candidate_outcomes": event.candidate_outcomes,
                         "difference": event.difference, "interval_low": event.interval[0],
                         "interval_high": event.interval[1],
                         "confidence": event.confidence}, **common)])

    def _promote(self, job: Job, state: RolloutState, reason: str) -> None:
        model, now = job.model_name, self.clock_ms()
        self.registry.set_serving_plan(model, None)
        transition = self._transition(model, state.candidate_version, PRODUCTION, reason)
        if transition is not None:
            self._publish_transition(transition, job)
        self._publish([lineage_record(
            "promoted", model, state.candidate_version, at_ms=now, stage=PRODUCTION,
            reason=reason, job_id=job.job_id, drift_ids=job.drift_ids,
            parent_version=job.parent_version, training_range=(job.result or {}).get(
                "training_range"))])
        self._decided(f"{model} v{state.candidate_version} promoted: {reason}")

    def _export_rollout(self, model: str) -> None:
        """The running rollout's share and per-arm counts as gauges (removed when it ends).
        Current series are updated in place, so a scrape never finds one missing."""
        rollout = self.rollouts.get(model)
        series = []
        if rollout is not None:
            state = rollout.state
            series = [(ROLLOUT_SHARE, (model, state.policy.kind), state.share)]
            for arm, counts in state.counts.items():
                series += [(ROLLOUT_OUTCOMES, (model, arm), counts.outcomes),
                           (ROLLOUT_ERRORS, (model, arm), counts.errors)]
        for gauge, labels, value in series:
            gauge.labels(*labels).set(value)
        current = [(gauge, labels) for gauge, labels, _ in series]
        for gauge, labels in self._exported.pop(model, []):
            if (gauge, labels) not in current:
                gauge.remove(*labels)
        if current:
            self._exported[model] = current

    def _end_rollout(self, model: str) -> None:
        self.rollouts.pop(model, None)
        self._export_rollout(model)
        self._trigger(model).job_ended(model, self.clock_ms())

    def _transition(self, model: str, version: int, stage: str, reason: str):
        """The registry transition, or None when a previous attempt already made it (a
        controller restarted after acting and before saving repeats the action)."""
        if self.registry.get(model, version).stage == stage:
            return None
        try:
            return self.registry.transition(model, version, stage, at_ms=self.clock_ms(),
                                            reason=reason, current_views=self.views)
        except RegistryError as exc:
            self._decided(f"{model} v{version}: cannot move to {stage}: {exc}")
            raise

    def _publish_transition(self, transition, job: Job | None) -> None:
        lineage = {} if job is None else {"job_id": job.job_id, "drift_ids": job.drift_ids}
        self.publisher.publish(transition, **lineage)

    def _publish(self, records: list[dict[str, Any]]) -> None:
        self.publisher.publish_records(records)

    def _session(self, model: str, version: int):
        key = (model, version)
        if key not in self._sessions:
            self._sessions[key] = load_session(self.registry.model_bytes(model, version))
        return self._sessions[key]

    def _outcome_files(self) -> list[Path]:
        return [p for base in self.offline.outcomes_dirs()
                for p in self.offline.published_files(base)]

    # -- the periodic step ------------------------------------------------------------------

    def tick(self) -> None:
        with self._lock:
            changed = self._poll_requests()
            changed |= self._poll_jobs()
            changed |= self._advance_rollouts()
            if changed:
                for model in self.rollouts:
                    self._export_rollout(model)
                self._save()


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _drift_summary(drift_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    return {"drift_id": drift_id, **{k: record.get(k) for k in (
        "detector", "kind", "subject", "statistic", "threshold", "model_version",
        "window_start", "window_end", "detected_at")}}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def request_job(root: Path, model_name: str, *, shuffle_labels: bool = False,
                reason: str = "requested by hand") -> str:
    """Drop a request the controller picks up on its next tick; returns its id."""
    request_id = uuid.uuid4().hex[:12]
    folder = root / "requests"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{request_id}.json", {
        "request_id": request_id, "model_name": model_name, "shuffle_labels": shuffle_labels,
        "reason": reason})
    return request_id
