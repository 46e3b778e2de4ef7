"""The ``xsearch`` command line end to end: data synth/check, fit + test on a tiny config, leaderboard."""
import json
import sqlite3
import time
from pathlib import Path

import pytest

from xsearch.cli import main

CONFIG = str(Path(__file__).parents[1] / "configs" / "tiny" / "dual_encoder.yaml")


def test_data_synth_and_check(tmp_path, capsys):
    out = tmp_path / "pedes"
    assert main(["data", "synth", "pedes", "--out", str(out), "--identities", "10", "--seed", "3"]) == 0
    assert (out / "reid_raw.json").is_file()
    capsys.readouterr()
    assert main(["data", "check", "synth_pedes", "--root", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "synth_pedes" and report["warnings"] == []
    assert [report["splits"][s]["identities"] for s in ("train", "val", "test")] == [8, 1, 1]
    records = json.loads((out / "reid_raw.json").read_text())
    assert report["splits"]["train"]["images"] == sum(r["split"] == "train" for r in records)


def test_data_check_unknown_dataset(tmp_path, capsys):
    assert main(["data", "check", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_then_test_records_results(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    overrides = ["--data.root", str(tmp_path / "data"), "--results", str(tmp_path / "r.sqlite")]
    assert main(["fit", "--config", CONFIG, "--test_after_fit", "true", *overrides]) == 0
    output = capsys.readouterr().out
    assert "dual_encoder on synth_pedes (test): R1" in output and "appended run #1" in output
    checkpoints = sorted((tmp_path / "runs" / "tiny" / "checkpoints").glob("best-*.ckpt"))
    assert len(checkpoints) == 1 and (tmp_path / "runs" / "tiny" / "test_top5.png").is_file()

    assert main(["test", "--config", CONFIG, "--ckpt_path", str(checkpoints[0]), *overrides]) == 0
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        rows = db.execute("SELECT method, dataset, checkpoint, metrics, config_hash FROM runs ORDER BY id").fetchall()
    assert len(rows) == 2 and rows[0][:2] == ("dual_encoder", "synth_pedes")
    first, second = (json.loads(r[3]) for r in rows)
    assert set(first) >= {"R1", "R5", "R10", "mAP", "mINP", "i2t_R1"}
    assert first["R1"] == pytest.approx(second["R1"])  # same checkpoint, same numbers
    assert rows[0][4] == rows[1][4]  # same experiment config hash
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(tmp_path / "r.sqlite"), "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table[0]["method"] == "dual_encoder" and table[0]["n"] == 2
    # an evaluation-time override wins over the hyperparameters stored in the checkpoint
    assert main(["test", "--config", CONFIG, "--ckpt_path", str(checkpoints[0]), "--model.init_args.ks", "[1, 3]", *overrides]) == 0
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        third = json.loads(db.execute("SELECT metrics FROM runs ORDER BY id DESC").fetchone()[0])
    assert "R3" in third and "R5" not in third and third["R1"] == pytest.approx(first["R1"])
    assert time.perf_counter() - started < 90


@pytest.mark.slow
def test_last_checkpoint_is_the_latest_epoch_even_when_val_stops_improving(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    # monitoring the epoch number with mode "min": only epoch 0 ever "improves"
    assert main(["fit", "--config", CONFIG, "--data.root", str(tmp_path / "data"), "--trainer.max_epochs", "2",
                 "--trainer.limit_train_batches", "2", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min"]) == 0
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch00.ckpt", "last.ckpt"]
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 4)


@pytest.mark.parametrize("config", sorted(str(p) for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                                           if p.parent.name not in ("leaderboard", "data")))  # tests/test_grid.py
def test_every_config_parses(config, capsys):
    """Each shipped config is valid for its classes (parsed and type-checked, nothing instantiated)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.slow
def test_instance_positives_are_their_own_benchmark_and_never_score_above_identity(tmp_path, monkeypatch):
    from xsearch.datamodules.base import QuerySet
    from xsearch.datamodules.records import CaptionRecord

    captions = [CaptionRecord(7, 3, "a man", 1, "test"), CaptionRecord(8, 4, "a man", 1, "test")]
    assert dict(QuerySet(captions, instance=True).relevance.positives) == {7: [3], 8: [4]}
    assert QuerySet(captions).relevance is None
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "r.sqlite"
    common = ["test", "--config", CONFIG, "--data.root", str(tmp_path / "data"), "--results", str(results)]
    assert main(common) == 0 and main([*common, "--data.positives", "instance"]) == 0
    with sqlite3.connect(results) as db:
        rows = {d: json.loads(m) for d, m in db.execute("SELECT dataset, metrics FROM runs")}
    assert set(rows) == {"synth_pedes", "synth_pedes:instance"}
    for k in ("R1", "R5", "R10"):
        assert rows["synth_pedes:instance"][k] <= rows["synth_pedes"][k]
    assert rows["synth_pedes:instance"]["R10"] < rows["synth_pedes"]["R10"]  # several images per person
