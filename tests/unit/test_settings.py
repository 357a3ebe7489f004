from pathlib import Path

import pytest

from driftline.settings import PROFILES, Settings, describe


def test_defaults_are_production():
    s = Settings.from_env({})
    assert s.profile == "prod"
    assert s.session_timeout_ms == PROFILES["prod"]["session_timeout_ms"]
    assert s.topics == {
        "events": "driftline.events", "features": "driftline.features",
        "predictions": "driftline.predictions", "labels": "driftline.labels",
        "drift": "driftline.drift", "models": "driftline.models", "dlq": "driftline.dlq",
        "shadow": "driftline.shadow"}
    assert s.partitions == 6


def test_dev_profile_shortens_group_timings_only():
    dev = Settings.from_env({"DRIFTLINE_PROFILE": "dev"})
    assert dev.session_timeout_ms < Settings().session_timeout_ms
    assert dev.topics == Settings().topics


def test_env_values_are_parsed():
    s = Settings.from_env({"DRIFTLINE_PARTITIONS": "3", "DRIFTLINE_DATA_DIR": "/tmp/x",
                           "DRIFTLINE_SESSION_TIMEOUT_MS": "1234"})
    assert s.partitions == 3 and s.data_dir == Path("/tmp/x") and s.session_timeout_ms == 1234


@pytest.mark.parametrize("env, message", [
    ({"DRIFTLINE_PARTITONS": "3"}, "unknown setting(s) DRIFTLINE_PARTITONS"),
    ({"DRIFTLINE_PARTITIONS": "six"}, "DRIFTLINE_PARTITIONS='six': expected a number"),
    ({"DRIFTLINE_PROFILE": "staging"}, "expected one of dev, prod"),
    ({"DRIFTLINE_PARTITIONS": "0"}, "must be >= 1"),
    ({"DRIFTLINE_LOG_LEVEL": "loud"}, "DRIFTLINE_LOG_LEVEL='loud': expected one of debug"),
    ({"DRIFTLINE_PARTITIONER": "murmur3"},
     "DRIFTLINE_PARTITIONER='murmur3': expected one of consistent_random, murmur2_random"),
])
def test_bad_settings_are_refused_with_the_variable_named(env, message):
    with pytest.raises(ValueError, match=None) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_to_env_round_trips():
    s = Settings.from_env({"DRIFTLINE_PROFILE": "dev", "DRIFTLINE_KAFKA_BOOTSTRAP": "h:1"})
    assert Settings.from_env(s.to_env()) == s


def test_every_setting_is_documented():
    rows = describe()
    assert all(env.startswith("DRIFTLINE_") and doc for env, _, doc in rows)
    assert len({env for env, _, _ in rows}) == len(rows)


def test_the_producers_partitioner_is_the_setting():
    """Readers of the online store compute partitions with the same setting (redis_layout)."""
    from driftline.adapters.kafka import producer_config

    for name in ("consistent_random", "murmur2_random"):
        config = producer_config(Settings(kafka_bootstrap="h:1", partitioner=name))
        assert config["partitioner"] == name
