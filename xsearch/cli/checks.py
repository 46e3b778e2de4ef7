"""Checks of a parsed ``xsearch fit|validate|test|predict`` config, run before any model is built, and the
one-line form of jsonargparse's errors."""
from __future__ import annotations

import os
from typing import Any


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

