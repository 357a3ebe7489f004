"""The scorer API's request rules and limits, one malformed request at a time.

Each hostile or malformed request gets a 4xx whose JSON body ``{"error": ...}`` names the problem:
the bug report's 50,000-level nested body, oversized bodies (declared and chunked), an ambiguous
body with both ``entity_id`` and ``features``, wrong content types and charsets, invalid UTF-8,
a lone surrogate, integers too large for any double, aiohttp's own 404/405; and a crash is a JSON
500. The OpenAPI document states the same rules. aiohttp's test server, an in-memory online
store and a real model, as in ``test_api.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from driftline.core.online import MemoryOnlineStore, OnlineWrite
from driftline.serving import api as api_module
from driftline.serving.api import ScorerApi
from driftline.serving.openapi import MAX_BODY_BYTES, MAX_JSON_DEPTH, openapi_document
from tests.unit.serving.conftest import NAMES, VIEW, feature_rows

FEATURES = dict(zip(NAMES, feature_rows(1, seed=5)[0].tolist(), strict=True))
JSON = "application/json"


def send(api: ScorerApi, method: str, path: str, data: Any = None,
         content_type: str | None = JSON) -> tuple[int, dict[str, str], Any]:
    """One request with exactly this body and Content-Type (None: no Content-Type header)."""
    async def go():
        async with TestClient(TestServer(api.app())) as client:
            headers = {} if content_type is None else {"Content-Type": content_type}
            skip = () if content_type is not None else ("Content-Type",)
            resp = await client.request(method, path, data=data, headers=headers,
                                        skip_auto_headers=skip)
            body = await resp.json() if resp.content_type == JSON else await resp.text()
            return resp.status, dict(resp.headers), body
    return asyncio.run(go())


def refusal(api: ScorerApi, method: str, path: str, data: Any = None,
            content_type: str | None = JSON) -> tuple[int, str]:
    """The status and `error` of a refusal, checking that it is a JSON error object."""
    status, headers, body = send(api, method, path, data, content_type)
    assert headers["Content-Type"].startswith(JSON), (status, body)
    assert isinstance(body, dict) and list(body) == ["error"], body
    return status, body["error"]


@pytest.fixture
def api(holder) -> ScorerApi:
    store = MemoryOnlineStore()
    row = feature_rows(1, seed=5)
    store.write(OnlineWrite(VIEW.name, VIEW.version, NAMES, ["card-1"], row, [1]))
    return ScorerApi(holder, store.reader(), lambda: {"status": "ok"})


# -- ambiguity ---------------------------------------------------------------------------------

def test_a_body_with_both_entity_id_and_features_is_400_naming_both(api):
    body = json.dumps({"entity_id": "card-1", "features": FEATURES})
    status, error = refusal(api, "POST", "/predict", body)
    assert status == 400
    assert error.startswith("ambiguous body: it has both 'entity_id' and 'features'; send "
                            "exactly one"), error


def test_each_alone_still_scores(api):
    for body in ({"entity_id": "card-1"}, {"features": FEATURES}):
        status, _, answer = send(api, "POST", "/predict", json.dumps(body))
        assert status == 200 and answer["score"] >= 0, answer


# -- nesting depth -----------------------------------------------------------------------------

def test_the_reported_50000_level_body_is_a_json_413_not_a_500(api):
    """The bug report's body: 50,000 nested arrays (100,000 bytes), a 500 before the fix."""
    assert refusal(api, "POST", "/predict", b"[" * 50_000 + b"]" * 50_000) == (
        413, f"request body is larger than {MAX_BODY_BYTES} bytes")


@pytest.mark.parametrize("data", [
    b"[" * 50_000,  # 50,000 levels within the size limit (unclosed: the scan stops at level 9)
    b"[" * 30_000 + b"]" * 30_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'{"features": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
], ids=["50000-unclosed", "30000-arrays", "10000-objects", "limit-plus-one"])
def test_a_body_nested_deeper_than_the_limit_is_400(api, data):
    for path in ("/predict", "/model/reload"):
        assert refusal(api, "POST", path, data) == (400, (
            f"request body is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"))


def test_nesting_at_the_limit_and_brackets_in_strings_are_not_refused_for_depth(api):
    at_limit = b'{"features": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert refusal(api, "POST", "/predict", at_limit) == (
        422, "'features' must be an object of feature name -> number or null")
    in_string = json.dumps({"entity_id": "[{" * 1000 + '\\"'}).encode()
    status, error = refusal(api, "POST", "/predict", in_string)
    assert status == 404 and error.startswith("no online features for entity '[{[{"), error


