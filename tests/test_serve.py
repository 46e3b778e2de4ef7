"""`xsearch serve`: every endpoint answers like :class:`~xsearch.search.query.Searcher` does for the same query, serves
only indexed files by row, and answers bad input with a 4xx and the exact message the page shows; it answers only the
Host names it listens on, follows no link out of the indexed folder, refuses oversized uploads and searches beyond its
slots, and puts its security headers on every response; a real headless chromium drives the page under its
Content-Security-Policy (skipped, saying how to install it, without chromium + chromedriver)."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_module
from PIL import Image

pytest.importorskip("fastapi", reason="xsearch serve needs fastapi, uvicorn, python-multipart: pip install -e '.[dev]'")
from fastapi.testclient import TestClient  # noqa: E402

from xsearch.cli import main  # noqa: E402
from xsearch.models import RetrievalModule  # noqa: E402
from xsearch.search import build_index, load_index  # noqa: E402
from xsearch.search import serve as serve_module  # noqa: E402
from xsearch.search.model_io import file_sha256  # noqa: E402
from xsearch.search.query import Searcher  # noqa: E402
from xsearch.search.serve import MAX_K, MAX_TEXT, MISSING_PACKAGES, background_server, create_app  # noqa: E402

ROOT = Path(__file__).parents[1]
EMPTY = "the query text is empty: say what to look for, e.g. \"a woman in a red coat\""
QUERY = "a man in a red jacket and blue jeans"
TESTSERVER = ["testserver"]
"""``allowed_hosts`` for a TestClient, whose requests name the Host ``testserver``."""


# -- fixtures (`trained`: the tiny checkpoint in `workspace`, from tests/conftest.py) ------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def photos(workspace, trained) -> Path:
    """The dataset's 27 images and an unreadable ``notes/broken.jpg`` (kept out of the index)."""
    folder = workspace / "photos"
    shutil.copytree(workspace / "data" / "pedes" / "imgs", folder)
    (folder / "notes").mkdir()
    (folder / "notes" / "broken.jpg").write_text("not a picture")
    return folder


@pytest.fixture(scope="module")
def indexed(workspace, trained, photos) -> Path:
    out = workspace / "index"
    build_index(trained, photos, out, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def searcher(indexed) -> Searcher:
    return Searcher(indexed, device="cpu")


@pytest.fixture(scope="module")
def client(searcher) -> TestClient:
    return TestClient(create_app(searcher, allowed_hosts=TESTSERVER))


@pytest.fixture(scope="module")
def composed(workspace, photos) -> tuple[Path, Searcher, TestClient]:
    """An xmodal checkpoint (composed queries; written like Lightning writes one, untrained, no dataset recorded),
    its index of ``photos``, a searcher and a client."""
    model_config = yaml.safe_load((ROOT / "configs" / "tiny" / "xmodal.yaml").read_text())["model"]
    hparams = {"_class_path": model_config["class_path"], **model_config["init_args"]}
    torch.manual_seed(0)
    model = instantiate_module(RetrievalModule, hparams)
    checkpoint = workspace / "xmodal.ckpt"
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": lightning.__version__,
                "hyper_parameters": {**hparams, "_instantiator": "lightning.pytorch.cli.instantiate_module"},
                "datamodule_hyper_parameters": {"image_size": [64, 64], "crop": None}}, checkpoint)
    out = workspace / "xmodal_index"
    build_index(checkpoint, photos, out, workers=0, progress=False)
    searcher = Searcher(out, device="cpu")
    return out, searcher, TestClient(create_app(searcher, allowed_hosts=TESTSERVER))


def _hits(result) -> list[tuple[int, str]]:
    return [(hit.rank, hit.path) for hit in result.hits]


def _answer(response) -> list[tuple[int, str]]:
    assert response.status_code == 200, response.text
    return [(hit["rank"], hit["path"]) for hit in response.json()["results"]]


