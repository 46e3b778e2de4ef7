"""Cost of reading a full-size annotation file: first parse, cached parse, and the image check.

Usage: ``python benchmarks/dataset_index.py [--records 40206] [--keep DIR]``

Writes a CUHK-PEDES-sized copy (40,206 records, 80,440 captions over the seven source folders, one
empty file per image: pixels are never read by the index) into a temp folder, then times in one
process:

* baseline: ``json.load`` + one ``Path.is_file()`` per image (what per-record loaders do);
* ``load_dataset(cache=False)``: the parser + one directory listing per folder + the audit;
* ``load_dataset`` with a warm parse cache (annotation size + mtime unchanged);
* the folder-listing existence check alone vs one ``stat`` per image.

Prints the ratios against the baseline. Pixels are decoded lazily when a batch needs them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsearch.datamodules import load_dataset  # noqa: E402
from xsearch.datamodules.files import FolderListing  # noqa: E402

FOLDERS = ("cam_a", "cam_b", "CUHK01", "CUHK03", "Market", "train_query", "test_query")


def write_copy(root: Path, records: int) -> None:
    rows = []
    for number in range(records):
        folder = FOLDERS[number % len(FOLDERS)]
        path = f"{folder}/{number:06d}.jpg"
        split = "train" if number < records * 0.85 else ("val" if number < records * 0.925 else "test")
        captions = [f"A person number {number} wears a dark coat and carries bag {k}." for k in range(2)]
        rows.append({"split": split, "captions": captions, "file_path": path,
                     "processed_tokens": [c.lower().split() for c in captions], "id": 1 + number // 3})
        (root / "imgs" / folder).mkdir(parents=True, exist_ok=True)
        (root / "imgs" / path).touch()
    (root / "reid_raw.json").write_text(json.dumps(rows))


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=40206)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", default=None, help="write the copy here and keep it")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="xsearch-bench-"))
    os.environ["XSEARCH_CACHE"] = str(work / "cache")
    root = work / "CUHK-PEDES"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if not (root / "reid_raw.json").exists():
        started = time.perf_counter()
        write_copy(root, args.records)
        print(f"wrote {args.records} records + empty image files in {time.perf_counter() - started:.1f} s")

    def baseline() -> None:
        rows = json.loads((root / "reid_raw.json").read_text())
        missing = [r["file_path"] for r in rows if not (root / "imgs" / r["file_path"]).is_file()]
        assert not missing

    def parse_uncached() -> None:
        index = load_dataset("cuhk_pedes", root, cache=False)
        assert not index.missing_images and len(index.captions) == 2 * args.records

    def parse_cached() -> None:
        index = load_dataset("cuhk_pedes", root)
        assert index.extras["cache_hit"]

    paths = [r.path for r in load_dataset("cuhk_pedes", root).images]  # also warms the cache
    results = {
        "json.load + is_file per image (baseline)": best_of(args.repeats, baseline),
        "load_dataset, no cache": best_of(args.repeats, parse_uncached),
        "load_dataset, warm parse cache": best_of(args.repeats, parse_cached),
        "existence: one stat per image": best_of(args.repeats, lambda: [p.is_file() for p in paths]),
        "existence: one listing per folder": best_of(args.repeats, lambda: FolderListing().missing(paths)),
    }
    base = results["json.load + is_file per image (baseline)"]
    stat = results["existence: one stat per image"]
    print(f"\n| step | seconds (best of {args.repeats}) | vs baseline |")
    print("|---|---:|---:|")
    for name, seconds in results.items():
        ref = stat if name.startswith("existence") else base
        print(f"| {name} | {seconds:.3f} | {ref / seconds:.1f}x |")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
