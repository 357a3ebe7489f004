"""Adapters: the thin edges between the core and the outside (Kafka, Redis, Parquet, ONNX Runtime,
Prometheus). Each module wraps one technology behind a small interface the core defines or needs.
"""
