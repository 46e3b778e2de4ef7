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
        "test/i2t_R10": 55.55556, "test/i2t_R5": 55.55556, "test/i2t_mAP": 36.05251, "test/i2t_mINP": 31.12645,
        "test/mAP": 35.06817, "test/mINP": 28.49889, "test/rsum": 205.55556, "val/R1": 28.125, "val/R10": 84.375,
        "val/R5": 71.875, "val/i2t_R1": 25.0, "val/i2t_R10": 81.25, "val/i2t_R5": 68.75, "val/i2t_mAP": 35.66906,
        "val/i2t_mINP": 32.07805, "val/mAP": 33.26523, "val/mINP": 27.77651, "val/rsum": 184.375,
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
        "test/R1": 20.83333, "test/R10": 100.0, "test/R5": 75.0, "test/i2t_R1": 25.0, "test/i2t_R10": 79.16666,
        "test/i2t_R5": 79.16666, "test/i2t_mAP": 30.08017, "test/i2t_mINP": 26.33514, "test/mAP": 34.84766,
        "test/mINP": 28.43838, "test/rsum": 195.83333, "val/R1": 24.0, "val/R10": 100.0, "val/R5": 82.0,
        "val/i2t_R1": 24.0, "val/i2t_R10": 68.0, "val/i2t_R5": 68.0, "val/i2t_mAP": 28.20489,
        "val/i2t_mINP": 26.17649, "val/mAP": 35.04688, "val/mINP": 28.34464, "val/rsum": 206.0,
    },
    "xmodal_composed": {
        "test/R1": 12.5, "test/R10": 79.16666, "test/R5": 41.66667, "test/mAP": 23.12333, "test/mINP": 20.60706,
        "test/rsum": 133.33333, "val/R1": 8.0, "val/R10": 64.0, "val/R5": 36.0, "val/mAP": 21.62094,
        "val/mINP": 19.74273, "val/rsum": 108.0,
    },
}
"""What each case gave (float32 values to 7 significant digits, one thread, on an AVX-512 processor). A change of float
rounding (the image layout, another processor's kernels) only flips near-ties: on an AVX2 processor one val query of
250 moved a place (R5 and rsum +0.4, mAPs by up to 0.1)."""

TOLERANCE = 0.5
"""Points any metric may differ from the record: less than one query of the identity protocols' test splits (24-36 queries: one
moves a recall by 2.8 points or more), more than another processor's rounding moved any."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module's runs, with the synthetic data sets generated once."""
    return tmp_path_factory.mktemp("protocols")


def test_every_tiny_config_is_recorded():
    assert sorted(RECORDED) == sorted(CASES)


def test_every_registered_protocol_carries_the_headline_of_its_name():
    import xsearch.evaluation  # noqa: F401  (registers the protocols)
    from xsearch.headlines import HEADLINES
    from xsearch.registry import PROTOCOLS

    assert PROTOCOLS.names() == sorted(HEADLINES)
    for name, protocol in PROTOCOLS.items():
        assert protocol.headline is HEADLINES[name], name


def test_the_headlines_give_the_summary_line_and_the_leaderboard_columns():
    from xsearch.headlines import summary_metrics, table_metrics

    logged = ["R10", "rsum", "i2t_R5", "mINP", "kmin_R@1", "R1", "mAP@10", "R50", "entity_R@10", "i2t_R1", "mAP", "R5",
              "kmin_R@10", "entity_R@1", "image_only/EER", "fused/Rank1", "fused/TAR@FAR=0.001", "image_only/AUC",
              "fused/EER", "image_only/TAR@FAR=0.001", "fused/AUC"]
    assert summary_metrics(logged) == ["R1", "R5", "R10", "mAP", "mINP", "entity_R@10", "kmin_R@10", "mAP@10"]
    assert table_metrics(logged) == ["R1", "R5", "R10", "mAP", "mINP", "R50", "i2t_R1", "entity_R@1", "entity_R@10",
                                     "kmin_R@10", "mAP@10", "image_only/TAR@FAR=0.001", "image_only/EER",
                                     "fused/TAR@FAR=0.001", "fused/EER", "fused/Rank1"]
    assert table_metrics(["loss"]) == [] and summary_metrics({}) == []


def test_the_methods_know_no_protocol_by_name():
    for path in sorted((ROOT / "xsearch" / "models").rglob("*.py")):
        text = path.read_text()
        for word in ("face_sets", "entity_sets", "eval_roles", "entity_metrics", "face_protocol_metrics"):
            assert word not in text, f"{path.name} mentions {word}"


class _Images:
    def __init__(self, pids: list[int]) -> None:
        self.images = [type("Record", (), {"index": i, "pid": pid, "path": f"{i}.jpg"})() for i, pid in enumerate(pids)]


