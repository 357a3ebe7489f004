"""The monitor's view of the registry: profiles read once, and again after a rebase."""

from __future__ import annotations

import numpy as np

from driftline.agents.monitor_service import RegistryProfiles
from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.registry import ModelRegistry
from tests.unit.test_registry import INPUTS, VIEW_VERSION, onnx_model


def profile(shift: float) -> ReferenceProfile:
    x = np.random.default_rng(0).normal(size=(2000, len(INPUTS))) + shift
    return ReferenceProfile.from_columns({n: x[:, j] for j, n in enumerate(INPUTS)})


def test_a_rebased_profile_is_noticed_and_read_again(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register(
        "fraud", onnx_model(len(INPUTS)), view="txn", view_version=VIEW_VERSION, inputs=INPUTS,
        training_range=(1, 2), metrics={}, parent=None, created_at_ms=1,
        reference_profile=profile(0.0).to_json())
    profiles = RegistryProfiles(registry)
    first = profiles("fraud", version.version)
    assert first.fingerprint() == profile(0.0).fingerprint()
    assert profiles("fraud", 7) is None  # unknown version: nothing to compare with
    assert profiles.changed() == []
    registry.replace_reference_profile("fraud", version.version, profile(5.0).to_json())
    assert profiles.changed() == [("fraud", version.version)]
    assert profiles("fraud", version.version).fingerprint() == profile(5.0).fingerprint()
    assert profiles.changed() == []
