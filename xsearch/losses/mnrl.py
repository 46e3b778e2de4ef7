"""Multiple-negatives ranking loss (MNRL) and X-Modal's difficulty-aware ("improvised") MNRL.

:func:`multiple_negatives_ranking_loss` equals sentence-transformers' ``MultipleNegativesRankingLoss`` (cosine
similarity, ``directions=("query_to_doc",)``, or ``("query_to_doc", "doc_to_query")`` with
``partition_mode="per_direction"`` when ``symmetric``; its ``hardness_mode`` / ``hardness_strength`` included)
when no identities are given. With identities, candidates sharing the anchor's identity are masked out of the
softmax or counted as extra positives (``same_identity``).

:func:`difficulty_aware_mnrl` sorts each query into easy / semi-hard / hard by comparing its positive cosine with
its hardest *true* (other-identity) negative, and reweights the query's whole CE term by its level's weight.

How this differs from ST 6's hardness weighting: ST's ``hardness_mode`` adds ``alpha * stop_grad(cos)`` to the
logits of individual negatives inside the softmax (continuous, per negative). X-Modal's levels multiply each
query's whole CE term by the weight of a discrete difficulty class (per query), and the "hardest negative" that
decides the class ignores same-identity candidates. The two compose: :func:`difficulty_aware_mnrl` accepts
``hardness_mode`` too, and the level weights then scale the penalised per-query terms.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EASY",
    "HARD",
    "LEVEL_NAMES",
    "SEMI_HARD",
    "DifficultyAwareLoss",
    "DifficultyAwareMNRL",
    "difficulty_aware_mnrl",
    "difficulty_levels",
    "multiple_negatives_ranking_loss",
]

EASY, SEMI_HARD, HARD = 0, 1, 2
LEVEL_NAMES = ("easy", "semi_hard", "hard")
"""Name of each difficulty level, indexed by the level value."""

SameIdentity = Literal["mask", "positive", "none"]
HardnessMode = Literal["in_batch_negatives", "hard_negatives", "all_negatives"]
_SAME_IDENTITY_VALUES = ("mask", "positive", "none")
_HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")


class DifficultyAwareLoss(NamedTuple):
    """Output of :func:`difficulty_aware_mnrl`."""

    loss: Tensor
    """Scalar ``(1/B) sum_i w[level_i] * CE_i``."""
    levels: Tensor
    """(B,) int64 difficulty level per anchor (:data:`EASY`, :data:`SEMI_HARD`, :data:`HARD`); no gradient."""
    per_anchor: Tensor
    """(B,) unweighted per-anchor term ``CE_i``."""


# ---------------------------------------------------------------------------------------------------- validation


def _check_options(
    scale: float,
    same_identity: str,
    hardness_mode: str | None,
    hardness_strength: float,
) -> None:
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if same_identity not in _SAME_IDENTITY_VALUES:
        raise ValueError(f"same_identity must be one of {_SAME_IDENTITY_VALUES}, got {same_identity!r}")
    if hardness_mode is not None and hardness_mode not in _HARDNESS_MODES:
        raise ValueError(f"hardness_mode must be None or one of {_HARDNESS_MODES}, got {hardness_mode!r}")
    if not hardness_strength >= 0:
        raise ValueError(f"hardness_strength must be >= 0, got {hardness_strength}")


def _check_margin(margin: float) -> None:
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")


def _check_level_weights(level_weights: tuple[float, float, float]) -> None:
    try:
        weights = [float(w) for w in level_weights]
    except (TypeError, ValueError):
        raise ValueError(
            f"level_weights must be 3 non-negative numbers (easy, semi_hard, hard), got {level_weights!r}"
        ) from None
    if len(weights) != 3 or not all(w >= 0 for w in weights):
        raise ValueError(
            f"level_weights must be 3 non-negative numbers (easy, semi_hard, hard), got {level_weights!r}"
        )


def _check_inputs(
    anchors: Tensor,
    candidates: Tensor,
    anchor_pids: Tensor | None,
    candidate_pids: Tensor | None,
    relevant: Tensor | None = None,
) -> None:
    if anchors.dim() != 2 or anchors.shape[0] == 0:
        raise ValueError(f"anchors must have shape (B, D) with B >= 1, got {tuple(anchors.shape)}")
    batch, dim = anchors.shape
    if candidates.dim() != 2 or candidates.shape[0] < batch or candidates.shape[1] != dim:
        raise ValueError(
            f"candidates must have shape (N, D) with N >= B = {batch} and D = {dim} (rows < B are the anchors' "
            f"positives), got {tuple(candidates.shape)}"
        )
    if (anchor_pids is None) != (candidate_pids is None):
        raise ValueError("anchor_pids and candidate_pids must be given together (or both None)")
    if anchor_pids is not None and candidate_pids is not None:
        if anchor_pids.shape != (batch,):
            raise ValueError(f"anchor_pids must have shape (B,) = ({batch},), got {tuple(anchor_pids.shape)}")
        if candidate_pids.shape != (candidates.shape[0],):
            raise ValueError(
                f"candidate_pids must have shape (N,) = ({candidates.shape[0]},), got {tuple(candidate_pids.shape)}"
            )
    if relevant is not None and (relevant.dtype != torch.bool or relevant.shape != (batch, candidates.shape[0])):
        raise ValueError(
            f"relevant must be a bool tensor of shape (B, N) = ({batch}, {candidates.shape[0]}), got "
            f"{relevant.dtype} {tuple(relevant.shape)}"
        )


# ---------------------------------------------------------------------------------------------------- core math


def _direction_terms(logits: Tensor, positive: Tensor, excluded: Tensor | None) -> Tensor:
    """Per-row cross-entropy with a uniform target over each row's positives.

    Args:
        logits: (R, C) scaled (and possibly penalised) logits.
        positive: (R, C) bool, at least one True per row; the target is uniform over a row's positives.
        excluded: (R, C) bool or None; excluded logits leave the softmax denominator (set to -inf).

    Returns:
        (R,) ``logsumexp_j logits_rj - mean_{j in P_r} logits_rj``.
    """
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    positive_logit = torch.where(positive, logits, torch.zeros_like(logits)).sum(dim=1)
    positive_logit = positive_logit / positive.sum(dim=1).to(logits.dtype)
    return torch.logsumexp(logits, dim=1) - positive_logit


def _hardness_selection(batch: int, num_candidates: int, hardness_mode: str, device: torch.device) -> Tensor:
    """(B, N) bool: the candidates whose logits ST's ``hardness_mode`` penalises (before identity exclusions).

    Candidates are ``[positives; negatives_1; ...; negatives_n; tail]``: a row j in a complete block of B rows
    belongs to anchor ``j mod B``; the rows of an incomplete last block (``N mod B`` of them) belong to no anchor
    (shared negatives).
    """
    columns = torch.arange(num_candidates, device=device).view(1, -1)
    rows = torch.arange(batch, device=device).view(-1, 1)
    blocked = columns < batch * (num_candidates // batch)
    own = ((columns % batch) == rows) & blocked  # own positive + own explicit negatives
    if hardness_mode == "in_batch_negatives":
        return ~own
    if hardness_mode == "hard_negatives":
        return own & (columns >= batch)
    return columns != rows  # all_negatives: everything but the own positive


def _per_anchor_terms(
    anchors: Tensor,
    candidates: Tensor,
    scale: float,
    anchor_pids: Tensor | None,
    candidate_pids: Tensor | None,
    same_identity: str,
    hardness_mode: str | None,
    hardness_strength: float,
    symmetric: bool,
    relevant: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Shared body of both public losses (inputs already validated). ``relevant`` replaces the pid comparison.

    Returns:
        ``(terms, cos)``: (B,) per-anchor loss terms (the mean of both directions' terms when ``symmetric``) and
        the (B, N) anchor -> candidate cosine similarities.
    """
    batch, num_candidates = anchors.shape[0], candidates.shape[0]
    cos = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).t()  # (B, N)
    device = cos.device
    eye = torch.eye(batch, num_candidates, dtype=torch.bool, device=device)

    same: Tensor | None = None  # (B, N) same identity, when the pids are used
    if same_identity != "none" and relevant is not None:
        same = relevant
    elif same_identity != "none" and anchor_pids is not None and candidate_pids is not None:
        same = anchor_pids.view(-1, 1) == candidate_pids.view(1, -1)
    if same is None:
        positive, excluded = eye, None
    elif same_identity == "positive":
        positive, excluded = eye | same, None
    else:  # mask
        positive, excluded = eye, same & ~eye
    negative = ~positive if excluded is None else ~(positive | excluded)

    logits = scale * cos
    if hardness_mode is not None and hardness_strength > 0:
        penalised = _hardness_selection(batch, num_candidates, hardness_mode, device) & negative
        penalty = hardness_strength * cos.detach()
        logits = logits + torch.where(penalised, penalty, torch.zeros_like(penalty))
    terms = _direction_terms(logits, positive, excluded)

    if symmetric:  # positive i (doc) -> all B anchors (queries); ST's doc_to_query has no hardness penalty
        doc_logits = scale * cos[:, :batch].t()  # (B, B): row = positive i, column = anchor j
        doc_eye = eye[:, :batch]
        if same is None:
            doc_positive, doc_excluded = doc_eye, None
        else:
            doc_same = same[:, :batch].t()  # [i, j] = candidate_pids[i] == anchor_pids[j]
            if same_identity == "positive":
                doc_positive, doc_excluded = doc_eye | doc_same, None
            else:
                doc_positive, doc_excluded = doc_eye, doc_same & ~doc_eye
        terms = 0.5 * (terms + _direction_terms(doc_logits, doc_positive, doc_excluded))
    return terms, cos


