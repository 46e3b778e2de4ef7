"""The leaderboard grid: parsing, resume after an interruption, placeholders, concurrent writers, end to end."""
from __future__ import annotations

import json
import multiprocessing
import textwrap
from pathlib import Path

import pytest

from xsearch.grid import CELL_ENV, GRID_ENV, Step, finished, load_grid, run_grid
from xsearch.results import ResultsStore, RunRecord

GRID = """
name: g
seeds: [0, 1]
cells:
  a:
    - fit: [--config, a.yaml]
  b:
    - fit: [--config, b0.yaml]
      record: false
    - fit: [--config, b1.yaml, --model.init_args.init_from, "{step0}/checkpoints/last.ckpt"]
    - test: [--config, b2.yaml, --ckpt_path, "{step0}/checkpoints/last.ckpt", --note, "seed {seed}"]
      name: b/baseline
"""


def _grid(tmp_path: Path, text: str = GRID) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


class FakeRunner:
    """Stands in for ``python -m xsearch.cli``: records the call and appends the row a recording step would."""

    def __init__(self, results: Path, fail_on: str | None = None) -> None:
        self.results, self.fail_on, self.calls = results, fail_on, []

    def __call__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.calls.append((command, env[CELL_ENV]))
        if self.fail_on and self.fail_on in command:
            raise RuntimeError("killed")
        seed = int(command[command.index("--seed_everything") + 1])
        if env[CELL_ENV]:
            ResultsStore(self.results).append(RunRecord(
                method="m", dataset="d", metrics={"R1": float(seed)}, config={}, checkpoint="c", seed=seed,
                wall_time_s=1.0, extra={"grid": env[GRID_ENV], "cell": env[CELL_ENV]}))


def test_a_grid_file_parses_into_steps_with_names(tmp_path):
    grid = load_grid(_grid(tmp_path))
    assert grid.name == "g" and grid.seeds == (0, 1) and list(grid.cells) == ["a", "b"]
    assert [(s.command, s.name) for s in grid.cells["b"]] == [("fit", None), ("fit", "b"), ("test", "b/baseline")]
    assert grid.compare == {}
    assert load_grid(_grid(tmp_path, GRID + "compare: {b: [a, b/baseline]}\n")).compare == {"b": ("a", "b/baseline")}


