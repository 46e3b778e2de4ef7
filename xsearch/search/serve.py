"""``xsearch serve``: a one-page web app over an index (FastAPI + uvicorn, optional extra ``serve``).

The index and its method are loaded once (:class:`~xsearch.search.query.Searcher`); every request reuses them.

- ``GET /``: the page (text box, reference-image upload when the method has composed queries, result grid, card).
- ``POST /api/search``: form (``text``, ``k``, optional ``file``) or JSON (``{"text", "k"}``) -> ranked hits.
- ``GET /image/{row}``: the indexed image of that index row, and nothing else (no path from the request is opened).
- ``GET /api/card``: method, checkpoint, training data, index size and type.

Bad input is answered with a 4xx and ``{"error": "..."}``, the message the page shows.

Hardening (:class:`Guard`, in front of every route):

- Host check: a request is answered only when its ``Host`` header (port ignored) is a name the server listens on:
  ``localhost``, ``127.0.0.1``, ``::1``, the ``--host`` address and the names given with ``--allow-host``; others get
  400 naming the host and ``--allow-host``. A web page the user visits cannot rebind its own DNS name to this server
  and read the card, search or fetch images. Listening on every address (``--host 0.0.0.0`` or ``::``) also accepts
  a ``Host`` that is an IP address: DNS rebinding needs a name, and an address a browser was pointed at directly is
  its own origin; host *names* of the machine (``myhost.lan``) still need ``--allow-host``.
- Security headers on every response (page, JSON, images, errors): a Content-Security-Policy allowing this origin
  only, the page's own inline ``<style>`` and ``<script>`` by their SHA-256 and nothing else inline, no framing;
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY``,
  ``Cross-Origin-Resource-Policy: same-origin``.
- ``GET /image/{row}`` serves a regular file whose resolved path (links followed) lies inside the resolved indexed
  folder and has an image extension: a link to another image of the folder is served, a link out of it is refused.
- Searches (and their uploads) take one of :data:`SEARCH_SLOTS` slots; a request that finds none free within
  :data:`SLOT_WAIT` seconds gets 503. An upload over :data:`MAX_UPLOAD_PIXELS` pixels gets 413, judged from its
  header before any decoding.
"""

import asyncio
import base64
import hashlib
import html
import io
import ipaddress
import re
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
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
MAX_FORM_OVERHEAD = 64 * 1024
"""Bytes a search request may carry besides the reference image (text, k, multipart boundaries)."""
MAX_UPLOAD_PIXELS = 40_000_000
"""Largest reference image accepted, in pixels (width x height, read from the file's header before decoding; 40
megapixels decode to 120 MB of RGB)."""
SEARCH_SLOTS = 4
"""Searches (with their uploads) handled at once; searches themselves run one at a time, the others wait."""
SLOT_WAIT = 2.0
"""Seconds a search waits for a free slot before it is answered 503 (server busy)."""
SLOT_POLL = 0.02
"""Seconds between two looks for a free slot."""
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Host names every server answers to."""
ANY_ADDRESS = ("0.0.0.0", "::", "")
"""Listen addresses meaning every address of the machine."""
TEMPLATE = Path(__file__).with_name("serve.html")
MISSING_PACKAGES = ("xsearch serve needs fastapi, uvicorn and python-multipart: pip install 'xsearch[serve]' "
                    "(or pip install fastapi uvicorn python-multipart)")


class RequestError(Exception):
    """Bad input: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def host_name(value: str) -> str:
    """The host of a ``Host`` header or an address, lower-case, without port or IPv6 brackets:
    ``Example.org:8000`` -> ``example.org``, ``[::1]:8000`` -> ``::1``, ``::1`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_ip_address(name: str) -> bool:
    """Whether ``name`` (as :func:`host_name` returns it) is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


HOST_VALUE = re.compile(r"(?:\[(?P<bracketed>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?))(?::[0-9]{1,5})?"
                        r"|(?P<bare>[0-9a-f:.]*:[0-9a-f:.]*)")
"""An ``--allow-host`` value, lower-cased: a host name or IPv4 address, or a bracketed IPv6 address, each with an
optional port; or a bare IPv6 address."""


def allowed_host(value: str) -> str:
    """An ``--allow-host`` value as :func:`host_name` returns it: :class:`ValueError` unless a host name (letters,
    digits, ``.``, ``-``, ``_``) or an IP address, with an optional ``:port`` (:data:`HOST_VALUE`)."""
    match = HOST_VALUE.fullmatch(value.strip().lower())
    name = host_name(value)
    if match is None or (match["name"] is None and not is_ip_address(name)):
        raise ValueError("--allow-host takes a host name or an IP address (e.g. myhost.lan or 192.168.1.5), "
                         f"got {value!r}")
    return name


