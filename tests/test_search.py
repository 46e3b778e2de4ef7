"""`xsearch index / search / encode`: a checkpoint written by `xsearch fit` indexes a folder of synthetic images; the
ranking equals the model's own embeddings + similarity computed directly; re-indexing embeds only what changed; bad
input gets one clear error naming the thing."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_module
from PIL import Image

from xsearch.cli import main
from xsearch.datamodules.transforms import load_image
from xsearch.evaluation import cosine_similarity
from xsearch.models import DualEncoder, RetrievalModule
from xsearch.search import build_index, load_index
from xsearch.search import index as index_module
from xsearch.search.encode import read_captions
from xsearch.registry import METHODS
from xsearch.search.model_io import embed_images, embed_queries, file_sha256, load_model
from xsearch.search.picture import MIN_CELL_WIDTH, QUERY_LINES, THUMB_HEIGHT, picture_size, thumb_size_for
from xsearch.search.query import Searcher
from xsearch.visualize import BORDER, FONT_SIZE, GAP, LABEL_HEIGHT, LINE_SPACING, MARGIN, load_thumb

from hostile import bomb_png  # noqa: E402

ROOT = Path(__file__).parents[1]
IMAGE_SIZE = (64, 32)


# -- fixtures (`trained`: the tiny checkpoint in `workspace`, from tests/conftest.py) ------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def direct(trained) -> RetrievalModule:
    """The trained model loaded through Lightning alone, to compare with."""
    return _direct_model(trained)


@pytest.fixture(scope="module")
def pedes(workspace, trained) -> Path:
    """The synthetic dataset the checkpoint was trained on (images + reid_raw.json captions)."""
    return workspace / "data" / "pedes"


def _image_folder(pedes: Path, target: Path) -> Path:
    """A copy of the dataset's images plus a file that is named like an image but is not one."""
    shutil.copytree(pedes / "imgs", target)
    (target / "notes").mkdir()
    (target / "notes" / "broken.jpg").write_text("not a picture")
    (target / "notes" / "readme.txt").write_text("not an image name: ignored")
    return target


@pytest.fixture(scope="module")
def photos(workspace, pedes) -> Path:
    """The dataset's 27 images and an unreadable ``notes/broken.jpg`` (tests that change files use their own copy)."""
    return _image_folder(pedes, workspace / "photos")


@pytest.fixture(scope="module")
def indexed(workspace, trained, photos) -> tuple[Path, str]:
    """``xsearch index`` of ``photos`` with the trained checkpoint: the index folder and what the command printed."""
    import contextlib
    import io

    out, printed = workspace / "index", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["index", "--ckpt", str(trained), "--images", str(photos), "--out", str(out), "--workers", "0"]) == 0
    return out, printed.getvalue()


def _hand_built(tmp: Path, config: str, hparam_edits: dict | None = None, image_size=IMAGE_SIZE) -> tuple[Path, RetrievalModule]:
    """A checkpoint of a tiny config's model written the way Lightning writes one (hyper_parameters with LightningCLI's
    _class_path / _instantiator, datamodule_hyper_parameters), untrained, and the model (eval mode); ``hparam_edits``
    change the recorded hyper_parameters only (not the weights)."""
    model_config = yaml.safe_load((ROOT / "configs" / "tiny" / f"{config}.yaml").read_text())["model"]
    hparams = {"_class_path": model_config["class_path"], **model_config["init_args"]}
    torch.manual_seed(0)
    model = instantiate_module(RetrievalModule, hparams)
    recorded = {**hparams, **(hparam_edits or {}), "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    path = tmp / f"{config}.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": recorded, "pytorch-lightning_version": lightning.__version__,
                "datamodule_hyper_parameters": {"image_size": list(image_size), "crop": None}}, path)
    return path, model.eval()


def _direct_model(checkpoint: Path) -> RetrievalModule:
    """The checkpoint's model through Lightning alone (no xsearch.search code), in eval mode."""
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]
    cls = {"xsearch.models.DualEncoder": DualEncoder}.get(hparams["_class_path"])
    if cls is None:
        import xsearch.models as models

        cls = getattr(models, hparams["_class_path"].rsplit(".", 1)[1])
    return cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()


def _brute_force(model: RetrievalModule, folder: Path, paths: list[str], batch: dict, image_size=IMAGE_SIZE) -> tuple[list[str], torch.Tensor]:
    """Every image ranked for one query by the model's own encoders and similarity, computed directly."""
    images = torch.stack([load_image(folder / p, image_size) for p in paths])
    with torch.inference_mode():
        gallery = model.encode_gallery({"image": images})
        queries = model.encode_queries(batch)
        scores = model.similarity(queries, gallery)[0]
    order = torch.sort(scores, descending=True, stable=True).indices
    return [paths[i] for i in order.tolist()], scores[order]


def _test_captions(pedes: Path) -> list[str]:
    records = json.loads((pedes / "reid_raw.json").read_text())
    return [c for r in records if r["split"] == "test" for c in r["captions"]]