def _error(response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    return body["error"]


# -- endpoints -----------------------------------------------------------------------------------------------------
def test_card_describes_the_method_checkpoint_training_data_and_index(client, trained, photos, indexed):
    recorded = torch.load(trained, map_location="cpu", weights_only=True, mmap=True)
    data = recorded["datamodule_hyper_parameters"]
    assert (data["dataset"], data["root"]) == ("synth_pedes", "pedes")
    card = client.get("/api/card")
    assert card.status_code == 200
    assert card.json() == {
        "method": "dual_encoder", "class_path": "xsearch.models.DualEncoder", "similarity": "cosine",
        "composed_queries": False,
        "checkpoint": {"file": "last.ckpt", "path": str(trained.absolute()), "sha256": file_sha256(trained)[:12],
                       "size": trained.stat().st_size, "epoch": recorded["epoch"], "global_step": recorded["global_step"]},
        "trained_on": {"dataset": "synth_pedes", "root": "pedes", "generated": data["generate"]},
        "index": {"folder": str(indexed.absolute()), "images_root": str(photos.absolute()), "images": 27, "skipped": 1,
                  "type": "FAISS Flat (cosine)", "dim": 32, "updated": load_index(indexed).header["updated"]},
        "image_size": [64, 32], "crop": None, "interpolation": "bicubic", "max_k": MAX_K,
    }
    assert data["generate"]["identities"] == 8 and recorded["global_step"] == 1


def test_page_shows_the_card_and_no_upload_for_a_text_only_method(client, trained):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "{{" not in text and "<title>xsearch: dual_encoder over 27 images</title>" in text
    assert '<dd data-field="method">dual_encoder</dd>' in text
    assert f'<dd data-field="checkpoint">last.ckpt (epoch {torch.load(trained, weights_only=True, mmap=True)["epoch"]}, step 1)</dd>' in text
    assert f'<dd data-field="sha256">{file_sha256(trained)[:12]}...</dd>' in text
    assert '<dd data-field="trained on">synth_pedes (root pedes) generated with identities=8, seed=0' in text
    assert '<dd data-field="images">27 (1 unreadable skipped)</dd>' in text
    assert '<dd data-field="image size">64 x 32</dd>' in text
    assert '<dd data-field="index">FAISS Flat (cosine), 32-d</dd>' in text
    assert 'type="file"' not in text and 'id="reference"' not in text
    assert f'max="{MAX_K}"' in text


def test_search_answers_like_the_searcher_for_form_and_json(client, searcher):
    expected = searcher.search(QUERY, 5)
    form = client.post("/api/search", data={"text": QUERY, "k": "5"})
    as_json = client.post("/api/search", json={"text": QUERY, "k": 5})
    assert _answer(form) == _answer(as_json) == _hits(expected) and len(expected.hits) == 5
    body = form.json()
    assert (body["query"], body["k"], body["method"], body["reference"]) == (QUERY, 5, "dual_encoder", None)
    rows = {item.path: row for row, item in enumerate(searcher.index.items)}
    for hit, want in zip(body["results"], expected.hits):
        assert hit["score"] == pytest.approx(want.score, abs=1e-6)
        assert hit["row"] == rows[want.path] and hit["image"] == f"/image/{rows[want.path]}"
        assert hit["name"] == Path(want.path).name
        assert "file" not in hit and not Path(hit["path"]).is_absolute()  # no server paths beyond the card's
    # multipart (what the page sends), the default k, and k larger than the index
    multipart = client.post("/api/search", data={"text": QUERY}, files={"file": ("", b"", "application/octet-stream")})
    assert _answer(multipart) == _hits(searcher.search(QUERY, 20))
    assert _answer(client.post("/api/search", json={"text": QUERY, "k": MAX_K})) == _hits(searcher.search(QUERY, 27))


def test_image_serves_only_indexed_files_by_row(client, searcher, photos):
    for row in (0, 26):
        response = client.get(f"/image/{row}")
        assert response.status_code == 200
        assert response.content == (photos / searcher.index.items[row].path).read_bytes()
        assert response.headers["content-type"] == "image/jpeg"
    rows = "no indexed image at row {!r}: the index has rows 0 to 26"
    for url, row in (("27", "27"), ("-1", "-1"), ("1.0", "1.0"), ("abc", "abc"), ("0x1", "0x1"), ("0%20", "0 "),
                     ("%00", "\x00"), ("\u0661", "\u0661"), ("%2e%2e", ".."), ("..%5C..%5Cindex.json", "..\\..\\index.json")):
        assert _error(client.get(f"/image/{url}"), 404) == rows.format(row), url
    for url in ("..%2F..%2Findex.json", "%2Fetc%2Fpasswd", "0/..%2F..%2Findex.json"):  # a "/" never reaches the row
        response = client.get(f"/image/{url}")
        assert _error(response, 404) == f"GET {response.request.url.path}: Not Found"
    assert _error(client.get("/image/..%2F..%2Findex.json"), 404) == "GET /image/../../index.json: Not Found"
    assert _error(client.get("/nowhere"), 404) == "GET /nowhere: Not Found"


def test_an_edited_index_cannot_make_the_server_read_other_files(workspace, indexed, photos):
    edited = workspace / "edited_index"
    shutil.copytree(indexed, edited)
    header = json.loads((edited / "index.json").read_text())
    items_file = edited / header["files"]["items"]
    rows = [json.loads(line) for line in items_file.read_text().splitlines()]
    secret = photos.parent / "secret.jpg"
    secret.write_bytes((photos / rows[0]["path"]).read_bytes())
    rows[0]["path"], rows[1]["path"], rows[2]["path"] = "../secret.jpg", "gone/missing.jpg", "/etc/passwd"
    items_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    client = TestClient(create_app(Searcher(edited, device="cpu"), allowed_hosts=TESTSERVER))
    outside = "row {} of the index names a path outside the indexed folder: refused"
    assert _error(client.get("/image/0"), 404) == outside.format(0)
    assert _error(client.get("/image/2"), 404) == outside.format(2)
    assert _error(client.get("/image/1"), 404) == (f"indexed image gone/missing.jpg is gone from {photos.absolute()}: "
                                                   "update the index with xsearch index")
    assert client.get("/image/3").status_code == 200


def test_image_links_are_followed_only_inside_the_indexed_folder(workspace, searcher, photos, monkeypatch):
    """A link to a file outside the (resolved) indexed folder is refused, one to another image inside it is served,
    one to a non-image inside it is refused; the folder itself may be reached through a link."""
    linked = workspace / "linked_photos"
    shutil.copytree(photos, linked)
    paths = [item.path for item in searcher.index.items]
    secret, outside_jpg = workspace / "secret.txt", workspace / "outside.jpg"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    outside_jpg.write_bytes((photos / paths[3]).read_bytes())
    (linked / "notes" / "readme.txt").write_text("not for the web")
    for row, target in ((0, secret), (1, outside_jpg), (2, Path(os.path.relpath(linked / paths[4], (linked / paths[2]).parent))),
                        (5, linked / "notes" / "readme.txt"), (6, linked / "notes")):
        (linked / paths[row]).unlink()
        (linked / paths[row]).symlink_to(target)
    root = workspace / "photos_link"
    root.symlink_to(linked, target_is_directory=True)
    monkeypatch.setitem(searcher.index.header, "images_root", str(root))
    client = TestClient(create_app(searcher, allowed_hosts=TESTSERVER))
    for row in (0, 1):
        assert _error(client.get(f"/image/{row}"), 404) == (
            f"indexed image {paths[row]} is a link to a file outside the indexed folder {root}: refused")
    inside = client.get("/image/2")
    assert inside.status_code == 200 and inside.content == (photos / paths[4]).read_bytes()
    assert _error(client.get("/image/5"), 404) == (f"indexed image {paths[5]} is a link to a file without an image "
                                                   "extension (.jpg, .jpeg, .png, .bmp, .webp): refused")
    assert _error(client.get("/image/6"), 404) == (
        f"indexed image {paths[6]} is gone from {root}: update the index with xsearch index")  # a folder, not a file
    plain = client.get("/image/3")
    assert plain.status_code == 200 and plain.content == (photos / paths[3]).read_bytes()


# -- hardening: Host names, security headers, busy ----------------------------------------------------------------
def _refused_host(name: str, answers: str = "localhost, 127.0.0.1, ::1") -> str:
    return (f"Host {name!r} is not a name this server answers to ({answers}): to reach it by that name, start xsearch "
            f"serve with --allow-host {name}")


def test_only_the_host_names_it_listens_on_are_answered(searcher):
    """DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1 sends ``Host: attacker.example``."""
    local = TestClient(create_app(searcher))  # on 127.0.0.1; TestClient's own Host, testserver, is refused too
    for host in ("localhost", "localhost:8000", "LocalHost:1", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000", "[::1]",
                 "::1"):
        assert local.get("/api/card", headers={"host": host}).status_code == 200, host
    for host, name in (("attacker.example", "attacker.example"), ("attacker.example:8000", "attacker.example"),
                       ("localhost.attacker.example", "localhost.attacker.example"), ("127.0.0.1.nip.io:80", "127.0.0.1.nip.io"),
                       ("testserver", "testserver"), ("192.168.1.5:8000", "192.168.1.5"), ("[fe80::1]:8000", "fe80::1")):
        for response in (local.get("/", headers={"host": host}), local.get("/api/card", headers={"host": host}),
                         local.get("/image/0", headers={"host": host}), local.get("/nowhere", headers={"host": host}),
                         local.post("/api/search", json={"text": QUERY}, headers={"host": host})):
            assert _error(response) == _refused_host(name), (host, response.request.url)
    assert _error(local.get("/api/card", headers={"host": ""})) == (
        "the request has no Host header: this server answers to localhost, 127.0.0.1, ::1")

    # --host ADDRESS and --allow-host NAME (lower-cased, port and brackets dropped)
    named = TestClient(create_app(searcher, host="192.168.1.5", allowed_hosts=["Photos.LAN", "[fd00::5]:8000", "testserver"]))
    for host in ("192.168.1.5:8000", "photos.lan", "PHOTOS.lan:8000", "[fd00::5]:9000", "testserver", "localhost"):
        assert named.get("/api/card", headers={"host": host}).status_code == 200, host
    for host in ("192.168.1.6", "other.lan", "photos.lan.attacker.example"):
        assert _error(named.get("/api/card", headers={"host": host})) == _refused_host(
            host, "localhost, 127.0.0.1, ::1, 192.168.1.5, photos.lan, fd00::5, testserver")

    # every address: any IP address (DNS rebinding needs a name), names only with --allow-host
    everywhere = TestClient(create_app(searcher, host="0.0.0.0"))
    for host in ("192.168.1.5:8000", "10.0.0.7", "[fe80::1]:8000", "0.0.0.0:8000", "localhost"):
        assert everywhere.get("/api/card", headers={"host": host}).status_code == 200, host
    for host in ("photos.lan", "attacker.example"):
        assert _error(everywhere.get("/api/card", headers={"host": host})) == _refused_host(
            host, "localhost, 127.0.0.1, ::1 or any IP address")
    assert TestClient(create_app(searcher, host="::")).get("/", headers={"host": "[2001:db8::7]"}).status_code == 200

    for bad in ("*", "photos lan", "http://photos.lan/", ""):
        with pytest.raises(ValueError) as refused:
            create_app(searcher, allowed_hosts=[bad])
        assert str(refused.value) == (
            f"--allow-host takes a host name or an IP address (e.g. myhost.lan or 192.168.1.5), got {bad!r}")


def _script_hash(body: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


def test_every_response_carries_the_security_headers(client, searcher, monkeypatch):
    page = client.get("/")
    (style,), (script,) = (re.findall(rf"<{tag}>(.*?)</{tag}>", page.text, flags=re.DOTALL) for tag in ("style", "script"))
    headers = {"content-security-policy": f"default-src 'self'; img-src 'self' data: blob:; style-src {_script_hash(style)}; "
                                          f"script-src {_script_hash(script)}; object-src 'none'; base-uri 'none'; "
                                          "form-action 'self'; frame-ancestors 'none'",
               "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
               "cross-origin-resource-policy": "same-origin"}
    monkeypatch.setattr(searcher, "search", lambda *a, **k: 1 / 0)
    crashing = TestClient(client.app, raise_server_exceptions=False)
    responses = {
        200: [page, client.get("/api/card"), client.get("/image/0")],
        400: [client.post("/api/search", json={"text": ""}), client.get("/", headers={"host": "attacker.example"})],
        404: [client.get("/nowhere"), client.get("/image/99")], 405: [client.get("/api/search")],
        415: [client.post("/api/search", content=b"x", headers={"content-type": "text/plain"})],
        500: [crashing.post("/api/search", json={"text": QUERY})]}
    for status, answers in responses.items():
        for response in answers:
            assert response.status_code == status, response.request.url
            assert {key: response.headers.get(key) for key in headers} == headers, (status, response.request.url)
    assert responses[500][0].json() == {"error": "internal error: ZeroDivisionError: division by zero"}
    assert "unsafe" not in headers["content-security-policy"]


def test_searches_beyond_the_slots_get_503(searcher, monkeypatch):
    """One slot, one search holding it: a second search waits SLOT_WAIT seconds, then gets 503; the slot is free again
    once the first answered."""
    monkeypatch.setattr(serve_module, "SEARCH_SLOTS", 1)
    monkeypatch.setattr(serve_module, "SLOT_WAIT", 0.2)
    app = create_app(searcher)
    entered, release = threading.Event(), threading.Event()
    real = searcher.search

    def held(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(searcher, "search", held)

    def post(url: str) -> tuple[int, dict]:
        request = urllib.request.Request(url + "/api/search", data=json.dumps({"text": QUERY, "k": 3}).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with background_server(app) as url, ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(post, url)
            assert entered.wait(10)
            assert post(url) == (503, {"error": "server busy: all 1 search slots are taken and none came free within "
                                                "0.2 s; try again in a moment"})
        finally:
            release.set()
        assert first.result(10)[0] == 200
        status, body = post(url)
        assert status == 200 and len(body["results"]) == 3


def test_bad_input_gets_a_4xx_with_the_message(client):
    for payload in ({"text": ""}, {"text": "   "}, {"k": "3"}):
        assert _error(client.post("/api/search", data=payload)) == EMPTY
        assert _error(client.post("/api/search", json=payload)) == EMPTY
    assert _error(client.post("/api/search", json={"text": None, "k": 3})) == EMPTY
    assert _error(client.post("/api/search", json={"text": 7})) == "text must be a string, got int"
    assert _error(client.post("/api/search", json={"text": "x" * (MAX_TEXT + 1)})) == (
        f"the query text is too long ({MAX_TEXT + 1} characters; at most {MAX_TEXT})")
    for k in ("0", f"{MAX_K + 1}"):
        assert _error(client.post("/api/search", data={"text": QUERY, "k": k})) == f"k must be from 1 to {MAX_K}, got {int(k)}"
    assert _error(client.post("/api/search", json={"text": QUERY, "k": 0})) == f"k must be from 1 to {MAX_K}, got 0"
    for k in ("abc", "-3", "2.5"):
        assert _error(client.post("/api/search", data={"text": QUERY, "k": k})) == (
            f"k must be a whole number from 1 to {MAX_K}, got '{k}'")
    assert _error(client.post("/api/search", json={"text": QUERY, "k": 2.5})) == (
        f"k must be a whole number from 1 to {MAX_K}, got 2.5")
    assert _error(client.post("/api/search", json={"text": QUERY, "k": True})) == (
        f"k must be a whole number from 1 to {MAX_K}, got True")
    upload = {"file": ("me.jpg", b"\xff\xd8 whatever", "image/jpeg")}
    assert _error(client.post("/api/search", data={"text": QUERY}, files=upload)) == (
        "method dual_encoder does not take a reference image (no composed queries): search with text alone")
    assert _error(client.post("/api/search", data={"text": QUERY, "file": "me.jpg"})) == (
        "file must be an uploaded image file (multipart/form-data), not text")
    assert _error(client.post("/api/search", json={"text": QUERY, "file": "me.jpg"})) == (
        "a reference image must be uploaded as multipart/form-data field 'file', not in JSON")
    broken = client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"})
    assert _error(broken).startswith("the request body is not valid JSON (")
    assert _error(client.post("/api/search", json=[QUERY])) == (
        'the JSON body must be an object like {"text": "...", "k": 20}, got list')
    plain = client.post("/api/search", content=QUERY.encode(), headers={"content-type": "text/plain"})
    assert _error(plain, 415) == ("send the query as a form (multipart/form-data or application/x-www-form-urlencoded) "
                                  "or as JSON, not text/plain")
    assert _error(client.get("/api/search"), 405) == "GET /api/search: Method Not Allowed"


def test_composed_method_takes_an_uploaded_reference_image(composed, photos):
    out, searcher, client = composed
    page = client.get("/").text
    assert '<input id="reference" name="file" type="file" accept="image/*">' in page
    assert '<dd data-field="method">xmodal (composed queries)</dd>' in page
    assert '<dd data-field="trained on">not recorded in the checkpoint</dd>' in page
    assert client.get("/api/card").json()["trained_on"] is None
    reference = photos / searcher.index.items[5].path
    text = "the same person in a green coat"
    with_reference = _hits(searcher.search(text, 27, reference))
    response = client.post("/api/search", data={"text": text, "k": "27"},
                           files={"file": ("ref.jpg", reference.read_bytes(), "image/jpeg")})
    assert _answer(response) == with_reference != _hits(searcher.search(text, 27))
    assert response.json()["reference"] == "ref.jpg"
    for (hit, want) in zip(response.json()["results"], searcher.search(text, 27, reference).hits):
        assert hit["score"] == pytest.approx(want.score, abs=1e-5)
    # no file chosen in the page: a nameless empty part, a text-only query
    empty = client.post("/api/search", data={"text": text, "k": "27"}, files={"file": ("", b"", "application/octet-stream")})
    assert _answer(empty) == _hits(searcher.search(text, 27))
    # uploads that are not images
    def upload(name: str, data: bytes) -> str:
        return _error(client.post("/api/search", data={"text": text}, files={"file": (name, data, "image/jpeg")}))

    assert upload("notes.txt", b"just some notes") == "not an image: notes.txt (not a format Pillow can read)"
    assert upload("nothing.jpg", b"") == "not an image: nothing.jpg (the file is empty)"
    half = reference.read_bytes()[: reference.stat().st_size // 2]
    assert upload("half.jpg", half).startswith("not an image: half.jpg (image file is truncated")
    assert _error(client.post("/api/search", data={"text": "", "k": "3"},
                              files={"file": ("ref.jpg", reference.read_bytes(), "image/jpeg")})) == EMPTY


def test_uploads_with_too_many_pixels_are_refused_before_decoding(composed, photos, monkeypatch):
    out, searcher, client = composed

    def upload(name: str, data: bytes, status: int) -> str:
        return _error(client.post("/api/search", data={"text": "the same person"},
                                  files={"file": (name, data, "image/png")}), status)

    def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, "PNG")
        return buffer.getvalue()

    wide = png((50_000_000, 1), "1")  # 50 megapixels (150 MB as RGB) in a few KB; Pillow alone would decode it
    assert len(wide) < 50_000 and serve_module.MAX_UPLOAD_PIXELS == 40_000_000
    assert upload("wide.png", wide, 413) == (
        "reference image wide.png is 50000000 x 1 = 50,000,000 pixels; at most 40,000,000 pixels are accepted")
    reference = photos / searcher.index.items[5].path
    with Image.open(reference) as image:
        width, height = image.size
    monkeypatch.setattr(serve_module, "MAX_UPLOAD_PIXELS", width * height - 1)
    assert upload("ref.jpg", reference.read_bytes(), 413) == (
        f"reference image ref.jpg is {width} x {height} = {width * height:,} pixels; at most {width * height - 1:,} "
        "pixels are accepted")
    monkeypatch.setattr(serve_module, "MAX_UPLOAD_PIXELS", 40_000_000)
    monkeypatch.setattr(serve_module, "MAX_UPLOAD", 1000)  # a body declared larger is refused before it is read
    response = client.post("/api/search", data={"text": "the same person"}, files={"file": ("big.png", b"x" * 70_000)})
    assert _error(response, 413) == f"the request body is {int(response.request.headers['content-length']):,} bytes; " \
        "a search with a reference image may be at most 66,536"
    monkeypatch.setattr(serve_module, "MAX_UPLOAD", 20 * 1024 * 1024)
    # Pillow's decompression-bomb warning (over MAX_IMAGE_PIXELS) and error (over twice that): not an image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert upload("warned.png", png((40, 30)), 400).startswith(
        "not an image: warned.png (Image size (1200 pixels) exceeds limit of 1000 pixels")
    assert upload("bomb.png", png((50, 50)), 400).startswith(
        "not an image: bomb.png (Image size (2500 pixels) exceeds limit of 2000 pixels")


def test_cli_refuses_a_missing_or_corrupt_index_before_serving(workspace, indexed, monkeypatch, capsys):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets=None: started.append((self, sockets, sockets[0].getsockname()[1])))
    missing = workspace / "no_index"
    assert main(["serve", str(missing), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"xsearch: error: index folder {missing} does not exist; build one with xsearch index --ckpt CKPT --images DIR "
        f"--out {missing}")
    corrupt = workspace / "corrupt_index"
    shutil.copytree(indexed, corrupt)
    (corrupt / "index.json").write_text("{half a header")
    assert main(["serve", str(corrupt), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"xsearch: error: {corrupt / 'index.json'}: corrupt index header (")
    assert started == []
    # a good index: the model is loaded, then uvicorn runs on the bound socket
    assert main(["serve", str(indexed), "--port", "0", "--device", "cpu"]) == 0
    (server, sockets, port), = started
    assert capsys.readouterr().out.strip().splitlines() == [
        f"[xsearch] serving 27 images of {indexed} with dual_encoder at http://127.0.0.1:{port} (Ctrl-C stops)",
        "[xsearch] stopped"]
    assert server.config.app.state.service.searcher.index.folder == indexed
    assert sockets[0].fileno() == -1  # closed once uvicorn returned
    # without the serve extra: one line saying what to install
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", str(indexed)]) == 2
    assert capsys.readouterr().err.strip() == f"xsearch: error: {MISSING_PACKAGES}"


def test_port_in_use_is_one_line(indexed, searcher, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: pytest.fail("must not start"))
    monkeypatch.setattr(serve_module, "Searcher", lambda *a, **k: searcher)  # the loaded one: no second model load
    with contextlib.closing(serve_module.bound_socket("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(indexed), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"xsearch: error: cannot listen on 127.0.0.1:{port} (")


def test_cli_allow_host_adds_host_names(indexed, searcher, monkeypatch, capsys):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: started.append(self))
    monkeypatch.setattr(serve_module, "Searcher", lambda *a, **k: searcher)
    assert main(["serve", str(indexed), "--port", "0", "--allow-host", "photos.lan", "--allow-host", "Pi.local:8000"]) == 0
    client = TestClient(started[0].config.app)
    for host in ("photos.lan", "pi.local:8000", "127.0.0.1:8000"):
        assert client.get("/api/card", headers={"host": host}).status_code == 200, host
    assert _error(client.get("/api/card", headers={"host": "attacker.example"})) == _refused_host(
        "attacker.example", "localhost, 127.0.0.1, ::1, photos.lan, pi.local")
    capsys.readouterr()
    monkeypatch.setattr(serve_module, "Searcher", lambda *a, **k: pytest.fail("a bad --allow-host must stop it first"))
    assert main(["serve", str(indexed), "--port", "0", "--allow-host", "*"]) == 2
    assert capsys.readouterr().err.strip() == ("xsearch: error: --allow-host takes a host name or an IP address "
                                               "(e.g. myhost.lan or 192.168.1.5), got '*'")
    assert len(started) == 1


# -- a real browser --------------------------------------------------------------------------------------------------
def _browser():
    """Headless Debian chromium driven by chromedriver through Selenium; skips, saying how to install, without them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the browser test needs chromium and chromedriver: apt-get install chromium chromium-driver "
                    f"(found chromium: {chromium}, chromedriver: {driver})")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                 "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations are logged there
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_the_page_in_a_real_headless_browser(searcher, trained):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        with background_server(create_app(searcher)) as url:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 20)
            # the page's inline style applies under its Content-Security-Policy (the script: the search below)
            assert browser.execute_script("return getComputedStyle(document.querySelector('header')).backgroundColor") == (
                "rgb(35, 57, 93)")
            assert browser.find_element(By.CSS_SELECTOR, 'dd[data-field="method"]').text == "dual_encoder"
            assert browser.find_element(By.CSS_SELECTOR, 'dd[data-field="sha256"]').text == file_sha256(trained)[:12] + "..."
            assert browser.find_elements(By.ID, "reference") == []

            box = browser.find_element(By.ID, "text")
            box.send_keys(QUERY)
            k = browser.find_element(By.ID, "k")
            k.clear()
            k.send_keys("8")
            browser.find_element(By.ID, "submit").click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .hit")) == 8)
            expected = searcher.search(QUERY, 8)
            cells = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
            shown = [(c.find_element(By.CLASS_NAME, "rank").text, c.find_element(By.CLASS_NAME, "score").text,
                      c.find_element(By.CLASS_NAME, "name").get_attribute("title")) for c in cells]
            assert shown == [(f"#{h.rank}", f"{h.score:.4f}", h.path) for h in expected.hits]
            first = cells[0].find_element(By.CLASS_NAME, "name")
            assert first.text == Path(expected.hits[0].path).name
            wait.until(lambda b: b.execute_script(
                "return Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth > 0)"))
            image = cells[0].find_element(By.TAG_NAME, "img")
            with Image.open(expected.hits[0].file) as original:  # the indexed file itself, served by row
                assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                              image) == list(original.size)
            assert browser.find_element(By.ID, "status").text.startswith(f"8 results for \u201c{QUERY}\u201d")
            assert not browser.find_element(By.ID, "error").is_displayed()

            box.clear()
            browser.find_element(By.ID, "submit").click()
            error = wait.until(expected_conditions.visibility_of_element_located((By.ID, "error")))
            assert error.text == EMPTY
            assert browser.find_elements(By.CSS_SELECTOR, "#results .hit") == []
            assert [entry["message"] for entry in browser.get_log("browser")
                    if "Content Security Policy" in entry["message"]] == []
    finally:
        browser.quit()


def test_background_server_stops_when_the_block_ends(searcher):
    import urllib.error
    import urllib.request

    with background_server(create_app(searcher)) as url:
        with urllib.request.urlopen(url + "/api/card", timeout=10) as answer:
            assert json.loads(answer.read())["index"]["images"] == 27
        request = urllib.request.Request(url + "/api/search", data=json.dumps({"text": ""}).encode(),
                                         headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400 and json.loads(refused.value.read()) == {"error": EMPTY}
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/api/card", timeout=2)

