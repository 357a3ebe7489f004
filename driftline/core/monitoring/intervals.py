"""Confidence intervals for proportions, vectorised: what every "no alarm on a point estimate
alone" rule in Driftline stands on (fairness gaps, label drift, canary rollbacks, gates).

All broadcast over numpy arrays and take ``z``, the normal quantile of the wanted confidence.
"""

from __future__ import annotations

import numpy as np


def wilson_interval(successes: np.ndarray, trials: np.ndarray,
                    z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (Wilson 1927); NaN where there are no trials."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        scale = 1 + z * z / n
        center = (p + z * z / (2 * n)) / scale
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return np.clip(center - half, 0, 1), np.clip(center + half, 0, 1)


def newcombe_interval(k1: np.ndarray, n1: np.ndarray, k2: np.ndarray, n2: np.ndarray,
                      z: float) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval of p1 - p2 (Newcombe 1998, method 10), broadcasting."""
    p1, p2 = np.asarray(k1) / np.asarray(n1), np.asarray(k2) / np.asarray(n2)
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    return (d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def katz_log_interval(k1: np.ndarray, n1: np.ndarray, k2: np.ndarray, n2: np.ndarray,
                      z: float) -> tuple[np.ndarray, np.ndarray]:
    """Katz's log interval of p1 / p2 (Katz et al. 1978), broadcasting. A zero count gets
    0.5 added to it and to its trials (Haldane's correction) so the bounds stay finite."""
    lp1, v1 = _log_rate(k1, n1)
    lp2, v2 = _log_rate(k2, n2)
    spread = z * np.sqrt(v1 + v2)
    return np.exp(lp1 - lp2 - spread), np.exp(lp1 - lp2 + spread)


def _log_rate(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    zero = k == 0
    k, n = k + 0.5 * zero, n + 0.5 * zero
    return np.log(k / n), 1 / k - 1 / n
