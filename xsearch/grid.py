"""Leaderboard grid: methods x datasets x seeds from the configs, resumable, one process per step.

A grid file (``configs/leaderboard/*.yaml``)::

    name: synthetic
    seeds: [0, 1, 2]
    cells:
      irra:                                  # a cell: its steps run in order, per seed
        - fit: [--config, configs/irra/synth_pedes.yaml]
      tgfr:
        - fit: [--config, configs/tgfr/synth_faces_face.yaml]
          record: false                      # an intermediate step: trains, records nothing
        - fit: [--config, configs/tgfr/synth_faces_align.yaml,
                --model.init_args.init_from, "{step0}/checkpoints/last.ckpt"]
      idclip:
        - ...
        - test: [--config, configs/idclip/synth_pfs_baseline_none.yaml, --ckpt_path, "{step0}/checkpoints/last.ckpt"]
          name: idclip/clip-zero-shot-none   # its own leaderboard row
          shared: true                       # once for the cell, not per seed (see below)
    compare:                                 # optional: paired per-seed differences in the report
      irra: [dual_encoder, irra/no-mlm]      # row name -> the row names it is compared with

An argument with ``*`` must match exactly one file when the step starts (``{step2}/checkpoints/best-*.ckpt``).
Every step is one ``xsearch fit`` (with ``--test_after_fit true`` when it records) or ``xsearch test`` in its own
process, with ``--seed_everything <seed>`` and its own folder ``<out>/<grid>/<cell>/seed<seed>/step<i>`` (also
``{step<i>}`` in the arguments; ``{seed}`` is the seed). A recording step appends one row to the results store
with ``extra = {"grid", "cell" (the step's name, default the cell's), "tag", "peak_memory_mb", ...}``
(the CLI reads ``XSEARCH_GRID`` / ``XSEARCH_GRID_CELL`` from the environment) and is done when that row exists; an
intermediate step is done when its ``DONE`` marker exists (written after it exits 0). So an interrupted grid,
run again, runs only what is missing; ``force`` reruns everything. Cells x seeds run one at a time or ``jobs`` at
once (each process then gets ``cpus / jobs`` threads). W&B: every run of a grid is in the group ``<grid name>``
(``WANDB_RUN_GROUP``).

A ``shared: true`` step runs once per cell, with the grid's first seed, in ``<out>/<grid>/<cell>/shared/step<i>``,
and every seed's later steps use it: the stand-in for a pretrained model the paper takes as given and frozen (TGFR's
face recogniser, Id-CLIP's CLIP), and tests of it alone (its row has that one seed). Seeds running at once wait for
it (a file lock).
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from xsearch.results import ResultsStore

log = logging.getLogger(__name__)

__all__ = ["Grid", "Step", "Unit", "load_grid", "run_grid", "finished"]

PLACEHOLDER = re.compile(r"\{(step\d+|seed)\}")
"""``{step<i>}`` and ``{seed}`` in step arguments; other braces (YAML flow mappings) are left alone."""
GRID_ENV, CELL_ENV = "XSEARCH_GRID", "XSEARCH_GRID_CELL"
"""Environment variables through which a grid step tells the CLI what to record in ``extra``."""


@dataclass(frozen=True)
class Step:
    """One ``xsearch <command> <args>``; ``name`` = its leaderboard row (``None``: records nothing)."""

    command: str
    args: tuple[str, ...]
    name: str | None
    shared: bool = False


@dataclass(frozen=True)
class Grid:
    name: str
    seeds: tuple[int, ...]
    cells: dict[str, tuple[Step, ...]]
    source: Path | None = None
    compare: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Row name -> the row names its per-seed differences are reported against (:mod:`xsearch.comparison`)."""


@dataclass(frozen=True)
class Unit:
    """One cell at one seed: what runs in one worker, steps in order."""

    cell: str
    seed: int
    steps: tuple[Step, ...]


def _fail(source: Any, where: str, what: str) -> ValueError:
    return ValueError(f"{source}: {where}: {what}")


