"""Shared checks over every registered method: a tiny config exists, and it trains, validates and tests
from the CLI on a tiny synthetic set (a newly registered method is covered automatically)."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml

import xsearch.models  # noqa: F401  (registers the methods)
from xsearch.cli import main
from xsearch.registry import METHODS

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_ships_a_tiny_config_naming_it(name):
    config = CONFIGS / "tiny" / f"{name}.yaml"
    assert config.is_file(), f"configs/tiny/{name}.yaml is missing"
    class_path = next(line.split(":", 1)[1].strip() for line in config.read_text().splitlines() if "class_path: xsearch.models." in line)
    module, _, cls = class_path.rpartition(".")
    assert getattr(__import__(module, fromlist=[cls]), cls) is METHODS.get(name)


@pytest.mark.slow
@pytest.mark.parametrize("config", [n for n in METHODS.names() if n != "dual_encoder"]  # dual_encoder: test_cli.py
                         + ["partlevel_pretrained"])  # PretrainedTowers: WordPiece words and a CNN grid in test_parts.png
def test_tiny_config_fits_tests_and_records(config, tmp_path, capsys, monkeypatch):
    name = config.removesuffix("_pretrained")
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "r.sqlite"
    args = ["fit", "--config", str(CONFIGS / "tiny" / f"{config}.yaml"), "--test_after_fit", "true",
            "--results", str(results), "--data.root", str(tmp_path / "data"), "--trainer.limit_train_batches", "4",
            "--tag", "smoke"]
    assert main(args) == 0
    dataset = yaml.safe_load((CONFIGS / "tiny" / f"{config}.yaml").read_text())["data"]["dataset"]
    assert re.search(rf"{name} on {dataset}(:\w+)* \(test\): R1", capsys.readouterr().out)
    assert (tmp_path / "runs" / "tiny" / "test_top5.png").is_file()
    if name == "partlevel":  # what each shared part token reads
        assert (tmp_path / "runs" / "tiny" / "test_parts.png").is_file()
    with sqlite3.connect(results) as db:
        method, metrics, extra = db.execute("SELECT method, metrics, extra FROM runs").fetchone()
    assert method == name and set(json.loads(metrics)) >= {"R1", "R5", "R10", "mAP", "mINP"}
    extra = json.loads(extra)
    assert extra["tag"] == "smoke" and extra["peak_memory_mb"] > 100 and "cell" not in extra  # not run by a grid
    if name == "idclip":  # general retrieval both ways + entity retrieval in the same row
        assert set(json.loads(metrics)) >= {"i2t_R1", "R50", "entity_R@1", "kmin_R@10", "mAP@10"}
