"""Feature definitions as data: entities, sources, features and versioned feature views.

These frozen objects are what both the streaming path and the offline backfill read, so the two
compute exactly the same features. They are built by `driftline.core.features.loader` from
``feature_defs/*.yaml`` (format in ``docs/feature-definitions.md``); nothing here does I/O.

A view's ``version`` is the first 12 hex digits of the sha256 of the canonical JSON of what
determines its values: the resolved feature definitions (in column order), the entity and the
source's allowed lateness. Renaming the view, changing the topic or the slices leaves it alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from driftline.core.features.windows import Window

AGGREGATIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "std",
    "distinct_count",
    "last",
    "seconds_since_previous",
)
# Aggregations that read no field value: they only need event times.
FIELDLESS_AGGREGATIONS = ("count", "seconds_since_previous")
# What a string field supports. `last` is deliberately absent: feature values are float64, and a
# string has no faithful float encoding (a dictionary code would silently differ between runs).
STRING_AGGREGATIONS = ("count", "distinct_count", "seconds_since_previous")
FIELD_TYPES = ("numeric", "string")


class DefinitionError(ValueError):
    """An invalid definition file; the message names the file and the key path."""


@dataclass(frozen=True)
class Entity:
    """The thing features describe (a card); ``key`` is the source field holding its id."""

    name: str
    key: str


@dataclass(frozen=True)
class Source:
    """A topic of raw events and the schema facts the engine needs."""

    name: str
    topic: str
    schema: str
    event_time_field: str
    allowed_lateness_ms: int
    fields: Mapping[str, str]  # field name -> "numeric" | "string"
    slices: tuple[str, ...] = ()
    # The event-time guard (driftline.core.event_time): not part of any view's version, since it
    # decides which inputs are plausible at arrival, not how an accepted event is aggregated.
    max_future_skew_ms: int = 5 * 60_000
    min_event_time_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z


@dataclass(frozen=True)
class Feature:
    """One aggregation of one field over one window."""

    name: str
    aggregation: str
    field: str | None
    field_type: str | None
    window: Window

    def spec(self) -> dict[str, object]:
        return {
            "name": self.name,
            "aggregation": self.aggregation,
            "field": self.field,
            "field_type": self.field_type,
            "window": self.window.spec(),
        }


@dataclass(frozen=True)
class FeatureView:
    """The features served together for one entity from one source, as one versioned vector."""

    name: str
    entity: Entity
    source: Source
    features: tuple[Feature, ...]
    slices: tuple[str, ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Column order of every value matrix the engine returns."""
        return tuple(f.name for f in self.features)

    @cached_property
    def version(self) -> str:
        canonical = json.dumps(
            {
                "entity": {"name": self.entity.name, "key": self.entity.key},
                "allowed_lateness_ms": self.source.allowed_lateness_ms,
                "features": [f.spec() for f in self.features],
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class FeatureRegistry:
    """Everything loaded from one definitions file or directory, by name."""

    entities: Mapping[str, Entity] = field(default_factory=dict)
    sources: Mapping[str, Source] = field(default_factory=dict)
    features: Mapping[str, Feature] = field(default_factory=dict)
    views: Mapping[str, FeatureView] = field(default_factory=dict)

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            raise KeyError(f"unknown feature view {name!r} (have {sorted(self.views)})") from None
