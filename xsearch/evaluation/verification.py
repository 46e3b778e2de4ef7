"""Face verification and identification metrics (TGFR's protocol, LFW's 10-fold accuracy).

Verification scores are pair similarities (higher = more likely the same person) with labels 1 (same) / 0.

* :func:`roc_curve`: every distinct score is a threshold ("same" when ``score >= threshold``), as
  scikit-learn's ``roc_curve(..., drop_intermediate=False)``; the first point is (0, 0) at ``+inf``. With
  ``drop_intermediate=True`` it keeps the points scikit-learn's default keeps (the corners: a point goes when
  both its FP and TP count steps equal the next ones).
* :func:`roc_auc`: trapezoidal area under that curve (ties handled exactly, = ``roc_auc_score``).
* :func:`equal_error_rate`: where FPR = FNR (= 1 - TPR): ``rule="interpolate"`` linearly interpolates between
  the two ROC points around the crossing; ``rule="nearest"`` is TGFR's reading, the FPR of the ROC point with
  the smallest ``|FNR - FPR|`` (the last such point in curve order).
* :func:`tar_at_far`: TPR (TAR) at a target FPR (FAR). ``rule="at_most"``: the best TPR among points with
  FPR <= target (conservative, the usual definition); ``rule="nearest"``: TGFR's reading, the TPR of the point
  whose FPR is closest to the target, the last such point in curve order (= the highest TPR at that FPR); it
  can be a point above the target FAR.
* :func:`verification_metrics`: AUC, EER and TARs; with ``rule="nearest"`` (TGFR's protocol) EER and TARs are
  read on the curve of scikit-learn's default ``roc_curve`` (intermediate points dropped), as TGFR's code does,
  so they equal its ``calculate_scores`` (``roc_curve``, reversed, first ``argmin``).
* :func:`kfold_accuracy`: LFW's protocol: contiguous folds; per fold, the threshold maximising accuracy on
  the other folds, accuracy on the held-out fold; mean and std over folds.
* :func:`rank1_identification`: share of probes whose most similar gallery item has their identity.

:class:`FaceVerification` is the protocol: both, on every face embedding a method returns for the split's face samples.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from xsearch.evaluation.protocol import EvaluationProtocol, single_process
from xsearch.headlines import HEADLINES
from xsearch.registry import PROTOCOLS

log = logging.getLogger(__name__)
_warned: set[tuple[str, int, tuple[float, ...]]] = set()

__all__ = [
    "FaceVerification", "equal_error_rate", "face_protocol_metrics", "face_table", "kfold_accuracy", "rank1_identification", "roc_auc", "roc_curve", "tar_at_far",
    "verification_metrics",
]

DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)


def _pairs(scores: Sequence[float] | np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same length, got {scores.size} and {labels.size}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (different people) or 1 (same person)")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError(f"need both same-person and different-person pairs, got {int(labels.sum())} of {labels.size} same")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, labels


def _corners(false_positives: np.ndarray, true_positives: np.ndarray) -> np.ndarray:
    """Indexes ``(K,)`` of the ``(T,)`` cumulative counts that scikit-learn's ``drop_intermediate`` keeps: the first,
    the last, and every point whose FP or TP step differs from the next one (exact on integer counts)."""
    if false_positives.size <= 2:
        return np.arange(false_positives.size)
    bends = (np.diff(false_positives, 2) != 0) | (np.diff(true_positives, 2) != 0)
    return np.flatnonzero(np.r_[True, bends, True])


def roc_curve(scores, labels, drop_intermediate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, each ``(T + 1,)``: one point per distinct score (descending) after (0, 0);
    ``drop_intermediate`` keeps only scikit-learn's default points (collinear ones with equal steps dropped)."""
    scores, labels = _pairs(scores, labels)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # last index of each distinct score
    true_positives = np.cumsum(labels)[last_of_run]
    false_positives = (last_of_run + 1) - true_positives
    if drop_intermediate:
        kept = _corners(false_positives, true_positives)
        last_of_run, true_positives, false_positives = last_of_run[kept], true_positives[kept], false_positives[kept]
    fpr = np.r_[0.0, false_positives / (~labels).sum()]
    tpr = np.r_[0.0, true_positives / labels.sum()]
    return fpr, tpr, np.r_[np.inf, scores[last_of_run]]


