"""``xsearch index|search|serve|encode``: search your own images with a trained checkpoint (:mod:`xsearch.search`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


PICTURE_FORMATS = (".png", ".jpg", ".jpeg", ".webp")


def _index_command(argv: list[str]) -> int:
    from xsearch.search.images import shown_name
    from xsearch.search.index import build_index

    parser = argparse.ArgumentParser(prog="xsearch index", description="Embed every image under a folder with a trained "
                                     "checkpoint and write a search index; rerun to add new or changed images.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by xsearch fit")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively: jpg, jpeg, png, bmp, webp)")
    parser.add_argument("--out", required=True, help="index folder (created; an existing index of the same folder and "
                        "checkpoint is updated)")
    parser.add_argument("--batch-size", type=int, default=64, help="images embedded at once")
    parser.add_argument("--factory", default=None, help="FAISS index_factory string (inner product over normalised "
                        "embeddings): Flat (default, exact), IVF{n},Flat, HNSW32...")
    parser.add_argument("--rebuild", action="store_true", help="replace an index of another checkpoint or folder")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes (0: inline)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    args = parser.parse_args(argv)
    report = build_index(args.ckpt, args.images, args.out, args.batch_size, args.factory, args.rebuild, args.workers,
                         args.device)
    if not report.written:
        print(f"[xsearch] {report.folder} is up to date: {report.total} images, {len(report.skipped)} skipped")
    else:
        print(f"[xsearch] indexed {report.total} images in {report.folder} ({report.embedded} embedded, {report.kept} "
              f"unchanged, {report.removed} removed, {len(report.skipped)} skipped as unreadable"
              f"{': ' + ', '.join(shown_name(p) for p, _ in report.skipped[:5]) if report.skipped else ''}"
              f"{', ...' if len(report.skipped) > 5 else ''})")
    return 0


def _search_command(argv: list[str]) -> int:
    from xsearch.atomic import atomic_path
    from xsearch.search.images import shown_name
    from xsearch.search.picture import results_picture, thumb_size_for
    from xsearch.search.query import Searcher, check_query

    parser = argparse.ArgumentParser(prog="xsearch search", description="Rank the images of an index for a text "
                                     "query (or a reference image + modification text).")
    parser.add_argument("index", help="index folder written by xsearch index")
    parser.add_argument("query", help="what to look for, e.g. \"a woman in a red coat\"")
    parser.add_argument("--image", default=None, metavar="REF", help="reference image of a composed query (methods "
                        "with composed queries, e.g. xmodal); the query text then says what to change")
    parser.add_argument("--k", type=int, default=20, help="results shown")
    parser.add_argument("--out", default=None, help="also save a picture of the results (.png, .jpg, .webp)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--ckpt", default=None, help="the index's checkpoint, when it moved since indexing")
    parser.add_argument("--nprobe", type=int, default=None, help="inverted lists visited (IVF indexes)")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    args = parser.parse_args(argv)
    check_query(args.query, args.k)
    if args.out is not None and Path(args.out).suffix.lower() not in PICTURE_FORMATS:
        raise ValueError(f"--out {args.out}: expected a picture file ({', '.join(PICTURE_FORMATS)})")
    searcher = Searcher(args.index, args.ckpt, args.device)
    result = searcher.search(args.query, args.k, args.image, args.nprobe)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        for hit in result.hits:
            print(f"{hit.rank:>4}  {hit.score:.4f}  {shown_name(hit.file)}")  # one line per result, whatever the name
    if args.out is not None:
        picture = results_picture(args.query, [h.file for h in result.hits], [h.score for h in result.hits],
                                  [h.path for h in result.hits], args.image,
                                  thumb_size_for(searcher.index.header["preprocessing"]["image_size"]))
        with atomic_path(args.out) as tmp:
            picture.save(tmp)
        print(f"[xsearch] wrote {args.out}", file=sys.stderr)
    return 0


def _serve_command(argv: list[str]) -> int:
    """``xsearch serve INDEX_DIR``: the search page on localhost (:mod:`xsearch.search.serve`, extra ``serve``)."""
    from xsearch.search.serve import check_packages, serve

    parser = argparse.ArgumentParser(prog="xsearch serve", description="A web page to search an index: text box, "
                                     "reference-image upload (methods with composed queries), result grid, model card.")
    parser.add_argument("index", help="index folder written by xsearch index")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; the page serves the indexed images to whoever can reach it). 0.0.0.0 or :: listen on "
                        "every address and also answer requests that name the machine by any IP address; names "
                        "(myhost.lan) still need --allow-host")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a Host name the server also answers to (repeatable; the port does not matter). Without "
                        "it only localhost, 127.0.0.1, ::1 and the --host address are answered, others get 400: a web "
                        "page cannot reach the server through a DNS name of its own (DNS rebinding)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one)")
    parser.add_argument("--ckpt", default=None, help="the index's checkpoint, when it moved since indexing")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    args = parser.parse_args(argv)
    try:
        check_packages()
    except ImportError as error:
        print(f"xsearch: error: {error}", file=sys.stderr)
        return 2
    serve(args.index, args.host, args.port, args.ckpt, args.device, args.allow_host)
    return 0


def _encode_command(argv: list[str]) -> int:
    from xsearch.search.encode import encode_to_file

    parser = argparse.ArgumentParser(prog="xsearch encode", description="Write a method's embeddings of an image "
                                     "folder or a caption file, with their ids.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by xsearch fit")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", default=None, help="folder of images (recursively)")
    source.add_argument("--captions", default=None, help=".txt (one caption per line) or .jsonl ({\"id\", \"text\"} per line)")
    parser.add_argument("--out", required=True, help="FILE.safetensors or FILE.parquet (needs pyarrow)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    args = parser.parse_args(argv)
    out, embeddings, metadata = encode_to_file(args.ckpt, args.out, args.images, args.captions, args.batch_size,
                                               args.workers, args.device)
    skipped = len(metadata.get("skipped", []))
    print(f"[xsearch] wrote {embeddings.shape[0]} x {embeddings.shape[1]} {metadata['kind']} embeddings of "
          f"{metadata['method']} to {out}" + (f" ({skipped} unreadable images skipped, listed in its metadata)" if skipped else ""))
    return 0

