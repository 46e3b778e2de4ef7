"""CelebA fixtures: the Drive (or torchvision) layout with CRLF and space-padded rows, and its caption sets.

``write_celeba`` writes 16 images of 8 identities (raw ids, official partition) and the three txt files;
``write_mm`` / ``write_dialog`` / ``write_face2text`` add one caption set each. The registered ``celeba``
layout uses Multi-Modal-CelebA-HQ captions (found by ``captions="auto"``), which cover 15 of the 16
images; ``synth_faces`` is the generator's own output.
"""
from __future__ import annotations

import json
from pathlib import Path

from layouts import BadInput, Layout, layout, write_image

from xsearch.face_captions import CELEBA_ATTRIBUTES
from xsearch.synth import generate_faces

# (file, identity, partition); 000008.jpg has no caption in the HQ caption sets, 230 has a single image
IMAGES = [
    ("000001.jpg", 17, 0), ("000002.jpg", 42, 0), ("000003.jpg", 17, 0), ("000004.jpg", 101, 0),
    ("000005.jpg", 230, 0), ("000006.jpg", 42, 0), ("000007.jpg", 101, 0), ("000008.jpg", 42, 0),
    ("000009.jpg", 512, 1), ("000010.jpg", 640, 1), ("000011.jpg", 512, 1), ("000012.jpg", 640, 1),
    ("000013.jpg", 777, 2), ("000014.jpg", 901, 2), ("000015.jpg", 777, 2), ("000016.jpg", 901, 2),
]
UNCAPTIONED = "000008.jpg"
ATTRIBUTES = {  # hand-written positives; every other attribute is -1
    "000001.jpg": ("Male", "Eyeglasses", "Smiling", "Wearing_Hat"),
    "000002.jpg": ("Bangs", "Wearing_Lipstick", "Young"),
    "000004.jpg": (),  # nothing positive: "This is a photo of a woman."
    "000005.jpg": ("Male",),  # only the subject: "This is a photo of a man."
    "000010.jpg": ("Attractive", "Black_Hair", "Wavy_Hair", "Wearing_Earrings"),
}
DEFAULT_POSITIVES = ("Young", "Smiling", "Brown_Hair", "High_Cheekbones")
HQ = {file: (7 * n + 3) % 29 for n, (file, _, _) in enumerate(IMAGES, start=1) if file != UNCAPTIONED}
HQ["000006.jpg"] = 5380  # the CelebA-Dialog release has no "5380.jpg" entry
"""CelebA file -> CelebA-HQ number (the HQ sets use their own numbering)."""
HQ_NOT_IN_COPY = (29999, "202599.jpg")  # a mapping row for a CelebA image this small copy lacks
MM_LINES = 2
LAYOUT_DIRS = {"drive": ("Anno", "Eval", "Img"), "torchvision": ("celeba", "celeba", "celeba")}
ID_FILE = {"drive": "Anno/identity_CelebA.txt", "torchvision": "celeba/identity_CelebA.txt"}


def positives(file: str) -> tuple[str, ...]:
    return ATTRIBUTES.get(file, DEFAULT_POSITIVES)


def _attribute_file() -> str:
    rows = [f"{file} " + " ".join(f"{1 if a in positives(file) else -1:2d}" for a in CELEBA_ATTRIBUTES)
            for file, _, _ in IMAGES]
    return f"{len(IMAGES)}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n" + "\n".join(rows) + "\n"


def write_celeba(root: Path, style: str = "drive") -> Path:
    """The three txt files (attributes CRLF + padded, identities CRLF, partition LF) and the images."""
    anno, evl, img = (root / d for d in LAYOUT_DIRS[style])
    for folder in (anno, evl):
        folder.mkdir(parents=True, exist_ok=True)
    (anno / "list_attr_celeba.txt").write_text(_attribute_file(), newline="\r\n")
    (anno / "identity_CelebA.txt").write_text("".join(f"{f} {pid}\n" for f, pid, _ in IMAGES), newline="\r\n")
    (evl / "list_eval_partition.txt").write_text("".join(f"{f}  {part} \n" for f, _, part in IMAGES))
    for file, pid, _ in IMAGES:
        write_image(img / "img_align_celeba" / file, pid, size=(44, 36))
    return root


def hq_mapping_text() -> str:
    rows = sorted([(hq, file) for file, hq in HQ.items()] + [HQ_NOT_IN_COPY])
    return "idx         orig_idx    orig_file   \n" + "".join(
        f"{hq:<12}{int(file[:6]) - 1:<12}{file}  \n" for hq, file in rows)


def mm_caption(file: str, k: int) -> str:
    return f"Caption {k} of face {file[:6]}: the person has some hair."


