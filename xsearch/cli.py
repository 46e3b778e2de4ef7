"""``xsearch`` command line.

- ``xsearch fit|validate|test|predict --config FILE [overrides]``: LightningCLI over any
  registered method (``model.class_path``) and ``RetrievalDataModule``. ``test`` (and ``fit``
  with ``--test_after_fit true``) appends a row to the results store and prints the leaderboard.
- ``xsearch data synth {pedes,faces} --out DIR``: write a synthetic dataset.
- ``xsearch data check NAME --root DIR``: parse a dataset, print per-split counts as JSON.
- ``xsearch leaderboard [show] [--dataset NAME] [--format md|csv|json|html]``: render the results store.
- ``xsearch leaderboard run --grid FILE``: run a grid of methods x datasets x seeds (:mod:`xsearch.grid`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("xsearch")

HYPERPARAMETER_SECTIONS = ("model", "data")
"""Config sections that define an experiment (hashed into ``config_hash``; seeds and trainer excluded)."""


# --------------------------------------------------------------------------------------
# LightningCLI subcommands
# --------------------------------------------------------------------------------------
def _lightning_cli(args: list[str]) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from xsearch.checkpoint_io import AtomicCheckpointIO
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

        def after_fit(self) -> None:
            if self._get(self.config, "test_after_fit"):
                best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
                self._record(best or "(last weights)")

        def before_test(self) -> None:
            self.datamodule.prepare_data()

        def after_test(self) -> None:
            subcommand_config = self.config[self.subcommand]
            self._record(subcommand_config.get("ckpt_path") or "(untrained weights)")

        def _record(self, checkpoint: str) -> None:
            from xsearch.headlines import summary_metrics
            from xsearch.leaderboard import render_store
            from xsearch.registry import METHODS
            from xsearch.results import ResultsStore, RunRecord, config_hash, git_commit

            from xsearch.grid import CELL_ENV, GRID_ENV

            if not self.trainer.is_global_zero:
                return
            if os.environ.get(GRID_ENV) and not os.environ.get(CELL_ENV):
                log.info("grid %s: an intermediate step, nothing recorded", os.environ[GRID_ENV])
                return
            config = self.config[self.subcommand]
            metrics = {k.split("/", 1)[1]: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
            if not metrics:
                log.warning("no test metrics to record")
                return
            dumped = json.loads(self._parser(self.subcommand).dump(config, skip_none=False, format="json"))
            experiment = {k: dumped.get(k) for k in HYPERPARAMETER_SECTIONS}
            method = METHODS.name_of(type(self.model)) or type(self.model).__name__
            record = RunRecord(
                method=method,
                dataset=getattr(self.datamodule, "benchmark", self.datamodule.dataset),
                metrics=metrics,
                config=dumped,
                config_hash=config_hash(experiment),
                checkpoint=_relative_to_cwd(checkpoint),
                seed=dumped.get("seed_everything") if isinstance(dumped.get("seed_everything"), int) else None,
                wall_time_s=time.perf_counter() - self._started,  # the whole command: fit + test, or test
                git_commit=git_commit(),
                extra=_record_extra(config.get("tag")),
            )
            store = ResultsStore(config["results"])
            row = store.append(record)
            shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in summary_metrics(metrics))  # the protocols' headlines
            print(f"\n[xsearch] {method} on {record.dataset} (test): {shown}")
            print(f"[xsearch] appended run #{row} to {store.path}\n")
            print(render_store(store, dataset=record.dataset, fmt="md"))

        def _parse_ckpt_path(self) -> None:
            """Keep the config as given: Lightning would overwrite it (command-line overrides included) with
            the hyperparameters stored in ``--ckpt_path``, silently ignoring e.g. ``--model.init_args.global_only
            true`` at test time. The config builds the model; the checkpoint only provides the weights."""

        def _run_subcommand(self, subcommand: str) -> None:
            self._started = time.perf_counter()
            super()._run_subcommand(subcommand)

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


def _relative_to_cwd(path: str) -> str:
    """``path`` relative to the working directory when inside it (Lightning makes checkpoint paths absolute; a results
    store keeps none of the machine's absolute paths)."""
    resolved = Path(path)
    if resolved.is_absolute() and resolved.is_relative_to(Path.cwd()):
        return resolved.relative_to(Path.cwd()).as_posix()
    return str(path)


def _record_extra(tag: str | None) -> dict[str, Any]:
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


def _one_line(message: str, parser: Any) -> str:
    """jsonargparse's message on one line, with the closest known option for an unrecognised one."""
    import difflib

    import re

    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    restricted = _restricted_value(text)
    if restricted:
        return restricted
    bad_class = re.search(r'Parser key "(\w+)".*?Problem with given class_path \'([^\']+)\': (.*?) - ', text)
    if bad_class:
        key, class_path, reason = bad_class.groups()
        text = f"{key}.class_path: {class_path!r}: {reason}"
        if key == "model":
            from xsearch.registry import METHODS

            text += "; methods: " + ", ".join(f"xsearch.models.{METHODS.get(n).__name__}" for n in METHODS.names())
    if text.startswith("unrecognized arguments:"):
        known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
        for given in (a for a in text.split()[2:] if a.startswith("--")):
            close = difflib.get_close_matches(given.split("=")[0], known, n=1, cutoff=0.75)
            text += f"; did you mean {close[0]}?" if close else f"; no option {given}"
    return text


RESTRICTIONS = {
    "PositiveInt": "an integer > 0", "NonNegativeInt": "an integer >= 0", "PositiveFloat": "a number > 0",
    "NonNegativeFloat": "a number >= 0", "ClosedUnitInterval": "a number in [0, 1]",
    "OpenUnitInterval": "a number in (0, 1)",
}
"""What each ``jsonargparse.typing`` restricted number of the config's signatures accepts, in words."""


def _restricted_value(text: str) -> str | None:
    """``KEY: expected an integer > 0, got 0`` for jsonargparse's (one-lined) message about a value outside a
    restricted number type (:data:`RESTRICTIONS`), with the full key (``model.init_args.embed_dim`` for an argument of
    a ``class_path``); ``None`` for any other message."""
    import re

    found = re.search(r"Not of type (\w+): (.*?)(?: - |$)", text)
    if not found or found.group(1) not in RESTRICTIONS:
        return None
    name, reason = found.groups()
    value = re.match(r"(\S+) (?:does not conform|not an integer|not a number)|.*: '(.*)'$", reason)
    value = next((v for v in value.groups() if v is not None), None) if value else None
    if not value:  # a union (e.g. PositiveInt | None): jsonargparse names the value after the alternatives
        given = re.search(r"Given value: (\S+)", text[found.end():])
        value = given.group(1) if given else "?"
    key = ".init_args.".join(re.findall(r'Parser key "([^"]+)"', text[: found.start()]))
    expected = RESTRICTIONS[name]
    if re.search(rf"Subtypes: \[<class 'jsonargparse\.typing\.{name}'>, <class 'NoneType'>\]", text):
        expected += " or null"
    return f"{key}: expected {expected}, got {value}"


def _config_problem(config: Any) -> str | None:
    """The first thing wrong with a parsed config that would only fail after the model is built: an unknown dataset
    (with the registered ones) or a dataset root that does not exist and will not be generated."""
    from xsearch.datamodules.loading import resolve_root
    from xsearch.registry import DATASETS

    data = config.get("data") if hasattr(config, "get") else None
    if data is None:
        return None
    data = data.get("init_args", data) if hasattr(data, "get") and data.get("class_path") else data
    dataset, root = data.get("dataset"), data.get("root")
    if dataset is not None and dataset not in DATASETS.names():
        return f"data.dataset: unknown dataset {dataset!r}; expected one of {', '.join(sorted(DATASETS.names()))}"
    if root is not None and data.get("generate") is None and not resolve_root(root).exists():
        return (f"data.root: {resolve_root(root)} does not exist (a relative root lives under $XSEARCH_DATA, default "
                "./data); point it at the dataset folder, or set data.generate for a synthetic dataset")
    return None


TRAINER_LIMITS: dict[str, tuple[int, str]] = {
    "max_epochs": (-1, " (-1: no limit) or null"), "min_epochs": (0, " or null"), "max_steps": (-1, " (-1: no limit)"),
    "min_steps": (0, " or null"), "accumulate_grad_batches": (1, ""), "check_val_every_n_epoch": (1, " or null"),
    "log_every_n_steps": (0, " or null"), "num_sanity_val_steps": (-1, " (-1: every validation batch) or null"),
    "num_nodes": (1, ""),
}
"""Integer trainer options: the smallest value Lightning accepts, then what else it accepts, in words."""
LIMIT_BATCHES = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


def _trainer_problem(trainer: Any) -> str | None:
    """The first trainer value Lightning would refuse only once the model is built (or would take silently): an integer
    option below its minimum (:data:`TRAINER_LIMITS`; whether null is allowed is left to the parser's typing), or a
    ``limit_*_batches`` that is neither a fraction in [0, 1] nor a whole number of batches."""
    if trainer is None or not hasattr(trainer, "get"):
        return None
    for key, (lowest, meaning) in TRAINER_LIMITS.items():
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lowest):
            return f"trainer.{key}: expected an integer >= {lowest}{meaning}, got {value!r}"
    for key in LIMIT_BATCHES:
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or value < 0 or (isinstance(value, float) and value > 1
                                                                          and not value.is_integer())):
            return f"trainer.{key}: expected a fraction in [0, 1] or a whole number of batches >= 0, got {value!r}"
    return None


