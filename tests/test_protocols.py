"""Evaluation protocols: the numbers every tiny config gives stay the same.

Each ``configs/tiny/*.yaml`` (small random-initialised models on small synthetic sets) is fitted for two steps,
validated and tested from the command line, deterministically; every validation and test metric it logs (identity
retrieval both ways, composed or instance positives, Id-CLIP's entity retrieval, face verification and identification)
must equal the numbers recorded below, which were measured before the protocols became objects
(:mod:`xsearch.evaluation.protocol`).
"""
from __future__ import annotations

import csv
import json
import os
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TINY = sorted(p.stem for p in (ROOT / "configs" / "tiny").glob("*.yaml"))
CASES: dict[str, tuple[str, list[str]]] = {
    **{name: (name, []) for name in TINY},
    "xmodal_composed": ("xmodal", ["--data.query_mode", "composed"]),  # explicit positives, reference left out
}
"""Case name -> (tiny config, more command-line arguments)."""


def tiny_metrics(case: str, workspace: Path) -> dict[str, float]:
    """``xsearch fit`` (2 training batches, one epoch, validation at its end) then test of the case's tiny config, with
    its synthetic data under ``workspace/data`` (generated once, shared by the cases): every ``val/`` metric the CSV
    logger kept and every ``test/`` metric of the results row."""
    from xsearch.cli import main

    os.environ["XSEARCH_DATA"] = str(workspace / "data")  # the configs' relative data roots (tests: monkeypatched)
    config, extra = CASES[case]
    run = workspace / case
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    args = ["fit", "--config", str(ROOT / "configs" / "tiny" / f"{config}.yaml"), "--seed_everything", "0",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.num_sanity_val_steps", "0",
            "--trainer.logger", json.dumps(logger), "--trainer.default_root_dir", str(run),
            "--checkpoint.dirpath", str(run / "checkpoints"),
            "--model.init_args.visualize_queries", "0", "--test_after_fit", "true",
            "--results", str(run / "results.sqlite"), *extra]
    assert main(args) == 0
    with sqlite3.connect(run / "results.sqlite") as db:
        metrics = {f"test/{k}": v for k, v in json.loads(db.execute("SELECT metrics FROM runs").fetchone()[0]).items()}
    with open(next(run.rglob("metrics.csv")), newline="") as file:
        for row in csv.DictReader(file):
            metrics.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v != ""})
    return metrics


