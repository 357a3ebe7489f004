"""`driftline dev`: the whole local stack in one command.

Starts the embedded broker and Redis unless addresses are given, creates the topics, starts every
Driftline service as a child process, prints one line per endpoint and then ``ready``. SIGINT or
SIGTERM stops everything it started, in reverse order, and leaves no process behind.

Once ready it records the stack in ``DRIFTLINE_DEV_RECORD`` (``~/.driftline/dev-stack.json``), so
commands in another terminal find it with no variable set (``Settings.discover``); the record is
removed on exit.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from driftline.adapters import kafka
from driftline.commands import local_servers
from driftline.commands.local_servers import ManagedProcess, ServerStartError
from driftline.settings import Settings


@dataclass
class Stack:
    settings: Settings
    processes: list[ManagedProcess] = field(default_factory=list)
    endpoints: list[tuple[str, str]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()


def start_servers(settings: Settings) -> Stack:
    """Broker and Redis: the given ones, else embedded. Returns settings that point at them."""
    log_dir = settings.data_dir / "logs"
    stack = Stack(settings)
    try:
        if not settings.kafka_bootstrap:
            broker = local_servers.start_broker(log_dir)
            stack.processes.append(broker)
            settings = settings.replace(kafka_bootstrap=broker.address)
        if not settings.redis_url:
            redis = local_servers.start_redis(log_dir)
            stack.processes.append(redis)
            settings = settings.replace(redis_url=redis.address)
    except BaseException:
        stack.stop()
        raise
    stack.settings = settings
    stack.endpoints += [("kafka", settings.kafka_bootstrap), ("redis", settings.redis_url)]
    return stack


def _get_json(url: str) -> dict:
    """GET a JSON body, also from a 503 (a service that is up but not yet serving)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def wait_healthy(url: str, proc: ManagedProcess, timeout: float,
                 ready: Callable[[dict], bool] = lambda body: True) -> dict:
    """Poll a JSON health endpoint until it answers 200 and `ready(body)` holds."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ServerStartError(f"{proc.name} exited with code {proc.proc.returncode}:\n"
                                   f"{proc.log_tail(40)}")
        try:
            body = _get_json(url)
            if ready(body):
                return body
            last = json.dumps(body)
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ServerStartError(f"{proc.name} not ready at {url} within {timeout:.0f}s ({last}):\n"
                           f"{proc.log_tail(40)}")


def spawn_service(settings: Settings, service: str, log_dir, name: str | None = None
                  ) -> ManagedProcess:
    """Start `driftline worker`, `serve`, `monitor` or `retrain-controller` (a port of 0 means:
    pick a free one)."""
    command, role = SERVICES[service]
    host, port = getattr(settings, f"{role}_host"), getattr(settings, f"{role}_port")
    port = port or local_servers.free_port()
    env = local_servers.child_env(settings.replace(**{f"{role}_port": port}).to_env())
    return local_servers.spawn(name or service, local_servers.python_argv(command), log_dir,
                               f"http://{host}:{port}", env=env)


def wait_consuming(proc: ManagedProcess, timeout: float = 60.0) -> ManagedProcess:
    """Wait until a spawned service consumes its topic; stop it if it never does."""
    try:
        wait_healthy(f"{proc.address}/health", proc, timeout, ready=_consuming)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_service(settings: Settings, service: str, log_dir, timeout: float = 60.0,
                  name: str | None = None) -> ManagedProcess:
    """Spawn a service and wait until it consumes its topic. `name` names the log file."""
    return wait_consuming(spawn_service(settings, service, log_dir, name), timeout)


# service name -> (driftline subcommand, settings prefix of its host and port)
SERVICES = {"worker": ("worker", "worker"), "scorer": ("serve", "scorer"),
            "monitor": ("monitor", "monitor"),
            "controller": ("retrain-controller", "controller")}
ENDPOINTS = {"worker": "(/health /metrics)", "scorer": "(/predict /health /openapi.json)",
             "monitor": "(/status /health /metrics)", "controller": "(/health /metrics)"}


def _consuming(body: dict) -> bool:
    """Ready once the service's batch loop has partitions (a scorer may still await a model)."""
    stream = body.get("stream", body)
    return stream.get("status") == "ok" and bool(stream["assigned_partitions"])