def _results_problem(config: Any, subcommand: str | None) -> str | None:
    """Why the results store (``--results``) of a run that will append to it cannot be used (``test``, and ``fit`` with
    ``--test_after_fit``), checked before anything is built or evaluated; ``None`` when it can, or when nothing will be
    recorded."""
    from xsearch.grid import CELL_ENV, GRID_ENV
    from xsearch.results import ResultsStore, ResultsStoreError

    if subcommand != "test" and not (subcommand == "fit" and config.get("test_after_fit")):
        return None
    if os.environ.get(GRID_ENV) and not os.environ.get(CELL_ENV):  # a grid's intermediate step records nothing
        return None
    try:
        ResultsStore(config["results"]).check()
    except ResultsStoreError as error:
        return f"--results: {error}"


def _checkpoint_problem(config: Any) -> str | None:
    """What is wrong with ``--ckpt_path`` (missing, empty, truncated, not a checkpoint, pickles that would run code),
    found before any model is built or any data is read; ``None`` when it reads, or names a Lightning keyword."""
    from xsearch.models.checkpoint import read_checkpoint

    path = config.get("ckpt_path") if hasattr(config, "get") else None
    if not path or str(path) in ("last", "best", "hpc") or str(path).startswith("registry"):
        return None
    try:
        read_checkpoint(path)
    except (FileNotFoundError, ValueError) as error:
        return f"--ckpt_path: {error}"
    return None


