"""Verification / identification metrics against scikit-learn and brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from xsearch.evaluation.verification import (
    equal_error_rate,
    kfold_accuracy,
    rank1_identification,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_metrics,
)


def _random_pairs(seed: int, n: int = 600, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    scores = rng.normal(0.0, 1.0, n) + 1.2 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # many exact ties
    return scores, labels.astype(int)


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 1), (2, 0), (3, 2)])
def test_roc_curve_and_auc_equal_scikit_learn(seed, decimals):
    scores, labels = _random_pairs(seed, decimals=decimals)
    fpr, tpr, thresholds = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(skm.roc_auc_score(labels, scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_rules_on_the_scikit_learn_curve(seed):
    scores, labels = _random_pairs(seed, n=4000, decimals=3)
    fpr, tpr, _ = roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    for far in (1e-4, 1e-3, 1e-2, 0.1, 0.3):
        assert tar_at_far(fpr, tpr, far) == pytest.approx(sk_tpr[sk_fpr <= far].max())
        assert tar_at_far(fpr, tpr, far, rule="nearest") == pytest.approx(sk_tpr[np.argmin(np.abs(sk_fpr - far))])
    with pytest.raises(ValueError, match="rule"):
        tar_at_far(fpr, tpr, 1e-3, rule="closest")


def test_eer_on_a_hand_computed_curve_and_against_a_dense_sweep():
    # 2 positives (0.9, 0.4), 2 negatives (0.6, 0.1): ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    fpr, tpr, _ = roc_curve([0.9, 0.6, 0.4, 0.1], [1, 0, 1, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.5)  # FPR = FNR = 0.5 at the third point
    scores, labels = _random_pairs(5, n=2000)
    fpr, tpr, _ = roc_curve(scores, labels)
    eer = equal_error_rate(fpr, tpr)
    # the crossing lies between the last point with FPR < FNR and the next one
    fnr = 1 - tpr
    below = np.flatnonzero(fpr < fnr)[-1]
    assert fpr[below] <= eer <= fpr[below + 1] and fnr[below + 1] <= eer <= fnr[below]
    perfect_fpr, perfect_tpr, _ = roc_curve([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert equal_error_rate(perfect_fpr, perfect_tpr) == 0.0


def test_verification_metrics_keys_and_percentages():
    scores, labels = _random_pairs(7, n=1000)
    values = verification_metrics(scores, labels, fars=(1e-3, 1e-2))
    assert set(values) == {"AUC", "EER", "TAR@FAR=0.001", "TAR@FAR=0.01"}
    assert values["AUC"] == pytest.approx(100 * skm.roc_auc_score(labels, scores))
    assert 0 < values["EER"] < 50 and values["TAR@FAR=0.001"] <= values["TAR@FAR=0.01"]


def test_a_far_the_pairs_cannot_resolve_is_said_once(caplog):
    labels = np.array([1] * 40 + [0] * 880)
    scores = np.random.default_rng(0).normal(size=labels.size) + labels
    with caplog.at_level("WARNING", logger="xsearch.evaluation.verification"):
        first = verification_metrics(scores, labels, fars=(1e-4, 1e-3, 1e-2))
        verification_metrics(scores, labels, fars=(1e-4, 1e-3, 1e-2))  # a second epoch: not said again
    assert [r.getMessage() for r in caplog.records] == [
        "TAR@FAR=0.0001, TAR@FAR=0.001: 880 different-person pairs resolve FAR down to 1/880 = 1.1e-03 only; these "
        "TARs are the TPR at FAR = 0"]
    fpr, tpr, _ = roc_curve(scores, labels)
    assert first["TAR@FAR=0.001"] == first["TAR@FAR=0.0001"] == pytest.approx(100 * tpr[fpr == 0].max())
    assert first["TAR@FAR=0.01"] == pytest.approx(100 * tpr[fpr <= 1e-2].max())  # 8.8 negatives: resolved


def test_bad_pairs_are_named():
    with pytest.raises(ValueError, match="same length"):
        roc_curve([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="both same-person and different-person"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels must be 0"):
        roc_curve([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        roc_curve([0.1, float("nan")], [1, 0])


def _brute_force_kfold(scores, labels, folds=10):
    size = len(scores) // folds
    accuracies = []
    for fold in range(folds):
        test = np.zeros(len(scores), bool)
        test[fold * size:(fold + 1) * size] = True
        candidates = np.unique(scores[~test])
        train_acc = [((scores[~test] >= t) == labels[~test]).mean() for t in candidates]
        best = candidates[np.flatnonzero(np.isclose(train_acc, max(train_acc)))[0]]  # lowest best threshold
        accuracies.append(((scores[test] >= best) == labels[test]).mean())
    return 100 * np.mean(accuracies), 100 * np.std(accuracies)


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 1)])
def test_kfold_accuracy_matches_a_brute_force_threshold_sweep(seed, decimals):
    scores, labels = _random_pairs(seed, n=600, decimals=decimals)
    mean, std = kfold_accuracy(scores, labels)
    expected_mean, expected_std = _brute_force_kfold(scores, labels.astype(bool))
    assert mean == pytest.approx(expected_mean) and std == pytest.approx(expected_std)
    with pytest.raises(ValueError, match="equal folds"):
        kfold_accuracy(scores[:599], labels[:599])


def test_rank1_identification_by_brute_force_with_ties():
    similarity = torch.tensor([[0.9, 0.1, 0.9], [0.2, 0.8, 0.1], [0.5, 0.5, 0.4]])
    probes, gallery = torch.tensor([7, 8, 9]), torch.tensor([7, 8, 9])
    # row 0: tie between items 0 and 2 -> item 0 (id 7, correct); row 1 correct; row 2: tie -> item 0 (id 7, wrong)
    assert rank1_identification(similarity, probes, gallery) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="similarity must be"):
        rank1_identification(similarity[:, :2], probes, gallery)
