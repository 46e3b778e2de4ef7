"""The synthetic datasets on disk: each generator writes one official layout, deterministically and atomically.

* :func:`generate_pedes` writes ``reid_raw.json`` + ``imgs/<source>/<file>.jpg`` exactly like CUHK-PEDES (read by
  the ``cuhk_pedes`` parser as ``synth_pedes``): drawn pedestrians (:mod:`~xsearch.synth.pedestrians`,
  :mod:`~xsearch.synth.render`) with two captions each (:mod:`~xsearch.synth.captions`).
* :func:`generate_faces` writes ``Img/img_align_celeba``, ``Anno/identity_CelebA.txt``,
  ``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt`` and, as if every image were in CelebA-HQ, the
  Multi-Modal-CelebA-HQ captions ``text/<hq>.txt`` with ``CelebA-HQ-to-CelebA-mapping.txt`` (read by the ``celeba``
  parser as ``synth_faces``): drawn faces (:mod:`~xsearch.synth.faces`) with captions from their positive
  attributes (:mod:`xsearch.face_captions`).
* :func:`generate_pfs` writes a COCO-PFS (Id-CLIP) ``datadir`` (read by the ``coco_pfs`` parser as ``synth_pfs``):
  COCO-like scenes with one named person, 5 captions each and a face descriptor per image
  (:mod:`~xsearch.synth.scenes`)::

    coco_dataset/annotations/captions_train2017.json         COCO captions of the train images
    coco_dataset/annotations/captions_val2017.json           COCO captions of the val + test images
    coco_dataset/coco_train_swapped/<file_name>_<class id>.jpg          train images
    coco_dataset/coco_val_swap_new/<file_name>_<class id>.jpg           val + test images
    Visual_Name_Entity_Recognition/gender_faceswap_training_set/features_train_small_faceswap.json
    Visual_Name_Entity_Recognition/gender_faceswap_new_val_test_set/features_new_val_small_faceswap.json
    Visual_Name_Entity_Recognition/gender_faceswap_new_val_test_set/features_new_entities_test_small_faceswap.json
    vggface_test_kaggle/identity_meta.csv

  Each COCO image (12-digit ``file_name``, distinct seeded id) holds one identity and is saved as
  ``<file_name>_<class id>.jpg`` (double extension); a split's features file maps ``"<COCO image id>_<class id>"``
  to 512 floats (6 decimals); ``identity_meta.csv`` has ``Class_ID, Name, Sample_Num, Flag, Gender`` with ``Flag`` 1
  for train identities, 0 otherwise.

Identities are split identity-disjoint, train first (:func:`~xsearch.synth.sampling.split_counts`). Every generator
gives the same bytes for the same arguments and writes into a temporary sibling folder renamed at the end
(:func:`atomic_dir`: nothing is left behind on failure).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence, TypeVar

from PIL import Image

from xsearch.face_captions import CELEBA_ATTRIBUTES, celeba_caption
from xsearch.synth import render
from xsearch.synth.captions import pedes_captions, tokenize
from xsearch.synth.faces import face_identity, face_image_attributes, render_face
from xsearch.synth.pedestrians import PersonAttributes, pedes_attributes
from xsearch.synth.sampling import Stream, choice, seeded_rng, split_counts
from xsearch.synth.scenes import (
    CONTEXTS, DEFAULT_FACE_NOISE, SceneIdentity, face_descriptor, scene_captions, scene_identities, scene_image,
)

__all__ = ["PEDES_SOURCES", "SPLIT_FILES", "atomic_dir", "generate_faces", "generate_pedes", "generate_pfs"]

PEDES_SOURCES = ("cam_a", "cam_b", "Market")
"""The image folders of CUHK-PEDES (``imgs/<source>/``), one camera style each
(:data:`~xsearch.synth.render.CAMERA_STYLES`)."""
_SOURCE_P = (0.3, 0.3, 0.4)

FACE_CROPS = "vggface_test_kaggle"
META_FILE = "identity_meta.csv"


class SplitFiles(NamedTuple):
    """Where one split lives, relative to the root."""

    features: str
    captions: str
    images: str


_FEATURES, _ANNOTATIONS = "Visual_Name_Entity_Recognition", "coco_dataset/annotations"
SPLIT_FILES = {
    "train": SplitFiles(f"{_FEATURES}/gender_faceswap_training_set/features_train_small_faceswap.json",
                        f"{_ANNOTATIONS}/captions_train2017.json", "coco_dataset/coco_train_swapped"),
    "val": SplitFiles(f"{_FEATURES}/gender_faceswap_new_val_test_set/features_new_val_small_faceswap.json",
                      f"{_ANNOTATIONS}/captions_val2017.json", "coco_dataset/coco_val_swap_new"),
    "test": SplitFiles(f"{_FEATURES}/gender_faceswap_new_val_test_set/features_new_entities_test_small_faceswap.json",
                       f"{_ANNOTATIONS}/captions_val2017.json", "coco_dataset/coco_val_swap_new"),
}
"""The COCO-PFS files of each split, as the ``coco_pfs`` parser reads them (``tests/test_synth_pfs.py`` checks that
they are the parser's own ``SPLIT_FILES``)."""

T, R = TypeVar("T"), TypeVar("R")

COCO_MAX_ID = 581929  # largest COCO 2017 image id: synthetic ids look like real ones


# ----------------------------------------------------------------------------------------------
# folders and files
# ----------------------------------------------------------------------------------------------

@contextmanager
def atomic_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out`` that replaces it on success and is removed on error.

    A non-empty ``out`` is refused unless ``overwrite``; one that another process filled meanwhile is kept (the same
    arguments write the same bytes).
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} already exists and is not empty; choose another directory, delete it, "
                                  "or pass overwrite=True (--overwrite on the command line)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists() and any(out.iterdir()) and not overwrite:
            shutil.rmtree(tmp)  # another process wrote it meanwhile (same arguments, same bytes): keep theirs
        else:
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over ``total`` images, or a silent stand-in (``enabled`` false or no tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n: int = 1) -> None: ...
            def close(self) -> None: ...
        return _Null()
    return tqdm(total=total, desc=desc, unit="img", leave=False)


