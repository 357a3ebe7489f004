"""PSI against a reference profile, its false-alarm calibration, and the drift monitor.

**The statistic.** The population stability index of a window against the reference, over the
bins of the reference profile (``driftline.core.monitoring.profile``)::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``a`` and ``e`` the window's and the reference's proportions. It is the symmetrised
Kullback-Leibler divergence, an effect size: it does not grow with the sample. **Empty bins**: a
bin empty in one sample is counted as holding half an observation (``HALF_COUNT``), i.e. its
proportion is ``0.5 / N`` for that sample's size ``N`` (at N = 5,000 this is the customary
epsilon 1e-4); a bin empty in *both* samples contributes 0. Proportions are not renormalised.

**Calibration.** For a window of ``n`` outcomes drawn from the reference (the null), ``n * PSI``
is close to Pearson's X^2, so ``PSI ~ chi2(k-1) * (1/n + 1/M)`` for ``k`` bins with reference
mass and ``M`` reference rows (`chi2_critical`). That is too low in small windows and skewed
bins, so the default (`calibrate`) uses the null distribution of PSI itself: windows of size
``n`` from the reference multinomial against multinomial resamples of the reference, enumerated
exactly when there are few possible windows (two or three bins) and otherwise simulated (seeded);
the critical value is its ``1 - alpha`` quantile, extrapolated from the simulated tail when
``alpha`` is below what the draws resolve. See ``docs/data-drift.md`` for the method, the
measured accuracy and the assumptions.

**The monitor.** `PsiMonitor` counts each subject's outcomes into windows of ``window`` outcomes,
evaluated every ``hop`` outcomes (O(bins) each), and raises a `DriftEvent` only when a subject's
PSI exceeds both the user threshold (warn 0.1 / drift 0.25, per subject) and its critical value.
The critical values share one false-alarm budget: an expected ``false_alarm_every`` outcomes
between false alarms summed over all subjects, so each evaluation of each subject gets
``alpha = hop * budget_share / (subjects * false_alarm_every)``. One sustained change raises one
event (plus one escalation from warn to drift); the subject is re-armed after ``rearm_after``
consecutive evaluations below its warn threshold.

>>> from driftline.core.monitoring.profile import ReferenceProfile
>>> rng = np.random.default_rng(0)
>>> profile = ReferenceProfile.from_columns({"x": rng.normal(size=20_000)})
>>> monitor = PsiMonitor(profile, MonitorSettings(window=1_000, hop=1_000, calibration="chi2"))
>>> calm = monitor.update({"x": rng.normal(size=3_000)}, np.arange(3_000))
>>> moved = monitor.update({"x": rng.normal(1.0, 1.0, size=2_000)}, np.arange(3_000, 5_000))
>>> [(e.subject, e.severity, e.first_outcome) for e in calm.events + moved.events]
[('x', 'drift', 3000)]
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

from driftline.core.monitoring import intervals
from driftline.core.monitoring.profile import LABEL, Histogram, ReferenceProfile

HALF_COUNT = 0.5  # an empty bin counts as half an observation of its sample
Seed = int | Sequence[int]

CHI2, SIMULATION, NONE = "chi2", "simulation", "none"  # calibration methods asked for
EXACT, SIMULATION_TAIL = "exact", "simulation-tail"  # and how a simulation was resolved
WARN, DRIFT = "warn", "drift"
SEVERITIES = ("", WARN, DRIFT)  # index = level

# The simulated quantile is used directly when at least this many draws lie beyond it;
# otherwise the tail is extrapolated from the 1% quantile and the one with this many draws.
_TAIL_DRAWS = 50
_FIT_LEVEL = 0.01
_REFERENCE_POOL = 1_000  # reference resamples, cycled over the simulated windows
_EXACT_LIMIT = 200_000  # enumerate the null exactly up to this many possible windows
_CHUNK = 200_000
# Running min / max of an empty block's event times.
_EMPTY_MIN, _EMPTY_MAX = np.iinfo(np.int64).max, np.iinfo(np.int64).min


# -- the statistic ---------------------------------------------------------------------------

def psi_terms(expected: ArrayLike, actual: ArrayLike, empty: float = HALF_COUNT) -> np.ndarray:
    """Each bin's contribution ``(a - e) * ln(a / e)`` for two count vectors over the same bins
    (along the last axis; leading axes broadcast)."""
    e_counts = np.asarray(expected, dtype=np.float64)
    a_counts = np.asarray(actual, dtype=np.float64)
    e_total = e_counts.sum(axis=-1, keepdims=True)
    a_total = a_counts.sum(axis=-1, keepdims=True)
    if np.any(e_total <= 0) or np.any(a_total <= 0):
        raise ValueError("PSI needs non-empty samples on both sides")
    return _terms(e_counts, e_total, a_counts, a_total, empty)


def psi(expected: ArrayLike, actual: ArrayLike, empty: float = HALF_COUNT) -> float | np.ndarray:
    """PSI of `actual` counts against `expected` counts (see the module docstring)."""
    total = psi_terms(expected, actual, empty).sum(axis=-1)
    return float(total) if np.ndim(total) == 0 else total


def _terms(e_counts: np.ndarray, e_total: ArrayLike, a_counts: np.ndarray, a_total: ArrayLike,
           empty: float) -> np.ndarray:
    e = np.maximum(e_counts, empty) / e_total
    a = np.maximum(a_counts, empty) / a_total
    return np.where((e_counts == 0) & (a_counts == 0), 0.0, (a - e) * np.log(a / e))


@dataclass(frozen=True)
class PsiResult:
    """A window compared with its reference: PSI, per-bin terms and what the bins held."""

    psi: float
    terms: np.ndarray
    expected: np.ndarray  # reference proportions
    actual: np.ndarray  # window proportions
    n: int  # outcomes in the window
    unseen: int  # window values of categories absent from training
    missing: int
    labels: list[str]

    def largest_change(self) -> str:
        """The bin that contributes most, e.g. ``(3.5, inf): 31.0% vs 10.0% expected``."""
        i = int(np.argmax(self.terms))
        return f"{self.labels[i]}: {self.actual[i]:.1%} vs {self.expected[i]:.1%} expected"


def compare(reference: Histogram, window: Histogram, empty: float = HALF_COUNT) -> PsiResult:
    """PSI of a window histogram against a reference histogram with the same bins."""
    if window.bins != reference.bins:
        raise ValueError("the window was not binned with the reference's bins")
    terms = psi_terms(reference.counts, window.counts, empty)
    return PsiResult(float(terms.sum()), terms, reference.proportions(), window.proportions(),
                     window.total, window.unseen, window.missing, window.bins.labels())


# -- label drift -----------------------------------------------------------------------------

def wilson_interval(positives: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``(0, 1)`` when total is 0)."""
    if total <= 0:
        return 0.0, 1.0
    low, high = intervals.wilson_interval(positives, total, stats.norm.isf((1 - confidence) / 2))
    return float(low), float(high)


