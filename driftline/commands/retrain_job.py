"""One retraining job: point-in-time training data from the outcome store, train, export, gate,
register.

``python -m driftline.commands.retrain_job JOB.json`` runs the job the retrain controller wrote
to ``JOB.json``; settings come from the ``DRIFTLINE_*`` environment (the registry is
``$DRIFTLINE_DATA_DIR/registry``, the outcomes ``$DRIFTLINE_DATA_DIR/offline/outcomes``).
`run_job` is the same thing in process. The job never promotes: a registered candidate has
stage None, and the controller decides its rollout.

**JOB.json** (every key is required unless a default is given; unknown keys are refused)::

    {"job_id": str,                   # unique per job; retries of a job reuse it
     "model_name": str,
     "attempt": int,                  # 1 for the first run (default 1)
     "drift_ids": [str],              # the drift events that started it (default [])
     "since_ms": int | null,          # train on events at or after this time; null: by hand
     "requested_at_ms": int,          # (default 0)
     "retraining": {...},             # ModelRetraining mapping: trainer, seed, data, gates, ...
     "shuffle_labels": bool,          # negative control: the gates must reject it (default false)
     "result_path": str,
     "lock_path": str}

**The steps.**

1. Take an exclusive ``fcntl.flock`` on ``lock_path`` and hold it until the result is written:
   the controller reads a held lock as "the job is alive". A second process of the same job
   waits for the first, then finds its version (step 2).
2. Idempotency: if a version of the model carries the tag ``job_id`` of this job, the result
   is written for that version, and nothing is trained or registered again.
3. Read the outcomes of every folder of the outcome store and build the dataset
   (``driftline.core.retraining.dataset``: filters, de-duplication, the time split; the rows
   are the inputs serving logged, so training sees what serving saw). With fewer than
   ``data.min_rows`` usable rows, re-read every ``data.poll_s`` until ``data.wait_s`` has
   passed, then fail with the counts.
4. ``shuffle_labels`` permutes the training labels (seeded by ``retraining.seed``).
5. The data gates run first; if one fails, no model is fit and the model gates are reported
   as skipped. Otherwise the trainer fits, the model is exported to ONNX, and the gates see:
   the ONNX scores on the holdout (the scores that would be served), scikit-learn's scores on
   the same rows (parity), and the Production version's ONNX scores on them (the AUC
   comparison; only when Production's inputs are the view's features, else not compared and
   said so in ``notes``). Fairness is checked on the holdout's slices.
6. The reference check (the ``feature_psi`` gate) compares the training rows with the
   Production version's reference profile. A job started by hand (``since_ms`` null) is held
   to it: its data should look like what Production was trained on. A drift-triggered job
   (``since_ms`` set) trains on data *known* to differ from the reference, on purpose, so the
   gate would reject exactly the jobs retraining exists for: the job then passes no reference
   to the gates and records the PSI it measured as information only (``reference_check`` in
   the result and the lineage, mode ``informative``).
7. Passed: register the ONNX model (parent: the Production version; training range; metrics;
   tags ``job_id``, ``trainer``, ``drift_ids``, ``holdout_from_ms``, ``seed``; the reference
   profile of the training rows; the lineage), status ``registered``. Failed: nothing is
   registered, status ``rejected`` with the first failing gate. An exception: status ``failed``
   with the error (traceback on stderr). Registration is atomic: a version exists completely or
   not at all.

**The trainer** is ``retraining.trainer``, a ``"module:function"`` called as
``function(X, y, seed)``: ``X`` float64 rows x features in the view's order (float32-rounded,
NaN where an input was null: the model must handle NaN, e.g. by imputing inside itself), ``y``
int64 0/1, ``seed`` ``retraining.seed``. It returns either a fitted scikit-learn classifier or
pipeline, with ``predict_proba``, that skl2onnx converts (a bare estimator is wrapped in a
one-step pipeline and exported with ``driftline.commands.training.to_onnx``: one float32 input
``features[N, n_features]``, probabilities out), or ``(model, onnx_bytes)`` for a model it
exports itself: the same ONNX contract, and ``model.predict_proba`` still gives the trained
scores the parity gate compares with. The default is
``driftline.commands.training:fit_gradient_boosting``.

**The result** (``result_path``, written atomically, last, while the lock is still held)::

    {"job_id", "model_name",
     "status": "registered" | "rejected" | "failed",
     "version": int | null, "parent_version": int | null,
     "training_range": [first, last] | null, "holdout_range": [first, last] | null,
     "rows": {"read", "train", "holdout", "dropped": {reason: count}} | null,
     "gates": GateReport.as_dict() | null,
     "failed_gate": {"name", "value", "threshold", "summary"} | null,
     "reference_check": {"mode": "gate" | "informative" | "none", "reason",
                         "feature_psi": GateResult.as_dict() | null} | null,
     "notes": [str], "error": str | null,
     "started_at_ms", "finished_at_ms"}

Exit code 0 whenever the result was written, whatever its status.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline

from driftline.adapters.offline_store import OfflineStore, day_of
from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.commands.training import TrainingSet, reference_profile, to_onnx
from driftline.core.atomic import atomic_write_json
from driftline.core.features import FeatureView
from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.registry import ModelRegistry, ModelVersion
from driftline.core.retraining import (
    GateReport,
    RetrainingData,
    build_retraining_data,
    roc_auc,
    run_gates,
    validate_training_data,
)
from driftline.core.retraining.config import ModelRetraining
from driftline.core.retraining.dataset import REQUIRED_COLUMNS
from driftline.core.retraining.gates import AUC_VS_PRODUCTION, FEATURE_PSI, ONNX_PARITY, ROC_AUC
from driftline.core.views import views_for
from driftline.settings import Settings

log = logging.getLogger(__name__)

REGISTERED, REJECTED, FAILED = "registered", "rejected", "failed"
GATE, INFORMATIVE, NO_REFERENCE = "gate", "informative", "none"


# -- the job ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobSpec:
    """JOB.json, checked."""

    job_id: str
    model_name: str
    retraining: ModelRetraining
    result_path: Path
    lock_path: Path
    attempt: int = 1
    drift_ids: tuple[str, ...] = ()
    since_ms: int | None = None
    requested_at_ms: int = 0
    shuffle_labels: bool = False

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> JobSpec:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"unknown job key(s) {unknown}; known: {sorted(fields)}")
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and n not in raw]
        if required:
            raise ValueError(f"the job lacks the key(s) {required}")
        since = raw.get("since_ms")
        return cls(
            job_id=str(raw["job_id"]), model_name=str(raw["model_name"]),
            retraining=ModelRetraining.from_mapping(raw["retraining"]),
            result_path=Path(raw["result_path"]), lock_path=Path(raw["lock_path"]),
            attempt=int(raw.get("attempt", 1)),
            drift_ids=tuple(str(d) for d in raw.get("drift_ids") or ()),
            since_ms=None if since is None else int(since),
            requested_at_ms=int(raw.get("requested_at_ms", 0)),
            shuffle_labels=bool(raw.get("shuffle_labels", False)))


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def run_job(spec: Mapping[str, Any], settings: Settings, *,
            now_ms: Callable[[], int] = _wall_ms,
            sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Run the job `spec` (JOB.json's mapping) under its lock; write and return its result.

    Needs ``result_path`` and ``lock_path`` (a `KeyError` otherwise: there is nowhere to report
    to); every other problem is reported as status ``failed``. ``now_ms`` stamps the result
    and the registration, ``sleep`` waits between reads of the outcomes."""
    result_path, lock_path = Path(spec["result_path"]), Path(spec["lock_path"])
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after the result
        result = _empty_result(spec, now_ms())
        try:
            job = JobSpec.from_mapping(spec)
            _Run(job, settings, result, now_ms, sleep).run()
        except Exception as exc:
            log.exception("retraining job %s failed", spec.get("job_id"))
            result.update(status=FAILED, version=None, error=f"{type(exc).__name__}: {exc}")
        result["finished_at_ms"] = now_ms()
        write_result(result_path, result)
    return result


