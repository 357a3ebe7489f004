"""Entry point of `driftline worker`: wire the pipeline, build the Faust app, run the worker."""

from __future__ import annotations

import faust

from driftline import kafka
from driftline.agents.app import create_app
from driftline.agents.ingest import CountingDownstream, IngestPipeline
from driftline.codec.schema_set import SchemaSet
from driftline.dlq import DeadLetterSink
from driftline.settings import Settings


def build_ingest(settings: Settings, downstream=None) -> IngestPipeline:
    from driftline.codec.decoder import Decoder

    schemas = SchemaSet.load()
    producer = kafka.make_producer(settings)
    decoder = Decoder.for_settings(settings, "driftline.TransactionEvent", schemas)
    return IngestPipeline(
        decoder=decoder,
        dead_letters=DeadLetterSink(producer, settings.topic_dlq, schemas),
        producer=producer,
        downstream=downstream or CountingDownstream(),
    )


def run_worker(settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_ingest(settings)
    app, _reader = create_app(settings, pipeline)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                          override_logging=False)
    worker.execute_from_commandline()  # returns via SystemExit when stopped by a signal
    return 0