@dataclass(frozen=True)
class RateChange:
    """A window's positive rate against the reference's, with intervals."""

    reference_rate: float
    window_rate: float
    window_interval: tuple[float, float]  # Wilson
    difference: float  # window - reference
    difference_interval: tuple[float, float]  # Newcombe's hybrid score interval
    p_value: float  # two-proportion z-test, pooled
    window_labels: int  # labelled outcomes in the window

    def summary(self) -> str:
        lo, hi = self.window_interval
        return (f"positive rate {self.window_rate:.2%} [{lo:.2%}, {hi:.2%}] vs "
                f"{self.reference_rate:.2%} in reference")


def positive_rate_change(reference: Histogram, window: Histogram,
                         confidence: float = 0.95) -> RateChange:
    """Compare positive rates of two label histograms (missing labels left out)."""
    (r_neg, r_pos), (w_neg, w_pos) = reference.counts[:2], window.counts[:2]
    r_n, w_n = int(r_neg + r_pos), int(w_neg + w_pos)
    r_rate, w_rate = r_pos / max(r_n, 1), w_pos / max(w_n, 1)
    r_lo, r_hi = wilson_interval(int(r_pos), r_n, confidence)
    w_lo, w_hi = wilson_interval(int(w_pos), w_n, confidence)
    diff = w_rate - r_rate
    interval = (diff - np.sqrt((w_rate - w_lo) ** 2 + (r_hi - r_rate) ** 2),
                diff + np.sqrt((w_hi - w_rate) ** 2 + (r_rate - r_lo) ** 2))
    pooled = (r_pos + w_pos) / max(r_n + w_n, 1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / max(r_n, 1) + 1 / max(w_n, 1)))
    p_value = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else 1.0
    return RateChange(float(r_rate), float(w_rate), (w_lo, w_hi), float(diff),
                      (float(interval[0]), float(interval[1])), p_value, w_n)


