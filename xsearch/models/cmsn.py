"""``cmsn``: CMSN-style re-implementation (Sun et al., IEEE TIFS 2025) from its abstract (docs/methods.md#cmsn).

Only the abstract is public; this is xsearch's documented reading of it, every unknown a config option.
CMSN = IRRA (:class:`~xsearch.models.irra.IRRA`) + three parts, each switchable for ablations:

* **IMFI** (implicit multi-scale feature integration), per modality with its own weights: tokens of
  several depths (``imfi_layers``: transformer layers or CNN stages of the
  :class:`~xsearch.models.towers.Towers`; the last one is the tower's own projected output) and of
  several scales (image: average-pooled patch grids, windows ``image_windows``; text: depthwise 1-D
  convolutions over the tokens, kernels ``text_kernels``) are projected to the joint space and read by
  one decoder block whose query is the tower's global feature; its output is added to that feature. The
  block's output projections start at zero, so training starts exactly at the IRRA features. Features
  stay per modality: galleries are encoded once and IRRA's evaluation is unchanged.
* **CRL** (combined representation, training only): caption tokens attend to image tokens in a small
  cross-modal transformer; the output at the end token gives ``f_c`` (``crl_light``: an MLP on ``[f_v, f_t, f_v*f_t]``).
* **CRIA**: identity centres shared by ``f_v``, ``f_t``, ``f_c`` (a cosine classifier) + batch centre
  consistency (:func:`xsearch.losses.cria_loss`); **SPT**: semi-positive triplet (:func:`xsearch.losses.spt_loss`).

Loss: ``sdm + id + mlm (as IRRA) + cria_weight * cria + spt_weight * spt``. With ``imfi=False``,
``crl=False``, ``cria_weight=0`` and ``spt_weight=0`` the module computes exactly IRRA.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.config_types import NonNegativeFloat, PositiveFloat
from xsearch.distributed import gather
from xsearch.losses import IdentityCenters, spt_loss
from xsearch.models.blocks import CrossModalTransformer, QuickGELU, clip_init
from xsearch.models.towers import TowerOutput, Towers
from xsearch.models.irra import IRRA
from xsearch.registry import METHODS


class FusionDecoder(nn.Module):
    """One pre-norm decoder block: a (B, D) query attends to (B, N, D) tokens, then an MLP; both residual,
    so the output is the query plus the fused update.

    The attention and MLP output projections start at zero: at initialisation the output is the query.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_query, self.ln_memory, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, width))
        clip_init(self, width, 1)
        for projection in (self.attn.out_proj, self.mlp[2]):
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, query: Tensor, tokens: Tensor, padding: Tensor | None = None) -> Tensor:
        """(B, D) query, (B, N, D) tokens, (B, N) True at ignored tokens -> (B, D)."""
        memory = self.ln_memory(tokens)
        x = query[:, None]
        x = x + self.attn(self.ln_query(x), memory, memory, key_padding_mask=padding, need_weights=False)[0]
        x = x + self.mlp(self.ln_mlp(x))
        return x[:, 0]


class DepthProjections(nn.Module):
    """LayerNorm + Linear(W_l -> D) of the hidden states of each listed layer but the last (B, N_l, W_l) -> (B, N_l, D).

    ``widths``: layer -> its width W_l."""

    def __init__(self, layers: Sequence[int], widths: Callable[[int], int], embed_dim: int) -> None:
        super().__init__()
        self.layers = [int(layer) for layer in layers[:-1]]
        self.projections = nn.ModuleDict({str(layer): nn.Sequential(nn.LayerNorm(widths(layer)),
                                                                    nn.Linear(widths(layer), embed_dim))
                                          for layer in self.layers})

    def forward(self, hidden: dict[int, Tensor]) -> list[Tensor]:
        return [self.projections[str(layer)](hidden[layer]) for layer in self.layers]


