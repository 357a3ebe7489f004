"""Decode a batch of raw events straight into columns: the hot path of every batch stage.

`Decoder.decode_many` turns each value into a validated dict (4 to 5 us a TransactionEvent
here, Avro or JSON), and every stage after it then pulls columns back out of those dicts. A
`ColumnarDecoder` decodes the whole batch at once into one numpy array per schema field
(``bench/bench_decode.py``: about 0.7 us a record for Avro, 1.5 for JSON):

* Avro single-object values carrying the reader schema's fingerprint (and Confluent values
  whose registry schema is the reader schema) are read by ``avro_columns``: array operations
  over all bodies at once, in place in the joined batch;
* JSON objects are parsed with orjson and checked a column at a time (``json_columns``);
* each column is validated as the per-record check would (finite doubles, 32-bit ints, no NUL,
  ``driftline.allowed``: ``flat_schema.invalid_rows``).

Whatever the fast path cannot be sure about goes, value by value, to the per-record `Decoder`:
a row failing a check, an unsure Avro body (truncated, trailing bytes, overlong varints, bad
UTF-8), another writer schema (history, or another Confluent id), JSON that orjson refuses or
that carries ISO timestamps or unknown keys, a lead byte that is none of ``C3 01``/``00``/``{``.
So a good value yields exactly the values the per-record decoder gives, and a bad one exactly
its `DecodeError` (reason and detail) for the dead letter: the fast path never names a fault.

Usage (a batch stage; nothing here is wired into the worker yet)::

    columnar = ColumnarDecoder(Decoder.for_settings(settings, "driftline.TransactionEvent"))
    rows, failures = columnar.decode_columns([m.value() or b"" for m in messages])
    for i, error in failures:                       # positions in `messages`
        dead_letters.send(messages[i], error.reason, error.detail)
    rejected = guard.reject_columns(rows["event_time"], now_ms)      # event_time.py
    for r in rejected:
        dead_letters.send(messages[rows.index[r.index]], r.reason, r.detail)
    rows = rows.drop([r.index for r in rejected])
    part = rows.take(partitions[rows.index] == p)   # one partition's rows, in offset order
    offsets = message_offsets[part.index]
    events = EventBatch.from_columns(part.columns, offsets, view)      # the engine's input
    parquet_columns = {**part.columns, "partition": ..., "offset": offsets}   # pa.table-ready
    applied = part.take(result.applied)             # FeatureRecords of the applied events:
    encoder.encode_batch(applied["event_id"].tolist(), applied.as_str(view.entity.key),
                         applied[view.source.event_time_field], values[result.applied],
                         [applied.as_str(s) for s in view.slices])

String columns are object arrays of ``str`` (``.tolist()`` is nearly free, and pyarrow writes
them as strings); timestamps are int64 epoch ms; doubles float64; ints int64; booleans bool.
Only flat records of primitive fields have columns (``TransactionEvent``, ``Label``); another
schema is refused at construction: use `Decoder.decode_many` for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.core.codec import avro_columns, json_columns
from driftline.core.codec.confluent import ConfluentRegistry
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.errors import DecodeError
from driftline.core.codec.flat_schema import FieldSpec, flat_fields, invalid_rows
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import HEADER_SIZE as SINGLE_OBJECT_HEADER

_CONFLUENT_HEADER = 5


@dataclass(frozen=True)
class RecordColumns:
    """The good records of a batch as columns, in input order.

    ``columns[name][k]`` is field `name` of the k-th good record, which was input value
    ``index[k]``; the columns follow the schema's field order.
    """

    columns: Mapping[str, np.ndarray]
    index: np.ndarray
    """int64, ascending: the position in the decoded batch of each row."""

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def take(self, rows: np.ndarray | Sequence[int]) -> RecordColumns:
        """The rows at `rows` (positions in this object, or a bool mask over them)."""
        rows = np.asarray(rows)
        if rows.dtype != bool:
            rows = rows.astype(np.int64)
        return RecordColumns({n: c[rows] for n, c in self.columns.items()}, self.index[rows])

    def drop(self, rows: Sequence[int] | np.ndarray) -> RecordColumns:
        """All rows but those at `rows` (positions in this object), e.g. guard rejections."""
        keep = np.ones(len(self), dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = False
        return self if keep.all() else self.take(keep)

    def as_str(self, name: str) -> list[str]:
        """A column as ``str`` values, as ``str(record[name])`` gives them (slice values, the
        entity id of a feature record)."""
        values = self.columns[name].tolist()
        return values if self.columns[name].dtype == object else [str(v) for v in values]

    @classmethod
    def of_records(cls, records: Sequence[Mapping[str, Any]]) -> RecordColumns:
        """Columns of decoded dicts (all with the same fields, as a decoder gives them), for
        sources whose schema has no columnar decoder and for tests: object arrays of the
        values as they are; rows numbered from 0."""
        names = list(records[0]) if records else []
        columns = {}
        for name in names:
            column = np.empty(len(records), dtype=object)
            for i, record in enumerate(records):  # one by one: a value may itself be a list
                column[i] = record[name]
            columns[name] = column
        return cls(columns, np.arange(len(records), dtype=np.int64))

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as the dicts `Decoder.decode_many` returns, for per-record consumers."""
        names = list(self.columns)
        return [dict(zip(names, row, strict=True))
                for row in zip(*(c.tolist() for c in self.columns.values()), strict=True)]


