"""The scorer's HTTP API (aiohttp), described by ``GET /openapi.json``.

Every refusal is a 4xx whose JSON body says exactly what was wrong; an unreachable Redis is a 503
with the reason after at most ``DRIFTLINE_REDIS_TIMEOUT_MS``. Scoring one row with onnxruntime
takes microseconds, so it runs inline on the event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from driftline.adapters.metrics import ONLINE_REQUESTS, ONLINE_SECONDS, exposition
from driftline.core.online import OnlineReader, OnlineRow, StoreUnavailable
from driftline.serving.models import ModelHolder, ModelUnavailable
from driftline.serving.openapi import OPENAPI


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ScorerApi:
    def __init__(self, holder: ModelHolder, online: OnlineReader,
                 stream_health: Callable[[], dict]) -> None:
        self.holder = holder
        self.online = online
        self.stream_health = stream_health

    def app(self) -> web.Application:
        app = web.Application()
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
        model = self.holder.current
        stream = self.stream_health()
        body = {
            "status": "ok" if model is not None and stream["status"] == "ok" else "failing",
            "model": None if model is None else _describe(model),
            "model_error": self.holder.last_error,
            "stream": stream,
        }
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def predict(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        try:
            body = await _json_object(request)
            unknown = set(body) - {"entity_id", "features"}
            if unknown:
                raise ApiError(422, f"unknown field(s) {sorted(unknown)}; "
                                    "allowed: entity_id, features")
            model = self._model()
            if "features" in body:
                values = _explicit_features(body["features"], model.inputs)
                source: dict[str, Any] = {"source": "request"}
            elif "entity_id" in body:
                values, source = await self._online_features(body["entity_id"], model)
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
        version = None
        if request.can_read_body:
            try:
                body = await _json_object(request)
            except ApiError as exc:
                return _error(exc.status, str(exc))
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
        return web.json_response(OPENAPI)

    # -- helpers -----------------------------------------------------------------------------
    def _model(self):
        try:
            return self.holder.get()
        except ModelUnavailable as exc:
            raise ApiError(503, f"no model to score with: {exc}") from exc

    async def _read(self, view: str, entity_id: str) -> OnlineRow:
        if not isinstance(entity_id, str) or not entity_id:
            raise ApiError(422, "'entity_id' must be a non-empty string")
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


async def _json_object(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


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
