"""A tiny COCO-PFS ``datadir``: COCO caption JSONs, swapped images, features JSONs, identity_meta.csv.

Quirks written on purpose: two keys sharing one COCO image (train ``391895``, and ``252219`` in
both val and test), double-extension image names, nested 1x512 and flat 512 descriptors, 6 COCO
captions on some images (only the first 5 count), captions with one, two or no person keyword,
a trailing space in a caption, annotations of different images interleaved, unused COCO images,
spaces after commas and a quoted name with a comma in ``identity_meta.csv``, face-crop folders for
the test identities only.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import BadInput, Layout, layout, write_image

CAPTIONS = {"train": "coco_dataset/annotations/captions_train2017.json", "val": "coco_dataset/annotations/captions_val2017.json"}
FEATURES = {
    "train": "Visual_Name_Entity_Recognition/gender_faceswap_training_set/features_train_small_faceswap.json",
    "val": "Visual_Name_Entity_Recognition/gender_faceswap_new_val_test_set/features_new_val_small_faceswap.json",
    "test": "Visual_Name_Entity_Recognition/gender_faceswap_new_val_test_set/features_new_entities_test_small_faceswap.json",
}
IMAGE_DIRS = {"train": "coco_dataset/coco_train_swapped", "val": "coco_dataset/coco_val_swap_new", "test": "coco_dataset/coco_val_swap_new"}
META = "vggface_test_kaggle/identity_meta.csv"

COCO_TRAIN = {
    391895: [
        "A man with a red helmet on a small moped on a dirt road. ",
        "Man riding a motor bike on a dirt road on the countryside.",
        "A man and a woman riding on the back of a motorcycle.",
        "A dirt path with a young person on a motor bike.",
        "Two motorcycles parked on a hill side.",
        "A sixth caption about a lady that is never used.",
    ],
    522418: [
        "A woman wearing a net on her head cutting a cake.",
        "A woman cutting a large white sheet cake.",
        "A lady and a child near a cake.",
        "Someone is cutting a cake in a kitchen.",
        "There is an adult with a knife and a cake.",
    ],
    184613: [
        "A bunch of cows in a grassy field.",
        "A boy herding cattle on a sunny day.",
        "Cows grazing near a fence.",
        "A kid standing with an umbrella by the cows.",
        "Several cows and a girl in the field.",
    ],
}
COCO_VAL = {
    397133: [
        "A man is in a kitchen making pizzas.",
        "Man in apron standing on front of oven with pans and bakeware.",
        "A baker is working in the kitchen rolling dough.",
        "A person standing by a stove in a kitchen.",
        "A table with pies being made and a person standing near a wall.",
    ],
    37777: [
        "The dining table near the kitchen has a bowl of fruit on it.",
        "A small kitchen has various appliances and a table.",
        "The kitchen is clean and ready for us to see.",
        "A kitchen and dining area decorated in white.",
        "A kitchen that has a bowl of fruit on the table.",
    ],
    252219: [
        "A person on a skateboard and bike at a red light.",
        "A man standing on a skateboard on a street.",
        "Two men and a woman waiting at a crossing.",
        "A guy on a skateboard next to a bike.",
        "Someone is skateboarding across the street.",
        "A sixth caption that is never used.",
    ],
    87038: [
        "A person above the crowd on a skateboard.",
        "A female skateboarder doing a trick.",
        "Skateboarder in mid air at a skate park.",
        "A woman and her child watch a skateboarder.",
        "A lady riding a skateboard in front of people.",
    ],
    174482: ["An unused COCO image with a bicycle."] * 5,
}
KEYS = {
    "train": ["391895_n000078", "391895_n000150", "522418_n000150"],  # 15 captions: 3 batches of 4 in the fit test
    "val": ["397133_n000001", "37777_n000001", "252219_n000002"],
    "test": ["87038_n009001", "252219_n009002", "397133_n009002"],
}
NESTED = {"391895_n000078", "37777_n000001", "87038_n009001"}
"""Keys whose descriptor is written as a 1x512 list (the others flat)."""

META_CSV = """Class_ID, Name, Sample_Num, Flag, Gender
n000001, Alba_Example, 312, 1, f
n000002, "Bruno_Sample", 200, 1, m
n000078, Carla_Placeholder, 300, 1, f
n000150, Dario_Fixture, 250, 1, m
n000999, Never_Used, 10, 1, m
n009001, "Smith,_John_Jr.", 300, 0, m
n009002, Eva_Mock, 280, 0, f
"""
NAMES = {1: "Alba Example", 2: "Bruno Sample", 78: "Carla Placeholder", 150: "Dario Fixture", 9001: "Smith, John Jr.", 9002: "Eva Mock"}
EXPECTED = {
    "train": {"identities": 2, "images": 3, "captions": 15},
    "val": {"identities": 2, "images": 3, "captions": 15},
    "test": {"identities": 2, "images": 3, "captions": 15},
}


def file_name(coco_id: int) -> str:
    """COCO 2017 file name: 12-digit zero-padded id."""
    return f"{coco_id:012d}.jpg"


def face(key: str) -> list[float]:
    """A deterministic 512-d descriptor (4 decimals) for ``key``."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return [round(float(v), 4) for v in rng.standard_normal(512)]


