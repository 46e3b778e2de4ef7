"""``xsearch serve``: a one-page web app over an index (FastAPI + uvicorn, optional extra ``serve``).

The index and its method are loaded once (:class:`~xsearch.search.query.Searcher`); every request reuses them.

- ``GET /``: the page (text box, reference-image upload when the method has composed queries, result grid, card).
- ``POST /api/search``: form (``text``, ``k``, optional ``file``) or JSON (``{"text", "k"}``) -> ranked hits.
- ``GET /image/{row}``: the indexed image of that index row, and nothing else (no path from the request is opened).
- ``GET /api/card``: method, checkpoint, training data, index size and type.

Bad input is answered with a 4xx and ``{"error": "..."}``, the message the page shows.
"""

import html
import io
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from xsearch.search.images import IMAGE_EXTENSIONS
from xsearch.search.model_io import read_checkpoint_header
from xsearch.search.query import Searcher, check_query

MAX_K = 100
"""Largest ``k`` a request may ask for."""
DEFAULT_K = 20
MAX_TEXT = 1000
"""Longest query text accepted, in characters."""
MAX_UPLOAD = 20 * 1024 * 1024
"""Largest reference image accepted, in bytes."""
TEMPLATE = Path(__file__).with_name("serve.html")
MISSING_PACKAGES = ("xsearch serve needs fastapi, uvicorn and python-multipart: pip install 'xsearch[serve]' "
                    "(or pip install fastapi uvicorn python-multipart)")