def test_the_parser_recursion_limit_is_a_400_even_without_the_depth_scan(api, monkeypatch):
    """The guard behind the scan: json.loads' RecursionError (the original 500) is caught."""
    monkeypatch.setattr(api_module, "MAX_JSON_DEPTH", 10**9)
    assert refusal(api, "POST", "/predict", b"[" * 30_000 + b"]" * 30_000) == (
        400, "request body is nested too deeply to parse")


# -- size --------------------------------------------------------------------------------------

def test_a_body_over_the_limit_is_413_whether_declared_or_chunked(api):
    big = b'{"entity_id": "' + b"x" * MAX_BODY_BYTES + b'"}'
    expected = (413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    assert refusal(api, "POST", "/predict", big) == expected  # Content-Length

    async def chunks():  # no Content-Length: aiohttp stops reading past client_max_size
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]
    assert refusal(api, "POST", "/predict", chunks()) == expected
    assert refusal(api, "POST", "/model/reload", big) == expected


def test_a_body_of_exactly_the_limit_is_read(api):
    body = json.dumps({"entity_id": "card-1"}).encode()
    padded = body + b" " * (MAX_BODY_BYTES - len(body))
    status, _, answer = send(api, "POST", "/predict", padded)
    assert status == 200 and answer["entity_id"] == "card-1", answer


# -- media type, encoding, syntax --------------------------------------------------------------

@pytest.mark.parametrize("content_type, message", [
    (None, "Content-Type must be application/json, got none"),
    ("text/plain", "Content-Type must be application/json, got 'text/plain'"),
    ("application/x-www-form-urlencoded",
     "Content-Type must be application/json, got 'application/x-www-form-urlencoded'"),
    ("multipart/form-data", "Content-Type must be application/json, got 'multipart/form-data'"),
    ("application/json; charset=latin-1",
     "charset must be utf-8 (JSON is UTF-8), got 'latin-1'"),
])
def test_a_body_that_is_not_utf8_json_by_content_type_is_415(api, content_type, message):
    for path in ("/predict", "/model/reload"):
        assert refusal(api, "POST", path, b'{"entity_id": "card-1"}', content_type) == (
            415, message)


def test_json_with_an_explicit_utf8_charset_is_accepted(api):
    status, _, answer = send(api, "POST", "/predict", b'{"entity_id": "card-1"}',
                             "application/json; charset=UTF-8")
    assert status == 200, answer


@pytest.mark.parametrize("data, message", [
    (b'{"entity_id": "\xff"}',
     "request body is not valid UTF-8: byte 0xff at offset 15 (invalid start byte)"),
    (b'{"entity_id": "caf\xc3"}',
     "request body is not valid UTF-8: byte 0xc3 at offset 18 (invalid continuation byte)"),
    (b"\xef\xbb\xbf{}", "request body is not valid JSON: Unexpected UTF-8 BOM"),
    (b'{"entity_id": "card-1",}', "request body is not valid JSON: "),
    (b"null", "request body must be a JSON object, got NoneType"),
    (b"3", "request body must be a JSON object, got int"),
])
def test_bytes_that_are_not_a_json_object_are_400(api, data, message):
    status, error = refusal(api, "POST", "/predict", data)
    assert status == 400 and error.startswith(message), error


def test_a_missing_body_is_400_for_predict_but_means_production_for_reload(api, holder):
    assert refusal(api, "POST", "/predict", None) == (
        400, "request body is missing: send a JSON object")
    holder.reload(2)
    status, _, answer = send(api, "POST", "/model/reload", None)
    assert status == 200 and answer["serving"]["model_version"] == 1, answer


# -- values ------------------------------------------------------------------------------------

def test_an_entity_id_with_a_lone_surrogate_is_422_not_a_500(api):
    """Valid JSON (``"\\ud800"``) but no valid Unicode: redis-py could not encode the key."""
    assert refusal(api, "POST", "/predict", b'{"entity_id": "card-\\ud800"}') == (
        422, "'entity_id' is not valid Unicode: surrogates not allowed at character 5")


