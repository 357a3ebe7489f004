"""A trainer entry point for tests: the default trainer, after a pause long enough to kill
the retrain controller while the job is surely inside it."""

from __future__ import annotations

import time

import numpy as np

from driftline.commands.training import fit_gradient_boosting

PAUSE_S = 6.0


def fit(X: np.ndarray, y: np.ndarray, seed: int):
    time.sleep(PAUSE_S)
    return fit_gradient_boosting(X, y, seed)
