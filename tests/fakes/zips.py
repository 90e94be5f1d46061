"""Hostile zip archives built byte by byte, for the upload tests."""

from __future__ import annotations

import struct
import zlib


def overlapping_zip(entries: int, member_bytes: int) -> bytes:
    """Every directory entry points at the same deflated member: a few kilobytes that inflate
    to ``entries * member_bytes`` (zipfile before Python 3.12 does not notice the overlap)."""
    zeros = bytes(member_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(zeros) + compressor.flush()
    crc, name = zlib.crc32(zeros), b"a.png"
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(deflated), member_bytes, len(name), 0
    )
    central = b"".join(
        struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(deflated), member_bytes,
            len(name), 0, 0, 0, 0, 0, 0,
        )
        + name
        for _ in range(entries)
    )  # fmt: skip
    body = local + name + deflated
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(central), len(body), 0)
    return body + central + end
