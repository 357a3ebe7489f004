"""Finding a running `driftline dev` stack from another terminal, with no variable set.

Real sockets and real processes: a listening socket stands for a live broker or Redis port, a
bound but not listening one for a closed port, this test process for a live `driftline dev`
and a reaped `true` for a dead one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from driftline.commands import cli
from driftline.commands.dev_stack import Stack, remove_dev_record, write_dev_record
from driftline.settings import PROFILES, Settings, read_dev_record


@pytest.fixture
def listening():
    """Two ports that accept connections: the 'broker' and the 'redis'."""
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        socks.append(sock)
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


@pytest.fixture
def closed_port():
    """A port that refuses connections (bound, so nobody else takes it, but not listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_record(path: Path, pid: int, kafka_port: int, redis_port: int, **extra) -> Path:
    record = {"pid": pid, "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
              "redis_url": f"redis://127.0.0.1:{redis_port}/0", "data_dir": "/srv/dev-data",
              "feature_defs": "/srv/defs", "profile": "dev", "endpoints": {},
              "started_at": 1, **extra}
    path.write_text(json.dumps(record))
    return path


def env_for(record: Path, **variables: str) -> dict[str, str]:
    return {"DRIFTLINE_DEV_RECORD": str(record), **variables}


def test_live_record_is_adopted(tmp_path, listening):
    record = write_record(tmp_path / "dev.json", os.getpid(), *listening)
    s = Settings.discover(env_for(record))
    assert s.kafka_bootstrap == f"127.0.0.1:{listening[0]}"
    assert s.redis_url == f"redis://127.0.0.1:{listening[1]}/0"
    assert s.profile == "dev"
    assert s.session_timeout_ms == PROFILES["dev"]["session_timeout_ms"]
    assert s.data_dir == Path("/srv/dev-data") and s.feature_defs == Path("/srv/defs")
    assert s.redis_url_or_fail == s.redis_url


def test_a_record_of_a_stack_on_a_redis_cluster_is_adopted(tmp_path, listening, closed_port):
    """Its first node is the one checked (a `driftline dev` given a redis+cluster:// URL)."""
    url = f"redis+cluster://127.0.0.1:{listening[1]},127.0.0.1:{closed_port}"
    record = write_record(tmp_path / "dev.json", os.getpid(), *listening, redis_url=url)
    assert Settings.discover(env_for(record)).redis_url == url


def test_explicit_variables_win_field_by_field(tmp_path, listening):
    record = write_record(tmp_path / "dev.json", os.getpid(), *listening)
    s = Settings.discover(env_for(record, DRIFTLINE_DATA_DIR="/mine",
                                  DRIFTLINE_PROFILE="prod", DRIFTLINE_PARTITIONS="2"))
    assert s.kafka_bootstrap == f"127.0.0.1:{listening[0]}"  # adopted
    assert s.data_dir == Path("/mine") and s.profile == "prod" and s.partitions == 2
    assert s.session_timeout_ms == PROFILES["prod"]["session_timeout_ms"]
    assert s.feature_defs == Path("/srv/defs")


@pytest.mark.parametrize("variable", ["DRIFTLINE_KAFKA_BOOTSTRAP", "DRIFTLINE_REDIS_URL"])
def test_an_explicit_server_means_the_record_is_not_used(tmp_path, listening, variable):
    record = write_record(tmp_path / "dev.json", os.getpid(), *listening)
    s = Settings.discover(env_for(record, **{variable: "elsewhere:1"}))
    assert s.profile == "prod" and s.data_dir == Path("data") and s.feature_defs is None
    assert "127.0.0.1" not in f"{s.kafka_bootstrap} {s.redis_url}"


def test_record_of_a_dead_process_is_not_trusted(tmp_path, listening, dead_pid):
    record = write_record(tmp_path / "dev.json", dead_pid, *listening)
    s = Settings.discover(env_for(record))
    assert s.kafka_bootstrap is None and s.redis_url is None and s.profile == "prod"
    assert s.data_dir == Path("data")
    with pytest.raises(RuntimeError) as info:
        _ = s.redis_url_or_fail
    assert str(info.value) == (
        f"DRIFTLINE_REDIS_URL is not set (run `driftline dev` or set it); "
        f"stale `driftline dev` record at {record} (pid {dead_pid} gone)")
    with pytest.raises(RuntimeError, match=f"pid {dead_pid} gone"):
        _ = s.kafka_bootstrap_or_fail


@pytest.mark.parametrize("dead", ["broker", "redis"])
def test_record_with_a_closed_port_is_not_trusted(tmp_path, listening, closed_port, dead):
    ports = [closed_port, listening[1]] if dead == "broker" else [listening[0], closed_port]
    record = write_record(tmp_path / "dev.json", os.getpid(), *ports)
    s = Settings.discover(env_for(record))
    assert s.kafka_bootstrap is None and s.redis_url is None
    with pytest.raises(RuntimeError) as info:
        _ = s.kafka_bootstrap_or_fail
    assert f"stale `driftline dev` record at {record} ({dead} port {closed_port} closed)" in (
        str(info.value))


def test_unreadable_record_is_named(tmp_path):
    record = tmp_path / "dev.json"
    record.write_text("{half a rec")
    s = Settings.discover(env_for(record))
    assert s.redis_url is None
    with pytest.raises(RuntimeError, match=f"unreadable `driftline dev` record at {record}"):
        _ = s.redis_url_or_fail


def test_no_record_gives_the_plain_message(tmp_path):
    s = Settings.discover(env_for(tmp_path / "absent.json"))
    with pytest.raises(RuntimeError) as info:
        _ = s.redis_url_or_fail
    assert str(info.value) == "DRIFTLINE_REDIS_URL is not set (run `driftline dev` or set it)"


def test_stale_note_survives_replace_and_is_no_setting(tmp_path, dead_pid, listening):
    record = write_record(tmp_path / "dev.json", dead_pid, *listening)
    s = Settings.discover(env_for(record)).replace(partitions=3)
    with pytest.raises(RuntimeError, match="gone"):
        _ = s.redis_url_or_fail
    assert all(s.stale_dev_record not in v for v in s.to_env().values())
    assert Settings.from_env(s.to_env()) == s


def test_dev_record_default_is_in_the_home_folder():
    assert Settings().dev_record == Path.home() / ".driftline" / "dev-stack.json"
    assert Settings.from_env({"DRIFTLINE_DEV_RECORD": "~/x.json"}).dev_record == (
        Path.home() / "x.json")


def test_dev_writes_a_record_that_discover_reads_and_removes_only_its_own(tmp_path, listening,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = tmp_path / "nested" / "dev.json"
    stack = Stack(Settings(profile="dev", kafka_bootstrap=f"127.0.0.1:{listening[0]}",
                           redis_url=f"redis://127.0.0.1:{listening[1]}/0", dev_record=record,
                           partitions=2, partitioner="murmur2_random"))
    assert write_dev_record(stack, {"worker": "http://127.0.0.1:1"}) == record
    assert [p.name for p in record.parent.iterdir()] == ["dev.json"]  # no temporary left
    live, problem = read_dev_record(record)
    assert problem is None and live["pid"] == os.getpid() and live["profile"] == "dev"
    assert live["endpoints"] == {"worker": "http://127.0.0.1:1"}
    elsewhere = tmp_path / "other-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = Settings.discover(env_for(record))
    assert s.data_dir == tmp_path / "data"  # absolute: the dev stack's folder, not our cwd
    assert s.kafka_bootstrap == stack.settings.kafka_bootstrap
    # `features get` finds an entity's online values by its partition: the stack's count
    assert (s.partitions, s.partitioner) == (2, "murmur2_random")
    assert Settings.discover(env_for(record, DRIFTLINE_PARTITIONS="4")).partitions == 4

    taken = json.loads(record.read_text()) | {"pid": os.getpid() + 1}  # a newer dev owns it
    record.write_text(json.dumps(taken))
    remove_dev_record(record)
    assert record.exists()
    record.write_text(json.dumps(taken | {"pid": os.getpid()}))
    remove_dev_record(record)
    assert not record.exists()
    remove_dev_record(record)  # already gone: no error


@pytest.fixture
def clean_environ(monkeypatch, tmp_path):
    for name in [k for k in os.environ if k.startswith("DRIFTLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DRIFTLINE_DEV_RECORD", str(tmp_path / "dev.json"))
    return tmp_path / "dev.json"


def test_cli_names_the_stale_record(clean_environ, listening, dead_pid, capsys):
    write_record(clean_environ, dead_pid, *listening, feature_defs=None)
    assert cli.main(["features", "get", "card-1", "--json"]) == 2
    err = capsys.readouterr().err
    assert f"stale `driftline dev` record at {clean_environ} (pid {dead_pid} gone)" in err


def test_cli_refuses_unknown_variables_cleanly(clean_environ, monkeypatch, capsys):
    monkeypatch.setenv("DRIFTLINE_LOG_LEVLE", "debug")
    assert cli.main(["config"]) == 2
    assert "unknown setting(s) DRIFTLINE_LOG_LEVLE" in capsys.readouterr().err


def test_cli_log_level_comes_from_the_settings(clean_environ, monkeypatch, capsys):
    monkeypatch.setenv("DRIFTLINE_LOG_LEVEL", "loud")
    assert cli.main(["config"]) == 2
    assert "DRIFTLINE_LOG_LEVEL='loud': expected one of debug, info" in capsys.readouterr().err


def test_cli_config_shows_the_adopted_stack(clean_environ, listening, capsys):
    write_record(clean_environ, os.getpid(), *listening)
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1:{listening[0]}" in out and "/srv/dev-data" in out


def test_event_producer_without_settings_uses_the_dev_stack(clean_environ, listening):
    from driftline.adapters.event_producer import EventProducer

    write_record(clean_environ, os.getpid(), *listening)
    producer = EventProducer()
    assert producer.settings.kafka_bootstrap == f"127.0.0.1:{listening[0]}"
    assert producer.settings.profile == "dev"
