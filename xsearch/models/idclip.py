"""``idclip``: identity-aware CLIP retrieval (Messina et al., ECIR 2025).

A person's 512-d face descriptor becomes a pseudo-word: a small translator MLP maps it to one text-token
embedding, which replaces the ``[TOK]`` token of the caption right after the token lookup, before CLIP adds
position embeddings. The text tower then reads "A picture of [TOK] riding a horse" as a caption about that
person. Only the translator and ``prompt_tokens`` learnable visual prompt tokens (shallow VPT: appended after
CLS + patches at the input layer) train; CLIP stays frozen, so the gallery never needs re-indexing for a new
identity. Loss: symmetric InfoNCE at a fixed temperature 0.07 (learnable as an option).

Texts come from the ``coco_pfs`` parser with ``entity: slot`` through :mod:`xsearch.datamodules.entity_text`
(``[ENTITY]`` where the identity goes; by default the authors' "<prompt>. <caption>" training text and template
queries); ``conf`` says what the slot becomes (:data:`CONFS`: ``[TOK]`` = the paper's conf1, conf2..conf6 mix in the
name, ``name`` and ``none`` are the zero-shot CLIP baselines). Batches carry ``face`` ``(B, 512)`` and ``name``.
Averaged queries (general retrieval at validation; entity retrieval, :mod:`xsearch.datamodules.entity_queries`) bring
``prompts``: their text features are averaged before the L2 normalisation.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.config_types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from xsearch.distributed import gather
from xsearch.entity_captions import SLOT, fill_entity
from xsearch.losses import cosine_logits, entity_info_nce, info_nce
from xsearch.models.base import RetrievalModule
from xsearch.models.clip import EOT_ID, PAD_ID, SOT_ID, CLIPTowers
from xsearch.models.export_contract import ExportTowers, ExportUnsupported
from xsearch.registry import METHODS

TOKEN = "[TOK]"
"""The pseudo-word in a caption that carries the face."""
TOKEN_ID = EOT_ID + 1
"""Its id after tokenising (outside CLIP's vocabulary, as the authors' 49408); swapped before the lookup."""


def tokenize_with_token(bpe: Any, texts: Sequence[str], context_length: int = 77) -> tuple[Tensor, Tensor]:
    """Captions with ``[TOK]`` -> ``(B, L)`` CLIP ids (``[TOK]`` -> :data:`TOKEN_ID`) and ``(B, L)`` bool ``[TOK]``
    positions. SOT + tokens + EOT, truncated to keep EOT last, padded with 0 (CLIP's layout)."""
    ids = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        pieces = text.split(TOKEN)
        tokens: list[int] = []
        for k, piece in enumerate(pieces):
            tokens += ([TOKEN_ID] if k else []) + (bpe.encode(piece) if piece.strip() else [])
        tokens = [SOT_ID, *tokens][: context_length - 1] + [EOT_ID]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, ids == TOKEN_ID


class Translator(nn.Module):
    """Face descriptor -> one token embedding: ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)`` (no bias by
    default, the paper's "mlp-1-layer"); ``(B, in) -> (B, out)``, not normalised."""

    def __init__(self, in_dim: int = 512, hidden: int = 768, out_dim: int = 768, bias: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, out_dim, bias=bias))

    def forward(self, faces: Tensor) -> Tensor:
        return self.net(faces)


CONFS: dict[str, tuple[str, str]] = {
    "conf1": ("", TOKEN),
    "conf2": ("", TOKEN + " {name}"),
    "conf3": ("", "{name} " + TOKEN),
    "conf4": ("An image with " + TOKEN + ". ", "{name}"),
    "conf5": (TOKEN + ". ", "{name}"),
    "conf6": (TOKEN + ". ", TOKEN),
    "name": ("", "{name}"),
    "none": ("", "a person"),
}
"""How a caption's ``[ENTITY]`` slot is filled, as ``(prefix, fill)``: the authors' test configurations conf1..conf6
(``{name}`` = the identity's display name, ``[TOK]`` = the face pseudo-word), and the zero-shot
CLIP baselines ``name`` (the real name, no face) and ``none`` (no identity: the slot says "a person")."""


def fill_query(text: str, conf: str, name: str | None = None) -> str:
    """A caption or prompt with an ``[ENTITY]`` slot, filled per ``conf`` (:data:`CONFS`); text without a slot only
    gets the prefix. Raises if ``conf`` needs the name and none is given."""
    prefix, fill = CONFS[conf]
    if "{name}" in fill and name is None:
        raise KeyError(f"idclip conf {conf!r} puts the identity's name into the caption: the batch needs 'name' "
                       "(a dataset with identity names: coco_pfs, synth_pfs)")
    return prefix + fill_entity(text, fill.format(name=name)) if SLOT in text else prefix + text