def py2_pickle(stems: list[bytes]) -> bytes:
    """A protocol-2 list of Python 2 ``str`` (SHORT_BINSTRING), as the MM-CelebA-HQ release has."""
    return b"\x80\x02](" + b"".join(b"U" + bytes([len(s)]) + s for s in stems) + b"e."


MM_TEST = ("000003.jpg", "000010.jpg", "000014.jpg")
"""Files the MM-CelebA-HQ ``test/filenames.pickle`` lists (the rest are in ``train/``)."""


def write_mm(folder: Path, text_dir: str = "text") -> Path:
    """``text/<hq>.txt`` for every HQ image (incl. one outside this copy), mapping, latin1-only split pickles."""
    (folder / text_dir).mkdir(parents=True, exist_ok=True)
    for file, hq in [*HQ.items(), (HQ_NOT_IN_COPY[1], HQ_NOT_IN_COPY[0])]:
        (folder / text_dir / f"{hq}.txt").write_text("\n".join(mm_caption(file, k) for k in range(MM_LINES)) + "\n")
    (folder / "CelebA-HQ-to-CelebA-mapping.txt").write_text(hq_mapping_text())
    for split, files in (("train", [f for f in HQ if f not in MM_TEST]), ("test", MM_TEST)):
        (folder / split).mkdir(exist_ok=True)
        # a trailing latin-1 no-break space on the first stem: Python 3 needs encoding="latin1"
        stems = [str(HQ[f]).encode() + (b"\xa0" if i == 0 else b"") for i, f in enumerate(files)]
        (folder / split / "filenames.pickle").write_bytes(py2_pickle(stems))
    return folder


def write_dialog(folder: Path) -> Path:
    """``text/captions_hq.json`` without "5380.jpg" (as the release), with empty attribute-wise captions."""
    records = {}
    for file, hq in HQ.items():
        if hq == 5380:
            continue
        records[f"{hq}.jpg"] = {
            "overall_caption": f"  Overall caption of face {file[:6]}. ",
            "attribute_wise_captions": {"Bangs": f"Bangs of {file[:6]}.", "No_Beard": "", "Smiling": "  "},
        }
    (folder / "text").mkdir(parents=True, exist_ok=True)
    (folder / "text" / "captions_hq.json").write_text(json.dumps(records, indent=1))
    (folder / "CelebA-HQ-to-CelebA-mapping.txt").write_text(hq_mapping_text())
    return folder


F2T_SPLITS = {"train": ["000001.jpg", "000002.jpg", "000004.jpg"], "dev": ["000010.jpg", "000015.jpg"],
              "test": ["000014.jpg"]}
"""Face2Text v2.1 clean split files; 000015.jpg is in the official test partition but in Face2Text's dev."""


def face2text_records(files: list[str]) -> list[dict]:
    """Per-description records; the first image of each list gets two (adjacent), one with messy spaces."""
    records = []
    for i, file in enumerate(files):
        for k in range(2 if i == 0 else 1):
            records.append({"response_id": f"{i}{k}", "filename": file, "user_id": "7",
                            "description": f"  A face\n numbered {file[:6]},  description {k}. "})
    return records


