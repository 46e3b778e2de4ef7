"""COCO-PFS (COCO Person FaceSwap, Id-CLIP): COCO scenes whose one person got a VGGFace2 face.

``root`` is the Id-CLIP ``datadir``::

    coco_dataset/annotations/captions_{train,val}2017.json     COCO captions
    coco_dataset/coco_train_swapped/<COCO file_name>_<class id>.jpg      train images
    coco_dataset/coco_val_swap_new/<COCO file_name>_<class id>.jpg       val + test images
    Visual_Name_Entity_Recognition/.../features_*.json        "<COCO image id>_<class id>" -> 512-d face
    vggface_test_kaggle/identity_meta.csv (+ <class id>/ face crops)

Items are the keys of a split's features file (one COCO image x one identity; several keys may
share a COCO image and stay separate items). Image files have a double extension
(``000000391895.jpg_n000078.jpg``). Each item gets its COCO image's first 5 captions with the
identity inserted (:mod:`xsearch.entity_captions`, choices seeded by key and caption
number). Identity ids: VGGFace2 class ids ``n<digits>`` become that number (``n000078`` -> 78);
if any class id is not of that form (or two collide), all are numbered in sorted class-id order.
Display names come from ``identity_meta.csv`` (underscores -> spaces).

``index.extras`` (nothing in it refers to image indices, which ``drop_images`` renumbers):

- ``face_features``: float32 array ``(n_items, 512)``, one row per item in parse order;
- ``face_feature_row``: ``{(split, str(image path)): row}``, the lookup for any :class:`ImageRecord`
  (see :func:`face_descriptor`; the split is in the key since val and test share an image folder);
- ``item_keys``: ``list[str]``, the features-file key of each row;
- ``class_ids``: ``{pid: VGGFace2 class id}``;
- ``face_crop_dirs``: ``{pid: vggface_test_kaggle/<class id>/}`` for the identities that have one;
- ``entity``: the ``entity`` option the captions were built with;
- ``plain_captions``: ``{(split, str(image path)): [its first 5 COCO captions, stripped]}``, the captions before the
  identity went in (read per caption by :func:`caption_sources`).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, NamedTuple

import numpy as np

from xsearch.datamodules.files import (
    DatasetFormatError, FolderListing, examples, expect_field, find_existing, load_json, read_csv,
)
from xsearch.datamodules.records import SPLITS, CaptionRecord, DatasetIndex, ImageRecord
from xsearch.entity_captions import entity_caption, fill_entity
from xsearch.registry import DATASETS

Entity = Literal["name", "slot", "none"]

FACE_DIM = 512
CAPTIONS_PER_IMAGE = 5
ANNOTATIONS = "coco_dataset/annotations"
FEATURES = "Visual_Name_Entity_Recognition"
FACE_CROPS = "vggface_test_kaggle"
META_FILE = "identity_meta.csv"


@dataclass(frozen=True)
class SplitFiles:
    """Where one split lives, relative to the root."""

    features: str
    captions: str
    images: str


SPLIT_FILES = {
    "train": SplitFiles(
        f"{FEATURES}/gender_faceswap_training_set/features_train_small_faceswap.json",
        f"{ANNOTATIONS}/captions_train2017.json",
        "coco_dataset/coco_train_swapped",
    ),
    "val": SplitFiles(
        f"{FEATURES}/gender_faceswap_new_val_test_set/features_new_val_small_faceswap.json",
        f"{ANNOTATIONS}/captions_val2017.json",
        "coco_dataset/coco_val_swap_new",
    ),
    "test": SplitFiles(
        f"{FEATURES}/gender_faceswap_new_val_test_set/features_new_entities_test_small_faceswap.json",
        f"{ANNOTATIONS}/captions_val2017.json",
        "coco_dataset/coco_val_swap_new",
    ),
}

_CLASS_ID = re.compile(r"n(\d+)")


@dataclass(frozen=True)
class CocoCaptions:
    """One COCO caption file: ``file_names[image id]`` and ``captions[image id]`` (file order)."""

    path: Path
    file_names: dict[int, str]
    captions: dict[int, list[str]]


@dataclass(frozen=True)
class Item:
    """One features-file key: a COCO image with one swapped-in identity and its face descriptor (512,)."""

    split: str
    key: str
    coco_id: int
    class_id: str
    face: np.ndarray


# --------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------
def locate(root: Path, relative: str, what: str) -> Path:
    """``root/relative`` if it exists, else a one-line error naming the folder and the file."""
    path = root / relative
    return find_existing(path.parent, (path.name,), what)


def read_coco_captions(path: Path) -> CocoCaptions:
    """A COCO ``captions_*.json``: ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``, ``caption``)."""
    data = load_json(path, dict)
    images = expect_field(data, "images", list, str(path))
    annotations = expect_field(data, "annotations", list, str(path))
    file_names = {}
    for number, record in enumerate(images):
        where = f"{path}: images record {number}"
        file_names[expect_field(record, "id", int, where)] = expect_field(record, "file_name", str, where)
    captions: dict[int, list[str]] = defaultdict(list)
    for number, record in enumerate(annotations):
        where = f"{path}: annotations record {number}"
        image_id = expect_field(record, "image_id", int, where)
        captions[image_id].append(expect_field(record, "caption", str, where))
    return CocoCaptions(path, file_names, dict(captions))


def split_key(key: str, path: Path) -> tuple[int, str]:
    """``"391895_n000078"`` -> ``(391895, "n000078")``, split at the first ``_``."""
    coco_id, sep, class_id = key.partition("_")
    if not sep or not coco_id or not class_id:
        raise DatasetFormatError(f"{path}: key {key!r}: expected '<COCO image id>_<class id>', e.g. '391895_n000078'")
    if not coco_id.isdigit():
        raise DatasetFormatError(f"{path}: key {key!r}: COCO image id {coco_id!r} should be an integer")
    return int(coco_id), class_id


def face_vector(value: Any, path: Path, key: str) -> np.ndarray:
    """A face descriptor, flat ``[512]`` or nested ``[[512]]``, as float32 ``(512,)``."""
    expected = f"{path}: key {key!r}: face descriptor should be {FACE_DIM} numbers (flat or nested 1x{FACE_DIM})"
    if not isinstance(value, list):
        raise DatasetFormatError(f"{expected}, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except ValueError:
        raise DatasetFormatError(f"{expected}, got a ragged list") from None
    if array.dtype.kind not in "fi":
        raise DatasetFormatError(f"{expected}, got non-numeric values")
    if array.shape not in ((FACE_DIM,), (1, FACE_DIM)):
        raise DatasetFormatError(f"{expected}, got shape {array.shape}")
    return array.reshape(FACE_DIM).astype(np.float32)


def read_items(split: str, path: Path, coco: CocoCaptions) -> list[Item]:
    """The items of one features file, in key order; every COCO image id must be in ``coco``."""
    items = []
    for key, value in load_json(path, dict).items():
        coco_id, class_id = split_key(key, path)
        if coco_id not in coco.file_names:
            raise DatasetFormatError(f"{path}: key {key!r}: COCO image id {coco_id} is not in {coco.path}")
        items.append(Item(split, key, coco_id, class_id, face_vector(value, path, key)))
    return items


def read_identity_names(path: Path) -> dict[str, str]:
    """``identity_meta.csv`` -> ``{class id: display name}`` (first column = class id, ``Name`` with ``_`` -> space)."""
    names = {}
    for line, cells in read_csv(path):
        if "Name" not in cells:
            raise DatasetFormatError(f"{path}: missing column 'Name' (expected Class_ID, Name, Sample_Num, Flag, Gender)")
        class_id = next(iter(cells.values()))
        if not class_id:
            raise DatasetFormatError(f"{path}: line {line}: empty Class_ID (first column)")
        names[class_id] = cells["Name"].replace("_", " ").strip() or class_id
    return names


# --------------------------------------------------------------------------------------
# identities
# --------------------------------------------------------------------------------------
def vggface_numbers(class_ids: Iterable[str]) -> dict[str, int] | None:
    """Class id -> the number of an ``n<digits>`` id; None if any id is not of that form or two collide."""
    unique = sorted(set(class_ids))
    numbers = {c: int(m.group(1)) for c in unique if (m := _CLASS_ID.fullmatch(c))}
    return numbers if len(numbers) == len(unique) == len(set(numbers.values())) else None


def sorted_numbers(class_ids: Iterable[str]) -> dict[str, int]:
    """Class id -> its position in sorted order (fallback for non-VGGFace2 ids)."""
    return {c: i for i, c in enumerate(sorted(set(class_ids)))}


def crop_dirs(folder: Path, pids: dict[str, int]) -> dict[int, Path]:
    """``{pid: folder/<class id>/}`` for the identities whose face-crop folder exists."""
    listed = FolderListing().names(folder)
    return {pid: folder / c for c, pid in pids.items() if c in listed and (folder / c).is_dir()}


def identity_warnings(items: list[Item], pids: dict[str, int], names: dict[str, str], meta: Path) -> list[str]:
    """Identities missing from the csv, test identities also in train."""
    warnings = []
    missing = sorted(c for c in pids if c not in names)
    if missing:
        warnings.append(f"{len(missing)} identities are not in {meta} (e.g. {examples(missing)}): their class id is used as the name")
    train = {i.class_id for i in items if i.split == "train"}
    test = {i.class_id for i in items if i.split == "test"}
    if train & test:
        warnings.append(f"test: {len(train & test)} of {len(test)} identities also appear in train (COCO-PFS test identities should be new)")
    return warnings


def numbering_warning(numbers: dict[str, int] | None, pids: dict[str, int]) -> list[str]:
    """A warning when the class ids are not distinct VGGFace2 ids (so sorted numbering was used)."""
    if numbers is not None:
        return []
    odd = sorted(c for c in pids if not _CLASS_ID.fullmatch(c)) or sorted(pids)
    return [f"class ids are not all distinct VGGFace2 ids 'n<digits>' (e.g. {examples(odd)}): "
            "identities are numbered in sorted class-id order"]


def empty_split_warnings(items: list[Item], features: dict[str, Path]) -> list[str]:
    """A warning per split whose features file has no keys."""
    present = {i.split for i in items}
    return [f"{s}: {features[s]} has no keys (empty split)" for s in SPLITS if s not in present]


# --------------------------------------------------------------------------------------
# captions and records
# --------------------------------------------------------------------------------------
def caption_with_name(caption: str, seed: str, name: str) -> str:
    """Slot inserted, then filled with the display name."""
    return fill_entity(entity_caption(caption, seed), name)


def caption_with_slot(caption: str, seed: str, name: str) -> str:
    """Slot inserted and left as the literal ``[ENTITY]``."""
    return entity_caption(caption, seed)


def caption_plain(caption: str, seed: str, name: str) -> str:
    """The COCO caption without any identity."""
    return caption


ENTITY_CAPTIONS = {"name": caption_with_name, "slot": caption_with_slot, "none": caption_plain}
"""Caption builder per ``entity`` mode: ``(stripped COCO caption, seed, display name) -> text``."""


def plain_captions(item: Item, coco: CocoCaptions) -> list[str]:
    """The first 5 COCO captions of the item's image, stripped."""
    return [c.strip() for c in coco.captions.get(item.coco_id, [])[:CAPTIONS_PER_IMAGE]]