def _empty_result(spec: Mapping[str, Any], started_at_ms: int) -> dict[str, Any]:
    return {"job_id": spec.get("job_id"), "model_name": spec.get("model_name"),
            "status": FAILED, "version": None, "parent_version": None, "training_range": None,
            "holdout_range": None, "rows": None, "gates": None, "failed_gate": None,
            "reference_check": None, "notes": [], "error": None,
            "started_at_ms": started_at_ms, "finished_at_ms": None}


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """The result JSON, replaced atomically: the controller sees all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result, indent=2, sort_keys=True)


class _Run:
    """One run of a job; fills ``result`` as it goes, so a failure keeps what was learned."""

    def __init__(self, job: JobSpec, settings: Settings, result: dict[str, Any],
                 now_ms: Callable[[], int], sleep: Callable[[float], None]) -> None:
        self.job = job
        self.config = job.retraining
        self.settings = settings
        self.result = result
        self.now_ms = now_ms
        self.sleep = sleep
        self.registry = ModelRegistry(settings.data_dir / "registry")

    def run(self) -> None:
        job, result = self.job, self.result
        done = self._already_registered()
        if done is not None:
            self._report_existing(done)
            return
        production = self.registry.production(job.model_name)
        result["parent_version"] = None if production is None else production.version
        view = self._view(production)
        data = self._gather(view)
        if data is None:
            return
        result.update(training_range=_listed(data.training_range),
                      holdout_range=_listed(data.holdout_range), rows=data.rows())

        train, holdout = data.train, data.holdout
        X_train, X_hold, y_hold = data.X[train], data.X[holdout], data.y[holdout]
        y_train = data.y[train]
        if job.shuffle_labels:
            y_train = np.random.default_rng(self.config.seed).permutation(y_train)
            result["notes"].append("shuffle_labels: training labels permuted (negative control)")
        names = list(view.feature_names)
        gates = self.config.gates
        reference = self._reference_check(production, X_train, y_train, names)
        slices = {s: values[holdout] for s, values in data.slices.items()}

        data_gates = validate_training_data(X_train, y_train, names, reference, gates)
        if any(r.passed is False for r in data_gates):
            # run_gates judges no model after a data failure: the model gates come back skipped
            # and the placeholder scores below are never read. Nothing is fit on bad data.
            zeros = np.zeros(len(y_hold))
            report = run_gates(X_train, y_train, names, reference=reference, y_holdout=y_hold,
                               candidate_scores=zeros, onnx_scores=zeros, trained_scores=zeros,
                               slices=slices, config=gates)
            self._reject(report)
            return

        log.info("job %s (attempt %d): training %s on %d rows, %d held out", job.job_id,
                 job.attempt, self.config.trainer, len(y_train), len(y_hold))
        model, onnx_bytes = fit_and_export(self.config.trainer, X_train, y_train,
                                           self.config.seed, len(names))
        session = load_session(onnx_bytes)
        onnx_hold = predict_scores(session, X_hold)
        trained_hold = np.asarray(model.predict_proba(X_hold), dtype=np.float64)[:, 1]
        production_hold = self._production_scores(production, view, X_hold)
        report = run_gates(X_train, y_train, names, reference=reference, y_holdout=y_hold,
                           candidate_scores=onnx_hold, onnx_scores=onnx_hold,
                           trained_scores=trained_hold, production_scores=production_hold,
                           slices=slices, config=gates)
        result["gates"] = report.as_dict()
        if not report.passed:
            self._reject(report)
            return
        train_scores = predict_scores(session, X_train)  # the new reference's score subject
        version = self._register(view, data, y_train, onnx_bytes, report, onnx_hold,
                                 production_hold, train_scores, production)
        result.update(status=REGISTERED, version=version.version)
        log.info("%s v%d registered by job %s: %s", job.model_name, version.version,
                 job.job_id, report[ROC_AUC].summary())

    # -- steps ---------------------------------------------------------------------------------

    def _already_registered(self) -> ModelVersion | None:
        for version in self.registry.versions(self.job.model_name):
            if version.tags.get("job_id") == self.job.job_id:
                return version
        return None

    def _report_existing(self, version: ModelVersion) -> None:
        lineage = self.registry.lineage(version.name, version.version) or {}
        self.result.update(
            status=REGISTERED, version=version.version, parent_version=version.parent,
            training_range=lineage.get("training_range", list(version.training_range)),
            holdout_range=lineage.get("holdout_range"), rows=lineage.get("rows"),
            gates=lineage.get("gates"), reference_check=lineage.get("reference_check"))
        self.result["notes"].append(
            f"v{version.version} was already registered by this job (attempt "
            f"{lineage.get('attempt', '?')}); nothing trained or registered again")
        log.info("job %s: %s v%d already registered", self.job.job_id, version.name,
                 version.version)

    def _view(self, production: ModelVersion | None) -> FeatureView:
        """The view of the model's Production version, else of its newest version, else the
        deployment's only view."""
        views = views_for(self.settings)
        known = production or next(iter(reversed(self.registry.versions(self.job.model_name))),
                                   None)
        if known is None:
            if len(views) != 1:
                raise ValueError(f"{self.job.model_name} has no version to name its feature "
                                 f"view, and the deployment has several: {sorted(views)}")
            return next(iter(views.values()))
        if known.view not in views:
            raise ValueError(f"{known.name} v{known.version} reads view {known.view}, which is "
                             f"not defined (defined: {sorted(views)})")
        return views[known.view]

    def _gather(self, view: FeatureView) -> RetrainingData | None:
        """The dataset once it has ``data.min_rows`` rows; None (status failed) after
        ``data.wait_s`` without."""
        policy = self.config.data
        deadline = time.monotonic() + policy.wait_s
        while True:
            data = self._read(view)
            if len(data) >= policy.min_rows:
                return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            log.info("job %s: %d of %d rows, waiting for labels", self.job.job_id, len(data),
                     policy.min_rows)
            self.sleep(min(policy.poll_s, remaining))
        self.result.update(training_range=_listed(data.training_range),
                           holdout_range=_listed(data.holdout_range), rows=data.rows(), error=(
            f"only {len(data)} usable outcomes of {self.job.model_name} (data.min_rows is "
            f"{policy.min_rows}) after waiting {policy.wait_s:g} s: read {data.read}, dropped "
            + ", ".join(f"{k} {v}" for k, v in data.dropped.items())))
        return None

    def _read(self, view: FeatureView) -> RetrainingData:
        store = OfflineStore(self.settings.data_dir / "offline")
        names = (*REQUIRED_COLUMNS, *view.feature_names, *view.slices)
        policy = self.config.data
        return build_retraining_data(
            read_outcomes(store, names, since_ms=self.job.since_ms),
            model_name=self.job.model_name,
            feature_names=view.feature_names, slice_names=view.slices,
            since_ms=self.job.since_ms, max_rows=policy.max_rows,
            holdout_fraction=policy.holdout_fraction)

    def _reference_check(self, production: ModelVersion | None, X_train: np.ndarray,
                         y_train: np.ndarray, names: list[str]) -> ReferenceProfile | None:
        """The reference profile the gates get (None for a drift-triggered job; see the
        module docstring), and ``reference_check`` in the result."""
        raw = None if production is None else \
            self.registry.reference_profile(production.name, production.version)
        if raw is None:
            why = ("no Production version" if production is None else
                   f"Production v{production.version} has no reference profile")
            self.result["reference_check"] = {"mode": NO_REFERENCE, "reason": why,
                                              "feature_psi": None}
            return None
        reference = ReferenceProfile.from_json(raw)
        if self.job.since_ms is None:
            self.result["reference_check"] = {
                "mode": GATE, "feature_psi": None,
                "reason": f"started by hand: the training rows are held to Production "
                          f"v{production.version}'s reference profile (feature_psi gate)"}
            return reference
        psi = {r.name: r for r in validate_training_data(
            X_train, y_train, names, reference, self.config.gates)}[FEATURE_PSI]
        self.result["reference_check"] = {
            "mode": INFORMATIVE, "feature_psi": psi.as_dict(),
            "reason": f"drift-triggered (since_ms {self.job.since_ms}): the data differ from "
                      f"Production v{production.version}'s reference by design, so the PSI is "
                      "recorded, not gated"}
        return None

    def _production_scores(self, production: ModelVersion | None, view: FeatureView,
                           X: np.ndarray) -> np.ndarray | None:
        if production is None:
            return None
        if tuple(production.inputs) != tuple(view.feature_names):
            self.result["notes"].append(
                f"not compared with Production v{production.version}: its inputs are not the "
                f"features of {view.name}@{view.version}")
            return None
        session = load_session(self.registry.model_bytes(production.name, production.version))
        return predict_scores(session, X)

    def _reject(self, report: GateReport) -> None:
        failed = report.failed
        self.result.update(status=REJECTED, gates=report.as_dict(), failed_gate=None
                           if failed is None else {
                               "name": failed.name, "value": failed.as_dict()["value"],
                               "threshold": failed.as_dict()["threshold"],
                               "summary": failed.summary()})
        log.info("job %s rejected: %s", self.job.job_id,
                 failed.summary() if failed else "no gate ran")

    def _register(self, view: FeatureView, data: RetrainingData, y_train: np.ndarray,
                  onnx_bytes: bytes, report: GateReport, onnx_hold: np.ndarray,
                  production_hold: np.ndarray | None, train_scores: np.ndarray,
                  production: ModelVersion | None) -> ModelVersion:
        job, result = self.job, self.result
        y_hold = data.y[data.holdout]
        metrics = {
            "roc_auc": report[ROC_AUC].value,
            "log_loss": float(log_loss(y_hold, onnx_hold, labels=[0, 1])),
            "positive_rate": float(y_hold.mean()),
            "train_positive_rate": float(y_train.mean()),
            "onnx_parity_max_abs_diff": report[ONNX_PARITY].value,
            "n_train": float(data.n_train),
            "n_holdout": float(data.n_holdout),
        }
        if production_hold is not None:
            metrics["production_roc_auc"] = float(roc_auc(y_hold, production_hold))
            metrics["auc_drop_lower_bound"] = report[AUC_VS_PRODUCTION].value
        metrics = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
        training = TrainingSet(data.X, data.y, data.event_time_ms, data.slices)
        profile = reference_profile(view, training, data.train, train_scores)
        parent = None if production is None else production.version
        lineage = {
            "job_id": job.job_id, "attempt": job.attempt, "drift_ids": list(job.drift_ids),
            "since_ms": job.since_ms, "requested_at_ms": job.requested_at_ms,
            "training_range": _listed(data.training_range),
            "holdout_range": _listed(data.holdout_range), "rows": data.rows(),
            "gates": report.as_dict(), "trainer": self.config.trainer,
            "seed": self.config.seed, "shuffle_labels": job.shuffle_labels, "parent": parent,
            "reference_check": result["reference_check"], "notes": list(result["notes"]),
        }
        return self.registry.register(
            job.model_name, onnx_bytes, view=view.name, view_version=view.version,
            inputs=view.feature_names, training_range=data.training_range, metrics=metrics,
            parent=parent, created_at_ms=self.now_ms(),
            tags={"job_id": job.job_id, "trainer": self.config.trainer,
                  "drift_ids": ",".join(job.drift_ids),
                  "holdout_from_ms": str(data.holdout_range[0]), "seed": str(self.config.seed)},
            reference_profile=profile.to_json(), lineage=lineage)