# --------------------------------------------------------------------------------------
# data / leaderboard subcommands
# --------------------------------------------------------------------------------------
def _data_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="xsearch data", description="Generate or check datasets.")
    sub = parser.add_subparsers(dest="action", required=True)
    synth = sub.add_parser("synth", help="write a synthetic dataset in an official layout")
    synth.add_argument("kind", choices=["pedes", "faces", "pfs"],
                       help="pedes: CUHK-PEDES layout; faces: CelebA layout + captions; pfs: COCO-PFS layout (scenes, face descriptors)")
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--identities", type=int, default=None, help="number of identities (default: quickstart size)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    check = sub.add_parser("check", help="parse a dataset and print per-split counts and warnings as JSON")
    check.add_argument("name", help="registered dataset name, e.g. cuhk_pedes, icfg_pedes, rstpreid, celeba, lfw, coco_pfs, custom")
    check.add_argument("--root", required=True, help="dataset folder in its official layout")
    check.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="parser option (YAML value), e.g. --option max_captions_per_image=2; repeatable")
    check.add_argument("--decode", action="store_true", help="also open every image to verify it decodes (slow)")
    check.add_argument("--no-cache", action="store_true", help="re-parse even if the annotation files are unchanged")
    cache = sub.add_parser("cache", help="write pre-resized uint8 copies of a dataset's images (data.image_cache)")
    cache.add_argument("name", help="registered dataset name")
    cache.add_argument("--root", required=True, help="dataset folder in its official layout")
    cache.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"), help="the config's data.image_size")
    cache.add_argument("--crop", default=None, help="the config's data.crop: 'center' or top,left,bottom,right fractions")
    cache.add_argument("--interpolation", choices=["bicubic", "bilinear"], default="bicubic",
                       help="the config's data.interpolation (resize filter)")
    cache.add_argument("--folder", default=".xsearch_cache", help="cache folder, relative to the root (data.image_cache)")
    cache.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="parser option, repeatable")
    cache.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.action == "cache":
        return _cache_images(args)

    if args.action == "synth":
        from xsearch.datamodules import SYNTHESIZERS

        generate = SYNTHESIZERS.get(f"synth_{args.kind}")
        options: dict[str, Any] = {"seed": args.seed, "overwrite": args.overwrite}
        if args.identities is not None:
            options["identities"] = args.identities
        out = generate(args.out, **options)
        print(f"wrote synthetic {args.kind} dataset to {out}")
        return 0

    return _check_dataset(args)


