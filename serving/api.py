"""The scorer's HTTP API (aiohttp), described by ``GET /openapi.json``.

Every refusal is a 4xx whose JSON body ``{"error": ...}`` says exactly what was wrong, including
the ones aiohttp makes itself (unknown path 404, undeclared method 405, body too large 413); an
unreachable Redis is a 503 with the reason after at most ``DRIFTLINE_REDIS_TIMEOUT_MS``. Scoring
one row with onnxruntime takes microseconds, so it runs inline on the event loop.

Request bodies (the limits are documented in :mod:`driftline.serving.openapi`): ``Content-Type:
application/json`` in UTF-8 (else 415), at most ``MAX_BODY_BYTES`` (else 413), nested at most
``MAX_JSON_DEPTH`` levels (else 400: checked by a linear scan before the body is parsed, so a body
nested 50,000 levels deep never reaches the recursive parser), a JSON object (else 400).

While a canary or A/B rollout runs, ``POST /predict`` with an ``entity_id`` is answered by the
version the stream scorer uses for that entity (the same hash of the id), named with its
``arm``; explicit ``features`` have no entity and are answered by Production, as is everything
under a shadow rollout (shadow predictions are the stream scorer's alone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import hdrs, web

from driftline.adapters.metrics import ONLINE_REQUESTS, ONLINE_SECONDS, exposition
from driftline.core.online import OnlineReader, OnlineRow, StoreUnavailable
from driftline.core.rollout import PRODUCTION
from driftline.serving.models import ModelHolder, ModelUnavailable, Serving
from driftline.serving.openapi import MAX_BODY_BYTES, MAX_JSON_DEPTH, openapi_document

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, headers: Any = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own refusals (404 no route, 405, 413...) as JSON errors; a crash as a JSON 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH)}  # keeps 405's Allow
        return _error(exc.status, _http_error_message(request, exc), headers)
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        return _error(500, "internal error: the scorer's log has the traceback")


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"no such path: {request.path} (the API is described at GET /openapi.json)"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _too_large()
    return f"{exc.reason}: {exc.text}" if exc.text and exc.text != exc.reason else exc.reason


def _too_large() -> str:
    return f"request body is larger than {MAX_BODY_BYTES} bytes"


class ScorerApi:
    def __init__(self, holder: ModelHolder, online: OnlineReader,
                 stream_health: Callable[[], dict]) -> None:
        self.holder = holder
        self.online = online
        self.stream_health = stream_health

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
        app.add_routes([
            web.get("/health", self.health),
            web.post("/predict", self.predict),
            web.get("/features/{entity_id}", self.features),
            web.get("/metrics", self.metrics),
            web.post("/model/reload", self.reload),
            web.get("/openapi.json", self.openapi),
        ])
        return app

    # -- endpoints ---------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        try:
            serving: Serving | None = self.holder.serving()
        except ModelUnavailable:
            serving = None
        stream = self.stream_health()
        body = {
            "status": "ok" if serving is not None and stream["status"] == "ok" else "failing",
            "model": None if serving is None else _describe(serving.production),
            "rollout": None if serving is None else serving.describe_plan(),
            "model_error": self.holder.last_error,
            "stream": stream,
        }
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def predict(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        try:
            body = await _json_object(request, required=True)
            unknown = set(body) - {"entity_id", "features"}
            if unknown:
                raise ApiError(422, f"unknown field(s) {sorted(unknown)}; "
                                    "allowed: entity_id, features")
            if "entity_id" in body and "features" in body:
                raise ApiError(400, "ambiguous body: it has both 'entity_id' and 'features'; "
                                    "send exactly one ('entity_id': features read from the "
                                    "online store, 'features': scored as given)")
            serving = self._serving()  # once: one consistent Production and plan
            model, arm = serving.production, PRODUCTION
            if "features" in body:
                values = _explicit_features(body["features"], model.inputs)
                source: dict[str, Any] = {"source": "request"}
            elif "entity_id" in body:
                entity_id = _entity_id(body["entity_id"])
                model, arm = serving.for_entity(entity_id)
                values, source = await self._online_features(entity_id, model)
            else:
                raise ApiError(422, "body needs either 'entity_id' (a string) or 'features' "
                                    "(an object of feature name -> number or null)")
            score = float(model.score(values.reshape(1, -1))[0])
        except ApiError as exc:
            ONLINE_REQUESTS.labels(str(exc.status)).inc()
            return _error(exc.status, str(exc))
        elapsed = time.perf_counter() - start
        ONLINE_REQUESTS.labels("200").inc()
        ONLINE_SECONDS.observe(elapsed)
        return web.json_response({
            "score": score,
            "decision": score >= model.threshold,
            "threshold": model.threshold,
            **_describe(model),
            "arm": arm,
            **source,
            "latency_ms": round(elapsed * 1000, 3),
        })

    async def features(self, request: web.Request) -> web.Response:
        entity_id = request.match_info["entity_id"]
        try:
            model = self._model()
            row = await self._read(model.meta.view, entity_id)
        except ApiError as exc:
            return _error(exc.status, str(exc))
        return web.json_response({
            "entity_id": entity_id, "view": row.view, "view_version": row.version,
            "event_time": row.event_time_ms, "values": row.as_json()})

    async def metrics(self, request: web.Request) -> web.Response:
        payload, content_type = exposition()
        return web.Response(body=payload, content_type=content_type.split(";")[0])

    async def reload(self, request: web.Request) -> web.Response:
        try:
            body = await _json_object(request, required=False) or {}
        except ApiError as exc:
            return _error(exc.status, str(exc))
        unknown = set(body) - {"version"}
        if unknown:
            return _error(422, f"unknown field(s) {sorted(unknown)}; allowed: version")
        version = body.get("version")
        if version is not None and (isinstance(version, bool) or
                                    not isinstance(version, int) or version < 1):
            return _error(422, f"'version' must be a positive integer, got {version!r}")
        previous = self.holder.current
        try:
            model = await asyncio.get_running_loop().run_in_executor(
                None, self.holder.reload, version)
        except Exception as exc:  # noqa: BLE001 - the old model keeps serving
            still = None if previous is None else _describe(previous)
            return web.json_response({"error": str(exc), "serving": still}, status=409)
        return web.json_response({
            "serving": _describe(model),
            "previous": None if previous is None else _describe(previous)})

    async def openapi(self, request: web.Request) -> web.Response:
        model = self.holder.current
        return web.json_response(openapi_document(None if model is None else model.inputs))

    # -- helpers -----------------------------------------------------------------------------
    def _serving(self) -> Serving:
        try:
            return self.holder.serving()
        except ModelUnavailable as exc:
            raise ApiError(503, f"no model to score with: {exc}") from exc

    def _model(self):
        return self._serving().production

    async def _read(self, view: str, entity_id: str) -> OnlineRow:
        entity_id = _entity_id(entity_id)
        try:
            row = await self.online.read(view, entity_id)
        except StoreUnavailable as exc:
            raise ApiError(503, str(exc)) from exc
        if row is None:
            raise ApiError(404, f"no online features for entity {entity_id!r} in view {view}")
        return row

    async def _online_features(self, entity_id: Any, model) -> tuple[np.ndarray, dict]:
        row = await self._read(model.meta.view, entity_id)
        if row.version != model.meta.view_version:
            raise ApiError(409, (
                f"entity {entity_id!r} has features of {row.view}@{row.version} but "
                f"{model.name} v{model.version} takes {model.meta.view}@"
                f"{model.meta.view_version}"))
        values = np.array([row.values.get(n, np.nan) for n in model.inputs], dtype=np.float64)
        return values, {"source": "online_store", "entity_id": entity_id,
                        "features_event_time": row.event_time_ms}


def _entity_id(entity_id: Any) -> str:
    """`entity_id` if it is a usable entity id (the Redis key, the rollout hash), else 422."""
    if not isinstance(entity_id, str) or not entity_id:
        raise ApiError(422, "'entity_id' must be a non-empty string")
    try:
        entity_id.encode("utf-8")  # the Redis key; JSON's "\ud800" decodes to a lone surrogate
    except UnicodeEncodeError as exc:
        raise ApiError(422, f"'entity_id' is not valid Unicode: {exc.reason} at character "
                            f"{exc.start}") from exc
    return entity_id


async def _json_object(request: web.Request, *, required: bool) -> dict | None:
    """The body as a JSON object (None if absent and not `required`), or an :class:`ApiError`
    naming what is wrong with it: 400, 413 or 415, in the order the checks run."""
    if not request.can_read_body:
        if required:
            raise ApiError(400, "request body is missing: send a JSON object")
        return None
    _check_content_type(request)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, _too_large())
    try:
        raw = await request.read()  # aiohttp stops reading past client_max_size
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, _too_large()) from exc
    if not raw:
        if required:
            raise ApiError(400, "request body is empty: send a JSON object")
        return None
    body = _parse_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _check_content_type(request: web.Request) -> None:
    if hdrs.CONTENT_TYPE not in request.headers:
        raise ApiError(415, "Content-Type must be application/json, got none")
    if request.content_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json, got "
                            f"{request.headers[hdrs.CONTENT_TYPE]!r}")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, f"charset must be utf-8 (JSON is UTF-8), got {charset!r}")


def _parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8: byte 0x{raw[exc.start]:02x} at "
                            f"offset {exc.start} ({exc.reason})") from exc
    if _nested_deeper_than(text, MAX_JSON_DEPTH):
        raise ApiError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels of "
                            "arrays and objects")
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError as exc:  # the scan above makes this unreachable; kept as a guard
        raise ApiError(400, "request body is nested too deeply to parse") from exc
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc


# A JSON string or a bracket. Brackets inside strings are not structure, so strings are matched
# as one token; one character per repetition keeps the match unambiguous, so an unterminated
# string ends the text without backtracking (and the pattern needs no Python 3.11 syntax).
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


def _nested_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of `text` nest deeper than `limit`, without parsing it.

    Linear in the length of `text` and exact for valid JSON (for invalid JSON the parser reports
    the error if this does not). A text with at most `limit` brackets needs no scan.

    >>> _nested_deeper_than('{"features": {"a": 1}}', 2), _nested_deeper_than("[[[]]]", 2)
    (False, True)
    >>> _nested_deeper_than('{"k": "[[[[[[not structure"}', 2)
    False
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        char = token[0]
        if char == "[" or char == "{":
            depth += 1
            if depth > limit:
                return True
        elif char == "]" or char == "}":
            depth -= 1
    return False


class _HugeInteger:
    """An integer literal with more digits than any finite double: refused wherever a number
    is expected, with its size in the message (instead of Python's int-parsing limit error)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(literal: str) -> int | _HugeInteger:
    digits = len(literal.lstrip("-"))
    return int(literal) if digits <= 309 else _HugeInteger(digits)


def _explicit_features(features: Any, inputs: tuple[str, ...]) -> np.ndarray:
    if not isinstance(features, dict):
        raise ApiError(422, "'features' must be an object of feature name -> number or null")
    missing = [n for n in inputs if n not in features]
    unknown = sorted(set(features) - set(inputs))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise ApiError(422, f"features do not match the model's inputs: {'; '.join(parts)}")
    values = np.empty(len(inputs))
    for i, name in enumerate(inputs):
        v = features[name]
        if v is None:
            values[i] = np.nan
        elif isinstance(v, bool) or not isinstance(v, int | float) or not _finite(v):
            raise ApiError(422, f"feature {name!r} must be a finite number or null, got {v!r}")
        else:
            values[i] = v
    return values


def _finite(value: int | float) -> bool:
    """A JSON number that is a finite double (a 400-digit integer is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _describe(model) -> dict[str, Any]:
    return {"model_name": model.name, "model_version": model.version,
            "view": model.meta.view, "view_version": model.meta.view_version}
