"""The model registry: versioned ONNX models on disk, their stages and every stage transition.

Plain files under one root (layout and rules in ``docs/model-registry.md``)::

    {root}/{model}/versions/{n}/model.onnx      the model, immutable once registered
    {root}/{model}/versions/{n}/metadata.json   what it was trained on, metrics, sha256
    {root}/{model}/stages.json                  version -> stage, rewritten atomically
    {root}/{model}/history.jsonl                one line per transition, append-only

It reads no clock and sends no messages: callers pass times (epoch ms) and publish the returned
`Transition`s as ``driftline.ModelEvent``. Every read-modify-write runs under an ``fcntl`` lock
and ends in ``os.replace``, so concurrent processes cannot interleave and a crash leaves either
the old or the new state. A model may only enter Staging or Production while its inputs match
the *current* definition of its feature view, so a schema change can never reach serving.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from driftline.core.atomic import atomic_write

NONE, STAGING, PRODUCTION, ARCHIVED = "None", "Staging", "Production", "Archived"
STAGES = (NONE, STAGING, PRODUCTION, ARCHIVED)
_CHECKED_STAGES = (STAGING, PRODUCTION)  # entering these requires a matching feature schema
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


PROFILE_FILE = "reference_profile.json"
LINEAGE_FILE = "lineage.json"  # how a retrained version came about: job, drift ids, gates
PLAN_FILE = "serving_plan.json"  # per model: the rollout the scorers apply beside Production
PREVIOUS_PROFILE_FILE = "reference_profile.previous.json"


class RegistryError(Exception):
    """A refused registry operation; the message says what and why."""


class FeatureViewLike(Protocol):
    """What the promotion check needs from a feature view (``core.features.FeatureView``)."""

    @property
    def version(self) -> str: ...
    @property
    def feature_names(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version: its metadata and its current stage."""

    name: str
    version: int
    stage: str
    view: str
    view_version: str
    inputs: tuple[str, ...]
    training_range: tuple[int, int]  # first and last training event time, epoch ms
    metrics: Mapping[str, float]
    parent: int | None
    created_at_ms: int
    onnx_sha256: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Transition:
    """One stage change. ``archived`` holds the Production version this one displaced."""

    model_name: str
    version: int
    from_stage: str
    to_stage: str
    at_ms: int
    reason: str
    rollback: bool = False
    archived: tuple[Transition, ...] = ()

    def events(self) -> tuple[Transition, ...]:
        """Every transition of the operation, in the order they were recorded."""
        return (self, *self.archived)

    def to_model_event(self) -> dict[str, Any]:
        """The ``driftline.ModelEvent`` record of this transition alone."""
        return {"event": "transition", "model_name": self.model_name, "version": self.version,
                "from_stage": self.from_stage, "to_stage": self.to_stage,
                "at": self.at_ms, "reason": self.reason}

    def _line(self) -> dict[str, Any]:
        return {"version": self.version, "from_stage": self.from_stage,
                "to_stage": self.to_stage, "at_ms": self.at_ms, "reason": self.reason,
                "rollback": self.rollback}


