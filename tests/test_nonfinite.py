"""A NaN training loss stops the run with the step, the loss terms and the batch's samples, or is skipped."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xsearch.cli import main
from xsearch.models import DualEncoder

CONFIG = str(Path(__file__).parents[1] / "configs" / "tiny" / "dual_encoder.yaml")


@pytest.fixture
def nan_on_second_step(monkeypatch):
    real = DualEncoder.training_losses
    calls = []

    def losses(self, batch):
        terms = real(self, batch)
        calls.append(1)
        if len(calls) == 2:
            terms["sdm"] = terms["sdm"] * float("nan")
            terms["loss"] = terms["loss"] + terms["sdm"]
        return terms

    monkeypatch.setattr(DualEncoder, "training_losses", losses)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["stop", "skip"])
def test_a_nan_loss_stops_or_is_skipped(option, tmp_path, monkeypatch, capsys, nan_on_second_step):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", CONFIG, "--data.root", str(tmp_path / "data"), "--trainer.logger", "false",
            "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
            "--model.init_args.on_nonfinite_loss", option, "--results", str(tmp_path / "r.sqlite")]
    backward_calls = []
    real_backward = DualEncoder.backward
    monkeypatch.setattr(DualEncoder, "backward", lambda self, loss, *a, **k: backward_calls.append(1) or real_backward(self, loss, *a, **k))
    code = main(args)
    if option == "stop":
        assert code == 2
        err = capsys.readouterr().err
        assert "xsearch: error: non-finite training loss at epoch 0, global step 1 (batch 1): itc " in err
        assert ", sdm nan, " in err and ", loss nan" in err and "sample indexes [" in err and "on_nonfinite_loss: skip" in err
    else:
        assert code == 0
        assert len(backward_calls) == 2  # 3 batches, the NaN one skipped: no backward, so no update
        checkpoint = torch.load(tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)
        assert all(bool(torch.isfinite(v).all()) for v in checkpoint["state_dict"].values() if v.is_floating_point())
