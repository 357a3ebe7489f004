"""The pure core: feature definitions and engine, codecs, the model registry, partition state.

Plain Python and numpy over batches. Nothing here talks to a broker, Redis, ONNX Runtime, HTTP
or Prometheus, and nothing reads the clock: callers pass times in. ``tests/unit/test_layers.py``
enforces this boundary.
"""