def _last_argmin(values: np.ndarray) -> int:
    """Index of the last minimum of a ``(T,)`` array (TGFR reverses the curve, then takes the first)."""
    return int(values.size - 1 - np.argmin(values[::-1]))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (trapezoids, so tied scores count one half)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray, rule: Literal["interpolate", "nearest"] = "interpolate") -> float:
    """The rate where FPR equals FNR = 1 - TPR on a ``(T,)`` curve: interpolated on the segment where ``FPR - FNR``
    changes sign (``interpolate``), or the FPR of the last point with the smallest ``|FNR - FPR|`` (``nearest``,
    TGFR's reading)."""
    if rule == "nearest":
        return float(fpr[_last_argmin(np.abs((1.0 - tpr) - fpr))])
    if rule != "interpolate":
        raise ValueError(f"rule must be 'interpolate' or 'nearest', got {rule!r}")
    difference = fpr - (1.0 - tpr)  # increasing along the curve, from -1 at (0, 0) to +1 at (1, 1)
    after = int(np.argmax(difference >= 0))
    if after == 0 or difference[after] == 0:
        return float(fpr[after])
    before = after - 1
    weight = -difference[before] / (difference[after] - difference[before])
    return float(fpr[before] + weight * (fpr[after] - fpr[before]))


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float, rule: Literal["at_most", "nearest"] = "at_most") -> float:
    """TPR at a target FPR on a ``(T,)`` curve: the best with FPR <= ``far`` (``at_most``), or that of the last point
    (the highest TPR) at the FPR closest to ``far`` (``nearest``, TGFR's reading)."""
    if rule == "at_most":
        return float(tpr[fpr <= far].max())
    if rule == "nearest":
        return float(tpr[_last_argmin(np.abs(fpr - far))])
    raise ValueError(f"rule must be 'at_most' or 'nearest', got {rule!r}")


_READINGS: dict[str, tuple[bool, Literal["interpolate", "nearest"]]] = {
    "at_most": (False, "interpolate"),  # the full curve, EER interpolated
    "nearest": (True, "nearest"),  # TGFR: scikit-learn's default curve, EER at the nearest point
}
"""Per TAR rule: whether the curve drops scikit-learn's intermediate points, and the EER rule."""


def verification_metrics(scores, labels, fars: Sequence[float] = DEFAULT_FARS,
                         rule: Literal["at_most", "nearest"] = "at_most") -> dict[str, float]:
    """``{"AUC", "EER", "TAR@FAR=1e-06", ...}`` in percent from ``(P,)`` pair scores and 0/1 labels.

    ``at_most``: EER interpolated, TARs the best TPR with FPR <= the target, on the full curve. ``nearest``
    (TGFR's protocol): EER and TARs read at the nearest point of scikit-learn's default curve, as TGFR's code.
    A target FAR below 1 / (number of different-person pairs) cannot be resolved; said once in a warning."""
    if rule not in _READINGS:
        raise ValueError(f"rule must be 'at_most' or 'nearest', got {rule!r}")
    negatives = int(np.sum(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels) == 0))
    unresolved = tuple(far for far in fars if far * negatives < 1)
    if unresolved and (rule, negatives, unresolved) not in _warned:
        _warned.add((rule, negatives, unresolved))
        log.warning("%s: %d different-person pairs resolve FAR down to 1/%d = %.1e only; these TARs are %s",
                    ", ".join(f"TAR@FAR={far:g}" for far in unresolved), negatives, negatives, 1 / max(negatives, 1),
                    "the TPR at FAR = 0" if rule == "at_most"
                    else "read at the ROC point nearest the target (at FAR = 0, or above the target)")
    drop_intermediate, eer_rule = _READINGS[rule]
    fpr, tpr, _ = roc_curve(scores, labels)
    metrics = {"AUC": 100.0 * float(np.trapezoid(tpr, fpr))}
    if drop_intermediate:
        fpr, tpr, _ = roc_curve(scores, labels, drop_intermediate=True)
    metrics["EER"] = 100.0 * equal_error_rate(fpr, tpr, eer_rule)
    metrics.update({f"TAR@FAR={far:g}": 100.0 * tar_at_far(fpr, tpr, far, rule) for far in fars})
    return metrics