class ModelRegistry:
    """File-based registry rooted at ``root`` (normally ``settings.data_dir / "registry"``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reads ------------------------------------------------------------------------------

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def versions(self, name: str) -> list[ModelVersion]:
        stages = self._read_state(name)["stages"]
        return [self._load(name, n, stages) for n in self._version_numbers(name)]

    def get(self, name: str, version: int) -> ModelVersion:
        return self._load(name, version, self._read_state(name)["stages"])

    def production(self, name: str) -> ModelVersion | None:
        stages = self._read_state(name)["stages"]
        found = [int(v) for v, stage in stages.items() if stage == PRODUCTION]
        return self._load(name, found[0], stages) if found else None

    def history(self, name: str) -> list[Transition]:
        if not (self.root / name / "versions").is_dir():
            return []
        # A shared lock: without it, two writes landing between reading history.jsonl and
        # stages.json would look like corruption.
        with self._locked(name, shared=True):
            lines, _ = self._history_lines(name)
            state = self._read_state(name)
        return [Transition(model_name=name, **_history_fields(line))
                for line in self._with_missing_tail(lines, state)]

    def model_path(self, name: str, version: int) -> Path:
        return self._version_dir(name, version) / "model.onnx"

    def model_bytes(self, name: str, version: int) -> bytes:
        """The ONNX bytes, checked against the sha256 recorded at registration."""
        data = self.model_path(name, version).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.get(name, version).onnx_sha256:
            raise RegistryError(f"{name} v{version}: model.onnx does not match its sha256")
        return data

    # -- writes -----------------------------------------------------------------------------

    def register(
        self, name: str, onnx_bytes: bytes, *, view: str, view_version: str,
        inputs: Sequence[str], training_range: tuple[int, int], metrics: Mapping[str, float],
        parent: int | None, created_at_ms: int, tags: Mapping[str, str] | None = None,
        reference_profile: Mapping[str, Any] | None = None,
        lineage: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Store a new version (stage None) after checking the bytes are a valid ONNX model.

        `reference_profile` is the JSON form of the training data's reference profile (the
        monitor's baseline for data drift), stored beside the model as
        ``reference_profile.json``. `lineage` (the retraining job, its drift events, its gate
        results) is stored as ``lineage.json`` in the same atomic rename."""
        if not _NAME.fullmatch(name):
            raise RegistryError(f"invalid model name {name!r}: letters, digits, '_', '.', '-'")
        inputs = tuple(inputs)
        if len(set(inputs)) != len(inputs) or not inputs:
            raise RegistryError(f"cannot register {name}: inputs must be distinct and non-empty")
        first, last = (int(t) for t in training_range)
        if first > last:
            raise RegistryError(f"cannot register {name}: training range {first} > {last}")
        _check_onnx(name, onnx_bytes, len(inputs))
        meta = {
            "name": name, "view": view, "view_version": view_version, "inputs": list(inputs),
            "training_range": [first, last],
            "metrics": {k: float(v) for k, v in metrics.items()},
            "parent": None if parent is None else int(parent),
            "created_at_ms": int(created_at_ms),
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
        }
        (self.root / name / "versions").mkdir(parents=True, exist_ok=True)
        with self._locked(name):
            if parent is not None and parent not in self._version_numbers(name):
                raise RegistryError(f"cannot register {name}: parent v{parent} does not exist")
            version = max(self._version_numbers(name), default=0) + 1
            meta["version"] = version
            # Both files land in a temporary directory renamed into place: a version either
            # exists completely or not at all.
            tmp = Path(tempfile.mkdtemp(dir=self.root / name / "versions", prefix=".tmp-"))
            (tmp / "model.onnx").write_bytes(onnx_bytes)
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            if reference_profile is not None:
                (tmp / PROFILE_FILE).write_text(json.dumps(reference_profile, sort_keys=True))
            if lineage is not None:
                (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
            os.replace(tmp, self._version_dir(name, version))
        return self.get(name, version)

    def reference_profile(self, name: str, version: int) -> dict[str, Any] | None:
        """The version's reference profile (JSON form), or None if it was registered without."""
        self.get(name, version)  # an unknown version is an error, not a missing profile
        try:
            return json.loads((self._version_dir(name, version) / PROFILE_FILE).read_text())
        except FileNotFoundError:
            return None

    def lineage(self, name: str, version: int) -> dict[str, Any] | None:
        """The version's lineage (``lineage.json``), or None for a version registered by hand."""
        self.get(name, version)
        try:
            return json.loads((self._version_dir(name, version) / LINEAGE_FILE).read_text())
        except FileNotFoundError:
            return None

    def serving_plan(self, name: str) -> dict[str, Any] | None:
        """The model's current rollout plan (``core.rollout.ServingPlan`` mapping), or None when
        only Production serves."""
        try:
            return json.loads((self.root / name / PLAN_FILE).read_text())
        except FileNotFoundError:
            return None

    def set_serving_plan(self, name: str, plan: Mapping[str, Any] | None) -> None:
        """Replace (None: remove) the model's rollout plan, atomically, under the model lock.
        Scorers re-read it on every ``driftline.ModelEvent`` of the model."""
        if not (self.root / name / "versions").is_dir():
            raise RegistryError(f"unknown model {name!r}")
        with self._locked(name):
            path = self.root / name / PLAN_FILE
            if plan is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, json.dumps(plan, indent=2, sort_keys=True).encode())

    def replace_reference_profile(self, name: str, version: int,
                                  profile: Mapping[str, Any]) -> None:
        """Make `profile` the version's reference (``driftline reference rebase``), atomically;
        the one it replaces is kept as ``reference_profile.previous.json``."""
        self.get(name, version)
        folder = self._version_dir(name, version)
        with self._locked(name):
            current = folder / PROFILE_FILE
            if current.exists():
                atomic_write(folder / PREVIOUS_PROFILE_FILE, current.read_bytes())
            atomic_write(current, json.dumps(profile, sort_keys=True).encode())

    def transition(
        self, name: str, version: int, to_stage: str, *, at_ms: int, reason: str,
        current_views: Mapping[str, FeatureViewLike],
    ) -> Transition:
        """Move ``version`` to ``to_stage``; entering Production archives the previous one."""
        return self._apply(name, version, to_stage, at_ms, reason, current_views, rollback=False)

    def promote(self, name: str, version: int, *, at_ms: int, reason: str,
                current_views: Mapping[str, FeatureViewLike]) -> Transition:
        return self.transition(name, version, PRODUCTION, at_ms=at_ms, reason=reason,
                               current_views=current_views)

    def rollback(self, name: str, *, at_ms: int, reason: str,
                 current_views: Mapping[str, FeatureViewLike]) -> Transition:
        """Re-promote the version that was Production before the current one."""
        return self._apply(name, None, PRODUCTION, at_ms, reason, current_views, rollback=True)

    # -- internals --------------------------------------------------------------------------

    def _apply(self, name: str, version: int | None, to_stage: str, at_ms: int, reason: str,
               views: Mapping[str, FeatureViewLike], *, rollback: bool) -> Transition:
        if to_stage not in STAGES:
            raise RegistryError(f"unknown stage {to_stage!r} (stages: {', '.join(STAGES)})")
        if not (self.root / name / "versions").is_dir():
            raise RegistryError(f"unknown model {name!r}")
        with self._locked(name):
            state = self._read_state(name)
            self._repair_history(name, state)
            stages = state["stages"]
            current = [int(v) for v, s in stages.items() if s == PRODUCTION]
            if rollback:
                version = self._rollback_target(name, current, state)
            model = self._load(name, int(version), stages)
            verb = ("roll back to" if rollback else
                    "promote" if to_stage in _CHECKED_STAGES else f"move to {to_stage}")
            if model.stage == to_stage:
                raise RegistryError(f"cannot {verb} {name} v{version}: already {to_stage}")
            if to_stage in _CHECKED_STAGES:
                _check_schema(f"cannot {verb} {name} v{version}", model, views)
            done = Transition(
                name, model.version, model.stage, to_stage, int(at_ms), reason, rollback)
            stages[str(version)] = to_stage
            if to_stage == PRODUCTION:
                displaced = tuple(
                    Transition(name, v, PRODUCTION, ARCHIVED, int(at_ms),
                               f"replaced by v{version}: {reason}")
                    for v in current if v != version)
                for t in displaced:
                    stages[str(t.version)] = ARCHIVED
                done = dataclasses.replace(done, archived=displaced)
            state["last"] = [t._line() for t in done.events()]
            state["transitions"] += len(state["last"])
            # stages.json is the commit point; history is appended after it and, should a
            # crash land in between, completed from stages.json["last"] by the next writer.
            atomic_write(self._state_path(name), json.dumps(state, indent=2).encode())
            with open(self.root / name / "history.jsonl", "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(line) + "\n" for line in state["last"])
                fh.flush()
                os.fsync(fh.fileno())
        return done

    def _rollback_target(self, name: str, current: list[int], state: dict) -> int:
        if not current:
            raise RegistryError(f"cannot roll back {name}: no version is in Production")
        # Replay the Production reigns: a promotion pushes, a rollback pops the one it ended.
        reigns: list[int] = []
        for line in self._with_missing_tail(self._history_lines(name)[0], state):
            if line["to_stage"] == PRODUCTION:
                if line.get("rollback") and reigns:
                    reigns.pop()
                else:
                    reigns.append(line["version"])
        while reigns and reigns[-1] == current[0]:
            reigns.pop()
        if not reigns:
            raise RegistryError(
                f"cannot roll back {name}: v{current[0]} has no earlier Production version")
        return reigns[-1]

    def _version_dir(self, name: str, version: int) -> Path:
        return self.root / name / "versions" / str(int(version))

    def _state_path(self, name: str) -> Path:
        return self.root / name / "stages.json"

    def _version_numbers(self, name: str) -> list[int]:
        folder = self.root / name / "versions"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())

    def _load(self, name: str, version: int, stages: Mapping[str, str]) -> ModelVersion:
        path = self._version_dir(name, version) / "metadata.json"
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise RegistryError(f"unknown model version {name} v{version}") from None
        return ModelVersion(
            name=meta["name"], version=meta["version"],
            stage=stages.get(str(version), NONE), view=meta["view"],
            view_version=meta["view_version"], inputs=tuple(meta["inputs"]),
            training_range=tuple(meta["training_range"]), metrics=meta["metrics"],
            parent=meta["parent"], created_at_ms=meta["created_at_ms"],
            onnx_sha256=meta["onnx_sha256"], tags=meta["tags"])

    def _read_state(self, name: str) -> dict:
        try:
            return json.loads(self._state_path(name).read_text())
        except FileNotFoundError:
            return {"stages": {}, "transitions": 0, "last": []}

    def _history_lines(self, name: str) -> tuple[list[dict], int]:
        """Complete history lines and the byte length they span (a torn last line is ignored)."""
        try:
            data = (self.root / name / "history.jsonl").read_bytes()
        except FileNotFoundError:
            return [], 0
        end = data.rfind(b"\n") + 1
        return [json.loads(line) for line in data[:end].splitlines() if line], end

    @staticmethod
    def _with_missing_tail(lines: list[dict], state: dict) -> list[dict]:
        missing = state["transitions"] - len(lines)
        if missing > len(state["last"]) or missing < 0:
            raise RegistryError("history.jsonl and stages.json disagree: registry is corrupt")
        return lines + state["last"][len(state["last"]) - missing:] if missing else lines

    def _repair_history(self, name: str, state: dict) -> None:
        lines, end = self._history_lines(name)
        full = self._with_missing_tail(lines, state)
        path = self.root / name / "history.jsonl"
        if len(full) != len(lines) or (path.exists() and path.stat().st_size != end):
            with open(path, "ab") as fh:
                fh.truncate(end)
                fh.writelines((json.dumps(line) + "\n").encode() for line in full[len(lines):])
                fh.flush()
                os.fsync(fh.fileno())

    @contextmanager
    def _locked(self, name: str, shared: bool = False) -> Iterator[None]:
        with open(self.root / name / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _history_fields(line: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("version", "from_stage", "to_stage", "at_ms", "reason", "rollback")
    return {k: line[k] for k in keys if k in line}


def _check_onnx(name: str, onnx_bytes: bytes, width: int) -> None:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RegistryError("registering a model needs `onnx` (pip install onnx)") from exc
    try:
        model = onnx.load_model_from_string(onnx_bytes)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise RegistryError(f"cannot register {name}: not a valid ONNX model ({exc})") from None
    weights = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in weights]
    if len(graph_inputs) != 1:
        raise RegistryError(
            f"cannot register {name}: the ONNX model has {len(graph_inputs)} inputs, expected "
            "one [batch, n_features] tensor")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    got = dims[-1].dim_value if len(dims) == 2 and dims[-1].HasField("dim_value") else None
    if got != width:
        raise RegistryError(
            f"cannot register {name}: ONNX input {graph_inputs[0].name!r} has width "
            f"{got if got is not None else 'unknown'}, but {width} input features were named")


def _check_schema(prefix: str, model: ModelVersion,
                  views: Mapping[str, FeatureViewLike]) -> None:
    view = views.get(model.view)
    if view is None:
        raise RegistryError(
            f"{prefix}: feature view {model.view} is not defined (defined: {sorted(views)})")
    names = tuple(view.feature_names)
    if view.version == model.view_version and names == model.inputs:
        return
    added = [n for n in names if n not in model.inputs]
    removed = [n for n in model.inputs if n not in names]
    if added or removed:
        diff = "; ".join(f"{label}: {', '.join(items)}"
                         for label, items in (("added", added), ("removed", removed)) if items)
    elif names != model.inputs:
        diff = "same features in a different order"
    else:
        diff = "same feature names, changed definitions"
    raise RegistryError(
        f"{prefix}: feature schema drift: it was trained on {model.view}@{model.view_version} "
        f"with inputs [{', '.join(model.inputs)}], the current definition is "
        f"{model.view}@{view.version} ({diff})")