def start_services(stack: Stack, *services: str) -> list[ManagedProcess]:
    """Spawn the services together (their group joins overlap), then wait for each."""
    procs = [spawn_service(stack.settings, name, stack.settings.data_dir / "logs")
             for name in services]
    stack.processes.extend(procs)
    for name, proc in zip(services, procs, strict=True):
        wait_consuming(proc)
        stack.endpoints.append((name, f"{proc.address} {ENDPOINTS[name]}"))
    return procs


def write_dev_record(stack: Stack, services: dict[str, str]) -> Path:
    """Record the running stack for other commands (read by ``settings.read_dev_record``).

    Written atomically (a temporary file, then a rename), so a reader never sees half a record.
    """
    s = stack.settings
    record = {"pid": os.getpid(), "kafka_bootstrap": s.kafka_bootstrap, "redis_url": s.redis_url,
              "data_dir": str(s.data_dir.resolve()),
              "feature_defs": str(s.feature_defs.resolve()) if s.feature_defs else None,
              # how readers find an entity's online values (redis_layout.OnlineKeys)
              "partitions": s.partitions, "partitioner": s.partitioner,
              "profile": "dev", "endpoints": services, "started_at": int(time.time() * 1000)}
    path = s.dev_record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove_dev_record(path: Path) -> None:
    """Remove the record if it is still this process's (a newer `driftline dev` may own it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


# service name -> its docker-compose service, the host of its scrape target in
# deploy/prometheus/prometheus.yml
COMPOSE_NAMES = {"worker": "worker", "scorer": "scorer", "monitor": "monitor",
                 "controller": "retrain-controller"}


def start_prometheus(stack: Stack, services: dict[str, str], port: int | None = None,
                     interval: str = "1s") -> ManagedProcess:
    """Prometheus scraping `services` (name -> ``http://host:port``) with docker-compose's jobs
    and alert rules, its storage in ``$DRIFTLINE_DATA_DIR/prometheus``."""
    targets = {COMPOSE_NAMES[name]: address.split("://", 1)[-1]
               for name, address in services.items()}
    data_dir = stack.settings.data_dir
    proc = local_servers.start_prometheus(data_dir / "logs", data_dir / "prometheus", targets,
                                          port=port, interval=interval)
    stack.processes.append(proc)
    stack.endpoints.append(("prometheus", f"{proc.address} (alert rules: /alerts)"))
    return proc


def run_dev(settings: Settings, with_services: bool = True, out=print,
            prometheus: bool = False, prometheus_port: int | None = 9090) -> int:
    if prometheus:  # fail before starting anything if it is missing
        local_servers.prometheus_binary()
        local_servers.deploy_dir()
    stack = start_servers(settings)
    stopping = []

    def on_signal(signum, frame):  # noqa: ARG001
        stopping.append(signum)
        raise KeyboardInterrupt

    # Both, explicitly: a shell starting us in the background may have set SIGINT to ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        created = kafka.create_topics(stack.settings)
        stack.endpoints.append(("topics", ", ".join(sorted(created))))
        services = {}
        if with_services:
            names = ("worker", "scorer", "monitor", "controller")
            procs = start_services(stack, *names)
            services = {name: proc.address for name, proc in zip(names, procs, strict=True)}
        if prometheus:
            services["prometheus"] = start_prometheus(stack, dict(services),
                                                      prometheus_port).address
        try:
            stack.endpoints.append(("record", str(write_dev_record(stack, services))))
        except OSError as exc:  # the stack works without it; other terminals need variables
            stack.endpoints.append(("record", f"not written: {exc}"))
        for name, address in stack.endpoints:
            out(f"{name:<8} {address}")
        out("ready", flush=True)
        while all(p.alive() for p in stack.processes):
            time.sleep(0.5)
        dead = [p for p in stack.processes if not p.alive()]
        for proc in dead:
            out(f"{proc.name} exited with code {proc.proc.returncode}; stopping\n"
                f"{proc.log_tail(40)}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        remove_dev_record(stack.settings.dev_record)
        stack.stop()