# ---------------------------------------------------------------------------------------------------- public API


def multiple_negatives_ranking_loss(
    anchors: Tensor,
    candidates: Tensor,
    scale: float = 20.0,
    anchor_pids: Tensor | None = None,
    candidate_pids: Tensor | None = None,
    same_identity: SameIdentity = "mask",
    hardness_mode: HardnessMode | None = None,
    hardness_strength: float = 0.0,
    symmetric: bool = False,
) -> Tensor:
    """Multiple-negatives ranking loss: ``mean_i CE(scale * cos(anchor_i, candidates), target i)``.

    Without pids this equals sentence-transformers' ``MultipleNegativesRankingLoss`` (with ``symmetric``:
    ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``).

    Args:
        anchors: (B, D) queries; L2-normalised inside.
        candidates: (N, D), N >= B; L2-normalised inside. Row i < B is anchor i's positive; rows >= B are extra
            (hard) negatives shared by all anchors, e.g. ST's columns concatenated ``[positives; negatives_1;
            ...; negatives_n]`` (row j then belongs to anchor ``j mod B``, which ``hardness_mode`` relies on; when N
            is not a multiple of B, the last ``N mod B`` rows belong to no anchor: shared negatives).
        scale: logit multiplier ``1 / temperature``, > 0.
        anchor_pids: optional (B,) identities (give together with ``candidate_pids``).
        candidate_pids: optional (N,) identities.
        same_identity: what a candidate j != i with ``candidate_pids[j] == anchor_pids[i]`` is for anchor i:
            ``"mask"`` removes it from the softmax denominator; ``"positive"`` makes every same-identity candidate
            (and candidate i) a positive, the target being uniform over them
            (``-(1/|P_i|) sum_{j in P_i} log softmax_j``); ``"none"`` ignores the pids (plain loss).
        hardness_mode: ST's hardness weighting: ``alpha * stop_grad(cos_ij)`` (``alpha = hardness_strength``)
            is added, after scaling, to the logits of ``"in_batch_negatives"`` (candidates not belonging to
            anchor i), ``"hard_negatives"`` (anchor i's own explicit negatives, rows ``i + k B``, k >= 1) or
            ``"all_negatives"`` (every j != i). Same-identity candidates are never penalised (unless
            ``same_identity="none"``). ``None`` disables it.
        hardness_strength: ``alpha >= 0``; 0 disables the penalty.
        symmetric: also add the positive -> anchor direction (positive i against all B anchors, target i; the
            extra negative rows are not used there, and no hardness penalty, as in ST); the two directions' CE
            are averaged. With pids, that direction masks (or counts as positives) the anchors with the same
            identity as positive i (``candidate_pids[i]``).

    Returns:
        Scalar tensor: mean over the B anchors.
    """
    _check_options(scale, same_identity, hardness_mode, hardness_strength)
    _check_inputs(anchors, candidates, anchor_pids, candidate_pids)
    terms, _ = _per_anchor_terms(anchors, candidates, scale, anchor_pids, candidate_pids, same_identity,
                                 hardness_mode, hardness_strength, symmetric)
    return terms.mean()


