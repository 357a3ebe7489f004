"""OpenAPI 3 description of the scorer's HTTP API (served at ``GET /openapi.json``)."""

from __future__ import annotations

_ERROR = {"description": "refused; `error` says exactly why",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_MODEL = {"type": "object", "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "integer"},
    "view": {"type": "string"}, "view_version": {"type": "string"}}}

OPENAPI: dict = {
    "openapi": "3.0.3",
    "info": {"title": "Driftline scorer", "version": "1",
             "description": "Online scoring with the Production model; features from Redis or "
                            "the request."},
    "paths": {
        "/health": {"get": {
            "summary": "Loaded model, model error if any, stream scorer state and consumer lag",
            "responses": {"200": {"description": "serving"},
                          "503": {"description": "no model loaded or the stream loop failed"}}}},
        "/predict": {"post": {
            "summary": "Score one entity (features read from Redis) or explicit features",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [
                    {"type": "object", "required": ["entity_id"], "additionalProperties": False,
                     "properties": {"entity_id": {"type": "string", "minLength": 1}}},
                    {"type": "object", "required": ["features"], "additionalProperties": False,
                     "properties": {"features": {"type": "object", "additionalProperties": {
                         "type": "number", "nullable": True}}}},
                ]}}}},
            "responses": {
                "200": {"description": "scored", "content": {"application/json": {"schema": {
                    "allOf": [_MODEL, {"type": "object", "properties": {
                        "score": {"type": "number"}, "decision": {"type": "boolean"},
                        "threshold": {"type": "number"}, "latency_ms": {"type": "number"},
                        "source": {"type": "string", "enum": ["online_store", "request"]}}}]}}}},
                "400": _ERROR, "404": _ERROR, "409": _ERROR, "422": _ERROR,
                "503": {"description": "Redis unreachable or no model; `error` gives the reason",
                        "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/Error"}}}}}}},
        "/features/{entity_id}": {"get": {
            "summary": "The online feature values of one entity for the served model's view",
            "parameters": [{"name": "entity_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "values and their event time"},
                          "404": _ERROR, "503": _ERROR}}},
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition"}}}},
        "/model/reload": {"post": {
            "summary": "Load the Production version (or `version`) beside the current one and "
                       "switch atomically",
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"version": {"type": "integer", "minimum": 1}}}}}},
            "responses": {"200": {"description": "now serving"},
                          "409": {"description": "refused; the previous model keeps serving"},
                          "422": _ERROR}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3"}}}},
    },
    "components": {"schemas": {"Error": {"type": "object", "required": ["error"],
                                         "properties": {"error": {"type": "string"}}}}},
}
