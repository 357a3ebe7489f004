"""The demo feature definitions (`*.yaml`), shipped as package data."""

from pathlib import Path

DEFINITIONS_DIR = Path(__file__).resolve().parent
