"""What the compiled-engine peers of the pipeline benchmark share: decoding and the result file.

`peer_bytewax.py` and `peer_pathway.py` run in their own virtualenvs (``bench/.peers/<name>``)
so that their dependency pins never touch the project's; Driftline is not installed there. This
module therefore imports only the standard library and fastavro. The writer schema comes from a
file `bench_pipeline.py` writes (``{"header_hex", "schema"}``: the single-object header, i.e.
magic + CRC-64-AVRO fingerprint, and the schema without logical types, so ``event_time`` decodes
as int epoch ms exactly as Driftline's own reader does).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader


def avro_decoder(schema_file: str) -> Callable[[bytes], dict[str, Any]]:
    """Avro single-object bytes of the one writer schema in `schema_file` -> dict."""
    spec = json.loads(Path(schema_file).read_text())
    header = bytes.fromhex(spec["header_hex"])
    size = len(header)
    schema = parse_schema(spec["schema"], named_schemas={})

    def decode(value: bytes) -> dict[str, Any]:
        if value[:size] != header:
            raise ValueError("not a single-object message of the expected schema")
        return schemaless_reader(io.BytesIO(value[size:]), schema, None)

    return decode


def decoder(fmt: str, schema_file: str | None) -> Callable[[bytes], dict[str, Any]]:
    """The value decoder of a topic format: ``avro`` (needs the schema file) or ``json``."""
    if fmt == "json":
        return json.loads
    if not schema_file:
        raise SystemExit("--schema is required for --format avro")
    return avro_decoder(schema_file)


def peer_arguments(doc: str | None, group: bool = True) -> argparse.ArgumentParser:
    """The options every peer takes from `bench_pipeline.py` (`group`: a consumer group; Bytewax
    reads its partitions without one)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    if group:
        parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--result", required=True)
    return parser


def write_result(path: str, **timing: Any) -> None:
    """Write ``{"assigned_at", "done_at", "count", ...}`` atomically: the parent polls for the file
    and must never read it half-written."""
    result = Path(path)
    if result.exists():
        return
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done_at": time.time(), **timing}))
    tmp.rename(result)
