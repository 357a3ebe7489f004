"""Promotion gates: the checks a retrained candidate must pass, each reported with its number.

`run_gates` validates the training data first (`validate_training_data`: schema, null share,
value range, row count, label values and balance, PSI against the Production reference
profile), then, only if all of that passed, the candidate on the holdout (`evaluate_candidate`:
minimum ROC AUC, ROC AUC not worse than Production's by more than a margin, fairness gaps,
ONNX parity). After a validation failure the model gates are listed as skipped
(``passed=None``) and the report fails: a model fit on bad data is not worth judging.

Decisions that matter (``docs``-level detail is in each function's docstring):

* ROC AUC is rank based with tied scores counted as half (the Mann-Whitney statistic), so it
  equals scikit-learn's ``roc_auc_score``; it takes bootstrap weights to stay vectorised.
* The Production comparison is an *interval* rule: a stratified, paired, seeded percentile
  bootstrap of ``drop = AUC(production) - AUC(candidate)`` on the same holdout rows; the gate
  fails only when the one-sided lower confidence bound of the drop exceeds the margin, i.e. when
  the candidate is worse by more than the margin with confidence. A tie never fails on noise.
* Fairness gaps use the monitor's definitions (``driftline.core.monitoring.fairness``) and its
  rule: the gap's simultaneous lower bound (Newcombe, Bonferroni over all compared pairs) must
  exceed the threshold to fail. Only values with ``fairness_min_support`` rows in the rate's
  denominator are compared.

Pure: arrays in, `GateResult` values out; no I/O, no clock, seeded randomness.

>>> import numpy as np
>>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9]))
0.875
>>> GateResult("roc_auc", False, 0.503, 0.70, "").summary()
'roc_auc 0.503 < 0.70: FAIL'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from driftline.core.monitoring.fairness import DP_DIFFERENCE, EO_DIFFERENCE
from driftline.core.monitoring.intervals import newcombe_interval
from driftline.core.monitoring.profile import FEATURE, ReferenceProfile
from driftline.core.monitoring.psi import compare

SCHEMA, NULL_SHARE, VALUE_RANGE, ROW_COUNT = "schema", "null_share", "value_range", "row_count"
LABEL_VALUES, POSITIVE_SHARE, FEATURE_PSI = "label_values", "positive_share", "feature_psi"
ROC_AUC, AUC_VS_PRODUCTION, ONNX_PARITY = "roc_auc", "auc_vs_production", "onnx_parity"
VALIDATION_GATES = (SCHEMA, NULL_SHARE, VALUE_RANGE, ROW_COUNT, LABEL_VALUES, POSITIVE_SHARE,
                    FEATURE_PSI)
MODEL_GATES = (ROC_AUC, AUC_VS_PRODUCTION, DP_DIFFERENCE, EO_DIFFERENCE, ONNX_PARITY)

Bound = Literal["min", "max", "eq"]
_OPS = {"min": (">=", "<"), "max": ("<=", ">"), "eq": ("==", "!=")}
_BOOTSTRAP_CHUNK = 250  # replicates weighted at once: memory is chunk x holdout rows


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of every gate. Shares are fractions of rows; AUC values are in [0, 1]."""

    min_rows: int = 1000
    max_null_share: float = 0.5  # per feature
    feature_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # inclusive
    min_positive_share: float = 0.002
    max_positive_share: float = 0.5
    max_psi_vs_reference: float = 0.25  # per feature, in the reference profile's bins
    min_roc_auc: float = 0.70
    max_auc_drop_vs_production: float = 0.02  # the margin
    auc_confidence: float = 0.95  # one-sided, for the drop's lower bound
    bootstrap_draws: int = 1000
    seed: int = 0
    decision_threshold: float = 0.5  # score >= threshold is a positive decision
    max_demographic_parity_difference: float = 0.1
    max_equal_opportunity_difference: float = 0.1
    fairness_min_support: int = 200
    fairness_confidence: float = 0.95  # simultaneous, over all compared pairs
    parity_tolerance: float = 1e-5

    def __post_init__(self) -> None:
        if self.min_rows < 1 or self.bootstrap_draws < 10 or self.fairness_min_support < 1:
            raise ValueError("need min_rows >= 1, bootstrap_draws >= 10, fairness_min_support >= 1")
        if not 0 <= self.min_positive_share <= self.max_positive_share <= 1:
            raise ValueError("need 0 <= min_positive_share <= max_positive_share <= 1")
        for name in ("auc_confidence", "fairness_confidence"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1)")
        for name, (low, high) in self.feature_ranges.items():
            if not low <= high:
                raise ValueError(f"feature_ranges[{name!r}]: need low <= high, got {low}, {high}")


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: ``passed`` is None when the gate was skipped. ``bound`` says how
    ``value`` is held against ``threshold``: ``min`` (value >= threshold), ``max`` (value <=
    threshold) or ``eq``."""

    name: str
    passed: bool | None
    value: float
    threshold: float
    detail: str
    bound: Bound = "min"

    def summary(self) -> str:
        """One line, e.g. ``roc_auc 0.503 < 0.70: FAIL (...)``."""
        if self.passed is None:
            return f"{self.name}: SKIPPED ({self.detail})"
        op = _OPS[self.bound][0 if self.passed else 1]
        text = (f"{self.name} {_fmt(self.value)} {op} {_fmt(self.threshold, threshold=True)}: "
                f"{'PASS' if self.passed else 'FAIL'}")
        return f"{text} ({self.detail})" if self.detail else text

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: a non-finite number becomes None (the detail says why)."""
        return {"name": self.name, "passed": self.passed, "value": _json_float(self.value),
                "threshold": _json_float(self.threshold), "bound": self.bound,
                "detail": self.detail, "summary": self.summary()}


