"""`driftline reference rebase|show`: the rebased profile is exactly that of the last N offline
rows (recomputed here independently), the old one is kept, and every refusal exits with 2."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from onnx import TensorProto, helper, numpy_helper

from driftline.adapters.offline_store import OfflineStore, publish
from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.commands import cli, reference
from driftline.core.monitoring.profile import (
    Histogram,
    LabelBins,
    ReferenceProfile,
    Subject,
)
from driftline.core.registry import ModelRegistry
from driftline.settings import Settings

MODEL = "fraud"
VIEW = "txn"
VERSION = "vv1"
OTHER_VERSION = "vv0"
INPUTS = ("a", "b", "c")
SLICES = ("channel",)
T0 = 1_700_000_000_000  # 2023-11-14 22:13 UTC: the rows span four dates
MINUTE = 60_000
N_ROWS = 4_000
N_OTHER = 60


@dataclass(frozen=True)
class View:
    version: str
    feature_names: tuple[str, ...]


def onnx_model(width: int, seed: int = 0) -> bytes:
    """A tiny valid model: sigmoid(features @ w), input float32 [N, width]."""
    w = np.random.default_rng(seed).normal(size=(width, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["score"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def features(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    X = np.column_stack([rng.normal(shift, 1.0, n), rng.exponential(1.0 + shift, n),
                         rng.poisson(3 + shift, n).astype(np.float64)])
    X[rng.random(n) < 0.05, 0] = np.nan  # undefined values
    return X


def channels(rng: np.random.Generator, n: int, p) -> np.ndarray:
    return rng.choice(np.array(["pos", "atm", "web"]), size=n, p=p)


@dataclass
class Deployment:
    settings: Settings
    registry: ModelRegistry
    store: OfflineStore
    onnx: bytes
    X: np.ndarray  # the offline rows of VERSION, in event-time order
    times: np.ndarray
    event_ids: np.ndarray
    channel: np.ndarray
    other_times: np.ndarray  # the rows of OTHER_VERSION
    old: ReferenceProfile

    def profile(self) -> ReferenceProfile:
        v = self.registry.production(MODEL).version
        return ReferenceProfile.from_json(self.registry.reference_profile(MODEL, v))

    def folder(self) -> Path:
        return self.registry.model_path(MODEL, 1).parent

    def expected(self, last: int, label=None) -> ReferenceProfile:
        """The profile of the last `last` rows, recomputed from the test's own arrays."""
        X, ch = self.X[-last:], self.channel[-last:]
        scores = predict_scores(load_session(self.onnx), X)
        return ReferenceProfile.from_columns(
            {n: X[:, j] for j, n in enumerate(INPUTS)}, score=scores,
            slices={"channel": ch}, label=label)


