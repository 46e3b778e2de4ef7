"""Hostile inputs shared by the tests: files made to break a reader, small enough to build in microseconds."""
from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 15_000, height: int = 15_000) -> bytes:
    """A valid PNG header declaring ``width x height`` grey pixels (225 megapixels by default) followed by one
    compressed row of zeros: a few dozen bytes that claim gigabytes once decoded (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
            + _chunk(b"IEND", b""))
