"""Shared fixtures. Integration fixtures start real servers once per session and fail loudly."""
