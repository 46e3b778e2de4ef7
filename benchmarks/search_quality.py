"""Search quality of a trained checkpoint through ``xsearch index`` + ``xsearch search`` (the code behind the CLI and
the web page), on a dataset split whose identities are known.

Usage::

    python benchmarks/search_quality.py --ckpt runs/quickstart/checkpoints/last.ckpt --root synth_pedes

The split's images are linked into a temporary folder (relative paths kept) and indexed with the checkpoint; every
caption of the split is then searched as a user would type it, one query at a time, and counts as a hit at K when an
image of its person is among the first K results. Printed: hit rates at 1, 5 and 10 next to the evaluator's R@K for
the same queries and gallery (``RetrievalDataModule`` + the method's ``encode_*`` + ``retrieval_metrics``: the
baseline in the same process); they agree up to near-ties between differently batched float32 embeddings.
``--page N`` also types the first N captions into the ``xsearch serve`` page in headless chromium (Debian's chromium +
chromedriver, Selenium) and counts the hits in the grid the page shows.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KS = (1, 5, 10)


def _link_split(index, split: str, folder: Path) -> dict[str, int]:
    """Symlink the split's images under ``folder``; returns {relative path: pid}."""
    pids = {}
    for record in index.split_images(split):
        relative = os.path.relpath(record.path, index.root)
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(record.path).absolute())
        pids[relative] = record.pid
    return pids


def _evaluator(loaded, index, split: str) -> dict[str, float]:
    """The evaluator's R@K for the same captions and images, from the method's batched embeddings."""
    import torch

    from xsearch.datamodules.transforms import load_image
    from xsearch.evaluation.retrieval import retrieval_metrics
    from xsearch.search.model_io import embed_images, embed_queries

    images, captions = index.split_images(split), index.split_captions(split)
    gallery = torch.cat([embed_images(loaded, torch.stack([load_image(r.path, loaded.image_size, loaded.crop)
                                                          for r in images[i: i + 64]])) for i in range(0, len(images), 64)])
    queries = torch.cat([embed_queries(loaded, [c.text for c in captions[i: i + 64]]) for i in range(0, len(captions), 64)])
    similarity = loaded.model.similarity(queries, gallery)
    metrics = retrieval_metrics(similarity, torch.tensor([c.pid for c in captions]), torch.tensor([r.pid for r in images]), ks=KS)
    return {k: float(metrics[f"R{k}"]) for k in KS}


def _page_hits(searcher, captions, pids: dict[str, int], count: int) -> dict[int, int]:
    """Type ``count`` captions into the served page in headless chromium; hits at K read from the page's grid."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from xsearch.search.serve import background_server, create_app

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    hits = {k: 0 for k in KS}
    try:
        with background_server(create_app(searcher)) as url:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 30)
            k_box = browser.find_element(By.ID, "k")
            k_box.clear()
            k_box.send_keys(str(max(KS)))
            for caption in captions[:count]:
                box = browser.find_element(By.ID, "text")
                box.clear()
                box.send_keys(caption.text)
                browser.find_element(By.ID, "submit").click()
                wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(f"{max(KS)} results for \u201c{caption.text}"))
                shown = [c.get_attribute("title") for c in browser.find_elements(By.CSS_SELECTOR, "#results .hit .name")]
                found = [pids[path] == caption.pid for path in shown]
                for k in KS:
                    hits[k] += any(found[:k])
    finally:
        browser.quit()
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--root", required=True, help="dataset folder (the checkpoint's dataset layout); a relative one is under $XSEARCH_DATA (default ./data), as data.root")
    parser.add_argument("--dataset", default="synth_pedes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N captions")
    parser.add_argument("--page", type=int, default=0, help="also type the first N captions into the served page")
    args = parser.parse_args()

    from xsearch.datamodules.loading import load_dataset
    from xsearch.search.index import build_index
    from xsearch.search.query import Searcher

    index = load_dataset(args.dataset, args.root)
    captions = index.split_captions(args.split)[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "images", Path(tmp) / "index"
        pids = _link_split(index, args.split, folder)
        start = time.perf_counter()
        report = build_index(args.ckpt, folder, out, progress=False)
        indexed = time.perf_counter() - start
        searcher = Searcher(out)
        hits = {k: 0 for k in KS}
        start = time.perf_counter()
        for caption in captions:
            result = searcher.search(caption.text, k=max(KS))
            found = [pids[h.path] == caption.pid for h in result.hits]
            for k in KS:
                hits[k] += any(found[:k])
        searched = time.perf_counter() - start
        evaluator = _evaluator(searcher.loaded, index, args.split) if args.limit is None else None
        page = _page_hits(searcher, captions, pids, args.page) if args.page else None
    n = len(captions)
    print(f"{args.dataset} {args.split}: {report.total} images indexed in {indexed:.1f} s, {n} captions searched one "
          f"at a time in {searched:.1f} s ({1000 * searched / n:.1f} ms per query), {len(set(pids.values()))} identities")
    print("| K | search: right person in top K | evaluator R@K (same queries, gallery) |")
    print("|---:|---:|---:|")
    for k in KS:
        base = f"{evaluator[k]:.2f}%" if evaluator else "-"
        print(f"| {k} | {100 * hits[k] / n:.2f}% ({hits[k]}/{n}) | {base} |")
    if page:
        shown = min(args.page, n)
        print(f"page (headless chromium, first {shown} captions typed into xsearch serve): " + ", ".join(
            f"top {k} {100 * page[k] / shown:.1f}% ({page[k]}/{shown})" for k in KS))


if __name__ == "__main__":
    main()
