"""Shared fixtures. Integration fixtures start real servers once per session and fail loudly."""

import os

from hypothesis import settings

# Hypothesis profiles for the property-based suites (tests/unit/codec/test_fuzz_decoders.py,
# tests/unit/agents/test_ingest_fuzz.py). "ci", the default: the same examples on every run
# (derandomize), no example database, no deadline, so `make test` is deterministic and any
# failure reproduces. "soak": fresh random examples, 50 times as many, for a long hunt by hand:
#     HYPOTHESIS_PROFILE=soak python -m pytest tests/unit -k fuzz
# The suites scale their own example counts by max_examples / 100.
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          print_blob=True, max_examples=100)
settings.register_profile("soak", derandomize=False, database=None, deadline=None,
                          print_blob=True, max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
