"""CUHK-PEDES, ICFG-PEDES, RSTPReid and ``custom`` fixtures in their official layouts, with their quirks."""
from __future__ import annotations

import json
from pathlib import Path

from layouts import BadInput, Layout, layout, write_image


def _edit_json(path: Path, edit) -> None:
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:-40])


def _record(split, pid, path, captions, path_key="file_path", tokens=True):
    record = {"split": split, "captions": captions, path_key: path, "id": pid}
    if tokens:
        record["processed_tokens"] = [c.lower().rstrip(".").split() for c in captions]
    return record


# ---------------------------------------------------------------------------------- CUHK-PEDES
CUHK_RECORDS = [
    # (split, id, file_path, number of captions): mixed source folders and extensions
    ("train", 1, "CUHK01/0001001.png", 2),
    ("train", 1, "cam_a/000_45.bmp", 2),
    ("train", 2, "Market/0002_c1s1_000151_01.jpg", 2),
    ("train", 2, "CUHK03/2_1_1.png", 2),
    ("train", 3, "train_query/p3_s1.jpg", 2),  # single-image identity
    ("val", 11004, "cam_b/011_0.bmp", 2),
    ("val", 11004, "Market/1104_c2s1_000101_01.jpg", 2),
    ("val", 11005, "CUHK01/1105001.png", 2),
    ("Test", 12004, "test_query/p2703_s3526.jpg", 10),  # upper-case split, 10 captions
    ("test", 12004, "CUHK03/12004_1_2.png", 2),
    ("test", 12005, "Market/1205_c3s2_000201_01.jpg", 3),
]


def write_cuhk(root: Path, annotation: str = "reid_raw.json", with_split: bool = True) -> Path:
    records = []
    for split, pid, path, n in CUHK_RECORDS:
        captions = [f"Person {pid} wears item {k} in picture {Path(path).stem}." for k in range(n)]
        record = _record(split, pid, path, captions)
        if not with_split:
            del record["split"]
        records.append(record)
        write_image(root / "imgs" / path, pid, grey=path.endswith(".bmp"))
    (root / annotation).write_text(json.dumps(records))
    return root


@layout("cuhk_pedes", bad_inputs=[
    BadInput("missing annotation file", lambda r: (r / "reid_raw.json").unlink(),
             r"CUHK-PEDES annotation file not found \(expected one of: reid_raw\.json, caption_all\.json\)"),
    BadInput("truncated json", lambda r: _truncate(r / "reid_raw.json"),
             r"reid_raw\.json: invalid JSON at line 1 column \d+: .* \(the file looks truncated\)$"),
    BadInput("missing field", lambda r: _edit_json(r / "reid_raw.json", lambda rs: rs[4].pop("captions")),
             r"reid_raw\.json: record 4: missing field 'captions'$"),
    BadInput("wrong type", lambda r: _edit_json(r / "reid_raw.json", lambda rs: rs[2].update(id="2")),
             r"reid_raw\.json: record 2: field 'id' should be int, got str$"),
    BadInput("unknown split", lambda r: _edit_json(r / "reid_raw.json", lambda rs: rs[6].update(split="query")),
             r"reid_raw\.json: record 6: field 'split' should be one of train, val, test, got 'query'$"),
    BadInput("caption_all.json without split", lambda r: (
        (r / "reid_raw.json").unlink(), write_cuhk(r, "caption_all.json", with_split=False)),
        r"caption_all\.json: record 0: missing field 'split' \(this copy has no split field; set "
        r"data\.dataset_options\.id_range_split=true, or --option id_range_split=true for data check"),
])
def cuhk(tmp: Path) -> Layout:
    return Layout("cuhk_pedes", write_cuhk(tmp / "CUHK-PEDES"), {
        "train": {"identities": 3, "images": 5, "captions": 10},
        "val": {"identities": 2, "images": 3, "captions": 6},
        "test": {"identities": 2, "images": 3, "captions": 15},
    })


