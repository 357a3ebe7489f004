"""The synthetic stream: determinism, schema validity, lateness bound, labels and drift switches."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.core.codec import Decoder, encode
from driftline.core.demo_events import DemoConfig, DemoGenerator

DAY_MS = 86_400_000


def _events(n: int = 20_000, **overrides) -> tuple[DemoGenerator, list[dict]]:
    generator = DemoGenerator(DemoConfig(seed=3, n_entities=500, **overrides))
    return generator, generator.events(n)


def test_same_seed_same_stream_other_seed_other_stream():
    assert _events(2_000)[1] == _events(2_000)[1]
    other = DemoGenerator(DemoConfig(seed=4, n_entities=500)).events(2_000)
    assert other != _events(2_000)[1]


def test_successive_calls_continue_the_stream():
    generator = DemoGenerator(DemoConfig(seed=3))
    first, second = generator.events(100), generator.events(100)
    assert first[-1]["event_time"] <= second[0]["event_time"]
    assert len({e["event_id"] for e in first + second}) == 200


def test_events_are_valid_and_in_event_time_order():
    _, events = _events(5_000)
    decoder = Decoder("TransactionEvent")
    records, failures = decoder.decode_many([encode("TransactionEvent", e) for e in events])
    assert failures == [] and records == events
    times = [e["event_time"] for e in events]
    assert times == sorted(times)
    assert times[0] >= DemoConfig().start_ms


def test_per_card_behaviour_is_consistent():
    _, events = _events()
    by_card: dict[str, list[dict]] = {}
    for e in events:
        by_card.setdefault(e["entity_id"], []).append(e)
    busy = [v for v in by_card.values() if len(v) >= 40]
    assert busy
    for history in busy:
        assert len({e["segment"] for e in history}) == 1
        countries = [e["country"] for e in history]
        assert max(countries.count(c) for c in set(countries)) / len(countries) > 0.7


def test_shuffle_respects_the_lateness_bound():
    bound = 2_000
    _, ordered = _events(5_000)
    _, shuffled = _events(5_000, shuffle_within_ms=bound)
    assert shuffled != ordered
    assert sorted(shuffled, key=lambda e: e["event_id"]) == ordered
    newest = shuffled[0]["event_time"]
    for e in shuffled:
        assert newest - e["event_time"] < bound
        newest = max(newest, e["event_time"])


def test_labels_follow_events_within_the_delay_range():
    generator, events = _events(5_000, label_delay_ms=(1_000, 9_000))
    labels = generator.labels_for(events)
    assert len(labels) == len(events)
    decoder = Decoder("Label")
    assert decoder.decode_many([encode("Label", label) for label in labels])[1] == []
    times = {e["event_id"]: e["event_time"] for e in events}
    assert all(1_000 <= lb["label_time"] - times[lb["event_id"]] <= 9_000 for lb in labels)
    assert [lb["label_time"] for lb in labels] == sorted(lb["label_time"] for lb in labels)
    assert 0.003 < np.mean([lb["label"] for lb in labels]) < 0.03


def test_labels_for_unknown_events_is_an_error():
    generator, events = _events(10)
    with pytest.raises(KeyError, match="not produced"):
        generator.labels_for([{**events[0], "event_id": "ev-3-999999999"}])


def test_fraud_looks_like_fraud_before_drift():
    generator, events = _events(50_000)
    labels = {lb["event_id"]: lb["label"] for lb in generator.labels_for(events)}
    fraud = np.array([labels[e["event_id"]] for e in events], dtype=bool)
    log_amount = np.log([e["amount"] for e in events])
    assert log_amount[fraud].mean() > log_amount[~fraud].mean() + 1.0


def _split(events, drift_at):
    before = [e for e in events if e["event_time"] < drift_at]
    after = [e for e in events if e["event_time"] >= drift_at]
    return before, after


def test_covariate_shift_changes_amounts_and_channels_only_after_drift():
    _, plain = _events(40_000)
    drift_at = plain[20_000]["event_time"]
    _, shifted = _events(40_000, drift_at_ms=drift_at, covariate_shift=1.0)
    plain_before, plain_after = _split(plain, drift_at)
    shifted_before, shifted_after = _split(shifted, drift_at)
    assert shifted_before == plain_before  # nothing changes before the drift point

    def mean_log_amount(events):
        return np.mean(np.log([e["amount"] for e in events]))

    def online_share(events):
        return np.mean([e["channel"] == "online" for e in events])

    assert mean_log_amount(shifted_after) > mean_log_amount(plain_after) + 0.5
    assert online_share(shifted_after) > online_share(plain_after) + 0.2


def test_concept_shift_changes_the_feature_label_relation():
    config = dict(n=60_000)
    generator, plain = _events(**config)
    drift_at = plain[30_000]["event_time"]
    shifted_gen, shifted = _events(**config, drift_at_ms=drift_at, concept_shift=True)

    def fraud_lift_of_high_amounts(generator, events):
        labels = {lb["event_id"]: lb["label"] for lb in generator.labels_for(events)}
        amounts = np.array([e["amount"] for e in events])
        fraud = np.array([labels[e["event_id"]] for e in events], dtype=bool)
        high = amounts > np.quantile(amounts, 0.95)
        return fraud[high].mean() / fraud.mean()

    plain_after = _split(plain, drift_at)[1]
    shifted_before, shifted_after = _split(shifted, drift_at)
    assert fraud_lift_of_high_amounts(generator, plain_after) > 3.0
    assert fraud_lift_of_high_amounts(shifted_gen, shifted_after) < 1.0
    assert fraud_lift_of_high_amounts(shifted_gen, shifted_before) > 3.0
