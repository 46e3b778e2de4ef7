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


def _tgfr_reading(scores, labels, fars):
    """TGFR's ``calculate_scores`` / ``get_tpr`` written out: scikit-learn's default ``roc_curve``, reversed
    (``np.flipud``), EER = the FPR at ``nanargmin |(1 - tpr) - fpr|``, TAR = the TPR of the first point (in the
    reversed order) at ``min(zip(|fpr - far|, index))``."""
    fprs, tprs, _ = skm.roc_curve(labels, scores)
    fprs, tprs = np.flipud(fprs), np.flipud(tprs)
    eer = fprs[np.nanargmin(np.absolute((1 - tprs) - fprs))]
    tars = [tprs[min(zip(abs(fprs - far), range(len(fprs))))[1]] for far in fars]
    return eer, tars


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 1), (2, 0), (3, 2)])
def test_roc_curve_and_auc_equal_scikit_learn(seed, decimals):
    scores, labels = _random_pairs(seed, decimals=decimals)
    fpr, tpr, thresholds = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    for ours, theirs in zip(roc_curve(scores, labels, drop_intermediate=True), skm.roc_curve(labels, scores)):
        np.testing.assert_array_equal(ours, theirs)  # scikit-learn's default: the same points, bit for bit
    assert roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(skm.roc_auc_score(labels, scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_rules_on_the_scikit_learn_curve(seed):
    scores, labels = _random_pairs(seed, n=4000, decimals=3)
    fpr, tpr, _ = roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    for far in (1e-4, 1e-3, 1e-2, 0.1, 0.3):
        assert tar_at_far(fpr, tpr, far) == pytest.approx(sk_tpr[sk_fpr <= far].max())
        last_nearest = len(sk_fpr) - 1 - np.argmin(np.abs(sk_fpr - far)[::-1])  # the highest TPR at the nearest FPR
        assert tar_at_far(fpr, tpr, far, rule="nearest") == pytest.approx(sk_tpr[last_nearest])
    with pytest.raises(ValueError, match="rule"):
        tar_at_far(fpr, tpr, 1e-3, rule="closest")


@pytest.mark.parametrize("seed, n, decimals", [(0, 600, 1), (1, 600, 2), (2, 300, 0), (3, 2000, 3), (4, 900, None)])
def test_nearest_rule_equals_tgfr_code_with_ties_and_fars_below_one_negative(seed, n, decimals):
    scores, labels = _random_pairs(seed, n=n, decimals=decimals)
    negatives = int((labels == 0).sum())
    fars = (1e-6, 1e-5, 1e-4, 0.4 / negatives, 0.5 / negatives, 1 / negatives, 1e-3, 5e-3, 1e-2, 0.1, 0.3)
    eer, tars = _tgfr_reading(scores, labels, fars)
    values = verification_metrics(scores, labels, fars=fars, rule="nearest")
    for far, tar in zip(fars, tars):
        assert values[f"TAR@FAR={far:g}"] == pytest.approx(100 * tar, abs=1e-12), far
    assert values["EER"] == pytest.approx(100 * eer, abs=1e-12)
    assert values["AUC"] == pytest.approx(100 * skm.roc_auc_score(labels, scores))
    # below 1 / (2 #negatives) the nearest point is at FAR 0, and TGFR reads its highest TPR there, not (0, 0)
    fpr, tpr, _ = roc_curve(scores, labels)
    assert values["TAR@FAR=1e-06"] == pytest.approx(100 * tpr[fpr == 0].max())


def test_nearest_rule_reads_scikit_learns_default_curve():
    # 10 tied pairs (one same, one different person) at 10 scores: every point lies on the diagonal, and
    # scikit-learn's default curve keeps (0, 0), (0.1, 0.1) and (1, 1) only
    scores, labels = np.repeat(np.arange(10.0, 0.0, -1.0), 2), np.tile([1, 0], 10)
    eer, tars = _tgfr_reading(scores, labels, (0.3, 0.6))
    values = verification_metrics(scores, labels, fars=(0.3, 0.6), rule="nearest")
    assert tars == [pytest.approx(0.1), pytest.approx(1.0)]
    assert values["TAR@FAR=0.3"] == pytest.approx(10.0) and values["TAR@FAR=0.6"] == pytest.approx(100.0)
    assert values["EER"] == pytest.approx(100 * eer) == pytest.approx(10.0)  # |FNR - FPR|: 0.8 at (0.1, 0.1), 1 elsewhere
    assert verification_metrics(scores, labels, fars=(0.3,))["TAR@FAR=0.3"] == pytest.approx(30.0)  # at_most: full curve
    with pytest.raises(ValueError, match="rule must be"):
        verification_metrics(scores, labels, rule="closest")


def test_eer_by_the_nearest_point_on_a_hand_computed_curve():
    # ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): |FNR - FPR| = 1, .5, 0, .5, 1 -> the third point, FPR 0.5
    fpr, tpr, _ = roc_curve([0.9, 0.6, 0.4, 0.1], [1, 0, 1, 0])
    assert equal_error_rate(fpr, tpr, rule="nearest") == pytest.approx(0.5)
    # ROC (0,0) (0,.5) (1/3,.5) (2/3,.5) (2/3,1) (1,1): |FNR - FPR| = 1, .5, 1/6, 1/6, 2/3, 1: a tie, read at the
    # last point (as TGFR's code on the reversed curve): FPR 2/3; interpolated between the tied points: 0.5
    fpr, tpr, _ = roc_curve([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 0, 1, 0])
    assert equal_error_rate(fpr, tpr, rule="nearest") == pytest.approx(2 / 3)
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.5)
    assert 100 * _tgfr_reading([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 0, 1, 0], ())[0] == pytest.approx(
        verification_metrics([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 0, 1, 0], (), rule="nearest")["EER"]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="rule must be"):
        equal_error_rate(fpr, tpr, rule="closest")


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
    with caplog.at_level("WARNING", logger="xsearch.evaluation.verification"):
        caplog.clear()
        verification_metrics(scores, labels, fars=(1e-4, 1e-3, 1e-2), rule="nearest")  # another reading: said too
    assert [r.getMessage() for r in caplog.records] == [
        "TAR@FAR=0.0001, TAR@FAR=0.001: 880 different-person pairs resolve FAR down to 1/880 = 1.1e-03 only; these "
        "TARs are read at the ROC point nearest the target (at FAR = 0, or above the target)"]
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