# ---------------------------------------------------------------------------------- ICFG-PEDES
ICFG_RECORDS = [
    # (split, id, file_path): imgs/train|test are MSMT17 folders, not the split
    ("train", 0, "train/0000/0000_000_01_0303morning_0001_0.jpg"),
    ("train", 0, "test/0000/0000_001_05_0303afternoon_1591_0.jpg"),
    ("train", 1, "train/0001/0001_002_02_0302noon_0871_1.jpg"),
    ("train", 1, "train/0001/0001_002_02_0302noon_0871_1.jpg"),  # repeated file_path: two items
    ("train", 2, "test/0627/0627_010_05_0303afternoon_1591_0.jpg"),
    ("test", 3455, "train/0213/0213_004_11_0302noon_0871_1.jpg"),
    ("test", 3455, "test/0213/0213_005_12_0302noon_0872_1.jpg"),
    ("test", 3456, "test/0214/0214_004_11_0302noon_0001_0.jpg"),
    ("test", 3456, "test/0214/0214_004_11_0302noon_0002_0.jpg"),
]


def write_icfg(root: Path, annotation: str = "ICFG_PEDES.json") -> Path:
    records = []
    for number, (split, pid, path) in enumerate(ICFG_RECORDS):
        caption = f"A person {pid} with long hair wears a white shirt and blue jeans, record {number}."
        records.append(_record(split, pid, path, [caption]))
        write_image(root / "imgs" / path, pid)
    (root / annotation).write_text(json.dumps(records, indent=1))
    return root


@layout("icfg_pedes", bad_inputs=[
    BadInput("missing annotation file", lambda r: (r / "ICFG_PEDES.json").unlink(),
             r"ICFG-PEDES annotation file not found \(expected one of: ICFG-PEDES\.json, ICFG_PEDES\.json, ICFG-PDES\.json\)"),
    BadInput("truncated json", lambda r: _truncate(r / "ICFG_PEDES.json"),
             r"ICFG_PEDES\.json: invalid JSON at line \d+ column \d+: .*truncated"),
    BadInput("val split", lambda r: _edit_json(r / "ICFG_PEDES.json", lambda rs: rs[3].update(split="val")),
             r"ICFG_PEDES\.json: record 3: field 'split' should be one of train, test, got 'val'$"),
    BadInput("captions not a list", lambda r: _edit_json(r / "ICFG_PEDES.json", lambda rs: rs[5].update(captions="A man.")),
             r"ICFG_PEDES\.json: record 5: field 'captions' should be list, got str$"),
    BadInput("top level not a list", lambda r: (r / "ICFG_PEDES.json").write_text('{"split": "train"}'),
             r"ICFG_PEDES\.json: expected a JSON list at the top level, got object$"),
])
def icfg(tmp: Path) -> Layout:
    return Layout("icfg_pedes", write_icfg(tmp / "ICFG-PEDES"), {
        "train": {"identities": 3, "images": 5, "captions": 5},
        "val": {"identities": 0, "images": 0, "captions": 0},
        "test": {"identities": 2, "images": 4, "captions": 4},
    })


# ---------------------------------------------------------------------------------- RSTPReid
RSTP_CAPTIONS = {
    # dirty text as in the real file: glued sentences, non-ASCII, a caption copied onto another identity
    0: ["The woman wears a long beige coat.Her trousers are black  and her boots brown.",
        "A woman with shoulder-length hair walks while looking at her phone\u3002"],
    3: ["A man in a grey hoodie and dark jeans carries a black backpack.",
        "The woman wears a long beige coat.Her trousers are black  and her boots brown."],
}


def write_rstp(root: Path) -> Path:
    records = []
    ids = {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]}
    for split, pids in ids.items():
        for pid in pids:
            for cam in (1, 4):
                name = f"{pid:04d}_c{cam}_{pid * 10 + cam:04d}.jpg"
                captions = RSTP_CAPTIONS.get(pid) if cam == 1 else None
                captions = captions or [f"Person {pid} seen by camera {cam} wears a dark jacket over a light shirt.",
                                        f"Camera {cam} shows person {pid} walking with a bag in the left hand."]
                records.append(_record(split, pid, name, captions, path_key="img_path", tokens=False))
                write_image(root / "imgs" / name, pid)
    (root / "data_captions.json").write_text(json.dumps(records))  # one line, as distributed
    return root


