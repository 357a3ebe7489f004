"""Faust application and agents (installed as ``driftline.agents``)."""
