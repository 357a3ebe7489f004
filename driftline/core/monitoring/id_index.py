"""Event ids as 128-bit fingerprints, and a vectorised open-addressing hash table over them.

The label join (`label_join.py`) keeps every event id it must remember (pending predictions,
early labels, joined ids until the horizon passes) in an :class:`IdIndex`: two independent
64-bit hashes per id (:func:`fingerprint`), looked up and inserted a whole batch at a time with
numpy, no Python loop per id. Two distinct ids collide with probability below 1e-21 for 1e9 ids;
the table is not built to resist ids crafted to collide.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- event-id fingerprints

_MUL = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))
_SALT = (np.uint64(0), np.uint64(0x5851F42D4C957F2D))


def _avalanche(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips about half the output bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def fingerprint(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each string in `ids` (vectorised, stable across runs).

    Each hash is a polynomial over 64-bit words (two code points each) evaluated from the last
    word back, so the zero padding of a wider fixed-width array adds nothing: the fingerprint
    of an id does not depend on the width of the array it came in. Not for adversarial input.
    """
    ids = np.ascontiguousarray(ids, dtype=str)
    n, width = len(ids), ids.dtype.itemsize // 4
    codes = ids.view(np.uint32).reshape(n, width)
    if width % 2:
        codes = np.pad(codes, ((0, 0), (0, 1)))
    words = np.ascontiguousarray(codes).view(np.uint64)
    out = []
    for mul, salt in zip(_MUL, _SALT, strict=True):
        h = np.zeros(n, dtype=np.uint64)
        for j in range(words.shape[1] - 1, -1, -1):
            h *= mul
            h += words[:, j]
        out.append(_avalanche(h ^ salt))
    out[1][(out[0] == 0) & (out[1] == 0)] = 1  # (0, 0) marks an empty `IdIndex` slot
    return out[0], out[1]


class IdIndex:
    """A fingerprint -> int64 map in one numpy array, vectorised over a batch of keys.

    Buckets of 8 slots, filled front to back, each bucket one block of three 64-byte rows
    (first hashes, second hashes, values) so a lookup reads one cache line for most keys. A key
    lives in the first bucket from its home bucket on that had room when it was inserted; a
    lookup moves on only while buckets are full, which is rare below the 0.6 maximum load.
    There is no delete: callers overwrite values and rebuild the index now and then.
    """

    WIDTH = 8

    def __init__(self, n_buckets: int = 64) -> None:
        self._allocate(n_buckets)

    def _allocate(self, n_buckets: int) -> None:
        self._slots = np.zeros((n_buckets, 3, self.WIDTH), dtype=np.uint64)
        self._fill = np.zeros(n_buckets, dtype=np.int64)
        self._mask = np.uint64(n_buckets - 1)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self._slots.nbytes + self._fill.nbytes

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first hashes, second hashes, values) of every entry, in slot order."""
        used = np.arange(self.WIDTH) < self._fill[:, None]
        slots = self._slots
        return slots[:, 0][used], slots[:, 1][used], slots[:, 2][used].view(np.int64)

    def get(self, h1: np.ndarray, h2: np.ndarray, default: int = -1) -> np.ndarray:
        bucket, col = self._locate(h1, h2)
        out = np.full(len(h1), default, dtype=np.int64)
        hit = col >= 0
        out[hit] = self._slots[bucket[hit], 2, col[hit]].view(np.int64)
        return out

    def put(self, h1: np.ndarray, h2: np.ndarray, value: np.ndarray) -> None:
        """Set ``self[h1, h2] = value``; the keys must be distinct within the call."""
        value = np.asarray(value, dtype=np.int64)
        n_buckets = len(self._fill)
        if self._n + len(h1) > 0.6 * self.WIDTH * n_buckets:
            old = self.items()
            while self._n + len(h1) > 0.3 * self.WIDTH * n_buckets:
                n_buckets *= 2
            self._allocate(n_buckets)
            self._insert_absent(*old)
        bucket, col = self._locate(h1, h2)
        hit = col >= 0
        self._slots[bucket[hit], 2, col[hit]] = value[hit].view(np.uint64)
        new = ~hit
        self._insert_absent(h1[new], h2[new], value[new])

    def _locate(self, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per key: the bucket where the search ended and the key's column there, or -1."""
        bucket = (h1 & self._mask).astype(np.int64)
        col = np.full(len(h1), -1, dtype=np.int64)
        todo = np.arange(len(h1))
        while todo.size:
            b = bucket[todo]
            # Match on the first hash (one row), confirm on the second; empty slots hold (0, 0),
            # which `fingerprint` never returns.
            same = self._slots[b, 0] == h1[todo, None]
            c = same.argmax(axis=1)
            first = same[np.arange(len(b)), c]
            hit = first.copy()
            hit[first] = self._slots[b[first], 1, c[first]] == h2[todo[first]]
            odd = np.flatnonzero(first & ~hit)
            if odd.size:  # a first hash matched but not the second: check every column
                both = same[odd] & (self._slots[b[odd], 1] == h2[todo[odd], None])
                c[odd], hit[odd] = both.argmax(axis=1), both.any(axis=1)
            col[todo[hit]] = c[hit]
            miss = np.flatnonzero(~hit)
            todo = todo[miss[self._fill[b[miss]] == self.WIDTH]]  # only full buckets overflow
            bucket[todo] = (bucket[todo] + 1) & int(self._mask)
        return bucket, col

    def _insert_absent(self, h1: np.ndarray, h2: np.ndarray, value: np.ndarray) -> None:
        bucket = (h1 & self._mask).astype(np.int64)
        todo = np.arange(len(h1))
        while todo.size:
            # Keys sharing a bucket take its free slots in order; the rest try the next bucket.
            todo = todo[np.argsort(bucket[todo], kind="stable")]
            b = bucket[todo]
            starts = np.flatnonzero(np.concatenate([[True], b[1:] != b[:-1]]))
            sizes = np.diff(np.append(starts, len(b)))
            col = self._fill[b] + np.arange(len(b)) - np.repeat(starts, sizes)
            fits = col < self.WIDTH
            placed, pb, pc = todo[fits], b[fits], col[fits]
            self._slots[pb, 0, pc] = h1[placed]
            self._slots[pb, 1, pc] = h2[placed]
            self._slots[pb, 2, pc] = value[placed].view(np.uint64)
            self._fill[b[starts]] = np.minimum(self._fill[b[starts]] + sizes, self.WIDTH)
            self._n += len(placed)
            todo = todo[~fits]
            bucket[todo] = (bucket[todo] + 1) & int(self._mask)


# ---------------------------------------------------------------- retained rows