def difficulty_levels(positive_scores: Tensor, hardest_negative_scores: Tensor, margin: float = 0.2) -> Tensor:
    """Difficulty level of each query from its positive and hardest-negative cosines.

    ``hard``: ``s_n >= s_p``; ``semi_hard``: ``s_p - margin <= s_n < s_p``; ``easy``: ``s_n < s_p - margin``.
    A query without any true negative (``s_n = -inf``) is easy.

    Args:
        positive_scores: (B,) ``s_p``, cosine of each query with its positive.
        hardest_negative_scores: (B,) ``s_n``, cosine of each query with its hardest true negative (or -inf).
        margin: ``m >= 0``.

    Returns:
        (B,) int64 levels (:data:`EASY` = 0, :data:`SEMI_HARD` = 1, :data:`HARD` = 2); never carries gradient.
    """
    _check_margin(margin)
    if positive_scores.dim() != 1 or hardest_negative_scores.shape != positive_scores.shape:
        raise ValueError(
            "positive_scores and hardest_negative_scores must both have shape (B,), got "
            f"{tuple(positive_scores.shape)} and {tuple(hardest_negative_scores.shape)}"
        )
    with torch.no_grad():
        positive = positive_scores.detach()
        hardest = hardest_negative_scores.detach()
        levels = torch.full(positive.shape, EASY, dtype=torch.int64, device=positive.device)
        levels[hardest >= positive - margin] = SEMI_HARD
        levels[hardest >= positive] = HARD
    return levels


