"""Load and validate ``feature_defs/*.yaml`` into a `FeatureRegistry`.

Validation is strict because a typo in a definition silently changes what a model sees: unknown
keys, names, fields, aggregations, window kinds and durations are all errors. Every error is a
`DefinitionError` whose message starts with ``<file>: <key path>:`` so it can be fixed without
guessing. A directory is loaded as one namespace: names are unique across its files and views may
reference entities, sources and features from any of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from driftline.core.features.definitions import (
    AGGREGATIONS,
    FIELD_TYPES,
    FIELDLESS_AGGREGATIONS,
    STRING_AGGREGATIONS,
    DefinitionError,
    Entity,
    Feature,
    FeatureRegistry,
    FeatureView,
    Source,
)
from driftline.core.features.windows import (
    WINDOW_KINDS,
    HoppingWindow,
    RollingWindow,
    TumblingWindow,
    Window,
)

SECTIONS = ("entities", "sources", "features", "views")
_KEYS = {
    "entities": ({"key"}, {"key"}),
    "sources": (
        {"topic", "schema", "event_time", "fields"},
        {"topic", "schema", "event_time", "fields", "allowed_lateness", "slices",
         "max_future_skew", "min_event_time"},
    ),
    "features": ({"aggregation", "window"}, {"aggregation", "window", "field"}),
    "views": ({"entity", "source", "features"}, {"entity", "source", "features", "slices"}),
}
_WINDOW_KEYS = {"rolling": {"size"}, "tumbling": {"size"}, "hopping": {"size", "hop"}}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DEFAULT_LATENESS_S = 60
DEFAULT_MAX_FUTURE_SKEW = "5m"
DEFAULT_MIN_EVENT_TIME = date(2000, 1, 1)


@dataclass(frozen=True)
class _Where:
    """A position in a definitions file, for error messages."""

    file: str
    path: str

    def at(self, key: object) -> _Where:
        return _Where(self.file, f"{self.path}.{key}" if self.path else str(key))

    def error(self, message: str) -> DefinitionError:
        return DefinitionError(f"{self.file}: {self.path or '<top>'}: {message}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_duration_ms(value: object, where: _Where) -> int:
    """``"90s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"250ms"`` or integer seconds -> positive ms."""
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value * 1_000
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        ms = int(m.group(1)) * _UNIT_MS[m.group(2)]
    else:
        raise where.error(
            f"bad duration {value!r} (expected e.g. 90s, 5m, 1h, 24h, 1d or integer seconds)"
        )
    if ms <= 0:
        raise where.error(f"duration must be positive, got {value!r}")
    return ms


def load_definitions(path: str | Path) -> FeatureRegistry:
    """Load one YAML file, or every ``*.yaml`` in a directory, into a validated registry."""
    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        raise DefinitionError(f"{path}: no *.yaml definition files")
    raw: dict[str, dict[str, tuple[_Where, Any]]] = {s: {} for s in SECTIONS}
    for file in files:
        _collect(file, raw)
    entities = {n: _entity(n, body, w) for n, (w, body) in raw["entities"].items()}
    sources = {n: _source(n, body, w) for n, (w, body) in raw["sources"].items()}
    features = {n: _feature(n, body, w, sources) for n, (w, body) in raw["features"].items()}
    views = {
        n: _view(n, body, w, entities, sources, features, raw["features"])
        for n, (w, body) in raw["views"].items()
    }
    return FeatureRegistry(entities, sources, features, views)


