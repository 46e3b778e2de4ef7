"""``xsearch inspect`` (the failure browser of a test run) and ``xsearch export`` (ONNX towers of a checkpoint)."""
from __future__ import annotations

import argparse


def _inspect_command(argv: list[str]) -> int:
    """``xsearch inspect RUN_OR_FILE --out report.html``: the failure browser of a test run (:mod:`xsearch.failures`)."""
    from xsearch.failures import write_page

    parser = argparse.ArgumentParser(prog="xsearch inspect", description="HTML failure browser of a test run: every "
                                     "query with its AP, first correct rank and top-10 gallery thumbnails.")
    parser.add_argument("run", metavar="RUN_OR_FILE", help="a run folder (holding test_rankings.npz) or the file itself")
    parser.add_argument("--out", required=True, help="HTML file to write (self-contained)")
    parser.add_argument("--thumb-height", type=int, default=64, help="thumbnail height in pixels")
    parser.add_argument("--worst", type=int, default=None, metavar="N", help="only the N queries with the lowest AP")
    args = parser.parse_args(argv)
    out = write_page(args.run, args.out, args.thumb_height, args.worst)
    print(f"[xsearch] wrote {out}")
    return 0


def _export_command(argv: list[str]) -> int:
    """``xsearch export --ckpt CKPT --onnx OUT_DIR``: both towers as ONNX, checked with onnxruntime (:mod:`xsearch.onnx_export`)."""
    from xsearch.onnx_export import DEFAULT_OPSET, export_onnx

    parser = argparse.ArgumentParser(prog="xsearch export", description="Write a checkpoint's image and text towers "
                                     "as ONNX (+ tokenizer files and card.json), checked against PyTorch.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by xsearch fit")
    parser.add_argument("--onnx", required=True, metavar="OUT_DIR", help="folder for image.onnx, text.onnx, tokenizer/, card.json")
    parser.add_argument("--image-dtype", choices=["uint8", "float32"], default="uint8",
                        help="image input: uint8 0-255 (default) or float32 0-1")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17 or more)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |onnxruntime - PyTorch|")
    args = parser.parse_args(argv)
    card = export_onnx(args.ckpt, args.onnx, args.image_dtype, args.opset, args.tolerance)
    print(f"[xsearch] {card['method']}: wrote {args.onnx}/{{image.onnx,text.onnx,card.json}} ({card['embedding_dim']}-d)")
    return 0