def difficulty_aware_mnrl(
    anchors: Tensor,
    candidates: Tensor,
    anchor_pids: Tensor | None = None,
    candidate_pids: Tensor | None = None,
    scale: float = 20.0,
    margin: float = 0.2,
    level_weights: tuple[float, float, float] = (0.5, 1.0, 1.5),
    same_identity: SameIdentity = "mask",
    hardness_mode: HardnessMode | None = None,
    hardness_strength: float = 0.0,
    symmetric: bool = False,
    relevant: Tensor | None = None,
) -> DifficultyAwareLoss:
    """X-Modal's difficulty-aware MNRL: each query's CE term weighted by its difficulty level.

    ``s_p = cos(anchor_i, candidate_i)``; ``s_n`` = the largest cosine of anchor i with a *true* negative: a
    candidate j != i of another identity (every j != i without pids; extra negative rows included). The pids
    define true negatives whenever they are given, whatever ``same_identity`` says. Levels come from
    :func:`difficulty_levels` (no gradient). ``loss = (1/B) sum_i level_weights[level_i] * CE_i``, where
    ``CE_i`` is exactly the per-anchor term of :func:`multiple_negatives_ranking_loss` with the same options, so
    ``level_weights=(1, 1, 1)`` gives that loss.

    Args:
        anchors, candidates, anchor_pids, candidate_pids, scale, same_identity, hardness_mode,
        hardness_strength: as in :func:`multiple_negatives_ranking_loss`.
        margin: semi-hard band width ``m >= 0`` (see :func:`difficulty_levels`).
        level_weights: non-negative weights of (easy, semi_hard, hard) queries.
        relevant: optional (B, N) bool, candidates that are not negatives of anchor i although j != i (e.g. for
            a composed query: images of the person that show the asked-for attributes). It replaces the pid
            comparison everywhere (masking or extra positives per ``same_identity``, and the true negatives of
            the levels); the candidate i itself is always the positive.
        symmetric: as in :func:`multiple_negatives_ranking_loss`; ``CE_i`` is then the mean of the two
            directions' terms of pair i (anchor i -> candidates and positive i -> anchors), weighted by the level
            of anchor i (levels are always computed in the anchor -> candidate direction).

    Returns:
        :class:`DifficultyAwareLoss` ``(loss, levels, per_anchor)``.
    """
    _check_options(scale, same_identity, hardness_mode, hardness_strength)
    _check_margin(margin)
    _check_level_weights(level_weights)
    _check_inputs(anchors, candidates, anchor_pids, candidate_pids, relevant)
    terms, cos = _per_anchor_terms(anchors, candidates, scale, anchor_pids, candidate_pids, same_identity,
                                   hardness_mode, hardness_strength, symmetric, relevant)
    with torch.no_grad():
        cos = cos.detach()
        batch = anchors.shape[0]
        true_negative = ~torch.eye(batch, cos.shape[1], dtype=torch.bool, device=cos.device)
        if relevant is not None:
            true_negative &= ~relevant
        elif anchor_pids is not None and candidate_pids is not None:
            true_negative &= anchor_pids.view(-1, 1) != candidate_pids.view(1, -1)
        hardest = cos.masked_fill(~true_negative, float("-inf")).max(dim=1).values
        levels = difficulty_levels(cos.diagonal(), hardest, margin)
        weights = torch.tensor([float(w) for w in level_weights], dtype=terms.dtype, device=terms.device)[levels]
    return DifficultyAwareLoss(loss=(weights * terms).mean(), levels=levels, per_anchor=terms)


