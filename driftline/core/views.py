"""Which feature views a deployment computes and serves, read once from the definitions.

The worker, the scorer and the CLI all ask here, so they agree on the set. Definitions name
topics by their default names; a deployment may rename the events topic.
"""

from __future__ import annotations

from driftline.core.features import FeatureView, load_definitions
from driftline.feature_defs import DEFINITIONS_DIR
from driftline.settings import Settings

DEFAULT_EVENTS_TOPIC = Settings().topic_events


def views_for(settings: Settings) -> dict[str, FeatureView]:
    """View name -> view, for every view computed from the configured events topic."""
    where = settings.feature_defs or DEFINITIONS_DIR
    topics = {settings.topic_events, DEFAULT_EVENTS_TOPIC}
    views = {v.name: v for v in load_definitions(where).views.values()
             if v.source.topic in topics}
    if not views:
        raise ValueError(f"no feature view reads {settings.topic_events} in {where}")
    return views


def view_named(settings: Settings, name: str) -> FeatureView:
    views = views_for(settings)
    if name not in views:
        raise ValueError(f"unknown view {name!r}; have {sorted(views)}")
    return views[name]
