"""The scorer's HTTP API fuzzed from its own OpenAPI document, served by a real ``driftline serve``.

A real scorer process (real broker, real Redis, a trained Production model) serves
``GET /openapi.json``; schemathesis loads the schema from that URL and generates requests for
every operation: the documented examples, the coverage phase (boundary values, missing and
malformed bodies, undeclared content types and methods) and Hypothesis fuzzing, each in positive
(schema-valid) and negative (schema-violating) mode. Every response goes through all of
schemathesis' checks (no 5xx, declared status codes, content types, headers and response schemas,
schema-valid requests accepted, schema-invalid ones refused, 405 with ``Allow`` for undeclared
methods, ...) plus one of ours: every 4xx is a JSON object whose ``error`` names the problem.
The stateful phase is off: the API declares no links between operations.

Deterministic and bounded: a fixed seed, Hypothesis derandomized, no example database, at most
``MAX_EXAMPLES`` fuzzed examples per operation and mode.

The same test fails on a broken server: with ``FUZZ_SCORER_URL`` set it fuzzes that URL instead
of starting a scorer; ``tests/unit/serving/test_api_fuzz_can_fail.py`` runs it so (with fewer
examples, ``FUZZ_MAX_EXAMPLES``) against a scorer app whose handler raises, and checks that the
run fails, reporting the 500 and its request.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest
import requests
import schemathesis

from driftline.adapters.redis_layout import OnlineKeys
from driftline.adapters.redis_online import RedisOnlineStore
from driftline.commands import local_servers
from driftline.core.features import load_definitions
from driftline.core.online import OnlineWrite
from driftline.feature_defs import DEFINITIONS_DIR
from driftline.serving.openapi import EXAMPLE_ENTITY, MAX_BODY_BYTES, MAX_JSON_DEPTH
from tests.integration.conftest import start_scorer_process

SEED = 20_251_128
#: Fuzzed examples per operation and generation mode (``FUZZ_MAX_EXAMPLES`` overrides it).
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "300"))
VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
OPERATIONS = {"GET /health", "POST /predict", "GET /features/{entity_id}", "GET /metrics",
              "POST /model/reload", "GET /openapi.json"}


def fuzz_config() -> schemathesis.Config:
    """Examples, coverage and fuzzing phases, positive and negative modes, fixed seed."""
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
    })


@pytest.fixture
def scorer_url(request) -> str:
    """The base URL to fuzz: ``FUZZ_SCORER_URL`` if set, else a real scorer started here.

    The real one serves fraud v1 and has features in Redis for the document's example entity,
    so the examples phase scores it from the online store.
    """
    external = os.environ.get("FUZZ_SCORER_URL")
    if external:
        return external.rstrip("/")
    settings = request.getfixturevalue("settings")
    shutil.copytree(request.getfixturevalue("trained_registry"), settings.data_dir / "registry")
    settings = settings.replace(scorer_port=local_servers.free_port(),
                                group_scorer=f"{settings.group_features}-scorer")
    row = np.arange(len(VIEW.feature_names), dtype=np.float64)[None, :]
    RedisOnlineStore(request.getfixturevalue("redis_client"), 600,
                     OnlineKeys.for_settings(settings)).write(OnlineWrite(
        VIEW.name, VIEW.version, tuple(VIEW.feature_names), [EXAMPLE_ENTITY], row, [1]))
    proc = start_scorer_process(settings, request.getfixturevalue("tmp_path") / "logs")
    request.addfinalizer(proc.stop)
    return proc.address


def _pytest_9_2_compat(node) -> None:
    """schemathesis 4.32's ``from_fixture`` reads ``node._nodeid`` (to name each operation's
    subtest), an attribute pytest 9.2 no longer has; only schemathesis reads it back."""
    if not hasattr(node, "_nodeid"):
        node._nodeid = node.nodeid


@pytest.fixture
def scorer_schema(scorer_url, request):
    """The schema as the scorer serves it (from its URL, so the served document is tested)."""
    _pytest_9_2_compat(request.node)
    return schemathesis.openapi.from_url(f"{scorer_url}/openapi.json", config=fuzz_config(),
                                         timeout=10)


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


@pytest.fixture
def tally():
    """(operation, phase, mode, status) of every request; checked once all operations ran.

    A fuzz run that silently sent nothing (an operation filtered out, a mode or phase off)
    would pass every check, so the run itself is checked: every documented operation called,
    both modes sent to the operations with a body, the refusals seen.
    """
    seen: Counter = Counter()
    yield seen
    assert {op for op, *_ in seen} == OPERATIONS
    for op in ("POST /predict", "POST /model/reload"):
        assert {mode for o, _, mode, _ in seen if o == op} == {"positive", "negative"}, op
    assert {200, 400, 404, 405, 415, 422} <= {s for o, *_, s in seen if o == "POST /predict"}


def error_names_the_problem(ctx, response, case) -> None:
    """Every 4xx is a JSON object with a non-empty ``error`` string."""
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"{response.status_code} without a JSON body: "
                                 f"{response.text[:200]!r}") from None
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and \
            body["error"].strip(), f"{response.status_code} body names no problem: {body!r}"


# Every operation: schemathesis leaves out the one that served the schema (GET /openapi.json)
# unless a filter names it.
schema = schemathesis.pytest.from_fixture("scorer_schema").include(path_regex=".*")


@schema.parametrize()
def test_every_generated_request_gets_a_documented_answer(case, http, tally):
    """All schemathesis checks, plus ours, on every request the schema generator makes."""
    response = case.call_and_validate(session=http, additional_checks=[error_names_the_problem],
                                      timeout=10)
    tally[(case.operation.label, case.meta.phase.name.value, case.meta.generation.mode.value,
           response.status_code)] += 1


# -- requests the generator does not make: the bug report's and what the fuzzing led to -------

def send(url: str, data: bytes | None, content_type: str | None = "application/json",
         method: str = "POST") -> tuple[int, str, dict]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def test_hostile_bodies_get_a_json_4xx_naming_the_problem(scorer_url):
    """The reported 50,000-level body, oversized, ambiguous and malformed ones: each a JSON 4xx.

    Two were 500s before the fix: the deep body (RecursionError in json.loads) and an
    ``entity_id`` with a lone surrogate (``"\\ud800"``: valid JSON, but redis-py cannot encode
    the key), which only a real Redis shows. The scorer keeps serving afterwards.
    """
    predict, reload = f"{scorer_url}/predict", f"{scorer_url}/model/reload"
    features = {name: 1.0 for name in VIEW.feature_names}
    cases = [
        (predict, b"[" * 50_000 + b"]" * 50_000, "application/json", 413,
         f"request body is larger than {MAX_BODY_BYTES} bytes"),
        (predict, b"[" * 30_000 + b"]" * 30_000, "application/json", 400,
         f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (reload, b'{"version": ' * 5_000, "application/json", 400,
         f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (predict, b'{"entity_id": "' + b"x" * 2_000_000 + b'"}', "application/json", 413,
         f"request body is larger than {MAX_BODY_BYTES} bytes"),
        (predict, b'{"entity_id": "\\ud800"}', "application/json", 422,
         "'entity_id' is not valid Unicode: surrogates not allowed"),
        (predict, json.dumps({"entity_id": EXAMPLE_ENTITY, "features": features}).encode(),
         "application/json", 400, "both 'entity_id' and 'features'"),
        (predict, b'{"entity_id": "card-1"}', "text/plain", 415,
         "Content-Type must be application/json, got 'text/plain'"),
        (predict, b'{"entity_id": "\xff"}', "application/json", 400,
         "request body is not valid UTF-8: byte 0xff at offset 15"),
        (predict, b'{"entity_id": ' + b"9" * 5000 + b"}", "application/json", 422,
         "'entity_id' must be a non-empty string"),
    ]
    for url, data, content_type, status, fragment in cases:
        got_status, got_type, body = send(url, data, content_type)
        assert (got_status, got_type.split(";")[0]) == (status, "application/json"), \
            (data[:40], got_status, body)
        assert fragment in body["error"], (data[:40], body)
    status, _, body = send(predict, json.dumps({"features": features}).encode())
    assert status == 200 and body["model_version"] == 1, body