@dataclass(frozen=True)
class GateReport:
    """Every gate's result, in the order run. Passes only when every gate passed."""

    results: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed is True for r in self.results)

    @property
    def failed(self) -> GateResult | None:
        """The first failing gate (else the first skipped one); None when the report passed."""
        return next((r for r in self.results if r.passed is False),
                    next((r for r in self.results if r.passed is None), None))

    def __getitem__(self, name: str) -> GateResult:
        return next(r for r in self.results if r.name == name)

    def summary(self) -> str:
        """One line per gate."""
        return "\n".join(r.summary() for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        failed = self.failed
        return {"passed": self.passed, "failed": None if failed is None else failed.name,
                "gates": [r.as_dict() for r in self.results]}


# -- ROC AUC -----------------------------------------------------------------------------------

def roc_auc(y: ArrayLike, scores: ArrayLike, weights: ArrayLike | None = None) -> Any:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting
    1/2 (the Mann-Whitney U statistic over n_pos x n_neg). NaN with a class absent.

    ``weights`` (rows, or replicates x rows) weight each row, e.g. bootstrap counts; with a
    2-d ``weights`` the result is one AUC per replicate. O(n log n) for the sort, then O(n) per
    replicate.
    """
    labels = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or s.shape != labels.shape:
        raise ValueError(f"y and scores must be 1-d of one length, got {labels.shape}, {s.shape}")
    if not np.isin(labels, (0, 1)).all() or np.isnan(s).any():
        raise ValueError("y must be 0/1 and scores must not be NaN")
    w = np.ones(len(s)) if weights is None else np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    w = np.atleast_2d(w)
    if w.shape[1] != len(s):
        raise ValueError(f"weights need {len(s)} columns, got shape {w.shape}")
    if len(s) == 0:
        return float("nan") if single else np.full(len(w), np.nan)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # one group per score
    ordered = w[:, order]
    wp = ordered * (labels[order] == 1)
    wn = ordered - wp
    if len(starts) < len(s):  # ties: pool each group of equal scores
        wp, wn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each score
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where(den > 0, num / den, np.nan)
    return float(auc[0]) if single else auc


def auc_drop_bootstrap(y: ArrayLike, candidate: ArrayLike, production: ArrayLike, *,
                       draws: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of ``AUC(production) - AUC(candidate)`` on the same rows: paired
    (both models scored on each resample) and stratified (positives and negatives resampled
    separately, so every replicate keeps the holdout's class counts)."""
    labels = np.asarray(y)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in (0, 1)]
    drops = []
    for start in range(0, draws, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, draws - start)
        w = np.zeros((size, len(labels)))
        for rows in groups:
            w[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=size)
        drops.append(roc_auc(labels, production, w) - roc_auc(labels, candidate, w))
    return np.concatenate(drops)


# -- training data -----------------------------------------------------------------------------

