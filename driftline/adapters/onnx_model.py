"""ONNX scoring adapter: open a registered model with onnxruntime and score feature batches.

The one place that imports ``onnxruntime``: training's parity check and the scorer open their
sessions with :func:`load_session` (the core stays free of it). A
Driftline model takes one float32 ``[batch, n_features]`` tensor in the view's feature order,
NaN allowed (imputation is inside the graph), and yields the probability of class 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def load_session(model: Path | str | bytes, *,
                 threads: int | None = None) -> ort.InferenceSession:
    """An inference session on CPU for a model file (path) or the model itself (bytes).

    ``threads`` caps intra-op threads (None = onnxruntime's default, one per core).
    """
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    source = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def predict_scores(session: ort.InferenceSession, X: np.ndarray) -> np.ndarray:
    """P(class 1) for every row of ``X`` (n_rows x n_features), as float64 of length n_rows."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-d feature matrix, got shape {X.shape}")
    outputs = session.get_outputs()
    # skl2onnx classifiers (zipmap off) return (label, probabilities); prefer the latter.
    names = [o.name for o in outputs]
    target = "probabilities" if "probabilities" in names else names[-1]
    (scores,) = session.run([target], {session.get_inputs()[0].name: X})
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 2:
        return scores[:, 1]
    return scores.reshape(len(X))