@layout("rstpreid", bad_inputs=[
    BadInput("missing annotation file", lambda r: (r / "data_captions.json").unlink(),
             r"RSTPReid annotation file not found \(expected one of: data_captions\.json\)"),
    BadInput("truncated json", lambda r: _truncate(r / "data_captions.json"), r"data_captions\.json: invalid JSON at line 1"),
    BadInput("empty file", lambda r: (r / "data_captions.json").write_text(""),
             r"data_captions\.json: empty file, expected a JSON list$"),
    BadInput("file_path instead of img_path", lambda r: _edit_json(
        r / "data_captions.json", lambda rs: rs[1].update(file_path=rs[1].pop("img_path"))),
        r"data_captions\.json: record 1: missing field 'img_path'$"),
    BadInput("caption not a string", lambda r: _edit_json(r / "data_captions.json", lambda rs: rs[7].update(captions=["a", 3])),
             r"data_captions\.json: record 7: field 'captions' should be a non-empty list of strings$"),
    BadInput("bad option", lambda r: None, r"normalize_captions should be off, train or all, got 'yes'",
             options={"normalize_captions": "yes"}),
])
def rstp(tmp: Path) -> Layout:
    return Layout("rstpreid", write_rstp(tmp / "RSTPReid"), {
        "train": {"identities": 3, "images": 6, "captions": 12},
        "val": {"identities": 2, "images": 4, "captions": 8},
        "test": {"identities": 2, "images": 4, "captions": 8},
    })


# ---------------------------------------------------------------------------------- custom
CUSTOM_ROWS = [
    # path, pid, captions, split, camid
    ("photos/alice_1.jpg", "alice", ["A woman in a red coat.", "Red coat, black boots."], "train", 1),
    ("photos/alice_2.png", "alice", ["The woman wears a red coat and a hat."], "train", 2),
    ("photos/bob_1.jpg", "bob", ["A man with a blue backpack."], "train", 1),
    ("photos/bob_2.jpg", "bob", ["A man carrying a blue backpack and a phone."], "train", 3),
    ("photos/carol_1.jpg", "carol", ["A girl in a yellow dress."], "val", 1),
    ("photos/carol_2.jpg", "carol", [], "val", 2),  # gallery-only image
    ("photos/dave_1.jpg", "dave", ["An old man with a cane."], "val", 1),
    ("photos/erin_1.jpg", "erin", ["A woman in a green jacket, riding a bike."], "test", 2),
    ("photos/erin_2.jpg", "erin", ["Green jacket, bicycle."], "test", 1),
    ("photos/frank_1.jpg", "frank", ["A man in a suit with a briefcase."], "test", 3),
]


def write_custom(root: Path, fmt: str = "jsonl") -> Path:
    lines = ["path,pid,captions,split,camid"] if fmt == "csv" else []
    for path, pid, captions, split, camid in CUSTOM_ROWS:
        write_image(root / path, pid)
        if fmt == "csv":
            cell = " | ".join(captions)
            lines.append(f'{path},{pid},"{cell}",{split},{camid}')
        else:
            lines.append(json.dumps({"path": path, "pid": pid, "captions": captions, "split": split, "camid": camid}))
    (root / f"annotations.{fmt}").write_text("\n".join(lines) + "\n")
    return root


CUSTOM_EXPECTED = {
    "train": {"identities": 2, "images": 4, "captions": 5},
    "val": {"identities": 2, "images": 3, "captions": 2},
    "test": {"identities": 2, "images": 3, "captions": 3},
}


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@layout("custom", bad_inputs=[
    BadInput("no annotation file", lambda r: (r / "annotations.jsonl").unlink(),
             r"annotation file not found \(expected one of: annotations\.jsonl, annotations\.csv\)"),
    BadInput("invalid json line", lambda r: _replace_line(r / "annotations.jsonl", 3, '{"path": "x.jpg", '),
             r"annotations\.jsonl: line 3: invalid JSON at column \d+"),
    BadInput("missing field", lambda r: _replace_line(r / "annotations.jsonl", 2, '{"path": "x.jpg", "pid": "z", "split": "train"}'),
             r"annotations\.jsonl: line 2: missing field 'captions'$"),
    BadInput("wrong type", lambda r: _replace_line(
        r / "annotations.jsonl", 4, '{"path": "x.jpg", "pid": 1.5, "captions": [], "split": "train"}'),
        r"annotations\.jsonl: line 4: field 'pid' should be int or str, got float$"),
    BadInput("bad split", lambda r: _replace_line(
        r / "annotations.jsonl", 5, '{"path": "x.jpg", "pid": "z", "captions": [], "split": "query"}'),
        r"annotations\.jsonl: line 5: field 'split' should be one of train, val, test, got 'query'$"),
])
def custom(tmp: Path) -> Layout:
    return Layout("custom", write_custom(tmp / "my_collection"), CUSTOM_EXPECTED)
