"""The retraining job end to end, without a broker: a registry with Production v1 (trained on
demo history), outcome files in the offline store, one job in process (or as a command)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from driftline.adapters.offline_store import OfflineStore, publish
from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.commands.retrain_job import export_onnx, run_job
from driftline.commands.training import (
    MISSING_VALUE,
    demo_training_set,
    to_onnx,
    train_initial,
)
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import load_definitions
from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.registry import ModelRegistry
from driftline.feature_defs import DEFINITIONS_DIR
from driftline.settings import Settings

REPO = Path(__file__).resolve().parents[3]
DEMO = DemoConfig(fraud_rate=0.03)
SEED = 11
N_PRODUCTION = 8_000  # events Production v1 is trained on
N_OUTCOMES = 12_000  # the events after them, logged with their labels as outcomes
SKIP = 2_000  # outcomes before the drift-triggered job's since_ms
NOW = 1_700_900_000_000
HERE = "tests.unit.retraining.test_retrain_job"
FAST = f"{HERE}:fit_logistic"  # a quick trainer for the tests that are not about the model


def fit_logistic(X, y, seed):
    return Pipeline([("impute", SimpleImputer(strategy="constant", fill_value=MISSING_VALUE,
                                              keep_empty_features=True)),
                     ("scale", StandardScaler()),
                     ("model", LogisticRegression(max_iter=2000, random_state=seed))]).fit(X, y)


def fit_logistic_exported(X, y, seed):
    """The (model, onnx_bytes) form of the trainer contract."""
    model = fit_logistic(X, y, seed)
    return model, to_onnx(model, X.shape[1])


LOCK_PROBE: dict[str, object] = {}


def fit_logistic_probing_the_lock(X, y, seed):
    """Records whether the job's lock is held while the job trains."""
    with open(LOCK_PROBE["path"], "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            LOCK_PROBE["held"] = False
        except BlockingIOError:
            LOCK_PROBE["held"] = True
    return fit_logistic(X, y, seed)


@pytest.fixture(scope="module")
def view():
    return load_definitions(DEFINITIONS_DIR).view("transactions_v1")


def outcome_columns(view, data, event_ids, label_times, model="fraud"):
    columns = {
        "event_id": np.asarray(event_ids, dtype=object), "event_time": data.event_time_ms,
        "label_time": np.asarray(label_times, dtype=np.int64),
        "label_delay_ms": np.asarray(label_times, dtype=np.int64) - data.event_time_ms,
        "score": np.full(len(data.y), 0.5), "decision": np.zeros(len(data.y), dtype=bool),
        "label": data.y, "model_name": np.array([model] * len(data.y), dtype=object),
        "model_version": np.ones(len(data.y), dtype=np.int64),
    }
    for s in view.slices:
        columns[s] = data.slices[s].astype(object)
    for j, name in enumerate(view.feature_names):
        columns[name] = data.X[:, j]
    return columns


def write_outcomes(data_dir: Path, columns, named_by="driftline.labels", partition=0, epoch=1):
    store = OfflineStore(data_dir / "offline")
    n = len(columns["event_id"])
    publish(store.write(store.outcomes_dir(named_by), partition, columns, epoch,
                        span=(0, max(n - 1, 0))))


def take(columns, rows):
    return {k: np.asarray(v)[rows] for k, v in columns.items()}


@pytest.fixture(scope="module")
def world(view, tmp_path_factory):
    """A data dir with Production v1 and N_OUTCOMES later labelled outcomes of it (copy it
    with `data_dir` before changing it)."""
    root = tmp_path_factory.mktemp("world") / "data"
    registry = ModelRegistry(root / "registry")
    train_initial(registry, view, n_events=N_PRODUCTION, seed=SEED, created_at_ms=NOW - 1,
                  demo=DEMO)
    # The same stream train_initial drew from, continued: the first call repeats its events.
    generator = DemoGenerator(dataclasses.replace(DEMO, seed=SEED))
    events = generator.events(N_PRODUCTION) + generator.events(N_OUTCOMES)
    data = demo_training_set(view, events, generator.labels_for(events))
    assert len(data.y) == len(events)  # in-order demo events: every one labelled and applied
    order = np.argsort([e["event_time"] for e in events], kind="stable")
    ids = np.array([events[i]["event_id"] for i in order], dtype=object)
    label_time = {lab["event_id"]: lab["label_time"] for lab in generator.labels_for(events)}
    later = slice(N_PRODUCTION, None)
    logged = dataclasses.replace(
        data, X=data.X[later], y=data.y[later], event_time_ms=data.event_time_ms[later],
        slices={k: v[later] for k, v in data.slices.items()})
    columns = outcome_columns(view, logged, ids[later], [label_time[e] for e in ids[later]])
    write_outcomes(root, columns)
    return {"root": root, "columns": columns,
            "since_ms": int(columns["event_time"][SKIP])}


@pytest.fixture
def data_dir(world, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(world["root"], target)
    return target


def spec(data_dir: Path, job_id: str = "job-1", *, trainer: str | None = None,
         since_ms: int | None = None, shuffle_labels: bool = False, data: dict | None = None,
         gates: dict | None = None, **extra) -> dict:
    retraining = {"seed": 3,
                  "data": {"min_rows": 1000, "max_rows": 100_000, "holdout_fraction": 0.25,
                           "wait_s": 0, "poll_s": 0.01} | (data or {}),
                  "gates": {"min_rows": 1000} | (gates or {})}
    if trainer is not None:
        retraining["trainer"] = trainer
    jobs = data_dir.parent / "jobs" / job_id
    return {"job_id": job_id, "model_name": "fraud", "attempt": 1, "drift_ids": ["d1", "d2"],
            "since_ms": since_ms, "requested_at_ms": NOW - 10, "retraining": retraining,
            "shuffle_labels": shuffle_labels, "result_path": str(jobs / "result.json"),
            "lock_path": str(jobs / "lock")} | extra


def run(data_dir: Path, job: dict, **kw) -> dict:
    result = run_job(job, Settings(data_dir=data_dir), now_ms=lambda: NOW, **kw)
    assert json.loads(Path(job["result_path"]).read_text()) == result
    return result


def versions(data_dir: Path) -> list[int]:
    return [v.version for v in ModelRegistry(data_dir / "registry").versions("fraud")]


def no_leftovers(data_dir: Path) -> bool:
    folder = data_dir / "registry" / "fraud" / "versions"
    return not [p for p in folder.iterdir() if p.name.startswith(".tmp")]


def test_a_drift_triggered_job_registers_v2_with_lineage(world, data_dir, view):
    # At-least-once upstream: redeliveries (with a later, different label) in another folder,
    # and another model's outcomes beside them.
    cols = world["columns"]
    again = take(cols, slice(SKIP, SKIP + 50))
    again["label_time"] = again["label_time"] + 10_000
    again["label"] = 1 - again["label"]
    other = take(cols, slice(SKIP + 100, SKIP + 130))
    other["model_name"] = np.array(["other"] * 30, dtype=object)
    write_outcomes(data_dir, {k: np.concatenate([again[k], other[k]]) for k in cols},
                   named_by="driftline.predictions")

    job = spec(data_dir, since_ms=world["since_ms"])
    result = run(data_dir, job)

    assert result["status"] == "registered", result["error"] or result["failed_gate"]
    assert result["version"] == 2 and result["parent_version"] == 1
    assert result["error"] is None and result["failed_gate"] is None
    assert result["started_at_ms"] == result["finished_at_ms"] == NOW
    usable = N_OUTCOMES - SKIP
    rows = result["rows"]
    assert rows["dropped"] == {"other_model": 30, "before_since": SKIP, "invalid_label": 0,
                               "duplicate": 50, "beyond_max_rows": 0}
    assert rows["read"] == N_OUTCOMES + 80 and rows["train"] + rows["holdout"] == usable
    assert rows["holdout"] == round(usable * 0.25)
    first, last = result["training_range"]
    assert world["since_ms"] == first < last <= result["holdout_range"][0]
    assert result["gates"]["passed"] is True
    check = result["reference_check"]
    assert check["mode"] == "informative" and check["feature_psi"]["name"] == "feature_psi"

    registry = ModelRegistry(data_dir / "registry")
    v2 = registry.get("fraud", 2)
    assert v2.stage == "None" and registry.production("fraud").version == 1  # never promotes
    assert v2.parent == 1 and v2.inputs == view.feature_names
    assert v2.view == view.name and v2.view_version == view.version
    assert v2.training_range == (first, last) and v2.created_at_ms == NOW
    assert v2.tags == {"job_id": "job-1", "trainer": "driftline.commands.training:"
                       "fit_gradient_boosting", "drift_ids": "d1,d2", "seed": "3",
                       "holdout_from_ms": str(result["holdout_range"][0])}
    assert v2.metrics["n_train"] == rows["train"] and v2.metrics["n_holdout"] == rows["holdout"]
    assert v2.metrics["roc_auc"] > 0.8
    assert {"log_loss", "production_roc_auc", "auc_drop_lower_bound",
            "onnx_parity_max_abs_diff"} <= set(v2.metrics)
    lineage = registry.lineage("fraud", 2)
    assert lineage["job_id"] == "job-1" and lineage["attempt"] == 1
    assert lineage["drift_ids"] == ["d1", "d2"] and lineage["since_ms"] == world["since_ms"]
    assert lineage["training_range"] == [first, last] and lineage["parent"] == 1
    assert lineage["holdout_range"] == result["holdout_range"] and lineage["rows"] == rows
    assert lineage["gates"] == result["gates"] and lineage["trainer"] == v2.tags["trainer"]
    profile = ReferenceProfile.from_json(registry.reference_profile("fraud", 2))
    assert profile.rows == rows["train"]
    assert set(profile.names) >= {*view.feature_names, *view.slices, "score", "label"}
    # The registered bytes are the model the gates scored.
    session = load_session(registry.model_bytes("fraud", 2))
    X = np.zeros((3, len(view.feature_names)), dtype=np.float32)
    assert predict_scores(session, X).shape == (3,)


def test_shuffled_labels_are_rejected_and_nothing_is_registered(world, data_dir):
    result = run(data_dir, spec(data_dir, since_ms=world["since_ms"], shuffle_labels=True))
    assert result["status"] == "rejected" and result["version"] is None
    failed = result["failed_gate"]
    assert failed["name"] in ("roc_auc", "auc_vs_production")
    assert isinstance(failed["value"], float) and isinstance(failed["threshold"], float)
    if failed["name"] == "roc_auc":
        assert failed["value"] < failed["threshold"] == 0.7
    else:
        assert failed["value"] > failed["threshold"]
    assert failed["summary"].startswith(failed["name"]) and "FAIL" in failed["summary"]
    assert result["gates"]["passed"] is False and result["gates"]["failed"] == failed["name"]
    assert result["parent_version"] == 1 and result["rows"]["train"] > 0
    assert versions(data_dir) == [1] and no_leftovers(data_dir)


def test_a_retried_job_does_not_register_twice(world, data_dir):
    first = run(data_dir, spec(data_dir, "job-7", trainer=FAST, since_ms=world["since_ms"],
                               gates={"max_auc_drop_vs_production": 1.0}))
    assert first["status"] == "registered" and first["version"] == 2
    # The retry would fail if it trained: its trainer does not exist.
    retry = run(data_dir, spec(data_dir, "job-7", trainer="no_such_module:fit", attempt=2,
                               since_ms=world["since_ms"]))
    assert retry["status"] == "registered" and retry["version"] == 2
    assert retry["parent_version"] == 1 and retry["gates"] == first["gates"]
    assert retry["training_range"] == first["training_range"]
    assert retry["rows"] == first["rows"] and "already registered" in retry["notes"][0]
    assert versions(data_dir) == [1, 2]
    # Another job is another version.
    other = run(data_dir, spec(data_dir, "job-8", trainer=FAST, since_ms=world["since_ms"],
                               gates={"max_auc_drop_vs_production": 1.0}))
    assert other["version"] == 3 and versions(data_dir) == [1, 2, 3]


def test_too_few_rows_fails_with_the_counts(world, data_dir):
    slept = []
    since = int(world["columns"]["event_time"][-100])
    job = spec(data_dir, since_ms=since, data={"min_rows": 5000})
    result = run(data_dir, job, sleep=slept.append)
    assert result["status"] == "failed" and result["version"] is None and slept == []
    assert "only 100 usable outcomes of fraud (data.min_rows is 5000) after waiting 0 s" in \
        result["error"]
    assert f"before_since {N_OUTCOMES - 100}" in result["error"]
    assert result["rows"]["train"] + result["rows"]["holdout"] == 100
    assert result["gates"] is None and versions(data_dir) == [1]


def test_the_job_waits_for_labels_to_arrive(world, data_dir):
    outcomes = data_dir / "offline" / "outcomes"
    shutil.rmtree(outcomes)
    cols = world["columns"]
    write_outcomes(data_dir, take(cols, slice(0, 500)))
    slept = []

    def sleep(seconds):  # labels arrive while the job waits
        slept.append(seconds)
        if len(slept) == 2:
            write_outcomes(data_dir, take(cols, slice(500, None)), partition=1)

    result = run(data_dir, spec(data_dir, trainer=f"{HERE}:fit_logistic_exported",
                                since_ms=world["since_ms"],
                                data={"min_rows": 4000, "wait_s": 60, "poll_s": 0.5},
                                gates={"max_auc_drop_vs_production": 1.0}), sleep=sleep)
    assert len(slept) == 2 and all(0 < s <= 0.5 for s in slept)
    assert result["status"] == "registered", result["error"] or result["failed_gate"]
    assert result["rows"]["train"] + result["rows"]["holdout"] == N_OUTCOMES - SKIP
    v2 = ModelRegistry(data_dir / "registry").get("fraud", 2)
    assert v2.tags["trainer"] == f"{HERE}:fit_logistic_exported" and v2.tags["drift_ids"]


def test_a_job_by_hand_is_held_to_the_reference_a_drift_triggered_one_is_not(world, data_dir):
    strict = {"max_psi_vs_reference": 1e-6, "max_auc_drop_vs_production": 1.0}
    by_hand = run(data_dir, spec(data_dir, "by-hand", trainer=FAST, gates=strict))
    assert by_hand["status"] == "rejected"
    assert by_hand["failed_gate"]["name"] == "feature_psi"
    assert by_hand["failed_gate"]["value"] > 1e-6
    assert by_hand["reference_check"]["mode"] == "gate"
    # Nothing was fit on data that failed a data gate: the model gates were skipped.
    skipped = [g for g in by_hand["gates"]["gates"] if g["passed"] is None]
    assert [g["name"] for g in skipped][:1] == ["roc_auc"]

    triggered = run(data_dir, spec(data_dir, "triggered", trainer=FAST, gates=strict,
                                   since_ms=world["since_ms"]))
    assert triggered["status"] == "registered"
    check = triggered["reference_check"]
    assert check["mode"] == "informative" and "drift-triggered" in check["reason"]
    assert check["feature_psi"]["passed"] is False and check["feature_psi"]["value"] > 1e-6


def test_without_production_the_job_trains_a_first_version(world, data_dir):
    shutil.rmtree(data_dir / "registry")
    result = run(data_dir, spec(data_dir, trainer=FAST))
    assert result["status"] == "registered" and result["version"] == 1
    assert result["parent_version"] is None
    assert result["reference_check"]["mode"] == "none"
    gates = {g["name"]: g for g in result["gates"]["gates"]}
    assert gates["auc_vs_production"]["detail"] == "no Production model to compare with"


def test_an_error_is_reported_as_failed(world, data_dir):
    result = run(data_dir, spec(data_dir, trainer="no_such_module:fit",
                                since_ms=world["since_ms"]))
    assert result["status"] == "failed" and result["version"] is None
    assert result["error"].startswith("ModuleNotFoundError") and "no_such_module" in \
        result["error"]
    assert result["rows"]["train"] > 0  # what was learned before the failure is kept
    assert versions(data_dir) == [1] and no_leftovers(data_dir)

    bad = spec(data_dir, "bad")
    del bad["model_name"]
    result = run(data_dir, bad)
    assert result["status"] == "failed" and "model_name" in result["error"]
    result = run(data_dir, spec(data_dir, "typo", shuffle_label=True))
    assert result["status"] == "failed" and "shuffle_label" in result["error"]


def test_the_lock_is_held_while_the_job_runs_and_released_after(world, data_dir):
    job = spec(data_dir, trainer=f"{HERE}:fit_logistic_probing_the_lock",
               since_ms=world["since_ms"], gates={"max_auc_drop_vs_production": 1.0})
    LOCK_PROBE.clear()
    LOCK_PROBE["path"] = job["lock_path"]
    assert run(data_dir, job)["status"] == "registered"
    assert LOCK_PROBE["held"] is True
    with open(job["lock_path"], "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_export_wraps_a_bare_estimator(world, view):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + rng.normal(size=300) > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    scores = predict_scores(load_session(export_onnx(model, 4)), X)
    np.testing.assert_allclose(scores, model.predict_proba(X.astype(np.float32))[:, 1],
                               atol=1e-5)


def test_the_command_runs_a_job_file(world, data_dir):
    job = spec(data_dir, trainer=FAST, since_ms=world["since_ms"],
               gates={"max_auc_drop_vs_production": 1.0})
    path = data_dir.parent / "job.json"
    path.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env |= {"DRIFTLINE_DATA_DIR": str(data_dir), "DRIFTLINE_LOG_LEVEL": "info"}
    done = subprocess.run([sys.executable, "-m", "driftline.commands.retrain_job", str(path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(Path(job["result_path"]).read_text())
    assert result["status"] == "registered" and result["version"] == 2
    assert "job-1: registered v2" in done.stderr
