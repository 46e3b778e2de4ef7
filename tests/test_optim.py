"""Optimiser groups (xsearch.optim): the default single optimiser equals the one before groups existed, TGFR's
per-stage optimisers and schedules, the composite optimiser's state round trip, per-group gradient clipping."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import instantiate_module
from lightning.pytorch.plugins.precision import Precision
from torch import nn

from xsearch.models import RetrievalModule
from xsearch.optim import GroupSchedule, MultiOptimizer, OptimizerGroup, build_optimization

CONFIGS = Path(__file__).parents[1] / "configs"


class Toy(RetrievalModule):
    """A pretrained-looking backbone (with a norm), a new head, a module at its own lr factor, a frozen module."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 3)
        self.fast = nn.Linear(3, 3)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def lr_factors(self) -> list[tuple[nn.Module, float]]:
        return [(self.fast, 3.0)]


def _with_trainer(model: RetrievalModule, steps: int, epochs: int) -> RetrievalModule:
    model._trainer = SimpleNamespace(estimated_stepping_batches=steps, max_epochs=epochs, gradient_clip_val=None,
                                     gradient_clip_algorithm=None, precision_plugin=Precision())
    return model


def _previous(model: RetrievalModule) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``RetrievalModule.configure_optimizers`` as it was before optimiser groups (one optimiser, if-chain)."""
    hp = model.hparams
    groups = model.parameter_groups()
    if hp.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=0.9)
    else:
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        optimizer = optimizer_class(groups, lr=hp.lr, betas=(0.9, 0.999), eps=hp.adam_eps, fused=fused)
    total = max(1, int(model.trainer.estimated_stepping_batches))
    steps_per_epoch = total / max(1, model.trainer.max_epochs or 1)
    warmup = min(total - 1, int(hp.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / max(1, warmup)
        if hp.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _settings(group: dict) -> dict:
    return {k: v for k, v in group.items() if k != "params"}


@pytest.mark.parametrize("optimizer, schedule, warmup", [("adam", "cosine", 1.5), ("adamw", "constant", 0.25),
                                                         ("sgd", "cosine", 0.0), ("adamw", "cosine", 5.0)])
def test_the_default_single_optimiser_is_the_one_before_groups(optimizer, schedule, warmup):
    hparams = dict(lr=3e-4, new_module_lr_factor=5.0, weight_decay=0.02, optimizer=optimizer, adam_eps=1e-3,
                   bias_lr_factor=2.0, warmup_epochs=warmup, schedule=schedule)
    new_model, old_model = _with_trainer(Toy(**hparams), 40, 4), _with_trainer(Toy(**hparams), 40, 4)
    old_model.load_state_dict(new_model.state_dict())
    (new,), schedulers = new_model.configure_optimizers()
    old, old_scheduler = _previous(old_model)
    assert type(new) is type(old) and new.defaults == old.defaults
    assert [_settings(g) for g in new.param_groups] == [_settings(g) for g in old.param_groups]  # lr, betas, eps, fused...
    names = dict(new_model.named_parameters())
    old_names = {id(p): n for n, p in old_model.named_parameters()}
    assert [[names[old_names[id(p)]] is q for p, q in zip(g_old["params"], g_new["params"])] for g_old, g_new in
            zip(old.param_groups, new.param_groups)] == [[True] * len(g["params"]) for g in new.param_groups]
    assert [s["interval"] for s in schedulers] == ["step"] and new_model._gradient_clips == []
    scheduler = schedulers[0]["scheduler"]
    for _ in range(45):  # past the end: the factor stays at its last value
        assert [g["lr"] for g in new.param_groups] == [g["lr"] for g in old.param_groups]  # bit for bit
        new.step(), old.step()
        scheduler.step(), old_scheduler.step()


def _tgfr(stage: str) -> RetrievalModule:
    """TGFR of the tiny config (configs/tiny/tgfr.yaml) in ``stage``, with 5 training identities."""
    config = yaml.safe_load((CONFIGS / "tiny" / "tgfr.yaml").read_text())["model"]
    torch.manual_seed(0)
    model = instantiate_module(RetrievalModule, {"_class_path": config["class_path"], **config["init_args"], "stage": stage})
    model.build_identity_modules(5)
    return _with_trainer(model, steps=30, epochs=36)


def _trainable(*modules: nn.Module) -> set[int]:
    return {id(p) for m in modules for p in m.parameters() if p.requires_grad}


def _epochs(schedulers: list[dict], count: int) -> None:
    (epoch,) = [s["scheduler"] for s in schedulers if s["interval"] == "epoch"]
    for _ in range(count):
        epoch.optimizer.step()  # no gradients: nothing moves, but torch wants a step before the schedule's
        epoch.step()


def test_tgfr_stage_1_trains_with_the_authors_three_optimisers():
    model = _tgfr("align")
    (optimizer,), schedulers = model.configure_optimizers()
    assert isinstance(optimizer, MultiOptimizer) and [s["interval"] for s in schedulers] == ["epoch"]
    bert, heads, margin = optimizer.optimizers
    assert {id(p) for g in bert.param_groups for p in g["params"]} == _trainable(model.text_encoder)
    assert {id(p) for g in heads.param_groups for p in g["params"]} == _trainable(model.text_head, model.image_head)
    assert {id(p) for g in margin.param_groups for p in g["params"]} == _trainable(model.text_arcface, model.image_arcface)
    assert not _trainable(model.face_encoder)  # frozen, in no group
    (b,), (h,), (m,) = bert.param_groups, heads.param_groups, margin.param_groups
    assert type(bert) is torch.optim.Adam and (b["lr"], b["betas"], b["weight_decay"], b["eps"]) == (2e-5, (0.9, 0.999), 0.01, 1e-8)
    assert type(heads) is torch.optim.Adam and (h["lr"], h["betas"], h["weight_decay"]) == (1e-3, (0.5, 0.999), 0.0)
    assert type(margin) is torch.optim.SGD and (m["lr"], m["momentum"], m["weight_decay"]) == (0.1, 0.9, 5e-5)
    assert [(len(params), norm) for params, norm in model._gradient_clips] == [(len(b["params"]), 1.0)]  # BERT's, before the step
    expected = {0: (0.1, 1.0), 2: (0.1, 0.98 ** 2), 3: (0.01, 0.98 ** 3), 7: (0.01, 0.98 ** 7), 8: (1e-3, 0.98 ** 8),
                19: (1e-3, 0.98 ** 19)}
    done = 0
    for epoch, (margin_lr, heads_factor) in expected.items():  # epoch e trains at the rates after e epoch steps
        _epochs(schedulers, epoch - done)
        done = epoch
        assert m["lr"] == pytest.approx(margin_lr, rel=1e-12) and h["lr"] == pytest.approx(1e-3 * heads_factor, rel=1e-12)
        assert b["lr"] == 2e-5  # constant


def test_tgfr_stage_2_trains_with_the_authors_three_optimisers():
    model = _tgfr("fuse")
    (optimizer,), schedulers = model.configure_optimizers()
    margin, bert, heads = optimizer.optimizers
    assert {id(p) for g in margin.param_groups for p in g["params"]} == _trainable(model.fused_arcface)
    assert {id(p) for g in bert.param_groups for p in g["params"]} == _trainable(model.text_encoder)
    assert {id(p) for g in heads.param_groups for p in g["params"]} == _trainable(model.text_head, model.image_head, model.fusion)
    (m,), (b,), (h,) = margin.param_groups, bert.param_groups, heads.param_groups
    assert type(margin) is torch.optim.SGD and (m["lr"], m["momentum"], m["weight_decay"]) == (0.1, 0.0, 5e-4)
    assert type(bert) is torch.optim.Adam and (b["lr"], b["betas"], b["weight_decay"]) == (1e-5, (0.9, 0.999), 0.01)
    assert type(heads) is torch.optim.Adam and (h["lr"], h["betas"], h["weight_decay"]) == (1e-3, (0.9, 0.999), 5e-5)
    assert model._gradient_clips == []
    _epochs(schedulers, 4)
    assert (m["lr"], b["lr"], h["lr"]) == (0.1, 1e-5, 1e-3)
    _epochs(schedulers, 1)  # epoch 5
    assert (m["lr"], b["lr"], h["lr"]) == pytest.approx((0.06, 1e-5, 0.97e-3), rel=1e-12)
    _epochs(schedulers, 6)  # epoch 11
    assert (m["lr"], b["lr"], h["lr"]) == pytest.approx((0.1 * 0.6 ** 2, 0.8e-5, 1e-3 * 0.97 ** 2), rel=1e-12)


def test_tgfr_stage_face_keeps_the_single_optimiser_and_configured_groups_win():
    model = _tgfr("face")
    (optimizer,), schedulers = model.configure_optimizers()
    assert type(optimizer).__name__.lower() == model.hparams.optimizer and [s["interval"] for s in schedulers] == ["step"]
    config = yaml.safe_load((CONFIGS / "tiny" / "tgfr.yaml").read_text())["model"]
    groups = [{"name": "all", "optimizer": "adam", "optimizer_args": {"lr": 1e-4}}]
    model = instantiate_module(RetrievalModule, {"_class_path": config["class_path"], **config["init_args"], "optimizer_groups": groups})
    model.build_identity_modules(5)
    (optimizer,), _ = _with_trainer(model, 30, 2).configure_optimizers()
    hp = model.hparams
    assert type(optimizer) is torch.optim.Adam and {g["lr"] for g in optimizer.param_groups} == {hp.lr, hp.lr * hp.new_module_lr_factor}


def _two_groups(model: nn.Module, **extra) -> list[OptimizerGroup]:
    return [OptimizerGroup("first", "sgd", {"lr": 0.1, "momentum": 0.9}, ["0"], "multistep", {"milestones": [1], "gamma": 0.5}, **extra),
            OptimizerGroup("second", "adam", {"lr": 1e-2, "betas": [0.5, 0.999]}, ["1"], "warmup_cosine", {"warmup_epochs": 1}, "step")]


def _train(optimization, model: nn.Module, steps: int) -> None:
    for _ in range(steps):
        optimization.optimizer.zero_grad()
        model(torch.ones(2, 3)).pow(2).sum().backward()
        optimization.optimizer.step()
        for schedule, _ in optimization.schedules:
            schedule.step()


def test_multi_optimizer_state_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    optimization = build_optimization(model, _two_groups(model), lambda keep: [], steps=8, epochs=2)
    assert [(s.factors.keys(), interval) for s, interval in optimization.schedules] == [({1}, "step"), ({0}, "epoch")]
    _train(optimization, model, 3)
    saved = copy.deepcopy({"optimizer": optimization.optimizer.state_dict(), "model": model.state_dict(),
                           "schedules": [s.state_dict() for s, _ in optimization.schedules]})  # what a checkpoint holds
    assert "factors" not in saved["schedules"][0] and len(saved["optimizer"]["optimizers"]) == 2
    _train(optimization, model, 2)
    expected = [g["lr"] for g in optimization.optimizer.param_groups], {k: v.clone() for k, v in model.state_dict().items()}

    resumed = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    resumed.load_state_dict(saved["model"])
    again = build_optimization(resumed, _two_groups(resumed), lambda keep: [], steps=8, epochs=2)
    again.optimizer.load_state_dict(saved["optimizer"])
    for (schedule, _), state in zip(again.schedules, saved["schedules"]):
        schedule.load_state_dict(state)
    assert again.optimizer.param_groups[0] is again.optimizer.optimizers[0].param_groups[0]  # relinked after loading
    assert {id(p) for p in again.optimizer.state} == {id(p) for p in resumed.parameters()}  # momentum, Adam moments
    _train(again, resumed, 2)
    assert [g["lr"] for g in again.optimizer.param_groups] == expected[0]
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, expected[1][key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="steps 2 optimisers .* holds the state of one optimiser"):
        again.optimizer.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


def test_group_clip_is_applied_before_the_step_and_declarations_are_checked():
    model = _with_trainer(Toy(optimizer_groups=[
        {"name": "backbone", "modules": ["backbone"], "optimizer": "adam", "optimizer_args": {"lr": 1e-3}, "clip_grad_norm": 0.5},
        {"name": "rest", "optimizer": "sgd", "optimizer_args": {"lr": 0.1}}]), 10, 2)
    (optimizer,), _ = model.configure_optimizers()
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "new", "new_no_decay", "new_x3", "new_x3_no_decay"]
    model.zero_grad()
    (model.fast(model.head(model.backbone(torch.ones(2, 4)))) * 100).sum().backward()
    head_grad = model.head.weight.grad.clone()
    model.configure_gradient_clipping(optimizer)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.backbone.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-5)
    torch.testing.assert_close(model.head.weight.grad, head_grad)  # the other group untouched
    with pytest.raises(ValueError, match=r"no parameter under 'heads'; the model's modules: \['backbone', 'fast', 'frozen', 'head'\]"):
        _with_trainer(Toy(optimizer_groups=[{"name": "x", "modules": ["heads"], "optimizer": "adam",
                                             "optimizer_args": {"lr": 1.0}}]), 10, 2).configure_optimizers()
    with pytest.raises(ValueError, match=r"trainable parameters are in no optimizer group \(e\.g\. \['fast\.weight'"):
        _with_trainer(Toy(optimizer_groups=[{"name": "x", "modules": ["backbone", "head"], "optimizer": "adam",
                                             "optimizer_args": {"lr": 1.0}}]), 10, 2).configure_optimizers()
    with pytest.raises(ValueError, match="unknown keys \\['lr'\\]"):
        Toy(optimizer_groups=[{"name": "x", "optimizer": "adam", "lr": 1.0}])
    with pytest.raises(KeyError, match="unknown schedule 'cosine'; registered: constant, exponential"):
        Toy(optimizer_groups=[{"name": "x", "optimizer": "adam", "schedule": "cosine"}])
    with pytest.raises(KeyError, match="unknown optimizer 'lamb'"):
        Toy(optimizer="lamb")
    with pytest.raises(ValueError, match=r"group 'x': sgd takes \['lr', 'momentum', 'weight_decay', 'nesterov'\]"):
        _with_trainer(Toy(optimizer_groups=[{"name": "x", "optimizer": "sgd", "optimizer_args": {"lr": 1.0, "betas": [0.9, 0.9]}}]),
                      10, 2).configure_optimizers()


def test_schedules_equal_torchs():
    model = nn.Linear(2, 2)
    for name, args, reference in [("step", {"step_size": 5, "gamma": 0.6}, lambda o: torch.optim.lr_scheduler.StepLR(o, 5, 0.6)),
                                  ("multistep", {"milestones": [8, 3], "gamma": 0.1}, lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 8], 0.1)),
                                  ("exponential", {"gamma": 0.98}, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.98))]:
        ours = build_optimization(model, [OptimizerGroup("g", "sgd", {"lr": 0.5}, None, name, args)],
                                  lambda keep: [{"params": list(model.parameters())}], steps=1, epochs=1)
        theirs = torch.optim.SGD(model.parameters(), lr=0.5)
        torch_schedule = reference(theirs)
        (schedule, _), = ours.schedules
        assert isinstance(schedule, GroupSchedule)
        for _ in range(25):
            assert ours.optimizer.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)
            ours.optimizer.step(), theirs.step()
            schedule.step(), torch_schedule.step()


class Regressor(Toy):
    """:class:`Toy` with a loss, trained by Lightning on :class:`Points`."""

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.fast(self.head(self.backbone(batch["x"])))
        return {"loss": (out - batch["y"]).pow(2).mean()}


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(4, generator=g), "y": torch.randn(3, generator=g), "pid": i}


GROUPS = [{"name": "backbone", "modules": ["backbone"], "optimizer": "adam", "optimizer_args": {"lr": 1e-2},
           "schedule": "warmup_cosine", "schedule_args": {"warmup_epochs": 1}, "interval": "step", "clip_grad_norm": 0.1},
          {"name": "rest", "optimizer": "sgd", "optimizer_args": {"lr": 0.05, "momentum": 0.9},
           "schedule": "multistep", "schedule_args": {"milestones": [1], "gamma": 0.5}}]


class StopAfter(L.Callback):
    """Ends a fit after ``epochs`` epochs (the run keeps its max_epochs, so its schedules' horizons)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = trainer.should_stop or trainer.current_epoch + 1 >= self.epochs


def _fit(root: Path, stop_after: int = 3, resume: Path | None = None) -> Regressor:
    torch.manual_seed(0)
    model = Regressor(optimizer_groups=GROUPS, visualize_queries=0)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
                        callbacks=[ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}"), StopAfter(stop_after)])
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(Points(), batch_size=4), ckpt_path=resume)
    return model


def test_two_optimisers_train_save_and_resume_through_lightning(tmp_path):
    L.seed_everything(0)
    whole = _fit(tmp_path / "whole")
    _fit(tmp_path / "cut", stop_after=2)
    assert not (tmp_path / "cut" / "epoch=2.ckpt").exists()
    checkpoint = torch.load(tmp_path / "cut" / "epoch=1.ckpt", weights_only=False)
    assert len(checkpoint["optimizer_states"][0]["optimizers"]) == 2 and len(checkpoint["lr_schedulers"]) == 2
    assert [s["last_epoch"] for s in checkpoint["lr_schedulers"]] == [6, 2]  # 6 steps (warm-up + cosine), 2 epochs
    resumed = _fit(tmp_path / "resumed", resume=tmp_path / "cut" / "epoch=1.ckpt")
    for (name, ours), theirs in zip(resumed.state_dict().items(), whole.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    groups = resumed.trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == [g["lr"] for g in whole.trainer.optimizers[0].param_groups]
    assert groups[0]["lr"] == pytest.approx(0.0) and [g["lr"] for g in groups[1:]] == [g["initial_lr"] * 0.5 for g in groups[1:]]
