"""Read a high-volume topic in batches inside the Faust worker.

Faust's agent loop costs several event-loop turns per message (FIELD-NOTES: ~12k msgs/s here),
while confluent-kafka hands out thousands of messages per call. ``BatchReader`` is a Faust
(mode) service: the worker starts and stops it with the app, and it runs a
:class:`~driftline.adapters.batch_loop.BatchLoop` on its own thread, so Faust's event loop, timers
and web server stay responsive. The loop's contract with the pipeline is documented there.
"""

from __future__ import annotations

import mode

from driftline.adapters.batch_loop import BatchLoop, BatchPipeline

__all__ = ["BatchPipeline", "BatchReader"]


class BatchReader(mode.Service):
    """A Faust-managed service that feeds one topic to a pipeline in batches."""

    def __init__(self, batches: BatchLoop, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batches = batches

    async def on_start(self) -> None:
        self.batches.start()

    async def on_stop(self) -> None:
        await self.loop.run_in_executor(None, self.batches.stop)
