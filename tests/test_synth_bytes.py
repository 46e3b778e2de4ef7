"""The synthetic generators write the bytes they always wrote: small pedes, faces and COCO-PFS sets hash to pinned digests.

The text files (captions, annotations, JSON) depend only on numpy's generators and must match everywhere; the JPEG
files also depend on Pillow's drawing and its JPEG encoder, so their digest is checked with the Pillow and libjpeg
versions that pinned it (another version skips that half). A change to a generator that is meant to change its
output updates the digests here, on purpose.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import PIL
import pytest
from PIL import features

from xsearch.synth import generate_faces, generate_pedes, generate_pfs

PINNED_WITH = ("13.0.0", "6.2")  # Pillow, libjpeg(-turbo): the versions that wrote the image digests below
SETS = {  # name: (generator, arguments, digest of the text files, digest of the images)
    "pedes": (generate_pedes, dict(identities=40, seed=7, images_per_identity=(1, 3)),
              "fb4f21a4cf6253e7e6df72fb1d8d5a09f77aeff1498db4aec2a2d5ab63fc7096",
              "9fb8f1b03245cbeb9ec54fa145d6cfa1c972109ccb2bda68c38f980489fd9345"),
    "faces": (generate_faces, dict(identities=16, seed=7, images_per_identity=(2, 3), captions_per_image=3),
              "ecd1dbd4df6df3b438d950c35553456e5831bf711ec85c553bd96d8a10173d57",
              "cb9942f36b4dc27d3f74cbc9e4f8adffef1baded57bc950ea49de49bf1751f64"),
    "pfs": (generate_pfs, dict(identities=10, seed=7, images_per_identity=2, size=(64, 64)),
            "a87d51791cd7aabd21a13e83f457b5911e2207bc2717527c85b35bf5a614b484",
            "b9bed84192269652d426b95c44493f11bf81dc668625edaf636c57cfb88171d2"),
}


def digest(root: Path, images: bool) -> str:
    """sha256 over the (relative path, bytes) of the ``.jpg`` files (``images``) or of every other file, in path order."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and (path.suffix == ".jpg") == images:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(SETS))
def test_generated_set_hashes_to_the_pinned_digest(name: str, tmp_path: Path) -> None:
    generate, arguments, text_digest, image_digest = SETS[name]
    out = generate(tmp_path / name, progress=False, **arguments)
    assert digest(out, images=False) == text_digest
    if (PIL.__version__, features.version("jpg")) != PINNED_WITH:
        pytest.skip(f"image digests pinned with Pillow {PINNED_WITH[0]} / libjpeg {PINNED_WITH[1]}")
    assert digest(out, images=True) == image_digest


@pytest.mark.parametrize("name", sorted(SETS))
def test_sets_drawn_in_worker_processes_hash_to_the_pinned_digest(name: str, tmp_path: Path) -> None:
    generate, arguments, text_digest, image_digest = SETS[name]
    out = generate(tmp_path / name, progress=False, workers=2, **arguments)
    assert digest(out, images=False) == text_digest
    if (PIL.__version__, features.version("jpg")) == PINNED_WITH:
        assert digest(out, images=True) == image_digest
    else:  # another Pillow: the same bytes as one process draws
        assert digest(out, images=True) == digest(generate(tmp_path / "one", progress=False, workers=1, **arguments),
                                                  images=True)