def _readable(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg") if p.name != "broken.jpg")


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("xsearch: error: ")
    return err[-1][len("xsearch: error: "):]


# -- index + search ------------------------------------------------------------------------------------------------
def test_index_records_the_folder_and_checkpoint_and_search_ranks_like_the_model(trained, direct, pedes, photos, indexed, capsys):
    folder, (out, printed) = photos, indexed
    assert printed.strip() == (f"[xsearch] indexed 27 images in {out.absolute()} (27 embedded, 0 unchanged, 0 removed, "
                               "1 skipped as unreadable: notes/broken.jpg)")
    header = json.loads((out / "index.json").read_text())
    readable = _readable(folder)
    assert header["count"] == len(readable) == 27 and header["dim"] == 32
    assert header["images_root"] == str(folder.absolute())
    assert header["checkpoint"]["path"] == str(trained.absolute())
    assert header["checkpoint"]["sha256"] == file_sha256(trained)
    assert header["checkpoint"]["size"] == trained.stat().st_size
    assert header["model"] == {"method": "dual_encoder", "class_path": "xsearch.models.DualEncoder", "similarity": "cosine",
                               "composed_queries": False}
    assert header["preprocessing"] == {"image_size": [64, 32], "crop": None, "interpolation": "bicubic"}
    assert header["search"]["kind"] == "faiss" and header["search"]["factory"] == "Flat"
    assert [s["path"] for s in header["skipped"]] == ["notes/broken.jpg"]
    assert "cannot read image" in header["skipped"][0]["reason"]
    items = [json.loads(line) for line in (out / header["files"]["items"]).read_text().splitlines()]
    assert [i["path"] for i in items] == readable
    assert all(i["size"] == (folder / i["path"]).stat().st_size for i in items)
    assert sorted(p.name for p in out.iterdir()) == [".writer.lock", "embeddings.1.npy", "faiss.1.index", "index.json", "items.1.jsonl"]

    caption = _test_captions(pedes)[0]  # a held-out caption: never trained on
    assert main(["search", str(out), caption, "--k", "27", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected, scores = _brute_force(direct, folder, readable, {"text": [caption]})
    assert [r["relative_path"] for r in result["results"]] == expected
    assert [r["rank"] for r in result["results"]] == list(range(1, 28))
    assert np.allclose([r["score"] for r in result["results"]], scores.numpy(), atol=1e-5)
    assert result["results"][0]["path"] == str(folder.absolute() / expected[0]) and result["method"] == "dual_encoder"


def test_search_prints_ranked_lines_and_draws_them(workspace, photos, indexed, capsys):
    out, picture = indexed[0], workspace / "grid.png"
    assert main(["search", str(out), "a man in a red jacket", "--k", "12", "--out", str(picture)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [str(rank) for rank in range(1, 13)]
    scores = [float(line.split()[1]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all(-1 <= v <= 1 for v in scores)
    paths = [line.split()[2] for line in lines]
    assert len(set(paths)) == 12 and all(Path(p).is_file() and Path(p).parent.parent == photos.absolute() for p in paths)
    assert f"[xsearch] wrote {picture}" in printed.err
    thumb = thumb_size_for(IMAGE_SIZE)
    assert thumb == (THUMB_HEIGHT, 64)
    with Image.open(picture) as image:
        assert image.size == picture_size(12, thumb) and image.size[0] > image.size[1]
        drawn = np.asarray(image.convert("RGB"))
    cell_w = max(thumb[1] + 2 * BORDER, MIN_CELL_WIDTH)
    header = QUERY_LINES * (FONT_SIZE + LINE_SPACING) + GAP
    for rank in (0, 11):  # rank 1 and rank 12 (second row) show those very images
        x = MARGIN + (rank % 10) * (cell_w + GAP) + BORDER
        y = MARGIN + header + (rank // 10) * (LABEL_HEIGHT + thumb[0] + 2 * BORDER + LABEL_HEIGHT + GAP) + LABEL_HEIGHT + BORDER
        expected = np.asarray(load_thumb(paths[rank], thumb))
        assert np.array_equal(drawn[y : y + thumb[0], x : x + thumb[1]], expected)


def test_reindexing_embeds_only_new_and_changed_images_and_drops_deleted_ones(workspace, trained, pedes, monkeypatch, capsys):
    folder, out = _image_folder(pedes, workspace / "changing"), workspace / "changing_index"
    assert build_index(trained, folder, out, workers=0, progress=False).embedded == 27
    before = load_index(out)
    rows = {item.path: np.array(before.embeddings[i]) for i, item in enumerate(before.items)}
    first, second, third = before.items[0].path, before.items[1].path, before.items[2].path
    shutil.copy(folder / first, folder / "new_person.jpg")  # new (a copy of the first image)
    (folder / second).unlink()  # deleted
    Image.open(folder / first).save(folder / third)  # changed: now the first image's pixels
    embedded: list[list[str]] = []
    real = index_module.embed_paths
    monkeypatch.setattr(index_module, "embed_paths", lambda loaded, paths, *a, **k: embedded.append(
        [p.relative_to(folder).as_posix() for p in paths]) or real(loaded, paths, *a, **k))

    report = build_index(trained, folder, out, workers=0, progress=False)
    assert embedded == [sorted(["new_person.jpg", third])]  # the unreadable file is unchanged: not retried
    assert (report.embedded, report.removed, report.kept, report.total) == (2, 1, 25, 27)
    after = load_index(out)
    paths = [item.path for item in after.items]
    assert paths == sorted(paths) and second not in paths and "new_person.jpg" in paths
    for i, path in enumerate(paths):
        if path not in ("new_person.jpg", third):
            assert np.array_equal(after.embeddings[i], rows[path])  # kept as stored, not re-embedded
    new, changed = after.embeddings[paths.index("new_person.jpg")], after.embeddings[paths.index(third)]
    assert np.allclose(new, rows[first], atol=1e-5) and not np.allclose(changed, rows[third], atol=1e-3)
    assert after.header["generation"] == 2 and after.faiss.ntotal == 27
    assert sorted(p.name for p in out.iterdir()) == [".writer.lock", "embeddings.2.npy", "faiss.2.index", "index.json", "items.2.jsonl"]

    embedded.clear()
    assert main(["index", "--ckpt", str(trained), "--images", str(folder), "--out", str(out), "--workers", "0"]) == 0
    assert embedded == [] and "is up to date: 27 images, 1 skipped" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["generation"] == 2


def test_another_checkpoint_or_folder_is_refused_unless_rebuild(workspace, trained, photos, indexed, capsys):
    out, folder = workspace / "rebuilt_index", photos
    shutil.copytree(indexed[0], out)
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    checkpoint["state_dict"][next(k for k in checkpoint["state_dict"] if k.startswith("image_projection"))] += 1.0
    other = workspace / "other.ckpt"
    torch.save(checkpoint, other)
    message = _error(capsys, ["index", "--ckpt", str(other), "--images", str(folder), "--out", str(out)])
    assert message.startswith(f"{out.absolute()} was built with another checkpoint ({trained.absolute()}")
    assert message.endswith("use a new --out, or --rebuild to replace it")
    message = _error(capsys, ["index", "--ckpt", str(trained), "--images", str(workspace / "data"), "--out", str(out)])
    assert message == (f"{out.absolute()} indexes {folder.absolute()}, not {(workspace / 'data').absolute()}: use a new "
                       "--out, or --rebuild to replace it")
    generation = json.loads((out / "index.json").read_text())["generation"]
    assert main(["index", "--ckpt", str(other), "--images", str(folder), "--out", str(out), "--rebuild", "--workers", "0"]) == 0
    header = json.loads((out / "index.json").read_text())
    assert header["checkpoint"]["sha256"] == file_sha256(other) and header["generation"] == generation + 1
    assert len(list(out.glob("embeddings.*.npy"))) == 1
    # searching with a checkpoint of other content is refused too
    message = _error(capsys, ["search", str(out), "a person", "--ckpt", str(trained)])
    assert message.startswith(f"checkpoint {trained.absolute()} is not the one {out} was built with")


def test_bad_input_gets_one_line_naming_the_thing(workspace, trained, photos, indexed, capsys):
    out = indexed[0]
    assert _error(capsys, ["search", str(out), "   "]).startswith("the query text is empty")
    missing = workspace / "nowhere"
    assert _error(capsys, ["search", str(missing), "a person"]) == (
        f"index folder {missing} does not exist; build one with xsearch index --ckpt CKPT --images DIR --out {missing}")
    (workspace / "empty").mkdir()
    assert _error(capsys, ["search", str(workspace / "empty"), "a person"]).startswith(
        f"{workspace / 'empty'} is not an xsearch index (no index.json)")
    broken = workspace / "broken_index"
    shutil.copytree(out, broken)
    (broken / "index.json").write_text('{"format": "xsearch-index", "version": 1, "files": ')
    assert _error(capsys, ["search", str(broken), "a person"]).startswith(f"{broken / 'index.json'}: corrupt index header")
    shutil.rmtree(broken)
    shutil.copytree(out, broken)
    header = json.loads((broken / "index.json").read_text())
    (broken / header["files"]["embeddings"]).unlink()
    assert _error(capsys, ["search", str(broken), "a person"]) == (
        f"{broken / header['files']['embeddings']}: missing from the index (named by {broken / 'index.json'}); rebuild it "
        "with xsearch index ... --rebuild")
    message = _error(capsys, ["search", str(out), "a person", "--image", str(photos / "notes" / "broken.jpg")])
    assert message == ("method dual_encoder (of " + str(out) + ") does not take a reference image: no composed queries; "
                       "search with text alone, or index with a method that has them (e.g. xmodal)")
    assert _error(capsys, ["search", str(out), "a person", "--k", "0"]) == "--k must be at least 1, got 0"
    assert _error(capsys, ["index", "--ckpt", str(trained), "--images", str(photos), "--out", str(workspace / "i2"),
                           "--batch-size", "0", "--workers", "0"]) == (
        "--batch-size must be at least 1 and --workers at least 0, got 0 and 0")
    assert _error(capsys, ["search", str(out), "a person", "--out", str(workspace / "grid.txt")]).startswith("--out")
    assert _error(capsys, ["index", "--ckpt", str(workspace / "no.ckpt"), "--images", str(photos),
                           "--out", str(workspace / "i2")]) == f"checkpoint {(workspace / 'no.ckpt').absolute()} does not exist (or is not a file)"
    assert _error(capsys, ["index", "--ckpt", str(trained), "--images", str(workspace / "no_photos"),
                           "--out", str(workspace / "i2")]) == f"image folder {(workspace / 'no_photos').absolute()} does not exist"
    not_ckpt = photos / "notes" / "readme.txt"
    assert _error(capsys, ["index", "--ckpt", str(not_ckpt), "--images", str(photos),
                           "--out", str(workspace / "i2")]).startswith(f"{not_ckpt.absolute()}: not a readable PyTorch checkpoint")
    assert _error(capsys, ["index", "--ckpt", str(trained), "--images", str(photos), "--out",
                           str(photos / "notes")]).startswith(f"--out {(workspace / 'photos' / 'notes').absolute()} is a folder with files but no index.json")
    assert not (photos / "notes" / ".writer.lock").exists()  # refused before anything is written there
    (workspace / "no_images" / "sub").mkdir(parents=True)
    (workspace / "no_images" / "sub" / "a.txt").write_text("text")
    assert _error(capsys, ["index", "--ckpt", str(trained), "--images", str(workspace / "no_images"), "--out",
                           str(workspace / "i2")]) == (f"no readable image under {(workspace / 'no_images').absolute()} "
                                                       "(looked for .jpg, .jpeg, .png, .bmp, .webp; 0 unreadable)")
    assert not (workspace / "i2").exists()


def test_a_decompression_bomb_is_skipped_by_index_and_encode_naming_it(workspace, trained, pedes, capsys, caplog):
    folder = workspace / "bomb_photos"
    shutil.copytree(pedes / "imgs" / "Market", folder)
    (folder / "huge.png").write_bytes(bomb_png())  # 94 bytes declaring 225 megapixels
    reason = ("cannot read image (Image size (225000000 pixels) exceeds limit of 178956970 pixels, could be "
              "decompression bomb DOS attack.)")
    count = len(_readable(folder))
    assert main(["index", "--ckpt", str(trained), "--images", str(folder), "--out", str(workspace / "bomb_index"),
                 "--workers", "0"]) == 0
    assert capsys.readouterr().out.strip() == (f"[xsearch] indexed {count} images in {workspace / 'bomb_index'} ({count} "
                                               "embedded, 0 unchanged, 0 removed, 1 skipped as unreadable: huge.png)")
    assert f"skipped {folder.absolute() / 'huge.png'}: {reason}" in caplog.text
    assert main(["encode", "--ckpt", str(trained), "--images", str(folder), "--out", str(workspace / "bomb.safetensors"),
                 "--workers", "0"]) == 0
    assert "(1 unreadable images skipped, listed in its metadata)" in capsys.readouterr().out


def test_a_second_index_run_into_the_same_folder_fails_at_once_and_changes_nothing(workspace, trained, photos, indexed, capsys):
    out = workspace / "locked_index"
    shutil.copytree(indexed[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"lock = FileLock({str(out / '.writer.lock')!r}); lock.acquire(); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another process is writing the index
        (photos / "notes" / "new.jpg").write_bytes((photos / _readable(photos)[0]).read_bytes())
        assert _error(capsys, ["index", "--ckpt", str(trained), "--images", str(photos), "--out", str(out), "--workers", "0"]) == (
            f"{out.absolute()} is being written by another xsearch index run (it holds {out.absolute() / '.writer.lock'}): "
            "wait for it to finish, or index into another --out")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        holder.kill()
        holder.wait()
    try:  # the writer gone, the same command updates the index
        assert build_index(trained, photos, out, workers=0, progress=False).embedded == 1
    finally:
        (photos / "notes" / "new.jpg").unlink()


def test_faiss_factories(workspace, trained, photos, indexed, capsys):
    folder = photos
    message = _error(capsys, ["index", "--ckpt", str(trained), "--images", str(folder), "--out", str(workspace / "ivf"),
                              "--factory", "IVF64,Flat"])
    assert message.startswith("--factory 'IVF64,Flat': 64 inverted lists need at least 64 images to train")
    assert _error(capsys, ["index", "--ckpt", str(trained), "--images", str(folder), "--out", str(workspace / "ivf"),
                           "--factory", "Bogus"]).startswith("--factory 'Bogus': FAISS cannot parse it (could not parse index string Bogus)")
    assert not (workspace / "ivf").exists()
    out = workspace / "ivf_index"  # a new factory on an up-to-date index: the FAISS index is rebuilt, nothing embedded
    shutil.copytree(indexed[0], out)
    assert main(["index", "--ckpt", str(trained), "--images", str(folder), "--out", str(out), "--factory", "IVF2,Flat"]) == 0
    assert "(0 embedded, 27 unchanged, 0 removed, 1 skipped as unreadable: notes/broken.jpg)" in capsys.readouterr().out
    searcher = Searcher(out)
    assert type(searcher.index.faiss).__name__ == "IndexIVFFlat" and searcher.index.header["search"]["factory"] == "IVF2,Flat"
    exact = [h.path for h in searcher.search("a woman in a red coat", k=27, nprobe=2).hits]
    assert sorted(exact) == sorted(i.path for i in searcher.index.items)  # every list visited: every image found
    assert len(searcher.search("a woman in a red coat", k=27, nprobe=1).hits) < 27  # one list only
    assert main(["index", "--ckpt", str(trained), "--images", str(folder), "--out", str(out), "--factory", "Flat"]) == 0
    assert type(load_index(out).faiss).__name__ == "IndexFlatIP"


# -- other methods -------------------------------------------------------------------------------------------------
def test_partlevel_is_searched_exactly_through_its_own_similarity(workspace, pedes, photos, capsys):
    checkpoint, model = _hand_built(workspace, "partlevel")
    out = workspace / "partlevel_index"
    assert _error(capsys, ["index", "--ckpt", str(checkpoint), "--images", str(photos), "--out", str(out),
                           "--factory", "HNSW32"]).startswith("--factory 'HNSW32': method partlevel ranks with its own similarity")
    assert main(["index", "--ckpt", str(checkpoint), "--images", str(photos), "--out", str(out), "--workers", "0"]) == 0
    header = json.loads((out / "index.json").read_text())
    assert header["model"]["similarity"] == "model" and header["search"]["kind"] == "exact" and header["files"]["faiss"] is None
    caption = _test_captions(pedes)[1]
    searcher = Searcher(out)
    hits = searcher.search(caption, k=27).hits
    expected, scores = _brute_force(model, photos, [i.path for i in searcher.index.items],
                                    {"text": [caption]})
    assert [h.path for h in hits] == expected
    assert np.allclose([h.score for h in hits], scores.numpy(), atol=1e-5)
    cosine_order = torch.sort(cosine_similarity(searcher.loaded.model.encode_queries({"text": [caption]}),
                                                torch.from_numpy(np.array(searcher.index.embeddings)))[0],
                              descending=True, stable=True).indices.tolist()
    assert [searcher.index.items[i].path for i in cosine_order] != expected  # plain cosine would rank otherwise


def test_xmodal_composed_query_uses_the_reference_image(workspace, photos, capsys):
    # recorded as if trained from downloadable / local pretrained weights that are not here: search must not need them
    edits = {"image_encoder": {"class_path": "xsearch.models.ImageEncoder",
                               "init_args": {"name": "test_efficientnet", "pretrained": True, "weights": "/nonexistent/weights.pth"}}}
    checkpoint, model = _hand_built(workspace, "xmodal", edits, image_size=(64, 64))
    folder, out = photos, workspace / "xmodal_index"
    assert main(["index", "--ckpt", str(checkpoint), "--images", str(folder), "--out", str(out), "--workers", "0"]) == 0
    index = load_index(out)
    paths = [i.path for i in index.items]
    assert index.header["model"]["composed_queries"] is True
    with torch.inference_mode():  # the checkpoint's weights, not pretrained ones, embedded the folder
        gallery = model.encode_gallery({"image": torch.stack([load_image(folder / p, (64, 64)) for p in paths])})
    assert np.allclose(index.embeddings, gallery.numpy(), atol=1e-5)

    reference, text, picture = folder / paths[5], "the same person in a green coat", workspace / "composed.png"
    capsys.readouterr()
    assert main(["search", str(out), text, "--image", str(reference), "--k", "27", "--json", "--out", str(picture)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reference"] == str(reference)
    composed, _ = _brute_force(model, folder, paths, {"text": [text], "reference_image": load_image(reference, (64, 64))[None]}, (64, 64))
    text_only, _ = _brute_force(model, folder, paths, {"text": [text]}, (64, 64))
    assert [r["relative_path"] for r in result["results"]] == composed != text_only
    with Image.open(picture) as image:
        assert image.size == picture_size(27, thumb_size_for((64, 64)), reference=True)
    capsys.readouterr()
    unreadable = folder / "notes" / "broken.jpg"
    assert _error(capsys, ["search", str(out), "in a green coat", "--image", str(unreadable)]).startswith(
        f"{unreadable}: cannot read image (")
    assert _error(capsys, ["search", str(out), "in a green coat", "--image", str(folder / "gone.jpg")]) == (
        f"reference image {folder / 'gone.jpg'} does not exist")


@pytest.mark.parametrize("method", sorted(set(METHODS.names()) - {"dual_encoder", "partlevel", "xmodal"}))  # tested above
def test_every_method_is_rebuilt_from_its_checkpoint_and_embeds_images_and_text(method, workspace, photos):
    config = yaml.safe_load((ROOT / "configs" / "tiny" / f"{method}.yaml").read_text())["data"]
    size, crop = tuple(config["image_size"]), tuple(config["crop"]) if config.get("crop") else None
    checkpoint, model = _hand_built(workspace, method, image_size=size)
    data = torch.load(checkpoint, weights_only=True)
    data["datamodule_hyper_parameters"]["crop"] = list(crop) if crop else None
    torch.save(data, checkpoint)
    loaded = load_model(checkpoint, "cpu")
    assert (loaded.method, loaded.image_size, loaded.crop, loaded.composed) == (method, size, crop, False)
    images = torch.stack([load_image(photos / p, size, crop) for p in _readable(photos)[:3]])
    with torch.inference_mode():
        gallery, queries = model.encode_gallery({"image": images}), model.encode_queries({"text": ["a man in a red coat"]})
    assert torch.allclose(embed_images(loaded, images), gallery, atol=1e-5)
    assert torch.allclose(embed_queries(loaded, ["a man in a red coat"]), queries, atol=1e-5)
    if method == "idclip":  # a caption with an identity slot needs that person's face descriptor
        with pytest.raises(ValueError, match=r"^method idclip cannot embed a text-only query: idclip needs face descriptors"):
            embed_queries(loaded, ["a photo of [ENTITY] at the beach"])


class FaceGallery(RetrievalModule):
    """A method whose gallery embedding needs a face descriptor besides the image (as a test double)."""

    def __init__(self, dim: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.head = torch.nn.Linear(dim, dim)

    def encode_gallery(self, batch: dict) -> torch.Tensor:
        return self.head(batch["face"])

    def encode_queries(self, batch: dict) -> torch.Tensor:
        return torch.zeros(len(batch["text"]), 4)


def test_a_method_whose_gallery_needs_more_than_the_image_is_refused_by_name(workspace, photos, capsys, monkeypatch):
    monkeypatch.setitem(METHODS._items, "face_gallery", FaceGallery)  # checkpoints may name registered methods only
    model = FaceGallery()
    checkpoint = workspace / "face_gallery.ckpt"
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": lightning.__version__,
                "hyper_parameters": {"_class_path": f"{__name__}.FaceGallery", "dim": 4,
                                     "_instantiator": "lightning.pytorch.cli.instantiate_module"},
                "datamodule_hyper_parameters": {"image_size": [64, 32], "crop": None}}, checkpoint)
    assert _error(capsys, ["index", "--ckpt", str(checkpoint), "--images", str(photos), "--out",
                           str(workspace / "face_index"), "--workers", "0"]) == (
        "method face_gallery: its gallery embedding needs face besides the image; only methods that embed an image alone "
        "can index a folder")
    torch.save({"state_dict": {}, "pytorch-lightning_version": lightning.__version__,
                "hyper_parameters": {"_class_path": "os.system", "_instantiator": "lightning.pytorch.cli.instantiate_module"},
                "datamodule_hyper_parameters": {"image_size": [64, 32]}}, checkpoint)
    (workspace / "one.txt").write_text("a person\n")
    assert _error(capsys, ["encode", "--ckpt", str(checkpoint), "--captions", str(workspace / "one.txt"), "--out",
                           str(workspace / "x.safetensors")]).startswith(f"{checkpoint.absolute()}: hyper_parameters._class_path "
                                                                         "'os.system' is not an xsearch method; known: cmsn")


# -- encode --------------------------------------------------------------------------------------------------------
def test_encode_writes_embeddings_with_their_ids(workspace, trained, direct, photos, indexed, capsys, caplog):
    from safetensors import safe_open

    folder, out = photos, workspace / "images.safetensors"
    assert main(["encode", "--ckpt", str(trained), "--images", str(folder), "--out", str(out), "--workers", "0"]) == 0
    assert f"skipped {folder.absolute() / 'notes' / 'broken.jpg'}: cannot read image (" in caplog.text  # a warning
    assert capsys.readouterr().out.strip() == (f"[xsearch] wrote 27 x 32 images embeddings of dual_encoder to {out} (1 "
                                               "unreadable images skipped, listed in its metadata)")
    with safe_open(str(out), "pt") as handle:
        embeddings, metadata = handle.get_tensor("embeddings"), json.loads(handle.metadata()["xsearch"])
    readable = _readable(folder)
    assert embeddings.shape == (27, 32) and embeddings.dtype == torch.float32
    assert metadata["ids"] == metadata["paths"] == readable and metadata["kind"] == "images"
    assert [s["path"] for s in metadata["skipped"]] == ["notes/broken.jpg"] and metadata["method"] == "dual_encoder"
    index = load_index(indexed[0])
    assert [i.path for i in index.items] == readable
    assert torch.allclose(embeddings, torch.from_numpy(np.array(index.embeddings)), atol=1e-5)  # what the index holds

    captions = workspace / "caps.jsonl"
    captions.write_text('{"id": "q1", "text": "a man in a red jacket"}\n\n{"text": "a woman with a handbag"}\n')
    assert main(["encode", "--ckpt", str(trained), "--captions", str(captions), "--out", str(workspace / "caps.parquet")]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(workspace / "caps.parquet")
    assert table.column("id").to_pylist() == ["q1", "3"] and table.column("text").to_pylist()[1] == "a woman with a handbag"
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    with torch.inference_mode():
        expected = direct.encode_queries({"text": ["a man in a red jacket", "a woman with a handbag"]})
    assert vectors.shape == (2, 32) and np.allclose(vectors, expected.numpy(), atol=1e-5)
    assert json.loads(table.schema.metadata[b"xsearch"])["kind"] == "captions"

    (workspace / "caps.txt").write_text("a man in a red jacket\n")
    bad = workspace / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": ""}\n')
    assert _error(capsys, ["encode", "--ckpt", str(trained), "--captions", str(bad), "--out", str(workspace / "b.safetensors")]) == (
        f"{bad}:2: expected an object with a non-empty \"text\" string")
    assert _error(capsys, ["encode", "--ckpt", str(trained), "--captions", str(captions), "--out", str(workspace / "b.npy")]) == (
        f"--out {workspace / 'b.npy'}: expected a .safetensors or .parquet file")
    assert not (workspace / "b.safetensors").exists()
    assert read_captions(workspace / "caps.txt").texts == ["a man in a red jacket"]


# -- hand-edited or damaged index folders (no model needed: the index is written directly) -------------------------
def _hand_made_index(folder: Path) -> Path:
    """A valid FAISS-searched index of two images (``a.jpg``, ``b.jpg``, 4-d embeddings) written without a model."""
    from xsearch.search.images import ImageFile

    header = {"format": index_module.FORMAT, "version": index_module.VERSION, "generation": 1,
              "images_root": str(folder.parent / "photos"),
              "checkpoint": {"path": str(folder.parent / "model.ckpt"), "sha256": "0" * 64, "size": 1, "mtime_ns": 1},
              "model": {"method": "dual_encoder", "class_path": "xsearch.models.DualEncoder", "similarity": "cosine",
                        "composed_queries": False},
              "preprocessing": {"image_size": [64, 32], "crop": None}, "dim": 4, "count": 2,
              "search": {"kind": "faiss", "factory": "Flat", "metric": "cosine"}, "skipped": [],
              "created": "2024-01-01T00:00:00Z", "updated": "2024-01-01T00:00:00Z"}
    items = [ImageFile("a.jpg", 1, 1), ImageFile("b.jpg", 1, 1)]
    index_module._write(folder, header, items, np.eye(2, 4, dtype=np.float32), "Flat")
    return folder


def _edit_header(folder: Path, dotted: str, value: object) -> None:
    """Set (or, for ``...``, delete) the field ``a.b`` of ``folder/index.json``."""
    header = json.loads((folder / "index.json").read_text())
    *parents, last = dotted.split(".")
    target = header
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    (folder / "index.json").write_text(json.dumps(header))


WRONG_FIELDS = [
    ("count", "many", 'field count: expected an integer >= 0, got "many"'),
    ("count", True, "field count: expected an integer >= 0, got true"),
    ("dim", [], "field dim: expected an integer >= 1, got []"),
    ("checkpoint", 5, "field checkpoint: expected an object, got 5"),
    ("checkpoint.sha256", "abc", 'field checkpoint.sha256: expected 64 lowercase hex digits, got "abc"'),
    ("checkpoint.size", ..., "field checkpoint.size: expected an integer >= 0, got nothing (the field is missing)"),
    ("search", {"kind": 3}, "field search.kind: expected 'faiss' or 'exact', got 3"),
    ("search.factory", None, "field search.factory: expected a FAISS factory string (text), got null"),
    ("files.embeddings", ..., "field files.embeddings: expected a file name, got nothing (the field is missing)"),
    ("files.items", "../../etc/passwd", 'field files.items: expected a file name, got "../../etc/passwd"'),
    ("files.faiss", None, "field files.faiss: expected a file name (search.kind is 'faiss'), got null"),
    ("files", [], "field files: expected an object naming the index files, got []"),
    ("images_root", 7, "field images_root: expected the indexed folder's path (text), got 7"),
    ("model.method", ["x"], 'field model.method: expected a method name (text), got ["x"]'),
    ("model.composed_queries", "yes", 'field model.composed_queries: expected true or false, got "yes"'),
    ("preprocessing.image_size", [64, 0], "field preprocessing.image_size: expected [height, width] in pixels "
                                          "(integers >= 1), got [64, 0]"),
    ("preprocessing.crop", "middle", "field preprocessing.crop: expected null, 'center' or [top, left, bottom, right] "
                                     'fractions, got "middle"'),
    ("skipped", "none", 'field skipped: expected a list of {"path", "reason", ...} objects, got "none"'),
    ("generation", -1, "field generation: expected an integer >= 0, got -1"),
]


@pytest.mark.parametrize("field, value, expected", WRONG_FIELDS,
                         ids=[f"{f}={'(missing)' if v is ... else repr(v)}" for f, v, _ in WRONG_FIELDS])
def test_a_hand_edited_index_header_is_one_line_naming_the_field_and_the_expected_type(field, value, expected, tmp_path,
                                                                                       capsys):
    folder = _hand_made_index(tmp_path / "index")
    assert load_index(folder).checkpoint.sha256 == "0" * 64  # valid as written
    _edit_header(folder, field, value)
    line = (f"{folder / 'index.json'}: {expected}; fix it, or rebuild the index with xsearch index ... --rebuild")
    with pytest.raises(ValueError) as raised:
        load_index(folder)
    assert str(raised.value) == line
    assert _error(capsys, ["search", str(folder), "a person"]) == line


def test_a_hand_edited_index_header_stops_serve_and_index_too(tmp_path, capsys):
    folder = _hand_made_index(tmp_path / "index")
    _edit_header(folder, "count", "many")
    line = (f'{folder / "index.json"}: field count: expected an integer >= 0, got "many"; fix it, or rebuild the index '
            "with xsearch index ... --rebuild")
    assert _error(capsys, ["serve", str(folder), "--port", "0"]) == line
    (tmp_path / "model.ckpt").write_bytes(b"x")  # hashed before the existing index is read; never loaded
    (tmp_path / "photos").mkdir()
    assert _error(capsys, ["index", "--ckpt", str(tmp_path / "model.ckpt"), "--images", str(tmp_path / "photos"),
                           "--out", str(folder)]) == line
    assert json.loads((folder / "index.json").read_text())["count"] == "many"  # left as it was


ODD_NAMES = ("new\nline.jpg", "tab\tand\x1b[31mescape.jpg", "right\u202eto-left.jpg", "café au lait.jpg")


def test_search_prints_one_line_per_result_whatever_the_file_names(workspace, trained, photos, capsys):
    folder = workspace / "odd_names"
    folder.mkdir()
    pictures = sorted(p for p in photos.rglob("*") if p.suffix in (".jpg", ".png") and "notes" not in p.parts)
    for name, picture in zip(ODD_NAMES, pictures):
        Image.open(picture).convert("RGB").save(folder / name, format="JPEG")
    assert main(["index", "--ckpt", str(trained), "--images", str(folder), "--out", str(workspace / "odd_index"),
                 "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", str(workspace / "odd_index"), "a person", "--k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # one line per result: no name splits or rewrites a line
    shown = {re.fullmatch(r" *\d+  -?\d\.\d{4}  (.*)", line).group(1) for line in lines}
    assert shown == {repr(str(folder / name)) for name in ODD_NAMES[:3]} | {str(folder / "café au lait.jpg")}
    from xsearch.search.images import shown_name

    assert shown_name("bytes\udcff.jpg") == "'bytes\\udcff.jpg'"  # an undecodable name prints instead of crashing
    assert shown_name("no\u2028break.jpg") == "'no\\u2028break.jpg'" and shown_name("a b ü.jpg") == "a b ü.jpg"


KILLED_WRITER = """
import sys, time
from xsearch.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half an embedding matrix")
    print(tmp.name, flush=True)
    time.sleep(60)
"""


def _killed_mid_write(target: Path) -> Path:
    """Start a process writing ``target`` through ``atomic_path``, kill it (SIGKILL) mid-write: the temporary it left."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        name = child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert name.startswith(f".{target.name}.")
    return target.parent / name


def test_the_next_index_run_removes_the_temporaries_of_writes_killed_midway(workspace, trained, photos, indexed, capsys):
    folder = workspace / "killed_index"
    shutil.copytree(indexed[0], folder)
    header = json.loads((folder / "index.json").read_text())
    killed = _killed_mid_write(folder / f"embeddings.{header['generation'] + 1}.npy")
    assert killed.is_file()  # a kill leaves the temporary of the write it interrupted
    by_hand = [folder / ".index.json.abcd_123.json", folder / ".faiss.9.index.zzzzzzzz.index"]
    others = [folder / ".notes.txt.abcdefgh.txt", folder / ".embeddings.2.npy.backup"]  # not temporaries of index files
    for path in by_hand + others:
        path.write_text("left over")
    assert main(["index", "--ckpt", str(trained), "--images", str(photos), "--out", str(folder), "--workers", "0"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert not killed.exists() and not any(p.exists() for p in by_hand)
    assert all(p.read_text() == "left over" for p in others)
    assert len(load_index(folder)) == len(load_index(indexed[0]))


def test_a_first_index_run_killed_before_its_header_does_not_block_the_folder(workspace, trained, photos, capsys):
    folder, images = workspace / "first_killed", workspace / "two_photos"
    images.mkdir()
    for picture in sorted(p for p in photos.rglob("*.jpg") if "notes" not in p.parts)[:2]:
        shutil.copy(picture, images / picture.name)
    folder.mkdir()
    (folder / ".writer.lock").touch()
    (folder / "items.1.jsonl").write_text('{"path": "a.jpg", "size"')  # written, then killed before index.json
    killed = _killed_mid_write(folder / "embeddings.1.npy")
    assert main(["index", "--ckpt", str(trained), "--images", str(images), "--out", str(folder), "--workers", "0"]) == 0
    assert not killed.exists()
    assert len(load_index(folder)) == 2
    assert sorted(p.name for p in folder.iterdir()) == [".writer.lock", "embeddings.1.npy", "faiss.1.index", "index.json",
                                                        "items.1.jsonl"]