@pytest.mark.parametrize("text, message", [
    ("name: g\ncells: {a: []}\n", "cell 'a': expected a non-empty list of steps"),
    ("name: g\ncells: {a: [{fit: [x], test: [y]}]}\n", "cell 'a' step 0: expected exactly one of"),
    ("name: g\ncells: {a: [{fit: [x], recrd: false}]}\n", r"unknown key\(s\) \['recrd'\]"),
    ("name: g\nseeds: [zero]\ncells: {a: [{fit: [x]}]}\n", "seeds: expected a non-empty list of integers"),
    ("name: g\ncells: {a: [{fit: [x], shared: 1}]}\n", "cell 'a' step 0: 'shared' should be true or false, got 1"),
    ("cells: {}\n", "top level: expected a mapping with 'name'"),
    ("name: g\ncells: {a: [{fit: [x]}]}\ncompare: {a: [b]}\n", r"compare 'a': unknown row name\(s\) \['b'\]; the grid records \['a'\]"),
    ("name: g\ncells: {a: [{fit: [x]}]}\ncompare: [a]\n", "compare: expected a mapping of row name -> list of row names"),
])
def test_bad_grid_files_name_the_place_and_what_was_expected(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_grid(_grid(tmp_path, text))


def test_steps_get_their_own_folders_seeds_and_placeholders(tmp_path):
    results = tmp_path / "r.sqlite"
    runner = FakeRunner(results)
    report = run_grid(load_grid(_grid(tmp_path)), results, tmp_path / "runs", seeds=[1], cells=["b"], runner=runner)
    assert report.ran == [("b", 1)] and not report.failed
    (first, _), (second, cell1), (third, cell2) = runner.calls
    folder = tmp_path / "runs" / "g" / "b" / "seed1"
    assert first[:3] == ["fit", "--config", "b0.yaml"] and "--tag" not in first
    assert first[first.index("--test_after_fit") + 1] == "false"  # an intermediate step: not even tested
    assert first[first.index("--checkpoint.dirpath") + 1] == str(folder / "step0" / "checkpoints")
    assert second[second.index("--model.init_args.init_from") + 1] == str(folder / "step0" / "checkpoints" / "last.ckpt")
    assert second[second.index("--test_after_fit") + 1] == "true" and (cell1, cell2) == ("b", "b/baseline")
    assert third[0] == "test" and "seed 1" in third and third[third.index("--tag") + 1] == "b/baseline"
    assert finished(ResultsStore(results), "g") == {("b", 1), ("b/baseline", 1)}


def test_paths_inside_the_folder_the_grid_runs_in_are_passed_relative_to_it(tmp_path):
    """The store of record keeps no absolute path of the machine: configs and checkpoints are relative."""
    runner = FakeRunner(tmp_path / "r.sqlite")
    run_grid(load_grid(_grid(tmp_path)), tmp_path / "r.sqlite", tmp_path / "runs", seeds=[1], cells=["b"], cwd=tmp_path,
             runner=runner)
    first, second = runner.calls[0][0], runner.calls[1][0]
    assert first[first.index("--results") + 1] == "r.sqlite"
    assert first[first.index("--checkpoint.dirpath") + 1] == "runs/g/b/seed1/step0/checkpoints"
    assert second[second.index("--model.init_args.init_from") + 1] == "runs/g/b/seed1/step0/checkpoints/last.ckpt"
    assert not any(str(tmp_path) in arg for command, _ in runner.calls for arg in command)


SHARED = """
name: g
seeds: [0, 1, 2]
cells:
  c:
    - fit: [--config, pretrain.yaml]
      record: false
      shared: true
    - fit: [--config, c.yaml, --model.init_args.init_from, "{step0}/checkpoints/last.ckpt"]
    - test: [--config, zero_shot.yaml, --ckpt_path, "{step0}/checkpoints/last.ckpt"]
      name: c/zero-shot
      shared: true
"""


@pytest.mark.parametrize("jobs", [1, 3])
def test_a_shared_step_runs_once_per_cell_and_every_seed_uses_it(tmp_path, jobs):
    results, grid = tmp_path / "r.sqlite", load_grid(_grid(tmp_path, SHARED))
    runner = FakeRunner(results)
    report = run_grid(grid, results, tmp_path / "runs", jobs=jobs, runner=runner)
    assert sorted(report.ran) == [("c", 0), ("c", 1), ("c", 2)] and not report.failed
    commands = [command for command, _ in runner.calls]
    shared = tmp_path / "runs" / "g" / "c" / "shared" / "step0"
    pretrain = [c for c in commands if "pretrain.yaml" in c]
    assert len(pretrain) == 1 and pretrain[0][pretrain[0].index("--seed_everything") + 1] == "0"
    assert pretrain[0][pretrain[0].index("--trainer.default_root_dir") + 1] == str(shared)
    fine_tuned = [c for c in commands if "c.yaml" in c]
    assert sorted(c[c.index("--seed_everything") + 1] for c in fine_tuned) == ["0", "1", "2"]
    assert {c[c.index("--model.init_args.init_from") + 1] for c in fine_tuned} == {str(shared / "checkpoints" / "last.ckpt")}
    assert sum("zero_shot.yaml" in c for c in commands) == 1
    assert finished(ResultsStore(results), "g") == {("c", 0), ("c", 1), ("c", 2), ("c/zero-shot", 0)}
    assert run_grid(grid, results, tmp_path / "runs", runner=FakeRunner(results)).ran == []  # all done, shared too
    forced = FakeRunner(results)
    run_grid(grid, results, tmp_path / "runs", force=True, jobs=jobs, runner=forced)
    assert sum("pretrain.yaml" in c for c, _ in forced.calls) == 1 and len(forced.calls) == 1 + 3 + 1


def test_an_interrupted_grid_runs_only_what_is_missing_when_run_again(tmp_path):
    results, grid = tmp_path / "r.sqlite", load_grid(_grid(tmp_path))
    killed = FakeRunner(results, fail_on="b1.yaml")  # cell b dies at its second step, for both seeds
    report = run_grid(grid, results, tmp_path / "runs", runner=killed)
    assert sorted(report.ran) == [("a", 0), ("a", 1)] and sorted((c, s) for c, s, _ in report.failed) == [("b", 0), ("b", 1)]
    again = FakeRunner(results)
    report = run_grid(grid, results, tmp_path / "runs", runner=again)
    assert sorted(report.skipped) == [("a", 0), ("a", 1)] and sorted(report.ran) == [("b", 0), ("b", 1)]
    assert all("b0.yaml" not in command for command, _ in again.calls)  # step 0 finished before: DONE marker
    assert sorted(cell for _, cell in again.calls) == ["b", "b", "b/baseline", "b/baseline"]
    assert len(ResultsStore(results).rows()) == 2 + 4  # a x 2 seeds, then b and b/baseline x 2 seeds: no row twice
    assert run_grid(grid, results, tmp_path / "runs", runner=FakeRunner(results)).ran == []  # nothing left
    forced = FakeRunner(results)
    run_grid(grid, results, tmp_path / "runs", cells=["a"], seeds=[0], force=True, runner=forced)
    assert [cell for _, cell in forced.calls] == ["a"]


def _append_rows(path: str, writer: int, count: int) -> None:
    store = ResultsStore(path)
    for i in range(count):
        store.append(RunRecord(method=f"w{writer}", dataset="d", metrics={"R1": float(i)}, config={"i": i},
                               checkpoint="c", seed=i, wall_time_s=0.0, extra={"grid": "g", "cell": f"w{writer}"}))


def test_two_processes_writing_the_store_at_once_lose_no_row(tmp_path):
    path = str(tmp_path / "r.sqlite")
    ResultsStore(path).rows()  # schema created once up front, as a grid does
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_rows, args=(path, w, 40)) for w in range(2)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
    assert [p.exitcode for p in writers] == [0, 0]
    rows = ResultsStore(path).rows()
    assert len(rows) == 80 and len({r.id for r in rows}) == 80
    assert {(r.method, r.seed) for r in rows} == {(f"w{w}", i) for w in range(2) for i in range(40)}


