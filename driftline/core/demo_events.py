"""Synthetic card transactions and delayed fraud labels for demos, benchmarks and tests.

Pure and deterministic for a seed: event time is simulated from `start_ms` at
`events_per_second`, never read from a clock. Each card has a home country, a segment, a
lognormal typical amount, a channel habit and a few favourite merchants; fraud comes in short
bursts of large amounts at unfamiliar merchants, often abroad. A latent fraud flag per event is
the ground truth that `labels_for` reveals after a random delay.

From `drift_at_ms` on, `covariate_shift` scales amounts up and moves the channel mix towards
online, and `concept_shift` changes what fraud looks like (small domestic online amounts) while
legitimate travel makes the old fraud pattern common among honest cards. Generation is
vectorised with numpy; only the final conversion to dicts is per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DemoConfig:
    """Shape of the synthetic stream; every rate is in event time."""

    seed: int = 0
    n_entities: int = 1_000
    n_merchants: int = 200
    segments: tuple[str, ...] = ("consumer", "small_business", "student", "premium")
    channels: tuple[str, ...] = ("online", "pos", "atm")
    countries: tuple[str, ...] = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "CA")
    start_ms: int = 1_700_000_000_000
    events_per_second: float = 50.0
    fraud_rate: float = 0.01
    """Expected fraction of events that are fraudulent."""
    label_delay_ms: tuple[int, int] = (60_000, 3_600_000)
    """Labels arrive uniformly within this delay range after the event."""
    drift_at_ms: int | None = None
    covariate_shift: float = 0.0
    """After drift: amounts scale by (1 + shift); this share of non-online use moves online."""
    concept_shift: bool = False
    shuffle_within_ms: int = 0
    """If > 0, events arrive out of order, each less than this much older than any before it."""


class DemoGenerator:
    """An endless synthetic stream: successive `events(n)` calls continue where the last ended."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._next_index = 0
        self._clock_ms = float(config.start_ms)
        # Latent truth and label delay per event index; event ids encode the index.
        self._fraud = np.zeros(0, dtype=bool)
        self._delay = np.zeros(0, dtype=np.int64)
        self._make_population()

    @property
    def _id_prefix(self) -> str:
        return f"ev-{self.config.seed}-"

    def _make_population(self) -> None:
        c, rng = self.config, self._rng
        n = c.n_entities
        self._entity_names = np.array([f"card-{i:06d}" for i in range(n)], dtype=object)
        self._merchant_names = np.array([f"m-{i:05d}" for i in range(c.n_merchants)], dtype=object)
        self._segment_names = np.array(c.segments, dtype=object)
        self._channel_names = np.array(c.channels, dtype=object)
        self._country_names = np.array(c.countries, dtype=object)
        # Most cards live in the first country, as in a single-market issuer.
        home_p = np.full(len(c.countries), 0.3 / max(len(c.countries) - 1, 1))
        home_p[0] = 0.7 if len(c.countries) > 1 else 1.0
        self._home = rng.choice(len(c.countries), size=n, p=home_p / home_p.sum())
        self._segment = rng.integers(len(c.segments), size=n)
        segment_amount = rng.normal(0.0, 0.4, size=len(c.segments))
        segment_risk = rng.lognormal(0.0, 0.5, size=len(c.segments))
        self._log_amount = 3.5 + segment_amount[self._segment] + rng.normal(0.0, 0.5, size=n)
        self._activity = rng.lognormal(0.0, 0.8, size=n)
        self._activity /= self._activity.sum()
        risk = segment_risk[self._segment] * self._activity
        self._risk = risk / risk.sum()
        self._favourites = rng.integers(c.n_merchants, size=(n, 3))
        base = np.full(len(c.channels), 1.0)
        base[: min(2, len(base))] = 4.5  # online and pos dominate, atm is rare
        self._channel_p = rng.dirichlet(base * 5.0, size=n)

    def events(self, n: int) -> list[dict[str, Any]]:
        """The next `n` TransactionEvent dicts, in event-time order unless shuffling is on."""
        c, rng = self.config, self._rng
        gaps = rng.exponential(1000.0 / c.events_per_second, size=n)
        times_f = self._clock_ms + np.cumsum(gaps)
        self._clock_ms = float(times_f[-1]) if n else self._clock_ms
        times = np.floor(times_f).astype(np.int64)
        drifted = np.zeros(n, dtype=bool) if c.drift_at_ms is None else times >= c.drift_at_ms
        entity = rng.choice(c.n_entities, size=n, p=self._activity)
        fraud = self._place_bursts(entity, n)

        # Legitimate behaviour first; fraud overwrites its own rows below.
        home = self._home[entity]
        travel_p = np.where(drifted & c.concept_shift, 0.25, 0.04)
        abroad = rng.random(n) < travel_p
        country = np.where(abroad, self._foreign(home), home)
        favourite = self._favourites[entity, rng.integers(3, size=n)]
        new_merchant = abroad | (rng.random(n) < 0.15)
        merchant = np.where(new_merchant, rng.integers(c.n_merchants, size=n), favourite)
        log_amount = self._log_amount[entity] + rng.normal(0.0, 0.6, size=n) + 0.7 * abroad
        channel = self._channels(entity, drifted, n)

        old_style = fraud & ~(drifted & c.concept_shift)
        new_style = fraud & drifted & c.concept_shift
        # Draws are always full-length so that switching drift on leaves earlier events as-is.
        log_amount += np.where(old_style, rng.normal(1.6, 0.4, size=n), 0.0)
        fraud_abroad = old_style & (rng.random(n) < 0.7)
        country = np.where(fraud_abroad, self._foreign(home), country)
        country = np.where(new_style, home, country)
        merchant = np.where(fraud, rng.integers(c.n_merchants, size=n), merchant)
        log_amount += np.where(new_style, rng.normal(-1.2, 0.3, size=n), 0.0)
        # The first channel is card-not-present ("online"), where stolen cards are used most.
        channel = np.where(fraud & (rng.random(n) < 0.75), 0, channel)
        if c.covariate_shift:
            log_amount = np.where(drifted, log_amount + np.log1p(c.covariate_shift), log_amount)
        amount = np.round(np.exp(log_amount), 2)

        low, high = c.label_delay_ms
        self._fraud = np.concatenate([self._fraud, fraud])
        delay = rng.integers(low, high + 1, size=n, dtype=np.int64)
        self._delay = np.concatenate([self._delay, delay])
        first = self._next_index
        self._next_index += n

        order = np.arange(n)
        if c.shuffle_within_ms > 0:
            # Sorting by time + jitter in [0, L) bounds lateness strictly below L.
            order = np.argsort(times + rng.integers(0, c.shuffle_within_ms, size=n), kind="stable")
        prefix = self._id_prefix
        return [
            {
                "event_id": f"{prefix}{i:09d}",
                "entity_id": e,
                "event_time": t,
                "amount": a,
                "merchant_id": m,
                "channel": ch,
                "country": co,
                "segment": s,
            }
            for i, e, t, a, m, ch, co, s in zip(
                (order + first).tolist(),
                self._entity_names[entity[order]].tolist(),
                times[order].tolist(),
                amount[order].tolist(),
                self._merchant_names[merchant[order]].tolist(),
                self._channel_names[channel[order]].tolist(),
                self._country_names[country[order]].tolist(),
                self._segment_names[self._segment[entity[order]]].tolist(),
                strict=True,
            )
        ]

    def _place_bursts(self, entity: np.ndarray, n: int) -> np.ndarray:
        """Mark fraud bursts (2-6 consecutive events of one card) and rewrite their entity."""
        rng = self._rng
        mean_len = 4.0
        n_bursts = rng.binomial(n, min(self.config.fraud_rate / mean_len, 1.0)) if n else 0
        starts = rng.integers(n, size=n_bursts) if n else np.zeros(0, dtype=np.int64)
        lengths = rng.integers(2, 7, size=n_bursts)
        victims = rng.choice(self.config.n_entities, size=n_bursts, p=self._risk)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = np.minimum(np.repeat(starts, lengths) + offsets, max(n - 1, 0))
        entity[rows] = np.repeat(victims, lengths)
        fraud = np.zeros(n, dtype=bool)
        fraud[rows] = True
        # A legit event that a burst overwrote now belongs to the victim: it is fraud too.
        return fraud

    def _foreign(self, home: np.ndarray) -> np.ndarray:
        k = len(self.config.countries)
        if k < 2:
            return home
        return (home + self._rng.integers(1, k, size=home.size)) % k

    def _channels(self, entity: np.ndarray, drifted: np.ndarray, n: int) -> np.ndarray:
        p = self._channel_p[entity]
        shift = self.config.covariate_shift
        if shift and drifted.any():
            moved = min(shift, 1.0) * (1.0 - p[:, 0])
            shifted = p * (1.0 - min(shift, 1.0))
            shifted[:, 0] = p[:, 0] + moved
            p = np.where(drifted[:, None], shifted, p)
        cumulative = np.cumsum(p, axis=1)
        draw = self._rng.random(n)[:, None] * cumulative[:, -1:]
        return np.minimum((draw >= cumulative).sum(axis=1), p.shape[1] - 1)

    def labels_for(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Label dicts for events this generator produced, in label_time order."""
        prefix = self._id_prefix
        cut = len(prefix)
        try:
            index = np.fromiter(
                (
                    int(e["event_id"][cut:]) if e["event_id"].startswith(prefix) else -1
                    for e in events
                ),
                dtype=np.int64,
                count=len(events),
            )
        except ValueError:
            index = np.full(len(events), -1, dtype=np.int64)  # a non-numeric id: find it below
        unknown = (index < 0) | (index >= self._fraud.size)
        if unknown.any():
            bad = events[int(np.argmax(unknown))]["event_id"]
            raise KeyError(f"event {bad!r} was not produced by this generator")
        event_time = np.fromiter((e["event_time"] for e in events), np.int64, len(events))
        label_time = event_time + self._delay[index]
        order = np.argsort(label_time, kind="stable")
        return [
            {
                "event_id": events[i]["event_id"],
                "entity_id": events[i]["entity_id"],
                "label": label,
                "label_time": at,
            }
            for i, label, at in zip(
                order.tolist(),
                self._fraud[index[order]].astype(np.int64).tolist(),
                label_time[order].tolist(),
                strict=True,
            )
        ]