def validate_training_data(X: ArrayLike, y: ArrayLike, feature_names: Sequence[str],
                           reference: ReferenceProfile | None,
                           config: GateConfig | None = None) -> list[GateResult]:
    """The data gates, in order: schema, null share, value range, row count, label values,
    positive share, PSI against the reference profile. A schema failure skips the others.

    ``X`` is rows x features in ``feature_names`` order, NaN where a feature is undefined. The
    PSI gate bins each feature shared with ``reference`` in the reference's own bins and
    reports the worst; it passes without a reference (a first model) and fails when no feature
    is shared (compare against the right profile, or pass None deliberately).
    """
    cfg = config or GateConfig()
    names = list(feature_names)
    unknown = sorted(set(cfg.feature_ranges) - set(names))
    if unknown:
        raise ValueError(f"feature_ranges names unknown features: {unknown}")
    schema = _schema(X, y, names)
    if not schema.passed:
        rest = VALIDATION_GATES[1:]
        return [schema, *(_skipped(g, math.nan, "schema failed") for g in rest)]
    data = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    n = len(data)
    results = [schema, _null_share(data, names, cfg), _value_range(data, names, cfg),
               GateResult(ROW_COUNT, n >= cfg.min_rows, n, cfg.min_rows, "")]
    bad = int(np.count_nonzero((labels != 0) & (labels != 1)))
    results.append(GateResult(LABEL_VALUES, bad == 0, bad, 0, "labels outside {0, 1}", "max"))
    share = float(np.mean(labels == 1)) if n else math.nan
    low = not share >= cfg.min_positive_share
    results.append(GateResult(
        POSITIVE_SHARE, cfg.min_positive_share <= share <= cfg.max_positive_share, share,
        cfg.min_positive_share if low else cfg.max_positive_share,
        f"{int(np.sum(labels == 1))} positives in {n} rows", "min" if low else "max"))
    results.append(_feature_psi(data, names, reference, cfg))
    return results


def _schema(X: ArrayLike, y: ArrayLike, names: list[str]) -> GateResult:
    data, labels = np.asarray(X), np.asarray(y)
    problems = []
    columns = data.shape[1] if data.ndim == 2 else -1
    if data.ndim != 2:
        problems.append(f"X has shape {data.shape}, not rows x features")
    elif columns != len(names):
        problems.append(f"X has {columns} columns for {len(names)} feature names")
    if data.dtype.kind not in "biuf":
        problems.append(f"X has dtype {data.dtype}, not numeric")
    if len(set(names)) != len(names) or not all(names):
        problems.append("feature names must be distinct and non-empty")
    if labels.ndim != 1 or (data.ndim >= 1 and len(labels) != len(data)):
        problems.append(f"y has shape {labels.shape} for {len(data)} rows")
    detail = "; ".join(problems) or f"{len(names)} features in view order"
    return GateResult(SCHEMA, not problems, columns, len(names), detail, "eq")


def _null_share(data: np.ndarray, names: list[str], cfg: GateConfig) -> GateResult:
    if not names or not len(data):
        return GateResult(NULL_SHARE, True, 0.0, cfg.max_null_share, "no values", "max")
    shares = np.isnan(data).mean(axis=0)
    worst = int(np.argmax(shares))
    over = [names[j] for j in np.flatnonzero(shares > cfg.max_null_share)]
    detail = f"worst feature {names[worst]}" + (f"; over the limit: {', '.join(over)}"
                                                 if over else "")
    return GateResult(NULL_SHARE, not over, float(shares[worst]), cfg.max_null_share, detail,
                      "max")


def _value_range(data: np.ndarray, names: list[str], cfg: GateConfig) -> GateResult:
    """Counts infinite values, and values outside a configured inclusive range (NaN is
    missing, not out of range: the null-share gate owns it)."""
    low = np.array([cfg.feature_ranges.get(n, (-np.inf, np.inf))[0] for n in names])
    high = np.array([cfg.feature_ranges.get(n, (-np.inf, np.inf))[1] for n in names])
    with np.errstate(invalid="ignore"):
        outside = np.isinf(data) | (data < low) | (data > high)
    per_feature = outside.sum(axis=0) if len(data) else np.zeros(len(names), np.int64)
    total = int(per_feature.sum())
    detail = "values infinite or outside the configured ranges"
    if total:
        worst = int(np.argmax(per_feature))
        detail += f"; worst feature {names[worst]} ({int(per_feature[worst])})"
    return GateResult(VALUE_RANGE, total == 0, total, 0, detail, "max")


def _feature_psi(data: np.ndarray, names: list[str], reference: ReferenceProfile | None,
                 cfg: GateConfig) -> GateResult:
    limit = cfg.max_psi_vs_reference
    if reference is None:
        return GateResult(FEATURE_PSI, True, math.nan, limit, "no reference profile", "max")
    known = {s.name: s for s in reference if s.kind == FEATURE}
    shared = [(j, n) for j, n in enumerate(names) if n in known]
    if not shared or not len(data):
        return GateResult(FEATURE_PSI, False, math.nan, limit,
                          "no feature shared with the reference profile", "max")
    worst_psi, worst_detail = -math.inf, ""
    for j, name in shared:
        reference_counts = known[name].histogram
        result = compare(reference_counts, reference_counts.count(data[:, j]))
        if result.psi > worst_psi:
            worst_psi, worst_detail = result.psi, f"{name}: {result.largest_change()}"
    absent = [n for n in names if n not in known]
    detail = f"worst feature {worst_detail}" + (
        f"; not in the reference: {', '.join(absent)}" if absent else "")
    return GateResult(FEATURE_PSI, worst_psi <= limit, worst_psi, limit, detail, "max")