RECORDED: dict[str, dict[str, float]] = {
    "cmsn": {
        "test/R1": 30.55556, "test/R10": 100.0, "test/R5": 94.44444, "test/i2t_R1": 27.77778,
        "test/i2t_R10": 88.88889, "test/i2t_R5": 77.77778, "test/i2t_mAP": 32.47459, "test/i2t_mINP": 29.03706,
        "test/mAP": 35.52994, "test/mINP": 29.74788, "test/rsum": 225.0, "val/R1": 37.5, "val/R10": 100.0,
        "val/R5": 75.0, "val/i2t_R1": 31.25, "val/i2t_R10": 100.0, "val/i2t_R5": 75.0, "val/i2t_mAP": 33.3131,
        "val/i2t_mINP": 27.41188, "val/mAP": 40.11357, "val/mINP": 36.74422, "val/rsum": 212.5,
    },
    "cmsn_pretrained": {
        "test/R1": 25.0, "test/R10": 100.0, "test/R5": 100.0, "test/i2t_R1": 22.22222, "test/i2t_R10": 72.22222,
        "test/i2t_R5": 72.22222, "test/i2t_mAP": 34.26398, "test/i2t_mINP": 29.96627, "test/mAP": 34.65811,
        "test/mINP": 32.34208, "test/rsum": 225.0, "val/R1": 12.5, "val/R10": 100.0, "val/R5": 75.0,
        "val/i2t_R1": 25.0, "val/i2t_R10": 81.25, "val/i2t_R5": 56.25, "val/i2t_mAP": 35.73003,
        "val/i2t_mINP": 34.75335, "val/mAP": 36.30731, "val/mINP": 33.10207, "val/rsum": 187.5,
    },
    "dual_encoder": {
        "test/R1": 30.55556, "test/R10": 97.22222, "test/R5": 77.77778, "test/i2t_R1": 27.77778,
        "test/i2t_R10": 55.55556, "test/i2t_R5": 55.55556, "test/i2t_mAP": 36.07953, "test/i2t_mINP": 31.12645,
        "test/mAP": 35.1328, "test/mINP": 28.54428, "test/rsum": 205.5556, "val/R1": 28.125, "val/R10": 84.375,
        "val/R5": 71.875, "val/i2t_R1": 25.0, "val/i2t_R10": 81.25, "val/i2t_R5": 68.75, "val/i2t_mAP": 35.66545,
        "val/i2t_mINP": 32.07805, "val/mAP": 33.33823, "val/mINP": 27.77651, "val/rsum": 184.375,
    },
    "idclip": {
        "test/R1": 8.106061, "test/R10": 45.75758, "test/R5": 23.86364, "test/R50": 100.0, "test/entity_R@1": 5.0,
        "test/entity_R@10": 45.0, "test/entity_R@5": 20.0, "test/entity_R@50": 100.0, "test/i2t_R1": 4.166667,
        "test/i2t_R10": 37.5, "test/i2t_R5": 16.66667, "test/i2t_R50": 95.83334, "test/i2t_mAP": 5.062563,
        "test/i2t_mINP": 4.456223, "test/kmin_R@1": 25.0, "test/kmin_R@10": 45.0, "test/kmin_R@5": 20.0,
        "test/kmin_R@50": 100.0, "test/mAP": 19.54628, "test/mAP@10": 10.82143, "test/mINP": 19.54628,
        "test/rsum": 177.7273, "val/R1": 4.166667, "val/R10": 47.5, "val/R5": 27.5, "val/R50": 100.0,
        "val/entity_R@1": 5.0, "val/entity_R@10": 45.0, "val/entity_R@5": 20.0, "val/entity_R@50": 100.0,
        "val/i2t_R1": 4.166667, "val/i2t_R10": 25.0, "val/i2t_R5": 16.66667, "val/i2t_R50": 83.33334,
        "val/i2t_mAP": 8.995564, "val/i2t_mINP": 6.719425, "val/kmin_R@1": 25.0, "val/kmin_R@10": 45.0,
        "val/kmin_R@5": 20.0, "val/kmin_R@50": 100.0, "val/mAP": 17.55641, "val/mAP@10": 9.144842,
        "val/mINP": 17.55641, "val/rsum": 179.1667,
    },
    "irra": {
        "test/R1": 25.0, "test/R10": 100.0, "test/R5": 100.0, "test/i2t_R1": 27.77778, "test/i2t_R10": 100.0,
        "test/i2t_R5": 72.22222, "test/i2t_mAP": 31.64297, "test/i2t_mINP": 28.92569, "test/mAP": 34.90348,
        "test/mINP": 30.71852, "test/rsum": 225.0, "val/R1": 28.125, "val/R10": 100.0, "val/R5": 75.0,
        "val/i2t_R1": 31.25, "val/i2t_R10": 100.0, "val/i2t_R5": 87.5, "val/i2t_mAP": 32.08057,
        "val/i2t_mINP": 27.37632, "val/mAP": 39.80758, "val/mINP": 35.28274, "val/rsum": 203.125,
    },
    "irra_pretrained": {
        "test/R1": 27.77778, "test/R10": 86.11111, "test/R5": 75.0, "test/i2t_R1": 27.77778, "test/i2t_R10": 100.0,
        "test/i2t_R5": 55.55556, "test/i2t_mAP": 33.5854, "test/i2t_mINP": 27.27429, "test/mAP": 36.1501,
        "test/mINP": 32.17344, "test/rsum": 188.8889, "val/R1": 21.875, "val/R10": 100.0, "val/R5": 53.125,
        "val/i2t_R1": 25.0, "val/i2t_R10": 81.25, "val/i2t_R5": 43.75, "val/i2t_mAP": 38.03964,
        "val/i2t_mINP": 30.59806, "val/mAP": 32.69875, "val/mINP": 28.94465, "val/rsum": 175.0,
    },
    "partlevel": {
        "test/R1": 27.77778, "test/R10": 100.0, "test/R5": 72.22222, "test/i2t_R1": 38.88889,
        "test/i2t_R10": 94.44444, "test/i2t_R5": 83.33334, "test/i2t_mAP": 37.02099, "test/i2t_mINP": 28.96644,
        "test/mAP": 37.41297, "test/mINP": 32.14457, "test/rsum": 200.0, "val/R1": 28.125, "val/R10": 100.0,
        "val/R5": 75.0, "val/i2t_R1": 25.0, "val/i2t_R10": 87.5, "val/i2t_R5": 43.75, "val/i2t_mAP": 36.95057,
        "val/i2t_mINP": 30.89584, "val/mAP": 38.09802, "val/mINP": 37.05185, "val/rsum": 203.125,
    },
    "partlevel_pretrained": {
        "test/R1": 30.55556, "test/R10": 97.22222, "test/R5": 83.33334, "test/i2t_R1": 27.77778,
        "test/i2t_R10": 83.33334, "test/i2t_R5": 72.22222, "test/i2t_mAP": 33.24363, "test/i2t_mINP": 29.2314,
        "test/mAP": 35.71582, "test/mINP": 27.99124, "test/rsum": 211.1111, "val/R1": 25.0, "val/R10": 100.0,
        "val/R5": 65.625, "val/i2t_R1": 18.75, "val/i2t_R10": 81.25, "val/i2t_R5": 43.75, "val/i2t_mAP": 34.22721,
        "val/i2t_mINP": 31.21351, "val/mAP": 32.79293, "val/mINP": 28.77478, "val/rsum": 190.625,
    },
    "tgfr": {
        "test/R1": 33.33333, "test/R10": 74.58334, "test/R5": 54.16667, "test/fused/AUC": 81.38021,
        "test/fused/Acc": 72.66666, "test/fused/Acc_std": 12.72889, "test/fused/EER": 25.0, "test/fused/Rank1": 80.0,
        "test/fused/TAR@FAR=0.0001": 16.66667, "test/fused/TAR@FAR=0.001": 16.66667,
        "test/fused/TAR@FAR=1e-05": 16.66667, "test/fused/TAR@FAR=1e-06": 16.66667, "test/i2t_R1": 29.16667,
        "test/i2t_R10": 70.83334, "test/i2t_R5": 58.33333, "test/i2t_mAP": 30.11722, "test/i2t_mINP": 26.48173,
        "test/image_only/AUC": 85.76389, "test/image_only/Acc": 76.33334, "test/image_only/Acc_std": 11.54754,
        "test/image_only/EER": 22.91667, "test/image_only/Rank1": 60.0, "test/image_only/TAR@FAR=0.0001": 25.0,
        "test/image_only/TAR@FAR=0.001": 25.0, "test/image_only/TAR@FAR=1e-05": 25.0,
        "test/image_only/TAR@FAR=1e-06": 25.0, "test/mAP": 38.07515, "test/mINP": 34.95131, "test/rsum": 162.0833,
        "val/R1": 21.2, "val/R10": 98.4, "val/R5": 76.4, "val/fused/AUC": 75.76, "val/fused/Acc": 71.0,
        "val/fused/Acc_std": 13.0, "val/fused/EER": 26.0, "val/fused/Rank1": 66.66666,
        "val/fused/TAR@FAR=0.0001": 14.0, "val/fused/TAR@FAR=0.001": 14.0, "val/fused/TAR@FAR=1e-05": 14.0,
        "val/fused/TAR@FAR=1e-06": 14.0, "val/i2t_R1": 24.0, "val/i2t_R10": 56.0, "val/i2t_R5": 36.0,
        "val/i2t_mAP": 29.24951, "val/i2t_mINP": 26.33928, "val/image_only/AUC": 76.6, "val/image_only/Acc": 75.0,
        "val/image_only/Acc_std": 12.04159, "val/image_only/EER": 30.0, "val/image_only/Rank1": 71.42857,
        "val/image_only/TAR@FAR=0.0001": 14.0, "val/image_only/TAR@FAR=0.001": 14.0,
        "val/image_only/TAR@FAR=1e-05": 14.0, "val/image_only/TAR@FAR=1e-06": 14.0, "val/mAP": 35.11713,
        "val/mINP": 39.79018, "val/rsum": 196.0,
    },
    "xmodal": {
        "test/R1": 21.25, "test/R10": 100.0, "test/R5": 75.0, "test/i2t_R1": 25.0, "test/i2t_R10": 79.16666,
        "test/i2t_R5": 79.16666, "test/i2t_mAP": 30.0781, "test/i2t_mINP": 26.33899, "test/mAP": 34.88411,
        "test/mINP": 28.42034, "test/rsum": 196.25, "val/R1": 24.0, "val/R10": 100.0, "val/R5": 81.6,
        "val/i2t_R1": 24.0, "val/i2t_R10": 68.0, "val/i2t_R5": 68.0, "val/i2t_mAP": 28.19941,
        "val/i2t_mINP": 26.17649, "val/mAP": 35.16448, "val/mINP": 28.36706, "val/rsum": 205.6,
    },
    "xmodal_composed": {
        "test/R1": 12.5, "test/R10": 79.16666, "test/R5": 41.66667, "test/mAP": 23.1812, "test/mINP": 20.66493,
        "test/rsum": 133.3333, "val/R1": 8.0, "val/R10": 64.0, "val/R5": 36.0, "val/mAP": 21.62094,
        "val/mINP": 19.74273, "val/rsum": 108.0,
    },
}
"""What each case gave (float32 values to 7 significant digits), measured before the refactor."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module's runs, with the synthetic data sets generated once."""
    return tmp_path_factory.mktemp("protocols")


def test_every_tiny_config_is_recorded():
    assert sorted(RECORDED) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_config_gives_the_recorded_metrics(case, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("XSEARCH_DATA", str(workspace / "data"))
    metrics = tiny_metrics(case, workspace)
    assert sorted(metrics) == sorted(RECORDED[case])  # the same metric names, none more, none less
    assert metrics == {k: pytest.approx(v, rel=1e-4) for k, v in RECORDED[case].items()}