def _cache_images(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from xsearch.datamodules.image_cache import DiskImageCache
    from xsearch.datamodules.transforms import load_image

    index, root = _load_index(args)
    crop = None if args.crop is None else "center" if args.crop == "center" else tuple(float(v) for v in args.crop.split(","))
    if crop not in (None, "center") and len(crop) != 4:
        raise SystemExit(f"xsearch data cache: --crop {args.crop!r}: expected 'center' or top,left,bottom,right")
    disk, size = DiskImageCache(root / args.folder), tuple(args.size)
    missing = set(index.missing_images)
    images = [r for r in index.images if r.path not in missing]
    for record in tqdm(images, desc=f"caching {args.name} at {size[0]}x{size[1]}"):
        disk.get(record.path, size, crop, lambda: load_image(record.path, size, crop, args.interpolation), args.interpolation)
    megabytes = sum(f.stat().st_size for f in disk.folder.rglob("*.npy")) / 2**20
    print(f"{len(images)} images cached in {disk.folder} ({megabytes:.0f} MiB in all); train with "
          f"--data.image_cache {args.folder} (same image_size, crop and interpolation)")
    return 0


def _load_index(args: argparse.Namespace) -> tuple[Any, Path]:
    import yaml

    from xsearch.datamodules import DatasetFormatError, load_dataset
    from xsearch.datamodules.loading import resolve_root

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DatasetFormatError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    root = Path(args.root) if Path(args.root).exists() else resolve_root(args.root)
    return load_dataset(args.name, root.absolute(), options, cache=not args.no_cache), root.absolute()


def _check_dataset(args: argparse.Namespace) -> int:
    index, root = _load_index(args)
    warnings = list(index.warnings)
    if args.decode:
        warnings.extend(_undecodable(index))
    report = {
        "dataset": args.name,
        "root": str(root),
        "splits": index.summary(),
        "warnings": warnings,
    }
    print(json.dumps(report, indent=2))
    return 0


def _undecodable(index: Any) -> list[str]:
    """A warning naming images that exist but do not decode."""
    from PIL import Image

    missing = set(index.missing_images)
    broken = []
    for record in index.images:
        if record.path in missing:
            continue
        try:
            with Image.open(record.path) as image:
                image.verify()
        except Exception:  # noqa: BLE001  PIL raises many types for a broken file
            broken.append(str(record.path))
    if not broken:
        return []
    return [f"{len(broken)} images do not decode, e.g. {', '.join(broken[:3])}"]


def _leaderboard_command(argv: list[str]) -> int:
    """``xsearch leaderboard [show] ...`` renders the store; ``xsearch leaderboard run --grid FILE`` runs a grid."""
    if argv[:1] == ["run"]:
        return _leaderboard_run(argv[1:])
    from xsearch.leaderboard import FORMATS, render_store

    parser = argparse.ArgumentParser(prog="xsearch leaderboard [show]", description="Render the results store.")
    parser.add_argument("--dataset", default=None, help="only this dataset")
    parser.add_argument("--format", default="md", choices=FORMATS)
    parser.add_argument("--results", default="results/xsearch.sqlite", help="SQLite results store")
    parser.add_argument("--out", default=None, help="write to this file instead of standard output")
    parser.add_argument("--references", action="store_true",
                        help="add the numbers the papers report (kind: reported), never mixed with measured rows")
    parser.add_argument("--plot", default=None, metavar="DIR", help="also write a PNG bar chart per dataset into DIR")
    args = parser.parse_args(argv[1:] if argv[:1] == ["show"] else argv)
    text = render_store(args.results, dataset=args.dataset, fmt=args.format, references=args.references)
    if args.plot:
        from xsearch.report import write_charts

        for path in write_charts(args.results, args.plot, dataset=args.dataset):
            print(f"[xsearch] wrote {path}", file=sys.stderr)
    if args.out:
        from xsearch.atomic import write_text_atomic

        write_text_atomic(Path(args.out), text)
    else:
        print(text)
    return 0


def _leaderboard_run(argv: list[str]) -> int:
    from xsearch.grid import load_grid, run_grid
    from xsearch.results import ResultsStore

    parser = argparse.ArgumentParser(prog="xsearch leaderboard run",
                                     description="Run a grid of methods x datasets x seeds; finished cells are skipped.")
    parser.add_argument("--grid", required=True, help="grid file (configs/leaderboard/*.yaml)")
    parser.add_argument("--results", default="results/leaderboard.sqlite", help="SQLite results store")
    parser.add_argument("--out", default="runs/leaderboard", help="folder of the runs (checkpoints, logs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (default: the grid's)")
    parser.add_argument("--cells", nargs="+", default=None, help="only these cells")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own processes")
    parser.add_argument("--force", action="store_true", help="rerun cells already in the store")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="then write <grid>.md/.csv/.json/.html and a PNG per dataset into DIR")
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="then refresh the <!-- leaderboard:<grid> begin/end --> block of FILE (needs --report)")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    ResultsStore(args.results).check()  # before hours of runs, not when the first cell appends
    if args.readme:
        from xsearch.report import replace_block

        if not args.report:
            parser.error("--readme needs --report DIR (where the charts go)")
        try:  # the markers are checked before hours of runs, not after
            replace_block(Path(args.readme).read_text(encoding="utf-8"), grid.name, "", args.readme)
        except (OSError, ValueError) as error:
            parser.error(str(error))
    report = run_grid(grid, args.results, args.out, args.seeds, args.cells, args.jobs, args.force)
    print(f"[xsearch] grid {grid.name}: {len(report.ran)} cell x seed runs done, {len(report.skipped)} already in "
          f"{args.results}, {len(report.failed)} failed")
    for cell, seed, error in report.failed:
        print(f"[xsearch]   failed: {cell} seed {seed}: {error}", file=sys.stderr)
    from xsearch.leaderboard import render_store

    print(render_store(args.results))
    if args.report:
        from xsearch.report import write_report

        command = (f"xsearch leaderboard run --grid {args.grid} --results {args.results} --report {args.report}"  # what
                   + (f" --readme {args.readme}" if args.readme else ""))  # regenerates it all: no --cells/--seeds
        for path in write_report(args.results, args.report, grid.name, args.readme, command, compare=grid.compare):
            print(f"[xsearch] wrote {path}", file=sys.stderr)
    _log_wandb_table(grid.name, args.results, args.out)
    return 1 if report.failed else 0


