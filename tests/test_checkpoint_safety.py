"""Checkpoints: no code in a checkpoint file runs when it is loaded, and one that does not fit the model says why."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from xsearch.cli import main
from xsearch.models.base import checkpoint_mismatch

CONFIG = str(Path(__file__).parents[1] / "configs" / "tiny" / "dual_encoder.yaml")


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
    assert main(["test", "--config", CONFIG, "--data.root", str(tmp_path / "data"), "--trainer.logger", "false",
                 "--results", str(tmp_path / "r.sqlite"), "--ckpt_path", str(tmp_path / "evil.ckpt")]) == 2
    assert "xsearch: error: refusing to load a checkpoint that holds more than tensors" in capsys.readouterr().err
    assert not marker.exists()


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