# -- calibration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """A subject's critical PSI for windows of ``window`` outcomes at false-alarm rate
    ``alpha`` per evaluation, and how it was found."""

    critical: float
    method: str  # exact | simulation | simulation-tail | chi2 | none
    chi2: float  # the chi-square approximation, for comparison
    alpha: float
    window: int
    bins: int  # bins with reference mass


def chi2_critical(reference_counts: ArrayLike, window: int, alpha: float) -> float:
    """``chi2.isf(alpha, k - 1) * (1/n + 1/M)``: the two-sample chi-square approximation."""
    counts = np.asarray(reference_counts, dtype=np.int64)
    k, m = int(np.count_nonzero(counts)), int(counts.sum())
    if k <= 1:
        return 0.0  # a constant reference: under the null every window is identical to it
    return float(stats.chi2.isf(alpha, k - 1) * (1 / window + 1 / m))


def simulate_null_psi(reference_counts: ArrayLike, window: int, draws: int, seed: Seed = 0,
                      empty: float = HALF_COUNT) -> np.ndarray:
    """PSI of `draws` windows of `window` outcomes sampled from the reference proportions,
    each against a multinomial resample of the reference (so the reference's own sampling
    noise is included). Seeded: the same arguments give the same draws."""
    counts = np.asarray(reference_counts, dtype=np.int64)
    m = int(counts.sum())
    p = counts[counts > 0] / m  # bins the null never fills contribute 0 on both sides
    rng = np.random.default_rng(seed)
    refs = rng.multinomial(m, p, size=min(draws, _REFERENCE_POOL))
    out = np.empty(draws)
    for start in range(0, draws, _CHUNK):
        stop = min(start + _CHUNK, draws)
        windows = rng.multinomial(window, p, size=stop - start)
        ref = refs[np.arange(start, stop) % len(refs)]
        out[start:stop] = _terms(ref, m, windows, window, empty).sum(axis=1)
    return out


def calibrate(reference_counts: ArrayLike, window: int, alpha: float, *,
              method: str = SIMULATION, draws: int = 100_000, seed: Seed = 0,
              empty: float = HALF_COUNT) -> Calibration:
    """The critical PSI exceeded with probability at most `alpha` by a window from the
    reference.

    ``method="simulation"`` (the default) uses the null distribution of PSI under the reference
    multinomial: enumerated exactly when a window has at most 200,000 possible bin counts (two or
    three bins, e.g. the label; method reported as ``exact``), otherwise `simulate_null_psi`,
    whose ``1 - alpha`` quantile is taken when at least 50 draws lie beyond it (``simulation``)
    and otherwise extrapolated from its tail (``simulation-tail``, see `_tail_fit`); simulated
    values are never below the chi-square one. ``"chi2"``: `chi2_critical`. ``"none"``: 0,
    i.e. thresholds taken one by one (for comparison only).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    counts = np.asarray(reference_counts, dtype=np.int64)
    k = int(np.count_nonzero(counts))
    approx = chi2_critical(counts, window, alpha)
    if method == NONE:
        return Calibration(0.0, NONE, approx, alpha, window, k)
    if method == CHI2 or k <= 1:
        return Calibration(approx, CHI2, approx, alpha, window, k)
    if method != SIMULATION:
        raise ValueError(f"unknown calibration method {method!r}")
    if math.comb(window + k - 1, k - 1) <= _EXACT_LIMIT:
        found = _exact_critical(counts, window, alpha, seed, empty)
        return Calibration(_above(found), EXACT, approx, alpha, window, k)
    if draws * _FIT_LEVEL < _TAIL_DRAWS:
        raise ValueError(f"draws must be >= {int(_TAIL_DRAWS / _FIT_LEVEL)}, got {draws}")
    null = simulate_null_psi(counts, window, draws, seed, empty)
    if alpha * draws >= _TAIL_DRAWS:
        found, used = float(np.quantile(null, 1 - alpha)), SIMULATION
    else:
        found, used = _tail_fit(null, alpha), SIMULATION_TAIL
    return Calibration(_above(max(found, approx)), used, approx, alpha, window, k)


