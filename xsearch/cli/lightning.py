"""``xsearch fit|validate|test|predict --config FILE [overrides]``: LightningCLI over any registered method
(``model.class_path``) and ``RetrievalDataModule``. ``test`` (and ``fit`` with ``--test_after_fit true``) adds a
:class:`~xsearch.cli.recording.RecordResults` callback: the test appends a row to the results store and prints the
leaderboard."""
from __future__ import annotations

import json
import sys
import time
import warnings
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from xsearch.checkpoint_io import AtomicCheckpointIO
from xsearch.cli.checks import (_checkpoint_problem, _config_problem, _one_line, _results_problem,
                                _trainer_problem)
from xsearch.cli.recording import RecordResults
from xsearch.config_types import NonNegativeInt
from xsearch.datamodules import RetrievalDataModule
from xsearch.models import RetrievalModule


class LoggedConfig(SaveConfigCallback):
    """Saves ``config.yaml`` in the log dir and sends the whole config to every logger."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": json.loads(config)})


class OneLineErrors(LightningArgumentParser):
    """Config errors as one line (the key, what was expected, a close valid key), not a page of usage."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:  # a nested parser (a class's init_args): the outer one reports the full key
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {_one_line(message, parser)} ({prog} --help lists every option)\n")
        raise SystemExit(2)


class XSearchCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        """Names, choices and paths checked before any model is built (a wrong dataset used to fail after the
        towers had loaded)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        problem = (_config_problem(config) or _trainer_problem(config.get("trainer"))
                   or _results_problem(config, self.subcommand) or _checkpoint_problem(config))
        if problem:
            sys.stderr.write(f"xsearch {self.subcommand}: error: {problem}\n")
            raise SystemExit(2)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/R1",
            "checkpoint.mode": "max",
            "checkpoint.save_last": False,  # Lightning's copies only epochs that improved; see before_fit
            "checkpoint.filename": "best-epoch{epoch:02d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_argument("--results", default="results/xsearch.sqlite", help="SQLite results store that test runs append to")
        parser.add_argument("--test_after_fit", type=bool, default=False, help="after fit, test the best checkpoint and record it")
        parser.add_argument("--tag", type=str | None, default=None, help="label stored with the results row (e.g. an ablation name)")
        parser.add_argument("--last_every_n_steps", type=NonNegativeInt, default=0,
                            help="also write last.ckpt every N training steps (0: at epoch ends only); resume a "
                                 "killed fit with --ckpt_path last")

    def before_fit(self) -> None:
        self.datamodule.prepare_data()  # generate synthetic data before anything reads it
        self.datamodule.load_index()  # parse once up front; logs when selection falls back to test
        # last.ckpt = the weights after the latest epoch. Lightning's save_last=True only copies a checkpoint
        # its top-k keeps, so there last.ckpt silently stays at the best epoch once val stops improving.
        best = self.trainer.checkpoint_callback
        last = {"dirpath": best.dirpath if best is not None else None, "filename": "last", "monitor": None,
                "save_top_k": 1, "enable_version_counter": False}
        self.trainer.callbacks.append(ModelCheckpoint(**last))
        every = self._get(self.config, "last_every_n_steps")
        if every:  # mid-epoch too: a killed run resumes from at most N steps back (same file, another schedule)
            self.trainer.callbacks.append(ModelCheckpoint(**last, every_n_train_steps=every))
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self._get(self.config, "test_after_fit"):
            self._add_recording()

    def after_fit(self) -> None:
        if self._get(self.config, "test_after_fit"):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self._recording.checkpoint = best or "(last weights)"
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def before_test(self) -> None:
        self.datamodule.prepare_data()
        self._add_recording().checkpoint = self.config[self.subcommand].get("ckpt_path") or "(untrained weights)"

    def _add_recording(self) -> RecordResults:
        """The callback that records this run's test (the config as resolved now, the command's start time)."""
        config = self.config[self.subcommand]
        dumped = json.loads(self._parser(self.subcommand).dump(config, skip_none=False, format="json"))
        self._recording = RecordResults(config["results"], dumped, self._started, config.get("tag"))
        self.trainer.callbacks.append(self._recording)
        return self._recording

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given: Lightning would overwrite it (command-line overrides included) with
        the hyperparameters stored in ``--ckpt_path``, silently ignoring e.g. ``--model.init_args.global_only
        true`` at test time. The config builds the model; the checkpoint only provides the weights."""

    def _run_subcommand(self, subcommand: str) -> None:
        self._started = time.perf_counter()
        super()._run_subcommand(subcommand)


def run(args: list[str]) -> None:
    """Run ``xsearch fit|validate|test|predict`` with the command-line arguments ``args``."""
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # frozen towers, on purpose
    # evaluation metrics are computed from the embeddings gathered from every rank: the same value on each, no sync needed
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/.*sync_dist=True")
    cli = XSearchCLI(
        RetrievalModule,
        RetrievalDataModule,
        subclass_mode_model=True,
        save_config_callback=LoggedConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},  # the datamodule shards its loaders itself (DDP)
        parser_class=OneLineErrors,
        parser_kwargs={"prog": "xsearch"},
        args=args,
    )
    for logger in cli.trainer.loggers:  # close W&B runs so a second in-process command starts its own
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
