"""Trainers for retraining jobs under test (``trainer: tests.integration.trainers:NAME``).

A trainer is called by the job process as ``function(X, y, seed)`` (see
``driftline.commands.retrain_job``); the job must be able to import this module, so the test
that names it puts the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline

from driftline.commands.training import build_model


def inverted(X: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    """The normal pipeline fit on ``1 - y``: confidently wrong, a deliberately worse model.

    Its score is the probability of *not* fraud, so nearly every legitimate transaction is
    declined. The data gates still see the true labels (they judge the data, not the model);
    only loosened model gates let it through to a canary, whose objectives must catch it."""
    return build_model(seed).fit(X, 1 - np.asarray(y, dtype=np.int64))
