"""``RetrievalModule``: what every method shares.

A method implements ``encode_queries`` / ``encode_gallery`` (and optionally ``similarity``)
plus ``training_losses``; this base owns evaluation (encode queries and gallery once ->
similarity -> ``xsearch.evaluation``), metric logging, the ranked-list picture at test time,
and the optimiser with backbone / new-module parameter groups and a warm-up + cosine schedule.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from xsearch.datamodules.base import GALLERY, QUERIES
from xsearch.evaluation import RetrievalMetric, cosine_similarity

log = logging.getLogger(__name__)


class RetrievalModule(L.LightningModule):
    """Base LightningModule of every retrieval method.

    Args:
        lr: learning rate of the pretrained backbones.
        new_module_lr_factor: multiplier of ``lr`` for modules the method adds (heads...).
        weight_decay: decoupled weight decay (biases and norms get none).
        optimizer: ``adamw``, ``adam`` or ``sgd``.
        adam_eps: Adam(W) epsilon (IRRA uses an unusually large 1e-3).
        bias_lr_factor: extra multiplier of the learning rate of biases and norm weights (IRRA: 2).
        warmup_epochs: linear warm-up from ``0.1 x lr`` (fractions allowed), then ``schedule``.
        schedule: ``cosine`` (to 0 at the last step) or ``constant``.
        ks: the R@K cut-offs reported.
        visualize_queries: test queries drawn with their top-5 gallery images (0 = none).

    Throughput (``train/samples_per_s``) and the share of time spent waiting for data
    (``train/data_wait_fraction``) are logged every epoch.
    """

    def __init__(
        self,
        lr: float = 1e-5,
        new_module_lr_factor: float = 5.0,
        weight_decay: float = 4e-5,
        optimizer: Literal["adamw", "adam", "sgd"] = "adam",
        adam_eps: float = 1e-8,
        bias_lr_factor: float = 1.0,
        warmup_epochs: float = 5.0,
        schedule: Literal["cosine", "constant"] = "cosine",
        ks: tuple[int, ...] = (1, 5, 10),
        visualize_queries: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # collects the subclass's arguments too
        self.val_metric = RetrievalMetric(ks=ks, similarity_fn=self.similarity)
        self.test_metric = RetrievalMetric(ks=ks, similarity_fn=self.similarity)

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

    def backbone_modules(self) -> list[nn.Module]:
        """Pretrained modules trained at ``lr``; every other parameter gets ``lr x new_module_lr_factor``."""
        return []

    def backbone_lr_factors(self) -> list[tuple[nn.Module, float]]:
        """Backbone modules whose learning rate is ``lr x factor`` (e.g. a CNN tower trained faster than a
        text transformer); others get ``lr``."""
        return []

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["num_train_identities"] = getattr(self, "num_train_identities", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("num_train_identities") is not None:
            self._ensure_identity_modules(checkpoint["num_train_identities"])

    # -- training ----------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._clock = {"last_end": None, "wait": 0.0, "busy": 0.0, "samples": 0}

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        now = time.perf_counter()
        clock = self._clock
        if clock["last_end"] is not None:
            clock["wait"] += now - clock["last_end"]  # time spent fetching this batch
        clock["start"] = now

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        now = time.perf_counter()
        clock = self._clock
        clock["busy"] += now - clock["start"]
        clock["samples"] += len(batch["pid"])
        clock["last_end"] = now

    def on_train_epoch_end(self) -> None:
        clock = self._clock
        total = clock["wait"] + clock["busy"]
        if total > 0:
            self.log_dict({
                "train/samples_per_s": clock["samples"] / total,
                "train/data_wait_fraction": clock["wait"] / total,
            })

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.training_losses(batch)
        size = len(batch["pid"])
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=size, prog_bar=False)
        self.log("loss", terms["loss"].detach(), batch_size=size, prog_bar=True, logger=False)
        return terms["loss"]

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, metric: RetrievalMetric, batch: dict[str, Any], dataloader_idx: int) -> None:
        if dataloader_idx == QUERIES:
            metric.update_queries(self.encode_queries(batch).float(), batch["pid"], batch["index"])
        elif dataloader_idx == GALLERY:
            metric.update_gallery(self.encode_gallery(batch).float(), batch["pid"], batch["index"])
        else:
            raise ValueError(f"unexpected evaluation dataloader {dataloader_idx}: expected {QUERIES} (queries) or {GALLERY} (gallery)")

    def _relevance(self, split: str) -> Any:
        """The evaluation protocol's positives for ``split`` when they are not "same pid" (composed queries)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        queries = (getattr(datamodule, "eval_sets", None) or {}).get(split, (None,))[0]
        return getattr(queries, "relevance", None)

    def on_validation_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.val_metric.relevance = self._relevance(getattr(datamodule, "eval_split", "val"))

    def on_test_epoch_start(self) -> None:
        self.test_metric.relevance = self._relevance("test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(self.val_metric, batch, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(self.test_metric, batch, dataloader_idx)

    def _log_metrics(self, metric: RetrievalMetric, prefix: str) -> dict[str, float]:
        values = metric.compute()
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in values.items()}, prog_bar=False, add_dataloader_idx=False)
        return values

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metric.reset()
            return
        values = self._log_metrics(self.val_metric, "val")
        self.log("val_R1", float(values["R1"]), prog_bar=True, logger=False)
        self.val_metric.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metric, "test")
        if self.hparams.visualize_queries and self.trainer.is_global_zero:
            self._draw_ranked_lists()
        self.test_metric.reset()

    @torch.no_grad()
    def _draw_ranked_lists(self, k: int = 5) -> None:
        """Save (and log to W&B) the top-``k`` gallery images of a few test queries, correct ones outlined green."""
        from xsearch.visualize import ranked_grid, topk_for_queries

        datamodule = self.trainer.datamodule
        if "test" not in getattr(datamodule, "eval_sets", {}):
            return
        gathered = self.test_metric.gathered()
        queries_total = len(gathered.query_pids)
        count = min(self.hparams.visualize_queries, queries_total)
        rows = [round(i * (queries_total - 1) / max(count - 1, 1)) for i in range(count)]
        similarity = self.similarity(gathered.query_embeddings[rows], gathered.gallery_embeddings)
        top = topk_for_queries(similarity, k, list(range(count)))
        gallery_pids = gathered.gallery_pids.tolist()
        query_pids = gathered.query_pids[rows].tolist()
        correct = [[gallery_pids[j] == pid for j in ranked] for ranked, pid in zip(top, query_pids)]
        relevance, caption = self.test_metric.relevance, "green = correct identity"
        if relevance is not None:  # e.g. composed queries: correct = one of the query's positives
            gallery_indexes = gathered.gallery_indexes.tolist()
            positives = [set(relevance.positives[int(q)]) for q in gathered.query_indexes[rows].tolist()]
            correct = [[gallery_indexes[j] in wanted for j in ranked] for ranked, wanted in zip(top, positives)]
            caption = "green = a positive of the query"
        query_set, gallery_set = datamodule.eval_sets["test"]
        texts = {c.index: c.text for c in query_set.captions}
        queries = [texts[int(i)] for i in gathered.query_indexes[rows].tolist()]
        paths = {r.index: r.path for r in gallery_set.images}
        gallery = [paths[int(i)] for i in gathered.gallery_indexes.tolist()]
        figure = ranked_grid(queries, gallery, top, correct)
        out = self.save_figure(figure, "test_top5.png", "test/top5", caption)
        log.info("ranked lists of %d test queries: %s", count, out)

    def save_figure(self, figure: Any, filename: str, key: str, caption: str) -> Path:
        """Save a PIL figure in the run folder and log it to every logger that takes images."""
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir) / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.save(out)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[figure], caption=[caption])
        return out

    # -- optimisation --------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone vs new-module learning rates; biases and 1-d params (norms) without weight decay."""
        hp = self.hparams
        backbone = {id(p) for m in self.backbone_modules() for p in m.parameters()}
        factors = {id(p): factor for m, factor in self.backbone_lr_factors() for p in m.parameters()}
        groups: dict[tuple[bool, bool, float], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            is_backbone, no_decay = id(param) in backbone, param.ndim <= 1
            factor = factors.get(id(param), 1.0) if is_backbone else hp.new_module_lr_factor
            group = groups.setdefault((is_backbone, no_decay, factor), {
                "params": [],
                "lr": hp.lr * factor * (hp.bias_lr_factor if no_decay else 1.0),
                "weight_decay": 0.0 if no_decay else hp.weight_decay,
                "name": f"{'backbone' if is_backbone else 'new'}{'' if factor == 1.0 or not is_backbone else f'_x{factor:g}'}"
                        f"{'_no_decay' if no_decay else ''}",
            })
            group["params"].append(param)
        return list(groups.values())

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=0.9)
        else:
            optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
            fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
            optimizer = optimizer_class(groups, lr=hp.lr, betas=(0.9, 0.999), eps=hp.adam_eps, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = min(total - 1, int(hp.warmup_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:
                return 0.1 + 0.9 * step / max(1, warmup)
            if hp.schedule == "constant":
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