@METHODS.register("idclip")
class IdCLIP(RetrievalModule):
    """Id-CLIP (see the module docstring).

    Args:
        clip: CLIP towers (``image_size`` square, e.g. 336 for ViT-L/14@336).
        face_dim: size of the face descriptors (512).
        translator_hidden / translator_bias: the translator MLP.
        prompt_tokens: shallow visual prompt tokens (0 = none; the paper: 5).
        temperature: InfoNCE temperature (0.07); ``learnable_temperature`` trains it (clamped at 100 x).
        conf: how queries carry the identity (:data:`CONFS`): ``conf1`` (the paper's training and main test
            setting: ``[TOK]`` in place of the name) .. ``conf6``, or the zero-shot baselines ``name`` / ``none``.
        entity_loss_weight: weight of :func:`~xsearch.losses.entity_info_nce` (every same-identity pair in the
            batch is a positive) added to the InfoNCE; 0 = the paper setting. Use ``data.sampler: identity`` so
            batches hold several images per identity.
        entity_targets: ``softmax`` or ``bce`` targets of that loss.
        stage: ``idclip`` trains the translator and prompts on a frozen CLIP; ``clip`` trains the CLIP towers
            themselves on the captions with no identity (``a person``), no translator or prompts: a stand-in for
            OpenAI's pretraining on synthetic data, where no CLIP weights exist. Its checkpoint initialises
            the ``idclip`` stage (``init_from``) and is the plain CLIP of the zero-shot baselines.
        clip_id_weight: stage ``clip`` only: weight of a cosine identity classifier (scale 30) on the image features
            over the *training* identities, so that the stand-in CLIP tells people apart by their look, as a CLIP
            pretrained on the web does; captions alone barely make a small CLIP look at the person. 0 = captions only.
        **kwargs: :class:`RetrievalModule` options (``lr`` x ``new_module_lr_factor`` is the translator's and the
            prompts' learning rate: 5e-5 in the paper, with AdamW, wd 0.01, no schedule).
    """

    def __init__(
        self,
        clip: CLIPTowers,
        face_dim: PositiveInt = 512,
        translator_hidden: PositiveInt = 768,
        translator_bias: bool = False,
        prompt_tokens: NonNegativeInt = 5,
        temperature: PositiveFloat = 0.07,
        learnable_temperature: bool = False,
        conf: str = "conf1",
        entity_loss_weight: NonNegativeFloat = 0.0,
        entity_targets: Literal["softmax", "bce"] = "softmax",
        stage: Literal["clip", "idclip"] = "idclip",
        clip_id_weight: NonNegativeFloat = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if conf not in CONFS:
            raise ValueError(f"idclip conf must be one of {', '.join(CONFS)}, got {conf!r}")
        if stage not in ("clip", "idclip"):
            raise ValueError(f"idclip stage must be 'clip' or 'idclip', got {stage!r}")
        self.clip = clip.requires_grad_(stage == "clip")
        self.translator = Translator(face_dim, translator_hidden, clip.text_width, translator_bias)
        self.translator.requires_grad_(stage == "idclip")
        self.visual_prompts = None
        if prompt_tokens and stage == "idclip":
            # shallow VPT: N(0, 1) tokens after CLS + patches, before CLIP's pre-LayerNorm; read out at CLS
            self.visual_prompts = nn.Parameter(torch.randn(prompt_tokens, clip.vision_width))
            clip.vision.embeddings.register_forward_hook(self._append_prompts)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learnable_temperature)
        self.conf, self.stage = conf if stage == "idclip" else "none", stage
        self.entity_loss_weight, self.entity_targets = entity_loss_weight, entity_targets
        self.clip_id_weight = clip_id_weight if stage == "clip" else 0.0
        self.id_centres: nn.Parameter | None = None

    def build_identity_modules(self, num_classes: int) -> None:
        if self.clip_id_weight:
            self.id_centres = nn.Parameter(torch.randn(num_classes, self.clip.embed_dim) * 0.01)

    def adapt_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A ``clip``-stage checkpoint has identity centres the other uses (baselines, ``idclip``) do not build."""
        if self.id_centres is None:
            checkpoint["state_dict"].pop("id_centres", None)

    def _append_prompts(self, module: nn.Module, inputs: Any, tokens: Tensor) -> Tensor:
        """Forward hook of the image embeddings: ``(B, 1 + P, W)`` -> ``(B, 1 + P + N, W)``."""
        return torch.cat([tokens, self.visual_prompts.to(tokens.dtype).expand(tokens.shape[0], -1, -1)], dim=1)

    def train(self, mode: bool = True) -> "IdCLIP":
        super().train(mode)
        if self.stage == "idclip":
            self.clip.eval()  # frozen
        return self

    def backbone_modules(self) -> list[nn.Module]:
        return [self.clip]

    @contextmanager
    def _injected(self, positions: Tensor, vectors: Tensor) -> Iterator[None]:
        """While open, the text token lookup returns ``vectors`` ``(B, W)`` at ``positions`` ``(B, L)``."""
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            return torch.where(positions[..., None], vectors[:, None, :].to(output.dtype), output)

        handle = self.clip.text.embeddings.token_embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def text_features(self, texts: Sequence[str], faces: Tensor | None) -> Tensor:
        """``B`` finished captions (``[TOK]`` where a face goes) + ``(B, face_dim)`` faces -> ``(B, D)`` projected
        EOT features, not normalised."""
        ids, positions = tokenize_with_token(self.clip.tokenizer._bpe, texts, self.clip.context_length)
        device = self.log_scale.device
        ids, positions = ids.to(device), positions.to(device)
        if not bool(positions.any()):
            return self.clip.encode_text(ids).global_features.float()
        if faces is None:
            raise KeyError("idclip needs face descriptors in the batch ('face') for captions with [TOK]: use a dataset "
                           "with them (coco_pfs, synth_pfs), or conf 'name' / 'none'")
        ids = ids.masked_fill(positions, PAD_ID)  # a valid id for the lookup; its embedding is replaced
        with self._injected(positions, self.translator(faces.to(device).float())):
            return self.clip.encode_text(ids).global_features.float()

    def encode_texts(self, texts: Sequence[str], faces: Tensor | None = None, names: Sequence[str] | None = None) -> Tensor:
        """``B`` captions with an ``[ENTITY]`` slot (or finished ones) -> ``(B, D)`` normalised, the slot filled per
        :attr:`conf` with ``faces`` ``(B, face_dim)`` and display ``names``."""
        filled = [fill_query(t, self.conf, names[i] if names is not None else None) for i, t in enumerate(texts)]
        return F.normalize(self.text_features(filled, faces), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, D)`` normalised (through the visual prompts)."""
        return F.normalize(self.clip.encode_image(images).global_features.float(), dim=-1)

    def encode_queries(self, batch: dict[str, Any]) -> Tensor:
        """``text`` (B captions with a slot), ``face`` (B, face_dim), ``name`` -> ``(B, D)``. With ``prompts`` (T lists
        of B texts with a slot: the template queries of a caption, or an identity's entity prompts) the T text features
        ``(B, D)`` are averaged before the L2 normalisation (template ensembling) and ``text`` is not used."""
        if "prompts" not in batch:
            return self.encode_texts(batch["text"], batch.get("face"), batch.get("name"))
        names = batch.get("name")
        total = 0
        for prompts in batch["prompts"]:
            filled = [fill_query(t, self.conf, names[i] if names is not None else None) for i, t in enumerate(prompts)]
            total = total + self.text_features(filled, batch.get("face"))
        return F.normalize(total / len(batch["prompts"]), dim=-1)

    def encode_gallery(self, batch: dict[str, Any]) -> Tensor:
        return self.encode_images(batch["image"])

    def export_towers(self) -> ExportTowers:
        raise ExportUnsupported("idclip cannot be exported as two towers: its text query needs the person's 512-d face "
                                "descriptor spliced into the caption's token embeddings ([TOK]), so the query tower "
                                "takes text and a face, not token ids alone")

    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = self.encode_images(batch["image"])
        texts = self.encode_queries(batch)
        scale = self.log_scale.exp().clamp(max=100.0)
        labels = torch.as_tensor(batch["pid"], device=images.device)
        every_image, every_text, every_label = gather(images, texts, labels)  # DDP: the global batch
        terms = {"itc": info_nce(every_image, every_text, scale)}
        if self.clip_id_weight:
            terms["id"] = F.cross_entropy(cosine_logits(images, self.id_centres, 30.0), labels)
        if self.entity_loss_weight:
            terms["entity"] = entity_info_nce(every_image, every_text, every_label, scale, self.entity_targets)
        terms["loss"] = terms["itc"] + self.entity_loss_weight * terms.get("entity", 0.0) + self.clip_id_weight * terms.get("id", 0.0)
        return terms