def test_integers_beyond_any_double_are_422_with_their_size_not_pythons_limit(api):
    digits = "9" * 5000  # beyond Python's 4300-digit int parsing limit
    features = json.dumps({**FEATURES, NAMES[0]: 0}).replace(
        f'"{NAMES[0]}": 0', f'"{NAMES[0]}": {digits}')
    assert refusal(api, "POST", "/predict", f'{{"features": {features}}}') == (
        422, f"feature '{NAMES[0]}' must be a finite number or null, got "
             "<an integer of 5000 digits>")
    assert refusal(api, "POST", "/model/reload", f'{{"version": {digits}}}') == (
        422, "'version' must be a positive integer, got <an integer of 5000 digits>")


@pytest.mark.parametrize("value", ["1", [1], {"v": 1}])
def test_wrong_feature_types_are_422_naming_the_feature(api, value):
    assert refusal(api, "POST", "/predict", json.dumps(
        {"features": {**FEATURES, NAMES[3]: value}})) == (
            422, f"feature '{NAMES[3]}' must be a finite number or null, got {value!r}")


def test_reload_refuses_unknown_fields_and_takes_null_as_production(api, holder):
    assert refusal(api, "POST", "/model/reload", json.dumps({"version": 2, "force": True})) == (
        422, "unknown field(s) ['force']; allowed: version")
    assert holder.current.version == 1
    holder.reload(2)
    status, _, answer = send(api, "POST", "/model/reload", json.dumps({"version": None}))
    assert status == 200 and answer["serving"]["model_version"] == 1, answer


# -- aiohttp's own refusals and crashes --------------------------------------------------------

def test_an_unknown_path_is_a_json_404(api):
    assert refusal(api, "GET", "/nowhere") == (
        404, "no such path: /nowhere (the API is described at GET /openapi.json)")
    assert refusal(api, "GET", "/features/")[0] == 404


def test_an_undeclared_method_is_a_json_405_with_allow(api):
    status, headers, body = send(api, "PUT", "/predict", b"{}")
    assert status == 405 and headers["Allow"] == "POST", headers
    assert body == {"error": "method PUT is not allowed on /predict; allowed: POST"}


def test_a_crash_is_a_json_500_without_the_details(holder):
    class Crashing(ScorerApi):
        async def _read(self, view, entity_id):
            raise KeyError("secret internals")

    status, error = refusal(Crashing(holder, MemoryOnlineStore().reader(), dict), "POST",
                            "/predict", b'{"entity_id": "card-1"}')
    assert (status, error) == (500, "internal error: the scorer's log has the traceback")


# -- the document states the rules -------------------------------------------------------------

def test_the_served_document_states_the_request_rules(api):
    status, _, doc = send(api, "GET", "/openapi.json")
    assert status == 200 and doc == openapi_document(NAMES)
    predict = doc["paths"]["/predict"]["post"]
    one_of = predict["requestBody"]["content"][JSON]["schema"]["oneOf"]
    # Two shapes, each closed: a body with both fields matches neither.
    assert [(b["required"], b["additionalProperties"]) for b in one_of] == [
        (["entity_id"], False), (["features"], False)]
    features = one_of[1]["properties"]["features"]
    assert features["required"] == list(NAMES) and features["additionalProperties"] is False
    assert "both is ambiguous and refused with 400" in predict["description"]
    for text in (predict["description"], doc["info"]["description"],
                 doc["paths"]["/model/reload"]["post"]["description"]):
        assert f"at most {MAX_BODY_BYTES} bytes (413)" in text
        assert f"nested at most {MAX_JSON_DEPTH} levels deep (400)" in text
    assert {"200", "400", "404", "409", "413", "415", "422", "503"} == set(predict["responses"])
    assert {"200", "400", "409", "413", "415", "422"} == set(
        doc["paths"]["/model/reload"]["post"]["responses"])


def test_without_a_model_the_document_accepts_any_feature_names(no_model_api):
    status, _, doc = send(no_model_api, "GET", "/openapi.json")
    features = doc["paths"]["/predict"]["post"]["requestBody"]["content"][JSON]["schema"][
        "oneOf"][1]["properties"]["features"]
    assert status == 200 and "required" not in features and features["additionalProperties"]


@pytest.fixture
def no_model_api(tmp_path) -> ScorerApi:
    from driftline.core.registry import ModelRegistry
    from driftline.serving.models import ModelHolder
    from tests.unit.serving.conftest import MODEL, THRESHOLD, VIEWS

    empty = ModelHolder(ModelRegistry(tmp_path / "empty"), MODEL, THRESHOLD, VIEWS)
    return ScorerApi(empty, MemoryOnlineStore().reader(), lambda: {"status": "ok"})
