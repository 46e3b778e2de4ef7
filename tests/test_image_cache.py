"""The pre-resized disk cache returns exactly what decoding gives, never a stale copy, and `xsearch data cache` fills it."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from xsearch.cli import main
from xsearch.datamodules.image_cache import DiskImageCache
from xsearch.datamodules.transforms import load_image


def _image(path, value: int, size=(40, 30)) -> None:
    array = np.full((size[0], size[1], 3), value, dtype=np.uint8)
    array[:, : size[1] // 2, 0] = 255 - value
    Image.fromarray(array).save(path)


def test_cached_copy_equals_decoding_and_is_read_back_without_decoding(tmp_path):
    path = tmp_path / "a.png"
    _image(path, 10)
    cache = DiskImageCache(tmp_path / "cache")
    calls = []

    def load():
        calls.append(1)
        return load_image(path, (16, 8), "center")

    first = cache.get(path, (16, 8), "center", load)
    assert torch.equal(first, load_image(path, (16, 8), "center")) and first.dtype == torch.uint8 and len(calls) == 1
    assert torch.equal(cache.get(path, (16, 8), "center", load), first) and len(calls) == 1  # from disk
    cache.get(path, (8, 4), "center", load)  # another size: its own entry
    assert len(calls) == 2 and len(list((tmp_path / "cache").rglob("*.npy"))) == 2
    assert not [p for p in (tmp_path / "cache").rglob(".*")]  # no temporary file left


def test_a_changed_image_or_a_truncated_entry_is_decoded_again(tmp_path):
    path = tmp_path / "a.png"
    _image(path, 10)
    cache = DiskImageCache(tmp_path / "cache")
    old = cache.get(path, (16, 8), None, lambda: load_image(path, (16, 8)))
    _image(path, 200)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new = cache.get(path, (16, 8), None, lambda: load_image(path, (16, 8)))
    assert not torch.equal(new, old) and torch.equal(new, load_image(path, (16, 8)))
    entry = next(p for p in (tmp_path / "cache").rglob("*.npy") if p.name.startswith(cache.key(path, (16, 8), None)))
    entry.write_bytes(entry.read_bytes()[:20])  # truncated
    assert torch.equal(cache.get(path, (16, 8), None, lambda: load_image(path, (16, 8))), new)


def test_xsearch_data_cache_fills_the_folder_the_datamodule_reads(tmp_path, capsys):
    from xsearch.datamodules.base import RetrievalDataModule

    root = tmp_path / "pedes"
    assert main(["data", "synth", "pedes", "--out", str(root), "--identities", "6", "--seed", "1"]) == 0
    assert main(["data", "cache", "synth_pedes", "--root", str(root), "--size", "32", "16"]) == 0
    out = capsys.readouterr().out
    entries = list((root / ".xsearch_cache").rglob("*.npy"))
    assert f"{len(entries)} images cached in {root / '.xsearch_cache'}" in out and entries
    plain = RetrievalDataModule("synth_pedes", str(root), image_size=(32, 16), num_workers=0)
    cached = RetrievalDataModule("synth_pedes", str(root), image_size=(32, 16), num_workers=0, image_cache=".xsearch_cache")
    for module in (plain, cached):
        module.setup("test")
    _, gallery = plain.eval_sets["test"]
    _, gallery_cached = cached.eval_sets["test"]
    for i in range(len(gallery)):
        assert torch.equal(gallery[i]["image"], gallery_cached[i]["image"])
    assert len(list((root / ".xsearch_cache").rglob("*.npy"))) == len(entries)  # all read, none added
    with pytest.raises(SystemExit, match="--crop '1,2': expected 'center' or top,left,bottom,right"):
        main(["data", "cache", "synth_pedes", "--root", str(root), "--size", "32", "16", "--crop", "1,2"])
