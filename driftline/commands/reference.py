"""`driftline reference …`: show a model version's reference profile, or rebase it on recent data.

``reference show [--model NAME] [--version V] [--json]`` prints the subjects of the profile the
monitor compares live data with (default: the Production version's): kind, rows, bins and where
the bulk of each lies (median bin, most frequent category, positive rate).

``reference rebase [--model NAME] --last N [--json]`` is for a change a user has *accepted*
(a new market, a pricing change): the Production version's profile becomes that of the last N
rows, by event time, of its feature view in the offline store (``offline/features/view=…``),
and drift is measured against the new normal from then on. The new profile has the subjects a
registration would give it (``driftline.commands.training.reference_profile``):

* **features**: the rows' values in the model's input order, as served (NaN where undefined);
  only rows of the model's ``view_version`` count, newer rows of other versions are skipped and
  counted in the output;
* **score**: recomputed with the version's own ONNX model over those values;
* **slices**: the rows' slice columns (the slice subjects of the current profile, else the
  view's slices);
* **label**: the labels the monitor joined to those events (``offline/outcomes``, this model's
  outcomes only), counted over the labelled rows, when at least ``--min-rows`` of them are
  labelled; otherwise (labels arrive late, the newest events rarely have one yet) the current
  profile's label subject is kept unchanged, and the output says so. ``--keep-label`` always
  keeps it.

**Bins are recomputed** from the accepted rows (their quantiles, the same ``--bins`` a
registration uses) rather than the old edges recounted (``ReferenceProfile.recount``). Rebasing
accepts the new distribution as the reference, and the quantile bins are what make a reference
work: each holds about 1/k of it, so PSI sees a change anywhere in the distribution and the
calibration (``docs/data-drift.md``) has mass in every bin. Recounted into the old edges, a
shifted distribution piles into one or two bins (often an open-ended outer one), where a further
change is invisible. The price is that PSI values before and after the rebase are not on the
same bins; the monitor starts fresh windows for a version whose profile changed anyway (its
state is tied to the profile's fingerprint).

Refused, with exit code 2: a model without a Production version, ``--last`` below
``--min-rows``, a view with no rows in the offline store, or fewer than ``--min-rows`` rows of the
model's view version. The profile is replaced atomically with
``ModelRegistry.replace_reference_profile``; the one it replaces is kept beside it as
``reference_profile.previous.json``. A running monitor reads a version's profile once and keeps
it: restart it (or let it be restarted) to compare against the rebased one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from driftline.core.monitoring.profile import (
    DEFAULT_BINS,
    FEATURE,
    LABEL,
    SCORE,
    SLICE,
    Histogram,
    LabelBins,
    ReferenceProfile,
    Subject,
)
from driftline.core.registry import (
    PREVIOUS_PROFILE_FILE,
    ModelRegistry,
    ModelVersion,
    RegistryError,
)
from driftline.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

    from driftline.adapters.offline_store import OfflineStore

# pyarrow (and with it the offline store) is imported where it is used: every `driftline`
# command imports this module to build its parser, and pyarrow.dataset alone takes 0.2 s.

DEFAULT_MIN_ROWS = 1_000
WINDOW_FACTOR = 10  # docs/data-drift.md: keep the reference >= 10x the monitor's window

# Where the label subject of a rebased profile came from.
FROM_OUTCOMES, KEPT, NO_LABEL = "outcomes", "kept", "none"


class Refused(ValueError):
    """A `reference` command that cannot be carried out; the message says why (exit code 2)."""


# -- reading the offline store ---------------------------------------------------------------

@dataclass(frozen=True)
class OfflineRows:
    """The newest offline rows of one view version, in (event_time, partition, offset) order."""

    event_id: np.ndarray  # object (str)
    event_time_ms: np.ndarray  # int64
    features: np.ndarray  # float64 (rows, inputs), NaN where undefined
    slices: dict[str, np.ndarray]  # object (str, None where missing) per slice name
    available: int  # rows of the view version read (all of them when fewer than asked for)
    skipped: int  # rows of other view versions at or after the oldest row taken
    skipped_versions: tuple[str, ...]


def last_rows(store: OfflineStore, view: str, view_version: str, inputs: Sequence[str],
              slice_names: Sequence[str], n: int) -> OfflineRows:
    """The last `n` rows by event time of `view` whose ``view_version`` is `view_version`.

    Published files only (as `OfflineStore.read`), read day by day from the newest: rows are
    filed by event date, so once the days read hold `n` matching rows no older day can hold one
    of the last `n`. Ties in event time are broken by (partition, offset)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = store.features_dir(view)
    days = store.published_days(base)
    if not days:
        raise Refused(f"view {view} has no rows in the offline store ({base})")
    wanted = ["event_id", "event_time", "partition", "offset", *slice_names, *inputs]
    parts: list[dict[str, Any]] = []
    others_time: list[np.ndarray] = []
    others_version: list[np.ndarray] = []
    available = 0
    for day in days:
        for path in sorted(day.glob("*.parquet")):
            names = set(pq.read_schema(path).names)
            table = pq.read_table(path, columns=[c for c in ["view_version", *wanted]
                                                 if c in names])
            versions = (table.column("view_version").cast(pa.string()).to_numpy(
                zero_copy_only=False) if "view_version" in names
                else np.full(table.num_rows, None, dtype=object))
            mine = versions == view_version
            others_time.append(table.column("event_time").to_numpy()[~mine].astype(np.int64))
            others_version.append(np.asarray(versions[~mine], dtype=object))
            if not mine.any():
                continue
            missing = [c for c in wanted if c not in names]
            if missing:
                raise Refused(f"{path} holds rows of {view}@{view_version} without the columns "
                              f"{', '.join(missing)}")
            parts.append(_columns(table.filter(pa.array(mine)), inputs, slice_names))
            available += int(mine.sum())
        if available >= n:
            break
    if not parts:
        found = sorted({str(v) for a in others_version for v in a})
        raise Refused(f"view {view} has no offline rows of version {view_version} "
                      f"(found versions: {', '.join(found) or 'none'}) in {base}")
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "slices"}
    slices = {s: np.concatenate([p["slices"][s] for p in parts]) for s in slice_names}
    order = np.lexsort((rows["offset"], rows["partition"], rows["event_time"]))[-n:]
    times = rows["event_time"][order]
    later = np.concatenate(others_time) >= times[0]
    versions = np.concatenate(others_version)[later]
    return OfflineRows(
        event_id=rows["event_id"][order], event_time_ms=times,
        features=rows["features"][order], slices={s: v[order] for s, v in slices.items()},
        available=available, skipped=int(later.sum()),
        skipped_versions=tuple(sorted({str(v) for v in versions})))


