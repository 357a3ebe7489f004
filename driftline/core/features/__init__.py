"""The pure, batch-first feature core: definitions, windows and the feature engine.

Imports numpy and pyyaml only; never a broker, store or clock. The Kafka/Faust path and the
offline backfill both drive `FeatureEngine`, so online and offline features agree exactly.
"""

from driftline.core.features.definitions import (
    AGGREGATIONS,
    DefinitionError,
    Entity,
    Feature,
    FeatureRegistry,
    FeatureView,
    Source,
)
from driftline.core.features.engine import EventBatch, FeatureBatch, FeatureEngine
from driftline.core.features.loader import load_definitions, parse_duration_ms
from driftline.core.features.windows import HoppingWindow, RollingWindow, TumblingWindow, Window

__all__ = [
    "AGGREGATIONS",
    "DefinitionError",
    "Entity",
    "EventBatch",
    "Feature",
    "FeatureBatch",
    "FeatureEngine",
    "FeatureRegistry",
    "FeatureView",
    "HoppingWindow",
    "RollingWindow",
    "Source",
    "TumblingWindow",
    "Window",
    "load_definitions",
    "parse_duration_ms",
]
