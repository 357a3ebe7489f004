"""docker-compose.yml cannot run here (no Docker engine); this keeps it consistent instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from driftline.commands.cli import build_parser
from driftline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DRIFTLINE = {name: s for name, s in SERVICES.items() if "build" in s}


def test_stack_has_the_infrastructure():
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("redis", "prometheus", "grafana"):
        assert name in SERVICES
    assert {"worker", "topics"} <= set(DRIFTLINE)


@pytest.mark.parametrize("name", sorted(DRIFTLINE))
def test_driftline_service_command_is_a_real_subcommand(name):
    command = SERVICES[name]["command"]
    assert command[0] == "driftline"
    build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown subcommand


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


def test_worker_port_is_published_and_scraped():
    worker = SERVICES["worker"]
    settings = Settings.from_env({k: str(v) for k, v in worker["environment"].items()})
    assert f"{settings.worker_port}:{settings.worker_port}" in worker["ports"]
    assert settings.worker_host == "0.0.0.0"
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"]
               for cfg in job["static_configs"] for t in cfg["targets"]]
    assert f"worker:{settings.worker_port}" in targets