# -- the candidate -----------------------------------------------------------------------------

def evaluate_candidate(y_holdout: ArrayLike, candidate_scores: ArrayLike,
                       production_scores: ArrayLike | None,
                       slices: Mapping[str, ArrayLike] | None, onnx_scores: ArrayLike,
                       trained_scores: ArrayLike,
                       config: GateConfig | None = None) -> list[GateResult]:
    """The model gates on one holdout, in order: ROC AUC, AUC versus Production, demographic
    parity difference, equal opportunity difference, ONNX parity.

    ``candidate_scores`` are the scores to be served (normally the ONNX ones);
    ``production_scores`` the Production model's on the same rows (None: no Production model,
    the comparison passes); ``slices`` one string per row for each attribute (None: the
    fairness gates pass with nothing to compare). Parity is max |onnx - trained|; NaN in
    either counts as an infinite difference.
    """
    cfg = config or GateConfig()
    y = np.asarray(y_holdout)
    candidate = np.asarray(candidate_scores, dtype=np.float64)
    rows = len(y)
    for name, values in (("candidate_scores", candidate), ("onnx_scores", onnx_scores),
                         ("trained_scores", trained_scores),
                         *((("production_scores", production_scores),)
                           if production_scores is not None else ()),
                         *((f"slices[{k}]", v) for k, v in (slices or {}).items())):
        if np.shape(values) != (rows,):
            raise ValueError(f"{name} has shape {np.shape(values)}, expected ({rows},)")
    two_classes = bool(np.isin(0, y) and np.isin(1, y))
    finite = not np.isnan(candidate).any()
    auc = roc_auc(y, candidate) if finite else math.nan
    results = [GateResult(ROC_AUC, auc >= cfg.min_roc_auc, auc, cfg.min_roc_auc,
                          f"{rows} holdout rows, {int(np.sum(y == 1))} positive"
                          + ("" if two_classes else "; the holdout lacks a class")
                          + ("" if finite else "; the candidate scored NaN"))]
    results.append(_versus_production(y, candidate, production_scores, two_classes, cfg))
    results.extend(_fairness(y, candidate >= cfg.decision_threshold, slices, cfg))
    results.append(_parity(onnx_scores, trained_scores, cfg))
    return results


def _versus_production(y: np.ndarray, candidate: np.ndarray, production: ArrayLike | None,
                       two_classes: bool, cfg: GateConfig) -> GateResult:
    """Fails when the lower ``auc_confidence`` bound of the AUC drop exceeds the margin."""
    margin = cfg.max_auc_drop_vs_production
    if production is None:
        return GateResult(AUC_VS_PRODUCTION, True, math.nan, margin,
                          "no Production model to compare with", "max")
    if not two_classes or np.isnan(candidate).any():
        return GateResult(AUC_VS_PRODUCTION, False, math.nan, margin,
                          "no AUC: the holdout lacks a class or the candidate scored NaN", "max")
    prod = np.asarray(production, dtype=np.float64)
    point = roc_auc(y, prod) - roc_auc(y, candidate)
    drops = auc_drop_bootstrap(y, candidate, prod, draws=cfg.bootstrap_draws, seed=cfg.seed)
    alpha = 1 - cfg.auc_confidence
    low, high = np.quantile(drops, [alpha, 1 - alpha])
    detail = (f"AUC drop lower {cfg.auc_confidence:.0%} bound; point drop {point:.4f}, "
              f"bootstrap interval [{low:.4f}, {high:.4f}] over {cfg.bootstrap_draws} draws")
    return GateResult(AUC_VS_PRODUCTION, bool(low <= margin), float(low), margin, detail, "max")


