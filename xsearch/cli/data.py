"""``xsearch data synth|check|cache``: write a synthetic dataset, parse a dataset and print its counts, pre-resize
its images."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _data_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="xsearch data", description="Generate or check datasets.")
    sub = parser.add_subparsers(dest="action", required=True)
    synth = sub.add_parser("synth", help="write a synthetic dataset in an official layout")
    synth.add_argument("kind", choices=["pedes", "faces", "pfs"],
                       help="pedes: CUHK-PEDES layout; faces: CelebA layout + captions; pfs: COCO-PFS layout (scenes, face descriptors)")
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--identities", type=int, default=None, help="number of identities (default: quickstart size)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    check = sub.add_parser("check", help="parse a dataset and print per-split counts and warnings as JSON")
    check.add_argument("name", help="registered dataset name, e.g. cuhk_pedes, icfg_pedes, rstpreid, celeba, lfw, coco_pfs, custom")
    check.add_argument("--root", required=True, help="dataset folder in its official layout")
    check.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="parser option (YAML value), e.g. --option max_captions_per_image=2; repeatable")
    check.add_argument("--decode", action="store_true", help="also open every image to verify it decodes (slow)")
    check.add_argument("--no-cache", action="store_true", help="re-parse even if the annotation files are unchanged")
    cache = sub.add_parser("cache", help="write pre-resized uint8 copies of a dataset's images (data.image_cache)")
    cache.add_argument("name", help="registered dataset name")
    cache.add_argument("--root", required=True, help="dataset folder in its official layout")
    cache.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"), help="the config's data.image_size")
    cache.add_argument("--crop", default=None, help="the config's data.crop: 'center' or top,left,bottom,right fractions")
    cache.add_argument("--interpolation", choices=["bicubic", "bilinear"], default="bicubic",
                       help="the config's data.interpolation (resize filter)")
    cache.add_argument("--folder", default=".xsearch_cache", help="cache folder, relative to the root (data.image_cache)")
    cache.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="parser option, repeatable")
    cache.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.action == "cache":
        return _cache_images(args)

    if args.action == "synth":
        from xsearch.datamodules import SYNTHESIZERS

        generate = SYNTHESIZERS.get(f"synth_{args.kind}")
        options: dict[str, Any] = {"seed": args.seed, "overwrite": args.overwrite}
        if args.identities is not None:
            options["identities"] = args.identities
        out = generate(args.out, **options)
        print(f"wrote synthetic {args.kind} dataset to {out}")
        return 0

    return _check_dataset(args)


def _cache_images(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from xsearch.datamodules.image_cache import DiskImageCache
    from xsearch.datamodules.transforms import load_image

    index, root = _load_index(args)
    crop = None if args.crop is None else "center" if args.crop == "center" else tuple(float(v) for v in args.crop.split(","))
    if crop not in (None, "center") and len(crop) != 4:
        raise SystemExit(f"xsearch data cache: --crop {args.crop!r}: expected 'center' or top,left,bottom,right")
    disk, size = DiskImageCache(root / args.folder), tuple(args.size)
    missing = set(index.missing_images)
    images = [r for r in index.images if r.path not in missing]
    for record in tqdm(images, desc=f"caching {args.name} at {size[0]}x{size[1]}"):
        disk.get(record.path, size, crop, lambda: load_image(record.path, size, crop, args.interpolation), args.interpolation)
    megabytes = sum(f.stat().st_size for f in disk.folder.rglob("*.npy")) / 2**20
    print(f"{len(images)} images cached in {disk.folder} ({megabytes:.0f} MiB in all); train with "
          f"--data.image_cache {args.folder} (same image_size, crop and interpolation)")
    return 0


def _load_index(args: argparse.Namespace) -> tuple[Any, Path]:
    import yaml

    from xsearch.datamodules import DatasetFormatError, load_dataset
    from xsearch.datamodules.loading import resolve_root

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DatasetFormatError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    root = Path(args.root) if Path(args.root).exists() else resolve_root(args.root)
    return load_dataset(args.name, root.absolute(), options, cache=not args.no_cache), root.absolute()


def _check_dataset(args: argparse.Namespace) -> int:
    index, root = _load_index(args)
    warnings = list(index.warnings)
    if args.decode:
        warnings.extend(_undecodable(index))
    report = {
        "dataset": args.name,
        "root": str(root),
        "splits": index.summary(),
        "warnings": warnings,
    }
    print(json.dumps(report, indent=2))
    return 0


def _undecodable(index: Any) -> list[str]:
    """A warning naming images that exist but do not decode."""
    from PIL import Image

    missing = set(index.missing_images)
    broken = []
    for record in index.images:
        if record.path in missing:
            continue
        try:
            with Image.open(record.path) as image:
                image.verify()
        except Exception:  # noqa: BLE001  PIL raises many types for a broken file
            broken.append(str(record.path))
    if not broken:
        return []
    return [f"{len(broken)} images do not decode, e.g. {', '.join(broken[:3])}"]