def save_jpeg(img: Image.Image, path: Path, quality: int) -> None:
    """Baseline JPEG, 4:4:4 chroma from quality 95, else 4:2:0."""
    img.save(path, format="JPEG", quality=quality, subsampling=0 if quality >= 95 else 2, optimize=False)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        json.dump(value, fh, ensure_ascii=True)


# ----------------------------------------------------------------------------------------------
# the three datasets
# ----------------------------------------------------------------------------------------------

def generate_pedes(out: str | Path, identities: int = 1000, seed: int = 0,
                   images_per_identity: tuple[int, int] = (2, 5), image_size: tuple[int, int] = (160, 64),
                   progress: bool = True, overwrite: bool = False,
                   split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                   captions_per_image: int = 2, jpeg_quality: int = 92, workers: int | None = None) -> Path:
    """Write a synthetic text-to-person dataset in the CUHK-PEDES layout and return ``out``.

    ``out/reid_raw.json``: list of ``{"split", "captions", "file_path", "processed_tokens", "id"}`` records
    (ids 1-based; train ids first, then val, then test, split by identity per ``split_fractions``);
    ``out/imgs/<source>/<file>.jpg`` with sources :data:`PEDES_SOURCES`. ``image_size`` is (H, W).
    Identity ``i``'s latent attributes are ``pedes_attributes(identities, seed)[i - 1]``. Identities are drawn in
    ``workers`` processes (default: one per CPU core, for 200 identities or more); every identity has its own
    random streams, so the bytes do not depend on ``workers``.
    """
    lo, hi = images_per_identity
    if not (1 <= lo <= hi):
        raise ValueError(f"images_per_identity must satisfy 1 <= lo <= hi, got {images_per_identity}")
    n_train, n_val, _ = split_counts(identities, split_fractions)
    people = pedes_attributes(identities, seed)
    counts = [int(seeded_rng(seed, Stream.PEDES_LAYOUT, p.id).integers(lo, hi + 1)) for p in people]
    out = Path(out)
    bar = progress_bar(sum(counts), "synthetic pedes", progress)
    try:
        with atomic_dir(out, overwrite) as tmp:
            for src in PEDES_SOURCES:
                (tmp / "imgs" / src).mkdir(parents=True)
            splits = ["train" if p.id <= n_train else ("val" if p.id <= n_train + n_val else "test") for p in people]
            tasks = [_PedesIdentity(tmp, person, count, split, seed, tuple(image_size), captions_per_image,
                                    jpeg_quality) for person, count, split in zip(people, counts, splits)]
            records = []
            for drawn in _map_in_processes(_draw_pedes_identity, tasks, _workers(workers, identities)):
                records += drawn
                bar.update(len(drawn))
            with open(tmp / "reid_raw.json", "w", encoding="utf-8", newline="\n") as fh:
                json.dump(records, fh, ensure_ascii=True)
    finally:
        bar.close()
    return out