def coco_json(captions: dict[int, list[str]]) -> dict[str, Any]:
    """A COCO captions file; annotations of different images interleaved (file order per image kept)."""
    images = [{"id": i, "file_name": file_name(i), "height": 480, "width": 640} for i in captions]
    rounds = max(len(c) for c in captions.values())
    annotations = [
        {"image_id": i, "id": 1000 * n + i % 1000, "caption": texts[n]}
        for n in range(rounds) for i, texts in captions.items() if n < len(texts)
    ]
    return {"info": {"description": "tiny COCO"}, "images": images, "annotations": annotations}


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def build(root: Path) -> Layout:
    """Write the tiny COCO-PFS copy under ``root`` and return its Layout."""
    write_json(root / CAPTIONS["train"], coco_json(COCO_TRAIN))
    write_json(root / CAPTIONS["val"], coco_json(COCO_VAL))
    for split, keys in KEYS.items():
        write_json(root / FEATURES[split], {k: [face(k)] if k in NESTED else face(k) for k in keys})
        for key in keys:
            coco_id, class_id = key.split("_", 1)
            write_image(root / IMAGE_DIRS[split] / f"{file_name(int(coco_id))}_{class_id}.jpg", class_id)
    (root / META).parent.mkdir(parents=True, exist_ok=True)
    (root / META).write_text(META_CSV)
    for class_id in ("n009001", "n009002"):
        write_image(root / "vggface_test_kaggle" / class_id / "0001_01.jpg", class_id, size=(32, 32))
    return Layout(dataset="coco_pfs", root=root, expected=EXPECTED)


# --------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------
def edit_json(relative: str, change: Callable[[Any], None]) -> Callable[[Path], None]:
    """A mutation loading ``root/relative``, applying ``change`` in place and writing it back."""

    def mutate(root: Path) -> None:
        value = json.loads((root / relative).read_text())
        change(value)
        write_json(root / relative, value)

    return mutate


def delete(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def truncate(relative: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        text = (root / relative).read_text()
        (root / relative).write_text(text[: len(text) // 2])

    return mutate


def rename_key(old: str, new: str) -> Callable[[dict], None]:
    return lambda features: features.__setitem__(new, features.pop(old))


BAD_INPUTS = [
    BadInput("missing val features", delete(FEATURES["val"]),
             r"gender_faceswap_new_val_test_set: COCO-PFS val face features file not found "
             r"\(expected one of: features_new_val_small_faceswap\.json\)"),
    BadInput("missing identity_meta.csv", delete(META), r"vggface_test_kaggle: VGGFace2 identity list not found"),
    BadInput("truncated caption JSON", truncate(CAPTIONS["train"]),
             r"captions_train2017\.json: invalid JSON at line 1 column \d+: .*\(the file looks truncated\)"),
    BadInput("annotation without caption", edit_json(CAPTIONS["val"], lambda d: d["annotations"][2].pop("caption")),
             r"captions_val2017\.json: annotations record 2: missing field 'caption'$"),
    BadInput("caption file without images", edit_json(CAPTIONS["val"], lambda d: d.pop("images")),
             r"captions_val2017\.json: missing field 'images'$"),
    BadInput("wrong feature shape", edit_json(FEATURES["train"], lambda f: f.__setitem__("391895_n000078", [[0.5] * 256] * 2)),
             r"features_train_small_faceswap\.json: key '391895_n000078': face descriptor should be 512 numbers "
             r"\(flat or nested 1x512\), got shape \(2, 256\)$"),
    BadInput("non-numeric feature", edit_json(FEATURES["val"], lambda f: f.__setitem__("37777_n000001", ["0.1"] * 512)),
             r"features_new_val_small_faceswap\.json: key '37777_n000001': face descriptor .* got non-numeric values$"),
    BadInput("key without underscore", edit_json(FEATURES["test"], rename_key("87038_n009001", "87038n009001")),
             r"features_new_entities_test_small_faceswap\.json: key '87038n009001': "
             r"expected '<COCO image id>_<class id>'"),
    BadInput("image id without COCO entry", edit_json(FEATURES["train"], rename_key("522418_n000150", "999999_n000078")),
             r"features_train_small_faceswap\.json: key '999999_n000078': COCO image id 999999 is not in "
             r".*captions_train2017\.json$"),
]

layout("coco_pfs", bad_inputs=BAD_INPUTS)(build)
