"""When a drift event starts a retraining job: the retrain controller's decision, pure.

The controller offers every drift event from ``driftline.drift`` to a :class:`RetrainTrigger`
with the current time; the trigger answers with a :class:`Decision`:

* an event of a kind and severity the :class:`TriggerPolicy` does not retrain on is ignored
  (fairness gaps by default: a model retrained on the same data keeps its gap);
* an event already seen (same ``drift_id``: drift events are at-least-once) is ignored;
* while a job for the model runs, further events join it (a storm of events for one change
  starts one job, whose lineage names them all);
* within ``cooldown_ms`` after the model's last job ended, events are ignored, so a change the
  new model has not yet absorbed does not start job after job;
* otherwise a job starts.

The trigger holds no clock (``now_ms`` is passed in) and its whole state is a JSON-able dict
(``snapshot``/``restore``), so a restarted controller decides exactly as the old one would have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SEVERITIES = ("warn", "warning", "drift", "critical")  # ascending; detectors use both spellings
_RANK = {"warn": 0, "warning": 0, "drift": 1, "critical": 2}


@dataclass(frozen=True)
class TriggerPolicy:
    """Which drift events start a job, and how often at most."""

    kinds: frozenset[str] = frozenset({"error", "feature", "score", "slice", "label"})
    min_severity: str = "drift"
    cooldown_ms: int = 30 * 60_000
    remembered_ids: int = 10_000  # drift ids kept for de-duplication (oldest forgotten first)

    def __post_init__(self) -> None:
        if self.min_severity not in _RANK:
            raise ValueError(f"min_severity must be one of {SEVERITIES}, got "
                             f"{self.min_severity!r}")
        if self.cooldown_ms < 0 or self.remembered_ids < 1:
            raise ValueError("cooldown_ms must be >= 0 and remembered_ids >= 1")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> TriggerPolicy:
        """From configuration (YAML/JSON); unknown keys are an error naming them."""
        known = {"kinds", "min_severity", "cooldown_ms", "remembered_ids"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown trigger setting(s) {unknown}; known: {sorted(known)}")
        values = dict(raw)
        if "kinds" in values:
            values["kinds"] = frozenset(str(k) for k in values["kinds"])  # type: ignore[union-attr]
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DriftSignal:
    """What the trigger needs of a ``driftline.DriftEvent``."""

    drift_id: str
    model_name: str
    kind: str
    severity: str

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> DriftSignal:
        details = record.get("details") or {}
        return cls(str(details["drift_id"]), str(record["model_name"]), str(record["kind"]),
                   str(details.get("severity", "drift")))


@dataclass(frozen=True)
class Decision:
    """``start`` a job for ``model_name`` (``job_triggers`` are the drift ids behind it), or
    not, with the ``reason``."""

    start: bool
    model_name: str
    reason: str
    job_triggers: tuple[str, ...] = ()


@dataclass
class _Model:
    running: list[str] | None = None  # drift ids of the running job
    ended_ms: int | None = None  # when its last job ended


@dataclass
class RetrainTrigger:
    """The decision state of one retrain controller; see the module docstring."""

    policy: TriggerPolicy = field(default_factory=TriggerPolicy)
    models: dict[str, _Model] = field(default_factory=dict)
    seen: dict[str, None] = field(default_factory=dict)  # insertion-ordered drift ids

    def offer(self, signal: DriftSignal, now_ms: int) -> Decision:
        name = signal.model_name
        if signal.drift_id in self.seen:
            return Decision(False, name, f"duplicate of drift event {signal.drift_id}")
        self._remember(signal.drift_id)
        if signal.kind not in self.policy.kinds:
            return Decision(False, name, f"kind {signal.kind!r} does not start retraining "
                                         f"(policy: {sorted(self.policy.kinds)})")
        if _RANK.get(signal.severity, -1) < _RANK[self.policy.min_severity]:
            return Decision(False, name, f"severity {signal.severity!r} is below "
                                         f"{self.policy.min_severity!r}")
        model = self.models.setdefault(name, _Model())
        if model.running is not None:
            model.running.append(signal.drift_id)
            return Decision(False, name, f"joined the running job of {name} "
                                         f"({len(model.running)} drift events)",
                            tuple(model.running))
        if model.ended_ms is not None and now_ms < model.ended_ms + self.policy.cooldown_ms:
            left = (model.ended_ms + self.policy.cooldown_ms - now_ms) / 1000
            return Decision(False, name, f"{name} is cooling down for {left:.0f} s more after "
                                         "its last job")
        model.running = [signal.drift_id]
        return Decision(True, name, f"drift event {signal.drift_id} starts a job for {name}",
                        (signal.drift_id,))

    def start_by_hand(self, model_name: str) -> bool:
        """A job started by hand (``driftline retrain``): False while one already runs; drift
        events arriving meanwhile join it. The cooldown does not apply to a person's request."""
        model = self.models.setdefault(model_name, _Model())
        if model.running is not None:
            return False
        model.running = []
        return True

    def job_ended(self, model_name: str, now_ms: int) -> tuple[str, ...]:
        """The model's job ended (promoted, rejected or failed): its cooldown starts. Returns
        the drift ids the job answered."""
        model = self.models.setdefault(model_name, _Model())
        triggers = tuple(model.running or ())
        model.running, model.ended_ms = None, now_ms
        return triggers

    def running(self) -> dict[str, tuple[str, ...]]:
        return {n: tuple(m.running) for n, m in self.models.items() if m.running is not None}

    def _remember(self, drift_id: str) -> None:
        self.seen[drift_id] = None
        while len(self.seen) > self.policy.remembered_ids:
            del self.seen[next(iter(self.seen))]

    # -- state ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """The whole state as JSON-able values."""
        return {"models": {n: {"running": m.running, "ended_ms": m.ended_ms}
                           for n, m in self.models.items()},
                "seen": list(self.seen)}

    @classmethod
    def restore(cls, state: Mapping[str, object], policy: TriggerPolicy | None = None
                ) -> RetrainTrigger:
        trigger = cls(policy or TriggerPolicy())
        models: Mapping[str, Mapping[str, object]] = state.get("models", {})  # type: ignore
        for name, raw in models.items():
            running = raw.get("running")
            trigger.models[name] = _Model(
                None if running is None else [str(r) for r in running],  # type: ignore
                None if raw.get("ended_ms") is None else int(raw["ended_ms"]))  # type: ignore
        seen: Iterable[str] = state.get("seen", [])  # type: ignore[assignment]
        for drift_id in seen:
            trigger._remember(str(drift_id))
        return trigger