def _collect(file: Path, raw: dict[str, dict[str, tuple[_Where, Any]]]) -> None:
    top = _Where(str(file), "")
    try:
        doc = yaml.load(file.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise top.error(f"invalid YAML: {exc}") from None
    doc = {} if doc is None else doc
    _check_mapping(doc, top, required=set(), allowed=set(SECTIONS))
    for section in SECTIONS:
        where = top.at(section)
        body = doc.get(section) or {}
        _check_mapping(body, where, required=set(), allowed=None)
        for name, spec in body.items():
            item = where.at(name)
            if not isinstance(name, str) or not name:
                raise item.error("names must be non-empty strings")
            if name in raw[section]:
                first = raw[section][name][0]
                raise item.error(f"duplicate name (first defined in {first.file})")
            required, allowed = _KEYS[section]
            _check_mapping(spec, item, required, allowed)
            raw[section][name] = (item, spec)


def _check_mapping(
    value: object, where: _Where, required: set[str], allowed: set[str] | None
) -> None:
    if not isinstance(value, Mapping):
        raise where.error(f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise where.at(key).error(
                    f"unknown key (expected one of {', '.join(sorted(allowed))})"
                )
    for key in sorted(required - set(value)):
        raise where.at(key).error("missing required key")


def _string(value: object, where: _Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"expected a non-empty string, got {value!r}")
    return value


def _string_list(value: object, where: _Where) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise where.error(f"expected a list, got {type(value).__name__}")
    items = tuple(_string(v, where.at(i)) for i, v in enumerate(value))
    for i, item in enumerate(items):
        if item in items[:i]:
            raise where.at(i).error(f"{item!r} listed twice")
    return items


def _entity(name: str, body: Mapping[str, Any], where: _Where) -> Entity:
    return Entity(name=name, key=_string(body["key"], where.at("key")))


def _source(name: str, body: Mapping[str, Any], where: _Where) -> Source:
    fields_where = where.at("fields")
    _check_mapping(body["fields"], fields_where, required=set(), allowed=None)
    fields: dict[str, str] = {}
    for field_name, kind in body["fields"].items():
        _string(field_name, fields_where)
        if kind not in FIELD_TYPES:
            raise fields_where.at(field_name).error(
                f"unknown field type {kind!r} (expected one of {', '.join(FIELD_TYPES)})"
            )
        fields[field_name] = kind
    slices = _string_list(body.get("slices", []), where.at("slices"))
    _check_slices(slices, fields, where.at("slices"))
    lateness = body.get("allowed_lateness", DEFAULT_LATENESS_S)
    return Source(
        name=name,
        topic=_string(body["topic"], where.at("topic")),
        schema=_string(body["schema"], where.at("schema")),
        event_time_field=_string(body["event_time"], where.at("event_time")),
        allowed_lateness_ms=parse_duration_ms(lateness, where.at("allowed_lateness")),
        fields=fields,
        slices=slices,
        max_future_skew_ms=parse_duration_ms(body.get("max_future_skew", DEFAULT_MAX_FUTURE_SKEW),
                                             where.at("max_future_skew")),
        min_event_time_ms=parse_instant_ms(body.get("min_event_time", DEFAULT_MIN_EVENT_TIME),
                                           where.at("min_event_time")),
    )


def parse_instant_ms(value: object, where: _Where) -> int:
    """A date (``2000-01-01``, UTC midnight), an ISO-8601 time (naive means UTC) or integer epoch
    milliseconds -> positive epoch ms."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise where.error(f"bad time {value!r} (expected e.g. 2000-01-01, "
                              "2000-01-01T00:00:00Z or integer epoch milliseconds)") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        ms = int(value.timestamp() * 1000)
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value
    else:
        raise where.error(f"bad time {value!r} (expected e.g. 2000-01-01, "
                          "2000-01-01T00:00:00Z or integer epoch milliseconds)")
    if ms <= 0:
        raise where.error(f"time must be after 1970-01-01, got {value!r}")
    return ms


def _check_slices(slices: tuple[str, ...], fields: Mapping[str, str], where: _Where) -> None:
    for i, name in enumerate(slices):
        if name not in fields:
            raise where.at(i).error(f"unknown field {name!r} (declared: {', '.join(fields)})")


def _window(spec: object, where: _Where) -> Window:
    _check_mapping(spec, where, required={"kind"}, allowed=None)
    kind = spec["kind"]
    if kind not in WINDOW_KINDS:
        raise where.error(
            f"unknown window kind {kind!r} (expected one of {', '.join(WINDOW_KINDS)})"
        )
    _check_mapping(spec, where, required=_WINDOW_KEYS[kind], allowed=_WINDOW_KEYS[kind] | {"kind"})
    size = parse_duration_ms(spec["size"], where.at("size"))
    if kind == "rolling":
        return RollingWindow(size)
    if kind == "tumbling":
        return TumblingWindow(size)
    hop = parse_duration_ms(spec["hop"], where.at("hop"))
    if size % hop:
        raise where.at("hop").error(f"hop ({spec['hop']}) must divide size ({spec['size']})")
    return HoppingWindow(size, hop)


def _feature(
    name: str, body: Mapping[str, Any], where: _Where, sources: Mapping[str, Source]
) -> Feature:
    aggregation = body["aggregation"]
    if aggregation not in AGGREGATIONS:
        raise where.at("aggregation").error(
            f"unknown aggregation {aggregation!r} (expected one of {', '.join(AGGREGATIONS)})"
        )
    field = body.get("field")
    if field is None and aggregation not in FIELDLESS_AGGREGATIONS:
        raise where.at("field").error(f"aggregation {aggregation!r} needs a field")
    if field is not None:
        _string(field, where.at("field"))
        known = {f for s in sources.values() for f in s.fields}
        if field not in known:
            raise where.at("field").error(
                f"unknown field {field!r} (declared: {', '.join(sorted(known))})"
            )
    return Feature(name, aggregation, field, None, _window(body["window"], where.at("window")))


def _view(
    name: str,
    body: Mapping[str, Any],
    where: _Where,
    entities: Mapping[str, Entity],
    sources: Mapping[str, Source],
    features: Mapping[str, Feature],
    feature_where: Mapping[str, tuple[_Where, Any]],
) -> FeatureView:
    entity = _lookup(entities, body["entity"], where.at("entity"), "entity")
    source = _lookup(sources, body["source"], where.at("source"), "source")
    if source.fields.get(entity.key) != "string":
        raise where.at("entity").error(
            f"entity key {entity.key!r} must be a string field of source {source.name!r}"
        )
    names = _string_list(body["features"], where.at("features"))
    if not names:
        raise where.at("features").error("a view needs at least one feature")
    resolved = []
    for i, feature_name in enumerate(names):
        feature = _lookup(features, feature_name, where.at("features").at(i), "feature")
        resolved.append(_bind(feature, source, feature_where[feature_name][0]))
    slices = _string_list(body.get("slices", list(source.slices)), where.at("slices"))
    _check_slices(slices, source.fields, where.at("slices"))
    return FeatureView(name, entity, source, tuple(resolved), slices)


def _lookup(table: Mapping[str, Any], name: object, where: _Where, what: str) -> Any:
    if name not in table:
        have = ", ".join(sorted(table)) or "none defined"
        raise where.error(f"unknown {what} {name!r} (have {have})")
    return table[name]


def _bind(feature: Feature, source: Source, where: _Where) -> Feature:
    """Resolve the feature's field against the view's source: it must exist with a usable type."""
    if feature.field is None:
        return feature
    field_type = source.fields.get(feature.field)
    if field_type is None:
        raise where.at("field").error(f"unknown field {feature.field!r} in source {source.name!r}")
    if field_type == "string" and feature.aggregation not in STRING_AGGREGATIONS:
        raise where.at("aggregation").error(
            f"aggregation {feature.aggregation!r} needs a numeric field, {feature.field!r} is a "
            f"string (string fields allow {', '.join(STRING_AGGREGATIONS)})"
        )
    return Feature(feature.name, feature.aggregation, feature.field, field_type, feature.window)