def _log_wandb_table(grid: str, results: str, out: str) -> None:
    """Log the grid's leaderboard as a ``wandb.Table`` in the grid's W&B group (offline unless WANDB_MODE says)."""
    import wandb

    from xsearch.leaderboard import leaderboard_table
    from xsearch.results import ResultsStore

    rows = [r for r in leaderboard_table(ResultsStore(results).rows()) if r.get("n")]
    if not rows:
        return
    columns = sorted({k for r in rows for k in r if not isinstance(r[k], (list, dict))})
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    Path(out).mkdir(parents=True, exist_ok=True)
    with wandb.init(project="xsearch", group=grid, job_type="leaderboard", name=f"{grid}-leaderboard", dir=out) as run:
        run.log({"leaderboard": table})


# --------------------------------------------------------------------------------------
# inspect / export subcommands
# --------------------------------------------------------------------------------------
def _inspect_command(argv: list[str]) -> int:
    """``xsearch inspect RUN_OR_FILE --out report.html``: the failure browser of a test run (:mod:`xsearch.failures`)."""
    from xsearch.failures import write_page

    parser = argparse.ArgumentParser(prog="xsearch inspect", description="HTML failure browser of a test run: every "
                                     "query with its AP, first correct rank and top-10 gallery thumbnails.")
    parser.add_argument("run", metavar="RUN_OR_FILE", help="a run folder (holding test_rankings.npz) or the file itself")
    parser.add_argument("--out", required=True, help="HTML file to write (self-contained)")
    parser.add_argument("--thumb-height", type=int, default=64, help="thumbnail height in pixels")
    parser.add_argument("--worst", type=int, default=None, metavar="N", help="only the N queries with the lowest AP")
    args = parser.parse_args(argv)
    out = write_page(args.run, args.out, args.thumb_height, args.worst)
    print(f"[xsearch] wrote {out}")
    return 0