def caption_seed(key: str, number: int) -> str:
    """The seed string of the choices made for caption ``number`` of item ``key``: ``"<key>#<number>"``."""
    return f"{key}#{number}"


def item_captions(item: Item, coco: CocoCaptions, name: str, entity: Entity) -> list[str]:
    """The first 5 COCO captions (stripped) of the item's image, built per ``entity`` (seeds :func:`caption_seed`)."""
    return [ENTITY_CAPTIONS[entity](c, caption_seed(item.key, n), name) for n, c in enumerate(plain_captions(item, coco))]


def image_path(root: Path, item: Item, coco: CocoCaptions) -> Path:
    """``<split image folder>/<COCO file_name>_<class id>.jpg`` (double extension)."""
    return root / SPLIT_FILES[item.split].images / f"{coco.file_names[item.coco_id]}_{item.class_id}.jpg"


class CaptionSource(NamedTuple):
    """What a COCO-PFS caption was built from: the plain COCO caption (stripped) and its seed string."""

    plain: str
    seed: str


def caption_sources(index: DatasetIndex) -> dict[int, CaptionSource]:
    """``{caption index: CaptionSource}`` of every caption of a COCO-PFS index (valid after ``drop_images`` too: an
    image's captions are numbered in order, as the parser built them)."""
    extras = index.extras
    rows, keys, plain = extras["face_feature_row"], extras["item_keys"], extras["plain_captions"]
    numbers: dict[int, int] = defaultdict(int)
    sources = {}
    for caption in index.captions:
        image = index.images[caption.image_index]
        where, number = (image.split, str(image.path)), numbers[caption.image_index]
        numbers[caption.image_index] += 1
        sources[caption.index] = CaptionSource(plain[where][number], caption_seed(keys[rows[where]], number))
    return sources


