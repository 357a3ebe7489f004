"""Rollout of a candidate model version beside Production: direct, shadow, canary and A/B.

One `RolloutPolicy` per model says how a candidate reaches Production. `RolloutState` is the
pure state machine of one rollout: the serving path asks it which arm an entity is in
(`RolloutState.route`), the outcome path feeds it errors and latencies per arm
(`RolloutState.observe`), and it answers with `RolloutEvent`s (`StepUp`, `Rollback`,
`Promote`, `ABReport`) for the caller to act on (registry transition, ``driftline.ModelEvent``).
It reads no clock (times are epoch ms passed in) and persists through `snapshot`/`restore`.

Arms are assigned by a stable hash of the entity id (`bucket`, blake2b, identical in every
process and Python version): an entity is in the candidate arm at share ``s`` iff its bucket is
below ``s``, so raising the share only ever moves entities from Production to the candidate and
an entity's version changes only when the share steps, never back and forth.

Decisions are interval-based and need ``min_outcomes`` on each compared arm. The error-rate
increase (candidate minus Production) uses Newcombe's hybrid score interval and breaches only
when its lower bound is above ``max_error_rate_increase``; the latency objective breaches only
when the Wilson lower bound of the share of latencies above ``max_p99_latency_ms`` exceeds 1 %.
Counts are cumulative over the rollout, so at share 1.0 the candidate is still compared with
the Production outcomes of the earlier steps. Every look uses the same confidence, without a
sequential correction: ``confidence`` and ``min_outcomes`` set the false-alarm budget.

>>> policy = RolloutPolicy.from_mapping({"kind": "canary", "steps": [0.1, 1.0],
...                                      "step_after_outcomes": 2, "min_outcomes": 2})
>>> state = RolloutState(policy, production_version=3, candidate_version=4, started_ms=0)
>>> [e.share for e in state.opening_events()]
[0.1]
>>> _ = state.observe(PRODUCTION, np.array([False, False]), np.array([5.0, 6.0]), now_ms=10)
>>> [type(e).__name__ for e in state.observe(CANDIDATE, np.array([False, False]),
...                                           np.array([5.0, 7.0]), now_ms=20)]
['StepUp']
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from driftline.core.monitoring.intervals import newcombe_interval, wilson_interval

DIRECT, SHADOW, CANARY, AB = "direct", "shadow", "canary", "ab"
KINDS = (DIRECT, SHADOW, CANARY, AB)

# Arm labels carried by every prediction.
PRODUCTION, CANDIDATE, SHADOW_ARM = "production", "candidate", "shadow"
ARMS = (PRODUCTION, CANDIDATE, SHADOW_ARM)

RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled_back"
ERROR_OBJECTIVE, LATENCY_OBJECTIVE = "max_error_rate_increase", "max_p99_latency_ms"

_P99_EXCESS = 0.01  # the share of latencies a p99 objective allows above it
# Fixed log-spaced latency histogram, 0.1 ms .. 100 s, 20 buckets per decade (+ overflow).
_LATENCY_EDGES = 10.0 ** np.linspace(-1, 5, 121)


class Arm:
    """The arm labels a prediction names: ``Arm.PRODUCTION``, ``Arm.CANDIDATE``, ``Arm.SHADOW``.
    Shadow predictions are scored and compared but never published."""

    PRODUCTION = PRODUCTION
    CANDIDATE = CANDIDATE
    SHADOW = SHADOW_ARM


def bucket(entity_ids: Sequence[Any] | np.ndarray, salt: str = "") -> np.ndarray:
    """A stable position in [0, 1) per entity id: the first 53 bits of the blake2b digest of
    ``salt + "\\x00" + str(id)`` (UTF-8). Independent of process, platform and Python's hash
    seed; a different ``salt`` gives an independent assignment (e.g. one per model)."""
    prefix = salt.encode() + b"\x00"
    digests = b"".join(hashlib.blake2b(prefix + str(e).encode(), digest_size=8).digest()
                       for e in np.asarray(entity_ids, dtype=object).ravel())
    words = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def arm_for(entity_ids: Sequence[Any] | np.ndarray, share: float, salt: str = "") -> np.ndarray:
    """True where the entity is in the candidate arm at ``share``: ``bucket < share``. Monotone:
    an entity in the candidate arm at ``share`` is in it at every larger share."""
    return bucket(entity_ids, salt) < share


@dataclass(frozen=True)
class RolloutPolicy:
    """How one model's candidate reaches Production (``kind``: direct, shadow, canary or ab).

    canary: ``steps`` are the candidate's shares, increasing, ending at 1.0; a step (and, from
    the last one, promotion) needs ``step_after_outcomes`` candidate outcomes and/or
    ``step_after_ms`` since the step began (both, when both are set) and ``min_outcomes`` on
    each arm, while no objective is breached. Objectives: ``max_error_rate_increase`` over
    Production's error rate (interval-based) and ``max_p99_latency_ms`` (None: not checked).
    shadow: promotion once both arms have ``min_outcomes`` and the whole interval of
    (shadow - Production) error rate is below ``-margin``. ab: candidate share ``split``, an
    `ABReport` every ``step_after_outcomes`` outcomes once both arms have ``min_outcomes``,
    never a promotion. ``confidence`` is the two-sided level of every interval; ``salt`` seeds
    the entity hash.
    """

    kind: str
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    step_after_outcomes: int | None = 1000
    step_after_ms: int | None = None
    min_outcomes: int = 500
    max_error_rate_increase: float = 0.01
    max_p99_latency_ms: float | None = None
    margin: float = 0.0
    split: float = 0.5
    confidence: float = 0.95
    salt: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))
        if self.kind not in KINDS:
            raise ValueError(f"unknown rollout kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        s = self.steps
        rising = all(b > a for a, b in zip(s, s[1:], strict=False))
        if not s or not rising or s[0] <= 0 or s[-1] != 1.0 or (self.kind == CANARY
                                                                 and s[0] >= 1.0):
            raise ValueError(f"steps must increase within (0, 1] and end at 1.0: {s}")
        if self.step_after_outcomes is None and self.step_after_ms is None:
            raise ValueError("set step_after_outcomes and/or step_after_ms")
        for name in ("step_after_outcomes", "step_after_ms"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value
                                      or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None: {value!r}")
        if isinstance(self.min_outcomes, bool) or int(self.min_outcomes) != self.min_outcomes \
                or self.min_outcomes < 1:
            raise ValueError(f"min_outcomes must be an integer >= 1: {self.min_outcomes!r}")
        if not 0 <= self.max_error_rate_increase < 1 or not 0 <= self.margin < 1:
            raise ValueError("max_error_rate_increase and margin must be in [0, 1)")
        if self.max_p99_latency_ms is not None and not self.max_p99_latency_ms > 0:
            raise ValueError(f"max_p99_latency_ms must be > 0: {self.max_p99_latency_ms}")
        if not 0 < self.split < 1 or not 0 < self.confidence < 1:
            raise ValueError("split and confidence must be in (0, 1)")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RolloutPolicy:
        """The policy from a YAML/JSON mapping; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown rollout policy keys: {', '.join(map(str, unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        if "kind" not in data:
            raise ValueError("a rollout policy needs a 'kind' (direct, shadow, canary or ab)")
        return cls(**dict(data))

    def to_mapping(self) -> dict[str, Any]:
        """The JSON-ready inverse of `from_mapping`."""
        out = dataclasses.asdict(self)
        out["steps"] = list(self.steps)
        return out


@dataclass(frozen=True)
class StepUp:
    """The canary share moved from ``previous_share`` to ``share``."""

    kind: ClassVar[str] = "step_up"
    share: float
    previous_share: float
    production_version: int
    candidate_version: int
    at_ms: int
    reason: str


@dataclass(frozen=True)
class Rollback:
    """The candidate breached ``objective`` (observed ``observed``, interval ``interval``,
    against ``limit``); all traffic returns to Production."""

    kind: ClassVar[str] = "rollback"
    objective: str
    observed: float
    interval: tuple[float, float]
    limit: float
    share: float
    production_version: int
    candidate_version: int
    at_ms: int
    reason: str


@dataclass(frozen=True)
class Promote:
    """The candidate should become Production (direct, shadow win, canary held at 1.0)."""

    kind: ClassVar[str] = "promote"
    production_version: int
    candidate_version: int
    at_ms: int
    reason: str


@dataclass(frozen=True)
class ABReport:
    """Error rate per arm and the candidate-minus-Production difference with its Newcombe
    interval at ``confidence``. Informational: an A/B test never promotes."""

    kind: ClassVar[str] = "ab_report"
    production_errors: int
    production_outcomes: int
    candidate_errors: int
    candidate_outcomes: int
    difference: float
    interval: tuple[float, float]
    confidence: float
    production_version: int
    candidate_version: int
    at_ms: int
    reason: str


RolloutEvent = StepUp | Rollback | Promote | ABReport


def event_to_dict(event: RolloutEvent) -> dict[str, Any]:
    """A JSON-ready dict of an event, with its ``kind``."""
    out = {"kind": event.kind, **dataclasses.asdict(event)}
    if "interval" in out:
        out["interval"] = list(out["interval"])
    return out


@dataclass(frozen=True)
class ServingPlan:
    """What every scorer applies while a rollout runs (the registry's ``serving_plan.json``).

    ``kind`` shadow: the candidate scores every record too, labelled `Arm.SHADOW`, and only
    Production's predictions are published. canary / ab: an entity whose `bucket` (salted with
    ``salt``) is below ``share`` is scored and published by the candidate (`Arm.CANDIDATE`),
    every other by Production. Production itself is whatever the registry has in Production.
    """

    model_name: str
    kind: str
    candidate_version: int
    share: float
    salt: str = ""

    def __post_init__(self) -> None:
        if self.kind not in (SHADOW, CANARY, AB):
            raise ValueError(f"a serving plan is shadow, canary or ab, not {self.kind!r}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1]: {self.share}")

    @property
    def shadow(self) -> bool:
        return self.kind == SHADOW

    def to_candidate(self, entity_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """True where the candidate scores and publishes (never under shadow)."""
        if self.shadow:
            return np.zeros(len(entity_ids), dtype=bool)
        return arm_for(entity_ids, self.share, self.salt)

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ServingPlan:
        return cls(model_name=str(data["model_name"]), kind=str(data["kind"]),
                   candidate_version=int(data["candidate_version"]),
                   share=float(data["share"]), salt=str(data.get("salt", "")))


class RolloutState:
    """The state of one rollout: step, per-arm counts, status; decisions in `observe`."""

    def __init__(self, policy: RolloutPolicy, *, production_version: int,
                 candidate_version: int, started_ms: int) -> None:
        self.policy = policy
        self.production_version = int(production_version)
        self.candidate_version = int(candidate_version)
        self.status = PROMOTED if policy.kind == DIRECT else RUNNING
        self.step = 0
        self.step_started_ms = int(started_ms)
        self.step_outcomes = 0  # candidate outcomes since the step began (ab: all outcomes)
        self.counts = {arm: _ArmCounts() for arm in self._arms()}
        self._z = NormalDist().inv_cdf(0.5 + policy.confidence / 2)

    # -- serving ----------------------------------------------------------------------------

    @property
    def share(self) -> float:
        """The candidate's published share now (shadow: 0, it publishes nothing)."""
        kind = self.policy.kind
        if self.status == ROLLED_BACK or kind == SHADOW and self.status == RUNNING:
            return 0.0
        if self.status == PROMOTED:
            return 1.0
        return self.policy.split if kind == AB else self.policy.steps[self.step]

    def route(self, entity_ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(arm label, model version) of the published prediction per entity. Under shadow the
        candidate also scores every entity, labelled `Arm.SHADOW`, and is not published."""
        to_candidate = arm_for(entity_ids, self.share, self.policy.salt)
        arms = np.where(to_candidate, CANDIDATE, PRODUCTION)
        versions = np.where(to_candidate, self.candidate_version, self.production_version)
        return arms, versions

    def plan(self, model_name: str) -> ServingPlan | None:
        """What the scorers must apply now; None once the rollout ended (promoted or rolled
        back) or for a direct rollout: then Production alone serves."""
        if self.status != RUNNING or self.policy.kind == DIRECT:
            return None
        return ServingPlan(model_name, self.policy.kind, self.candidate_version, self.share,
                           self.policy.salt)

    def opening_events(self) -> list[RolloutEvent]:
        """What starting the rollout announces: direct promotes, canary opens its first step."""
        if self.policy.kind == DIRECT:
            return [Promote(self.production_version, self.candidate_version,
                            self.step_started_ms, "direct rollout")]
        if self.policy.kind == CANARY:
            return [StepUp(self.policy.steps[0], 0.0, self.production_version,
                           self.candidate_version, self.step_started_ms, "canary started")]
        return []

    # -- outcomes ---------------------------------------------------------------------------

    def observe(self, arm: str, errors: np.ndarray, latencies_ms: np.ndarray,
                now_ms: int) -> list[RolloutEvent]:
        """Add one arm's outcomes (``errors``: one bool per joined outcome) and prediction
        latencies (any number, may be empty) and return what that decides. Nothing is decided
        once the rollout is promoted or rolled back."""
        return self.observe_together({arm: (errors, latencies_ms)}, now_ms)

    def observe_together(self, outcomes: Mapping[str, tuple[np.ndarray, np.ndarray]],
                         now_ms: int) -> list[RolloutEvent]:
        """Add several arms' outcomes (arm -> (errors, latencies_ms)), then decide once.

        The caller's unit of evidence (one outcome file) enters whole: a shadow judged on the
        same rows as Production must never be compared while only Production's half of those
        rows is counted, which one `observe` per arm would allow."""
        unknown = [arm for arm in outcomes if arm not in self.counts]
        if unknown:
            raise ValueError(f"arm {unknown[0]!r} is not part of a {self.policy.kind} rollout "
                             f"(arms: {', '.join(self.counts)})")
        if self.status != RUNNING:
            return []
        for arm, (errors, latencies_ms) in outcomes.items():
            errors = np.asarray(errors, dtype=bool).ravel()
            self.counts[arm].add(errors, np.asarray(latencies_ms, dtype=np.float64).ravel(),
                                 self.policy.max_p99_latency_ms)
            if self.policy.kind == AB or arm != PRODUCTION:
                self.step_outcomes += int(errors.size)
        now_ms = int(now_ms)
        if self.policy.kind == CANARY:
            return self._canary(now_ms)
        if self.policy.kind == SHADOW:
            return self._shadow(now_ms)
        return self._ab(now_ms)

    def report(self, now_ms: int) -> ABReport:
        """The comparison of the candidate (or shadow) arm with Production so far."""
        prod, cand = self.counts[PRODUCTION], self.counts[self._other()]
        diff, low, high = self._difference()
        return ABReport(prod.errors, prod.outcomes, cand.errors, cand.outcomes, diff,
                        (low, high), self.policy.confidence, self.production_version,
                        self.candidate_version, int(now_ms),
                        f"{self._other()} - production error rate {diff:+.4f}, "
                        f"{self.policy.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]")

    # -- persistence ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-ready state, policy included; `restore` rebuilds an identical state."""
        return {"policy": self.policy.to_mapping(), "status": self.status, "step": self.step,
                "production_version": self.production_version,
                "candidate_version": self.candidate_version,
                "step_started_ms": self.step_started_ms, "step_outcomes": self.step_outcomes,
                "counts": {arm: c.snapshot() for arm, c in self.counts.items()}}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> RolloutState:
        state = cls(RolloutPolicy.from_mapping(data["policy"]),
                    production_version=data["production_version"],
                    candidate_version=data["candidate_version"],
                    started_ms=data["step_started_ms"])
        state.status, state.step = str(data["status"]), int(data["step"])
        state.step_outcomes = int(data["step_outcomes"])
        state.counts = {arm: _ArmCounts.restore(c) for arm, c in data["counts"].items()}
        return state

    # -- decisions --------------------------------------------------------------------------

    def _arms(self) -> tuple[str, ...]:
        if self.policy.kind == DIRECT:
            return ()
        return (PRODUCTION, SHADOW_ARM if self.policy.kind == SHADOW else CANDIDATE)

    def _other(self) -> str:
        return SHADOW_ARM if self.policy.kind == SHADOW else CANDIDATE

    def _supported(self) -> bool:
        return all(c.outcomes >= self.policy.min_outcomes for c in self.counts.values())

    def _difference(self) -> tuple[float, float, float]:
        prod, cand = self.counts[PRODUCTION], self.counts[self._other()]
        if not prod.outcomes or not cand.outcomes:
            return math.nan, math.nan, math.nan
        low, high = newcombe_interval(cand.errors, cand.outcomes, prod.errors, prod.outcomes,
                                      self._z)
        return cand.error_rate - prod.error_rate, float(low), float(high)

    def _canary(self, now_ms: int) -> list[RolloutEvent]:
        p = self.policy
        breach = self._error_breach(now_ms) or self._latency_breach(now_ms)
        if breach is not None:
            self.status = ROLLED_BACK
            return [breach]
        due = ((p.step_after_outcomes is None or self.step_outcomes >= p.step_after_outcomes)
               and (p.step_after_ms is None or now_ms - self.step_started_ms >= p.step_after_ms))
        if not (due and self._supported()):
            return []
        diff, low, high = self._difference()
        held = (f"held share {p.steps[self.step]:g} for {self.step_outcomes} candidate outcomes "
                f"and {now_ms - self.step_started_ms} ms within objectives (error rate "
                f"increase {diff:+.4f}, CI [{low:+.4f}, {high:+.4f}])")
        if self.step == len(p.steps) - 1:
            self.status = PROMOTED
            return [Promote(self.production_version, self.candidate_version, now_ms,
                            f"canary {held}")]
        self.step += 1
        self.step_started_ms, self.step_outcomes = now_ms, 0
        return [StepUp(p.steps[self.step], p.steps[self.step - 1], self.production_version,
                       self.candidate_version, now_ms, held)]

    def _error_breach(self, now_ms: int) -> Rollback | None:
        limit = self.policy.max_error_rate_increase
        if not self._supported():
            return None
        diff, low, high = self._difference()
        if not low > limit:
            return None
        prod, cand = self.counts[PRODUCTION], self.counts[CANDIDATE]
        return self._rollback(
            ERROR_OBJECTIVE, diff, (low, high), limit, now_ms,
            f"error rate objective breached: candidate {cand.error_rate:.4f} "
            f"({cand.errors}/{cand.outcomes}) vs production {prod.error_rate:.4f} "
            f"({prod.errors}/{prod.outcomes}), increase {diff:+.4f} with "
            f"{self.policy.confidence:.0%} CI [{low:+.4f}, {high:+.4f}] entirely above "
            f"{ERROR_OBJECTIVE}={limit:g}")

    def _latency_breach(self, now_ms: int) -> Rollback | None:
        limit, cand = self.policy.max_p99_latency_ms, self.counts[CANDIDATE]
        if limit is None or cand.latencies < self.policy.min_outcomes:
            return None
        low, high = (float(b) for b in wilson_interval(cand.over, cand.latencies, self._z))
        if not low > _P99_EXCESS:
            return None
        p99 = cand.p99()
        return self._rollback(
            LATENCY_OBJECTIVE, p99, (low, high), limit, now_ms,
            f"p99 latency objective breached: candidate p99 ~{p99:.1f} ms; "
            f"{cand.over}/{cand.latencies} predictions over {LATENCY_OBJECTIVE}={limit:g}, "
            f"share {cand.over / cand.latencies:.4f} with {self.policy.confidence:.0%} CI "
            f"[{low:.4f}, {high:.4f}] entirely above {_P99_EXCESS:g}")

    def _rollback(self, objective: str, observed: float, interval: tuple[float, float],
                  limit: float, now_ms: int, reason: str) -> Rollback:
        return Rollback(objective, observed, interval, limit, self.policy.steps[self.step],
                        self.production_version, self.candidate_version, now_ms, reason)

    def _shadow(self, now_ms: int) -> list[RolloutEvent]:
        p = self.policy
        if not self._supported():
            return []
        diff, low, high = self._difference()
        if not high < -p.margin:
            return []
        if p.max_p99_latency_ms is not None and self.counts[SHADOW_ARM].p99() > \
                p.max_p99_latency_ms:
            return []
        self.status = PROMOTED
        return [Promote(self.production_version, self.candidate_version, now_ms,
                        f"shadow wins: error rate difference {diff:+.4f}, "
                        f"{p.confidence:.0%} CI [{low:+.4f}, {high:+.4f}] entirely below "
                        f"-margin={-p.margin:g} over {self.counts[SHADOW_ARM].outcomes} shadow "
                        f"and {self.counts[PRODUCTION].outcomes} production outcomes")]

    def _ab(self, now_ms: int) -> list[RolloutEvent]:
        if not self._supported() or self.step_outcomes < (self.policy.step_after_outcomes or 1):
            return []
        self.step_outcomes = 0
        return [self.report(now_ms)]


@dataclass
class _ArmCounts:
    """One arm's cumulative outcomes, errors and latency histogram."""

    outcomes: int = 0
    errors: int = 0
    latencies: int = 0
    over: int = 0  # latencies above the policy's p99 objective
    histogram: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(_LATENCY_EDGES.size + 1, dtype=np.int64))

    @property
    def error_rate(self) -> float:
        return self.errors / self.outcomes if self.outcomes else math.nan

    def add(self, errors: np.ndarray, latencies: np.ndarray, limit: float | None) -> None:
        self.outcomes += int(errors.size)
        self.errors += int(errors.sum())
        self.latencies += int(latencies.size)
        if limit is not None:
            self.over += int((latencies > limit).sum())
        idx = np.searchsorted(_LATENCY_EDGES, latencies, side="left")
        self.histogram += np.bincount(idx, minlength=self.histogram.size)

    def p99(self) -> float:
        """The upper edge of the histogram bucket holding the 99th percentile (conservative);
        inf when it falls in the overflow bucket, NaN without latencies."""
        if not self.latencies:
            return math.nan
        i = int(np.searchsorted(np.cumsum(self.histogram), 0.99 * self.latencies))
        return float(_LATENCY_EDGES[i]) if i < _LATENCY_EDGES.size else math.inf

    def snapshot(self) -> dict[str, Any]:
        return {"outcomes": self.outcomes, "errors": self.errors, "latencies": self.latencies,
                "over": self.over, "histogram": self.histogram.tolist()}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> _ArmCounts:
        return cls(int(data["outcomes"]), int(data["errors"]), int(data["latencies"]),
                   int(data["over"]), np.asarray(data["histogram"], dtype=np.int64))
