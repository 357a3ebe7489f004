"""Scorer service (installed as ``driftline.serving``)."""
