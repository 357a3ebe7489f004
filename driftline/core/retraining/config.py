"""Per-model retraining configuration: what starts a job, what data it trains on, which gates it
must pass, which trainer fits it and how the candidate rolls out.

One `ModelRetraining` per model, read from the YAML named by ``DRIFTLINE_RETRAINING_CONFIG``
(``docs/retraining.md`` shows every key), else the defaults below. Unknown keys are refused by
name, so a typo cannot silently fall back to a default::

    models:
      fraud:
        trigger: {kinds: [error, feature, score], min_severity: drift, cooldown_ms: 1800000}
        data: {min_rows: 6000, max_rows: 50000, holdout_fraction: 0.25}
        gates: {min_roc_auc: 0.7, max_auc_drop_vs_production: 0.02}
        trainer: driftline.commands.training:fit_gradient_boosting
        rollout: {kind: canary, steps: [0.1, 0.5, 1.0], step_after_outcomes: 500}

Pure: mappings in, frozen dataclasses out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from driftline.core.retraining.gates import GateConfig
from driftline.core.retraining.trigger import TriggerPolicy
from driftline.core.rollout import RolloutPolicy

DEFAULT_TRAINER = "driftline.commands.training:fit_gradient_boosting"


@dataclass(frozen=True)
class DataPolicy:
    """Which labelled outcomes a job trains on.

    The job takes the outcomes (each prediction's logged inputs joined with its label) of the
    model whose events are at or after ``since`` (the earliest window start of the drift events
    that triggered it; none for a job started by hand), at most the ``max_rows`` most recent by
    event time. The most recent ``holdout_fraction`` of them, by event time, is held out for the
    gates. Labels keep arriving after a drift, so a job waits up to ``wait_s`` (polling every
    ``poll_s``) for ``min_rows`` such outcomes before it fails with the count it had.
    """

    min_rows: int = 5000
    max_rows: int = 100_000
    holdout_fraction: float = 0.25
    wait_s: float = 600.0
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_rows <= self.max_rows:
            raise ValueError(f"need 1 <= min_rows <= max_rows: {self.min_rows}, {self.max_rows}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1): {self.holdout_fraction}")
        if self.wait_s < 0 or self.poll_s <= 0:
            raise ValueError("need wait_s >= 0 and poll_s > 0")


@dataclass(frozen=True)
class ModelRetraining:
    """Everything the retrain controller and its jobs need to know about one model."""

    trigger: TriggerPolicy = field(default_factory=TriggerPolicy)
    data: DataPolicy = field(default_factory=DataPolicy)
    gates: GateConfig = field(default_factory=GateConfig)
    rollout: RolloutPolicy = field(default_factory=lambda: RolloutPolicy(kind="direct"))
    trainer: str = DEFAULT_TRAINER  # "module:function", see driftline.commands.retrain_job
    max_attempts: int = 2  # a job interrupted this many times is marked failed
    seed: int = 0

    def __post_init__(self) -> None:
        if ":" not in self.trainer:
            raise ValueError(f"trainer must be 'module:function', got {self.trainer!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1: {self.max_attempts}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ModelRetraining:
        _refuse_unknown("model retraining", raw, {f.name for f in dataclasses.fields(cls)})
        values: dict[str, Any] = {k: raw[k] for k in ("trainer", "max_attempts", "seed")
                                  if k in raw}
        if "trigger" in raw:
            values["trigger"] = TriggerPolicy.from_mapping(raw["trigger"])
        if "data" in raw:
            _refuse_unknown("data", raw["data"], {f.name for f in dataclasses.fields(DataPolicy)})
            values["data"] = DataPolicy(**raw["data"])
        if "gates" in raw:
            gates = dict(raw["gates"])
            _refuse_unknown("gates", gates, {f.name for f in dataclasses.fields(GateConfig)})
            if "feature_ranges" in gates:
                gates["feature_ranges"] = {k: tuple(v) for k, v in gates["feature_ranges"].items()}
            values["gates"] = GateConfig(**gates)
        if "rollout" in raw:
            values["rollout"] = RolloutPolicy.from_mapping(raw["rollout"])
        return cls(**values)

    def gates_mapping(self) -> dict[str, Any]:
        out = dataclasses.asdict(self.gates)
        out["feature_ranges"] = {k: list(v) for k, v in self.gates.feature_ranges.items()}
        return out


@dataclass(frozen=True)
class RetrainingConfig:
    """Per-model settings; a model not named gets ``default``."""

    models: Mapping[str, ModelRetraining] = field(default_factory=dict)
    default: ModelRetraining = field(default_factory=ModelRetraining)

    def for_model(self, name: str) -> ModelRetraining:
        return self.models.get(name, self.default)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> RetrainingConfig:
        raw = raw or {}
        _refuse_unknown("retraining config", raw, {"models", "default"})
        default = ModelRetraining.from_mapping(raw.get("default") or {})
        models = {}
        for name, entry in (raw.get("models") or {}).items():
            # A model's entry overrides the default section by section.
            merged = {**(raw.get("default") or {}), **(entry or {})}
            try:
                models[str(name)] = ModelRetraining.from_mapping(merged)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"models.{name}: {exc}") from exc
        return cls(models, default)


def _refuse_unknown(where: str, raw: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; known: {sorted(known)}")