class RequestError(Exception):
    """Bad input: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def check_packages() -> None:
    """:class:`ImportError` with :data:`MISSING_PACKAGES` when fastapi, uvicorn or python-multipart is missing."""
    import importlib.util

    for name in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(name) is None:
            raise ImportError(MISSING_PACKAGES)
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        raise ImportError(MISSING_PACKAGES)


def safe_relative(path: str) -> bool:
    """Whether an index row's ``path`` stays inside the indexed folder and names an image: relative, no ``..``, no
    empty or ``.`` part, an image extension (an edited ``items.jsonl`` cannot make the server read other files)."""
    if not path or "\\" in path or "\x00" in path:
        return False
    pure = PurePosixPath(path)
    return (not pure.is_absolute() and all(part not in ("", ".", "..") for part in path.split("/"))
            and pure.suffix.lower() in IMAGE_EXTENSIONS)


def model_card(searcher: Searcher) -> dict[str, Any]:
    """What the page's card shows: the method, its checkpoint (file, SHA-256 prefix, epoch / step), the data it was
    trained on (when the checkpoint's ``datamodule_hyper_parameters`` record it), the index (images, type, size)."""
    index, loaded = searcher.index, searcher.loaded
    header = read_checkpoint_header(loaded.checkpoint.path)
    data = header.get("datamodule_hyper_parameters") or {}
    epoch, step = header.get("epoch"), header.get("global_step")
    del header
    trained_on = None
    if isinstance(data, dict) and data.get("dataset"):
        trained_on = {"dataset": str(data["dataset"]), "root": None if data.get("root") is None else str(data["root"]),
                      "generated": data.get("generate") if isinstance(data.get("generate"), dict) else None}
    search = index.header["search"]
    kind = (f"FAISS {search['factory']} (cosine)" if search["kind"] == "faiss"
            else "exact, through the method's own similarity")
    prep = index.header["preprocessing"]
    return {
        "method": loaded.method,
        "class_path": loaded.class_path,
        "similarity": loaded.similarity,
        "composed_queries": loaded.composed,
        "checkpoint": {"file": Path(loaded.checkpoint.path).name, "path": loaded.checkpoint.path,
                       "sha256": loaded.checkpoint.sha256[:12], "size": loaded.checkpoint.size,
                       "epoch": epoch if isinstance(epoch, int) else None,
                       "global_step": step if isinstance(step, int) else None},
        "trained_on": trained_on,
        "index": {"folder": str(index.folder), "images_root": str(index.images_root), "images": len(index),
                  "skipped": len(index.header.get("skipped", [])), "type": kind, "dim": int(index.header["dim"]),
                  "updated": index.header.get("updated")},
        "image_size": list(prep["image_size"]),
        "crop": prep.get("crop"),
        "max_k": MAX_K,
    }


def _card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """The card as ``(label, text)`` rows for the page."""
    ckpt, index, trained = card["checkpoint"], card["index"], card["trained_on"]
    progress = ", ".join(f"{name} {ckpt[key]}" for name, key in (("epoch", "epoch"), ("step", "global_step"))
                         if ckpt[key] is not None)
    if trained is None:
        data = "not recorded in the checkpoint"
    else:
        data = trained["dataset"] + (f" (root {trained['root']})" if trained["root"] and trained["root"] != trained["dataset"] else "")
        if trained["generated"]:
            data += " generated with " + ", ".join(f"{k}={v}" for k, v in trained["generated"].items())
    crop = card["crop"]
    size = f"{card['image_size'][0]} x {card['image_size'][1]}" + (f", crop {crop}" if crop else "")
    return [
        ("method", card["method"] + (" (composed queries)" if card["composed_queries"] else "")),
        ("checkpoint", ckpt["file"] + (f" ({progress})" if progress else "")),
        ("sha256", ckpt["sha256"] + "..."),
        ("trained on", data),
        ("images", f"{index['images']}" + (f" ({index['skipped']} unreadable skipped)" if index["skipped"] else "")),
        ("folder", index["images_root"]),
        ("image size", size),
        ("index", f"{index['type']}, {index['dim']}-d"),
    ]


def render_page(card: dict[str, Any]) -> str:
    """The page's HTML: :data:`TEMPLATE` with the card and, for methods with composed queries, the upload field."""
    rows = "\n".join(f'    <dt>{html.escape(label)}</dt><dd data-field="{html.escape(label)}">{html.escape(text)}</dd>'
                     for label, text in _card_rows(card))
    upload = ""
    if card["composed_queries"]:
        upload = ('    <div id="reference-row"><label for="reference">reference image (optional): the text then says '
                  'what to change</label>\n      <input id="reference" name="file" type="file" accept="image/*">\n'
                  '      <img id="reference-preview" alt="reference"></div>')
    title = f"{card['method']} over {card['index']['images']} images"
    page = TEMPLATE.read_text(encoding="utf-8")
    for key, value in (("TITLE", html.escape(title)), ("MAX_K", str(MAX_K)), ("DEFAULT_K", str(DEFAULT_K)),
                       ("UPLOAD", upload), ("CARD", rows)):
        page = page.replace("{{" + key + "}}", value)
    return page


def parse_k(raw: Any) -> int:
    """``k`` from a form string or a JSON number: :class:`RequestError` unless a whole number in 1..:data:`MAX_K`."""
    if raw is None or raw == "":
        return DEFAULT_K
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or (isinstance(raw, str) and not raw.strip().isdigit()):
        raise RequestError(f"k must be a whole number from 1 to {MAX_K}, got {raw!r}")
    k = int(raw)
    if not 1 <= k <= MAX_K:
        raise RequestError(f"k must be from 1 to {MAX_K}, got {k}")
    return k


def parse_text(raw: Any) -> str:
    """The query text: :class:`RequestError` when missing, not a string, empty or longer than :data:`MAX_TEXT`."""
    if raw is not None and not isinstance(raw, str):
        raise RequestError(f"text must be a string, got {type(raw).__name__}")
    text = raw or ""
    try:
        check_query(text, 1)
    except ValueError as error:
        raise RequestError(str(error)) from None
    if len(text) > MAX_TEXT:
        raise RequestError(f"the query text is too long ({len(text)} characters; at most {MAX_TEXT})")
    return text


def check_image_bytes(data: bytes, name: str) -> None:
    """:class:`RequestError` ``not an image: NAME (why)`` unless ``data`` decodes as an image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(f"not an image: {name} (the file is empty)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB")
    except UnidentifiedImageError:
        raise RequestError(f"not an image: {name} (not a format Pillow can read)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RequestError(f"not an image: {name} ({error})") from None


class SearchService:
    """The loaded :class:`Searcher` and the index rows the server may serve; searches run one at a time."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        searcher.loaded  # noqa: B018  load the method now, not on the first query
        self.card = model_card(searcher)
        self.page = render_page(self.card)
        root = searcher.index.images_root
        self.files: list[Path | None] = [root / item.path if safe_relative(item.path) else None
                                         for item in searcher.index.items]
        self.rows = {item.path: row for row, item in enumerate(searcher.index.items)}
        self.lock = threading.Lock()

    def search(self, text: str, k: int, upload: tuple[str, bytes] | None) -> dict[str, Any]:
        """Rank the index for ``text`` (and the uploaded reference ``(file name, bytes)``): the JSON answer."""
        card = self.card
        if upload is not None and not card["composed_queries"]:
            raise RequestError(f"method {card['method']} does not take a reference image (no composed queries): "
                               "search with text alone")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="xsearch-serve-") as tmp:
            reference = None
            if upload is not None:
                name, data = upload
                check_image_bytes(data, name)
                reference = Path(tmp) / ("reference" + (PurePosixPath(name).suffix.lower() or ".img"))
                reference.write_bytes(data)
            with self.lock:
                result = self.searcher.search(text, k, reference)
        hits = [{"rank": hit.rank, "score": hit.score, "path": hit.path, "name": PurePosixPath(hit.path).name,
                 "row": self.rows[hit.path], "image": f"/image/{self.rows[hit.path]}"} for hit in result.hits]
        return {"query": text, "k": k, "method": result.method, "reference": upload[0] if upload else None,
                "seconds": time.perf_counter() - start, "results": hits}

    def image_file(self, row: str) -> Path:
        """The indexed file of index row ``row`` (a decimal string): :class:`RequestError` 404 for anything else."""
        count = len(self.files)
        if not row.isascii() or not row.isdigit() or int(row) >= count:
            raise RequestError(f"no indexed image at row {row!r}: the index has rows 0 to {count - 1}", 404)
        file = self.files[int(row)]
        if file is None:
            raise RequestError(f"row {int(row)} of the index names a path outside the indexed folder: refused", 404)
        if not file.is_file():
            raise RequestError(f"indexed image {self.searcher.index.items[int(row)].path} is gone from "
                               f"{self.searcher.index.images_root}: update the index with xsearch index", 404)
        return file