def test_a_suite_encodes_a_dataset_two_protocols_read_once_and_each_protocol_computes_its_own_metrics():
    import numpy as np
    import torch

    from xsearch.evaluation import (EntityRetrieval, EvaluationSuite, FaceVerification, IdentityRetrieval,
                                    RetrievalMetric, cosine_similarity)
    from xsearch.evaluation.entity import entity_metrics
    from xsearch.evaluation.verification import face_protocol_metrics

    torch.manual_seed(0)
    pids = [0, 0, 1, 1, 2, 2]
    queries, gallery, faces, entities = object(), _Images(pids), _Images(pids), object()
    pairs = type("Pairs", (), {"first": np.array([0, 0, 2, 4]), "second": np.array([1, 2, 3, 5]),
                               "same": np.array([1, 0, 1, 1]), "fold": np.array([0, 0, 0, 0]), "probes": np.array([0, 2]),
                               "gallery": np.array([1, 3, 5]), "tar_rule": "at_most"})()
    suite = EvaluationSuite([IdentityRetrieval(queries, gallery), FaceVerification(faces, pairs),
                             EntityRetrieval(entities, gallery, excluded={0})])
    assert [(role, id(data)) for role, data in suite.loaders] == [
        ("queries", id(queries)), ("gallery", id(gallery)), ("faces", id(faces)), ("entities", id(entities))]
    suite.configure((1, 2), cosine_similarity)
    q, g, f, e = torch.randn(5, 8), torch.randn(6, 8), torch.randn(6, 8), torch.randn(3, 8)
    calls: list[str] = []

    def encoder(role, values):
        return lambda batch: calls.append(role) or (dict(values) if role == "faces" else values)

    encoders = {"queries": encoder("queries", q), "gallery": encoder("gallery", g),
                "faces": encoder("faces", {"image": f}), "entities": encoder("entities", e)}
    suite.update(0, encoders, {"pid": torch.tensor([0, 1, 2, 0, 1]), "index": torch.arange(5)})
    suite.update(1, encoders, {"pid": torch.tensor(pids), "index": torch.arange(6)})
    suite.update(2, encoders, {"position": torch.tensor([5, 4, 3, 2, 1, 0])})  # faces arrive in any order
    suite.update(3, encoders, {"pid": torch.tensor([0, 1, 2])})
    assert calls == ["queries", "gallery", "faces", "entities"]  # the gallery is encoded once for two protocols
    (_, identity), (_, face), (_, entity) = suite.compute()
    reference = RetrievalMetric(ks=(1, 2))
    reference.update_queries(q, torch.tensor([0, 1, 2, 0, 1]), torch.arange(5))
    reference.update_gallery(g, torch.tensor(pids), torch.arange(6))
    expected = reference.compute()
    assert identity == {**expected, "rsum": expected["R1"] + expected["R2"]}
    assert face == {f"image/{k}": v for k, v in face_protocol_metrics(
        f.flip(0), torch.tensor(pids), pairs.first, pairs.second, pairs.same, pairs.fold, pairs.probes, pairs.gallery).items()}
    assert entity == entity_metrics(cosine_similarity(e, g[1:]), torch.tensor([0, 1, 2]), torch.tensor(pids[1:]), (1, 2))
    suite.reset()
    with pytest.raises(ValueError, match="unexpected evaluation dataloader 4"):
        suite.update(4, encoders, {})


def test_loaders_without_a_datamodule_are_queries_then_gallery(tmp_path):
    import lightning as L
    import torch

    from xsearch.models import RetrievalModule

    class Linear(RetrievalModule):
        def __init__(self) -> None:
            super().__init__(visualize_queries=0)
            self.text, self.image = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)

        def encode_queries(self, batch):
            return self.text(batch["x"])

        def encode_gallery(self, batch):
            return self.image(batch["x"])

    torch.manual_seed(0)
    queries = [{"x": torch.randn(4), "pid": i % 3, "index": i} for i in range(6)]
    gallery = [{"x": torch.randn(4), "pid": i % 3, "index": i} for i in range(9)]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    model = Linear()
    loaders = [torch.utils.data.DataLoader(queries, batch_size=4), torch.utils.data.DataLoader(gallery, batch_size=4)]
    logged = trainer.validate(model, dataloaders=loaders, verbose=False)[0]
    with torch.no_grad():
        similarity = torch.nn.functional.normalize(model.encode_queries({"x": torch.stack([q["x"] for q in queries])}), dim=1) @ \
            torch.nn.functional.normalize(model.encode_gallery({"x": torch.stack([g["x"] for g in gallery])}), dim=1).T
    top = similarity.argmax(1)
    assert logged["val/R1"] == pytest.approx(100 * float((top % 3 == torch.arange(6) % 3).float().mean()))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_config_gives_the_recorded_metrics(case, workspace, monkeypatch):
    import torch

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("XSEARCH_DATA", str(workspace / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: float sums of several threads differ in the last bits (mAP by ~0.004)
    try:
        metrics = tiny_metrics(case, workspace)
    finally:
        torch.set_num_threads(threads)
    assert sorted(metrics) == sorted(RECORDED[case])  # the same metric names, none more, none less
    assert metrics == {k: pytest.approx(v, abs=TOLERANCE) for k, v in RECORDED[case].items()}
