"""Driftline: streaming ML features, scoring and monitoring."""

__version__ = "0.1.0"