def create_app(searcher: Searcher) -> Any:
    """The FastAPI app over ``searcher`` (its method is loaded here, once)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    service = SearchService(searcher)
    app = FastAPI(title="xsearch", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{request.method} {request.url.path}: {error.detail}"}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"bad request: {error.errors()}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(service.page)

    @app.get("/api/card")
    async def card() -> JSONResponse:
        return JSONResponse(service.card)

    @app.get("/image/{row}")
    async def image(row: str) -> FileResponse:
        return FileResponse(service.image_file(row))

    @app.post("/api/search")
    async def api_search(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload: tuple[str, bytes] | None = None
        if kind == "application/json":
            try:
                body = await request.json()
            except ValueError as error:
                raise RequestError(f"the request body is not valid JSON ({error})") from None
            if not isinstance(body, dict):
                raise RequestError(f"the JSON body must be an object like {{\"text\": \"...\", \"k\": 20}}, got "
                                   f"{type(body).__name__}")
            if body.get("file") is not None:
                raise RequestError("a reference image must be uploaded as multipart/form-data field 'file', not in JSON")
            text, raw_k = body.get("text"), body.get("k")
        elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form()
            text, raw_k, file = form.get("text"), form.get("k"), form.get("file")
            if isinstance(file, UploadFile):
                data = await file.read(MAX_UPLOAD + 1)
                if len(data) > MAX_UPLOAD:
                    raise RequestError(f"reference image {file.filename} is over {MAX_UPLOAD // 2**20} MB", 413)
                if file.filename or data:  # a file input left empty sends a nameless, empty part
                    upload = (file.filename or "upload", data)
            elif file:
                raise RequestError("file must be an uploaded image file (multipart/form-data), not text")
        else:
            raise RequestError("send the query as a form (multipart/form-data or application/x-www-form-urlencoded) "
                               f"or as JSON, not {kind or 'an untyped body'}", 415)
        text, k = parse_text(text), parse_k(raw_k)
        return JSONResponse(await run_in_threadpool(service.search, text, k, upload))

    return app


def bound_socket(host: str, port: int) -> Any:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one); :class:`OSError` naming the address."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror or error}): choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@contextmanager
def background_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread while the block runs; yields its base URL (``http://host:port``)."""
    import uvicorn

    sock = bound_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="xsearch-serve")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, ckpt: str | Path | None = None,
          device: str | None = None) -> None:
    """Load the index and its method, then serve the page until interrupted (Ctrl-C)."""
    check_packages()
    import uvicorn

    searcher = Searcher(index_dir, ckpt, device)
    app = create_app(searcher)
    sock = bound_socket(host, port)
    card = app.state.service.card
    print(f"[xsearch] serving {card['index']['images']} images of {searcher.index.folder} with {card['method']} "
          f"at http://{host}:{sock.getsockname()[1]} (Ctrl-C stops)", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then raises the Ctrl-C again
        pass
    finally:
        sock.close()
    print("[xsearch] stopped", flush=True)
