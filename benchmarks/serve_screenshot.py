"""Screenshot of ``xsearch serve`` for the README: a real checkpoint, a real index, a real browser.

Usage: ``python benchmarks/serve_screenshot.py --ckpt runs/quickstart/checkpoints/last.ckpt
--root synth_pedes --out docs/serve.png [--images 300] [--record 0] [--query TEXT] [--k 14]``

Copies the first ``--images`` test-split images of a CUHK-PEDES-layout dataset (``ROOT/reid_raw.json`` records with
``"split": "test"``, files under ``ROOT/imgs/``: identities never trained on) to a temporary folder, indexes them with
the checkpoint (``xsearch index``), serves the page (``xsearch serve``, in a thread), types a held-out test caption
(the first caption of test record ``--record`` among the copied ones, or ``--query``) into headless Debian chromium
(Selenium + chromedriver: ``apt-get install chromium chromium-driver``), waits for the result grid and saves the window
as a PNG (palette-quantised to stay small). Prints the query, its identity and the ranks where that identity appears.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsearch.atomic import atomic_path  # noqa: E402
from xsearch.search.index import build_index  # noqa: E402
from xsearch.search.query import Searcher  # noqa: E402
from xsearch.search.serve import background_server, create_app  # noqa: E402

MAX_BYTES = 300 * 1024


def held_out_records(root: Path, count: int) -> list[dict]:
    """The first ``count`` test-split records of ``root/reid_raw.json`` (by file path) whose image exists."""
    annotations = root / "reid_raw.json"
    if not annotations.is_file():
        raise SystemExit(f"{annotations} does not exist: --root must be a CUHK-PEDES-layout dataset (reid_raw.json, imgs/)")
    records = [r for r in json.loads(annotations.read_text(encoding="utf-8")) if r.get("split") == "test"]
    records = sorted((r for r in records if (root / "imgs" / r["file_path"]).is_file()), key=lambda r: r["file_path"])
    if not records:
        raise SystemExit(f"{annotations}: no test-split record with an image under {root / 'imgs'}")
    return records[:count]


def browser(width: int, height: int):
    """Headless chromium through chromedriver (both from apt)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        raise SystemExit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def small_png(png: bytes, limit: int = MAX_BYTES) -> bytes:
    """``png`` re-encoded with a 256-colour palette (and optimised) when it is over ``limit`` bytes."""
    from PIL import Image

    if len(png) <= limit:
        return png
    with Image.open(io.BytesIO(png)) as image:
        quantised = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    quantised.save(out, "PNG", optimize=True)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by xsearch fit")
    parser.add_argument("--root", required=True, help="dataset root holding reid_raw.json and imgs/; a relative one is under $XSEARCH_DATA (default ./data), as data.root")
    parser.add_argument("--out", default=str(ROOT / "docs" / "serve.png"), help="PNG to write")
    parser.add_argument("--images", type=int, default=300, help="test-split images to index")
    parser.add_argument("--record", type=int, default=0, help="test record (among the copied) whose first caption is the query")
    parser.add_argument("--query", default=None, help="search this text instead")
    parser.add_argument("--k", type=int, default=14, help="results shown")
    parser.add_argument("--size", default="1280x720", help="browser window WIDTHxHEIGHT")
    args = parser.parse_args()
    from xsearch.datamodules.loading import resolve_root

    root = resolve_root(args.root)
    records = held_out_records(root, args.images)
    record = records[args.record % len(records)]
    query = args.query or record["captions"][0]
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="xsearch-screenshot-") as tmp:
        images = Path(tmp) / f"{root.name}-test"
        for r in records:
            target = images / r["file_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / "imgs" / r["file_path"], target)
        start = time.perf_counter()
        report = build_index(args.ckpt, images, Path(tmp) / "index", workers=0, progress=False)
        print(f"indexed {report.total} test images in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        searcher = Searcher(Path(tmp) / "index")
        identity = {r["file_path"]: r["id"] for r in records}
        hits = searcher.search(query, args.k).hits
        ranks = [h.rank for h in hits if identity.get(h.path) == record["id"]] if args.query is None else []
        print(f"query: {query}")
        if args.query is None:
            print(f"identity {record['id']} ({sum(1 for r in records if r['id'] == record['id'])} images indexed) "
                  f"at ranks {ranks} of the top {args.k}")

        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver = browser(width, height)
        try:
            with background_server(create_app(searcher)) as url:
                driver.get(url + "/")
                driver.find_element(By.ID, "text").send_keys(query)
                k = driver.find_element(By.ID, "k")
                k.clear()
                k.send_keys(str(args.k))
                driver.find_element(By.ID, "submit").click()
                wait = WebDriverWait(driver, 60)
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == len(hits))
                wait.until(lambda d: d.execute_script("return Array.from(document.querySelectorAll('#results img'))"
                                                      ".every(i => i.complete && i.naturalWidth > 0)"))
                shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .score")]
                if shown != [f"{h.score:.4f}" for h in hits]:
                    raise SystemExit(f"the page shows scores {shown}, the searcher {[round(h.score, 4) for h in hits]}")
                page_height = driver.execute_script("return document.documentElement.scrollHeight")
                view_height = driver.execute_script("return window.innerHeight")
                if page_height > view_height:  # the whole grid in the picture
                    driver.set_window_size(width, height + page_height - view_height)
                png = small_png(driver.get_screenshot_as_png())
        finally:
            driver.quit()
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) // 1024} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
