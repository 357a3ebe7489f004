"""Why a record was dead-lettered: every reason code, and the `DecodeError` exception.

The reason codes are the machine-readable `reason` of a `driftline.DeadLetter`; the detail is
the human-readable message that lands next to it, so it must say what was wrong and where.
This module is the one list of them: `REASONS` are the decoder's, `ALL_REASONS` every stage's,
and `DeadLetterSink.send` refuses any other.
"""

from __future__ import annotations

DECODE_ERROR = "decode_error"
"""The bytes are not in any accepted encoding, or the Avro/JSON body is corrupt."""
VALIDATION_ERROR = "validation_error"
"""The record parsed but a field is missing, mistyped, non-finite or out of its allowed set."""
UNKNOWN_SCHEMA = "unknown_schema"
"""The writer schema (fingerprint or registry id) is not known."""
SCHEMA_MISMATCH = "schema_mismatch"
"""The writer schema is known but cannot be resolved to the schema this topic expects."""

REASONS = (DECODE_ERROR, VALIDATION_ERROR, UNKNOWN_SCHEMA, SCHEMA_MISMATCH)
"""The reasons a `DecodeError` carries (any stage that decodes)."""

LATE = "late"
"""The event is older than its partition's watermark allows (feature stage)."""
VIEW_MISMATCH = "view_mismatch"
"""The feature record was computed by another view version than the served model's (scorer)."""
FUTURE_EVENT_TIME = "future_event_time"
"""The event time is further ahead of the reader's clock than its source allows (event-time
guard, `driftline.core.event_time`)."""
INVALID_EVENT_TIME = "invalid_event_time"
"""The event time is before its source's earliest plausible time (event-time guard)."""

ALL_REASONS = (*REASONS, LATE, VIEW_MISMATCH, FUTURE_EVENT_TIME, INVALID_EVENT_TIME)
"""Every dead-letter reason code of every stage; a new one is added here and nowhere else."""


class DecodeError(ValueError):
    """A bad input record; `reason` is a DLQ reason code, `detail` a readable explanation."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RegistryUnavailable(RuntimeError):
    """The schema registry could not be reached; the record is not at fault, so retry, not DLQ."""