def _above(critical: float) -> float:
    """Just above `critical`: PSI takes discrete values, and a window landing exactly on the
    critical one must not alarm through a rounding difference."""
    return critical * (1 + 1e-9) + 1e-15


def _exact_critical(counts: np.ndarray, window: int, alpha: float, seed: Seed,
                    empty: float) -> float:
    """The smallest attainable PSI ``c`` with ``P(PSI > c) <= alpha``, every possible window
    weighted by its multinomial probability under the reference proportions and averaged over
    multinomial resamples of the reference (as in `simulate_null_psi`)."""
    m = int(counts.sum())
    p = counts[counts > 0] / m
    windows = _compositions(window, len(p))
    log_pmf = (special.gammaln(window + 1) - special.gammaln(windows + 1).sum(axis=1)
               + (windows * np.log(p)).sum(axis=1))
    n_refs = max(1, min(_REFERENCE_POOL, _EXACT_LIMIT * 10 // len(windows)))
    refs = np.random.default_rng(seed).multinomial(m, p, size=n_refs)
    values = np.concatenate([_terms(ref, m, windows, window, empty).sum(axis=1) for ref in refs])
    weights = np.tile(np.exp(log_pmf), n_refs) / n_refs
    order = np.argsort(-values, kind="stable")
    beyond = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(beyond, alpha, side="right")])


def _compositions(n: int, k: int) -> np.ndarray:
    """Every vector of `k` non-negative integers summing to `n`, one per row."""
    rows = np.zeros((1, 0), np.int64)
    remaining = np.array([n], np.int64)
    for _ in range(k - 1):
        reps = remaining + 1
        parent = np.repeat(np.arange(len(rows)), reps)
        value = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        rows = np.column_stack([rows[parent], value])
        remaining = remaining[parent] - value
    return np.column_stack([rows, remaining])


def _tail_fit(null: np.ndarray, alpha: float) -> float:
    """Extrapolate the null's upper tail from its 1% quantile and the quantile with 50 draws
    beyond it, two ways, and keep the larger: a scaled chi-square ``c * chi2(d)`` through both
    (the shape of PSI's limit) and an exponential tail (log-linear survival) through both."""
    far = _TAIL_DRAWS / len(null)
    q_near, q_far = np.quantile(null, [1 - _FIT_LEVEL, 1 - far])
    if not q_far > q_near > 0:
        return float(null.max())
    exponential = q_far + (q_far - q_near) * np.log(far / alpha) / np.log(_FIT_LEVEL / far)

    def gap(d: float) -> float:
        return stats.chi2.isf(far, d) / stats.chi2.isf(_FIT_LEVEL, d) - q_far / q_near

    try:
        d = optimize.brentq(gap, 1e-2, 1e4)
    except ValueError:  # a ratio no chi-square has
        return float(exponential)
    scale = q_near / stats.chi2.isf(_FIT_LEVEL, d)
    return float(max(exponential, scale * stats.chi2.isf(alpha, d)))


# -- the monitor -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    """User thresholds on PSI: ``warn`` and ``drift`` severities."""

    warn: float = 0.1
    drift: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.warn <= self.drift:
            raise ValueError(f"need 0 <= warn <= drift, got {self.warn}, {self.drift}")