def run(*argv: str, settings: Settings) -> tuple[int, list[str]]:
    lines: list[str] = []
    args = cli.build_parser().parse_args(["reference", *argv])
    return reference.run(args, settings, out=lines.append), lines


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    rng = np.random.default_rng(5)
    settings = Settings(data_dir=tmp_path)
    registry = ModelRegistry(tmp_path / "registry")
    onnx = onnx_model(len(INPUTS))
    X_train = features(rng, 3_000, 0.0)
    old = ReferenceProfile.from_columns(
        {n: X_train[:, j] for j, n in enumerate(INPUTS)},
        score=predict_scores(load_session(onnx), X_train),
        slices={"channel": channels(rng, 3_000, [0.7, 0.2, 0.1])},
        label=(rng.random(3_000) < 0.05).astype(int))
    registry.register(MODEL, onnx, view=VIEW, view_version=VERSION, inputs=INPUTS,
                      training_range=(0, 1), metrics={}, parent=None, created_at_ms=1,
                      reference_profile=old.to_json())
    registry.promote(MODEL, 1, at_ms=2, reason="test",
                     current_views={VIEW: View(VERSION, INPUTS)})

    store = OfflineStore(tmp_path / "offline")
    base = store.features_dir(VIEW)
    X = features(rng, N_ROWS, 1.5)  # the accepted change: every feature moved
    times = T0 + np.arange(N_ROWS, dtype=np.int64) * MINUTE
    event_ids = np.array([f"e{i}" for i in range(N_ROWS)])
    channel = channels(rng, N_ROWS, [0.3, 0.3, 0.4])
    for p in (0, 1):  # two partitions, interleaved in event time
        rows = np.arange(p, N_ROWS, 2)
        columns = {"event_id": event_ids[rows].tolist(),
                   "entity_id": [f"card-{i % 17}" for i in rows],
                   "event_time": times[rows], "view_version": [VERSION] * len(rows),
                   "partition": np.full(len(rows), p, np.int32),
                   "offset": np.arange(len(rows), dtype=np.int64) + 100,
                   "channel": channel[rows].tolist()}
        columns.update({n: X[rows, j] for j, n in enumerate(INPUTS)})
        publish(store.write(base, p, columns, pending_epoch=1))
    # Newer rows of another view version, with another schema ("d" instead of "c").
    other_times = T0 + (N_ROWS - N_OTHER + np.arange(N_OTHER)) * MINUTE + 30_000
    publish(store.write(base, 2, {
        "event_id": [f"o{i}" for i in range(N_OTHER)], "entity_id": ["card-0"] * N_OTHER,
        "event_time": other_times, "view_version": [OTHER_VERSION] * N_OTHER,
        "partition": np.full(N_OTHER, 2, np.int32), "offset": np.arange(N_OTHER),
        "channel": ["pos"] * N_OTHER, "a": np.zeros(N_OTHER), "b": np.zeros(N_OTHER),
        "d": np.zeros(N_OTHER)}, pending_epoch=1))
    # An uncommitted (pending) batch, newest of all: never read.
    store.write(base, 3, {
        "event_id": ["p0"], "entity_id": ["card-0"], "event_time": [times[-1] + MINUTE],
        "view_version": [VERSION], "partition": np.full(1, 3, np.int32), "offset": [0],
        "channel": ["pos"], "a": [1e6], "b": [1e6], "c": [1e6]}, pending_epoch=9)
    return Deployment(settings, registry, store, onnx, X, times, event_ids, channel,
                      other_times, old)


def write_outcomes(d: Deployment, rows: np.ndarray, labels: np.ndarray,
                   model: str = MODEL, delay: int = 3_600_000) -> None:
    columns = {"event_id": d.event_ids[rows].tolist(), "event_time": d.times[rows],
               "label_time": d.times[rows] + delay, "label": labels.astype(np.int64),
               "model_name": [model] * len(rows), "model_version": np.ones(len(rows), np.int64),
               "score": np.full(len(rows), 0.5), "channel": d.channel[rows].tolist()}
    base = d.store.outcomes_dir("driftline.labels")
    publish(d.store.write(base, 0, columns, pending_epoch=1, span=(0, len(rows))))


def test_rebase_takes_exactly_the_last_n_rows_and_keeps_the_previous(deployment):
    d = deployment
    code, lines = run("rebase", "--last", "1500", settings=d.settings)
    assert code == 0, lines
    # No outcomes: the label subject is the current profile's, unchanged.
    expected = ReferenceProfile((*d.expected(1500).subjects, d.old["label"]))
    assert d.profile() == expected
    assert d.registry.reference_profile(MODEL, 1) == expected.to_json()
    previous = json.loads((d.folder() / "reference_profile.previous.json").read_text())
    assert ReferenceProfile.from_json(previous) == d.old
    assert d.profile().names == d.old.names  # the monitor's subjects are unchanged
    text = "\n".join(lines)
    assert "rebased on the last 1500 rows" in text
    assert "note: label: none of the 1500 rows has a label in the outcomes yet; the current " \
        "label subject is kept unchanged" in text
    assert "restart" in text
    assert any(line.strip().startswith("a ") and "psi vs old" in line for line in lines)


def test_bins_are_the_quantiles_of_the_accepted_rows(deployment):
    d = deployment
    assert run("rebase", "--last", "2000", settings=d.settings)[0] == 0
    new, old = d.profile(), d.old
    a = d.X[-2000:, 0]
    assert new["a"].histogram.bins.edges[4] == np.quantile(a[~np.isnan(a)], 0.5,
                                                           method="inverted_cdf")
    assert new["a"].histogram.bins != old["a"].histogram.bins
    counts = new["a"].histogram.counts[:-1]  # about 1/10 of the rows in every value bin
    assert counts.min() >= 0.09 * counts.sum()


