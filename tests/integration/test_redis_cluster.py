"""Reading online values through a Redis Cluster.

The feature worker writes each entity's values in the hash slot of its partition, in that
partition's commit; ``POST /predict``, ``GET /features/{id}`` and ``driftline features get`` find
them from the entity id alone (the partitioner, as the producer used it). The feature oracle,
kill -9, fencing and outage tests run on the cluster too (tests/integration/test_features.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from driftline.adapters.redis_client import connect, is_cluster
from driftline.commands import local_servers
from tests.integration.conftest import start_scorer_process, start_worker_process
from tests.integration.helpers import get_json
from tests.integration.test_features import (
    VIEW,
    expected,
    make_stream,
    produce_stream,
    run_cli,
    wait_done,
)
from tests.integration.test_scoring import post

on_the_cluster = pytest.mark.parametrize("settings", ["redis-cluster"], indirect=True)


def as_array(values: dict) -> np.ndarray:
    return np.array([np.nan if values[n] is None else values[n] for n in VIEW.feature_names])


@on_the_cluster
def test_predict_and_features_get_read_what_the_worker_wrote(settings, trained_registry,
                                                              tmp_path):
    shutil.copytree(trained_registry, settings.data_dir / "registry")
    settings = settings.replace(batch_size=500, scorer_port=local_servers.free_port(),
                                group_scorer=f"{settings.group_features}-scorer")
    by_partition = produce_stream(settings, make_stream(1500, 150, seed=31))
    oracle = expected(by_partition)
    client = connect(settings.redis_url)
    assert is_cluster(client)
    worker = start_worker_process(settings, tmp_path / "logs")
    try:
        wait_done(client, settings, by_partition)
    finally:
        worker.stop()
    sample = [(entity, *final) for result in oracle.values()
              for entity, final in list(result.final_online.items())[:3]]
    assert len(sample) == 3 * settings.partitions

    scorer = start_scorer_process(settings, tmp_path / "logs")
    try:
        for entity, event_time, values in sample:
            status, body = post(f"{scorer.address}/predict", {"entity_id": entity})
            assert status == 200, body
            assert body["source"] == "online_store" and body["features_event_time"] == event_time
            row = get_json(f"{scorer.address}/features/{entity}")
            assert row["event_time"] == event_time and row["view_version"] == VIEW.version
            np.testing.assert_allclose(as_array(row["values"]), values, rtol=1e-9, atol=1e-9)
        status, body = post(f"{scorer.address}/predict", {"entity_id": "nobody"})
        assert status == 404, body
    finally:
        scorer.stop()

    entity, event_time, values = sample[-1]
    got = run_cli(settings, "features", "get", entity, "--json")
    assert got.returncode == 0, got.stderr
    view = json.loads(got.stdout)["views"][VIEW.name]
    assert view["event_time"] == event_time
    np.testing.assert_allclose(as_array(view["values"]), values, rtol=1e-9, atol=1e-9)
    missing = run_cli(settings, "features", "get", "nobody", "--json")
    assert missing.returncode == 1 and "no features for entity 'nobody'" in missing.stderr