@dataclass(frozen=True)
class MonitorSettings:
    """How a `PsiMonitor` windows, calibrates and de-duplicates. Units are outcomes."""

    window: int = 5_000  # outcomes per evaluated window
    hop: int = 1_000  # outcomes between evaluations; a divisor of window (= window: tumbling)
    thresholds: Thresholds = Thresholds()
    overrides: Mapping[str, Thresholds] = field(default_factory=dict)  # per subject
    false_alarm_every: float = 10_000_000  # expected outcomes between false alarms, all subjects
    budget_share: float = 1.0  # this monitor's share of that budget (1/partitions, 1/detectors)
    rearm_after: int = 3  # consecutive evaluations below warn before a subject re-arms
    calibration: str = SIMULATION  # simulation | chi2 | none
    draws: int = 100_000  # simulated null windows per subject
    seed: int = 0
    empty: float = HALF_COUNT

    def __post_init__(self) -> None:
        if self.window < 1 or self.hop < 1 or self.window % self.hop:
            raise ValueError(f"hop ({self.hop}) must divide window ({self.window})")
        if self.rearm_after < 1 or self.false_alarm_every <= 0 or not 0 < self.budget_share <= 1:
            raise ValueError("need rearm_after >= 1, false_alarm_every > 0, 0 < budget_share <= 1")


@dataclass(frozen=True)
class DriftEvent:
    """One alarm: a subject's window drifted from the reference."""

    subject: str
    kind: str  # feature | score | slice | label
    severity: str  # warn | drift
    statistic: float  # PSI of the window
    threshold: float  # the user threshold crossed
    critical: float  # the calibrated critical value, also exceeded
    window_start_ms: int  # earliest event time among the window's outcomes
    window_end_ms: int  # latest
    first_outcome: int  # stream positions (0-based) of the window's first and last outcome
    last_outcome: int
    unseen: int  # window outcomes with a category absent from training
    missing: int
    summary: str


@dataclass(frozen=True)
class MonitorBatch:
    """What one `PsiMonitor.update` produced."""

    events: list[DriftEvent]
    state_delta: dict[str, np.ndarray]  # the whole state (small): restore takes the last one