def test_unknown_cells_are_refused_with_the_list(tmp_path):
    with pytest.raises(KeyError, match=r"unknown cell\(s\) \['c'\] in grid 'g'; cells: a, b"):
        run_grid(load_grid(_grid(tmp_path)), tmp_path / "r.sqlite", cells=["c"], runner=FakeRunner(tmp_path))


@pytest.mark.slow
def test_xsearch_leaderboard_run_records_grid_cells_and_resumes(tmp_path, monkeypatch, capsys):
    from xsearch.cli import main

    configs = Path(__file__).parents[1] / "configs" / "tiny"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XSEARCH_DATA", str(tmp_path / "data"))
    _grid(tmp_path, f"""
    name: tiny
    seeds: [0]
    cells:
      dual_encoder:
        - fit: [--config, {configs / 'dual_encoder.yaml'}, --trainer.limit_train_batches, "2", --trainer.logger, "false"]
      dual_encoder/untrained:
        - test: [--config, {configs / 'dual_encoder.yaml'}, --trainer.logger, "false"]
      scratch:  # an intermediate step whose config would record: the grid says not to
        - test: [--config, {configs / 'dual_encoder.yaml'}, --trainer.logger, "false"]
          record: false
    """)
    args = ["leaderboard", "run", "--grid", "grid.yaml", "--results", "r.sqlite", "--out", "runs"]
    assert main(args) == 0
    rows = ResultsStore(tmp_path / "r.sqlite").rows()
    assert sorted(r.extra["cell"] for r in rows) == ["dual_encoder", "dual_encoder/untrained"]
    assert all(r.extra["grid"] == "tiny" and r.seed == 0 and r.extra["peak_memory_mb"] > 0 for r in rows)
    fit = next(r for r in rows if r.extra["cell"] == "dual_encoder")
    assert Path(fit.checkpoint).parent == Path("runs/tiny/dual_encoder/seed0/step0/checkpoints")  # relative: no machine path
    assert str(tmp_path) not in json.dumps(fit.config)
    assert fit.wall_time_s > next(r for r in rows if r.extra["cell"] != "dual_encoder").wall_time_s  # fit + test
    out = capsys.readouterr().out
    assert "3 cell x seed runs done, 0 already in" in out
    assert main(args) == 0 and "1 cell x seed runs done, 2 already in" in capsys.readouterr().out  # scratch: DONE
    assert len(ResultsStore(tmp_path / "r.sqlite").rows()) == 2