def load_grid(path: str | Path) -> Grid:
    """Parse a grid file; errors name the file, the cell and step, and what was expected."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read grid file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not isinstance(raw.get("cells"), dict):
        raise _fail(path, "top level", "expected a mapping with 'name' (string), 'seeds' (list of int) and 'cells'")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _fail(path, "seeds", f"expected a non-empty list of integers, got {seeds!r}")
    cells: dict[str, tuple[Step, ...]] = {}
    for cell, steps in raw["cells"].items():
        if not isinstance(steps, list) or not steps:
            raise _fail(path, f"cell {cell!r}", "expected a non-empty list of steps")
        parsed = []
        for i, step in enumerate(steps):
            where = f"cell {cell!r} step {i}"
            commands = [c for c in ("fit", "test") if c in (step or {})] if isinstance(step, dict) else []
            if len(commands) != 1 or not isinstance(step[commands[0]], list):
                raise _fail(path, where, "expected exactly one of 'fit: [args]' or 'test: [args]'")
            unknown = set(step) - {"fit", "test", "record", "name", "shared"}
            if unknown:
                raise _fail(path, where, f"unknown key(s) {sorted(unknown)}; expected fit|test, record, name, shared")
            if not isinstance(step.get("shared", False), bool):
                raise _fail(path, where, f"'shared' should be true or false, got {step['shared']!r}")
            records = step.get("record", True)
            name = (step.get("name") or cell) if records else None
            parsed.append(Step(commands[0], tuple(str(a) for a in step[commands[0]]), name, step.get("shared", False)))
        names = [s.name for s in parsed if s.name]
        if len(names) != len(set(names)):
            raise _fail(path, f"cell {cell!r}", f"two steps record under the same name: {names}")
        cells[str(cell)] = tuple(parsed)
    return Grid(raw["name"], tuple(seeds), cells, path, _compare(path, raw.get("compare", {}), cells))


def _compare(path: Path, raw: Any, cells: dict[str, tuple[Step, ...]]) -> dict[str, tuple[str, ...]]:
    """The ``compare`` mapping, every name a recorded row of the grid."""
    rows = {step.name for steps in cells.values() for step in steps if step.name}
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise _fail(path, "compare", f"expected a mapping of row name -> list of row names, got {raw!r}")
    for name, others in raw.items():
        unknown = sorted({str(name), *map(str, others)} - rows)
        if unknown:
            raise _fail(path, f"compare {name!r}", f"unknown row name(s) {unknown}; the grid records {sorted(rows)}")
    return {str(name): tuple(map(str, others)) for name, others in raw.items()}


def finished(store: ResultsStore, grid: str) -> set[tuple[str, int]]:
    """``(row name, seed)`` of the rows this grid has already stored."""
    done = set()
    for row in store.rows() if store.path.exists() else []:
        extra = row.extra or {}
        if extra.get("grid") == grid and extra.get("cell") and row.seed is not None:
            done.add((extra["cell"], row.seed))
    return done


def unit_dir(out: Path, grid: Grid, unit: Unit) -> Path:
    return out / grid.name / unit.cell.replace("/", "-") / f"seed{unit.seed}"


def step_dir(out: Path, grid: Grid, unit: Unit, index: int) -> Path:
    """Folder of step ``index``: per seed, or the cell's ``shared`` one."""
    if unit.steps[index].shared:
        return out / grid.name / unit.cell.replace("/", "-") / "shared" / f"step{index}"
    return unit_dir(out, grid, unit) / f"step{index}"


def step_seed(grid: Grid, unit: Unit, index: int) -> int:
    """The seed step ``index`` runs with: the unit's, or the grid's first for a shared step."""
    return grid.seeds[0] if unit.steps[index].shared else unit.seed