class DifficultyAwareMNRL(nn.Module):
    """Module twin of :func:`difficulty_aware_mnrl` holding its options (no parameters)."""

    def __init__(
        self,
        scale: float = 20.0,
        margin: float = 0.2,
        level_weights: tuple[float, float, float] = (0.5, 1.0, 1.5),
        same_identity: SameIdentity = "mask",
        hardness_mode: HardnessMode | None = None,
        hardness_strength: float = 0.0,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        _check_options(scale, same_identity, hardness_mode, hardness_strength)
        _check_margin(margin)
        _check_level_weights(level_weights)
        self.scale = scale
        self.margin = margin
        self.level_weights = tuple(float(w) for w in level_weights)
        self.same_identity = same_identity
        self.hardness_mode = hardness_mode
        self.hardness_strength = hardness_strength
        self.symmetric = symmetric

    def forward(
        self,
        anchors: Tensor,
        candidates: Tensor,
        anchor_pids: Tensor | None = None,
        candidate_pids: Tensor | None = None,
        relevant: Tensor | None = None,
    ) -> DifficultyAwareLoss:
        """(B, D) anchors, (N, D) candidates, optional (B,) / (N,) pids or (B, N) ``relevant`` ->
        :class:`DifficultyAwareLoss`."""
        return difficulty_aware_mnrl(
            anchors,
            candidates,
            anchor_pids,
            candidate_pids,
            scale=self.scale,
            margin=self.margin,
            level_weights=self.level_weights,  # type: ignore[arg-type]
            same_identity=self.same_identity,
            hardness_mode=self.hardness_mode,
            hardness_strength=self.hardness_strength,
            symmetric=self.symmetric,
            relevant=relevant,
        )

    @staticmethod
    def level_shares(levels: Tensor) -> dict[str, Tensor]:
        """Fraction of the batch at each level: ``{"easy": share, "semi_hard": share, "hard": share}``.

        Args:
            levels: (B,) int64 levels from :class:`DifficultyAwareLoss`, B >= 1.

        Returns:
            Float scalar tensors summing to 1 (for logging).
        """
        if levels.numel() == 0:
            raise ValueError("levels must hold at least one query, got an empty tensor")
        flat = levels.detach().flatten().long()
        if flat.min() < EASY or flat.max() > HARD:
            raise ValueError(
                f"levels must be in {{{EASY}, {SEMI_HARD}, {HARD}}}, "
                f"got values in [{int(flat.min())}, {int(flat.max())}]"
            )
        counts = torch.bincount(flat, minlength=len(LEVEL_NAMES))
        shares = counts.to(torch.float32) / levels.numel()
        return {name: shares[index] for index, name in enumerate(LEVEL_NAMES)}

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale}, margin={self.margin}, level_weights={self.level_weights}, "
            f"same_identity={self.same_identity!r}, hardness_mode={self.hardness_mode!r}, "
            f"hardness_strength={self.hardness_strength}, symmetric={self.symmetric}"
        )