def face_descriptor(index: DatasetIndex, image: ImageRecord) -> np.ndarray:
    """The float32 ``(512,)`` face descriptor of a COCO-PFS image (valid after ``drop_images`` too)."""
    return index.extras["face_features"][index.extras["face_feature_row"][(image.split, str(image.path))]]


@DATASETS.register("coco_pfs")
def parse(root: str | Path, entity: Entity = "name") -> DatasetIndex:
    """Parse a COCO-PFS ``datadir`` (train / val / test from the three features files).

    Args:
        entity: what stands for the identity in ``CaptionRecord.text``: ``name`` (default) the
            display name, for plain text encoders; ``slot`` the literal ``[ENTITY]``, for methods
            that splice in a face token (``idclip``); ``none`` the plain COCO caption, no identity
            (the "CLIP without names" baseline, or for building one's own prompts).
    """
    if entity not in ENTITY_CAPTIONS:
        raise DatasetFormatError(f"coco_pfs: entity should be one of name, slot, none, got {entity!r}")
    root = Path(root)
    features = {s: locate(root, f.features, f"COCO-PFS {s} face features file") for s, f in SPLIT_FILES.items()}
    caption_files = {s: locate(root, f.captions, f"COCO {s} caption file") for s, f in SPLIT_FILES.items()}
    meta = locate(root, f"{FACE_CROPS}/{META_FILE}", "VGGFace2 identity list")
    coco = {path: read_coco_captions(path) for path in sorted(set(caption_files.values()))}
    items = [item for s in SPLITS for item in read_items(s, features[s], coco[caption_files[s]])]
    numbers = vggface_numbers(i.class_id for i in items)
    pids = numbers if numbers is not None else sorted_numbers(i.class_id for i in items)
    names = read_identity_names(meta)
    display = {c: names.get(c, c) for c in pids}

    images: list[ImageRecord] = []
    captions: list[CaptionRecord] = []
    plain: dict[tuple[str, str], list[str]] = {}
    for item in items:
        source = coco[caption_files[item.split]]
        pid = pids[item.class_id]
        image = ImageRecord(len(images), image_path(root, item, source), pid, item.split)
        images.append(image)
        plain[(image.split, str(image.path))] = plain_captions(item, source)
        for text in item_captions(item, source, display[item.class_id], entity):
            captions.append(CaptionRecord(len(captions), image.index, text, pid, item.split))

    crops = root / FACE_CROPS
    return DatasetIndex(
        name="coco_pfs", root=root, images=images, captions=captions,
        warnings=[*numbering_warning(numbers, pids), *identity_warnings(items, pids, names, meta),
                  *empty_split_warnings(items, features)],
        sources=[*sorted(set(features.values())), *coco, meta, crops],
        identity_names={pids[c]: display[c] for c in pids},
        extras={
            "face_features": np.stack([i.face for i in items]) if items else np.zeros((0, FACE_DIM), np.float32),
            "face_feature_row": {(r.split, str(r.path)): r.index for r in images},
            "item_keys": [i.key for i in items],
            "class_ids": {pid: c for c, pid in pids.items()},
            "face_crop_dirs": crop_dirs(crops, pids),
            "entity": entity,
            "plain_captions": plain,
        },
    )


@DATASETS.register("synth_pfs")
def parse_synth_pfs(root: str | Path, entity: Entity = "name") -> DatasetIndex:
    """The synthetic COCO-PFS set: COCO-PFS layout, generated by ``xsearch data synth pfs``."""
    index = parse(root, entity=entity)
    index.name = "synth_pfs"
    return index
