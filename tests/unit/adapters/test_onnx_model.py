"""`load_session` opens the same model from a path or from its bytes, with a thread cap."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from driftline.adapters.onnx_model import load_session, predict_scores


def _identity_model() -> bytes:
    """A graph that returns its [batch, 2] input as 'probabilities': P(class 1) = column 1."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["features"], ["probabilities"])],
                              "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_path_and_the_bytes_give_the_same_scores(tmp_path):
    data = _identity_model()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    X = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, 0.5]])
    expected = np.array([0.1, 0.8, 0.5])
    for source in (path, str(path), data, bytearray(data)):
        session = load_session(source, threads=1)
        np.testing.assert_allclose(predict_scores(session, X), expected, rtol=1e-6)


def test_the_thread_cap_reaches_the_session():
    session = load_session(_identity_model(), threads=1)
    assert session.get_session_options().intra_op_num_threads == 1
