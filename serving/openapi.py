"""OpenAPI 3 description of the scorer's HTTP API (served at ``GET /openapi.json``).

The document is the contract the API is fuzzed against (``tests/integration/test_api_fuzz.py``):
every status an operation can answer is declared with its body schema, and the request rules
(body limits, one of ``entity_id`` or ``features``) are stated in the schemas, not only in
prose. :func:`openapi_document` takes the served model's input names, so ``features`` lists
exactly the features the model takes; without a model it accepts any names (the API then answers
503 anyway). The limits below are enforced by :mod:`driftline.serving.api`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Largest request body accepted, in bytes; a larger one is refused with 413.
MAX_BODY_BYTES = 65_536
#: Deepest nesting of arrays and objects in a request body (the top-level object is level 1;
#: ``{"features": {...}}`` is 2); a deeper body is refused with 400 before it is parsed.
MAX_JSON_DEPTH = 8
#: The entity of the document's example (the demo's entity id format).
EXAMPLE_ENTITY = "card-000001"

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_BODY_RULES = (
    f"The body must be a JSON object sent as `Content-Type: application/json` (UTF-8; other "
    f"media types or charsets: 415), of at most {MAX_BODY_BYTES} bytes (413) and nested at most "
    f"{MAX_JSON_DEPTH} levels deep (400). A body that is empty, not UTF-8, not JSON or not an "
    f"object is 400; a field of the wrong type or an unknown field is 422. JSON has no NaN or "
    f"Infinity: such literals, and numbers beyond the range of a double, are refused (422) where "
    f"a number is expected.")
_BAD_BODY = {
    "400": _error("the body is missing, empty, not UTF-8, not JSON, not an object or nested "
                  f"deeper than {MAX_JSON_DEPTH} levels"),
    "413": _error(f"the body is larger than {MAX_BODY_BYTES} bytes"),
    "415": _error("the body is not `application/json` (or its charset is not utf-8)"),
    "422": _error("a field is unknown, missing or of the wrong type"),
}

_MODEL_PROPERTIES = {
    "model_name": {"type": "string"}, "model_version": {"type": "integer"},
    "view": {"type": "string"}, "view_version": {"type": "string"}}
_MODEL = {"type": "object", "required": list(_MODEL_PROPERTIES),
          "properties": _MODEL_PROPERTIES}
_NULLABLE_MODEL = {**_MODEL, "nullable": True}
_VALUE = {"type": "number", "nullable": True}

_PREDICTION = {
    "type": "object",
    "required": ["score", "decision", "threshold", *_MODEL_PROPERTIES, "arm", "source",
                 "latency_ms"],
    "properties": {
        "score": {"type": "number"}, "decision": {"type": "boolean"},
        "threshold": {"type": "number"}, **_MODEL_PROPERTIES,
        "arm": {"type": "string", "enum": ["production", "candidate"],
                "description": "`candidate` when a canary or A/B rollout routes the entity to "
                               "the candidate version (`model_version`), else `production`"},
        "source": {"type": "string", "enum": ["online_store", "request"],
                   "description": "where the features came from"},
        "entity_id": {"type": "string", "description": "with source `online_store`"},
        "features_event_time": {"type": "integer",
                                "description": "with source `online_store`: event time (ms) of "
                                               "the stored features"},
        "latency_ms": {"type": "number"}}}
_ROLLOUT = {
    "type": "object", "nullable": True,
    "required": ["kind", "candidate_version", "share", "salt"],
    "description": "The rollout served beside Production (null: Production alone)",
    "properties": {
        "kind": {"type": "string", "enum": ["shadow", "canary", "ab"]},
        "candidate_version": {"type": "integer"},
        "share": {"type": "number", "minimum": 0, "maximum": 1,
                  "description": "entities whose hash bucket is below it go to the candidate "
                                 "(shadow: the candidate scores all, publishes none)"},
        "salt": {"type": "string"}}}
_HEALTH = {
    "type": "object", "required": ["status", "model", "rollout", "model_error", "stream"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "failing"]},
        "model": _NULLABLE_MODEL,
        "rollout": _ROLLOUT,
        "model_error": {"type": "string", "nullable": True},
        "stream": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string"}}}}}
_FEATURE_VALUES = {
    "type": "object", "required": ["entity_id", "view", "view_version", "event_time", "values"],
    "properties": {
        "entity_id": {"type": "string"}, "view": {"type": "string"},
        "view_version": {"type": "string"}, "event_time": {"type": "integer"},
        "values": {"type": "object", "additionalProperties": _VALUE}}}
_ENTITY_ID = {"type": "string", "minLength": 1,
              "description": "Features are read from the online store (Redis)."}


def _features_schema(inputs: Sequence[str] | None) -> dict:
    if inputs is None:
        return {"type": "object", "additionalProperties": _VALUE,
                "description": "Feature name -> number or null (undefined); no model is loaded, "
                               "so the names are unknown."}
    return {"type": "object", "additionalProperties": False, "required": list(inputs),
            "properties": {name: _VALUE for name in inputs},
            "description": "Every input of the served model, each a number or null "
                           "(undefined); no other names."}


def openapi_document(inputs: Sequence[str] | None = None) -> dict[str, Any]:
    """The OpenAPI document, with ``features`` naming `inputs` (the served model's inputs)."""
    by_entity = {"type": "object", "required": ["entity_id"], "additionalProperties": False,
                 "properties": {"entity_id": _ENTITY_ID}}
    by_features = {"type": "object", "required": ["features"], "additionalProperties": False,
                   "properties": {"features": _features_schema(inputs)}}
    examples: dict[str, Any] = {"by_entity": {"value": {"entity_id": EXAMPLE_ENTITY}}}
    if inputs is not None:
        examples["by_features"] = {"value": {"features": {name: 1.0 for name in inputs}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Driftline scorer", "version": "1", "description": (
            "Online scoring with the Production model (or, during a canary or A/B rollout, "
            "the version the entity is routed to); features from Redis or the request. "
            "Every refusal is a 4xx whose JSON body `{\"error\": ...}` names the problem; "
            "a 503 gives the reason (no model, Redis unreachable). " + _BODY_RULES)},
        "paths": {
            "/health": {"get": {
                "summary": "Loaded Production model, the rollout beside it if any, model error "
                           "if any, stream scorer state and consumer lag",
                "responses": {"200": _json("serving", _HEALTH),
                              "503": _json("no model loaded or the stream loop failed",
                                           _HEALTH)}}},
            "/predict": {"post": {
                "summary": "Score one entity (features read from Redis) or explicit features",
                "description": (
                    "Send exactly one of `entity_id` (features read from the online store) or "
                    "`features` (scored as given). A body with both is ambiguous and refused "
                    "with 400 naming both fields; neither is 422. During a canary or A/B rollout "
                    "an entity is scored by the version the stream scorer uses for it (`arm`); "
                    "explicit features by Production. " + _BODY_RULES),
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"oneOf": [by_entity, by_features]}, "examples": examples}}},
                "responses": {
                    "200": _json("scored", _PREDICTION),
                    **_BAD_BODY,
                    "400": _error("both `entity_id` and `features` (ambiguous), or a body that "
                                  "is missing, empty, not UTF-8, not JSON, not an object or "
                                  f"nested deeper than {MAX_JSON_DEPTH} levels"),
                    "404": _error("no online features for the entity"),
                    "409": _error("the entity's stored features are of another view version "
                                  "than the model's"),
                    "503": _error("Redis unreachable or no model; `error` gives the reason")}}},
            "/features/{entity_id}": {"get": {
                "summary": "The online feature values of one entity for the served model's view",
                "parameters": [{"name": "entity_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1},
                                "example": EXAMPLE_ENTITY}],
                "responses": {"200": _json("values and their event time", _FEATURE_VALUES),
                              "404": _error("no online features for the entity"),
                              "422": _error("the entity id is not valid Unicode"),
                              "503": _error("Redis unreachable or no model")}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition",
                                      "content": {"text/plain": {"schema": {
                                          "type": "string"}}}}}}},
            "/model/reload": {"post": {
                "summary": "Load the Production version (or `version`) beside the current one "
                           "and switch atomically",
                "description": "No body, `{}` or `{\"version\": null}`: the Production version. "
                               "The registry's serving plan (a rollout's candidate) is re-read "
                               "too; a candidate that cannot load is left out, never a refusal. "
                               + _BODY_RULES,
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"version": {"type": "integer", "minimum": 1,
                                               "nullable": True}}}}}},
                "responses": {
                    "200": _json("now serving", {
                        "type": "object", "required": ["serving", "previous"],
                        "properties": {"serving": _MODEL, "previous": _NULLABLE_MODEL}}),
                    **_BAD_BODY,
                    "409": _json("refused (unknown version, schema drift, corrupt model); the "
                                 "previous model keeps serving", {
                                     "type": "object", "required": ["error", "serving"],
                                     "properties": {"error": {"type": "string", "minLength": 1},
                                                    "serving": _NULLABLE_MODEL}})}}},
            "/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": _json("OpenAPI 3", {"type": "object"})}}},
        },
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "string", "minLength": 1,
                                     "description": "what was wrong, exactly"}}}}},
    }


#: The document without a model (``features`` accepts any names).
OPENAPI: dict = openapi_document()
