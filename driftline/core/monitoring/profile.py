"""Reference profiles: the binned picture of a model's training data that drift is measured against.

A profile is computed once, when a model version is registered, and stored beside it as JSON
(``reference_profile.json``, see ``driftline.core.registry``). It holds one reference histogram
per *subject*: every numeric model input (kind ``feature``), the ``score``, every slice attribute
(kind ``slice``) and the ``label``. Windows of live outcomes are counted into the very same bins,
so comparing a window with the reference costs O(bins), never a pass over history, and counts
taken on several partitions or batches simply add (`Histogram.merge`). Bins (full text in
``docs/data-drift.md``):

* **numeric** (`NumericBins`): interior edges at the training quantiles ``1/k .. (k-1)/k``
  (``method="inverted_cdf"``, so every edge is a training value). Bins are right-closed,
  ``(-inf, e0], (e0, e1], ..., (e_last, inf)``; the outer bins are open-ended, so values outside
  the training range still land somewhere. Tied quantiles collapse into one edge, and an edge
  equal to the training maximum is dropped, so no bin is empty in training. NaN and None go to a
  separate ``missing`` bin. Edges come from finite values only; +-inf land in the outer bins.
* **categorical** (`CategoricalBins`): one bin per frequent training category (at most
  ``max_categories``, each at least ``min_share`` of the non-missing values), one ``other`` bin
  pooling the rarer training categories, one ``unseen`` bin for categories absent from training
  (reference count 0, so any live mass there is counted and reported) and one ``missing`` bin
  (None, NaN or the empty string).
* **label** (`LabelBins`): ``negative``, ``positive``, ``missing``; labels are 0/1 or booleans.

>>> profile = ReferenceProfile.from_columns(
...     {"amount": np.arange(100.0)}, slices={"channel": ["pos"] * 70 + ["atm"] * 30},
...     label=[0] * 90 + [1] * 10, bins=4)
>>> profile["amount"].histogram.bins.edges
(24.0, 49.0, 74.0)
>>> profile["amount"].histogram.counts.tolist()  # 4 value bins, then missing
[25, 25, 25, 25, 0]
>>> window = profile["channel"].histogram.count(["atm", "web", None])
>>> dict(zip(window.bins.labels(), window.counts.tolist()))
{'pos': 0, 'atm': 1, 'other': 0, 'unseen': 1, 'missing': 1}
>>> ReferenceProfile.from_json(profile.to_json()) == profile
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

FORMAT = "driftline.reference_profile/1"
FEATURE, SCORE, SLICE, LABEL = "feature", "score", "slice", "label"
KINDS = (FEATURE, SCORE, SLICE, LABEL)

DEFAULT_BINS = 10
DEFAULT_MAX_CATEGORIES = 30
DEFAULT_MIN_SHARE = 0.01


class Bins(Protocol):
    """How values map to bin indices; the same object bins the reference and every window."""

    @property
    def n_bins(self) -> int: ...
    @property
    def missing_bin(self) -> int: ...
    def index(self, values: ArrayLike) -> np.ndarray:
        """The bin index (int64, ``0 .. n_bins - 1``) of each value."""
    def labels(self) -> list[str]: ...
    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class NumericBins:
    """Right-closed bins between sorted, distinct interior ``edges``, plus a missing bin."""

    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=np.float64)
        if not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
            raise ValueError(f"edges must be finite and strictly increasing, got {self.edges}")
        object.__setattr__(self, "edges", tuple(float(x) for x in e))
        object.__setattr__(self, "_edges", e)

    @classmethod
    def from_values(cls, values: ArrayLike, bins: int = DEFAULT_BINS) -> NumericBins:
        """Edges at the ``bins``-quantiles of the finite training values (ties collapse)."""
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        x = _floats(values)
        x = x[np.isfinite(x)]
        if x.size == 0:
            return cls(())
        quantiles = np.quantile(x, np.arange(1, bins) / bins, method="inverted_cdf")
        edges = np.unique(quantiles)
        return cls(tuple(edges[edges < x.max()]))

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 2

    @property
    def missing_bin(self) -> int:
        return len(self.edges) + 1

    def index(self, values: ArrayLike) -> np.ndarray:
        x = _floats(values)
        # side="left": the number of edges strictly below x, so x == e_i falls in (e_(i-1), e_i].
        idx = np.searchsorted(self._edges, x, side="left").astype(np.int64)
        idx[np.isnan(x)] = self.missing_bin
        return idx

    def labels(self) -> list[str]:
        bounds = ["-inf", *(f"{e:.6g}" for e in self.edges), "inf"]
        inner = [f"({lo}, {hi}]" for lo, hi in zip(bounds[:-2], bounds[1:-1], strict=True)]
        return [*inner, f"({bounds[-2]}, inf)", "missing"]

    def to_json(self) -> dict[str, Any]:
        return {"type": "numeric", "edges": list(self.edges)}


@dataclass(frozen=True)
class CategoricalBins:
    """One bin per known category, then ``other`` (pooled rare training categories),
    ``unseen`` (not in training) and ``missing``."""

    categories: tuple[str, ...]
    other: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        categories = tuple(str(c) for c in self.categories)
        other = tuple(str(c) for c in self.other)
        every = categories + other
        if len(set(every)) != len(every) or "" in every:
            raise ValueError("categories must be distinct, non-empty strings")
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "other", other)
        codes = np.concatenate([np.arange(len(categories)), np.full(len(other), len(categories))])
        order = np.argsort(np.asarray(every, dtype=str), kind="stable")
        object.__setattr__(self, "_names", np.asarray(every, dtype=str)[order])
        object.__setattr__(self, "_codes", codes.astype(np.int64)[order])

    @classmethod
    def from_values(cls, values: ArrayLike, max_categories: int = DEFAULT_MAX_CATEGORIES,
                    min_share: float = DEFAULT_MIN_SHARE) -> CategoricalBins:
        """Frequent categories get their own bin (most frequent first); rarer ones are pooled
        into ``other`` so that no bin has too little reference mass to be compared."""
        names, missing = _strings(values)
        names, counts = np.unique(names[~missing], return_counts=True)
        order = np.lexsort((names, -counts))  # by count descending, then by name
        names, counts = names[order], counts[order]
        own = (np.arange(len(names)) < max_categories) & (counts >= min_share * counts.sum())
        return cls(tuple(names[own].tolist()), tuple(sorted(names[~own].tolist())))

    @property
    def n_bins(self) -> int:
        return len(self.categories) + 3

    @property
    def other_bin(self) -> int:
        return len(self.categories)

    @property
    def unseen_bin(self) -> int:
        return len(self.categories) + 1

    @property
    def missing_bin(self) -> int:
        return len(self.categories) + 2

    def index(self, values: ArrayLike) -> np.ndarray:
        names, missing = _strings(values)
        idx = np.full(len(names), self.unseen_bin, dtype=np.int64)
        if len(self._names):
            pos = np.minimum(np.searchsorted(self._names, names), len(self._names) - 1)
            known = self._names[pos] == names
            idx[known] = self._codes[pos[known]]
        idx[missing] = self.missing_bin
        return idx

    def labels(self) -> list[str]:
        return [*self.categories, "other", "unseen", "missing"]

    def to_json(self) -> dict[str, Any]:
        return {"type": "categorical", "categories": list(self.categories),
                "other": list(self.other)}


@dataclass(frozen=True)
class LabelBins:
    """``negative``, ``positive``, ``missing`` for 0/1 (or boolean) labels."""

    n_bins = 3
    missing_bin = 2

    def index(self, values: ArrayLike) -> np.ndarray:
        x = _floats(values)
        missing = np.isnan(x)
        if np.any((x[~missing] != 0) & (x[~missing] != 1)):
            raise ValueError("labels must be 0 or 1 (or None for a missing label)")
        idx = np.where(missing, self.missing_bin, 0).astype(np.int64)
        idx[~missing] = x[~missing].astype(np.int64)
        return idx

    def labels(self) -> list[str]:
        return ["negative", "positive", "missing"]

    def to_json(self) -> dict[str, Any]:
        return {"type": "label"}


class Histogram:
    """Counts over fixed `Bins`. Counts are int64 and immutable; operations return new ones."""

    __slots__ = ("bins", "counts")

    def __init__(self, bins: Bins, counts: ArrayLike | None = None) -> None:
        c = np.zeros(bins.n_bins, np.int64) if counts is None else np.array(counts, np.int64)
        if c.shape != (bins.n_bins,) or np.any(c < 0):
            raise ValueError(f"need {bins.n_bins} non-negative counts, got {c.tolist()}")
        c.flags.writeable = False
        self.bins = bins
        self.counts = c

    def count(self, values: ArrayLike) -> Histogram:
        """A histogram of `values` alone over the same bins (one vectorised bincount)."""
        return Histogram(self.bins, np.bincount(self.bins.index(values),
                                                minlength=self.bins.n_bins))

    def add(self, values: ArrayLike) -> Histogram:
        """These counts plus those of `values`."""
        return self.merge(self.count(values))

    def merge(self, other: Histogram) -> Histogram:
        """The counts of both samples, which must have been binned by equal bins."""
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bins")
        return Histogram(self.bins, self.counts + other.counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def missing(self) -> int:
        return int(self.counts[self.bins.missing_bin])

    @property
    def unseen(self) -> int:
        """Values of categories never seen in training (0 for numeric and label bins)."""
        unseen_bin = getattr(self.bins, "unseen_bin", None)
        return 0 if unseen_bin is None else int(self.counts[unseen_bin])

    def proportions(self) -> np.ndarray:
        return self.counts / max(self.total, 1)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Histogram) and other.bins == self.bins
                and np.array_equal(other.counts, self.counts))

    def __repr__(self) -> str:
        return f"Histogram({self.bins!r}, {self.counts.tolist()})"


@dataclass(frozen=True)
class Subject:
    """One monitored quantity: its name, its kind and its reference histogram."""

    name: str
    kind: str
    histogram: Histogram

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown subject kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        if not self.name:
            raise ValueError("a subject needs a name")


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference histograms of one model version, in a fixed subject order."""

    subjects: tuple[Subject, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.subjects]
        if len(set(names)) != len(names):
            raise ValueError(f"subject names must be distinct, got {names}")
        for kind in (SCORE, LABEL):
            if sum(s.kind == kind for s in self.subjects) > 1:
                raise ValueError(f"a profile has at most one {kind} subject")
        object.__setattr__(self, "_by_name", {s.name: s for s in self.subjects})

    @classmethod
    def from_columns(
        cls, features: Mapping[str, ArrayLike], *, score: ArrayLike | None = None,
        slices: Mapping[str, ArrayLike] | None = None, label: ArrayLike | None = None,
        bins: int = DEFAULT_BINS, max_categories: int = DEFAULT_MAX_CATEGORIES,
        min_share: float = DEFAULT_MIN_SHARE,
    ) -> ReferenceProfile:
        """Bin and count training columns: numeric `features` and `score` on their own
        quantiles, `slices` as categories, `label` as 0/1. All columns have one row per
        training example."""
        found: list[tuple[str, str, Bins, ArrayLike]] = []
        for name, values in features.items():
            found.append((name, FEATURE, NumericBins.from_values(values, bins), values))
        if score is not None:
            found.append(("score", SCORE, NumericBins.from_values(score, bins), score))
        for name, values in (slices or {}).items():
            bins_ = CategoricalBins.from_values(values, max_categories, min_share)
            found.append((name, SLICE, bins_, values))
        if label is not None:
            found.append(("label", LABEL, LabelBins(), label))
        subjects = tuple(Subject(name, kind, Histogram(b).count(values))
                         for name, kind, b, values in found)
        rows = {s.histogram.total for s in subjects}
        if len(rows) > 1:
            raise ValueError(f"training columns differ in length: {sorted(rows)}")
        return cls(subjects)

    def __getitem__(self, name: str) -> Subject:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no subject {name!r} in the profile") from None

    def __iter__(self) -> Iterator[Subject]:
        return iter(self.subjects)

    def __len__(self) -> int:
        return len(self.subjects)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.subjects]

    @property
    def rows(self) -> int:
        """Training rows counted (every subject counts every row, missing values included)."""
        return self.subjects[0].histogram.total if self.subjects else 0

    def recount(self, columns: Mapping[str, ArrayLike]) -> ReferenceProfile:
        """The same bins with the counts of `columns` (one per subject): a window, a partition
        or a chunk of a large training set. Recounts merge into the count of their union."""
        return ReferenceProfile(tuple(
            Subject(s.name, s.kind, s.histogram.count(_column(columns, s.name)))
            for s in self.subjects))

    def merge(self, other: ReferenceProfile) -> ReferenceProfile:
        """Add the counts of a profile with the same subjects and bins."""
        if other.names != self.names:
            raise ValueError("cannot merge profiles with different subjects")
        return ReferenceProfile(tuple(
            Subject(s.name, s.kind, s.histogram.merge(o.histogram))
            for s, o in zip(self.subjects, other.subjects, strict=True)))

    def select(self, names: Sequence[str]) -> ReferenceProfile:
        """The profile restricted to `names`, in that order."""
        return ReferenceProfile(tuple(self[n] for n in names))

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored beside the model version (``json.dumps`` of it round-trips
        exactly: edges are written with Python's shortest exact float repr)."""
        return {"format": FORMAT, "subjects": [
            {"name": s.name, "kind": s.kind, "bins": s.histogram.bins.to_json(),
             "counts": s.histogram.counts.tolist()} for s in self.subjects]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a reference profile in format {FORMAT}: "
                             f"{data.get('format')!r}")
        return cls(tuple(Subject(e["name"], e["kind"], Histogram(_bins(e["bins"]), e["counts"]))
                         for e in data["subjects"]))

    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of the canonical JSON: the identity of this reference."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _bins(spec: Mapping[str, Any]) -> Bins:
    kind = spec.get("type")
    if kind == "numeric":
        return NumericBins(tuple(spec["edges"]))
    if kind == "categorical":
        return CategoricalBins(tuple(spec["categories"]), tuple(spec.get("other", ())))
    if kind == "label":
        return LabelBins()
    raise ValueError(f"unknown bins type {kind!r}")


def _column(columns: Mapping[str, ArrayLike], name: str) -> ArrayLike:
    try:
        return columns[name]
    except KeyError:
        raise KeyError(f"no column for subject {name!r}") from None


def _floats(values: ArrayLike) -> np.ndarray:
    """A 1-d float64 array; None becomes NaN."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d column, got shape {arr.shape}")
    if arr.dtype == object:
        return np.array([np.nan if v is None else float(v) for v in arr], dtype=np.float64)
    return arr.astype(np.float64, copy=False)


def _strings(values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """A 1-d unicode array and its missing mask (None, NaN or the empty string)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d column, got shape {arr.shape}")
    if arr.dtype == object or arr.dtype.kind == "f":
        arr = np.array(["" if v is None or (isinstance(v, float) and v != v) else str(v)
                        for v in arr.tolist()], dtype=str)
    else:
        arr = arr.astype(str)
    return arr, arr == ""
