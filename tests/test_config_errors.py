"""A wrong config gives one line naming the key and what was expected, before any model is built."""
from __future__ import annotations

from pathlib import Path

import pytest

from xsearch.cli import main

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
    (["--data.batch_size", "abc"], 'xsearch fit: error: Parser key "data.batch_size": Expected a <class \'int\'>. Got value: abc'),
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
