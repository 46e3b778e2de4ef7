"""DDP with 2 gloo processes: gathered losses give the one-process gradient of the global batch; the identity sampler
gives every rank the same number of batches."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xsearch.datamodules.samplers import IdentityBatchSampler
from xsearch.distributed import all_gather_no_grad, all_gather_with_grad
from xsearch.losses.contrastive import info_nce, sdm_loss
from xsearch.losses.mnrl import difficulty_aware_mnrl

WORLD = 2
LOSSES = {
    "sdm": lambda image, text, pids: sdm_loss(image, text, pids, 50.0),
    "info_nce": lambda image, text, pids: info_nce(image, text, 20.0, pids),
    "mnrl": lambda image, text, pids: difficulty_aware_mnrl(text, image, pids, pids).loss,
}


def _batch():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 6, generator=generator), dim=1)
    text = torch.nn.functional.normalize(image + 0.5 * torch.randn(8, 6, generator=generator), dim=1)
    pids = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])
    return image, text, pids


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        image, text, pids = _batch()
        local = slice(rank * 4, rank * 4 + 4)  # each rank holds half of the global batch
        results = {}
        for name, loss_fn in LOSSES.items():
            image_local = image[local].clone().requires_grad_(True)
            text_local = text[local].clone().requires_grad_(True)
            loss = loss_fn(all_gather_with_grad(image_local), all_gather_with_grad(text_local), all_gather_no_grad(pids[local]))
            loss.backward()
            results[name] = (loss.detach(), image_local.grad / WORLD, text_local.grad / WORLD)  # / W: DDP's averaging
        mask = torch.tensor([True, False]) if rank == 0 else torch.tensor([False, True])
        results["mask"] = all_gather_no_grad(mask)  # a word mask (bool), as TGFR gathers
        try:
            all_gather_with_grad(torch.zeros(3 + rank, 2))
        except ValueError as error:
            results["error"] = str(error)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_gathered_losses_give_the_one_process_gradient_of_the_global_batch(tmp_path):
    out = str(tmp_path / "grads")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in range(WORLD)]
    image, text, pids = _batch()
    for name, loss_fn in LOSSES.items():
        image, text = image.detach().requires_grad_(True), text.detach().requires_grad_(True)
        loss = loss_fn(image, text, pids)
        loss.backward()
        for rank, result in enumerate(ranks):
            rank_loss, image_grad, text_grad = result[name]
            assert rank_loss == pytest.approx(loss.item(), abs=1e-6), name
            assert torch.allclose(image_grad, image.grad[rank * 4: rank * 4 + 4], atol=1e-6), name
            assert torch.allclose(text_grad, text.grad[rank * 4: rank * 4 + 4], atol=1e-6), name
    assert "needs one shape on every rank, got [(3, 2), (4, 2)]" in ranks[0]["error"]
    assert all(r["mask"].tolist() == [True, False, False, True] for r in ranks)


def test_without_a_process_group_gathering_is_the_identity():
    tensor = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(tensor) is tensor and all_gather_no_grad(tensor) is tensor


@pytest.mark.parametrize("total_samples", [40, 44, 52])
def test_identity_sampler_gives_every_rank_as_many_batches_and_its_own_share(total_samples):
    pids = [i // 4 for i in range(total_samples)]  # 4 samples per identity
    samplers = [IdentityBatchSampler(pids, ids_per_batch=2, instances=4, seed=0, num_replicas=3, rank=r) for r in range(3)]
    batches = [list(s) for s in samplers]
    assert len({len(b) for b in batches}) == 1 and all(len(b) == len(s) for b, s in zip(batches, samplers))
    assert len(batches[0]) == (total_samples // 8) // 3  # steps per epoch shrink with the world size
    seen = [tuple(batch) for rank in batches for batch in rank]
    assert len(seen) == len(set(seen))  # no batch on two ranks


def test_two_process_ddp_fit_and_test_give_the_one_process_metrics(tmp_path):
    """`xsearch fit` on 2 CPU processes (gloo DDP, gathered losses, identity sampler per rank), then `xsearch test`
    of its checkpoint on 2 processes and on 1: the same metrics."""
    import json
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    config = str(Path(__file__).parents[1] / "configs" / "tiny" / "dual_encoder.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    common = ["--config", config, "--data.root", str(tmp_path / "data"), "--results", str(tmp_path / "r.sqlite"),
              "--trainer.logger", "false", "--trainer.accelerator", "cpu"]
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]

    def xsearch(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "xsearch.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    xsearch("fit", *common, *ddp)
    checkpoint = str(tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt")
    xsearch("test", *common, *ddp, "--ckpt_path", checkpoint)
    xsearch("test", *common, "--trainer.devices", "1", "--ckpt_path", checkpoint)
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        two, one = (json.loads(row[0]) for row in db.execute("SELECT metrics FROM runs ORDER BY id"))
    assert set(two) >= {"R1", "R5", "R10", "mAP", "mINP", "i2t_R1"}
    assert two == pytest.approx(one, abs=1e-9)
