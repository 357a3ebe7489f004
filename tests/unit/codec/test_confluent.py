"""Confluent wire format against a real schema registry stand-in served by http.server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driftline.core.codec import (
    ConfluentRegistry,
    DecodeError,
    Decoder,
    RegistryUnavailable,
    encode_confluent,
)
from driftline.schemas import SCHEMA_DIR

OLD_EVENT = json.loads((SCHEMA_DIR / "TransactionEvent.avsc").read_text())
OLD_EVENT["fields"] = [f for f in OLD_EVENT["fields"] if f["name"] != "segment"]
REGISTERED = {
    1: (SCHEMA_DIR / "TransactionEvent.avsc").read_text(),
    2: json.dumps(OLD_EVENT),
    3: (SCHEMA_DIR / "Label.avsc").read_text(),
}


class _Registry(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).requests.append(self.path)
        prefix = "/schemas/ids/"
        schema_id = int(self.path[len(prefix) :]) if self.path.startswith(prefix) else -1
        if schema_id == 500:
            self._answer(500, {"error_code": 50001, "message": "store down"})
        elif schema_id == 7:
            self._answer(200, {"schemaType": "PROTOBUF", "schema": "syntax = 'proto3';"})
        elif schema_id in REGISTERED:
            self._answer(200, {"schema": REGISTERED[schema_id]})
        else:
            self._answer(404, {"error_code": 40403, "message": "Schema not found"})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def decoder(schemas, registry_url) -> Decoder:
    return Decoder("TransactionEvent", schemas, ConfluentRegistry(registry_url + "/"))


def test_confluent_round_trip_and_cache(decoder, schemas, event):
    _Registry.requests.clear()
    value = encode_confluent(1, schemas.get("TransactionEvent"), event)
    assert value[:5] == b"\x00\x00\x00\x00\x01"
    assert decoder.decode(value) == event
    assert decoder.decode(value) == event
    assert _Registry.requests == ["/schemas/ids/1"]  # fetched once, then cached


def test_registered_older_version_resolves_to_reader(decoder, event):
    from driftline.core.codec.schema_set import compile_schema

    old = compile_schema(OLD_EVENT)
    value = encode_confluent(2, old, {k: v for k, v in event.items() if k != "segment"})
    assert decoder.decode(value) == {**event, "segment": "unknown"}


def test_for_settings_uses_the_configured_url(schemas, registry_url, event):
    class Settings:
        schema_registry_url = registry_url

    decoder = Decoder.for_settings(Settings(), "TransactionEvent", schemas)
    assert decoder.decode(encode_confluent(1, schemas.get("TransactionEvent"), event)) == event


@pytest.mark.parametrize(
    "schema_id, reason, detail",
    [
        (99, "unknown_schema", "schema id 99 is not in"),
        (7, "unknown_schema", "PROTOBUF"),
        (3, "schema_mismatch", "driftline.Label"),
    ],
)
def test_bad_schema_ids(decoder, schemas, event, schema_id, reason, detail):
    value = encode_confluent(schema_id, schemas.get("TransactionEvent"), event)
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    assert info.value.reason == reason
    assert detail in info.value.detail


def test_short_confluent_header(decoder):
    with pytest.raises(DecodeError, match="Confluent wire format") as info:
        decoder.decode(b"\x00\x00\x01")
    assert info.value.reason == "decode_error"


def test_registry_failure_is_not_a_bad_record(decoder, schemas, event):
    value = encode_confluent(500, schemas.get("TransactionEvent"), event)
    with pytest.raises(RegistryUnavailable, match="HTTP 500"):
        decoder.decode_many([value])


def test_unreachable_registry(schemas, event):
    registry = ConfluentRegistry("http://127.0.0.1:9")  # discard port: connection refused
    decoder = Decoder("TransactionEvent", schemas, registry)
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        decoder.decode(encode_confluent(1, schemas.get("TransactionEvent"), event))
