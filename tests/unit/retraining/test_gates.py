"""Promotion gates on a learnable synthetic problem: every gate can pass and can fail."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.retraining import GateConfig, GateReport, GateResult, roc_auc, run_gates
from driftline.core.retraining.gates import (
    AUC_VS_PRODUCTION,
    FEATURE_PSI,
    MODEL_GATES,
    NULL_SHARE,
    ONNX_PARITY,
    POSITIVE_SHARE,
    ROC_AUC,
    SCHEMA,
    VALIDATION_GATES,
    evaluate_candidate,
    validate_training_data,
)

NAMES = [f"x{j}" for j in range(12)]


@dataclass
class Split:
    X: np.ndarray
    y: np.ndarray
    channel: np.ndarray


def make_split(n: int, seed: int) -> Split:
    """Twelve features, three informative; the channel slice is independent of everything."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(NAMES)))
    logit = -1.0 + 1.5 * X[:, 0] - 1.0 * X[:, 1] + 0.5 * X[:, 2]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return Split(X, y, rng.choice(["web", "app"], size=n))


@pytest.fixture(scope="module")
def world():
    """Production trained on older data (its profile is the reference), a fresh training set
    and a holdout; the good candidate is the same model family on the fresh data."""
    old, train, holdout = make_split(5000, 1), make_split(5000, 2), make_split(4000, 3)
    production = LogisticRegression().fit(old.X, old.y)
    reference = ReferenceProfile.from_columns(
        {n: old.X[:, j] for j, n in enumerate(NAMES)}, label=old.y)
    candidate = LogisticRegression().fit(train.X, train.y)
    return {
        "train": train, "holdout": holdout, "reference": reference,
        "production_scores": production.predict_proba(holdout.X)[:, 1],
        "candidate_scores": candidate.predict_proba(holdout.X)[:, 1],
    }


def gates(world, *, X=None, y=None, scores=None, onnx=None, production="default",
          config=None) -> GateReport:
    """`run_gates` on the world, with any input replaced."""
    train, holdout = world["train"], world["holdout"]
    scores = world["candidate_scores"] if scores is None else scores
    # What onnxruntime returns: float32 probabilities of the same model.
    onnx = scores.astype(np.float32).astype(np.float64) if onnx is None else onnx
    return run_gates(
        train.X if X is None else X, train.y if y is None else y, NAMES,
        reference=world["reference"], y_holdout=holdout.y, candidate_scores=onnx,
        onnx_scores=onnx, trained_scores=scores,
        production_scores=world["production_scores"] if production == "default" else production,
        slices={"channel": holdout.channel}, config=config)


# -- ROC AUC ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * y, 1)  # few distinct values: many ties
    assert len(np.unique(scores)) < 20
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_weights_count_rows_and_replicates_are_vectorised():
    rng = np.random.default_rng(7)
    y, scores = rng.integers(0, 2, 200), np.round(rng.random(200), 2)
    counts = rng.integers(0, 4, size=(3, 200))
    batch = roc_auc(y, scores, counts)
    for row, auc in zip(counts, batch, strict=True):
        assert auc == pytest.approx(roc_auc_score(np.repeat(y, row), np.repeat(scores, row)))
    assert np.isnan(roc_auc(np.zeros(5, np.int64), np.arange(5.0)))


# -- the whole run ---------------------------------------------------------------------------

def test_a_good_candidate_passes_every_gate(world):
    report = gates(world)
    assert [r.name for r in report.results] == [*VALIDATION_GATES, *MODEL_GATES]
    assert report.passed, report.summary()
    assert report.failed is None
    assert report[ROC_AUC].value > 0.75
    assert json.loads(json.dumps(report.as_dict(), allow_nan=False))["passed"] is True