def test_placeholders_are_only_steps_and_seed_and_globs_name_one_file(tmp_path, monkeypatch):
    from xsearch.grid import Unit, step_command

    grid = load_grid(_grid(tmp_path, """
    name: g
    cells:
      a:
        - fit: [--data.generate, "{identities: 10}", --x, "{seed}"]
        - test: [--ckpt_path, "{step0}/best-*.ckpt"]
          name: a/best
        - test: [--y, "{step9}"]
          record: false
    """))
    unit = Unit("a", 3, grid.cells["a"])
    first = step_command(grid, unit, 0, tmp_path, tmp_path / "r.sqlite")
    assert first[1:5] == ["--data.generate", "{identities: 10}", "--x", "3"]
    with pytest.raises(FileNotFoundError, match=r"best-\*.ckpt should match exactly one file, found 0"):
        step_command(grid, unit, 1, tmp_path, tmp_path / "r.sqlite")
    step0 = tmp_path / "g" / "a" / "seed3" / "step0"
    step0.mkdir(parents=True)
    (step0 / "best-epoch03.ckpt").write_text("x")
    assert str(step0 / "best-epoch03.ckpt") in step_command(grid, unit, 1, tmp_path, tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match=r"unknown placeholder \{step9\}; known: \{step0\}, \{step1\}, \{step2\}, \{seed\}"):
        step_command(grid, unit, 2, tmp_path, tmp_path / "r.sqlite")


def test_seeds_of_one_grid_cell_aggregate_even_when_their_configs_differ(tmp_path):
    from xsearch.leaderboard import leaderboard_table

    records = [RunRecord(method="tgfr", dataset="d", metrics={"R1": r1}, config={}, config_hash=f"h{seed}",
                         checkpoint="c", seed=seed, wall_time_s=1.0, extra={"grid": "g", "cell": "tgfr"})
               for seed, r1 in ((0, 10.0), (1, 14.0))]
    (row,) = leaderboard_table(records)
    assert row["n"] == 2 and row["R1_mean"] == 12.0 and row["R1_std"] == pytest.approx(2.0 ** 0.5 * 2) and row["cell"] == "tgfr"


def _shipped_steps() -> list[tuple[str, str, Step]]:
    root = Path(__file__).parents[1]
    return [(path.name, cell, step) for path in sorted((root / "configs" / "leaderboard").glob("*.yaml"))
            for cell, steps in load_grid(path).cells.items() for step in steps]


def test_the_shipped_grid_files_parse_and_name_existing_configs():
    root = Path(__file__).parents[1]
    for name, cell, step in _shipped_steps():
        configs = [step.args[i + 1] for i, arg in enumerate(step.args) if arg == "--config"]
        assert configs and all((root / config).is_file() for config in configs), f"{name}: {cell}: {configs}"


@pytest.mark.parametrize("step", [step for _, _, step in _shipped_steps() if step.args.count("--config") > 1],
                         ids=lambda step: step.name)
def test_a_step_with_a_data_overlay_parses_as_one_config(step, capsys):
    """``--config <method> --config configs/data/<set>.yaml``: the overlay's data replaces the method's."""
    from xsearch.cli import main

    root = Path(__file__).parents[1]
    args = [str(root / a) if a.startswith("configs/") else a for a in step.args if "{" not in a]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "dataset: synth_faces" in printed and "root: synth_faces_300" in printed


@pytest.mark.slow  # starts an offline W&B run (~10 s)
def test_the_leaderboard_is_logged_offline_as_a_wandb_table_in_the_grid_group(tmp_path, monkeypatch):
    import json

    from xsearch.cli import _log_wandb_table

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = tmp_path / "r.sqlite"
    for seed in (0, 1):
        ResultsStore(results).append(RunRecord(method="irra", dataset="d", metrics={"R1": 10.0 + seed}, config={},
                                               checkpoint="c", seed=seed, wall_time_s=1.0, extra={"grid": "g", "cell": "irra"}))
    import wandb

    wandb.teardown()  # an earlier test's W&B setup (WANDB_MODE=disabled) would otherwise be reused in this process
    calls, real_init = [], wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or real_init(**kwargs))
    _log_wandb_table("g", str(results), str(tmp_path / "runs"))
    assert calls[0]["group"] == "g" and calls[0]["job_type"] == "leaderboard"
    (table_file,) = (tmp_path / "runs").rglob("leaderboard_*.table.json")  # the offline run's files
    table = json.loads(table_file.read_text())
    row = dict(zip(table["columns"], table["data"][0]))
    assert row["method"] == "irra" and row["n"] == 2 and row["R1_mean"] == pytest.approx(10.5)
