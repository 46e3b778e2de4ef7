"""Training data pipeline throughput: xsearch's loader vs a naive PIL + torchvision loader, per worker count.

Usage: ``python benchmarks/data_throughput.py [--identities 200] [--scale 4] [--size 384 128] [--batches 30]
[--workers 0 1 2]``

A synthetic CUHK-PEDES-layout set is written to a temporary folder with its JPEGs upscaled ``--scale`` times
(``--scale 4``: 256x640 originals, for datasets whose photos are larger than the training size). Every loader yields
batches of ``--batch-size`` augmented ``(3, H, W)`` images + captions + ids at ``--size``:

* naive: per sample ``PIL.open`` -> RGB -> ``Resize`` -> ``RandomHorizontalFlip`` -> ``ToTensor`` -> ``Normalize``
  (the reference repositories' pipeline), default collate;
* xsearch: ``RetrievalDataModule.train_dataloader()`` (decode + bicubic resize to uint8, tensor flip/pad/crop/erase);
* xsearch + disk cache: the same reading pre-resized uint8 copies (``data.image_cache``, filled beforehand by
  ``xsearch data cache``, not timed);
* xsearch + RAM cache: ``data.cache_images`` (decoded once at setup, not timed).

Printed: images/s per loader and worker count and the ratio to the naive loader with the same workers.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dataset(folder: Path, identities: int, scale: int) -> Path:
    from PIL import Image

    from xsearch.datamodules import SYNTHESIZERS

    root = SYNTHESIZERS.get("synth_pedes")(folder / "pedes", identities=identities, seed=0)
    for path in Path(root).rglob("*.jpg"):
        with Image.open(path) as image:
            big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
        big.save(path, quality=90)
    return Path(root)


def _naive_loader(module, batch_size: int, workers: int, size: tuple[int, int]):
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    captions = module.index.split_captions("train")
    paths = {r.index: r.path for r in module.index.split_images("train")}
    pipeline = transforms.Compose([transforms.Resize(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])])

    class Naive(Dataset):
        def __len__(self) -> int:
            return len(captions)

        def __getitem__(self, i: int):
            caption = captions[i]
            with Image.open(paths[caption.image_index]) as image:
                tensor = pipeline(image.convert("RGB"))
            return {"image": tensor, "text": caption.text, "pid": torch.tensor(module.labels[caption.pid])}

    return DataLoader(Naive(), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0)


def _rate(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not timed
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        batch = next(iterator)
        count += len(batch["image"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--scale", type=int, default=4, help="upscale the synthetic JPEGs this many times")
    parser.add_argument("--size", type=int, nargs=2, default=[384, 128])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    from xsearch.cli import main as xsearch
    from xsearch.datamodules.base import RetrievalDataModule

    size = tuple(args.size)
    with tempfile.TemporaryDirectory() as folder:
        root = _dataset(Path(folder), args.identities, args.scale)
        xsearch(["data", "cache", "synth_pedes", "--root", str(root), "--size", *map(str, size)])
        print(f"synthetic pedes, {args.identities} identities, originals x{args.scale}, batches of {args.batch_size} at "
              f"{size[0]}x{size[1]}, {args.batches} timed batches")
        print("| loader | workers | images/s | vs naive |")
        print("|---|---:|---:|---:|")
        for workers in args.workers:
            def module(**options):
                m = RetrievalDataModule("synth_pedes", str(root), image_size=size, batch_size=args.batch_size,
                                        num_workers=workers, cache_index=False, **options)
                m.setup("fit")
                return m

            plain = module()
            naive = _rate(_naive_loader(plain, args.batch_size, workers, size), args.batches)
            print(f"| naive PIL + torchvision | {workers} | {naive:.0f} | 1.00x |", flush=True)
            for name, loader_module in (("xsearch", plain), ("xsearch + disk cache", module(image_cache=".xsearch_cache")),
                                        ("xsearch + RAM cache", module(cache_images=True))):
                rate = _rate(loader_module.train_dataloader(), args.batches)
                print(f"| {name} | {workers} | {rate:.0f} | {rate / naive:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