def shuffled_candidate(world, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels permuted, and the holdout scores of a model trained on them."""
    train, holdout = world["train"], world["holdout"]
    shuffled = np.random.default_rng(seed).permutation(train.y)
    model = LogisticRegression().fit(train.X, shuffled)
    return shuffled, model.predict_proba(holdout.X)[:, 1]


@pytest.mark.parametrize("seed", range(3))
def test_a_candidate_trained_on_shuffled_labels_is_rejected_with_its_number(world, seed):
    shuffled, scores = shuffled_candidate(world, seed)
    report = gates(world, y=shuffled, scores=scores)
    assert all(report[g].passed for g in VALIDATION_GATES)  # the data itself is fine
    assert not report.passed
    failed = report.failed
    assert failed.name == ROC_AUC
    assert failed.value < 0.65
    assert failed.summary().startswith(f"roc_auc {failed.value:.3f} < 0.70: FAIL")
    assert report[AUC_VS_PRODUCTION].passed is False
    assert report.as_dict()["failed"] == ROC_AUC


def test_every_shuffled_label_candidate_is_rejected_even_when_noise_ranks_well(world):
    """A model fit to noise points in a random direction; on strong features that direction
    can rank above the AUC floor by chance (two permutations in ten here). The comparison
    with Production on the same holdout still rejects every one of them."""
    verdicts = []
    for seed in range(10):
        _, scores = shuffled_candidate(world, seed)
        results = {r.name: r for r in evaluate_candidate(
            world["holdout"].y, scores, world["production_scores"], None, scores, scores,
            GateConfig(bootstrap_draws=200))}
        verdicts.append((results[ROC_AUC].passed, results[AUC_VS_PRODUCTION].passed))
    assert any(auc_ok for auc_ok, _ in verdicts)  # the floor alone is not enough...
    assert not any(vs_ok for _, vs_ok in verdicts)  # ...the comparison is


def test_a_candidate_clearly_worse_than_production_fails_the_comparison(world):
    noise = np.random.default_rng(1).normal(scale=0.3, size=len(world["holdout"].y))
    worse = np.clip(world["production_scores"] + noise, 0, 1)
    config = GateConfig(min_roc_auc=0.6)
    report = gates(world, scores=worse, config=config)
    result = report[AUC_VS_PRODUCTION]
    assert report[ROC_AUC].passed  # good enough alone, but worse than Production
    assert result.passed is False and result.value > 0.02
    assert report.failed is result
    assert "> 0.02: FAIL" in result.summary()


def test_a_tie_with_production_passes_even_when_the_point_drop_exceeds_the_margin(world):
    """The interval rule: on a small holdout a point drop above the margin is not evidence."""
    holdout = world["holdout"]
    rows = slice(0, 200)
    y = holdout.y[rows]
    production = world["production_scores"][rows]
    noise = np.random.default_rng(3).normal(scale=0.08, size=len(y))
    candidate = np.clip(production + noise, 0, 1)
    point = roc_auc(y, production) - roc_auc(y, candidate)
    assert point > 0.02  # a point-estimate rule would reject this candidate
    results = evaluate_candidate(y, candidate, production, None, candidate, candidate,
                                 GateConfig(min_roc_auc=0.5))
    comparison = next(r for r in results if r.name == AUC_VS_PRODUCTION)
    assert comparison.passed is True and comparison.value < 0.02
    # Production against itself: an exact tie.
    same = evaluate_candidate(y, production, production, None, production, production)
    assert next(r for r in same if r.name == AUC_VS_PRODUCTION).value == 0.0


# -- training data ---------------------------------------------------------------------------

def test_a_mostly_null_feature_fails_validation_naming_it_and_skips_the_model(world):
    X = world["train"].X.copy()
    X[np.random.default_rng(2).random(len(X)) < 0.9, 2] = np.nan
    report = gates(world, X=X)
    failed = report.failed
    assert failed.name == NULL_SHARE and failed.value == pytest.approx(0.9, abs=0.02)
    assert "x2" in failed.summary() and "> 0.50: FAIL" in failed.summary()
    assert [report[g].passed for g in MODEL_GATES] == [None] * len(MODEL_GATES)
    assert "SKIPPED" in report[ROC_AUC].summary()
    assert not report.passed


def test_all_zero_labels_fail_label_balance(world):
    results = validate_training_data(world["train"].X, np.zeros(5000, np.int64), NAMES,
                                     world["reference"])
    share = next(r for r in results if r.name == POSITIVE_SHARE)
    assert share.passed is False and share.value == 0.0
    assert share.summary().startswith("positive_share 0.000 < 0.002: FAIL")
    assert [r.name for r in results if r.passed is False] == [POSITIVE_SHARE]


def test_a_shifted_feature_fails_the_psi_gate_naming_it(world):
    X = world["train"].X.copy()
    ok = next(r for r in validate_training_data(X, world["train"].y, NAMES, world["reference"])
              if r.name == FEATURE_PSI)
    assert ok.passed and ok.value < 0.05
    X[:, 3] += 1.5
    report = gates(world, X=X)
    assert report.failed.name == FEATURE_PSI
    assert report.failed.value > 0.25 and "x3" in report.failed.detail


def test_a_wrong_column_count_fails_the_schema_and_skips_the_rest(world):
    results = validate_training_data(world["train"].X[:, :3], world["train"].y, NAMES, None)
    assert results[0].name == SCHEMA and results[0].passed is False
    assert results[0].summary().startswith("schema 3 != 12: FAIL")
    assert all(r.passed is None for r in results[1:])


def test_infinite_values_and_configured_ranges_fail_the_range_gate(world):
    X = world["train"].X.copy()
    X[5, 1] = np.inf
    config = GateConfig(feature_ranges={"x0": (-10.0, 10.0)})
    assert validate_training_data(world["train"].X, world["train"].y, NAMES, None,
                                  config)[2].passed
    X[:3, 0] = 11.0
    value_range = validate_training_data(X, world["train"].y, NAMES, None, config)[2]
    assert value_range.passed is False and value_range.value == 4
    assert "x0 (3)" in value_range.detail


# -- model gates -----------------------------------------------------------------------------

def test_an_onnx_mismatch_above_tolerance_fails_parity(world):
    scores = world["candidate_scores"]
    onnx = scores.copy()
    onnx[10] += 1e-3
    report = gates(world, onnx=onnx)
    parity = report[ONNX_PARITY]
    assert parity.passed is False and parity.value == pytest.approx(1e-3)
    assert report.failed is parity
    assert parity.summary().startswith("onnx_parity 1.00e-03 > 1.00e-05: FAIL")
    nan = scores.copy()
    nan[0] = np.nan
    assert gates(world, onnx=nan)[ONNX_PARITY].value == np.inf


def test_a_candidate_that_favours_one_channel_fails_demographic_parity(world):
    holdout = world["holdout"]
    biased = np.where(holdout.channel == "app", 0.95, world["candidate_scores"])
    report = gates(world, scores=biased, config=GateConfig(min_roc_auc=0.5,
                                                           max_auc_drop_vs_production=1.0))
    dp = report["demographic_parity_difference"]
    assert dp.passed is False and dp.value > 0.1
    assert "app" in dp.detail and report.failed is dp
    assert report["demographic_parity_difference"].threshold == 0.1
    assert gates(world)["demographic_parity_difference"].value < 0.1


def test_no_production_model_and_no_slices_pass_with_a_reason(world):
    holdout, scores = world["holdout"], world["candidate_scores"]
    results = {r.name: r for r in evaluate_candidate(holdout.y, scores, None, None, scores,
                                                     scores)}
    comparison = results[AUC_VS_PRODUCTION]
    assert comparison.passed and "no Production" in comparison.detail
    assert results["equal_opportunity_difference"].passed


def test_a_skipped_gate_fails_the_report():
    report = GateReport((GateResult("a", True, 1.0, 0.5, ""),
                         GateResult("b", None, float("nan"), 0.5, "not run")))
    assert not report.passed and report.failed.name == "b"
    assert GateReport(()).passed is False