def test_json_output_reports_old_and_new_per_subject(deployment):
    d = deployment
    code, lines = run("rebase", "--last", "1200", "--json", settings=d.settings)
    assert code == 0
    report = json.loads("\n".join(lines))
    assert report["rows"] == report["requested"] == 1200 and report["written"]
    assert report["event_time_range"] == [int(d.times[-1200]), int(d.times[-1])]
    assert report["label"] == {"source": "kept", "labelled_rows": 0}
    assert [s["name"] for s in report["subjects"]] == d.old.names
    by_name = {s["name"]: s for s in report["subjects"]}
    a = by_name["a"]
    assert a["old"]["rows"] == 3_000 and a["new"]["rows"] == 1_200
    assert a["new"]["median"] == pytest.approx(np.nanmedian(d.X[-1200:, 0]))
    assert a["psi_vs_old"] > 0.25  # the accepted change is a large one
    assert by_name["label"]["kept"] and by_name["label"]["psi_vs_old"] is None
    assert by_name["channel"]["new"]["top"] == "web"
    assert report["fingerprint"]["new"] == d.profile().fingerprint()


def test_rows_of_other_view_versions_are_skipped_and_counted(deployment):
    d = deployment
    code, lines = run("rebase", "--last", "1000", "--json", settings=d.settings)
    report = json.loads("\n".join(lines))
    assert code == 0 and report["skipped_other_view_versions"] == N_OTHER
    assert any(f"skipped {N_OTHER} rows of other view versions ({OTHER_VERSION})" in n
               for n in report["notes"])
    assert d.profile().select(d.expected(1000).names) == d.expected(1000)


def test_only_the_newest_days_are_read(deployment):
    d = deployment
    oldest = sorted(d.store.features_dir(VIEW).glob("date=*"))[0]
    (oldest / "p9-garbage.parquet").write_bytes(b"not parquet")  # would fail if read
    assert run("rebase", "--last", "1000", settings=d.settings)[0] == 0  # the last day's rows
    with pytest.raises(pa.ArrowInvalid):
        reference.last_rows(d.store, VIEW, VERSION, INPUTS, SLICES, N_ROWS)


def test_labels_come_from_the_outcomes_when_present(deployment):
    d = deployment
    rng = np.random.default_rng(3)
    rows = np.arange(N_ROWS - 1_500, N_ROWS)
    labels = (rng.random(len(rows)) < 0.2).astype(int)
    write_outcomes(d, rows, labels)
    # Ignored: a later second label of the same event, and another model's outcome.
    write_outcomes(d, rows[:10], 1 - labels[:10], delay=7_200_000)
    write_outcomes(d, rows[10:20], 1 - labels[10:20], model="churn")
    code, lines = run("rebase", "--last", "1500", "--json", settings=d.settings)
    assert code == 0
    report = json.loads("\n".join(lines))
    assert report["label"] == {"source": "outcomes", "labelled_rows": 1_500}
    assert d.profile() == d.expected(1500, label=labels)


def test_partly_labelled_rows_count_only_the_labelled_or_keep_the_label(deployment):
    d = deployment
    rng = np.random.default_rng(4)
    rows = np.arange(N_ROWS - 1_500, N_ROWS - 300)  # the newest 300 have no label yet
    labels = (rng.random(len(rows)) < 0.2).astype(int)
    write_outcomes(d, rows, labels)
    code, lines = run("rebase", "--last", "1500", settings=d.settings)
    assert code == 0
    assert "note: label: counted over the 1200 of 1500 rows that have a label in the outcomes" \
        in lines
    label = Subject("label", "label", Histogram(LabelBins()).count(labels))
    assert d.profile() == ReferenceProfile((*d.expected(1500).subjects, label))
    assert d.profile()["label"].histogram.total == 1_200

    # The current profile's label subject (the one just counted) is kept unchanged when fewer
    # rows than --min-rows are labelled, and always with --keep-label.
    code, lines = run("rebase", "--last", "1500", "--min-rows", "1300", settings=d.settings)
    assert code == 0 and d.profile()["label"] == label
    assert "1200 of 1500 rows have a label in the outcomes, fewer than --min-rows 1300; the " \
        "current label subject is kept unchanged" in "\n".join(lines)
    assert run("rebase", "--last", "1200", "--keep-label", settings=d.settings)[0] == 0
    assert d.profile()["label"] == label and d.profile()["a"].histogram.total == 1_200