def _export_command(argv: list[str]) -> int:
    """``xsearch export --ckpt CKPT --onnx OUT_DIR``: both towers as ONNX, checked with onnxruntime (:mod:`xsearch.onnx_export`)."""
    from xsearch.onnx_export import DEFAULT_OPSET, export_onnx

    parser = argparse.ArgumentParser(prog="xsearch export", description="Write a checkpoint's image and text towers "
                                     "as ONNX (+ tokenizer files and card.json), checked against PyTorch.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by xsearch fit")
    parser.add_argument("--onnx", required=True, metavar="OUT_DIR", help="folder for image.onnx, text.onnx, tokenizer/, card.json")
    parser.add_argument("--image-dtype", choices=["uint8", "float32"], default="uint8",
                        help="image input: uint8 0-255 (default) or float32 0-1")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17 or more)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |onnxruntime - PyTorch|")
    args = parser.parse_args(argv)
    card = export_onnx(args.ckpt, args.onnx, args.image_dtype, args.opset, args.tolerance)
    print(f"[xsearch] {card['method']}: wrote {args.onnx}/{{image.onnx,text.onnx,card.json}} ({card['embedding_dim']}-d)")
    return 0


# --------------------------------------------------------------------------------------
# index / search / serve / encode subcommands: search your own images with a trained checkpoint (xsearch.search)
# --------------------------------------------------------------------------------------
PICTURE_FORMATS = (".png", ".jpg", ".jpeg", ".webp")


def _index_command(argv: list[str]) -> int:
    from xsearch.search.images import shown_name
    from xsearch.search.index import build_index

    parser = argparse.ArgumentParser(prog="xsearch index", description="Embed every image under a folder with a trained "
                                     "checkpoint and write a search index; rerun to add new or changed images.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by xsearch fit")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively: jpg, jpeg, png, bmp, webp)")
    parser.add_argument("--out", required=True, help="index folder (created; an existing index of the same folder and "
                        "checkpoint is updated)")
    parser.add_argument("--batch-size", type=int, default=64, help="images embedded at once")
    parser.add_argument("--factory", default=None, help="FAISS index_factory string (inner product over normalised "
                        "embeddings): Flat (default, exact), IVF{n},Flat, HNSW32...")
    parser.add_argument("--rebuild", action="store_true", help="replace an index of another checkpoint or folder")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes (0: inline)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    args = parser.parse_args(argv)
    report = build_index(args.ckpt, args.images, args.out, args.batch_size, args.factory, args.rebuild, args.workers,
                         args.device)
    if not report.written:
        print(f"[xsearch] {report.folder} is up to date: {report.total} images, {len(report.skipped)} skipped")
    else:
        print(f"[xsearch] indexed {report.total} images in {report.folder} ({report.embedded} embedded, {report.kept} "
              f"unchanged, {report.removed} removed, {len(report.skipped)} skipped as unreadable"
              f"{': ' + ', '.join(shown_name(p) for p, _ in report.skipped[:5]) if report.skipped else ''}"
              f"{', ...' if len(report.skipped) > 5 else ''})")
    return 0


