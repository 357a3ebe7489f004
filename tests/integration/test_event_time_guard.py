"""A producer with a broken clock cannot silence a partition (the event-time guard, end to end).

The scenario of the bug report, on the real broker, Redis and a `driftline worker` process:
2,000 good events on 20 cards, then one event stamped 100 years ahead, then 2,000 more good
events. Before the guard, the century-ahead event moved its partition's watermark a century
forward and every later event of that partition went to the DLQ as `late`. Now it is the one
dead letter, as `future_event_time`, and every good event is in Redis, Parquet and the features
topic with the values the oracle computes from the good events alone.
"""

from __future__ import annotations

import io
import urllib.request

import fastavro
import numpy as np

from driftline.adapters.offline_store import OfflineStore
from driftline.adapters.redis_client import connect
from driftline.adapters.redis_layout import OnlineKeys
from driftline.core.demo_events import DemoConfig, DemoGenerator
from tests.integration.conftest import start_worker_process
from tests.integration.helpers import avro_schema, consume_all, metric_value
from tests.integration.test_features import (
    VIEW,
    expected,
    partition_of,
    produce_stream,
    wait_done,
)

CENTURY_MS = 100 * 365 * 86_400_000


def test_century_ahead_event_between_good_events_is_dead_lettered_and_silences_nothing(
        settings, tmp_path):
    settings = settings.replace(batch_size=500)
    generator = DemoGenerator(DemoConfig(seed=11, n_entities=20, events_per_second=5.0))
    before, after = generator.events(2000), generator.events(2000)
    broken = dict(before[-1], event_id="broken-clock",
                  event_time=before[-1]["event_time"] + CENTURY_MS)
    by_partition = produce_stream(settings, [*before, broken, *after])
    bad_partition = partition_of(broken["entity_id"], settings.partitions)
    assert len(by_partition[bad_partition]) > 1000, "the broken event must sit mid-partition"

    proc = start_worker_process(settings, tmp_path / "logs")
    client = connect(settings.redis_url)
    try:
        wait_done(client, settings, by_partition)  # every offset, the bad one's included
        metrics = urllib.request.urlopen(f"{proc.address}/metrics", timeout=5).read().decode()
    finally:
        proc.stop()

    # The one dead letter: the broken event, with its own reason and a detail naming the clock.
    dead = consume_all(settings.kafka_bootstrap, settings.topic_dlq, expected=1, timeout=10)
    assert len(dead) == 1
    letter = fastavro.schemaless_reader(io.BytesIO(dead[0].value()[10:]),
                                        avro_schema("DeadLetter"))
    assert letter["reason"] == "future_event_time"
    assert letter["source_partition"] == bad_partition
    assert b"broken-clock" in letter["original"]
    assert "days ahead of this worker's clock" in letter["detail"]
    assert "max_future_skew" in letter["detail"]
    assert metric_value(metrics, "driftline_dead_letters_total",
                        reason="future_event_time") == 1
    assert metric_value(metrics, "driftline_late_events_total", view=VIEW.name) == 0

    # Every good event was applied, with the values of a stream that never had the bad event.
    good = {p: [e for e in events if e["event_id"] != "broken-clock"]
            for p, events in by_partition.items()}
    oracle = expected(good)
    assert all(not r.late.any() for r in oracle.values())
    online_keys = OnlineKeys.for_settings(settings)
    for result in oracle.values():
        for entity, (event_time, values) in result.final_online.items():
            row = {k.decode(): v.decode()
                   for k, v in client.hgetall(online_keys.feature(VIEW.name, entity)).items()}
            assert int(row["_event_time"]) == event_time
            np.testing.assert_allclose([float(row[n]) for n in VIEW.feature_names], values,
                                       rtol=1e-9, atol=1e-9, err_msg=entity)
    store = OfflineStore(settings.data_dir / "offline")
    table = store.read(store.features_dir(VIEW.name)).to_pandas().set_index("event_id")
    assert len(table) == 4000 and "broken-clock" not in table.index
    for p, result in oracle.items():
        ids = [e["event_id"] for e in good[p]]
        np.testing.assert_allclose(table.loc[ids, list(VIEW.feature_names)].to_numpy(),
                                   result.values, rtol=1e-9, atol=1e-9, err_msg=f"partition {p}")
    # The guarded event is not archived as a raw event either, so a backfill cannot replay it.
    events = store.read(store.events_dir(settings.topic_events)).to_pandas()
    assert len(events) == 4000 and "broken-clock" not in set(events["event_id"])
    features = consume_all(settings.kafka_bootstrap, settings.topic_features, 4000)
    assert len(features) == 4000
