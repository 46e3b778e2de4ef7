"""``xsearch export``: a checkpoint's two towers as ONNX graphs, checked against PyTorch with onnxruntime.

``OUT_DIR`` receives ``image.onnx`` (images ``(B, 3, H, W)`` uint8 0-255, or float32 0-1, already cropped and resized
to the training ``image_size`` -> ``(B, D)``; the model's own normalisation is inside), ``text.onnx`` (``input_ids``
and ``attention_mask`` ``(B, L)`` int64 -> ``(B, D)``), ``tokenizer/`` (the tokenizer's files: tokenisation cannot live
in ONNX) and ``card.json`` (inputs, outputs, preprocessing, tokenizer, the parity measured). Both outputs are
L2-normalised, so a query's score against an image is the dot product of their embeddings, which equals the model's
own similarity (checked). The batch axis is dynamic (and the token axis, for tokenizers that pad to the longest
caption). A method provides its towers with :meth:`~xsearch.models.RetrievalModule.export_towers`; the others raise
:class:`~xsearch.models.export_contract.ExportUnsupported` saying why.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import random
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.atomic import atomic_path, write_text_atomic
from xsearch.models.checkpoint import load_method
from xsearch.models.export_contract import ExportTowers
from xsearch.registry import METHODS

log = logging.getLogger(__name__)

FORMAT = "xsearch-onnx"
VERSION = 1
DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch's dynamo exporter writes 18 or newer
CARD_FILE, IMAGE_FILE, TEXT_FILE, TOKENIZER_FOLDER = "card.json", "image.onnx", "text.onnx", "tokenizer"
_WORDS = ("a man woman person wearing red blue black white grey green yellow shirt t-shirt jacket coat pants jeans "
          "shorts skirt dress shoes sneakers boots bag backpack with and the of long short dark hair glasses hat is "
          "walking carrying holding striped tight loose").split()


class ImageTower(nn.Module):
    """``(B, 3, H, W)`` uint8 0-255 (or float32 0-1) images -> ``(B, D)`` L2-normalised embeddings."""

    def __init__(self, model: nn.Module, towers: ExportTowers, input_dtype: Literal["uint8", "float32"]) -> None:
        super().__init__()
        self.model, self.encode, self.input_dtype = model, towers.image, input_dtype

    def forward(self, images: Tensor) -> Tensor:
        pixels = images.float() if self.input_dtype == "uint8" else images * 255.0
        return F.normalize(self.encode(pixels).float(), dim=-1)


class TextTower(nn.Module):
    """Token ids ``(B, L)`` and attention mask ``(B, L)`` -> ``(B, D)`` L2-normalised embeddings."""

    def __init__(self, model: nn.Module, towers: ExportTowers) -> None:
        super().__init__()
        self.model, self.encode = model, towers.text

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return F.normalize(self.encode(input_ids, attention_mask).float(), dim=-1)


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """An xsearch checkpoint -> (the method's model in eval mode on the CPU, its datamodule hyperparameters), through
    the one checkpoint loader (:func:`xsearch.models.checkpoint.load_method`); ``FileNotFoundError`` / ``ValueError``
    name the file and the missing field."""
    model, header = load_method(path)
    data = header.get("datamodule_hyper_parameters")
    if not isinstance(data, dict) or not isinstance(data.get("image_size"), (list, tuple)) or len(data["image_size"]) != 2:
        raise ValueError(f"{path}: datamodule_hyper_parameters.image_size is missing; the input size of the image tower "
                         "is unknown")
    return model, data


def random_captions(count: int, seed: int, max_words: int = 60) -> list[str]:
    """``count`` random captions of 3 to ``max_words`` words (long ones exercise truncation)."""
    draw = random.Random(seed)
    return [" ".join(draw.choice(_WORDS) for _ in range(draw.randint(3, max_words))) for _ in range(count)]


def _export(module: nn.Module, inputs: tuple[Tensor, ...], names: list[str], shapes: dict[str, dict[int, Any]],
            path: Path, opset: int) -> None:
    """Trace ``module`` on ``inputs`` with torch.export and write one self-contained ONNX file."""
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]  # pass-by-pass INFO lines
    levels = [logger.level for logger in quiet]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for logger in quiet:
            logger.setLevel(logging.WARNING)
        try:
            program = torch.onnx.export(module, inputs, dynamo=True, opset_version=opset, input_names=names,
                                        output_names=["embeddings"], dynamic_shapes=shapes, verbose=False)
        finally:
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def _max_abs_diff(path: Path, cases: list[tuple[Tensor, ...]], names: list[str], module: nn.Module) -> tuple[float, list[np.ndarray]]:
    """Largest ``|onnxruntime - PyTorch|`` of ``module`` over the ``cases``, and the onnxruntime outputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, outputs = 0.0, []
    for inputs in cases:
        try:
            (got,) = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})
        except Exception as error:  # noqa: BLE001  onnxruntime raises its own pybind types
            shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in zip(names, inputs))
            raise ValueError(f"{path.name}: onnxruntime cannot run the exported graph on {shapes} (traced with another "
                             f"batch size: was an axis fixed during export?): {str(error).splitlines()[0]}") from None
        with torch.no_grad():
            expected = module(*inputs).numpy()
        if got.shape != expected.shape:
            raise ValueError(f"{path.name}: onnxruntime gave shape {got.shape}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
        outputs.append(got)
    return worst, outputs


def export_onnx(checkpoint: str | Path, out_dir: str | Path, image_dtype: Literal["uint8", "float32"] = "uint8",
                opset: int = DEFAULT_OPSET, tolerance: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Export both towers of ``checkpoint`` into ``out_dir`` and check them; returns the card (also written).

    Each tower is checked with onnxruntime on random inputs of batch sizes other than the traced one (max abs
    difference to PyTorch), and the dot products of the ONNX embeddings against the model's own
    ``similarity(encode_queries, encode_gallery)`` on random captions and images; a difference above ``tolerance``
    raises ``ValueError`` and writes nothing.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: expected {MIN_OPSET} or more")
    for package in ("onnx", "onnxruntime", "onnxscript"):  # onnxscript: torch's exporter
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"xsearch export needs {package}: pip install 'xsearch[export]' (onnx, onnxruntime, onnxscript)")
    if image_dtype not in ("uint8", "float32"):
        raise ValueError(f"image dtype {image_dtype!r}: expected uint8 or float32")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    model, data = load_checkpoint(checkpoint)
    towers = model.export_towers()  # ExportUnsupported says why not
    height, width = (int(v) for v in data["image_size"])
    interpolation = data.get("interpolation") or "bicubic"
    generator = torch.Generator().manual_seed(seed)

    def images(batch: int) -> Tensor:
        return torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)

    def as_input(pixels: Tensor) -> Tensor:
        return pixels if image_dtype == "uint8" else pixels.float() / 255.0

    image_tower, text_tower = ImageTower(model, towers, image_dtype).eval(), TextTower(model, towers).eval()
    batch = torch.export.Dim("batch")
    length = torch.export.Dim("length") if towers.text_length is None else None
    text_shapes = {"input_ids": {0: batch, **({1: length} if length else {})},
                   "attention_mask": {0: batch, **({1: length} if length else {})}}
    out_dir.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = {"format": FORMAT, "version": VERSION, "checkpoint": str(checkpoint),
                            "method": _method_name(model), "class_path": f"{type(model).__module__}.{type(model).__name__}",
                            "opset": opset, "tolerance": tolerance,
                            "score": "dot product of a text and an image embedding (both L2-normalised) = the model's "
                                     "cosine similarity"}
    onnx_outputs: dict[str, list[np.ndarray]] = {}
    check_images, check_captions = [images(1), images(3)], [random_captions(n, seed + n) for n in (1, 3)]
    checks = {"image": [(as_input(pixels),) for pixels in check_images],
              "text": [towers.tokenize(captions) for captions in check_captions]}
    with contextlib.ExitStack() as files:  # every file lands only when every check has passed
        for name, module, file, example, names, shapes in (
            ("image", image_tower, IMAGE_FILE, (as_input(images(2)),), ["images"], {"images": {0: batch}}),
            ("text", text_tower, TEXT_FILE, towers.tokenize(random_captions(2, seed)), ["input_ids", "attention_mask"],
             text_shapes),
        ):
            tmp = files.enter_context(atomic_path(out_dir / file))
            _export(module, example, names, shapes, tmp, opset)
            difference, onnx_outputs[name] = _max_abs_diff(tmp, checks[name], names, module)
            print(f"[xsearch] {name} tower: onnxruntime vs PyTorch max abs diff {difference:.3g} (tolerance {tolerance:g})")
            if not difference <= tolerance:
                raise ValueError(f"{out_dir / file}: onnxruntime differs from PyTorch by {difference:.3g} (> tolerance "
                                 f"{tolerance:g}); nothing written")
            card[name] = {"file": file, "parity_max_abs_diff": difference}
        score_difference = _score_parity(model, torch.cat(check_images), check_captions, onnx_outputs)
        print(f"[xsearch] scores: ONNX embeddings' dot products vs the model's similarity max abs diff {score_difference:.3g}")
        if not score_difference <= tolerance:
            raise ValueError(f"{out_dir}: the exported towers' scores differ from {card['method']}'s similarity by "
                             f"{score_difference:.3g} (> tolerance {tolerance:g}); nothing written")
        card["score_parity_max_abs_diff"] = score_difference
        dimension = int(onnx_outputs["image"][0].shape[1])
        card["embedding_dim"] = dimension
        card["image"].update({
            "inputs": {"images": {"dtype": image_dtype, "shape": ["batch", 3, height, width],
                                  "values": "RGB, 0-255" if image_dtype == "uint8" else "RGB, 0-1"}},
            "outputs": {"embeddings": {"dtype": "float32", "shape": ["batch", dimension]}},
            "preprocessing": {"image_size": [height, width], "crop": data.get("crop"), "interpolation": interpolation,
                              "how": "RGB; crop (fractions top, left, bottom, right, or 'center': the largest centred box "
                                     f"of the image_size aspect ratio) if set, then {interpolation} resize (PIL) to "
                                     "image_size (xsearch.datamodules.transforms.load_image); normalisation is inside "
                                     "the graph"},
        })
        card["text"].update({
            "inputs": {n: {"dtype": "int64", "shape": ["batch", towers.text_length or "length"]}
                       for n in ("input_ids", "attention_mask")},
            "outputs": {"embeddings": {"dtype": "float32", "shape": ["batch", dimension]}},
            "tokenizer": {"folder": TOKENIZER_FOLDER, **towers.save_tokenizer(out_dir / TOKENIZER_FOLDER)},
        })
        write_text_atomic(out_dir / CARD_FILE, json.dumps(card, indent=2) + "\n")
    return card


@torch.no_grad()
def _score_parity(model: Any, images: Tensor, captions: list[list[str]], onnx_outputs: dict[str, list[np.ndarray]]) -> float:
    """Max ``|ONNX text @ ONNX image.T - model.similarity(encode_queries, encode_gallery)|``: ``images`` (N, 3, H, W)
    uint8 are the image checks in order, ``captions`` the text checks (the model tokenises them itself)."""
    gallery = model.encode_gallery({"image": images})
    onnx_images = np.concatenate(onnx_outputs["image"])
    worst = 0.0
    for texts, onnx_text in zip(captions, onnx_outputs["text"]):
        expected = model.similarity(model.encode_queries({"text": texts}), gallery).float().numpy()
        worst = max(worst, float(np.abs(onnx_text @ onnx_images.T - expected).max()))
    return worst


def _method_name(model: Any) -> str:
    return METHODS.name_of(type(model)) or type(model).__name__
