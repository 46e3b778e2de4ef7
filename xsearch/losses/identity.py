"""Identity (ID) classification loss shared by both modalities (IRRA; docs/methods.md#shared-losses)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IdentityClassifier", "check_labels", "id_loss"]


def check_labels(labels: Tensor, num_classes: int) -> None:
    """Raise a readable ValueError instead of a device-side assert for out-of-range labels."""
    if labels.numel() == 0:
        return
    min_label = int(labels.min())
    max_label = int(labels.max())
    if min_label < 0 or max_label >= num_classes:
        raise ValueError(
            f"identity labels must lie in [0, num_classes={num_classes}); got min label {min_label}, "
            f"max label {max_label}. Are pids remapped to contiguous training ids, and is num_classes "
            "the number of training identities?"
        )


def id_loss(logits_image: Tensor, logits_text: Tensor, labels: Tensor) -> Tensor:
    """``1/2 [CE(logits_image, labels) + CE(logits_text, labels)]``.

    Args:
        logits_image: (B, C) class logits of the image embeddings.
        logits_text: (B, C) class logits of the text embeddings.
        labels: (B,) integer identity labels in [0, C).

    Returns:
        Scalar tensor.
    """
    if logits_image.dim() != 2 or logits_image.shape != logits_text.shape:
        raise ValueError(
            "expected image and text logits of the same shape (B, C), got "
            f"{tuple(logits_image.shape)} and {tuple(logits_text.shape)}"
        )
    if labels.shape != (logits_image.shape[0],):
        raise ValueError(f"expected labels of shape ({logits_image.shape[0]},), got {tuple(labels.shape)}")
    check_labels(labels, logits_image.shape[1])
    return 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))


class IdentityClassifier(nn.Module):
    """One ``Linear(embed_dim, num_classes)`` shared by both modalities; weight ~ N(0, 0.001), bias 0 (IRRA)."""

    def __init__(self, embed_dim: int, num_classes: int, init_std: float = 0.001) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=init_std)
        nn.init.constant_(self.classifier.bias, 0.0)

    def forward(self, embeddings: Tensor) -> Tensor:
        """(B, embed_dim) -> (B, num_classes) logits."""
        return self.classifier(embeddings)

    def loss(self, image_embeddings: Tensor, text_embeddings: Tensor, labels: Tensor) -> Tensor:
        """:func:`id_loss` on the shared classifier's logits; inputs (B, embed_dim), labels (B,)."""
        return id_loss(self(image_embeddings), self(text_embeddings), labels)  # validates labels