def _columns(table: pa.Table, inputs: Sequence[str], slice_names: Sequence[str]) -> dict:
    import pyarrow as pa

    def floats(name: str) -> np.ndarray:
        return table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)

    features = np.empty((table.num_rows, len(inputs)), dtype=np.float64)
    for j, name in enumerate(inputs):
        features[:, j] = floats(name)
    return {
        "event_id": table.column("event_id").cast(pa.string()).to_numpy(zero_copy_only=False),
        "event_time": table.column("event_time").cast(pa.int64()).to_numpy(),
        "partition": table.column("partition").cast(pa.int64()).to_numpy(),
        "offset": table.column("offset").cast(pa.int64()).to_numpy(),
        "features": features,
        "slices": {s: table.column(s).cast(pa.string()).to_numpy(zero_copy_only=False)
                   for s in slice_names},
    }


def outcome_labels(store: OfflineStore, model_name: str, event_ids: np.ndarray,
                   since_ms: int) -> np.ndarray:
    """The label the monitor joined to each of `event_ids` for `model_name` (float64, NaN where
    there is none yet), from the published outcomes filed on or after `since_ms`'s date.

    Outcomes are filed by the event's date, so older days cannot hold these events. Should an
    event have several outcomes, the one with the earliest ``label_time`` counts (the join's own
    rule: the first label of an event is *the* label)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from driftline.adapters.offline_store import day_of

    first_day = f"date={day_of(since_ms)}"
    wanted = pa.array(np.unique(event_ids.astype(str)), type=pa.string())
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    times: list[np.ndarray] = []
    for base in store.outcomes_dirs():
        for day in store.published_days(base):
            if day.name < first_day:
                continue
            for path in sorted(day.glob("*.parquet")):
                names = set(pq.read_schema(path).names)
                if not {"event_id", "label"} <= names:
                    continue
                columns = [c for c in ("event_id", "label", "label_time", "model_name")
                           if c in names]
                table = pq.read_table(path, columns=columns)
                keep = pc.is_in(table.column("event_id").cast(pa.string()), value_set=wanted)
                if "model_name" in names:
                    keep = pc.and_(keep, pc.equal(table.column("model_name"), model_name))
                table = table.filter(pc.fill_null(keep, False))
                ids.append(table.column("event_id").cast(pa.string()).to_numpy(
                    zero_copy_only=False))
                labels.append(table.column("label").cast(pa.float64()).to_numpy(
                    zero_copy_only=False))
                times.append(table.column("label_time").cast(pa.int64()).to_numpy(
                    zero_copy_only=False) if "label_time" in names
                    else np.zeros(table.num_rows, np.int64))
    out = np.full(len(event_ids), np.nan)
    if not ids:
        return out
    found_ids, found_labels = np.concatenate(ids), np.concatenate(labels)
    first: dict[str, float] = {}
    for i in np.argsort(np.concatenate(times), kind="stable"):
        first.setdefault(found_ids[i], found_labels[i])
    for i, event_id in enumerate(event_ids.tolist()):
        out[i] = first.get(event_id, np.nan)
    return out


# -- the rebase --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rebase:
    """A computed rebase: the old and new profiles and how the new one was made."""

    model: ModelVersion
    old: ReferenceProfile | None
    new: ReferenceProfile
    rows: OfflineRows
    requested: int
    label_source: str  # FROM_OUTCOMES, KEPT or NO_LABEL
    labelled: int  # rows of the new profile with a label in the outcomes
    values: dict[str, np.ndarray]  # the new data per subject (the label: labelled rows only)
    notes: list[str] = field(default_factory=list)


def compute_rebase(registry: ModelRegistry, store: OfflineStore, name: str, last: int, *,
                   min_rows: int = DEFAULT_MIN_ROWS, bins: int = DEFAULT_BINS,
                   keep_label: bool = False,
                   view_slices: Sequence[str] | None = None) -> Rebase:
    """The Production version of `name` and its profile rebased on the last `last` rows.

    `view_slices` are the slice names used when the version has no current profile to take its
    slice subjects from. Nothing is written (see `write_rebase`)."""
    if last < 1 or min_rows < 1 or bins < 1:
        raise Refused(f"--last ({last}), --min-rows ({min_rows}) and --bins ({bins}) must be "
                      "positive")
    if last < min_rows:
        raise Refused(f"--last {last} is below --min-rows {min_rows}: a reference from so few "
                      "rows would be mostly noise (lower --min-rows to insist)")
    model = registry.production(name)
    if model is None:
        known = registry.models()
        raise Refused(f"model {name!r} has no Production version" if name in known else
                      f"unknown model {name!r} (registered: {', '.join(known) or 'none'})")
    raw = registry.reference_profile(name, model.version)
    old = None if raw is None else ReferenceProfile.from_json(raw)
    slice_names = tuple(s.name for s in old if s.kind == SLICE) if old is not None \
        else tuple(view_slices or ())
    rows = last_rows(store, model.view, model.view_version, model.inputs, slice_names, last)
    taken = len(rows.event_time_ms)
    if taken < min_rows:
        raise Refused(f"only {taken} offline rows of {model.view}@{model.view_version} "
                      f"(fewer than --min-rows {min_rows})")

    from driftline.adapters.onnx_model import load_session, predict_scores

    scores = predict_scores(load_session(registry.model_bytes(name, model.version)),
                            rows.features)
    features = {n: rows.features[:, j] for j, n in enumerate(model.inputs)}
    new = ReferenceProfile.from_columns(features, score=scores, slices=rows.slices, bins=bins)
    values: dict[str, np.ndarray] = {**features, "score": scores, **rows.slices}

    labels = outcome_labels(store, name, rows.event_id, int(rows.event_time_ms[0]))
    labelled = int(np.count_nonzero(~np.isnan(labels)))
    old_label = old[LABEL] if old is not None and LABEL in old.names else None
    notes: list[str] = []
    if not keep_label and labelled >= min_rows:
        source = FROM_OUTCOMES
        values[LABEL] = labels[~np.isnan(labels)]
        label = Subject(LABEL, LABEL, Histogram(LabelBins()).count(values[LABEL]))
        if labelled < taken:
            notes.append(f"label: counted over the {labelled} of {taken} rows that have a "
                         "label in the outcomes")
    else:
        source = KEPT if old_label is not None else NO_LABEL
        label = old_label
        why = ("--keep-label" if keep_label else
               f"none of the {taken} rows has a label in the outcomes yet" if not labelled else
               f"{labelled} of {taken} rows have a label in the outcomes, fewer than "
               f"--min-rows {min_rows}")
        notes.append(f"label: {why}; the current label subject is kept unchanged"
                     if label is not None else f"label: {why}; no label subject (the current "
                     "profile has none)")
    if label is not None:
        new = ReferenceProfile((*new.subjects, label))
    if taken < last:
        notes.append(f"only {taken} rows of {model.view}@{model.view_version} in the offline "
                     f"store (asked for {last})")
    if rows.skipped:
        notes.append(f"skipped {rows.skipped} rows of other view versions "
                     f"({', '.join(rows.skipped_versions)}) in the same period")
    if old is not None:
        dropped = [s for s in old.names if s not in new.names]
        added = [s for s in new.names if s not in old.names]
        if dropped or added:
            notes.append(f"subjects changed: added {added or '[]'}, dropped {dropped or '[]'}")
    from driftline.core.monitoring.psi import MonitorSettings

    window = MonitorSettings().window
    if taken < WINDOW_FACTOR * window:
        notes.append(f"{taken} rows is under {WINDOW_FACTOR}x the monitor's window ({window}): "
                     "the reference's own noise adds to every PSI (docs/data-drift.md, "
                     "assumption 3)")
    return Rebase(model, old, new, rows, last, source, labelled, values, notes)


def write_rebase(registry: ModelRegistry, rebase: Rebase) -> Path:
    """Store the rebased profile (atomically); returns where the replaced one is kept."""
    model = rebase.model
    registry.replace_reference_profile(model.name, model.version, rebase.new.to_json())
    return registry.model_path(model.name, model.version).parent / PREVIOUS_PROFILE_FILE


# -- describing profiles ---------------------------------------------------------------------

def _median_bin(histogram: Histogram) -> str | None:
    """The label of the numeric bin holding the median of the non-missing values."""
    counts = np.delete(histogram.counts, histogram.bins.missing_bin)
    if counts.sum() == 0:
        return None
    i = int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
    return histogram.bins.labels()[i]


def describe_subject(subject: Subject, values: np.ndarray | None = None) -> dict[str, Any]:
    """Rows, bins and where the mass lies: the median bin (numeric; with `values`, the exact
    median too), the most frequent category (slice) or the positive rate (label)."""
    h = subject.histogram
    out: dict[str, Any] = {"name": subject.name, "kind": subject.kind, "rows": h.total,
                           "bins": h.bins.n_bins,
                           "missing": round(h.missing / h.total, 6) if h.total else None}
    if subject.kind in (FEATURE, SCORE):
        out["median_bin"] = _median_bin(h)
        if values is not None:
            finite = np.asarray(values, dtype=np.float64)
            finite = finite[~np.isnan(finite)]
            out["median"] = float(np.median(finite)) if finite.size else None
    elif subject.kind == SLICE:
        value_counts = h.counts[:len(h.bins.categories)]
        if value_counts.size and value_counts.max() > 0:
            i = int(np.argmax(value_counts))
            out["top"] = h.bins.categories[i]
            out["top_share"] = round(int(value_counts[i]) / h.total, 6)
        else:
            out["top"] = out["top_share"] = None
    elif subject.kind == LABEL:
        known = int(h.counts[0] + h.counts[1])
        out["positive_rate"] = round(int(h.counts[1]) / known, 6) if known else None
    return out


def _psi_against(old: Subject | None, values: np.ndarray | None) -> float | None:
    """PSI of the accepted data counted into the old bins: the drift the rebase accepts."""
    if old is None or values is None or len(values) == 0:
        return None
    from driftline.core.monitoring.psi import compare

    try:
        return round(compare(old.histogram, old.histogram.count(values)).psi, 6)
    except ValueError:
        return None


def rebase_report(rebase: Rebase, written: bool, previous: Path | None) -> dict[str, Any]:
    """The JSON form of a rebase, one entry per subject of the old or the new profile."""
    model, rows = rebase.model, rebase.rows
    subjects = []
    dropped = [n for n in rebase.old.names if n not in rebase.new.names] if rebase.old else []
    for name in [*rebase.new.names, *dropped]:
        old = rebase.old[name] if rebase.old is not None and name in rebase.old.names else None
        new = rebase.new[name] if name in rebase.new.names else None
        kept = name == LABEL and rebase.label_source == KEPT
        values = None if kept else rebase.values.get(name)
        subjects.append({
            "name": name, "kind": (new or old).kind,
            "old": None if old is None else describe_subject(old),
            "new": None if new is None else describe_subject(new, values),
            "kept": kept, "psi_vs_old": _psi_against(old, values)})
    return {
        "model": model.name, "version": model.version, "view": model.view,
        "view_version": model.view_version, "requested": rebase.requested,
        "rows": len(rows.event_time_ms),
        "event_time_range": [int(rows.event_time_ms[0]), int(rows.event_time_ms[-1])],
        "skipped_other_view_versions": rows.skipped,
        "label": {"source": rebase.label_source, "labelled_rows": rebase.labelled},
        "fingerprint": {"old": None if rebase.old is None else rebase.old.fingerprint(),
                        "new": rebase.new.fingerprint()},
        "written": written, "previous": None if previous is None else str(previous),
        "notes": rebase.notes, "subjects": subjects}


_WHAT = {FEATURE: "median", SCORE: "median", SLICE: "top", LABEL: "label"}


def _center(d: Mapping[str, Any] | None) -> str:
    if d is None:
        return "-"
    if d["kind"] in (FEATURE, SCORE):
        if d.get("median") is not None:
            return f"{d['median']:.6g}"
        return d.get("median_bin") or "-"
    if d["kind"] == SLICE:
        return "-" if d.get("top") is None else f"{d['top']} {d['top_share']:.1%}"
    return "-" if d.get("positive_rate") is None else f"{d['positive_rate']:.2%} positive"


def _subject_line(entry: Mapping[str, Any]) -> str:
    old, new = entry["old"], entry["new"]

    def field_(d, key):
        return "-" if d is None else str(d[key])

    line = (f"{entry['name']:<22} {entry['kind']:<7} rows {field_(old, 'rows'):>7} -> "
            f"{field_(new, 'rows'):<7} bins {field_(old, 'bins'):>3} -> {field_(new, 'bins'):<3} "
            f"{_WHAT[entry['kind']]} {_center(old)} -> {_center(new)}")
    if entry["kept"]:
        line += "  (kept)"
    elif entry["psi_vs_old"] is not None:
        line += f"  psi vs old {entry['psi_vs_old']:.3f}"
    return line


def profile_report(registry: ModelRegistry, name: str, version: int | None) -> dict[str, Any]:
    """The JSON form of ``reference show``: a version's profile, subject by subject."""
    model = registry.get(name, version) if version is not None else registry.production(name)
    if model is None:
        raise Refused(f"model {name!r} has no Production version; name one with --version"
                      if name in registry.models() else
                      f"unknown model {name!r} (registered: "
                      f"{', '.join(registry.models()) or 'none'})")
    raw = registry.reference_profile(name, model.version)
    if raw is None:
        raise Refused(f"{name} v{model.version} was registered without a reference profile")
    profile = ReferenceProfile.from_json(raw)
    previous = registry.model_path(name, model.version).parent / PREVIOUS_PROFILE_FILE
    return {"model": name, "version": model.version, "stage": model.stage,
            "view": model.view, "view_version": model.view_version, "rows": profile.rows,
            "fingerprint": profile.fingerprint(), "previous_kept": previous.exists(),
            "subjects": [{**describe_subject(s), "bin_labels": s.histogram.bins.labels(),
                          "counts": s.histogram.counts.tolist()} for s in profile]}


