"""Recording a test run into the results store: :class:`RecordResults`, the callback the command line adds to the
trainer of a run that records (``xsearch test``, and ``xsearch fit --test_after_fit true``)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("xsearch")

HYPERPARAMETER_SECTIONS = ("model", "data")
"""Config sections that define an experiment (hashed into ``config_hash``; seeds and trainer excluded)."""


class RecordResults(Callback):
    """Appends one row per test to the results store (``results``), then prints the headline metrics and the
    dataset's leaderboard. Rank zero only; a grid's intermediate step (:mod:`xsearch.grid` sets the grid but not the
    cell in the environment) records nothing.

    It records in ``teardown`` of the test stage, after Lightning's own table of test metrics is printed.

    Args:
        results: the SQLite results store.
        config: the run's resolved config, as the command line dumps it (JSON-compatible).
        started: ``time.perf_counter()`` when the command started (the row's wall time is the whole command: fit +
            test, or test).
        tag: label stored with the row.
        checkpoint: what the row names as the tested weights; the command line sets it before each test (a path, or
            ``(untrained weights)`` / ``(last weights)``).
    """

    def __init__(self, results: str, config: dict[str, Any], started: float, tag: str | None = None,
                 checkpoint: str = "(untrained weights)") -> None:
        self.results = results
        self.config = config
        self.started = started
        self.tag = tag
        self.checkpoint = checkpoint

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "test":
            self.record(trainer, pl_module)

    def record(self, trainer: Any, pl_module: Any) -> None:
        from xsearch.grid import CELL_ENV, GRID_ENV
        from xsearch.headlines import summary_metrics
        from xsearch.leaderboard import render_store
        from xsearch.registry import METHODS
        from xsearch.results import ResultsStore, RunRecord, config_hash, git_commit

        if not trainer.is_global_zero:
            return
        if os.environ.get(GRID_ENV) and not os.environ.get(CELL_ENV):
            log.info("grid %s: an intermediate step, nothing recorded", os.environ[GRID_ENV])
            return
        metrics = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if not metrics:
            log.warning("no test metrics to record")
            return
        dumped = self.config
        datamodule = trainer.datamodule
        experiment = {k: dumped.get(k) for k in HYPERPARAMETER_SECTIONS}
        method = METHODS.name_of(type(pl_module)) or type(pl_module).__name__
        record = RunRecord(
            method=method,
            dataset=getattr(datamodule, "benchmark", datamodule.dataset),
            metrics=metrics,
            config=dumped,
            config_hash=config_hash(experiment),
            checkpoint=relative_to_cwd(self.checkpoint),
            seed=dumped.get("seed_everything") if isinstance(dumped.get("seed_everything"), int) else None,
            wall_time_s=time.perf_counter() - self.started,
            git_commit=git_commit(ignore=[self.results]),  # the store itself may be committed (the leaderboard)
            extra=record_extra(self.tag),
        )
        store = ResultsStore(self.results)
        row = store.append(record)
        shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in summary_metrics(metrics))  # the protocols' headlines
        print(f"\n[xsearch] {method} on {record.dataset} (test): {shown}")
        print(f"[xsearch] appended run #{row} to {store.path}\n")
        print(render_store(store, dataset=record.dataset, fmt="md"))


def relative_to_cwd(path: str) -> str:
    """``path`` relative to the working directory when inside it (Lightning makes checkpoint paths absolute; a results
    store keeps none of the machine's absolute paths)."""
    from xsearch.grid import path_under

    return path_under(Path(path), Path.cwd()) if Path(path).is_absolute() else path


def record_extra(tag: str | None) -> dict[str, Any]:
    """What a results row keeps besides the metrics: the tag, the grid and cell that ran it (set by
    :mod:`xsearch.grid` in the environment) and the peak memory of this process (CPU RSS, and GPU when used)."""
    import resource

    import torch

    from xsearch.grid import CELL_ENV, GRID_ENV

    extra: dict[str, Any] = {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        extra["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if tag:
        extra["tag"] = tag
    if os.environ.get(GRID_ENV) and os.environ.get(CELL_ENV):
        extra.update(grid=os.environ[GRID_ENV], cell=os.environ[CELL_ENV])
    return extra
