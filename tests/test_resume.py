"""Kill-and-resume: the training loader continues the epoch, every item and step is seeded by its place in the run,
checkpoints are written atomically; a `fit` killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` ends
with the uninterrupted run's weights and metrics."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from lightning.pytorch.plugins.io import TorchCheckpointIO

from xsearch.checkpoint_io import AtomicCheckpointIO
from xsearch.datamodules.resumable import ResumableLoader, SeededItems
from xsearch.datamodules.samplers import IdentityBatchSampler, ShuffledBatchSampler
from xsearch.datamodules.transforms import UnreadableImage

ROOT = Path(__file__).parents[1]


class RandomItems(Dataset):
    """Item i = (i, a draw from the global generator): shows which seed an item was drawn with."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "noise": torch.rand(())}


def _epoch(loader: ResumableLoader, epoch: int) -> list[tuple[list[int], list[float]]]:
    loader.batch_sampler.set_epoch(epoch)
    return [(b["index"].tolist(), b["noise"].tolist()) for b in loader]


def test_a_loader_resumed_mid_epoch_gives_the_rest_of_that_epoch_item_for_item():
    full = ResumableLoader(RandomItems(), ShuffledBatchSampler(40, 4, seed=3))
    first = _epoch(full, 0)
    assert len(first) == 10 and sorted(i for ids, _ in first for i in ids) == list(range(40))
    killed = ResumableLoader(RandomItems(), ShuffledBatchSampler(40, 4, seed=3))
    killed.batch_sampler.set_epoch(0)
    iterator = iter(killed)
    for _ in range(3):
        next(iterator)
    state = killed.state_dict()
    assert state == {"epoch": 0, "delivered": 3, "batches": 10}
    torch.manual_seed(12345)  # another process: whatever the global generator holds
    resumed = ResumableLoader(RandomItems(), ShuffledBatchSampler(40, 4, seed=3))
    resumed.load_state_dict(state)
    assert _epoch(resumed, 0) == first[3:]  # same items, same random draws
    assert resumed.state_dict()["delivered"] == 10
    assert _epoch(resumed, 1) == _epoch(full, 1) != first  # the next epoch starts at its first batch, a new order


def test_a_state_saved_at_the_end_of_an_epoch_skips_nothing_of_the_next():
    loader = ResumableLoader(RandomItems(), IdentityBatchSampler([i // 4 for i in range(40)], 2, 2, seed=1))
    _epoch(loader, 0)
    resumed = ResumableLoader(RandomItems(), IdentityBatchSampler([i // 4 for i in range(40)], 2, 2, seed=1))
    resumed.load_state_dict(loader.state_dict())
    assert _epoch(resumed, 1) == _epoch(loader, 1) and len(_epoch(loader, 1)) == 10


def test_a_state_from_a_loader_of_another_length_is_ignored_with_a_warning(caplog):
    loader = ResumableLoader(RandomItems(), ShuffledBatchSampler(40, 4, seed=0))
    loader.load_state_dict({"epoch": 0, "delivered": 3, "batches": 7})
    assert len(_epoch(loader, 0)) == 10 and "had 7 batches, this loader has 10" in caplog.text


def test_items_do_not_depend_on_workers_or_on_the_global_generator():
    torch.manual_seed(0)
    main = _epoch(ResumableLoader(RandomItems(), ShuffledBatchSampler(40, 4, seed=5)), 2)
    torch.manual_seed(1)
    workers = _epoch(ResumableLoader(RandomItems(), ShuffledBatchSampler(40, 4, seed=5), num_workers=2), 2)
    assert main == workers
    other_seed = _epoch(ResumableLoader(RandomItems(), ShuffledBatchSampler(40, 4, seed=6)), 2)
    assert other_seed != main


def test_seeded_items_leave_the_global_generator_alone():
    items = SeededItems(RandomItems())
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a, b = items[(5, 99)], items[(5, 99)]
    assert a["noise"] == b["noise"] and items[(5, 100)]["noise"] != a["noise"]
    assert torch.equal(torch.rand(3), expected)


def test_shuffled_sampler_shards_ranks_disjointly_with_equal_counts():
    ranks = [list(ShuffledBatchSampler(42, 4, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # 10 full batches of 4 (2 samples dropped)
    seen = [i for rank in ranks for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 40
    with pytest.raises(ValueError, match="batch_size=50 exceeds the 42 training samples"):
        ShuffledBatchSampler(42, 50)


@pytest.mark.parametrize("io_class", [AtomicCheckpointIO, TorchCheckpointIO])
def test_an_interrupted_checkpoint_write_leaves_the_previous_file_whole(tmp_path, monkeypatch, io_class):
    import lightning.fabric.plugins.io.torch_io as torch_io

    path = tmp_path / "last.ckpt"
    io_class().save_checkpoint({"step": 1}, path)

    def killed(checkpoint, filepath):  # the write dies halfway (fsspec's "transaction" is a copy from /tmp when
        Path(filepath).write_bytes(path.read_bytes()[:40])  # /tmp is another file system, as on most machines)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_io, "_atomic_save", killed)
    with pytest.raises(KeyboardInterrupt):
        io_class().save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    if io_class is TorchCheckpointIO:  # Lightning's own: the truncated file is what --ckpt_path last would find
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)
        return
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


# --------------------------------------------------------------------------------------------------------------------
# the real thing: xsearch fit, SIGKILL mid-epoch, xsearch fit --ckpt_path last
# --------------------------------------------------------------------------------------------------------------------
def _fit(tmp_path: Path, run: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "XSEARCH_DATA": str(tmp_path / "data"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / run
    args = [sys.executable, "-m", "xsearch.cli", "fit", "--config", str(ROOT / "configs" / "tiny" / "dual_encoder.yaml"),
            "--trainer.max_epochs", "2", "--trainer.deterministic", "true", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(out), "--checkpoint.dirpath", str(out / "checkpoints"),
            "--data.generate", "{identities: 40, seed: 0}", "--data.sampler", "random",
            "--model.init_args.projection_dropout", "0.3",  # random draws in the model's step too: seeded per step
            "--last_every_n_steps", "3", "--test_after_fit", "true", "--results", str(tmp_path / f"{run}.sqlite"), *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _result(tmp_path: Path, run: str) -> tuple[dict, dict[str, torch.Tensor], int]:
    with sqlite3.connect(tmp_path / f"{run}.sqlite") as db:
        (metrics,) = db.execute("select metrics from runs").fetchone()
    checkpoint = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
    return json.loads(metrics), checkpoint["state_dict"], checkpoint["global_step"]


def test_a_fit_killed_mid_epoch_and_resumed_from_last_ends_like_the_uninterrupted_run(tmp_path):
    whole = _fit(tmp_path, "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    metrics, weights, steps = _result(tmp_path, "whole")
    per_epoch = steps // 2
    kill_at = per_epoch + 4  # 4 steps into the second epoch; last.ckpt holds step per_epoch + 3
    assert per_epoch >= 6
    killed = _fit(tmp_path, "killed", "--trainer.callbacks+={'class_path': 'kill_switch.KillAt', 'init_args': {'step': %d}}" % kill_at)
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] % per_epoch != 0  # the checkpoint it resumes from is mid-epoch
    resumed = _fit(tmp_path, "killed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming epoch 1 at batch {saved['global_step'] - per_epoch}" in resumed.stderr
    again, resumed_weights, resumed_steps = _result(tmp_path, "killed")
    assert resumed_steps == steps
    assert again == metrics
    assert all(torch.equal(resumed_weights[k], weights[k]) for k in weights)