class ColumnarDecoder:
    """Decodes batches of one flat record schema into `RecordColumns`, with the per-record
    `decoder` (its schema, schema set and registry) as the judge of every doubtful value."""

    per_record_below: int = 48
    """Batches smaller than this are decoded record by record: the fast path's array
    operations cost about 0.2 ms a call whatever the size, which only pays from some 50
    values on (TransactionEvents here: 1 value 230 us against 5; 16 values 10.5 us a record
    against 4.0; 64 values 3.4 against 4.1). A test may set it to 0 on an instance."""

    def __init__(self, decoder: Decoder) -> None:
        fields = flat_fields(decoder.schema)
        if fields is None:
            raise ValueError(f"{decoder.schema.name} is not a flat record of primitive fields; "
                             "decode it with Decoder.decode_many")
        self.decoder = decoder
        self.schema = decoder.schema
        self.fields: tuple[FieldSpec, ...] = fields
        self._fingerprint = int(np.frombuffer(self.schema.fingerprint, dtype="<u8")[0])

    @classmethod
    def for_schema(cls, schema_name: str, schemas: SchemaSet | None = None,
                   registry: ConfluentRegistry | None = None) -> ColumnarDecoder:
        return cls(Decoder(schema_name, schemas, registry))

    def decode_columns(self, values: Sequence[bytes],
                       ) -> tuple[RecordColumns, list[tuple[int, DecodeError]]]:
        """Decode a batch: the good records as columns, and (index, error) per bad value, the
        very errors `Decoder.decode_many` gives. Raises `RegistryUnavailable` as it does."""
        n = len(values)
        if n < self.per_record_below:
            return self._per_record(values, np.arange(n), [])
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
        buf = np.frombuffer(b"".join(values) + avro_columns.PADDING, dtype=np.uint8)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        lead = np.where(lengths > 0, buf[starts], -1)
        header = self._avro_headers(values, buf, starts, lengths, lead)

        parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        doubtful = np.ones(n, dtype=bool)
        avro = np.flatnonzero(header > 0)
        if len(avro):
            columns, sure = avro_columns.read_columns(
                buf, starts[avro] + header[avro], ends[avro], self.fields)
            parts.append(self._checked(avro[sure], columns))
        json_rows = np.flatnonzero(lead == ord("{"))
        if len(json_rows):
            columns, sure = json_columns.read_columns([values[i] for i in json_rows.tolist()],
                                                      self.fields)
            parts.append(self._checked(json_rows[sure], columns))
        for rows, _ in parts:
            doubtful[rows] = False
        return self._per_record(values, np.flatnonzero(doubtful), parts)

    def _per_record(self, values: Sequence[bytes], doubtful: np.ndarray,
                    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]],
                    ) -> tuple[RecordColumns, list[tuple[int, DecodeError]]]:
        """Decode the `doubtful` values one by one and merge them with the fast `parts`."""
        failures: list[tuple[int, DecodeError]] = []
        records, record_rows = [], []
        for i in doubtful.tolist():
            try:
                records.append(self.decoder.decode(values[i]))
            except DecodeError as exc:
                failures.append((i, exc))
            else:
                record_rows.append(i)
        if records:
            parts.append((np.asarray(record_rows, dtype=np.int64), self._from_records(records)))
        return self._merge(parts), failures

    def _avro_headers(self, values: Sequence[bytes], buf: np.ndarray, starts: np.ndarray,
                      lengths: np.ndarray, lead: np.ndarray) -> np.ndarray:
        """Per value, the size of the header in front of an Avro body written with the reader
        schema itself (single-object or Confluent), or 0: any other value is not Avro for the
        fast path."""
        second = buf[starts + 1]  # the padding keeps this in the buffer for short values
        header = np.zeros(len(values), dtype=np.int64)
        single = (lengths >= SINGLE_OBJECT_HEADER) & (lead == 0xC3) & (second == 0x01)
        if single.any():
            at = starts[single, None] + 2 + np.arange(8)
            fingerprints = np.ascontiguousarray(buf[at]).view("<u8").reshape(-1)
            header[np.flatnonzero(single)[fingerprints == self._fingerprint]] = \
                SINGLE_OBJECT_HEADER
        registry = self.decoder.registry
        confluent = np.flatnonzero((lengths >= _CONFLUENT_HEADER) & (lead == 0))
        if registry is not None and len(confluent):
            at = starts[confluent, None] + 1 + np.arange(4)
            ids = np.ascontiguousarray(buf[at]).view(">u4").reshape(-1)
            for schema_id in np.unique(ids).tolist():
                try:  # RegistryUnavailable propagates, as from decode_many
                    writer = registry.writer_schema(schema_id)
                except DecodeError:
                    continue  # an unknown id: the per-record decoder says so
                if writer.fingerprint == self.schema.fingerprint:
                    header[confluent[ids == schema_id]] = _CONFLUENT_HEADER
        return header

    def _checked(self, rows: np.ndarray, columns: dict[str, np.ndarray],
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The rows whose every column passes validation; the others stay doubtful."""
        bad = np.zeros(len(rows), dtype=bool)
        for spec in self.fields:
            bad |= invalid_rows(spec, columns[spec.name])
        if bad.any():
            return rows[~bad], {name: column[~bad] for name, column in columns.items()}
        return rows, columns

    def _from_records(self, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        columns = {}
        for spec in self.fields:
            column = np.empty(len(records), dtype=spec.dtype)
            column[:] = [r[spec.name] for r in records]
            columns[spec.name] = column
        return columns

    def _merge(self, parts: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> RecordColumns:
        """One `RecordColumns` in input order from the fast and the per-record parts."""
        parts = [p for p in parts if len(p[0])]
        if not parts:
            empty = {spec.name: np.zeros(0, dtype=spec.dtype) for spec in self.fields}
            return RecordColumns(empty, np.zeros(0, dtype=np.int64))
        if len(parts) == 1:
            rows, columns = parts[0]
            return RecordColumns(columns, rows)
        index = np.concatenate([rows for rows, _ in parts])
        order = np.argsort(index, kind="stable")
        columns = {spec.name: np.concatenate([c[spec.name] for _, c in parts])[order]
                   for spec in self.fields}
        return RecordColumns(columns, index[order])