def path_under(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` when inside it (what the results store keeps: no machine's absolute path)."""
    if base is not None and path.is_absolute() and path.is_relative_to(base):
        return path.relative_to(base).as_posix()
    return str(path)


def step_command(grid: Grid, unit: Unit, index: int, out: Path, results: Path, base: Path | None = None) -> list[str]:
    """The ``xsearch`` arguments of step ``index`` of ``unit`` (placeholders filled); paths inside ``base`` (the
    folder the step runs in) are written relative to it, so the recorded config and checkpoint carry none of this
    machine's absolute paths."""
    step = unit.steps[index]
    seed = step_seed(grid, unit, index)
    values = {f"step{i}": path_under(step_dir(out, grid, unit, i), base) for i in range(len(unit.steps))} | {"seed": str(seed)}

    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise ValueError(f"{grid.source}: cell {unit.cell!r} step {index}: unknown placeholder {match.group(0)}; "
                             f"known: {', '.join('{' + k + '}' for k in values)}")
        return values[match.group(1)]

    args = [PLACEHOLDER.sub(fill, a) for a in step.args]
    args = [_expand_glob(a, grid, unit, index, base) for a in args]
    own = step_dir(out, grid, unit, index)
    command = [step.command, *args, "--seed_everything", str(seed), "--results", path_under(results, base),
               "--trainer.default_root_dir", path_under(own, base)]
    if step.command == "fit":
        command += ["--checkpoint.dirpath", path_under(own / "checkpoints", base),
                    "--test_after_fit", "true" if step.name else "false"]
    if step.name:
        command += ["--tag", step.name]
    return command


def _expand_glob(arg: str, grid: Grid, unit: Unit, index: int, base: Path | None = None) -> str:
    """An argument with ``*`` names one file (e.g. ``{step2}/checkpoints/best-*.ckpt``): the single match (a relative
    pattern is relative to ``base``, and so is the match)."""
    if "*" not in arg or "/" not in arg:
        return arg
    matches = sorted(Path("/").glob(arg.lstrip("/")) if arg.startswith("/") else (base or Path()).glob(arg))
    if base is not None and not arg.startswith("/"):
        matches = [match.relative_to(base) for match in matches]
    if len(matches) != 1:
        raise FileNotFoundError(f"{grid.source}: cell {unit.cell!r} step {index}: {arg} should match exactly one file, "
                                f"found {len(matches)}")
    return str(matches[0])


Runner = Callable[[list[str], dict[str, str], Path], None]


def subprocess_runner(command: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run ``python -m xsearch.cli <command>``; raise on a non-zero exit."""
    completed = subprocess.run([sys.executable, "-m", "xsearch.cli", *command], env=env, cwd=cwd)
    if completed.returncode:
        raise RuntimeError(f"xsearch {' '.join(command)} exited with {completed.returncode}")


def run_unit(grid: Grid, unit: Unit, out: Path, results: Path, done: set[tuple[str, int]], force: bool,
             threads: int, cwd: Path, runner: Runner) -> float:
    """Run the steps of one cell x seed that are not done yet; returns the wall time."""
    started = time.perf_counter()
    for index, step in enumerate(unit.steps):
        folder = step_dir(out, grid, unit, index)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:  # a shared step: the other seeds wait, then find it done
            fcntl.flock(lock, fcntl.LOCK_EX)
            _run_step(grid, unit, index, folder, out, results, done, force, threads, cwd, runner)
    return time.perf_counter() - started


def _run_step(grid: Grid, unit: Unit, index: int, folder: Path, out: Path, results: Path, done: set[tuple[str, int]],
              force: bool, threads: int, cwd: Path, runner: Runner) -> None:
    step, seed = unit.steps[index], step_seed(grid, unit, index)
    marker, key = folder / "DONE", (f"{unit.cell}#shared-step{index}", seed)
    if step.shared and key in done:
        return  # another seed ran it in this grid run (force included)
    if not force and ((step.name and (step.name, seed) in done) or (not step.name and marker.exists())):
        return
    marker.unlink(missing_ok=True)
    env = {**os.environ, GRID_ENV: grid.name, CELL_ENV: step.name or "", "WANDB_RUN_GROUP": grid.name,
           "OMP_NUM_THREADS": str(threads)}
    log.info("grid %s: %s seed %d step %d: xsearch %s", grid.name, unit.cell, seed, index, step.command)
    runner(step_command(grid, unit, index, out, results, cwd.absolute()), env, cwd)
    marker.write_text("done\n")
    if step.shared:
        done.add(key)


@dataclass
class GridReport:
    ran: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)


def run_grid(grid: Grid, results: str | Path, out: str | Path = "runs/leaderboard", seeds: Sequence[int] | None = None,
             cells: Sequence[str] | None = None, jobs: int = 1, force: bool = False, cwd: str | Path = ".",
             runner: Runner = subprocess_runner) -> GridReport:
    """Run every missing cell x seed of ``grid`` (``seeds`` / ``cells`` restrict it), ``jobs`` at a time."""
    unknown = sorted(set(cells or ()) - set(grid.cells))
    if unknown:
        raise KeyError(f"unknown cell(s) {unknown} in grid {grid.name!r}; cells: {', '.join(grid.cells)}")
    results, out = Path(results).absolute(), Path(out).absolute()
    done = set() if force else finished(ResultsStore(results), grid.name)
    units = [Unit(c, s, grid.cells[c]) for s in (seeds or grid.seeds) for c in (cells or grid.cells)]
    report = GridReport()
    todo = []
    for unit in units:
        rows = [(s.name, step_seed(grid, unit, i)) for i, s in enumerate(unit.steps) if s.name]
        (report.skipped if rows and all(r in done for r in rows) else todo).append(unit)
    report.skipped = [(u.cell, u.seed) for u in report.skipped]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_unit, grid, u, out, results, done, force, threads, Path(cwd), runner): u for u in todo}
        for future in concurrent.futures.as_completed(futures):
            unit = futures[future]
            try:
                seconds = future.result()
                report.ran.append((unit.cell, unit.seed))
                log.info("grid %s: %s seed %d finished in %.0f s", grid.name, unit.cell, unit.seed, seconds)
            except Exception as error:  # one failing cell does not stop the others; reported at the end
                report.failed.append((unit.cell, unit.seed, str(error)))
                log.error("grid %s: %s seed %d failed: %s", grid.name, unit.cell, unit.seed, error)
    return report
