"""``RetrievalModule``: what every method shares.

A method implements ``encode_queries`` / ``encode_gallery`` (and optionally ``similarity``, ``encode_faces``)
plus ``training_losses``; this base runs evaluation (each loader of the split's protocols encoded once with the
encoder of its role -> the protocols of :mod:`xsearch.evaluation.protocol`), metric logging, the ranked-list picture at
test time, and the optimisers: declared ``optimizer_groups`` (:mod:`xsearch.optim`), or by default one optimiser with
backbone / new-module parameter groups and a warm-up + cosine schedule.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import lightning as L
import torch
from torch import nn

from xsearch.config_types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from xsearch.evaluation import EvaluationProtocol, EvaluationSuite, RankedLists, cosine_similarity
from xsearch.models.clock import EpochClock
from xsearch.models.export_contract import ExportTowers, ExportUnsupported
from xsearch.models.weights import checkpoint_mismatch, matching_tensors
from xsearch.optim import OptimizerGroup, build_optimization, default_group, default_parameter_groups, restricted
from xsearch.rankings import TOP_K
from xsearch.registry import OPTIMIZERS
from xsearch.seeding import derived_seed

log = logging.getLogger(__name__)


class RetrievalModule(L.LightningModule):
    """Base LightningModule of every retrieval method.

    Args:
        lr: learning rate of the pretrained backbones.
        new_module_lr_factor: multiplier of ``lr`` for modules the method adds (heads...).
        weight_decay: decoupled weight decay (biases and norms get none).
        optimizer: a name in :data:`~xsearch.registry.OPTIMIZERS` (``adamw``, ``adam`` or ``sgd``; SGD with
            momentum 0.9).
        adam_eps: Adam(W) epsilon (IRRA uses an unusually large 1e-3).
        bias_lr_factor: extra multiplier of the learning rate of biases and norm weights (IRRA: 2).
        warmup_epochs: linear warm-up from ``0.1 x lr`` (fractions allowed), then ``schedule``.
        schedule: ``cosine`` (to 0 at the last step) or ``constant``.
        optimizer_groups: optimisers and schedules per group of modules, each a mapping of
            :class:`~xsearch.optim.OptimizerGroup` fields (``name``, ``modules``, ``optimizer``, ``optimizer_args``,
            ``schedule``, ``schedule_args``, ``interval``, ``clip_grad_norm``). ``None``: one group of every
            parameter from ``lr``, ``new_module_lr_factor``, ``weight_decay``, ``optimizer``, ``adam_eps``,
            ``bias_lr_factor``, ``warmup_epochs`` and ``schedule`` (stepped per optimiser step). When given, those
            options only reach a group without ``modules`` (through :meth:`parameter_groups`).
        ks: the R@K cut-offs reported.
        visualize_queries: test queries drawn with their top-5 gallery images (0 = none).
        init_from: a checkpoint (of this method or another) whose tensors of matching name and shape
            initialise the model before training (e.g. TGFR's stage 2 from its stage 1); the others are
            listed in the log. Used by ``fit`` only: ``validate`` / ``test`` take their weights from
            ``--ckpt_path``, so a trained stage 2 is tested without its stage-1 file.
        on_nonfinite_loss: a NaN/Inf training loss ``stop``s the run (``FloatingPointError`` naming the epoch, step,
            every loss term and the batch's sample indexes) or is ``skip``ped (logged the same way, no optimiser
            step; ``train/skipped_steps`` counts them).

    Validation and test run the split's evaluation protocols (:mod:`xsearch.evaluation.protocol`), which the datamodule
    builds from its config (``eval_suites``; without a datamodule, identity retrieval of loader 0 against loader 1):
    this base encodes each loader's batches with the encoder of its role (:meth:`encoders`), logs what the protocols
    compute as ``<split>/<metric>``, prints their reports and writes the ranked lists of the one that ranks a gallery.

    Every training batch starts from torch's generator seeded by ``(run seed, epoch, batch, rank)`` (the run seed is
    ``seed_everything``'s, kept in checkpoints), so dropout, masking and any other random draw of a step does not
    depend on what ran before it: a run killed mid-epoch and resumed from ``last.ckpt`` repeats the uninterrupted
    run exactly (with :class:`~xsearch.datamodules.resumable.ResumableLoader`, which continues the epoch).

    Throughput (``train/samples_per_s``) and the share of time spent waiting for data
    (``train/data_wait_fraction``) are logged every epoch.
    """

    composed_queries: ClassVar[bool] = False
    """Whether ``encode_queries`` takes a ``reference_image`` ``(B, 3, H, W)`` uint8 besides the ``text`` (composed
    queries: reference image + modification text); ``xsearch search --image`` refuses methods without it."""
    image_interpolation: ClassVar[str] = "bicubic"
    """The resize filter of the method's reference code (``bicubic``: CLIP's preprocessing; IRRA's family:
    ``bilinear``); the method's configs set ``data.interpolation`` to it (checked by the tests)."""

    def __init__(
        self,
        lr: PositiveFloat = 1e-5,
        new_module_lr_factor: NonNegativeFloat = 5.0,
        weight_decay: NonNegativeFloat = 4e-5,
        optimizer: str = "adam",
        adam_eps: PositiveFloat = 1e-8,
        bias_lr_factor: NonNegativeFloat = 1.0,
        warmup_epochs: NonNegativeFloat = 5.0,
        schedule: Literal["cosine", "constant"] = "cosine",
        optimizer_groups: list[dict[str, Any]] | None = None,
        ks: tuple[PositiveInt, ...] = (1, 5, 10),
        visualize_queries: NonNegativeInt = 8,
        init_from: str | None = None,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # collects the subclass's arguments too
        OPTIMIZERS.get(optimizer)  # a KeyError naming the registered ones, before any training
        self._optimizer_groups = [OptimizerGroup.from_config(dict(entry)) for entry in optimizer_groups or []]
        self._gradient_clips: list[tuple[list[nn.Parameter], float]] = []
        self._suite = EvaluationSuite.default()  # the running evaluation's protocols (:meth:`_start_evaluation`)
        self._initialised_from: str | None = None
        self._run_seed: int | None = None

    # -- what a method provides --------------------------------------------------------
    def encode_queries(self, batch: dict[str, Any]) -> torch.Tensor:
        """Query batch (``text``...) -> ``(B, D)`` query embeddings."""
        raise NotImplementedError

    def encode_gallery(self, batch: dict[str, Any]) -> torch.Tensor:
        """Gallery batch (``image``...) -> ``(B, D)`` gallery embeddings."""
        raise NotImplementedError

    def similarity(self, query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor) -> torch.Tensor:
        """``(Q, D)``, ``(G, D)`` -> ``(Q, G)`` fp32 scores, higher = more similar. Cosine by default."""
        return cosine_similarity(query_embeddings, gallery_embeddings)

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Train batch -> named loss terms plus their weighted sum under ``"loss"``."""
        raise NotImplementedError

    def export_towers(self) -> ExportTowers:
        """The image and text towers for ONNX export (:class:`~xsearch.models.export_contract.ExportTowers`), whose
        outputs' cosine is this method's ranking score; raises
        :class:`~xsearch.models.export_contract.ExportUnsupported` saying why when there are none."""
        raise ExportUnsupported(f"{type(self).__name__} does not define its towers for ONNX export (export_towers)")

    def backbone_modules(self) -> list[nn.Module]:
        """Pretrained modules trained at ``lr``; every other parameter gets ``lr x new_module_lr_factor``."""
        return []

    def lr_factors(self) -> list[tuple[nn.Module, float]]:
        """Modules whose learning rate is ``lr x factor`` (e.g. a CNN tower trained faster than a text
        transformer, or margin heads); other backbone modules get ``lr``, other new modules
        ``lr x new_module_lr_factor``."""
        return []

    def encode_faces(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Face-sample batch (``image``, ``text``...) -> named ``(B, D)`` embeddings compared by cosine in the
        verification protocol. Default: the gallery (image) embedding."""
        return {"image": self.encode_gallery(batch)}

    def build_identity_modules(self, num_classes: int) -> None:
        """Create the modules sized by the number of training identities (ID classifier, centres...).

        Called once, with the datamodule's ``num_train_identities`` at fit time, or with the number
        stored in a checkpoint before its weights are loaded. Methods without such modules ignore it.
        """

    # -- identity-sized modules ----------------------------------------------------------
    def _ensure_identity_modules(self, num_classes: int) -> None:
        if getattr(self, "num_train_identities", None) is None:
            self.num_train_identities = int(num_classes)
            self.build_identity_modules(int(num_classes))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "num_train_identities"):
            self._ensure_identity_modules(datamodule.num_train_identities)
        if stage == "fit" and self.hparams.init_from and self._initialised_from != self.hparams.init_from:
            self.initialise_from(self.hparams.init_from)  # a resumed fit then restores its own checkpoint over it

    def initialise_from(self, path: str | Path) -> None:
        """Copy the tensors of a checkpoint whose name and shape match this model's; raise if none does.

        Loaded with ``weights_only=True`` (no code in the file runs)."""
        loadable, summary = matching_tensors(path, self.state_dict(), type(self).__name__)
        self.load_state_dict(loadable, strict=False)
        log.info("init_from %s: %s", path, summary)
        self._initialised_from = str(path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["num_train_identities"] = getattr(self, "num_train_identities", None)
        checkpoint["run_seed"] = self._run_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("run_seed") is not None:
            self._run_seed = int(checkpoint["run_seed"])
        if checkpoint.get("num_train_identities") is not None:
            self._ensure_identity_modules(checkpoint["num_train_identities"])
        self.adapt_checkpoint(checkpoint)
        problem = checkpoint_mismatch(checkpoint.get("state_dict", {}), self.state_dict(), type(self).__name__)
        if problem:
            raise ValueError(problem)

    def adapt_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop or rename what a compatible checkpoint holds that this model legitimately lacks (before the check)."""

    # -- training ----------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._clock = EpochClock()

    def on_train_start(self) -> None:
        self.on_train_epoch_start()  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self._run_seed is None:
            self._run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        torch.manual_seed(derived_seed(self._run_seed, self.current_epoch, batch_idx, self.global_rank))
        self._clock.batch_start()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        self._clock.batch_end(len(batch["pid"]))

    def on_train_epoch_end(self) -> None:
        if rates := self._clock.rates():
            self.log_dict(rates)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        terms = self.training_losses(batch)
        size = len(batch["pid"])
        if not bool(torch.isfinite(terms["loss"].detach())):
            values = ", ".join(f"{k} {float(v):.4g}" for k, v in terms.items())
            indexes = torch.as_tensor(batch["index"]).tolist() if "index" in batch else "unknown"
            message = (f"non-finite training loss at epoch {self.current_epoch}, global step {self.global_step} "
                       f"(batch {batch_idx}): {values}; sample indexes {indexes}")
            if self.hparams.on_nonfinite_loss == "stop":
                raise FloatingPointError(message + " (model.init_args.on_nonfinite_loss: skip skips such steps)")
            self._skipped_steps = getattr(self, "_skipped_steps", 0) + 1
            log.warning("%s: step skipped", message)
            self.log("train/skipped_steps", float(self._skipped_steps), on_step=True, on_epoch=False, batch_size=size)
            return None  # Lightning then skips backward and the optimiser step
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=size, prog_bar=False)
        self.log("loss", terms["loss"].detach(), batch_size=size, prog_bar=True, logger=False)
        return terms["loss"]

    # -- evaluation ----------------------------------------------------------------------
    def encoders(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """Evaluation role (:data:`~xsearch.evaluation.ROLES`) -> the encoder of its batches."""
        return {"queries": self.encode_queries, "gallery": self.encode_gallery, "faces": self.encode_faces,
                "entities": self.encode_queries}

    def _start_evaluation(self, split: str, top_k: int = 0) -> None:
        """Take the split's protocols (the datamodule's ``eval_suites``; without them, identity retrieval of loader 0
        against loader 1) and configure them with this method's ``ks`` and ``similarity``."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        self._suite = (getattr(datamodule, "eval_suites", None) or {}).get(split) or EvaluationSuite.default()
        self._suite.configure(self.hparams.ks, self.similarity, top_k, self.device)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation(getattr(self.trainer.datamodule, "eval_split", "val"))

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test", top_k=TOP_K)  # top-k: test_rankings.npz

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._suite.update(dataloader_idx, self.encoders(), batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._suite.update(dataloader_idx, self.encoders(), batch)

    def _log_evaluation(self, prefix: str) -> list[tuple[EvaluationProtocol, dict[str, float]]]:
        """Compute and log every protocol's metrics (``<prefix>/<name>``); each protocol with its metrics."""
        results = self._suite.compute()
        for _, values in results:
            self.log_dict({f"{prefix}/{k}": float(v) for k, v in values.items()}, add_dataloader_idx=False)
        return results

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            for protocol, values in self._log_evaluation("val"):  # the first headline metric on the progress bar
                if (name := next(iter(protocol.headline.summary), None)) in values:
                    self.log(f"val_{name}", float(values[name]), prog_bar=True, logger=False)
                    break
        self._suite.reset()

    def on_test_start(self) -> None:
        # on every rank: Trainer.log_dir is a collective under DDP, so rank 0 alone must not ask for it later
        self._run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def on_test_epoch_end(self) -> None:
        results = self._log_evaluation("test")
        if self.trainer.is_global_zero:
            for protocol, values in results:
                if text := protocol.report(values):
                    print(text)
            if ranked := next(((r, values) for protocol, values in results if (r := protocol.ranked_lists())), None):
                self._save_ranked_lists(*ranked)
        self._suite.reset()

    @torch.no_grad()
    def _save_ranked_lists(self, ranked: RankedLists, metrics: dict[str, float]) -> None:
        """Write every test query's top-10, AP and first-correct rank (the protocol's) to ``test_rankings.npz`` in the
        run folder, for ``xsearch inspect``; save (and log to W&B) the top-5 gallery images of a few test queries,
        correct ones outlined green."""
        from xsearch.rankings import save_ranked_lists
        from xsearch.registry import METHODS
        from xsearch.visualize import ranked_lists_grid

        datamodule = self.trainer.datamodule
        meta = {"method": METHODS.name_of(type(self)) or type(self).__name__,
                "dataset": str(getattr(datamodule, "benchmark", getattr(datamodule, "dataset", ""))),
                "checkpoint": str(self.trainer.ckpt_path or ""), "metrics": {k: float(v) for k, v in metrics.items()}}
        save_ranked_lists(ranked, meta, self.run_folder())
        if self.hparams.visualize_queries:
            figure, caption, count = ranked_lists_grid(ranked, self.hparams.visualize_queries, k=5)
            out = self.save_figure(figure, "test_top5.png", "test/top5", caption)
            log.info("ranked lists of %d test queries: %s", count, out)

    def run_folder(self) -> Path:
        """Where test outputs go: the log dir resolved at test start (the trainer's default root dir without one)."""
        return getattr(self, "_run_dir", None) or Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def save_figure(self, figure: Any, filename: str, key: str, caption: str) -> Path:
        """Save a PIL figure in the run folder and log it to every logger that takes images."""
        out = self.run_folder() / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.save(out)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[figure], caption=[caption])
        return out

    # -- optimisation (:mod:`xsearch.optim`) -------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone vs new-module learning rates; biases and 1-d params (norms) without weight decay."""
        hp = self.hparams
        return default_parameter_groups(self, self.backbone_modules(), self.lr_factors(), hp.lr, hp.new_module_lr_factor,
                                        hp.bias_lr_factor, hp.weight_decay)

    def optimizer_group_specs(self) -> list[OptimizerGroup]:
        """The optimiser groups this method trains with: the configured ``optimizer_groups``, else one group of
        every trainable parameter (:meth:`parameter_groups`) with ``optimizer`` at ``lr`` and the warm-up +
        ``schedule`` stepped per optimiser step. A method may override it to declare its own groups."""
        hp = self.hparams
        return self._optimizer_groups or [default_group(hp.optimizer, hp.lr, hp.adam_eps, hp.schedule, hp.warmup_epochs)]

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        optimization = build_optimization(self, self.optimizer_group_specs(),
                                          lambda keep: restricted(self.parameter_groups(), keep),
                                          steps=int(self.trainer.estimated_stepping_batches),
                                          epochs=self.trainer.max_epochs or 1)
        self._gradient_clips = optimization.clips
        return optimization.lightning()

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Each optimiser group's own ``clip_grad_norm`` (its parameters' norm), then the trainer's clip, if any."""
        for parameters, max_norm in self._gradient_clips:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