# -- the command ---------------------------------------------------------------------------------

def _view_slices(settings: Settings, view: str) -> tuple[str, ...]:
    from driftline.core.views import views_for

    try:
        found = views_for(settings).get(view)
    except ValueError:
        return ()
    return tuple(found.slices) if found is not None else ()


def run(args: argparse.Namespace, settings: Settings,
        out: Callable[[str], None] = print) -> int:
    """``driftline reference show|rebase``; 2 (and the reason on stderr) when refused."""
    registry = ModelRegistry(settings.data_dir / "registry")
    name = args.model or settings.model_name
    try:
        if args.action == "show":
            report = profile_report(registry, name, args.version)
            if args.json:
                out(json.dumps(report, indent=2))
                return 0
            out(f"{report['model']} v{report['version']} ({report['stage']}) reference "
                f"{report['fingerprint']}: {len(report['subjects'])} subjects, "
                f"{report['rows']} rows, view {report['view']}@{report['view_version']}"
                f"{', previous kept' if report['previous_kept'] else ''}")
            for s in report["subjects"]:
                out(f"  {s['name']:<22} {s['kind']:<7} rows {s['rows']:>7} bins "
                    f"{s['bins']:>3}  {_WHAT[s['kind']]} {_center(s)}")
            return 0
        from driftline.adapters.offline_store import OfflineStore

        store = OfflineStore(settings.data_dir / "offline")
        model = registry.production(name)
        slices = _view_slices(settings, model.view) if model is not None else ()
        rebase = compute_rebase(registry, store, name, args.last, min_rows=args.min_rows,
                                bins=args.bins, keep_label=args.keep_label, view_slices=slices)
        previous = None if args.dry_run else write_rebase(registry, rebase)
        if not args.dry_run:
            rebase.notes.append("a running monitor keeps the profile it read: restart it to "
                                "compare against this one")
        report = rebase_report(rebase, written=not args.dry_run, previous=previous)
    except (Refused, RegistryError) as exc:
        print(f"driftline reference: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out(json.dumps(report, indent=2))
        return 0
    first, last = (_iso(t) for t in report["event_time_range"])
    out(f"{report['model']} v{report['version']} ({report['view']}@{report['view_version']}): "
        f"{'rebased' if report['written'] else 'would rebase (dry run)'} on the last "
        f"{report['rows']} rows, {first} .. {last}; label: {report['label']['source']}")
    for entry in report["subjects"]:
        out("  " + _subject_line(entry))
    for note in report["notes"]:
        out(f"note: {note}")
    if report["written"]:
        out(f"written; the previous profile is kept as {report['previous']}")
    return 0


def _iso(ms: int) -> str:
    return str(np.datetime64(int(ms), "ms")) + "Z"


def add_parser(sub) -> None:
    p = sub.add_parser("reference", help="a model's reference profile (the drift baseline): "
                                         "show it, or rebase it on recent accepted data")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("show", help="subjects, kinds, rows and bins of a version's profile")
    a.add_argument("--model", default=None, help="model name (default: DRIFTLINE_MODEL_NAME)")
    a.add_argument("--version", type=int, default=None, help="default: the Production version")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser(
        "rebase", help="replace the Production version's profile with that of the last N "
                       "offline rows of its view (for a change you have accepted)")
    a.add_argument("--model", default=None, help="model name (default: DRIFTLINE_MODEL_NAME)")
    a.add_argument("--last", type=int, required=True, metavar="N",
                   help="rows to take, the newest by event time")
    a.add_argument("--min-rows", type=int, default=DEFAULT_MIN_ROWS,
                   help=f"refuse a reference of fewer rows (default {DEFAULT_MIN_ROWS}); also "
                        "the labelled rows needed to rebase the label")
    a.add_argument("--bins", type=int, default=DEFAULT_BINS,
                   help=f"quantile bins per numeric subject (default {DEFAULT_BINS}, as at "
                        "registration)")
    a.add_argument("--keep-label", action="store_true",
                   help="keep the current label subject even when the outcomes have labels")
    a.add_argument("--dry-run", action="store_true", help="compute and print, write nothing")
    a.add_argument("--json", action="store_true")
