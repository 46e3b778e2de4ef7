"""Search finds the right person: a model trained by ``xsearch fit`` for about a minute indexes the images of held-out
identities (never trained on) and ``xsearch search`` puts an image of the person a held-out caption describes first far
more often than chance; ``xsearch search`` on the command line prints the same first result.

Each caption is searched in a folder of 10 held-out identities (20 images). The quickstart checkpoint (10 minutes of
training) does much better on the whole held-out split: ``benchmarks/search_quality.py`` (top 5 for 77.6% of 674
captions, from the CLI path and from the page in a browser)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xsearch.cli import main
from xsearch.search.query import Searcher

# 2,000 identities with 2 images and 1 caption each, drawn at 64x32: 1,800 train the model (identity variety is what
# makes it generalise), the last 100 are held out. Generation 7 s, caption cache 18 s, 8 epochs about 40 s (2 cores).
GENERATE = ("{identities: 2000, seed: 0, images_per_identity: [2, 2], captions_per_image: 1, image_size: [64, 32], "
            "split_fractions: [0.9, 0.05, 0.05]}")
GROUP = 10  # identities per searched folder: chance of an image of the right one first is 1 in 10


@pytest.fixture(scope="module")
def learned(tmp_path_factory, fit_tiny) -> tuple[Path, Path]:
    """(checkpoint, dataset root): the tiny dual encoder fitted for 8 epochs on :data:`GENERATE`'s training split."""
    workspace = tmp_path_factory.mktemp("search_quality")
    checkpoint = fit_tiny(workspace, "--trainer.max_epochs", "8", "--data.root", "pedes", "--data.generate", GENERATE,
                          "--data.sampler", "random", "--data.batch_size", "32", "--model.embed_dim", "256",
                          "--model.id_weight", "0", "--model.sdm_weight", "0", "--model.visualize_queries", "0")
    return checkpoint, workspace / "data" / "pedes"


def test_held_out_captions_find_their_person_first_far_above_chance(learned, tmp_path, capsys):
    checkpoint, pedes = learned
    records = [r for r in json.loads((pedes / "reid_raw.json").read_text()) if r["split"] == "test"]
    people = sorted({r["id"] for r in records})
    assert len(people) == 100 and len(records) == 200  # 100 held-out identities x 2 images, one caption each
    hits, queries, first_of = 0, 0, {}
    for start in range(0, len(people), GROUP):
        group = set(people[start : start + GROUP])
        folder, index = tmp_path / f"photos{start}", tmp_path / f"index{start}"
        pid_of = {}
        for r in records:
            if r["id"] in group:  # the user's folder: the held-out images, linked with their dataset paths
                (folder / r["file_path"]).parent.mkdir(parents=True, exist_ok=True)
                (folder / r["file_path"]).symlink_to(pedes / "imgs" / r["file_path"])
                pid_of[r["file_path"]] = r["id"]
        assert main(["index", "--ckpt", str(checkpoint), "--images", str(folder), "--out", str(index), "--workers", "0"]) == 0
        searcher = Searcher(index, device="cpu")
        for r in records:
            if r["id"] in group:
                (caption,) = r["captions"]
                result = searcher.search(caption, k=2 * GROUP)
                assert sorted(hit.path for hit in result.hits) == sorted(pid_of)  # every image ranked
                first_of[caption] = (result.hits[0].path, pid_of[result.hits[0].path] == r["id"], index)
                hits, queries = hits + first_of[caption][1], queries + 1
    capsys.readouterr()
    assert queries == 200
    # measured 2026-12-03 (2 cores, torch 2.14.1): 81 of 200 first; 2026-12-07: 63 (the training recipe changed since);
    # chance gives 20 +- 4.2, P(>= 60 | chance) < 1e-15
    assert hits >= 60, f"{hits} of {queries} held-out captions found their person first (chance: 1 in {GROUP})"

    # the CLI prints the same first result for a held-out caption
    caption, (first, _, index) = next((c, found) for c, found in first_of.items() if found[1])
    assert main(["search", str(index), caption, "--k", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"][0]["relative_path"] == first
