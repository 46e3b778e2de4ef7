"""A wrong config gives one line naming the key and what was expected, before any model is built."""
from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from xsearch.cli import main
from xsearch.config_types import ClosedUnitInterval, PositiveFloat, PositiveInt

CONFIG = str(Path(__file__).parents[1] / "configs" / "tiny" / "dual_encoder.yaml")


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI gets as far as building the model and datamodule."""
    from lightning.pytorch.cli import LightningCLI

    def built(self):
        raise AssertionError("classes were instantiated before the config error")

    monkeypatch.setattr(LightningCLI, "instantiate_classes", built)


@pytest.mark.parametrize("args, expected", [
    (["--data.batch_sise", "3"], "xsearch fit: error: unrecognized arguments: --data.batch_sise 3; did you mean --data.batch_size?"),
    (["--data.batch_size", "abc"], "xsearch fit: error: data.batch_size: expected an integer > 0, got abc"),
    (["--data.dataset", "nope"], "error: data.dataset: unknown dataset 'nope'; expected one of celeba, coco_pfs, cuhk_pedes"),
    (["--model.class_path", "xsearch.models.Nope"],
     "xsearch fit: error: model.class_path: 'xsearch.models.Nope': module 'xsearch.models' has no attribute 'Nope'; methods: "),
    (["--data.root", "/nonexistent/pedes", "--data.generate", "null"], "error: data.root: /nonexistent/pedes does not exist"),
])
def test_config_errors_are_one_line_naming_the_key(args, expected, capsys, no_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", CONFIG, "--trainer.logger", "false", *args])
    assert stop.value.code == 2
    captured = capsys.readouterr().err
    err = [line for line in captured.splitlines() if "error:" in line]  # (log lines such as "Seed set" may precede it)
    assert len(err) == 1 and expected in err[0], err
    assert "usage:" not in captured
    if "class_path" in expected:
        assert "xsearch.models.IRRA" in err[0] and "xsearch.models.DualEncoder" in err[0]


IMPOSSIBLE = [
    (["--data.batch_size", "0"], "xsearch fit: error: data.batch_size: expected an integer > 0, got 0"),
    (["--data.batch_size", "-4"], "xsearch fit: error: data.batch_size: expected an integer > 0, got -4"),
    (["--data.instances", "0"], "xsearch fit: error: data.instances: expected an integer > 0, got 0"),
    (["--data.eval_batch_size", "2.5"], "xsearch fit: error: data.eval_batch_size: expected an integer > 0, got 2.5"),
    (["--data.num_workers", "-1"], "xsearch fit: error: data.num_workers: expected an integer >= 0, got -1"),
    (["--data.image_size", "[64, 0]"], "xsearch fit: error: data.image_size: expected an integer > 0, got 0"),
    (["--model.init_args.embed_dim", "0"], "xsearch fit: error: model.init_args.embed_dim: expected an integer > 0, got 0"),
    (["--model.init_args.projection_hidden", "0"],
     "xsearch fit: error: model.init_args.projection_hidden: expected an integer > 0 or null, got 0"),
    (["--model.init_args.temperature", "0"], "xsearch fit: error: model.init_args.temperature: expected a number > 0, got 0"),
    (["--model.init_args.lr", "-0.1"], "xsearch fit: error: model.init_args.lr: expected a number > 0, got -0.1"),
    (["--model.init_args.sdm_weight", "-1"], "xsearch fit: error: model.init_args.sdm_weight: expected a number >= 0, got -1"),
    (["--model.init_args.projection_dropout", "1.5"],
     "xsearch fit: error: model.init_args.projection_dropout: expected a number in [0, 1], got 1.5"),
    (["--model.init_args.text_encoder.init_args.max_length", "0"],
     "xsearch fit: error: model.init_args.text_encoder.init_args.max_length: expected an integer > 0, got 0"),
    (["--trainer.max_epochs", "-5"],
     "xsearch fit: error: trainer.max_epochs: expected an integer >= -1 (-1: no limit) or null, got -5"),
    (["--trainer.max_steps", "-2"], "xsearch fit: error: trainer.max_steps: expected an integer >= -1 (-1: no limit), got -2"),
    (["--trainer.accumulate_grad_batches", "0"],
     "xsearch fit: error: trainer.accumulate_grad_batches: expected an integer >= 1, got 0"),
    (["--trainer.limit_val_batches", "1.5"],
     "xsearch fit: error: trainer.limit_val_batches: expected a fraction in [0, 1] or a whole number of batches >= 0, got 1.5"),
    (["--last_every_n_steps", "-1"], "xsearch fit: error: last_every_n_steps: expected an integer >= 0, got -1"),
]


@pytest.mark.parametrize("args, expected", IMPOSSIBLE, ids=[" ".join(a) for a, _ in IMPOSSIBLE])
def test_impossible_values_are_one_line_naming_the_key_before_anything_is_built(args, expected, capsys, no_model,
                                                                                 tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", CONFIG, "--trainer.logger", "false", *args])
    assert stop.value.code == 2
    captured = capsys.readouterr().err
    err = [line for line in captured.splitlines() if "error:" in line]
    assert len(err) == 1 and err[0].startswith(expected), err  # SystemExit(2): no exception got out
    assert "usage:" not in captured


@pytest.mark.parametrize("args", [["--trainer.max_epochs", "-1"], ["--trainer.max_epochs", "null"],
                                  ["--trainer.max_epochs", "0"], ["--data.num_workers", "0"],
                                  ["--model.init_args.projection_hidden", "null"], ["--model.init_args.sdm_weight", "0"]])
def test_limits_and_nulls_lightning_accepts_pass_the_checks(args, no_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="classes were instantiated"):  # got as far as building the classes
        main(["fit", "--config", CONFIG, "--trainer.logger", "false", *args])


def test_restricted_values_reach_the_classes_as_plain_numbers():
    """A checkpoint keeps nothing of a jsonargparse type (a weights_only load would refuse it)."""
    def options(size: tuple[PositiveInt, PositiveInt] = (2, 2), hidden: PositiveInt | None = None,
                lr: PositiveFloat = 1.0, dropout: ClosedUnitInterval = 0.0) -> None:
        """Options."""

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(options, "o")
    parsed = parser.parse_args(["--o.size", "[3, 4]", "--o.hidden", "5", "--o.lr", "0.5", "--o.dropout", "1"]).o
    with pytest.raises(Exception, match="Not of type ClosedUnitInterval"):
        parser.parse_args(["--o.dropout", "2"])
    assert [type(v) for v in (*parsed.size, parsed.hidden, parsed.lr, parsed.dropout)] == [int, int, int, float, float]


@pytest.mark.parametrize("command", [["test"], ["fit", "--test_after_fit", "true"]])
def test_a_results_store_that_is_not_sqlite_stops_the_run_before_it_evaluates(command, capsys, no_model, tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.sqlite").write_text("my notes\n")
    with pytest.raises(SystemExit) as stop:
        main([*command, "--config", CONFIG, "--trainer.logger", "false", "--results", "notes.sqlite"])
    assert stop.value.code == 2  # no_model: nothing was built, so nothing was trained or evaluated
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert err == [f"xsearch {command[0]}: error: --results: results store notes.sqlite is not a usable SQLite database "
                   "(file is not a database); move it away or pass another path"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]  # no runs/, no data generated
    assert Path("notes.sqlite").read_text() == "my notes\n"


def test_a_fit_that_records_nothing_does_not_check_the_store(no_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.sqlite").write_text("my notes\n")
    with pytest.raises(AssertionError, match="classes were instantiated"):
        main(["fit", "--config", CONFIG, "--trainer.logger", "false", "--results", "notes.sqlite"])
