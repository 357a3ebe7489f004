"""The file-based model registry: versions, stages, history, the schema check and atomicity."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from driftline.core import registry as registry_module
from driftline.core.registry import ModelRegistry, RegistryError

INPUTS = ("a", "b", "c")
VIEW_VERSION = "1a2b3c4d5e6f"


@dataclass(frozen=True)
class View:
    version: str
    feature_names: tuple[str, ...]


VIEWS = {"txn": View(VIEW_VERSION, INPUTS)}


def onnx_model(width: int, seed: int = 0, symbolic_width: bool = False) -> bytes:
    """A tiny valid model: sigmoid(features @ w), input float32 [N, width]."""
    w = np.random.default_rng(seed).normal(size=(width, 1)).astype(np.float32)
    shape = ["N", "W" if symbolic_width else width]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["score"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def register(reg: ModelRegistry, name: str = "fraud", *, inputs=INPUTS, view_version=VIEW_VERSION,
             parent=None, seed=0, at=1_000):
    return reg.register(
        name, onnx_model(len(inputs), seed), view="txn", view_version=view_version,
        inputs=inputs, training_range=(10, 20), metrics={"roc_auc": 0.9}, parent=parent,
        created_at_ms=at, tags={"trainer": "test"})


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def stages(reg: ModelRegistry, name: str = "fraud") -> dict[int, str]:
    return {m.version: m.stage for m in reg.versions(name)}


def test_register_list_and_show(reg: ModelRegistry):
    assert reg.models() == []
    first = register(reg)
    second = register(reg, parent=1, seed=1, at=2_000)
    register(reg, "churn")
    assert reg.models() == ["churn", "fraud"]
    assert [m.version for m in reg.versions("fraud")] == [1, 2]
    assert reg.versions("churn")[0].version == 1  # numbering is per model
    assert first.stage == "None" and first.parent is None
    shown = reg.get("fraud", 2)
    assert shown == second
    assert shown.parent == 1 and shown.created_at_ms == 2_000 and shown.inputs == INPUTS
    assert shown.view == "txn" and shown.view_version == VIEW_VERSION
    assert shown.training_range == (10, 20) and shown.metrics == {"roc_auc": 0.9}
    assert shown.tags == {"trainer": "test"}
    path = reg.model_path("fraud", 2)
    assert path == reg.root / "fraud" / "versions" / "2" / "model.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == shown.onnx_sha256
    assert reg.model_bytes("fraud", 2) == onnx_model(3, seed=1)
    meta = json.loads((path.parent / "metadata.json").read_text())
    assert meta["version"] == 2 and meta["inputs"] == list(INPUTS)
    assert reg.production("fraud") is None and reg.history("fraud") == []
    with pytest.raises(RegistryError, match="unknown model version fraud v9"):
        reg.get("fraud", 9)


def test_register_refuses_bad_arguments(reg: ModelRegistry):
    with pytest.raises(RegistryError, match="parent v4 does not exist"):
        register(reg, parent=4)
    with pytest.raises(RegistryError, match="invalid model name"):
        register(reg, "../escape")
    with pytest.raises(RegistryError, match="distinct"):
        register(reg, inputs=("a", "a", "b"))
    assert [m.version for m in reg.versions("fraud")] == []
    assert register(reg).version == 1  # refusals consumed no version number


def test_tampered_model_bytes_are_detected(reg: ModelRegistry):
    register(reg)
    reg.model_path("fraud", 1).write_bytes(onnx_model(3, seed=5))
    with pytest.raises(RegistryError, match="does not match its sha256"):
        reg.model_bytes("fraud", 1)


@pytest.mark.parametrize("payload", [b"", b"not a model at all", onnx_model(3)[:-7]])
def test_corrupt_onnx_is_refused_at_register(reg: ModelRegistry, payload: bytes):
    with pytest.raises(RegistryError, match="cannot register fraud: not a valid ONNX model"):
        reg.register("fraud", payload, view="txn", view_version=VIEW_VERSION, inputs=INPUTS,
                     training_range=(0, 1), metrics={}, parent=None, created_at_ms=0)
    assert reg.versions("fraud") == []


def test_invalid_onnx_graph_is_refused_by_the_checker(reg: ModelRegistry):
    model = onnx.load_model_from_string(onnx_model(3))
    model.graph.node[0].input[1] = "missing"  # dangling edge: parses, fails the checker
    with pytest.raises(RegistryError, match="not a valid ONNX model"):
        reg.register("fraud", model.SerializeToString(), view="txn", view_version=VIEW_VERSION,
                     inputs=INPUTS, training_range=(0, 1), metrics={}, parent=None,
                     created_at_ms=0)


@pytest.mark.parametrize("width, symbolic, message", [
    (4, False, "has width 4, but 3 input features were named"),
    (2, False, "has width 2, but 3 input features were named"),
    (3, True, "has width unknown, but 3"),
])
def test_onnx_width_mismatch_is_refused(reg: ModelRegistry, width, symbolic, message):
    with pytest.raises(RegistryError, match=message):
        reg.register("fraud", onnx_model(width, symbolic_width=symbolic), view="txn",
                     view_version=VIEW_VERSION, inputs=INPUTS, training_range=(0, 1),
                     metrics={}, parent=None, created_at_ms=0)


def test_at_most_one_production_and_promotion_archives_the_previous(reg: ModelRegistry):
    for seed in range(3):
        register(reg, seed=seed)
    t1 = reg.promote("fraud", 1, at_ms=100, reason="first", current_views=VIEWS)
    assert (t1.from_stage, t1.to_stage, t1.archived) == ("None", "Production", ())
    reg.transition("fraud", 2, "Staging", at_ms=200, reason="shadow", current_views=VIEWS)
    assert stages(reg) == {1: "Production", 2: "Staging", 3: "None"}
    t2 = reg.promote("fraud", 2, at_ms=300, reason="better", current_views=VIEWS)
    assert t2.from_stage == "Staging"
    assert [(a.version, a.from_stage, a.to_stage) for a in t2.archived] == [
        (1, "Production", "Archived")]
    assert stages(reg) == {1: "Archived", 2: "Production", 3: "None"}
    reg.promote("fraud", 3, at_ms=400, reason="best", current_views=VIEWS)
    assert stages(reg) == {1: "Archived", 2: "Archived", 3: "Production"}
    assert reg.production("fraud").version == 3
    assert list(stages(reg).values()).count("Production") == 1
    with pytest.raises(RegistryError, match="already Production"):
        reg.promote("fraud", 3, at_ms=500, reason="again", current_views=VIEWS)
    with pytest.raises(RegistryError, match="unknown stage 'Live'"):
        reg.transition("fraud", 3, "Live", at_ms=500, reason="", current_views=VIEWS)


def test_history_records_every_transition(reg: ModelRegistry):
    register(reg)
    register(reg, seed=1)
    reg.transition("fraud", 1, "Staging", at_ms=10, reason="try", current_views=VIEWS)
    reg.promote("fraud", 1, at_ms=20, reason="ok", current_views=VIEWS)
    t = reg.promote("fraud", 2, at_ms=30, reason="newer", current_views=VIEWS)
    reg.transition("fraud", 1, "None", at_ms=40, reason="cleanup", current_views={})
    rows = [(h.version, h.from_stage, h.to_stage, h.at_ms, h.reason) for h in reg.history("fraud")]
    assert rows == [
        (1, "None", "Staging", 10, "try"),
        (1, "Staging", "Production", 20, "ok"),
        (2, "None", "Production", 30, "newer"),
        (1, "Production", "Archived", 30, "replaced by v2: newer"),
        (1, "Archived", "None", 40, "cleanup"),
    ]
    lines = (reg.root / "fraud" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[2])["to_stage"] == "Production"
    assert [e.to_model_event() for e in t.events()] == [
        {"event": "transition", "model_name": "fraud", "version": 2, "from_stage": "None",
         "to_stage": "Production", "at": 30, "reason": "newer"},
        {"event": "transition", "model_name": "fraud", "version": 1, "from_stage": "Production",
         "to_stage": "Archived", "at": 30, "reason": "replaced by v2: newer"},
    ]


def test_rollback_restores_the_previous_production(reg: ModelRegistry):
    for seed in range(3):
        register(reg, seed=seed)
    with pytest.raises(RegistryError, match="no version is in Production"):
        reg.rollback("fraud", at_ms=0, reason="", current_views=VIEWS)
    for v in (1, 2, 3):
        reg.promote("fraud", v, at_ms=v * 100, reason=f"v{v}", current_views=VIEWS)
    t = reg.rollback("fraud", at_ms=1_000, reason="bad scores", current_views=VIEWS)
    assert (t.version, t.from_stage, t.to_stage, t.rollback) == (2, "Archived", "Production", True)
    assert [(a.version, a.to_stage) for a in t.archived] == [(3, "Archived")]
    assert stages(reg) == {1: "Archived", 2: "Production", 3: "Archived"}
    tail = reg.history("fraud")[-2:]
    assert [(h.version, h.from_stage, h.to_stage, h.at_ms, h.reason, h.rollback) for h in tail] == [
        (2, "Archived", "Production", 1_000, "bad scores", True),
        (3, "Production", "Archived", 1_000, "replaced by v2: bad scores", False),
    ]
    # A second rollback walks further back instead of toggling between v2 and v3.
    assert reg.rollback("fraud", at_ms=1_100, reason="", current_views=VIEWS).version == 1
    assert reg.production("fraud").version == 1
    with pytest.raises(RegistryError, match="v1 has no earlier Production version"):
        reg.rollback("fraud", at_ms=1_200, reason="", current_views=VIEWS)


def test_rollback_after_repromoting_an_old_version(reg: ModelRegistry):
    register(reg)
    register(reg, seed=1)
    for v in (1, 2, 1):
        reg.promote("fraud", v, at_ms=v, reason="", current_views=VIEWS)
    assert reg.rollback("fraud", at_ms=9, reason="", current_views=VIEWS).version == 2


@pytest.mark.parametrize("stage", ["Production", "Staging"])
def test_promotion_refused_when_the_view_version_changed(reg: ModelRegistry, stage):
    register(reg, inputs=("a", "b", "y"))
    current = {"txn": View("9f8e7d6c5b4a", ("a", "b", "x"))}
    with pytest.raises(RegistryError) as info:
        reg.transition("fraud", 1, stage, at_ms=1, reason="", current_views=current)
    assert str(info.value) == (
        "cannot promote fraud v1: feature schema drift: it was trained on txn@1a2b3c4d5e6f "
        "with inputs [a, b, y], the current definition is txn@9f8e7d6c5b4a (added: x; removed: y)")
    assert stages(reg) == {1: "None"} and reg.history("fraud") == []


def test_promotion_refused_when_only_definitions_changed(reg: ModelRegistry):
    register(reg)
    with pytest.raises(RegistryError, match=r"txn@1a2b3c4d5e6f .* txn@000000000000 "
                                            r"\(same feature names, changed definitions\)"):
        reg.promote("fraud", 1, at_ms=1, reason="",
                    current_views={"txn": View("000000000000", INPUTS)})


def test_promotion_refused_on_input_order_mismatch(reg: ModelRegistry):
    register(reg, inputs=("b", "a", "c"))
    with pytest.raises(RegistryError, match=r"inputs \[b, a, c\], the current definition is "
                                            r"txn@1a2b3c4d5e6f \(same features in a different"):
        reg.promote("fraud", 1, at_ms=1, reason="", current_views=VIEWS)


def test_promotion_refused_for_an_unknown_view(reg: ModelRegistry):
    register(reg)
    with pytest.raises(RegistryError, match=r"cannot promote fraud v1: feature view txn is not "
                                            r"defined \(defined: \['other'\]\)"):
        reg.promote("fraud", 1, at_ms=1, reason="", current_views={"other": VIEWS["txn"]})


def test_rollback_refused_when_the_target_no_longer_matches(reg: ModelRegistry):
    register(reg)
    register(reg, seed=1)
    reg.promote("fraud", 1, at_ms=1, reason="", current_views=VIEWS)
    reg.promote("fraud", 2, at_ms=2, reason="", current_views=VIEWS)
    changed = {"txn": View("ffffffffffff", INPUTS)}
    with pytest.raises(RegistryError, match="cannot roll back to fraud v1: feature schema drift"):
        reg.rollback("fraud", at_ms=3, reason="", current_views=changed)
    assert reg.production("fraud").version == 2


def test_a_crash_inside_the_stages_write_leaves_the_old_file(reg: ModelRegistry, monkeypatch):
    register(reg)
    register(reg, seed=1)
    reg.promote("fraud", 1, at_ms=1, reason="", current_views=VIEWS)
    state_path = reg.root / "fraud" / "stages.json"
    before, history_before = state_path.read_bytes(), reg.history("fraud")

    real_fsync = registry_module.os.fsync

    def crash(fd):
        real_fsync(fd)
        raise OSError("power cut")  # the temp file is written, the replace never happens

    monkeypatch.setattr(registry_module.os, "fsync", crash)
    with pytest.raises(OSError, match="power cut"):
        reg.promote("fraud", 2, at_ms=2, reason="", current_views=VIEWS)
    monkeypatch.undo()
    assert state_path.read_bytes() == before
    assert [p.name for p in state_path.parent.iterdir() if p.name.startswith(".stages")] == []
    assert reg.history("fraud") == history_before
    assert reg.production("fraud").version == 1
    reg.promote("fraud", 2, at_ms=3, reason="", current_views=VIEWS)  # and it still works
    assert stages(reg) == {1: "Archived", 2: "Production"}


def test_a_crash_after_the_commit_is_completed_from_stages_json(reg: ModelRegistry):
    register(reg)
    register(reg, seed=1)
    reg.promote("fraud", 1, at_ms=1, reason="", current_views=VIEWS)
    reg.promote("fraud", 2, at_ms=2, reason="", current_views=VIEWS)
    path = reg.root / "fraud" / "history.jsonl"
    full = path.read_bytes()
    lines = full.splitlines(keepends=True)
    # Lost the archive line entirely and half of the promotion line.
    path.write_bytes(b"".join(lines[:1]) + lines[1][:15])
    assert [(h.version, h.to_stage) for h in reg.history("fraud")] == [
        (1, "Production"), (2, "Production"), (1, "Archived")]
    reg.transition("fraud", 1, "None", at_ms=3, reason="", current_views=VIEWS)
    assert path.read_bytes().startswith(full)
    assert len(path.read_text().splitlines()) == 4


def _promote_many(root: str, versions: list[int], rounds: int) -> None:
    reg = ModelRegistry(Path(root))
    for i in range(rounds):
        for v in versions:
            try:
                reg.promote("fraud", v, at_ms=i, reason=f"p{v}", current_views=VIEWS)
            except RegistryError as exc:
                assert "already Production" in str(exc)


def _register_many(root: str, count: int) -> None:
    reg = ModelRegistry(Path(root))
    for _ in range(count):
        register(reg)


def test_concurrent_promotions_end_with_one_consistent_production(reg: ModelRegistry):
    for seed in range(4):
        register(reg, seed=seed)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_promote_many, args=(str(reg.root), [v, 5 - v], 15))
             for v in (1, 2, 3, 4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    final = stages(reg)
    assert list(final.values()).count("Production") == 1
    assert set(final.values()) <= {"Production", "Archived"}
    # Replaying the history reproduces the final stages, and every line starts from the
    # stage the previous lines left: no two read-modify-writes interleaved.
    replay = {v: "None" for v in final}
    history = reg.history("fraud")
    for h in history:
        assert h.from_stage == replay[h.version], h
        replay[h.version] = h.to_stage
        assert list(replay.values()).count("Production") <= 2  # promote + archive pair
    assert replay == final
    lines = (reg.root / "fraud" / "history.jsonl").read_text().splitlines()
    assert len(lines) == len(history) > 4


def test_concurrent_registrations_get_distinct_versions(reg: ModelRegistry):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(str(reg.root), 5)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert [m.version for m in reg.versions("fraud")] == list(range(1, 16))


def test_a_reference_profile_is_stored_with_its_version_and_can_be_rebased(reg: ModelRegistry):
    profile = {"rows": 3, "numeric": {"f0": {"edges": [0.5], "counts": [1, 2]}}}
    with_profile = reg.register(
        "fraud", onnx_model(len(INPUTS)), view="txn", view_version=VIEW_VERSION, inputs=INPUTS,
        training_range=(10, 20), metrics={}, parent=None, created_at_ms=1,
        reference_profile=profile)
    without = register(reg)
    assert reg.reference_profile("fraud", with_profile.version) == profile
    assert reg.reference_profile("fraud", without.version) is None
    with pytest.raises(RegistryError, match="unknown model version"):
        reg.reference_profile("fraud", 99)
    rebased = {**profile, "rows": 7}
    reg.replace_reference_profile("fraud", with_profile.version, rebased)
    assert reg.reference_profile("fraud", with_profile.version) == rebased
    folder = reg.model_path("fraud", with_profile.version).parent
    assert json.loads((folder / "reference_profile.previous.json").read_text()) == profile
    assert not list(folder.glob(".*tmp*")), "no temporary file left behind"
