"""``python -m xsearch.synth {pedes,faces,pfs} OUT [--identities N] [--seed S] [--overwrite]``."""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from xsearch.synth import generate_faces, generate_pedes, generate_pfs

GENERATORS = {"pedes": generate_pedes, "faces": generate_faces, "pfs": generate_pfs}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m xsearch.synth", description="Generate the synthetic xsearch datasets.")
    ap.add_argument("kind", choices=sorted(GENERATORS))
    ap.add_argument("out")
    ap.add_argument("--identities", type=int, default=None, help="default: pedes 1000, faces 200, pfs 200")
    ap.add_argument("--images-per-identity", type=int, default=None, help="pfs only (default 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    options = {"seed": args.seed, "overwrite": args.overwrite}
    if args.identities is not None:
        options["identities"] = args.identities
    if args.images_per_identity is not None:
        if args.kind != "pfs":
            ap.error("--images-per-identity is for pfs only (pedes and faces draw a count per identity)")
        options["images_per_identity"] = args.images_per_identity
    t0 = time.time()
    path = GENERATORS[args.kind](args.out, **options)
    print(f"wrote {path} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
