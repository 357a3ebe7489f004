"""Retraining's pure core: no I/O and no clock, one module per concern.

`gates` holds the promotion gates a candidate must pass before it may be registered: the
retraining command trains, exports and scores, then hands arrays to `run_gates` and acts on the
`GateReport` it returns. `dataset` turns a model's labelled outcomes into the job's training and
holdout rows (`build_retraining_data`).
"""

from driftline.core.retraining.dataset import RetrainingData, build_retraining_data
from driftline.core.retraining.gates import (
    GateConfig,
    GateReport,
    GateResult,
    evaluate_candidate,
    roc_auc,
    run_gates,
    validate_training_data,
)

__all__ = ["GateConfig", "GateReport", "GateResult", "RetrainingData", "build_retraining_data",
           "evaluate_candidate", "roc_auc", "run_gates", "validate_training_data"]
