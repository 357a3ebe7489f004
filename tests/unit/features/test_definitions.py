"""Loading and validating feature definitions: the demo file, view versions, error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.core.features import DefinitionError, RollingWindow, load_definitions
from driftline.feature_defs import DEFINITIONS_DIR

BASE = """
entities:
  card: {key: entity_id}
sources:
  tx:
    topic: driftline.events
    schema: driftline.TransactionEvent
    event_time: event_time
    fields: {entity_id: string, amount: numeric, merchant_id: string, segment: string}
    slices: [segment]
features:
  amount_sum_1h: {aggregation: sum, field: amount, window: {kind: rolling, size: 1h}}
  merchants_1h: {aggregation: distinct_count, field: merchant_id, window: {kind: rolling, size: 1h}}
views:
  v1: {entity: card, source: tx, features: [amount_sum_1h, merchants_1h]}
"""


def write(tmp_path: Path, text: str, name: str = "defs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_demo_definitions_load():
    registry = load_definitions(DEFINITIONS_DIR)
    view = registry.view("transactions_v1")
    assert view.source.topic == "driftline.events"
    assert view.source.allowed_lateness_ms == 60_000
    assert view.slices == ("segment", "channel", "country")
    kinds = {f.window.kind for f in view.features}
    assert kinds == {"rolling", "tumbling", "hopping"}
    assert len(view.version) == 12
    assert view.version == load_definitions(DEFINITIONS_DIR).view("transactions_v1").version


def test_defaults_and_durations(tmp_path):
    view = load_definitions(write(tmp_path, BASE)).view("v1")
    assert view.source.allowed_lateness_ms == 60_000
    assert view.features[0].window == RollingWindow(3_600_000)
    assert view.feature_names == ("amount_sum_1h", "merchants_1h")


@pytest.mark.parametrize(
    ("old", "new", "changes"),
    [
        ("size: 1h}}\n  merchants", "size: 3600}}\n  merchants", False),  # same window, int secs
        ("size: 1h}}\n  merchants", "size: 2h}}\n  merchants", True),
        ("kind: rolling, size: 1h}}\n  merchants", "kind: tumbling, size: 1h}}\n  merchants", True),
        ("aggregation: sum", "aggregation: mean", True),
        ("event_time: event_time", "event_time: event_time\n    allowed_lateness: 2m", True),
        ("key: entity_id", "key: segment", True),
        ("[amount_sum_1h, merchants_1h]", "[merchants_1h, amount_sum_1h]", True),
        ("topic: driftline.events", "topic: other.topic", False),
        ("slices: [segment]", "slices: []", False),
        ("  v1: {", "  renamed: {", False),
        # The event-time guard decides which inputs are plausible, not how they aggregate.
        ("event_time: event_time", "event_time: event_time\n    max_future_skew: 1h", False),
        ("event_time: event_time", "event_time: event_time\n    min_event_time: 2020-01-01",
         False),
    ],
)
def test_version_changes_exactly_when_definitions_do(tmp_path, old, new, changes):
    assert old in BASE
    before = load_definitions(write(tmp_path, BASE, "a.yaml")).views["v1"].version
    after_registry = load_definitions(write(tmp_path, BASE.replace(old, new), "b.yaml"))
    after = next(iter(after_registry.views.values())).version
    assert (before != after) is changes


@pytest.mark.parametrize(
    ("lines", "skew_ms", "floor_ms"),
    [
        ("", 300_000, 946_684_800_000),  # defaults: 5 minutes, 2000-01-01
        ("max_future_skew: 30s\n    min_event_time: 2020-01-01", 30_000, 1_577_836_800_000),
        ("min_event_time: 2020-01-01T00:00:01Z", 300_000, 1_577_836_801_000),
        ("min_event_time: '2020-01-01T01:00:00+01:00'", 300_000, 1_577_836_800_000),
        ("min_event_time: 1577836800000\n    max_future_skew: 2h", 7_200_000, 1_577_836_800_000),
    ],
)
def test_event_time_guard_settings(tmp_path, lines, skew_ms, floor_ms):
    text = BASE.replace("event_time: event_time", f"event_time: event_time\n    {lines}")
    source = load_definitions(write(tmp_path, text)).sources["tx"]
    assert (source.max_future_skew_ms, source.min_event_time_ms) == (skew_ms, floor_ms)


BROKEN = [
    ("event_time: event_time", "event_time: event_time\n    min_event_time: yesterday",
     "sources.tx.min_event_time: bad time 'yesterday'"),
    ("event_time: event_time", "event_time: event_time\n    min_event_time: -5",
     "sources.tx.min_event_time: time must be after 1970-01-01"),
    ("event_time: event_time", "event_time: event_time\n    max_future_skew: soon",
     "sources.tx.max_future_skew: bad duration 'soon'"),
    ("event_time: event_time", "event_time: event_time\n    max_future_skews: 5m",
     "max_future_skews"),
    (
        "kind: rolling, size: 1h}}\n  merchants",
        "kind: slidng, size: 1h}}\n  merchants",
        "features.amount_sum_1h.window: unknown window kind 'slidng' "
        "(expected one of rolling, tumbling, hopping)",
    ),
    (
        "aggregation: sum",
        "aggregation: summ",
        "features.amount_sum_1h.aggregation: unknown aggregation",
    ),
    ("field: amount", "field: amont", "features.amount_sum_1h.field: unknown field 'amont'"),
    (
        "aggregation: distinct_count, field: merchant_id",
        "aggregation: mean, field: merchant_id",
        "features.merchants_1h.aggregation: aggregation 'mean' needs a numeric field",
    ),
    (
        "aggregation: distinct_count, field: merchant_id",
        "aggregation: last, field: merchant_id",
        "features.merchants_1h.aggregation:",
    ),
    (
        "size: 1h}}\n  merchants",
        "size: 1 hour}}\n  merchants",
        "features.amount_sum_1h.window.size: bad duration '1 hour'",
    ),
    (
        "size: 1h}}\n  merchants",
        "size: 0}}\n  merchants",
        "features.amount_sum_1h.window.size: duration must be positive",
    ),
    (
        "kind: rolling, size: 1h}}\n  merchants",
        "kind: hopping, size: 1h, hop: 7m}}\n  merchants",
        "features.amount_sum_1h.window.hop: hop (7m) must divide size (1h)",
    ),
    (
        "kind: rolling, size: 1h}}\n  merchants",
        "kind: rolling, size: 1h, hop: 5m}}\n  merchants",
        "features.amount_sum_1h.window.hop: unknown key",
    ),
    (
        "aggregation: sum,",
        "aggregation: sum, windw: 1h,",
        "features.amount_sum_1h.windw: unknown key",
    ),
    ("topic: driftline.events", "topik: driftline.events", "sources.tx.topik: unknown key"),
    ("entities:", "entitys:", "entitys: unknown key"),
    ("  v1: {entity: card,", "  v1: {entity: cart,", "views.v1.entity: unknown entity 'cart'"),
    ("source: tx, features", "source: tix, features", "views.v1.source: unknown source 'tix'"),
    (
        "[amount_sum_1h, merchants_1h]",
        "[amount_sum_1h, merchants_2h]",
        "views.v1.features.1: unknown feature 'merchants_2h'",
    ),
    (
        "[amount_sum_1h, merchants_1h]",
        "[amount_sum_1h, amount_sum_1h]",
        "views.v1.features.1: 'amount_sum_1h' listed twice",
    ),
    ("  merchants_1h:", "  amount_sum_1h:", "duplicate key 'amount_sum_1h'"),
    ("amount: numeric,", "amount: float,", "sources.tx.fields.amount: unknown field type 'float'"),
    ("slices: [segment]", "slices: [segmnt]", "sources.tx.slices.0: unknown field 'segmnt'"),
    (
        "event_time: event_time\n",
        "event_time: event_time\n    allowed_lateness: soon\n",
        "sources.tx.allowed_lateness: bad duration 'soon'",
    ),
    (
        "{aggregation: sum, field: amount,",
        "{aggregation: sum,",
        "features.amount_sum_1h.field: aggregation 'sum' needs a field",
    ),
    ("key: entity_id", "key: amount", "views.v1.entity: entity key 'amount' must be a string"),
]


@pytest.mark.parametrize(("old", "new", "message"), BROKEN, ids=[b[2][:40] for b in BROKEN])
def test_errors_name_file_and_key_path(tmp_path, old, new, message):
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(DefinitionError) as info:
        load_definitions(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_duplicate_names_across_files_in_a_directory(tmp_path):
    write(tmp_path, BASE, "a.yaml")
    second = write(
        tmp_path,
        "features:\n  amount_sum_1h: {aggregation: count, window: {kind: rolling, size: 5m}}\n",
        "b.yaml",
    )
    with pytest.raises(DefinitionError, match=f"^{second}: features.amount_sum_1h: duplicate"):
        load_definitions(tmp_path)


def test_definition_error_is_a_value_error():
    assert issubclass(DefinitionError, ValueError)
