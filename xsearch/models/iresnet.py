"""ArcFace's improved ResNet (iResNet-18/34/50/100) in insightface's module layout (TGFR's face backbone,
docs/methods.md#tgfr-architecture), so an insightface ``backbone.pth`` (e.g. the MS1MV3 iResNet-18) loads by name.

Input: 112x112 aligned faces, ``uint8 (B, 3, 112, 112)`` (normalised here to ``(x - 127.5) / 127.5``) or float
already normalised. Output: the 512-d embedding and, for TGFR's word-region alignment, the ``(B, 256, 14, 14)``
map after ``layer3``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xsearch.registry import TOWERS

__all__ = ["IResNet", "iresnet"]

DEPTHS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
"""Blocks per stage of each depth (insightface's ``iresnet18`` ... ``iresnet100``)."""


class IBasicBlock(nn.Module):
    """BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus the (projected) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


@TOWERS.register("iresnet")
class IResNet(nn.Module):
    """iResNet with insightface's parameter names; ``forward`` returns ``(embedding (B, 512), local (B, 256, 14, 14))``
    (``local_dim`` channels when ``width != 1``).

    Args:
        depth: 18, 34, 50 or 100.
        embedding_dim: size of the final embedding (512 in ArcFace).
        weights: an insightface checkpoint (``state_dict`` of ``iresnet<depth>``) to load; ``None`` = random init.
        dropout: dropout before the fc layer (insightface: 0).
        width: channel multiplier (1 = insightface's 64/128/256/512; ``0.25`` is a 16x cheaper network for CPU
            experiments on synthetic faces, whose layer-3 map has ``256 x width`` channels).
    """

    def __init__(self, depth: int = 18, embedding_dim: int = 512, weights: str | None = None, dropout: float = 0.0,
                 width: float = 1.0) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"iresnet depth must be one of {sorted(DEPTHS)}, got {depth}")
        channels = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0], eps=1e-5)
        self.prelu = nn.PReLU(channels[0])
        inplanes = channels[0]
        for stage, (planes, blocks) in enumerate(zip(channels, DEPTHS[depth]), start=1):
            layers = [IBasicBlock(inplanes, planes, stride=2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(channels[3], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels[3] * 7 * 7, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self.out_dim, self.local_dim = embedding_dim, channels[2]
        if weights is not None:
            self.load_insightface(weights)

    def load_insightface(self, path: str | Path) -> None:
        """Load an insightface ``backbone.pth``; a mismatch names the missing / unexpected keys."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: not an insightface iResNet checkpoint of this depth: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, 112, 112)`` -> ``(B, embedding_dim)`` embedding and ``(B, local_dim, 14, 14)`` layer-3 map."""
        x = (images.float() - 127.5) / 127.5 if images.dtype == torch.uint8 else images
        x = self.layer2(self.layer1(self.prelu(self.bn1(self.conv1(x)))))
        local = self.layer3(x)
        x = self.bn2(self.layer4(local))
        embedding = self.features(self.fc(self.dropout(torch.flatten(x, 1))))
        return embedding, local


def iresnet(depth: int = 18, **kwargs) -> IResNet:
    """Factory by depth (``iresnet(18, weights="backbone.pth")``)."""
    return IResNet(depth, **kwargs)
