"""``xsearch leaderboard [show]`` (render the results store), ``xsearch leaderboard run --grid FILE`` (run a grid of
methods x datasets x seeds, :mod:`xsearch.grid`) and the grid's W&B leaderboard table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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

