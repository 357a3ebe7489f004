"""String <-> int64 code dictionary, so the engine's hot path only ever sees integers.

Codes are private to one engine instance: snapshots store the strings themselves and a restore
re-codes them, so codes never leak into results or persisted state. `compact` drops words no
retained row uses, which keeps the dictionary bounded by the live state, not by history.
"""

from __future__ import annotations

import numpy as np


class Vocabulary:
    """Append-only (until compacted) mapping of strings to dense int64 codes."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._words: list[str] = []
        self._array: np.ndarray | None = None  # cached np.array(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Codes for ``values``; unseen strings get new codes (one dict lookup per value: a
        third of what sorting the strings with ``np.unique`` cost)."""
        words = np.asarray(values, dtype=str).tolist()
        index = self._index
        codes = [index.get(word, -1) for word in words]
        if -1 in codes:
            for i, word in enumerate(words):
                if codes[i] == -1:
                    code = index.get(word)
                    if code is None:
                        code = index[word] = len(self._words)
                        self._words.append(word)
                        self._array = None
                    codes[i] = code
        return np.array(codes, dtype=np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Fixed-width unicode array of the strings behind ``codes``."""
        if self._array is None:
            self._array = np.array(self._words, dtype=str) if self._words else np.zeros(0, "U1")
        if len(codes) == 0:
            return np.zeros(0, dtype=self._array.dtype if len(self._array) else "U1")
        return self._array[codes]

    def compact(self, live_codes: np.ndarray) -> np.ndarray:
        """Keep only ``live_codes``; returns old-code -> new-code (``-1`` for dropped words)."""
        live = np.unique(live_codes)
        remap = np.full(len(self._words), -1, dtype=np.int64)
        remap[live] = np.arange(len(live), dtype=np.int64)
        self._words = [self._words[c] for c in live.tolist()]
        self._index = {w: i for i, w in enumerate(self._words)}
        self._array = None
        return remap
