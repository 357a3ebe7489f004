"""Every Redis key Driftline writes, named in one place, and the hash tags that make them fit a
Redis Cluster.

A Redis Cluster runs a ``MULTI`` only over keys of one hash slot, and a key's slot is the CRC16
of its *hash tag* (the text between its first ``{`` and the next ``}``) when it has one. A
partition's commit (its online values, state logs, offsets and commit record, fenced by its
epoch) must be one ``MULTI`` to stay exactly-once, so every key it touches carries the same tag,
``{<name>:<p>}``: the stage's state name (the feature stage's is its events topic) and the
Kafka partition. Different partitions hash to different slots, so a cluster spreads them over
its nodes. The same layout serves a single Redis, where the braces change nothing.

Keys (``<...>`` are placeholders; the braces are literal):
    dl:epoch:{<name>:<p>}:<group>           string  ownership epoch of partition p (INCR to claim)
    dl:state:{<name>:<p>}:<group>:<store>   list    a store's log: a snapshot, then deltas
                                                    (``np.savez`` blobs, no pickle)
    dl:offsets:{<name>:<p>}:<group>         hash    topic -> next offset to consume from p
    dl:commits:{<name>:<p>}:<group>         hash    topic -> "epoch:first:last" of the last batch
    dl:f:{<topic>:<p>}:<view>:<entity_id>   hash    an entity's online values (redis_online.py)

For online values ``<topic>`` is the events topic and ``<p>`` the partition the configured
partitioner gives the entity id (``core/partitioner.py``): a reader finds an entity's key from
its id alone, and it is the slot of the partition whose commit writes it.

A stage whose transaction must be atomic *across* its partitions (the monitor: its detectors,
stored in partition 0, see every partition's records) uses one tag for the whole stage,
``{<name>}:<p>`` in place of ``{<name>:<p>}``: one slot, one node, one ``MULTI``, as before.

The layout before hash tags (:class:`LegacyStateKeys`) is still read, on a single Redis, the
first time a partition is loaded, so an upgrade keeps its engine state and offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from driftline.core.partitioner import CONSISTENT_RANDOM, partition_function

if TYPE_CHECKING:
    from collections.abc import Callable

    from driftline.settings import Settings

PREFIX = "dl"


def partition_scope(name: str, partition: int, cross_partition: bool = False) -> str:
    """The part of a key that names (stage, partition) and picks its slot: ``{name:p}``, or
    ``{name}:p`` for a stage whose partitions must share one slot."""
    return f"{{{name}}}:{partition}" if cross_partition else f"{{{name}:{partition}}}"


@dataclass(frozen=True)
class StateKeys:
    """The keys of one stage's partition state (``adapters/redis_state.py``)."""

    group: str  # the stage's consumer group
    name: str  # the stage's state name: the feature stage's events topic, the monitor's
    # predictions topic
    cross_partition: bool = False  # one slot for all partitions (see the module docstring)

    def scope(self, partition: int) -> str:
        return partition_scope(self.name, partition, self.cross_partition)

    def epoch(self, partition: int) -> str:
        return f"{PREFIX}:epoch:{self.scope(partition)}:{self.group}"

    def log(self, store: str, partition: int) -> str:
        return f"{PREFIX}:state:{self.scope(partition)}:{self.group}:{store}"

    def offsets(self, partition: int) -> str:
        return f"{PREFIX}:offsets:{self.scope(partition)}:{self.group}"

    def commits(self, partition: int) -> str:
        return f"{PREFIX}:commits:{self.scope(partition)}:{self.group}"


@dataclass(frozen=True)
class LegacyStateKeys:
    """The keys before hash tags: per topic, one hash of offsets and one of commit records
    across all partitions, so one commit spanned several slots. Read on upgrade only."""

    group: str
    name: str

    def epoch(self, partition: int) -> str:
        return f"{PREFIX}:epoch:{self.group}:{self.name}:{partition}"

    def log(self, store: str, partition: int) -> str:
        return f"{PREFIX}:state:{self.group}:{self.name}:{store}:{partition}"

    def offsets(self, topic: str) -> str:
        return f"{PREFIX}:offsets:{self.group}:{topic}"

    def commits(self, topic: str) -> str:
        return f"{PREFIX}:commits:{self.group}:{topic}"


@dataclass(frozen=True)
class OnlineKeys:
    """The keys of online values. Writers and readers build them the same way, from the entity
    id, the events topic, the partition count and the partitioner (all from the settings), so
    a reader needs no other lookup."""

    topic: str
    partitions: int
    partitioner: str = CONSISTENT_RANDOM
    _partition_of: Callable[[str], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_partition_of",
                           partition_function(self.partitions, self.partitioner))

    @classmethod
    def for_settings(cls, settings: Settings) -> OnlineKeys:
        return cls(settings.topic_events, settings.partitions, settings.partitioner)

    def partition(self, entity_id: str) -> int:
        """The Kafka partition of `entity_id`'s events, as the producers' partitioner picks it."""
        return self._partition_of(entity_id)

    def scope(self, partition: int) -> str:
        return partition_scope(self.topic, partition)

    def feature(self, view: str, entity_id: str) -> str:
        return self.feature_in(self.partition(entity_id), view, entity_id)

    def feature_in(self, partition: int, view: str, entity_id: str) -> str:
        """:meth:`feature` for a writer that already knows the entity's partition."""
        return f"{PREFIX}:f:{self.scope(partition)}:{view}:{entity_id}"

    def pattern(self, view: str) -> str:
        """A ``SCAN``/``KEYS`` pattern for every entity of `view` (any partition)."""
        return f"{PREFIX}:f:{{{self.topic}:*}}:{view}:*"

    @staticmethod
    def entity_of(key: str | bytes, view: str) -> str:
        """The entity id in a key built by :meth:`feature` for `view` (ids may hold ``:``)."""
        text = key.decode() if isinstance(key, bytes) else key
        return text.split(f"}}:{view}:", 1)[1]