def _listed(time_range: tuple[int, int] | None) -> list[int] | None:
    """A range as JSON writes it, so the returned result equals the file's."""
    return None if time_range is None else list(time_range)


# -- outcomes and trainers ----------------------------------------------------------------------

def read_outcomes(store: OfflineStore, columns: tuple[str, ...], *,
                  since_ms: int | None = None) -> dict[str, np.ndarray]:
    """`columns` of the published outcome rows, from every outcomes folder of `store`,
    concatenated. Only those columns are read, and with `since_ms` only the day folders from
    its day on, so a job's read grows with its window rather than with the store (the rows
    of that first day before `since_ms` are read and counted as dropped ``before_since``). A
    folder whose rows lack one of the columns is an error."""
    from_day = None if since_ms is None else day_of(since_ms)
    parts: list[dict[str, np.ndarray]] = []
    for base in store.outcomes_dirs():
        head = store.read(base, from_day=from_day, where=ds.scalar(False))  # schema only
        if not head.column_names:
            continue  # nothing published there (yet)
        missing = [c for c in columns if c not in head.column_names]
        if missing:
            raise ValueError(f"the outcomes in {base} lack the column(s) {', '.join(missing)}")
        table = store.read(base, columns=columns, from_day=from_day)
        parts.append({c: table.column(c).to_numpy(zero_copy_only=False) for c in columns})
    if not parts:
        return {c: np.zeros(0, dtype=object) for c in columns}
    return {c: np.concatenate([p[c] for p in parts]) for c in columns}