def _fairness(y: np.ndarray, decision: np.ndarray, slices: Mapping[str, ArrayLike] | None,
              cfg: GateConfig) -> list[GateResult]:
    """Demographic parity (selection rate) and equal opportunity (TPR) differences: per
    metric, the attribute whose gap has the largest simultaneous lower bound."""
    limits = {DP_DIFFERENCE: cfg.max_demographic_parity_difference,
              EO_DIFFERENCE: cfg.max_equal_opportunity_difference}
    if not slices:
        return [GateResult(m, True, math.nan, t, "no slices given", "max")
                for m, t in limits.items()]
    positive = y == 1
    rates = []  # (metric, attribute, values, successes, trials) over supported values
    for attribute, column in slices.items():
        values, code = np.unique(np.asarray(column).astype(str), return_inverse=True)
        size = len(values)
        counts = {DP_DIFFERENCE: (np.bincount(code, decision, size), np.bincount(code, None, size)),
                  EO_DIFFERENCE: (np.bincount(code, decision & positive, size),
                                  np.bincount(code, positive, size))}
        for metric, (k, n) in counts.items():
            ok = n >= cfg.fairness_min_support
            rates.append((metric, attribute, values[ok], k[ok], n[ok]))
    family = sum(len(v) * (len(v) - 1) // 2 for _, _, v, _, _ in rates)
    z = float(norm.isf((1 - cfg.fairness_confidence) / (2 * family))) if family else math.inf
    results = []
    for metric, limit in limits.items():
        best: tuple[float, str] | None = None
        for m, attribute, values, k, n in rates:
            if m != metric or len(values) < 2:
                continue
            low, _ = newcombe_interval(k[:, None], n[:, None], k[None, :], n[None, :], z)
            bound = max(float(np.max(np.where(np.eye(len(k), dtype=bool), -np.inf, low))), 0.0)
            rate = k / n
            lo, hi = np.argsort(rate, kind="stable")[[0, -1]]
            detail = (f"{attribute}: gap {rate[hi] - rate[lo]:.3f} ({values[hi]} "
                      f"{rate[hi]:.3f} vs {values[lo]} {rate[lo]:.3f}), simultaneous lower bound")
            if best is None or bound > best[0]:
                best = (bound, detail)
        if best is None:
            results.append(GateResult(metric, True, math.nan, limit,
                                      f"fewer than two values with {cfg.fairness_min_support} "
                                      "rows in any attribute", "max"))
        else:
            results.append(GateResult(metric, best[0] <= limit, best[0], limit, best[1], "max"))
    return results


def _parity(onnx_scores: ArrayLike, trained_scores: ArrayLike, cfg: GateConfig) -> GateResult:
    diff = np.abs(np.asarray(onnx_scores, np.float64) - np.asarray(trained_scores, np.float64))
    worst = float(np.max(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0
    return GateResult(ONNX_PARITY, worst <= cfg.parity_tolerance, worst, cfg.parity_tolerance,
                      f"max |onnx - trained| over {diff.size} holdout rows", "max")


# -- all of it ---------------------------------------------------------------------------------

def run_gates(X: ArrayLike, y: ArrayLike, feature_names: Sequence[str], *,
              reference: ReferenceProfile | None, y_holdout: ArrayLike,
              candidate_scores: ArrayLike, onnx_scores: ArrayLike, trained_scores: ArrayLike,
              production_scores: ArrayLike | None = None,
              slices: Mapping[str, ArrayLike] | None = None,
              config: GateConfig | None = None) -> GateReport:
    """Validate the training data, then (only if it passed) evaluate the candidate."""
    cfg = config or GateConfig()
    results = validate_training_data(X, y, feature_names, reference, cfg)
    bad = next((r for r in results if r.passed is False), None)
    if bad is not None:
        thresholds = {ROC_AUC: cfg.min_roc_auc, AUC_VS_PRODUCTION: cfg.max_auc_drop_vs_production,
                      DP_DIFFERENCE: cfg.max_demographic_parity_difference,
                      EO_DIFFERENCE: cfg.max_equal_opportunity_difference,
                      ONNX_PARITY: cfg.parity_tolerance}
        results += [_skipped(g, thresholds[g], f"training data failed {bad.name}")
                    for g in MODEL_GATES]
    else:
        results += evaluate_candidate(y_holdout, candidate_scores, production_scores, slices,
                                      onnx_scores, trained_scores, cfg)
    return GateReport(tuple(results))


def _skipped(name: str, threshold: float, why: str) -> GateResult:
    return GateResult(name, None, math.nan, threshold, f"not run: {why}")


def _fmt(x: float, threshold: bool = False) -> str:
    if not math.isfinite(x):
        return str(x)
    if isinstance(x, int) or (x == int(x) and abs(x) >= 1):
        return str(int(x))
    if x != 0 and (abs(x) < 1e-3 or (abs(x) < 0.01 and round(x, 3) != x)):
        return f"{x:.2e}"
    return f"{x:.2f}" if threshold and round(x, 2) == x else f"{x:.3f}"


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