class _PedesIdentity(NamedTuple):
    """One identity's share of :func:`generate_pedes` (picklable: drawn in a worker process)."""

    folder: Path
    person: PersonAttributes
    count: int
    split: str
    seed: int
    image_size: tuple[int, int]
    captions_per_image: int
    jpeg_quality: int


def _draw_pedes_identity(task: _PedesIdentity) -> list[dict[str, Any]]:
    """Draw and save the identity's ``count`` images under ``folder/imgs``; their ``reid_raw.json`` records."""
    pid, records = task.person.id, []
    for k in range(task.count):
        rng = seeded_rng(task.seed, Stream.PEDES_IMAGE, pid, k)
        src = PEDES_SOURCES[int(rng.choice(len(PEDES_SOURCES), p=_SOURCE_P))]
        camno = 1 + PEDES_SOURCES.index(src) * 2 + int(rng.integers(2))
        name = f"{pid:05d}_c{camno}_{k + 1:03d}.jpg"
        img, details = render.render_person(task.person.render, rng, task.image_size, camera=src)
        save_jpeg(img, task.folder / "imgs" / src / name, task.jpeg_quality)
        caps = pedes_captions(task.person, seeded_rng(task.seed, Stream.PEDES_CAPTION, pid, k), details,
                              task.captions_per_image)
        records.append({"split": task.split, "captions": caps, "file_path": f"{src}/{name}",
                        "processed_tokens": [tokenize(c) for c in caps], "id": pid})
    return records


def _workers(workers: int | None, identities: int) -> int:
    """The processes a generator draws in: ``workers``, or by default one per CPU core for 200 identities or more."""
    if workers is not None:
        return workers
    return (os.cpu_count() or 1) if identities >= 200 else 1