class ImageIMFI(nn.Module):
    """IMFI of the image tower: depth tokens + average-pooled patch grids -> fused (B, D) feature."""

    def __init__(self, towers: Towers, layers: Sequence[int], windows: Sequence[int], heads: int) -> None:
        super().__init__()
        self.layers, self.windows = tuple(layers), tuple(windows)
        self.depth = DepthProjections(layers, towers.image_layer_width, towers.embed_dim)
        self.decoder = FusionDecoder(towers.embed_dim, heads)

    def forward(self, out: TowerOutput) -> Tensor:
        batch, _, dim = out.tokens.shape
        patches = out.patches.transpose(1, 2).reshape(batch, dim, *out.grid)  # (B, D, rows, cols)
        pooled = [F.avg_pool2d(patches, w, stride=w, ceil_mode=True).flatten(2).transpose(1, 2) for w in self.windows]
        tokens = torch.cat([*self.depth(out.hidden), out.tokens, *pooled], dim=1)
        return self.decoder(out.global_features, tokens)  # residual: the global feature + the fused update


class TextIMFI(nn.Module):
    """IMFI of the text tower: depth tokens + depthwise 1-D convolutions (phrases) -> fused (B, D) feature."""

    def __init__(self, towers: Towers, layers: Sequence[int], kernels: Sequence[int], heads: int) -> None:
        super().__init__()
        self.layers = tuple(layers)
        dim = towers.embed_dim
        self.depth = DepthProjections(layers, towers.text_layer_width, dim)
        self.phrases = nn.ModuleList(nn.Conv1d(dim, dim, k, padding=k // 2, groups=dim) for k in kernels)
        self.decoder = FusionDecoder(dim, heads)

    def forward(self, out: TowerOutput) -> Tensor:
        keep = (~out.padding).unsqueeze(-1).to(out.tokens.dtype)  # padding never leaks into a phrase
        sequence = (out.tokens * keep).transpose(1, 2)  # (B, D, L)
        phrases = [conv(sequence).transpose(1, 2) for conv in self.phrases]
        depth = self.depth(out.hidden)
        tokens = torch.cat([*depth, out.tokens, *phrases], dim=1)
        padding = out.padding.repeat(1, len(depth) + 1 + len(phrases))
        return self.decoder(out.global_features, tokens, padding)


class CombinedRepresentation(nn.Module):
    """CRL: ``f_c`` from caption tokens attending to image tokens (EOT output), or the light MLP."""

    def __init__(self, dim: int, heads: int, layers: int, light: bool) -> None:
        super().__init__()
        self.light = light
        if light:
            self.mlp = nn.Sequential(nn.Linear(3 * dim, dim), QuickGELU(), nn.Linear(dim, dim))
        else:
            self.cross = CrossModalTransformer(dim, heads, layers)
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, image: TowerOutput, text: TowerOutput) -> Tensor:
        """Image and text outputs (global features already fused) -> (B, D)."""
        if self.light:
            v, t = image.global_features, text.global_features
            return self.mlp(torch.cat([v, t, v * t], dim=-1))
        x = self.cross(text.tokens, image.tokens)
        return self.head(x[torch.arange(text.eot.shape[0], device=x.device), text.eot])


@METHODS.register("cmsn")
class CMSN(IRRA):
    """CMSN-style re-implementation on IRRA (see the module docstring).

    Args:
        towers: the image and text towers (any :class:`~xsearch.models.towers.Towers`).
        imfi: fuse multi-depth / multi-scale tokens into the global features.
        imfi_layers: tower layers (1-based) read by IMFI in both towers; the last must be each tower's last layer.
        imfi_image_layers / imfi_text_layers: the image (stages) / text layers instead, when the towers differ
            in depth (``None``: ``imfi_layers``).
        image_windows / text_kernels: pooling windows over the patch grid / phrase kernel sizes.
        crl: build the combined representation (training only); needed by CRIA.
        crl_layers / crl_light: self-attention layers of CRL's cross-modal transformer / the MLP variant.
        cria_weight / cria_center_weight / cria_scale: CRIA weight, weight of its centre part, cosine scale.
        spt_weight / spt_margin / spt_semi_margin: SPT weight and margins (true pair / semi-positives).
        **kwargs: :class:`IRRA` options (``sdm_weight``, ``id_weight``, ``mlm_weight``...) and the optimiser.
    """

    def __init__(
        self,
        towers: Towers,
        imfi: bool = True,
        imfi_layers: tuple[int, ...] = (4, 8, 12),
        imfi_image_layers: tuple[int, ...] | None = None,
        imfi_text_layers: tuple[int, ...] | None = None,
        image_windows: tuple[int, ...] = (1, 2, 4),
        text_kernels: tuple[int, ...] = (1, 3, 5),
        crl: bool = True,
        crl_layers: int = 2,
        crl_light: bool = False,
        cria_weight: NonNegativeFloat = 1.0,
        cria_center_weight: NonNegativeFloat = 1.0,
        cria_scale: PositiveFloat = 30.0,
        spt_weight: NonNegativeFloat = 1.0,
        spt_margin: float = 0.2,
        spt_semi_margin: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if cria_weight > 0 and not crl:
            raise ValueError("cria_weight > 0 needs the combined representation: set crl=true or cria_weight=0")
        super().__init__(towers, **kwargs)  # builds the identity modules now if num_classes is given
        if not hasattr(self, "centers"):
            self.centers: IdentityCenters | None = None
        self.loss_weights.update({"cria": cria_weight, "cria_ce": 0.0, "cria_center": 0.0, "spt": spt_weight})
        dim, heads = towers.embed_dim, max(1, towers.embed_dim // 64)
        self.image_imfi = self.text_imfi = None
        if imfi:
            image_layers, text_layers = imfi_image_layers or imfi_layers, imfi_text_layers or imfi_layers
            self._check_layers("image", image_layers, towers.image_layers)
            self._check_layers("text", text_layers, towers.text_layers)
            self.image_imfi = ImageIMFI(towers, image_layers, image_windows, heads)
            self.text_imfi = TextIMFI(towers, text_layers, text_kernels, heads)
        self.crl = CombinedRepresentation(dim, heads, crl_layers, crl_light) if crl else None

    @staticmethod
    def _check_layers(tower: str, layers: Sequence[int], depth: int) -> None:
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1 or layers[-1] != depth:
            raise ValueError(f"IMFI {tower} layers should increase and end at the {tower} tower's last layer {depth}, "
                             f"got {tuple(layers)} (imfi_layers / imfi_{tower}_layers)")

    def build_identity_modules(self, num_classes: int) -> None:
        super().build_identity_modules(num_classes)
        if self.hparams.cria_weight > 0 and getattr(self, "centers", None) is None:
            self.centers = IdentityCenters(self.towers.embed_dim, num_classes, logit_scale=self.hparams.cria_scale,
                                           center_weight=self.hparams.cria_center_weight)

    # -- features ------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> TowerOutput:
        if self.image_imfi is None:
            return super().image_features(images)
        out = self.towers.encode_image(images, layers=self.image_imfi.depth.layers)
        out.global_features = self.image_imfi(out)
        return out

    def text_features(self, input_ids: Tensor) -> TowerOutput:
        if self.text_imfi is None:
            return super().text_features(input_ids)
        out = self.towers.encode_text(input_ids, layers=self.text_imfi.depth.layers)
        out.global_features = self.text_imfi(out)
        return out

    # -- losses --------------------------------------------------------------------------
    def extra_terms(self, image: TowerOutput, text: TowerOutput, labels: Tensor) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.hparams.spt_weight > 0:
            terms["spt"] = spt_loss(*gather(image.global_features, text.global_features, labels),
                                    self.hparams.spt_margin, self.hparams.spt_semi_margin)
        if self.hparams.cria_weight > 0:
            combined = self.crl(image, text)
            cria = self.centers.loss(image.global_features.float(), text.global_features.float(), combined.float(), labels)
            terms.update({"cria": cria["loss"], "cria_ce": cria["cria_ce"].detach(), "cria_center": cria["cria_center"].detach()})
        return terms