def load_trainer(entry: str) -> Callable[..., Any]:
    """The function named by ``"module:function"``."""
    module_name, _, attribute = entry.partition(":")
    function = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(function):
        raise ValueError(f"trainer {entry!r}: {module_name} has no function {attribute!r}")
    return function


def fit_and_export(entry: str, X: np.ndarray, y: np.ndarray, seed: int,
                   n_features: int) -> tuple[Any, bytes]:
    """Call the trainer (see the module docstring) and return the model and its ONNX bytes."""
    fitted = load_trainer(entry)(X, y, seed)
    if isinstance(fitted, tuple):
        if len(fitted) != 2 or not isinstance(fitted[1], (bytes, bytearray)):
            raise TypeError(f"trainer {entry!r} returned a tuple that is not (model, onnx_bytes)")
        model, onnx_bytes = fitted[0], bytes(fitted[1])
    else:
        model, onnx_bytes = fitted, export_onnx(fitted, n_features)
    if not hasattr(model, "predict_proba"):
        raise TypeError(f"trainer {entry!r} returned {type(model).__name__}, which has no "
                        "predict_proba")
    return model, onnx_bytes


def export_onnx(model: Any, n_features: int) -> bytes:
    """skl2onnx export with the training contract (``training.to_onnx``); a bare estimator is
    wrapped in a one-step pipeline first."""
    return to_onnx(model if isinstance(model, Pipeline) else Pipeline([("model", model)]),
                   n_features)


# -- the command --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driftline.commands.retrain_job",
        description="Run one retraining job (JOB.json, written by the retrain controller).")
    parser.add_argument("job", type=Path, help="the job's JSON file")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_job(json.loads(args.job.read_text(encoding="utf-8")), settings)
    log.info("job %s: %s%s", result["job_id"], result["status"],
             f" v{result['version']}" if result["version"] is not None else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
