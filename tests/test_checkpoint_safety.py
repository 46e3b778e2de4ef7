"""Checkpoints: no code in a checkpoint file runs when it is loaded, and one that does not fit the model says why."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from xsearch.cli import main
from xsearch.models.base import checkpoint_mismatch
from xsearch.models.checkpoint import INSTANTIATOR, registered_class
from xsearch.registry import METHODS, TOWERS

CONFIG = str(Path(__file__).parents[1] / "configs" / "tiny" / "dual_encoder.yaml")


def _exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit code: returned, or raised as :class:`SystemExit` by the LightningCLI commands."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


class _Payload:
    """Pickles to a call that creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, tmp_path / "evil.ckpt")
    assert _exit_code(["test", "--config", CONFIG, "--data.root", str(tmp_path / "data"), "--trainer.logger", "false",
                       "--results", str(tmp_path / "r.sqlite"), "--ckpt_path", str(tmp_path / "evil.ckpt")]) == 2
    assert capsys.readouterr().err.endswith(
        f"xsearch test: error: --ckpt_path: {tmp_path / 'evil.ckpt'}: refusing a checkpoint that holds more than tensors "
        "and plain values (weights_only: no code in a checkpoint runs; it names exec)\n")
    assert not marker.exists()


def _probe_module(folder: Path, monkeypatch) -> Path:
    """A module ``xsearch_probe`` on ``sys.path`` that leaves a marker file when imported; returns the marker."""
    marker = folder / "imported"
    (folder / "xsearch_probe.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Tower:\n    pass\n")
    monkeypatch.syspath_prepend(str(folder))
    return marker


@pytest.mark.parametrize("command", ["index", "encode", "export"])
@pytest.mark.parametrize("where", ["image_encoder.class_path", "_instantiator"])
def test_a_checkpoint_naming_an_unregistered_class_is_refused_before_any_import(tmp_path, monkeypatch, capsys, command,
                                                                                where):
    marker = _probe_module(tmp_path, monkeypatch)
    hparams = {"_class_path": "xsearch.models.DualEncoder", "_instantiator": INSTANTIATOR,
               "image_encoder": {"class_path": "xsearch.models.ImageEncoder", "init_args": {"name": "test_efficientnet"}}}
    if where == "_instantiator":
        hparams["_instantiator"] = "xsearch_probe.Tower"
    else:
        hparams["image_encoder"]["class_path"] = "xsearch_probe.Tower"
    checkpoint = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": hparams,
                "datamodule_hyper_parameters": {"image_size": [64, 32], "crop": None}}, checkpoint)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 64)).save(tmp_path / "images" / "a.png")
    args = {"index": ["--images", str(tmp_path / "images"), "--out", str(tmp_path / "index"), "--workers", "0"],
            "encode": ["--images", str(tmp_path / "images"), "--out", str(tmp_path / "e.safetensors"), "--workers", "0"],
            "export": ["--onnx", str(tmp_path / "onnx")]}[command]
    assert main([command, "--ckpt", str(checkpoint), *args]) == 2
    err = capsys.readouterr().err
    if where == "_instantiator":
        assert err == (f"xsearch: error: {checkpoint.absolute() if command != 'export' else checkpoint}: "
                       f"hyper_parameters._instantiator 'xsearch_probe.Tower' is not {INSTANTIATOR}: refused before "
                       "importing anything\n")
    else:
        assert err.startswith(f"xsearch: error: {checkpoint.absolute() if command != 'export' else checkpoint}: "
                              "hyper_parameters.image_encoder.class_path 'xsearch_probe.Tower' is not a registered "
                              "xsearch class: refused before importing anything (methods: xsearch.models.CMSN, ")
        assert "towers: xsearch.models.CLIPTowers, xsearch.models.IResNet, xsearch.models.ImageEncoder" in err
        assert len(err.splitlines()) == 1
    assert not marker.exists() and "xsearch_probe" not in sys.modules
    assert not any((tmp_path / name).exists() for name in ("index", "e.safetensors", "onnx"))


def test_every_registered_class_is_accepted_and_a_registered_name_is_found_in_reverse():
    for registry in (METHODS, TOWERS):
        for name, cls in registry.items():
            assert registered_class(f"xsearch.models.{cls.__name__}") is cls
            assert registered_class(f"{cls.__module__}.{cls.__qualname__}") is cls
            assert registry.name_of(cls) == name
    assert registered_class("xsearch.models.base.RetrievalModule") is None  # not a registered method
    assert registered_class("torch.nn.Linear") is None and METHODS.name_of(torch.nn.Linear) is None


@pytest.mark.parametrize("damage", ["empty", "text", "truncated", "missing"])
def test_a_ckpt_path_that_is_no_checkpoint_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys, damage):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{damage}.ckpt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("epoch 3, best R1 54.3\n")
    elif damage == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "whole.ckpt")
        path.write_bytes((tmp_path / "whole.ckpt").read_bytes()[:2000])
    reason = {"empty": "not a readable PyTorch checkpoint (the file is empty)",
              "text": "not a readable PyTorch checkpoint (not the zip archive torch.save writes: truncated, or another "
                      "kind of file)",
              "missing": None}
    reason["truncated"] = reason["text"]
    expected = (f"--ckpt_path: checkpoint {path} does not exist (or is not a file)" if damage == "missing"
                else f"--ckpt_path: {path}: {reason[damage]}")
    for subcommand in ("test", "validate"):
        assert _exit_code([subcommand, "--config", CONFIG, "--data.root", str(tmp_path / "data"), "--trainer.logger", "false",
                           "--results", str(tmp_path / "r.sqlite"), "--ckpt_path", str(path)]) == 2
        assert capsys.readouterr().err.endswith(f"xsearch {subcommand}: error: {expected}\n")  # after "Seed set to 0"
    assert main(["export", "--ckpt", str(path), "--onnx", str(tmp_path / "onnx")]) == 2
    assert capsys.readouterr().err == f"xsearch: error: {expected.removeprefix('--ckpt_path: ')}\n"
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()  # nothing generated, built or run


def test_mismatch_lists_missing_unexpected_and_reshaped_tensors():
    own = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4), "c": torch.zeros(1)}
    theirs = {"a.weight": torch.zeros(2, 5), "b.weight": torch.zeros(4), "d": torch.zeros(1)}
    message = checkpoint_mismatch(theirs, own, "IRRA")
    assert message.startswith("the checkpoint does not fit this IRRA (1 of the model's tensors are not in it (e.g. ['c']); "
                              "1 of its tensors are not in the model (e.g. ['d']); shapes differ: a.weight checkpoint "
                              "(2, 5) vs model (2, 3))")
    assert "--model.init_args.init_from" in message
    assert checkpoint_mismatch(own, own, "IRRA") is None


@pytest.mark.slow
def test_testing_another_configuration_s_checkpoint_names_the_mismatch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["--config", CONFIG, "--data.root", str(tmp_path / "data"), "--trainer.logger", "false",
              "--results", str(tmp_path / "r.sqlite")]
    assert main(["fit", *common, "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]) == 0
    checkpoint = str(tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert main(["test", *common, "--model.init_args.embed_dim", "16", "--ckpt_path", checkpoint]) == 2
    err = capsys.readouterr().err
    assert re.search(r"xsearch: error: the checkpoint does not fit this DualEncoder \(shapes differ: .*checkpoint \(32,\) "
                     r"vs model \(16,\)", err), err