def _best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold (``same`` when ``score >= t``) with the highest accuracy; the lowest such one on ties."""
    fpr, tpr, thresholds = roc_curve(scores, labels)
    positives, negatives = labels.sum(), (~labels).sum()
    accuracy = (tpr * positives + (1.0 - fpr) * negatives) / labels.size
    return float(thresholds[int(np.flatnonzero(accuracy == accuracy.max())[-1])])


def kfold_accuracy(scores, labels, folds: int | Sequence[int] | np.ndarray = 10) -> tuple[float, float]:
    """LFW 10-fold accuracy in percent: ``(mean, std)`` over folds (``np.std``, ddof 0, as the LFW evaluation
    code of facenet / insightface); each fold's threshold is chosen on the other folds.

    ``folds``: a number of contiguous equal folds (LFW's layout), or one fold id per pair.
    """
    scores, labels = _pairs(scores, labels)
    if isinstance(folds, (int, np.integer)):
        if scores.size % folds:
            raise ValueError(f"{scores.size} pairs do not split into {folds} equal folds")
        fold_ids = np.arange(scores.size) // (scores.size // folds)
    else:
        fold_ids = np.asarray(folds).reshape(-1)
        if fold_ids.shape != scores.shape:
            raise ValueError(f"need one fold id per pair: {fold_ids.size} ids for {scores.size} pairs")
    if len(np.unique(fold_ids)) < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accuracies = []
    for fold in np.unique(fold_ids):
        test = fold_ids == fold
        threshold = _best_threshold(scores[~test], labels[~test])
        accuracies.append(float(((scores[test] >= threshold) == labels[test]).mean()))
    return 100.0 * float(np.mean(accuracies)), 100.0 * float(np.std(accuracies))


def rank1_identification(similarity: torch.Tensor, probe_ids: torch.Tensor, gallery_ids: torch.Tensor) -> float:
    """Percent of probes (rows of ``(P, G)`` scores) whose top gallery item has their identity (ties: lower index)."""
    similarity = torch.as_tensor(similarity)
    if similarity.ndim != 2 or similarity.shape != (len(probe_ids), len(gallery_ids)):
        raise ValueError(f"similarity must be (P, G) = ({len(probe_ids)}, {len(gallery_ids)}), got {tuple(similarity.shape)}")
    top = similarity.argmax(dim=1)  # first maximum = lower gallery index
    return 100.0 * float((torch.as_tensor(gallery_ids)[top] == torch.as_tensor(probe_ids)).double().mean())


def face_protocol_metrics(embeddings: torch.Tensor, pids: torch.Tensor, first: np.ndarray, second: np.ndarray,
                          same: np.ndarray, fold: np.ndarray, probes: np.ndarray, gallery: np.ndarray,
                          fars: Sequence[float] = DEFAULT_FARS, rule: Literal["at_most", "nearest"] = "at_most") -> dict[str, float]:
    """Verification (:func:`verification_metrics`, plus ``Acc`` / ``Acc_std``: k-fold accuracy when the pairs have
    two folds or more) and ``Rank1`` identification (probes vs gallery) of ``(N, D)`` face embeddings compared by
    cosine; ``first`` / ``second`` / ``probes`` / ``gallery`` are row positions, ``pids`` ``(N,)`` identities."""
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    scores = (unit[torch.as_tensor(first)] * unit[torch.as_tensor(second)]).sum(1).numpy()
    metrics = verification_metrics(scores, same.astype(int), fars, rule)
    if len(np.unique(fold)) >= 2:
        metrics["Acc"], metrics["Acc_std"] = kfold_accuracy(scores, same.astype(int), fold)
    if len(probes) and len(gallery):
        probe_rows, gallery_rows = torch.as_tensor(probes), torch.as_tensor(gallery)
        similarity = unit[probe_rows] @ unit[gallery_rows].T
        metrics["Rank1"] = rank1_identification(similarity, pids[probe_rows], pids[gallery_rows])
    return metrics


@PROTOCOLS.register("face_verification")
class FaceVerification(EvaluationProtocol):
    """Verification pairs and rank-1 identification (:func:`face_protocol_metrics`) of each named embedding the
    method returns for the face samples (role ``faces``: ``{"fused": (B, D), "image_only": (B, D)}``...), compared by
    cosine: ``<name>/AUC``, ``<name>/TAR@FAR=0.0001``, ``<name>/Rank1``... Evaluated in one process.

    Args:
        faces: the face sample set (items carry their ``position``; ``faces.images[i].pid``).
        pairs: the split's pairs, folds, probes and gallery (``first``, ``second``, ``same``, ``fold``, ``probes``,
            ``gallery`` as positions, ``tar_rule``).
    """

    headline = HEADLINES["face_verification"]

    def __init__(self, faces: Any, pairs: Any) -> None:
        super().__init__({"faces": faces})
        self.pairs = pairs
        self._embeddings: dict[str, list[torch.Tensor]] = {}
        self._positions: list[torch.Tensor] = []

    def update(self, role: str, embeddings: Any, batch: dict[str, Any]) -> None:
        for name, values in embeddings.items():
            self._embeddings.setdefault(name, []).append(values.detach().float().cpu())
        self._positions.append(torch.as_tensor(batch["position"]).cpu())

    def compute(self) -> dict[str, float]:
        if not self._positions:
            return {}
        single_process("the face verification protocol")
        order = torch.argsort(torch.cat(self._positions))
        pids = torch.as_tensor([r.pid for r in self.inputs["faces"].images])
        pairs, metrics = self.pairs, {}
        for name, chunks in self._embeddings.items():
            values = face_protocol_metrics(torch.cat(chunks)[order], pids, pairs.first, pairs.second, pairs.same,
                                           pairs.fold, pairs.probes, pairs.gallery, rule=pairs.tar_rule)
            metrics.update({f"{name}/{k}": v for k, v in values.items()})
        return metrics

    def report(self, metrics: dict[str, float]) -> str | None:
        results: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            name, metric = key.split("/", 1)
            results.setdefault(name, {})[metric] = value
        return face_table(results) if results else None

    def reset(self) -> None:
        super().reset()
        self._embeddings, self._positions = {}, []


def face_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of face protocol metrics, one row per embedding (side by side: fused vs image only)."""
    columns = [c for c in ("AUC", "EER", "TAR@FAR=1e-06", "TAR@FAR=1e-05", "TAR@FAR=0.0001", "TAR@FAR=0.001", "Acc", "Rank1")
               if any(c in m for m in results.values())]
    lines = ["| embedding | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.2f}" if c in metrics else "-" for c in columns) + " |")
    return "\n[xsearch] face verification (pairs) and rank-1 identification (test):\n" + "\n".join(lines) + "\n"
