"""The stream-processing peers `bench_pipeline.py` runs, and the virtualenvs they run in.

Each peer is a script in `bench/` that reads the bench's events topic in its own process and
writes ``{"assigned_at", "done_at", "count"}`` when it has processed every event (see each
script's docstring). Faust is a project dependency and runs with the project's python (it is
the framework Driftline's own services run in). Quix Streams, Bytewax and Pathway pin their own
dependency versions (Quix its own confluent-kafka range), so each runs in a virtualenv of its
own, ``bench/.peers/<name>``, created and filled with pip on first use (git-ignored): their pins
never touch the project's environment, and a venv is rebuilt only when its requirement list here
changes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / ".peers"
REQUIREMENTS_FILE = "bench-requirements.txt"  # inside a venv: what it was built from

# venv name -> pip requirements. fastavro decodes the Avro single-object events, confluent-kafka
# is Bytewax's Kafka client and, for Pathway (whose reader is Rust), only its assignment watch.
VENVS: dict[str, list[str]] = {
    "quix": ["quixstreams==3.28.*", "fastavro"],
    "bytewax": ["bytewax==0.21.*", "fastavro", "confluent-kafka"],
    "pathway": ["pathway==0.33.*", "fastavro", "confluent-kafka"],
}


@dataclass(frozen=True)
class RunContext:
    """What a peer's command line is built from."""

    bootstrap: str
    topic: str  # Avro single-object events
    json_topic: str  # the JSON copy (only produced when a selected peer needs it)
    events: int
    partitions: int
    run_dir: Path
    schema_file: Path  # the writer schema for peers without Driftline (peer_common.py)


@dataclass(frozen=True)
class Peer:
    name: str  # as given to --peers
    system: str  # table label; "{version}" is filled with the installed package version
    package: str  # the distribution whose version is shown
    per_event: str  # what it computes, for the table
    script: str
    args: Callable[[RunContext], list[str]]
    venv: str | None = None  # None: the project's python
    needs_json: bool = False


def _faust(c: RunContext) -> list[str]:
    return ["--bootstrap", c.bootstrap, "--topic", c.topic, "--group", "bench-faust",
            "--partitions", str(c.partitions), "--events", str(c.events),
            "--datadir", str(c.run_dir / "faust")]


def _quix(window: str) -> Callable[[RunContext], list[str]]:
    def args(c: RunContext) -> list[str]:
        return ["--bootstrap", c.bootstrap, "--topic", c.topic, "--group", f"bench-quix-{window}",
                "--events", str(c.events), "--state-dir", str(c.run_dir / f"quix-{window}"),
                "--schema", str(c.schema_file), "--window", window]
    return args


def _bytewax(window: str) -> Callable[[RunContext], list[str]]:
    def args(c: RunContext) -> list[str]:
        return ["--bootstrap", c.bootstrap, "--topic", c.topic, "--events", str(c.events),
                "--schema", str(c.schema_file), "--batch-size", "10000", "--window", window]
    return args


def _pathway(fmt: str) -> Callable[[RunContext], list[str]]:
    def args(c: RunContext) -> list[str]:
        topic = c.json_topic if fmt == "json" else c.topic
        return ["--bootstrap", c.bootstrap, "--topic", topic, "--group", f"bench-pathway-{fmt}",
                "--events", str(c.events), "--format", fmt, "--schema", str(c.schema_file),
                "--autocommit-ms", "100"]
    return args


PEERS: dict[str, Peer] = {p.name: p for p in [
    Peer("faust", "Faust agent (faust-streaming {version})", "faust-streaming",
         "count raw bytes, `take(5000, within=1)`; nothing else", "peer_faust.py", _faust),
    Peer("quix", "Quix Streams {version}, sliding", "quixstreams",
         "fastavro decode, event-time extractor, 1 h sliding-window sum(amount) per key, "
         "`.final()`, RocksDB + changelog", "peer_quix.py", _quix("sliding"), venv="quix"),
    Peer("quix-tumbling", "Quix Streams {version}, tumbling", "quixstreams",
         "fastavro decode, event-time extractor, 1 h tumbling-window sum(amount) per key, "
         "`.final()`, RocksDB + changelog", "peer_quix.py", _quix("tumbling"), venv="quix"),
    Peer("bytewax", "Bytewax {version}, tumbling", "bytewax",
         "fastavro decode, `EventClock` on event_time, 1 h tumbling `fold_window` sum(amount) "
         "per key (a sum per key and hour, emitted when the hour closes), source batch 10,000, "
         "1 worker", "peer_bytewax.py", _bytewax("tumbling"), venv="bytewax"),
    Peer("bytewax-rolling", "Bytewax {version}, rolling", "bytewax",
         "fastavro decode, `stateful_map` per key: exact rolling 1 h sum(amount) by event time, "
         "emitted for every event, source batch 10,000, 1 worker", "peer_bytewax.py",
         _bytewax("rolling"), venv="bytewax"),
    Peer("pathway", "Pathway {version}, tumbling", "pathway",
         "Rust Kafka reader (streaming), fastavro decode in a Python UDF, `windowby` 1 h "
         "tumbling sum(amount) + count per key (rows revised as events arrive), minibatches every "
         "100 ms, 1 thread",
         "peer_pathway.py", _pathway("avro"), venv="pathway"),
    Peer("pathway-json", "Pathway {version}, tumbling, JSON copy", "pathway",
         "**reads a JSON copy of the topic** with its Rust JSON parser (no Python per event), "
         "`windowby` 1 h tumbling sum(amount) + count per key, minibatches every 100 ms, 1 thread",
         "peer_pathway.py", _pathway("json"), venv="pathway", needs_json=True),
]}
DEFAULT_PEERS = list(PEERS)


def python_for(peer: Peer) -> str:
    """The interpreter that runs `peer`, its virtualenv built first if needed."""
    if peer.venv is None:
        return sys.executable
    return str(ensure_venv(peer.venv))


def ensure_venv(name: str) -> Path:
    """``bench/.peers/<name>/bin/python``, the venv created and pip-installed on first use."""
    root = PEERS_DIR / name
    python = root / "bin" / "python"
    wanted = "\n".join(VENVS[name]) + "\n"
    marker = root / REQUIREMENTS_FILE
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"peer venv {root}: creating and installing {' '.join(VENVS[name])} (once)",
          flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *VENVS[name]], check=True)
    marker.write_text(wanted)
    print(f"peer venv {root}: ready in {time.perf_counter() - started:.0f} s", flush=True)
    return python


def version_of(peer: Peer, python: str) -> str:
    """The installed version of the peer's package, in the interpreter that runs it."""
    if python == sys.executable:
        try:
            return metadata.version(peer.package)
        except metadata.PackageNotFoundError:
            return "?"
    out = subprocess.run([python, "-c", "import sys, importlib.metadata as m; "
                          "print(m.version(sys.argv[1]))", peer.package],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"