class PsiMonitor:
    """Windowed PSI of every subject of a reference profile, with calibrated, de-duplicated
    alarms. Pure: columns and event times in, events and a state delta out."""

    def __init__(self, profile: ReferenceProfile, settings: MonitorSettings | None = None) -> None:
        settings = settings or MonitorSettings()
        unknown = sorted(set(settings.overrides) - set(profile.names))
        if unknown:
            raise ValueError(f"thresholds given for unknown subjects: {unknown}")
        if len(profile) == 0:
            raise ValueError("the profile has no subjects")
        self.profile = profile
        self.settings = settings
        self._subjects = list(profile)
        self._blocks_n = settings.window // settings.hop
        sizes = [s.histogram.bins.n_bins for s in self._subjects]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._width = int(self._offsets[-1])
        self._reference = np.concatenate([s.histogram.counts for s in self._subjects])
        self._reference_total = np.repeat([s.histogram.total for s in self._subjects], sizes)
        if np.any(self._reference_total <= 0):
            raise ValueError("every subject needs a non-empty reference")
        limits = [settings.overrides.get(s.name, settings.thresholds) for s in self._subjects]
        self._warn = np.array([t.warn for t in limits])
        self._drift = np.array([t.drift for t in limits])
        self.alpha = settings.hop * settings.budget_share / (
            len(self._subjects) * settings.false_alarm_every)
        if not self.alpha < 1:
            raise ValueError(f"false-alarm budget gives alpha {self.alpha} per evaluation")
        self.calibrations = {
            s.name: _calibration(s.histogram.counts.tobytes(), settings.window, self.alpha,
                                 settings.calibration, settings.draws, settings.seed,
                                 settings.empty)
            for s in self._subjects}
        self._critical = np.array([self.calibrations[s.name].critical for s in self._subjects])
        self._fingerprint = profile.fingerprint()
        self._reset()

    def _reset(self) -> None:
        n_subjects = len(self._subjects)
        self._seen = 0
        self._blocks = np.zeros((self._blocks_n, self._width), np.int64)
        self._block_min = np.full(self._blocks_n, _EMPTY_MIN, np.int64)
        self._block_max = np.full(self._blocks_n, _EMPTY_MAX, np.int64)
        self._raised = np.zeros(n_subjects, np.int8)  # level reported in the current episode
        self._calm = np.zeros(n_subjects, np.int64)  # evaluations below warn since then
        self._last = np.full(n_subjects, np.nan)  # PSI at the last evaluation

    # -- reads ---------------------------------------------------------------------------------

    @property
    def subjects(self) -> list[str]:
        return [s.name for s in self._subjects]

    @property
    def seen(self) -> int:
        """Outcomes counted so far."""
        return self._seen

    def latest(self) -> dict[str, float]:
        """Each subject's PSI at the last evaluation (NaN before the first full window)."""
        return {s.name: float(v) for s, v in zip(self._subjects, self._last, strict=True)}

    def alarming(self) -> list[str]:
        """Subjects in an open episode (alarmed, not yet re-armed)."""
        return [s.name for s, r in zip(self._subjects, self._raised, strict=True) if r > 0]

    # -- the stream ----------------------------------------------------------------------------

    def update(self, columns: Mapping[str, ArrayLike], event_time_ms: ArrayLike) -> MonitorBatch:
        """Count a batch of outcomes (one column per subject, in outcome order) and evaluate
        every window that closes inside it."""
        times = np.asarray(event_time_ms, dtype=np.int64).ravel()
        n, hop = len(times), self.settings.hop
        events: list[DriftEvent] = []
        if n == 0:
            return MonitorBatch(events, self.snapshot())
        codes = np.empty((len(self._subjects), n), np.int64)
        for i, s in enumerate(self._subjects):
            if s.name not in columns:
                raise KeyError(f"the batch has no column for subject {s.name!r}")
            index = s.histogram.bins.index(columns[s.name])
            if len(index) != n:
                raise ValueError(f"column {s.name!r} has {len(index)} values for {n} outcomes")
            codes[i] = index + self._offsets[i]
        first_block = self._seen // hop
        block = (self._seen + np.arange(n)) // hop - first_block  # 0 .. pieces-1, sorted
        pieces = int(block[-1]) + 1
        counts = np.bincount((block * self._width + codes).ravel(),
                             minlength=pieces * self._width).reshape(pieces, self._width)
        starts = np.searchsorted(block, np.arange(pieces))
        low, high = np.minimum.reduceat(times, starts), np.maximum.reduceat(times, starts)
        end = self._seen + n
        for j in range(pieces):
            b = first_block + j
            slot = b % self._blocks_n
            self._blocks[slot] += counts[j]
            self._block_min[slot] = min(self._block_min[slot], low[j])
            self._block_max[slot] = max(self._block_max[slot], high[j])
            if end >= (b + 1) * hop:  # block b is complete
                if (b + 1) * hop >= self.settings.window:
                    events.extend(self._evaluate((b + 1) * hop))
                following = (b + 1) % self._blocks_n  # the oldest block leaves the window
                self._blocks[following] = 0
                self._block_min[following] = _EMPTY_MIN
                self._block_max[following] = _EMPTY_MAX
        self._seen = end
        return MonitorBatch(events, self.snapshot())

    def _evaluate(self, end: int) -> list[DriftEvent]:
        """Evaluate the window of outcomes ``end - window .. end - 1``: O(bins)."""
        window = self.settings.window
        counts = self._blocks.sum(axis=0)
        terms = _terms(self._reference, self._reference_total, counts, window,
                       self.settings.empty)
        stat = np.add.reduceat(terms, self._offsets[:-1])
        self._last = stat
        level = np.where(stat > np.maximum(self._drift, self._critical), 2,
                         np.where(stat > np.maximum(self._warn, self._critical), 1, 0))
        rising = level > self._raised
        episode = (self._raised > 0) & ~rising
        self._calm = np.where(episode & (stat < self._warn), self._calm + 1, 0)
        rearm = episode & (self._calm >= self.settings.rearm_after)
        self._raised = np.where(rearm, 0, np.maximum(self._raised, level)).astype(np.int8)
        self._calm[rearm] = 0
        span = (int(self._block_min.min()), int(self._block_max.max()), end - window, end - 1)
        return [self._event(int(i), int(level[i]), float(stat[i]), counts, span)
                for i in np.flatnonzero(rising)]

    def _event(self, i: int, level: int, stat: float, counts: np.ndarray,
               span: tuple[int, int, int, int]) -> DriftEvent:
        s = self._subjects[i]
        window = Histogram(s.histogram.bins, counts[self._offsets[i]:self._offsets[i + 1]])
        result = compare(s.histogram, window, self.settings.empty)
        severity = SEVERITIES[level]
        threshold = float(self._drift[i] if level == 2 else self._warn[i])
        critical = float(self._critical[i])
        start_ms, end_ms, first, last = span
        summary = (f"{s.name} ({s.kind}) {severity}: PSI {stat:.3f} > {threshold:g} "
                   f"(critical {critical:.3f}) over outcomes {first}-{last}; largest change "
                   f"{result.largest_change()}")
        if result.unseen:
            summary += f"; {result.unseen} unseen ({result.unseen / result.n:.1%})"
        if s.kind == LABEL:
            summary += "; " + positive_rate_change(s.histogram, window).summary()
        return DriftEvent(s.name, s.kind, severity, stat, threshold, critical, start_ms, end_ms,
                          first, last, result.unseen, result.missing, summary)

    # -- state ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, np.ndarray]:
        """The whole state as plain arrays (``np.savez`` without pickle); a few KB."""
        return {
            "profile": np.array([self._fingerprint]),
            "subjects": np.array(self.subjects, dtype=str),
            "window": np.array([self.settings.window], np.int64),
            "hop": np.array([self.settings.hop], np.int64),
            "seen": np.array([self._seen], np.int64),
            "blocks": self._blocks.copy(),
            "block_min_ms": self._block_min.copy(),
            "block_max_ms": self._block_max.copy(),
            "raised": self._raised.copy(),
            "calm": self._calm.copy(),
            "last_psi": np.array(self._last, np.float64),
        }

    @classmethod
    def restore(cls, profile: ReferenceProfile, log: Sequence[Mapping[str, np.ndarray]],
                settings: MonitorSettings | None = None) -> PsiMonitor:
        """Rebuild from a store log (a snapshot followed by deltas). Every delta is a whole
        state, so the last entry wins. The profile, subjects and windowing must match."""
        monitor = cls(profile, settings)
        settings = monitor.settings
        if not log:
            return monitor
        state = log[-1]
        expected = {"profile": monitor._fingerprint, "subjects": monitor.subjects,
                    "window": settings.window, "hop": settings.hop}
        found = {"profile": str(state["profile"][0]),
                 "subjects": [str(x) for x in state["subjects"]],
                 "window": int(state["window"][0]), "hop": int(state["hop"][0])}
        for key, value in expected.items():
            if found[key] != value:
                raise ValueError(f"monitor state has {key} {found[key]!r}, expected {value!r}")
        monitor._seen = int(state["seen"][0])
        monitor._blocks = np.array(state["blocks"], np.int64)
        monitor._block_min = np.array(state["block_min_ms"], np.int64)
        monitor._block_max = np.array(state["block_max_ms"], np.int64)
        monitor._raised = np.array(state["raised"], np.int8)
        monitor._calm = np.array(state["calm"], np.int64)
        monitor._last = np.array(state["last_psi"], np.float64)
        return monitor


@functools.lru_cache(maxsize=1024)
def _calibration(counts: bytes, window: int, alpha: float, method: str, draws: int, seed: int,
                 empty: float) -> Calibration:
    """`calibrate` for a monitor, seeded by the reference counts: subjects with equal counts
    (and monitors rebuilt on restore) share one deterministic result, computed once."""
    reference = np.frombuffer(counts, dtype=np.int64)
    return calibrate(reference, window, alpha, method=method, draws=draws,
                     seed=[seed, zlib.crc32(counts)], empty=empty)
