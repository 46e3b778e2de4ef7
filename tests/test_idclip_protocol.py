"""Id-CLIP's protocols: entity queries (query face held out / from the gallery / from an extractor), entity metrics
through validate/test against brute force, instance-level image-to-text R@K, and the face-extractor interface."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from layouts import BUILDERS

from xsearch.datamodules import RetrievalDataModule, load_dataset
from xsearch.datamodules.entity_queries import EntityOptions, entity_queries
from xsearch.datamodules.face_features import FACE_EXTRACTORS, write_features_json
from xsearch.synth import generate_pfs
from xsearch.entity_captions import ENTITY_PROMPTS
from xsearch.evaluation import RetrievalMetric
from xsearch.evaluation.composed import QueryRelevance
from xsearch.evaluation.entity import entity_metrics
from xsearch.models.clip import CLIPTowers, tiny_clip_config
from xsearch.models.idclip import IdCLIP


@pytest.fixture(scope="module")
def pfs_root(tmp_path_factory) -> Path:
    return generate_pfs(tmp_path_factory.mktemp("pfs") / "pfs", identities=12, images_per_identity=3, seed=2,
                        size=(64, 64), progress=False, split_fractions=(0.5, 0.25, 0.25))


@pytest.fixture(scope="module")
def pfs_index(pfs_root):
    return load_dataset("synth_pfs", pfs_root, {"entity": "slot"}, cache=False)


def _faces(index) -> dict[int, torch.Tensor]:
    from xsearch.datamodules.coco_pfs import face_descriptor

    return {r.index: torch.from_numpy(face_descriptor(index, r)) for r in index.images}


def test_held_out_query_faces_leave_the_gallery_and_come_from_the_identitys_first_image(pfs_index):
    images = pfs_index.split_images("test")
    faces = _faces(pfs_index)
    queries = entity_queries(pfs_index, images, faces, EntityOptions())
    pids = sorted({r.pid for r in images})
    assert [q["pid"] for q in queries.queries] == pids  # one ensembled query per identity
    for query in queries.queries:
        own = [r for r in images if r.pid == query["pid"]]
        assert torch.equal(query["face"], faces[own[0].index]) and own[0].index in queries.excluded
        assert query["prompts"] == list(ENTITY_PROMPTS) and query["name"] == pfs_index.identity_names[query["pid"]]
    assert len(queries.excluded) == len(pids)


def test_gallery_mode_keeps_every_image_and_unensembled_queries_are_one_per_prompt(pfs_index):
    images = pfs_index.split_images("test")
    queries = entity_queries(pfs_index, images, _faces(pfs_index), EntityOptions(query_face="gallery", ensemble=False))
    assert not queries.excluded
    assert len(queries) == len(ENTITY_PROMPTS) * len({r.pid for r in images})
    assert [q["text"] for q in queries.queries[: len(ENTITY_PROMPTS)]] == list(ENTITY_PROMPTS)
    assert [q["index"] for q in queries.queries] == list(range(len(queries)))


def test_identities_with_one_image_are_skipped_when_the_query_face_is_held_out(pfs_index, caplog):
    images = pfs_index.split_images("test")
    lone = images[0].pid
    kept = [r for r in images if r.pid != lone or r is images[0]]
    queries = entity_queries(pfs_index, kept, _faces(pfs_index), EntityOptions())
    assert lone not in [q["pid"] for q in queries.queries]
    assert "have one image" in caplog.text


class MeanColour:
    """A toy face extractor: the mean RGB of the photo, padded to 512."""

    def __call__(self, faces):
        rows = [np.pad(np.asarray(f, dtype=np.float32).mean(axis=(0, 1)) / 255.0, (0, 509)) for f in faces]
        return np.stack(rows)


FACE_EXTRACTORS.register("test_mean_colour")(MeanColour)


def test_extractor_mode_describes_the_first_face_crop_of_each_identity(tmp_path):
    layout = BUILDERS["coco_pfs"](tmp_path / "coco")
    index = load_dataset("coco_pfs", layout.root, {"entity": "slot"}, cache=False)
    images = index.split_images("test")
    queries = entity_queries(index, images, {}, EntityOptions(query_face="extractor", extractor="test_mean_colour"))
    from PIL import Image

    for query in queries.queries:
        crop = index.extras["face_crop_dirs"][query["pid"]] / "0001_01.jpg"
        expected = MeanColour()([Image.open(crop).convert("RGB")])[0]
        np.testing.assert_allclose(query["face"].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs data.entity_retrieval.extractor"):
        entity_queries(index, images, {}, EntityOptions(query_face="extractor"))
    with pytest.raises(KeyError, match="unknown face extractor 'nope'"):
        entity_queries(index, images, {}, EntityOptions(query_face="extractor", extractor="nope"))


def test_features_written_by_an_extractor_read_back_through_the_coco_pfs_parser(tmp_path):
    layout = BUILDERS["coco_pfs"](tmp_path / "coco")
    from xsearch.datamodules.coco_pfs import SPLIT_FILES, face_descriptor

    features = layout.root / SPLIT_FILES["test"].features
    keys = list(json.loads(features.read_text()))
    crops = {k: layout.root / "vggface_test_kaggle" / "n009001" / "0001_01.jpg" for k in keys}
    write_features_json(features, crops, MeanColour())
    written = json.loads(features.read_text())
    assert list(written) == keys and all(len(v) == 1 and len(v[0]) == 512 for v in written.values())  # nested 1x512
    index = load_dataset("coco_pfs", layout.root, {}, cache=False)
    for image in index.split_images("test"):
        np.testing.assert_allclose(face_descriptor(index, image), written[keys[0]][0], atol=1e-6)
    assert [p.name for p in features.parent.iterdir() if p.suffix == ".tmp"] == []

    class Broken:
        def __call__(self, faces):
            return np.zeros((len(faces) + 1, 512))

    before = features.read_bytes()
    with pytest.raises(ValueError, match=r"returned shape \(\d+, 512\) for \d+ photos"):
        write_features_json(features, crops, Broken())
    assert features.read_bytes() == before  # untouched


def test_instance_level_image_to_text_counts_an_images_own_captions_only():
    torch.manual_seed(0)
    queries, gallery = torch.randn(12, 8), torch.randn(4, 8)
    own = torch.arange(12) // 3  # captions 0-2 describe image 0, ...
    metric = RetrievalMetric(ks=(1, 2, 5))
    metric.relevance = QueryRelevance({q: [int(own[q])] for q in range(12)})
    metric.update_queries(queries, torch.zeros(12, dtype=torch.long), torch.arange(12))  # one pid: identity would be trivial
    metric.update_gallery(gallery, torch.zeros(4, dtype=torch.long), torch.arange(4))
    values = metric.compute()
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    for k in (1, 2, 5):
        t2i = np.mean([own[q] in similarity[q].argsort(descending=True)[:k] for q in range(12)])
        i2t = np.mean([bool(set(similarity[:, g].argsort(descending=True)[:k].tolist()) & set(range(3 * g, 3 * g + 3)))
                       for g in range(4)])
        assert values[f"R{k}"] == pytest.approx(100 * t2i) and values[f"i2t_R{k}"] == pytest.approx(100 * i2t)


def test_validate_reports_entity_metrics_equal_to_brute_force_on_the_held_out_gallery(pfs_root, tmp_path):
    data = RetrievalDataModule("synth_pfs", str(pfs_root), image_size=(64, 64), batch_size=4, eval_batch_size=5,
                               num_workers=0, dataset_options={"entity": "slot"}, positives="instance",
                               entity_retrieval=EntityOptions(), cache_index=False)
    torch.manual_seed(0)
    clip = CLIPTowers(config=tiny_clip_config(width=32, embed_dim=16), image_size=(64, 64), context_length=24)
    model = IdCLIP(clip, translator_hidden=12, prompt_tokens=2, ks=(1, 2, 5))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    logged = {k: v for per_loader in trainer.test(model, datamodule=data, verbose=False) for k, v in per_loader.items()}
    suite = data.eval_suites["test"]
    assert [role for role, _ in suite.loaders] == ["queries", "gallery", "entities"]  # the gallery is loaded once
    assert [type(p).__name__ for p in suite.protocols] == ["IdentityRetrieval", "EntityRetrieval"]
    entity = suite.protocols[1].inputs["entities"]
    gallery = [r for r in data.eval_sets["test"][1].images if r.index not in entity.excluded]
    model.eval()
    with torch.no_grad():
        queries = torch.cat([model.encode_queries(data.test_dataloader()[2].collate_fn([q])) for q in entity.queries])
        images = model.encode_images(torch.stack([data.eval_sets["test"][1].store(r.index) for r in gallery]))
    expected = entity_metrics(queries @ images.T, torch.tensor([q["pid"] for q in entity.queries]),
                              torch.tensor([r.pid for r in gallery]), (1, 2, 5))
    for name, value in expected.items():
        assert logged[f"test/{name}"] == pytest.approx(value, abs=1e-4), name
    assert "test/i2t_R1" in logged and "test/R5" in logged
    assert logged["test/rsum"] == pytest.approx(logged["test/R1"] + logged["test/R2"] + logged["test/R5"])  # selection rule
    query = data.eval_sets["test"][0][0]  # general-retrieval queries carry the face and the name for conf2..conf5
    assert query["name"] == data.index.identity_names[query["pid"]] and query["face"].shape == (512,)


@pytest.mark.slow
def test_clip_stage_idclip_stage_and_zero_shot_baselines_land_on_one_leaderboard(tmp_path, monkeypatch, capsys):
    import sqlite3

    from xsearch.cli import main

    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).parents[1] / "configs" / "tiny" / "idclip.yaml")
    common = ["--config", config, "--data.root", str(tmp_path / "data"), "--results", "r.sqlite",
              "--trainer.limit_train_batches", "3"]
    assert main(["fit", *common, "--model.init_args.stage", "clip", "--model.init_args.prompt_tokens", "0",
                 "--model.init_args.clip_id_weight", "1.0", "--checkpoint.dirpath", "clip"]) == 0
    clip = tmp_path / "clip" / "last.ckpt"
    assert "id_centres" in torch.load(clip, weights_only=True)["state_dict"]  # dropped when loaded without one
    for conf in ("none", "name"):  # the same plain CLIP, no translator or prompts
        assert main(["test", *common, "--ckpt_path", str(clip), "--model.init_args.prompt_tokens", "0",
                     "--model.init_args.conf", conf, "--tag", f"clip-zero-shot-{conf}"]) == 0
    assert main(["fit", *common, "--model.init_args.init_from", str(clip), "--test_after_fit", "true"]) == 0
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        rows = [(d, json.loads(m), json.loads(e or "null")) for d, m, e in db.execute("SELECT dataset, metrics, extra FROM runs")]
    assert [d for d, _, _ in rows] == ["synth_pfs:instance"] * 3
    assert [(e or {}).get("tag") for _, _, e in rows] == ["clip-zero-shot-none", "clip-zero-shot-name", None]
    # without identity every entity query is the same text and face-free: one ranking for all, whose first image
    # belongs to exactly one identity, so entity_R@1 = (1 / n_rel) / identities
    test = load_dataset("synth_pfs", tmp_path / "data", {"entity": "slot"}, cache=False).split_images("test")
    identities = len({r.pid for r in test})
    n_rel = len(test) // identities - 1  # one image per identity held out as the query face
    assert rows[0][1]["entity_R@1"] == pytest.approx(100.0 / n_rel / identities)
    out = capsys.readouterr().out
    assert "clip-zero-shot-name" in out and "entity_R@10" in out
