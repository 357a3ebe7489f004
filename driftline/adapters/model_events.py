"""Registry stage changes onto ``driftline.models``: how running scorers learn to hot-swap.

A registry operation returns a :class:`~driftline.core.registry.Transition`, which also carries
the Production version it displaced; every one of its transitions becomes a
``driftline.ModelEvent`` record keyed by model name. Used by ``driftline models`` and the
retrain controller.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from driftline.adapters import kafka
from driftline.core.codec.single_object import encode
from driftline.core.registry import Transition
from driftline.settings import Settings

MODEL_EVENT_SCHEMA = "driftline.ModelEvent"

NOT_PUBLISHED = ("DRIFTLINE_KAFKA_BOOTSTRAP is not set: the transition was not published; "
                 "running scorers pick it up on POST /model/reload")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class ModelEventPublisher:
    """Publishes the ModelEvents of registry transitions; a no-op (with a warning) without a broker.

    The producer is made on first use and reused; each :meth:`publish` flushes and raises if a
    record was not delivered. ``warn`` receives the message explaining a skipped publication
    (default: stderr; a long-running service passes its logger's ``warning``).
    """

    def __init__(self, settings: Settings, *,
                 make_producer: Callable[[Settings], kafka.CheckedProducer] = kafka.make_producer,
                 warn: Callable[[str], None] = _to_stderr) -> None:
        self.settings = settings
        self._make_producer = make_producer
        self._warn = warn
        self._producer: kafka.CheckedProducer | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.kafka_bootstrap)

    def publish(self, transition: Transition, **lineage: Any) -> bool:
        """Send every ModelEvent of `transition`; False (and a warning) when no broker is set.
        ``lineage`` adds fields to each record (``job_id``, ``drift_ids``, ...)."""
        return self.publish_records([dict(event.to_model_event(), **lineage)
                                     for event in transition.events()])

    def publish_records(self, records: Sequence[Mapping[str, Any]]) -> bool:
        """Send ``driftline.ModelEvent`` records (``core.retraining.lineage``), flushed."""
        if not self.enabled:
            self._warn(NOT_PUBLISHED)
            return False
        if self._producer is None:
            self._producer = self._make_producer(self.settings)
        for record in records:
            # Keyed by model name (docs/topics-and-schemas.md): one model's events stay in order.
            self._producer.produce(self.settings.topic_models, encode(MODEL_EVENT_SCHEMA, record),
                                   key=str(record["model_name"]).encode())
        self._producer.flush_or_raise()
        return True


def publish(settings: Settings, transition: Transition) -> bool:
    """One-shot :meth:`ModelEventPublisher.publish` (a fresh producer, flushed before return)."""
    return ModelEventPublisher(settings).publish(transition)
