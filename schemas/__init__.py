"""Avro schemas (`*.avsc`) for every record on every Driftline topic, shipped as package data."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