@dataclass(frozen=True)
class HostPolicy:
    """The ``Host`` names a server answers to: ``names``, and any IP address when ``any_address``."""

    names: tuple[str, ...]
    any_address: bool

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header (``None``: none) is answered."""
        name = host_name(header or "")
        return bool(name) and (name in self.names or (self.any_address and is_ip_address(name)))

    def refusal(self, header: str | None) -> str:
        """The one-line error for a request whose ``Host`` :meth:`allows` refuses."""
        answers = ", ".join(self.names) + (" or any IP address" if self.any_address else "")
        name = host_name(header or "")[:200]
        if not name:
            return f"the request has no Host header: this server answers to {answers}"
        return (f"Host {name!r} is not a name this server answers to ({answers}): to reach it by that name, "
                f"start xsearch serve with --allow-host {name}")


def host_policy(host: str = "127.0.0.1", allowed_hosts: Iterable[str] = ()) -> HostPolicy:
    """The :class:`HostPolicy` of a server listening on ``host``: :data:`LOCAL_HOSTS`, ``host`` itself (unless it
    is one of :data:`ANY_ADDRESS`, which admits any IP address instead), and ``allowed_hosts``
    (:func:`allowed_host`: :class:`ValueError` for a value that is not a host name or address)."""
    listen = host_name(host)
    wildcard = listen in ANY_ADDRESS
    names = [*LOCAL_HOSTS, *([] if wildcard else [listen]), *(allowed_host(name) for name in allowed_hosts)]
    return HostPolicy(tuple(dict.fromkeys(names)), wildcard)


def content_security_policy(page: str) -> str:
    """The Content-Security-Policy of every response: this origin only (``fetch`` included), images also from
    ``data:`` / ``blob:`` (the upload preview), the inline ``<style>`` and ``<script>`` blocks of ``page`` by their
    SHA-256 (no other inline code, no ``eval``), no plugins, no ``<base>``, forms to this origin, no framing."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", page, flags=re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                        for body in bodies) or "'none'"

    return (f"default-src 'self'; img-src 'self' data: blob:; style-src {hashes('style')}; "
            f"script-src {hashes('script')}; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


def security_headers(csp: str) -> dict[str, str]:
    """The headers every response carries, with ``csp`` as its Content-Security-Policy."""
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cross-Origin-Resource-Policy": "same-origin"}


class Guard:
    """ASGI middleware: answers 400 ``{"error": ...}`` (:meth:`HostPolicy.refusal`) to a request whose ``Host``
    ``policy`` refuses, and adds ``headers`` to every response that does not set them itself."""

    def __init__(self, app: Any, policy: HostPolicy, headers: dict[str, str]) -> None:
        from starlette.responses import JSONResponse

        self.app, self.policy, self.response = app, policy, JSONResponse
        self.headers = [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((value.decode("latin-1") for key, value in scope["headers"] if key == b"host"), None)
        if not self.policy.allows(host):
            refusal = self.response({"error": self.policy.refusal(host)}, status_code=400)
            await refusal(scope, receive, self._send(send))
            return
        await self.app(scope, receive, self._send(send))

    def _send(self, send: Any) -> Any:
        """``send`` adding the missing :attr:`headers` to the response start."""

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {key.lower() for key, _ in headers}
                message = {**message, "headers": headers + [item for item in self.headers if item[0] not in present]}
            await send(message)

        return with_headers


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
        "interpolation": prep.get("interpolation", "bicubic"),
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


_PILLOW_WARNINGS = threading.Lock()
"""Held while :func:`check_image_bytes` turns Pillow's decompression-bomb warning into an error (warning filters are
process-wide)."""


def check_pixels(size: tuple[int, int], name: str) -> None:
    """:class:`RequestError` 413 when an image of ``size`` (width, height) has over :data:`MAX_UPLOAD_PIXELS` pixels."""
    width, height = size
    if width * height > MAX_UPLOAD_PIXELS:
        raise RequestError(f"reference image {name} is {width} x {height} = {width * height:,} pixels; at most "
                           f"{MAX_UPLOAD_PIXELS:,} pixels are accepted", 413)


def check_image_bytes(data: bytes, name: str) -> None:
    """:class:`RequestError` ``not an image: NAME (why)`` unless ``data`` decodes as an image; 413
    (:func:`check_pixels`) when its header says it has too many pixels, before decoding. Pillow's decompression-bomb error and warning
    count as not an image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(f"not an image: {name} (the file is empty)")
    try:
        with _PILLOW_WARNINGS, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                check_pixels(image.size, name)
                image.convert("RGB")
    except UnidentifiedImageError:
        raise RequestError(f"not an image: {name} (not a format Pillow can read)") from None
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RequestError(f"not an image: {name} ({error})") from None


class SearchService:
    """The loaded :class:`Searcher` and the index rows the server may serve; searches run one at a time, at most
    :data:`SEARCH_SLOTS` (read when it is made) are taken in at once (:meth:`slot`)."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        searcher.loaded  # noqa: B018  load the method now, not on the first query
        self.card = model_card(searcher)
        self.page = render_page(self.card)
        root = searcher.index.images_root
        self.root = root.resolve()
        self.files: list[Path | None] = [root / item.path if safe_relative(item.path) else None
                                         for item in searcher.index.items]
        self.rows = {item.path: row for row, item in enumerate(searcher.index.items)}
        self.lock = threading.Lock()
        self.slot_count = SEARCH_SLOTS
        self.slots = threading.BoundedSemaphore(self.slot_count)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the search slots while the block runs: :class:`RequestError` 503 when none is free within
        :data:`SLOT_WAIT` seconds."""
        deadline = time.monotonic() + SLOT_WAIT
        while not self.slots.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise RequestError(f"server busy: all {self.slot_count} search slots are taken and none came free "
                                   f"within {SLOT_WAIT:g} s; try again in a moment", 503)
            await asyncio.sleep(SLOT_POLL)
        try:
            yield
        finally:
            self.slots.release()

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
        """The resolved indexed file of index row ``row`` (a decimal string): :class:`RequestError` 404 unless a
        regular file with an image extension inside the resolved indexed folder (links are followed, then checked)."""
        count = len(self.files)
        if not row.isascii() or not row.isdigit() or int(row) >= count:
            raise RequestError(f"no indexed image at row {row!r}: the index has rows 0 to {count - 1}", 404)
        file = self.files[int(row)]
        if file is None:
            raise RequestError(f"row {int(row)} of the index names a path outside the indexed folder: refused", 404)
        path, root = self.searcher.index.items[int(row)].path, self.searcher.index.images_root
        try:
            real = file.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, a broken link, a link loop
            real = None
        if real is None or not real.is_file():
            raise RequestError(f"indexed image {path} is gone from {root}: update the index with xsearch index", 404)
        if not real.is_relative_to(self.root):
            raise RequestError(f"indexed image {path} is a link to a file outside the indexed folder {root}: refused",
                               404)
        if real.suffix.lower() not in IMAGE_EXTENSIONS:
            raise RequestError(f"indexed image {path} is a link to a file without an image extension "
                               f"({', '.join(IMAGE_EXTENSIONS)}): refused", 404)
        return real


def create_app(searcher: Searcher, host: str = "127.0.0.1", allowed_hosts: Iterable[str] = ()) -> Any:
    """The FastAPI app over ``searcher`` (its method is loaded here, once), behind a :class:`Guard` answering the
    ``Host`` names of :func:`host_policy` (``host``: the address it listens on; ``allowed_hosts``: more names)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    policy = host_policy(host, allowed_hosts)
    service = SearchService(searcher)
    headers = security_headers(content_security_policy(service.page))
    app = FastAPI(title="xsearch", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, policy=policy, headers=headers)
    app.state.service, app.state.host_policy = service, policy

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
    async def internal_error(request: Request, error: Exception) -> JSONResponse:  # runs outside the Guard
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500,
                            headers=headers)

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
        async with service.slot():
            return await search_request(request)

    async def search_request(request: Request) -> JSONResponse:
        """Parse the query of ``request`` (form or JSON) and answer it; a body declared larger than an upload may be
        is refused before it is read."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_UPLOAD + MAX_FORM_OVERHEAD:
            raise RequestError(f"the request body is {int(length):,} bytes; a search with a reference image may be at "
                               f"most {(MAX_UPLOAD + MAX_FORM_OVERHEAD):,}", 413)
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
          device: str | None = None, allowed_hosts: Iterable[str] = ()) -> None:
    """Load the index and its method, then serve the page until interrupted (Ctrl-C); it answers the ``Host`` names of
    :func:`host_policy` (a bad ``allowed_hosts`` value is a :class:`ValueError` before anything loads)."""
    check_packages()
    import uvicorn

    allowed_hosts = list(allowed_hosts)
    host_policy(host, allowed_hosts)
    searcher = Searcher(index_dir, ckpt, device)
    app = create_app(searcher, host, allowed_hosts)
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