def test_too_few_rows_are_refused_with_exit_code_2(deployment, capsys):
    d = deployment
    assert run("rebase", "--last", "999", settings=d.settings)[0] == 2
    assert "--last 999 is below --min-rows 1000" in capsys.readouterr().err
    assert run("rebase", "--last", "6000", "--min-rows", "5000", settings=d.settings)[0] == 2
    assert f"only {N_ROWS} offline rows of {VIEW}@{VERSION}" in capsys.readouterr().err
    assert d.profile() == d.old
    assert not (d.folder() / "reference_profile.previous.json").exists()


def test_fewer_rows_than_asked_but_enough_are_taken_and_said(deployment):
    d = deployment
    code, lines = run("rebase", "--last", "9000", settings=d.settings)
    assert code == 0
    assert f"only {N_ROWS} rows of {VIEW}@{VERSION} in the offline store (asked for 9000)" \
        in "\n".join(lines)
    assert d.profile().select(d.expected(N_ROWS).names) == d.expected(N_ROWS)


def test_a_model_without_production_or_offline_rows_is_refused(deployment, capsys):
    d = deployment
    d.registry.register("churn", onnx_model(3), view="empty_view", view_version=VERSION,
                        inputs=INPUTS, training_range=(0, 1), metrics={}, parent=None,
                        created_at_ms=1)
    assert run("rebase", "--model", "churn", "--last", "1000", settings=d.settings)[0] == 2
    assert "model 'churn' has no Production version" in capsys.readouterr().err
    assert run("rebase", "--model", "nope", "--last", "1000", settings=d.settings)[0] == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert run("show", "--model", "churn", settings=d.settings)[0] == 2
    d.registry.promote("churn", 1, at_ms=3, reason="t",
                       current_views={"empty_view": View(VERSION, INPUTS)})
    assert run("rebase", "--model", "churn", "--last", "1000", settings=d.settings)[0] == 2
    assert "view empty_view has no rows in the offline store" in capsys.readouterr().err


def test_dry_run_writes_nothing(deployment):
    d = deployment
    code, lines = run("rebase", "--last", "1000", "--dry-run", settings=d.settings)
    assert code == 0 and "would rebase (dry run)" in lines[0]
    assert d.profile() == d.old


def test_show_lists_subjects_kinds_rows_and_bins(deployment):
    d = deployment
    code, lines = run("show", settings=d.settings)
    assert code == 0
    assert lines[0].startswith(f"{MODEL} v1 (Production) reference {d.old.fingerprint()}")
    assert [line.split()[:2] for line in lines[1:]] == [[s.name, s.kind] for s in d.old]
    run("rebase", "--last", "1000", settings=d.settings)
    code, lines = run("show", "--version", "1", "--json", settings=d.settings)
    report = json.loads("\n".join(lines))
    assert report["previous_kept"] and report["rows"] == 1000
    assert [(s["name"], s["kind"], s["rows"], s["bins"]) for s in report["subjects"]] == [
        (s.name, s.kind, s.histogram.total, s.histogram.bins.n_bins) for s in d.profile()]
    assert run("show", "--version", "7", settings=d.settings)[0] == 2


def test_the_cli_runs_it(deployment, monkeypatch, capsys):
    d = deployment
    monkeypatch.setenv("DRIFTLINE_DATA_DIR", str(d.settings.data_dir))
    monkeypatch.setenv("DRIFTLINE_DEV_RECORD", str(d.settings.data_dir / "no-dev-stack.json"))
    assert cli.main(["reference", "rebase", "--last", "1000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1000
    assert cli.main(["reference", "rebase", "--last", "10"]) == 2
