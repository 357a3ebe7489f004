"""What the status page reads besides the monitor: the registry and the controller's state file,
read-only, tolerating their absence or a half-written file."""

from __future__ import annotations

import json

from driftline.agents.status import CONTROLLER_STATE, complete
from driftline.core.registry import ModelRegistry
from driftline.core.status_page import REGISTRY, RETRAIN, StatusData, render_status
from tests.unit.test_registry import VIEWS, register

DRIFT_ID = "psi:fraud:1:amount:500"


def empty() -> StatusData:
    return StatusData(now_ms=10_000, window_ms=3_600_000)


def test_nothing_there_yet_gives_an_empty_page_and_no_note(tmp_path):
    data = complete(empty(), tmp_path, lag={})
    assert data.models == () and data.timeline == () and data.notes == ()


def test_models_transitions_lineage_and_jobs_become_cards_and_timeline_entries(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, at=1)
    registry.promote("fraud", 1, at_ms=100, reason="initial", current_views=VIEWS)
    registry.register("fraud", (registry.model_bytes("fraud", 1)), view="txn",
                      view_version=VIEWS["txn"].version, inputs=VIEWS["txn"].feature_names,
                      training_range=(10, 20), metrics={}, parent=1, created_at_ms=2,
                      lineage={"job_id": "job-1", "drift_ids": [DRIFT_ID]})
    registry.promote("fraud", 2, at_ms=900, reason="job job-1 passed its gates",
                     current_views=VIEWS)
    registry.set_serving_plan("fraud", {"model_name": "fraud", "kind": "canary",
                                        "candidate_version": 2, "share": 0.1})
    state = tmp_path / CONTROLLER_STATE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"jobs": {"job-1": {
        "job_id": "job-1", "model_name": "fraud", "drift_ids": [DRIFT_ID], "status": "registered",
        "requested_at_ms": 600, "ended_at_ms": 850, "version": 2, "reason": "drift"}}}))

    data = complete(empty(), tmp_path, lag={"p/0": 5})
    (card,) = data.models
    assert (card.name, card.production, card.versions, card.plan) == \
        ("fraud", 2, 2, "canary of v2 at 10%")
    registry_entries = [e for e in data.timeline if e.lane == REGISTRY]
    assert [(e.version, e.status) for e in registry_entries] == [(1, "production"),
                                                                 (2, "production")]
    assert registry_entries[1].drift_ids == (DRIFT_ID,), "from the version's lineage"
    (job,) = [e for e in data.timeline if e.lane == RETRAIN]
    assert (job.ref, job.at_ms, job.end_ms, job.status, job.drift_ids, job.version) == \
        ("job-1", 600, 850, "registered", (DRIFT_ID,), 2)
    assert data.lag == {"p/0": 5} and data.notes == ()
    assert 'data-ref="job-1"' in render_status(data)


def test_a_corrupt_controller_state_is_a_note_not_an_error(tmp_path):
    state = tmp_path / CONTROLLER_STATE
    state.parent.mkdir(parents=True)
    state.write_text('{"jobs": {"j": {"status": "run')
    data = complete(empty(), tmp_path, lag={})
    assert data.timeline == ()
    assert len(data.notes) == 1 and "retrain controller state unreadable" in data.notes[0]
    assert "retrain controller state unreadable" in render_status(data)


def test_the_monitor_stage_records_a_point_per_committed_batch(tmp_path):
    from driftline.core.state import MemoryStateBackend
    from tests.unit.agents.test_monitor_stage import T0, Monitor, label, prediction

    monitor = Monitor(MemoryStateBackend(), tmp_path)
    clock = iter(range(T0, T0 + 100_000, 2_000))
    monitor.stage.clock_ms = lambda: next(clock)
    monitor.feed([prediction(0), prediction(1)], [])
    monitor.feed([prediction(2)], [label(0), label(1)])
    monitor.feed([], [label(2)])
    data = monitor.stage.status(T0 + 5_000)
    assert [(p.at_ms, p.predictions, p.outcomes) for p in data.points] == [
        (T0, 2, 0), (T0 + 2_000, 3, 2), (T0 + 4_000, 3, 3)]
    assert (data.predictions, data.outcomes, data.detectors) == (3, 3, "running")
    assert data.rates == (1 / 5, 3 / 5)  # since the oldest point: none is 10 s old yet
    assert data.psi_thresholds == (0.1, 0.25) and data.label_thresholds == (0.02, 0.05)


class ConstantPsi:
    """Detectors that report a fixed PSI for every version ever seen, as `Monitor.psi` does
    for a version whose traffic stopped (its last evaluation)."""

    def __init__(self, versions) -> None:
        from driftline.core.monitoring.monitor import MonitorConfig

        self.config, self.versions, self.keys = MonitorConfig(), {}, versions

    def observe(self, predictions, outcomes):
        return []

    def psi(self):
        for name, version in self.keys:
            yield name, version, "amount", 0.1 * version

    def snapshot(self):
        import numpy as np

        return {"unprofiled": np.zeros(1, np.int64)}

    def statistics(self, max_slice_values):
        return []

    def alarming(self):
        return []


def test_a_replaced_versions_psi_line_ends_where_its_traffic_did(tmp_path):
    from driftline.core.state import MemoryStateBackend
    from tests.unit.agents.test_monitor_stage import T0, Monitor, prediction

    monitor = Monitor(MemoryStateBackend(), tmp_path)
    monitor.stage.monitor = ConstantPsi([("fraud", 1), ("fraud", 2)])
    clock = iter(range(T0, T0 + 100_000, 2_000))
    monitor.stage.clock_ms = lambda: next(clock)
    monitor.feed([prediction(0), prediction(1, "candidate")], [])  # v1 and v2
    monitor.feed([prediction(2, "candidate")], [])  # v2 only from here
    monitor.feed([prediction(3, "candidate")], [])
    points = monitor.stage.status(T0 + 5_000).points
    assert [sorted(k[1] for k in p.psi) for p in points] == [[1, 2], [2], [2]]