def _map_in_processes(function: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """``function`` over ``items`` in order, in ``workers`` spawned processes (``workers <= 1``: in this one)."""
    if workers <= 1 or len(items) < 2:
        yield from map(function, items)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads and locks
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=context) as pool:
        yield from pool.map(function, items, chunksize=max(1, len(items) // (8 * workers)))


def generate_faces(out: str | Path, identities: int = 200, seed: int = 0,
                   images_per_identity: tuple[int, int] = (4, 10), captions_per_image: int = 10,
                   progress: bool = True, overwrite: bool = False,
                   split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), jpeg_quality: int = 92,
                   workers: int | None = None) -> Path:
    """Write a synthetic face dataset in the official CelebA layout + Multi-Modal-CelebA-HQ captions.

    Files: ``Img/img_align_celeba/NNNNNN.jpg`` (178x218), ``Anno/identity_CelebA.txt``,
    ``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt`` (identities disjoint across partitions;
    images numbered train first, then val, then test, like CelebA). Every image is also an "HQ" image:
    ``text/<hq>.txt`` holds its ``captions_per_image`` lines and ``CelebA-HQ-to-CelebA-mapping.txt``
    (header ``idx orig_idx orig_file``) maps the seeded-random HQ number ``0..n-1`` to ``NNNNNN.jpg``.
    Identity numbers are a seeded permutation of ``1..identities``. Images are drawn in ``workers`` processes
    (default: one per CPU core, for 200 identities or more); every image has its own random streams, so the bytes do
    not depend on ``workers``.
    """
    lo, hi = images_per_identity
    if not (1 <= lo <= hi):
        raise ValueError(f"images_per_identity must satisfy 1 <= lo <= hi, got {images_per_identity}")
    n_train, n_val, _ = split_counts(identities, split_fractions)
    lay = seeded_rng(seed, Stream.FACE_LAYOUT)
    labels = (lay.permutation(identities) + 1).tolist()  # identity label of the i-th sampled identity
    # (identity index, image index within identity, partition), images of a partition shuffled
    items: list[tuple[int, int, int]] = []
    for part, idx in ((0, range(0, n_train)), (1, range(n_train, n_train + n_val)),
                      (2, range(n_train + n_val, identities))):
        block = []
        for i in idx:
            cnt = int(seeded_rng(seed, Stream.FACE_LAYOUT, i + 1).integers(lo, hi + 1))
            block += [(i, k, part) for k in range(cnt)]
        order = lay.permutation(len(block))
        items += [block[j] for j in order]
    hq_of = seeded_rng(seed, Stream.FACE_LAYOUT, 0).permutation(len(items)).tolist()  # HQ number of image n at [n - 1]
    out = Path(out)
    bar = progress_bar(len(items), "synthetic faces", progress)
    try:
        with atomic_dir(out, overwrite) as tmp:
            for p in (tmp / "Img" / "img_align_celeba", tmp / "text", tmp / "Anno", tmp / "Eval"):
                p.mkdir(parents=True)
            tasks = [_FaceImage(tmp, n, labels[i], k, hq_of[n - 1], seed, captions_per_image, jpeg_quality)
                     for n, (i, k, _) in enumerate(items, start=1)]
            id_lines, part_lines, attr_lines = [], [], []
            drawn = _map_in_processes(_draw_face_image, tasks, _workers(workers, identities))
            for task, (_, _, part), attrs in zip(tasks, items, drawn):
                fname = f"{task.number:06d}.jpg"
                id_lines.append(f"{fname} {task.label}\n")
                part_lines.append(f"{fname} {part}\n")
                attr_lines.append(fname + " " + " ".join(f"{1 if attrs[a] else -1:2d}" for a in CELEBA_ATTRIBUTES)
                                  + "\n")
                bar.update(1)
            (tmp / "Anno" / "identity_CelebA.txt").write_text("".join(id_lines), encoding="utf-8", newline="\n")
            (tmp / "Eval" / "list_eval_partition.txt").write_text("".join(part_lines), encoding="utf-8", newline="\n")
            (tmp / "Anno" / "list_attr_celeba.txt").write_text(
                f"{len(items)}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n" + "".join(attr_lines), encoding="utf-8",
                newline="\n")
            rows = [f"{hq:<12}{n - 1:<12}{n:06d}.jpg\n" for hq, n in sorted((hq, n) for n, hq in enumerate(hq_of, 1))]
            (tmp / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
                f"{'idx':<12}{'orig_idx':<12}orig_file\n" + "".join(rows), encoding="utf-8", newline="\n")
    finally:
        bar.close()
    return out


class _FaceImage(NamedTuple):
    """One image of :func:`generate_faces` (picklable: drawn in a worker process)."""

    folder: Path
    number: int  # 1-based CelebA image number: NNNNNN.jpg
    label: int  # identity label
    k: int  # image index within the identity
    hq: int  # its Multi-Modal-CelebA-HQ caption file number
    seed: int
    captions_per_image: int
    jpeg_quality: int


def _draw_face_image(task: _FaceImage) -> dict[str, bool]:
    """Draw and save the image and its caption file under ``folder``; its CelebA attributes."""
    stable, propensities, look = face_identity(task.label, task.seed)
    rng = seeded_rng(task.seed, Stream.FACE_IMAGE, task.label, task.k)
    attrs = face_image_attributes(stable, propensities, rng)
    save_jpeg(render_face(attrs, look, rng), task.folder / "Img" / "img_align_celeba" / f"{task.number:06d}.jpg",
              task.jpeg_quality)
    captions_rng = seeded_rng(task.seed, Stream.FACE_CAPTION, task.number)
    captions = [celeba_caption(attrs, captions_rng) for _ in range(task.captions_per_image)]
    (task.folder / "text" / f"{task.hq}.txt").write_text("\n".join(captions) + "\n", encoding="utf-8", newline="\n")
    return attrs


def _meta_csv(people: list[SceneIdentity], images_per_identity: int) -> str:
    rows = ["Class_ID, Name, Sample_Num, Flag, Gender\n"]
    for p in sorted(people, key=lambda p: p.class_id):
        flag = 1 if p.split == "train" else 0
        name = p.name.replace(" ", "_")
        rows.append(f'{p.class_id}, "{name}", {images_per_identity}, {flag}, {p.person.gender[0]}\n')
    return "".join(rows)


class _SceneImage(NamedTuple):
    """One COCO image of :func:`generate_pfs` (picklable: drawn in a worker process)."""

    folder: Path
    identity: SceneIdentity
    k: int  # image index within the identity
    coco_id: int
    seed: int
    size: tuple[int, int]
    face_noise: float
    jpeg_quality: int


def _draw_scene_image(task: _SceneImage) -> tuple[list[str], list[float]]:
    """Draw and save the scene under ``folder``; its captions and the identity's face descriptor in it."""
    p = task.identity
    rng = seeded_rng(task.seed, Stream.SCENE, p.index, task.k)
    contexts = list(CONTEXTS.values())
    context = contexts[int(rng.integers(len(contexts)))]
    prop = choice(rng, context.props) if rng.random() < 0.6 else None
    image = scene_image(p.person, context, prop, rng, task.size)
    save_jpeg(image, task.folder / SPLIT_FILES[p.split].images / f"{task.coco_id:012d}.jpg_{p.class_id}.jpg",
              task.jpeg_quality)
    captions = scene_captions(p.person, context, prop, seeded_rng(task.seed, Stream.SCENE_CAPTION, p.index, task.k))
    descriptor = face_descriptor(p.centre, task.face_noise, seeded_rng(task.seed, Stream.SCENE_FACE, p.index, task.k))
    return list(captions), descriptor


def generate_pfs(out: str | Path, identities: int = 200, images_per_identity: int = 6, seed: int = 0,
                 size: Sequence[int] = (128, 128), progress: bool = True, overwrite: bool = False,
                 split_fractions: Sequence[float] = (0.8, 0.1, 0.1), face_noise: float = DEFAULT_FACE_NOISE,
                 jpeg_quality: int = 92, workers: int | None = None) -> Path:
    """Write a synthetic COCO-PFS ``datadir`` (the layout in the module docstring) and return ``out``.

    Args:
        identities: people, split identity-disjoint into train / val / test by ``split_fractions``.
        images_per_identity: COCO images per identity (each holds that one identity).
        size: image (H, W).
        face_noise: per-dimension std of the Gaussian noise added to an identity's unit descriptor
            centre before L2 normalisation (default: cosine to the centre ~0.8).
        overwrite: replace a non-empty ``out`` (otherwise refused).
        workers: processes that draw the images (default: one per CPU core, for 200 identities or more); every
            image has its own random streams, so the bytes do not depend on it.
    """
    if images_per_identity < 1:
        raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
    if face_noise < 0:
        raise ValueError(f"face_noise must be >= 0, got {face_noise}")
    size = (int(size[0]), int(size[1]))
    if min(size) < 16:
        raise ValueError(f"size must be at least 16x16, got {size}")
    people = scene_identities(identities, seed, split_fractions)
    total = identities * images_per_identity
    coco_ids = seeded_rng(seed, Stream.SCENE_LAYOUT, 2).choice(max(COCO_MAX_ID, 4 * total), total, replace=False) + 1
    coco_ids = coco_ids.tolist()

    coco: dict[str, dict[str, list]] = {}  # caption file -> {"images": [...], "annotations": [...]}
    features: dict[str, dict[str, list[float]]] = {s: {} for s in SPLIT_FILES}
    out = Path(out)
    bar = progress_bar(total, "synthetic pfs", progress)
    try:
        with atomic_dir(out, overwrite) as tmp:
            for files in SPLIT_FILES.values():
                (tmp / files.images).mkdir(parents=True, exist_ok=True)
            tasks = [_SceneImage(tmp, p, k, coco_ids[p.index * images_per_identity + k], seed, size, face_noise,
                                 jpeg_quality) for p in people for k in range(images_per_identity)]
            drawn = _map_in_processes(_draw_scene_image, tasks, _workers(workers, identities))
            for task, (captions, descriptor) in zip(tasks, drawn):
                p, files, file_name = task.identity, SPLIT_FILES[task.identity.split], f"{task.coco_id:012d}.jpg"
                book = coco.setdefault(files.captions, {"images": [], "annotations": []})
                book["images"].append({"id": task.coco_id, "file_name": file_name, "height": size[0], "width": size[1]})
                for text in captions:
                    book["annotations"].append({"image_id": task.coco_id, "id": len(book["annotations"]) + 1,
                                                "caption": text})
                features[p.split][f"{task.coco_id}_{p.class_id}"] = descriptor
                bar.update(1)
            for split, files in SPLIT_FILES.items():
                _write_json(tmp / files.features, features[split])
            for name in sorted({f.captions for f in SPLIT_FILES.values()}):
                book = coco.get(name, {"images": [], "annotations": []})
                _write_json(tmp / name, {"info": {"description": "xsearch synthetic COCO-PFS", "year": 2017},
                                         "licenses": [], **book})
            (tmp / FACE_CROPS).mkdir(parents=True, exist_ok=True)
            (tmp / FACE_CROPS / META_FILE).write_text(_meta_csv(people, images_per_identity), encoding="utf-8",
                                                      newline="\n")
    finally:
        bar.close()
    return out
