"""docker-compose.yml cannot run here (no Docker engine); this keeps it consistent instead."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from driftline.commands.cli import build_parser
from driftline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DRIFTLINE = {name: s for name, s in SERVICES.items() if "build" in s}
# Long-running Driftline services (the others run once: topics, train-model, demo-producer).
LONG_RUNNING = {name for name, s in DRIFTLINE.items() if s.get("restart")}
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def driftline_invocations(command: list[str]) -> list[list[str]]:
    """The `driftline ...` argument lists a service command runs: the command itself, or each
    `driftline` call of an ``sh -c`` script (split on ``||``, ``&&`` and ``;``)."""
    if command[:2] == ["sh", "-c"]:
        calls = []
        for part in re.split(r"\|\||&&|;", command[2]):
            words = [w for w in shlex.split(part) if not re.match(r"^\d?>|^>", w)
                     and w != "/dev/null"]
            if words:
                calls.append(words)
        return calls
    return [command]


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of every volume of a service, short syntax."""
    return [tuple(v.split(":")[:2]) for v in service.get("volumes", [])]


def test_stack_has_the_infrastructure():
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("redis", "prometheus", "grafana"):
        assert name in SERVICES
    assert {"worker", "topics", "scorer", "monitor", "retrain-controller", "train-model",
            "demo-producer"} <= set(DRIFTLINE)


@pytest.mark.parametrize("name", sorted(DRIFTLINE))
def test_driftline_service_command_is_a_real_subcommand(name):
    calls = driftline_invocations(SERVICES[name]["command"])
    assert calls
    for call in calls:
        assert call[0] == "driftline", call
        build_parser().parse_args(call[1:])  # exits (fails the test) on an unknown subcommand


def test_the_demo_producer_publishes_drift_after_the_pipeline_is_healthy():
    producer = SERVICES["demo-producer"]
    args = build_parser().parse_args(producer["command"][1:])
    assert args.command == "produce-demo" and args.drift_at is not None
    assert 0 < args.drift_at < args.events
    assert {name for name, cond in producer["depends_on"].items()
            if cond["condition"] == "service_healthy"} >= {"worker", "scorer", "monitor"}


def test_the_scorer_starts_after_a_model_is_trained():
    assert SERVICES["scorer"]["depends_on"]["train-model"]["condition"] == \
        "service_completed_successfully"
    assert "train-initial" in " ".join(SERVICES["train-model"]["command"])


@pytest.mark.parametrize("name", sorted(DRIFTLINE))
def test_driftline_service_environment_is_valid_settings(name):
    env = {k: str(v) for k, v in SERVICES[name]["environment"].items()}
    settings = Settings.from_env(env)  # raises on unknown DRIFTLINE_* variables
    assert settings.profile == "prod", "the compose stack runs production timings"
    host, port = settings.kafka_bootstrap_or_fail.split(":")
    assert host in SERVICES and f"PLAINTEXT://{host}:{port}" in (
        SERVICES[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    redis_host = settings.redis_url_or_fail.split("//")[1].split(":")[0]
    assert redis_host in SERVICES


def test_every_scrape_target_is_a_published_driftline_service_on_its_port():
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets = {t for job in prometheus["scrape_configs"]
               for cfg in job["static_configs"] for t in cfg["targets"]}
    assert {t.split(":")[0] for t in targets} == LONG_RUNNING
    for target in targets:
        host, port = target.split(":")
        service = SERVICES[host]
        settings = Settings.from_env({k: str(v) for k, v in service["environment"].items()})
        command = service["command"][1]
        role = {"worker": "worker", "serve": "scorer", "monitor": "monitor",
                "retrain-controller": "controller"}[command]
        assert str(getattr(settings, f"{role}_port")) == port, target
        assert getattr(settings, f"{role}_host") == "0.0.0.0", target
        assert f"{port}:{port}" in service["ports"]


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_long_running_services_have_a_health_check_on_their_own_health_endpoint(name):
    service = SERVICES[name]
    settings = Settings.from_env({k: str(v) for k, v in service["environment"].items()})
    role = {"worker": "worker", "serve": "scorer", "monitor": "monitor",
            "retrain-controller": "controller"}[service["command"][1]]
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://localhost:{getattr(settings, f'{role}_port')}/health" in test[3]
    compile(test[3], "healthcheck", "exec")  # valid Python


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_depends_on_real_services(name):
    for dependency in SERVICES[name].get("depends_on", {}):
        assert dependency in SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_file_exists_and_every_named_volume_is_declared(name):
    for source, _ in mounts(SERVICES[name]):
        if source.startswith("."):
            assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
        else:
            assert source in COMPOSE["volumes"], f"{name}: volume {source} not declared"


def test_prometheus_gets_its_config_and_the_rules_it_names():
    prometheus = SERVICES["prometheus"]
    mounted = dict((target, source) for source, target in mounts(prometheus))
    config_source = mounted["/etc/prometheus/prometheus.yml"]
    assert (ROOT / config_source).resolve() == PROMETHEUS_FILE
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert config["rule_files"], "the alert rules are loaded"
    for rule_file in config["rule_files"]:
        in_container = str(Path("/etc/prometheus") / rule_file)
        assert in_container in mounted, f"{rule_file} is not mounted"
        assert (ROOT / mounted[in_container]).is_file()
    assert any(target == "/prometheus" for _, target in mounts(prometheus)), "named storage"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_gets_the_datasource_and_the_dashboards():
    grafana = SERVICES["grafana"]
    mounted = dict((target, source) for source, target in mounts(grafana))
    provisioning = ROOT / mounted["/etc/grafana/provisioning"]
    assert (provisioning / "datasources" / "prometheus.yml").is_file()
    providers = yaml.safe_load(
        (provisioning / "dashboards" / "driftline.yml").read_text())["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounted, f"the dashboards provider reads {path}, which is not mounted"
        dashboards = sorted((ROOT / mounted[path]).glob("*.json"))
        assert len(dashboards) == 4, dashboards
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder, _, file = home.rpartition("/")
    assert (ROOT / mounted[folder] / file).is_file()
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in SERVICES["prometheus"]["ports"]