def _search_command(argv: list[str]) -> int:
    from xsearch.atomic import atomic_path
    from xsearch.search.images import shown_name
    from xsearch.search.picture import results_picture, thumb_size_for
    from xsearch.search.query import Searcher, check_query

    parser = argparse.ArgumentParser(prog="xsearch search", description="Rank the images of an index for a text "
                                     "query (or a reference image + modification text).")
    parser.add_argument("index", help="index folder written by xsearch index")
    parser.add_argument("query", help="what to look for, e.g. \"a woman in a red coat\"")
    parser.add_argument("--image", default=None, metavar="REF", help="reference image of a composed query (methods "
                        "with composed queries, e.g. xmodal); the query text then says what to change")
    parser.add_argument("--k", type=int, default=20, help="results shown")
    parser.add_argument("--out", default=None, help="also save a picture of the results (.png, .jpg, .webp)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--ckpt", default=None, help="the index's checkpoint, when it moved since indexing")
    parser.add_argument("--nprobe", type=int, default=None, help="inverted lists visited (IVF indexes)")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    args = parser.parse_args(argv)
    check_query(args.query, args.k)
    if args.out is not None and Path(args.out).suffix.lower() not in PICTURE_FORMATS:
        raise ValueError(f"--out {args.out}: expected a picture file ({', '.join(PICTURE_FORMATS)})")
    searcher = Searcher(args.index, args.ckpt, args.device)
    result = searcher.search(args.query, args.k, args.image, args.nprobe)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        for hit in result.hits:
            print(f"{hit.rank:>4}  {hit.score:.4f}  {shown_name(hit.file)}")  # one line per result, whatever the name
    if args.out is not None:
        picture = results_picture(args.query, [h.file for h in result.hits], [h.score for h in result.hits],
                                  [h.path for h in result.hits], args.image,
                                  thumb_size_for(searcher.index.header["preprocessing"]["image_size"]))
        with atomic_path(args.out) as tmp:
            picture.save(tmp)
        print(f"[xsearch] wrote {args.out}", file=sys.stderr)
    return 0


def _serve_command(argv: list[str]) -> int:
    """``xsearch serve INDEX_DIR``: the search page on localhost (:mod:`xsearch.search.serve`, extra ``serve``)."""
    from xsearch.search.serve import check_packages, serve

    parser = argparse.ArgumentParser(prog="xsearch serve", description="A web page to search an index: text box, "
                                     "reference-image upload (methods with composed queries), result grid, model card.")
    parser.add_argument("index", help="index folder written by xsearch index")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; the page serves the indexed images to whoever can reach it). 0.0.0.0 or :: listen on "
                        "every address and also answer requests that name the machine by any IP address; names "
                        "(myhost.lan) still need --allow-host")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a Host name the server also answers to (repeatable; the port does not matter). Without "
                        "it only localhost, 127.0.0.1, ::1 and the --host address are answered, others get 400: a web "
                        "page cannot reach the server through a DNS name of its own (DNS rebinding)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one)")
    parser.add_argument("--ckpt", default=None, help="the index's checkpoint, when it moved since indexing")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    args = parser.parse_args(argv)
    try:
        check_packages()
    except ImportError as error:
        print(f"xsearch: error: {error}", file=sys.stderr)
        return 2
    serve(args.index, args.host, args.port, args.ckpt, args.device, args.allow_host)
    return 0


def _encode_command(argv: list[str]) -> int:
    from xsearch.search.encode import encode_to_file

    parser = argparse.ArgumentParser(prog="xsearch encode", description="Write a method's embeddings of an image "
                                     "folder or a caption file, with their ids.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by xsearch fit")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", default=None, help="folder of images (recursively)")
    source.add_argument("--captions", default=None, help=".txt (one caption per line) or .jsonl ({\"id\", \"text\"} per line)")
    parser.add_argument("--out", required=True, help="FILE.safetensors or FILE.parquet (needs pyarrow)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    args = parser.parse_args(argv)
    out, embeddings, metadata = encode_to_file(args.ckpt, args.out, args.images, args.captions, args.batch_size,
                                               args.workers, args.device)
    skipped = len(metadata.get("skipped", []))
    print(f"[xsearch] wrote {embeddings.shape[0]} x {embeddings.shape[1]} {metadata['kind']} embeddings of "
          f"{metadata['method']} to {out}" + (f" ({skipped} unreadable images skipped, listed in its metadata)" if skipped else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xsearch`` console script."""
    from xsearch.results import ResultsStoreError

    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; opt in with WANDB_MODE=online
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    commands = {"data": _data_command, "leaderboard": _leaderboard_command, "index": _index_command,
                "search": _search_command, "serve": _serve_command, "encode": _encode_command,
                "inspect": _inspect_command, "export": _export_command}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        _lightning_cli(argv)
        return 0
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, OSError, pickle.UnpicklingError,
            FloatingPointError, ResultsStoreError) as error:
        if os.environ.get("XSEARCH_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) met an object that runs code
            message = ("refusing to load a checkpoint that holds more than tensors and plain values (weights_only: no "
                       f"code in a checkpoint runs): {str(error).splitlines()[0]}")
        print(f"xsearch: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