def write_face2text(folder: Path) -> Path:
    """Face2Text v2.1 ``clean_{train,dev,test}_2.1.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, files in F2T_SPLITS.items():
        (folder / f"clean_{split}_2.1.json").write_text(json.dumps(face2text_records(files)))
    return folder


# ---------------------------------------------------------------------------------- mutations
def _edit_line(path: Path, number: int, edit) -> None:
    lines = path.read_bytes().decode().split("\n")
    lines[number - 1] = edit(lines[number - 1])
    path.write_bytes("\n".join(lines).encode())


def _set_field(path: Path, number: int, k: int, value: str) -> None:
    """Replace whitespace-separated field ``k`` (0 = file name) of line ``number``, keeping the line end."""

    def edit(line: str) -> str:
        fields = line.split()
        fields[k] = value
        return "  ".join(fields) + ("\r" if line.endswith("\r") else "")

    _edit_line(path, number, edit)


def _truncate(path: Path, chars: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:-chars])


def _bad_dialog(root: Path) -> None:
    write_dialog(root / "CelebA-Dialog")
    _truncate(root / "CelebA-Dialog" / "text" / "captions_hq.json")


def _dialog_wrong_type(root: Path) -> None:
    path = write_dialog(root / "CelebA-Dialog") / "text" / "captions_hq.json"
    records = json.loads(path.read_text())
    records[f"{HQ['000003.jpg']}.jpg"]["overall_caption"] = 3
    path.write_text(json.dumps(records))


def _face2text_missing_field(root: Path) -> None:
    path = write_face2text(root / "face2text") / "clean_train_2.1.json"
    records = json.loads(path.read_text())
    del records[1]["description"]
    path.write_text(json.dumps(records))


ATTR = "Anno/list_attr_celeba.txt"
MM = "multi-modal-celeba"


@layout("celeba", bad_inputs=[
    BadInput("missing annotation file", lambda r: (r / "Eval" / "list_eval_partition.txt").unlink(),
             r"Eval/list_eval_partition\.txt: file not found$"),
    BadInput("truncated attribute file", lambda r: _truncate(r / ATTR),
             r"list_attr_celeba\.txt: line 18: expected a file name and 40 values, got \d+ fields$"),
    BadInput("wrong field count", lambda r: _edit_line(r / "Anno" / "identity_CelebA.txt", 3, lambda s: "x " + s),
             r"identity_CelebA\.txt: line 3: expected a file name and an identity, got 3 fields$"),
    BadInput("non-integer attribute", lambda r: _set_field(r / ATTR, 7, 6, "x"),
             r"list_attr_celeba\.txt: line 7: attribute 'Bangs' should be an integer, got 'x'$"),
    BadInput("attribute value 0", lambda r: _set_field(r / ATTR, 8, 40, "0"),
             r"list_attr_celeba\.txt: line 8: attribute 'Young' should be -1 or 1, got 0$"),
    BadInput("non-integer identity", lambda r: _set_field(r / "Anno" / "identity_CelebA.txt", 2, 1, "4two"),
             r"identity_CelebA\.txt: line 2: identity should be an integer, got '4two'$"),
    BadInput("partition out of range", lambda r: _set_field(r / "Eval" / "list_eval_partition.txt", 12, 1, "3"),
             r"list_eval_partition\.txt: line 12: partition should be 0, 1 or 2, got 3$"),
    BadInput("file missing from partition", lambda r: _edit_line(r / "Eval" / "list_eval_partition.txt", 5,
                                                                 lambda s: ""),
             r"list_eval_partition\.txt: no row for 000005\.jpg \(listed in identity_CelebA\.txt\)$"),
    BadInput("39 attribute names", lambda r: _edit_line(r / ATTR, 2, lambda s: s.replace("Bangs ", "")),
             r"list_attr_celeba\.txt: line 2: expected the 40 CelebA attribute names, got 39 names$"),
    BadInput("missing HQ mapping", lambda r: (r / MM / "CelebA-HQ-to-CelebA-mapping.txt").unlink(),
             r"CelebA-HQ-to-CelebA-mapping\.txt: file not found \(also looked in .*\); it maps CelebA-HQ numbers"),
    BadInput("short mapping row", lambda r: _edit_line(r / MM / "CelebA-HQ-to-CelebA-mapping.txt", 4,
                                                       lambda s: s.split()[0] + " " + s.split()[2]),
             r"CelebA-HQ-to-CelebA-mapping\.txt: line 4: expected idx, orig_idx and orig_file, got 2 fields$"),
    BadInput("truncated pickle", lambda r: _truncate(r / MM / "test" / "filenames.pickle", 3),
             r"test/filenames\.pickle: cannot unpickle \("),
    BadInput("truncated dialog json", _bad_dialog,
             r"captions_hq\.json: invalid JSON at line \d+ column \d+: .*\(the file looks truncated\)$",
             {"captions": "celeba_dialog"}),
    BadInput("dialog wrong type", _dialog_wrong_type,
             r"captions_hq\.json: key '\d+\.jpg': field 'overall_caption' should be str, got int$",
             {"captions": "celeba_dialog"}),
    BadInput("face2text missing field", _face2text_missing_field,
             r"clean_train_2\.1\.json: record 1: missing field 'description'$", {"captions": "face2text"}),
    BadInput("unknown caption source", lambda r: None,
             r"captions should be auto or one of mm_celeba_hq, celeba_dialog, face2text, attributes, got 'coco'$",
             {"captions": "coco"}),
])
def celeba(tmp: Path) -> Layout:
    root = write_celeba(tmp / "CelebA")
    write_mm(root / MM)
    return Layout("celeba", root, {
        "train": {"identities": 4, "images": 7, "captions": 7 * MM_LINES},
        "val": {"identities": 2, "images": 4, "captions": 4 * MM_LINES},
        "test": {"identities": 2, "images": 4, "captions": 4 * MM_LINES},
    })


@layout("synth_faces", bad_inputs=[
    BadInput("missing HQ mapping", lambda r: (r / "CelebA-HQ-to-CelebA-mapping.txt").unlink(),
             r"CelebA-HQ-to-CelebA-mapping\.txt: file not found"),
])
def synth_faces(tmp: Path) -> Layout:
    root = generate_faces(tmp / "synth_faces", identities=6, images_per_identity=(2, 3), captions_per_image=1,
                          progress=False)
    return Layout("synth_faces", root, {
        "train": {"identities": 4, "images": 9, "captions": 9},
        "val": {"identities": 1, "images": 3, "captions": 3},
        "test": {"identities": 1, "images": 3, "captions": 3},
    })
