"""``xsearch`` command line: :func:`main` dispatches to one module per group of subcommands.

- ``xsearch fit|validate|test|predict --config FILE [overrides]`` (:mod:`xsearch.cli.lightning`): LightningCLI over any
  registered method (``model.class_path``) and ``RetrievalDataModule``, with the config checks of
  :mod:`xsearch.cli.checks`. ``test`` (and ``fit`` with ``--test_after_fit true``) appends a row to the results store
  and prints the leaderboard (:class:`xsearch.cli.recording.RecordResults`).
- ``xsearch data synth {pedes,faces,pfs} --out DIR``, ``xsearch data check NAME --root DIR``, ``xsearch data cache``
  (:mod:`xsearch.cli.data`).
- ``xsearch leaderboard [show] [--dataset NAME] [--format md|csv|json|html]``: render the results store;
  ``xsearch leaderboard run --grid FILE``: run a grid of methods x datasets x seeds (:mod:`xsearch.cli.leaderboard`).
- ``xsearch index|search|serve|encode`` (:mod:`xsearch.cli.search`), ``xsearch inspect|export``
  (:mod:`xsearch.cli.tools`).
"""
from __future__ import annotations

import logging
import os
import pickle
import sys

from xsearch.cli.data import _data_command
from xsearch.cli.leaderboard import _leaderboard_command, _log_wandb_table
from xsearch.cli.search import _encode_command, _index_command, _search_command, _serve_command
from xsearch.cli.tools import _export_command, _inspect_command

__all__ = ["COMMANDS", "main", "_log_wandb_table"]

COMMANDS = {"data": _data_command, "leaderboard": _leaderboard_command, "index": _index_command,
            "search": _search_command, "serve": _serve_command, "encode": _encode_command,
            "inspect": _inspect_command, "export": _export_command}
"""The subcommands besides LightningCLI's ``fit|validate|test|predict``: name -> function of the remaining arguments."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xsearch`` console script."""
    from xsearch.allocator import keep_freed_memory
    from xsearch.results import ResultsStoreError

    keep_freed_memory()  # training steps reuse their activation buffers instead of faulting them in again
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; opt in with WANDB_MODE=online
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        from xsearch.cli.lightning import run

        run(argv)
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
