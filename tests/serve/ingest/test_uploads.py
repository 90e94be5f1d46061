"""Judging uploads: single images decoded in memory, zip archives read member by member.

Every hostile input is built here, in code: crafted headers, patched zip records, bombs that
are kilobytes on disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import numpy as np
import pytest
from PIL import Image

import serve.ingest.uploads
from labeler.core.exceptions import ImageError, InputError
from labeler.core.images import decode_image_bytes
from serve.ingest.uploads import (
    ImageInfo,
    RejectedMember,
    UploadBudget,
    UploadLimitReached,
    ZipMember,
    _read_member,
    check_image_bytes,
    is_zip,
    iter_zip_members,
    shown_name,
)
from tests.fakes.images import encoded, noise_image, png_claiming
from tests.fakes.zips import overlapping_zip

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 10_000_000

# ----------------------------------------------------------------------------- image factories


def _blank_png(width: int, height: int) -> bytes:
    """A real, fully decodable bilevel PNG: millions of pixels in a few kilobytes."""
    return encoded(Image.new("1", (width, height)), "PNG", optimize=True)


def _rotated_jpeg() -> bytes:
    """A JPEG whose pixels are stored 64 wide x 96 high, displayed 96 x 64 (EXIF orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encoded(noise_image(64, 96), "JPEG", exif=exif.tobytes(), quality=90)


def _mpo() -> bytes:
    """A phone's multi-picture JPEG: Pillow calls it MPO; it is stored and read as a JPEG."""
    frames = [noise_image(48, 32, seed=1), noise_image(48, 32, seed=2)]
    return encoded(frames[0], "MPO", save_all=True, append_images=frames[1:])


def _truncated_jpeg() -> bytes:
    data = encoded(noise_image(256, 192), "JPEG", quality=90)
    return data[: len(data) // 2]


def _jpeg_with_zero_size() -> bytes:
    data = bytearray(encoded(noise_image(), "JPEG"))
    start = data.index(b"\xff\xc0") + 5  # frame header: height and width
    data[start : start + 4] = bytes(4)
    return bytes(data)


# ----------------------------------------------------------------------------- check_image_bytes


@pytest.mark.parametrize(
    ("make", "fmt", "extension", "image_wh"),
    [
        pytest.param(lambda: encoded(noise_image(), "PNG"), "PNG", ".png", (96, 64), id="png"),
        pytest.param(lambda: encoded(noise_image(), "JPEG"), "JPEG", ".jpg", (96, 64), id="jpeg"),
        pytest.param(lambda: encoded(noise_image(), "WEBP"), "WEBP", ".webp", (96, 64), id="webp"),
        pytest.param(lambda: encoded(noise_image(), "BMP"), "BMP", ".bmp", (96, 64), id="bmp"),
        pytest.param(lambda: encoded(noise_image(), "TIFF"), "TIFF", ".tif", (96, 64), id="tiff"),
        pytest.param(_mpo, "JPEG", ".jpg", (48, 32), id="mpo-is-a-jpeg"),
        pytest.param(_rotated_jpeg, "JPEG", ".jpg", (96, 64), id="exif-rotated-jpeg"),
        pytest.param(lambda: _blank_png(2000, 1500), "PNG", ".png", (2000, 1500), id="sparse"),
    ],
)
def test_check_image_bytes_describes_a_usable_image(
    make: Callable[[], bytes], fmt: str, extension: str, image_wh: tuple[int, int]
) -> None:
    data = make()

    info = check_image_bytes(data, filename="upload", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)

    assert info == ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        width=image_wh[0],
        height=image_wh[1],
        format=fmt,
        extension=extension,
        size_bytes=len(data),
    )


def test_exif_orientation_swaps_width_and_height() -> None:
    data = _rotated_jpeg()

    info = check_image_bytes(data, filename="r.jpg", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)

    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == (64, 96)
    assert (info.width, info.height) == (96, 64)


# (file name, bytes factory, max_bytes, max_pixels, reason, words the detail must contain)
BAD_IMAGES = [
    pytest.param("empty.jpg", lambda: b"", MAX_BYTES, MAX_PIXELS, "zero_bytes", "", id="zero"),
    pytest.param(
        "doc.jpg",
        lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        MAX_BYTES,
        MAX_PIXELS,
        "not_an_image",
        "PDF",
        id="pdf-named-jpg",
    ),
    pytest.param(
        "page.jpg",
        lambda: b"\n  <!DOCTYPE html><html><body>404 Not Found</body></html>",
        MAX_BYTES,
        MAX_PIXELS,
        "not_an_image",
        "HTML",
        id="html-named-jpg",
    ),
    pytest.param(
        "tool.jpg",
        lambda: b"\x7fELF\x02\x01\x01" + bytes(57),
        MAX_BYTES,
        MAX_PIXELS,
        "not_an_image",
        "ELF",
        id="elf-named-jpg",
    ),
    pytest.param(
        "notes.jpg",
        lambda: "just some notes, café\n".encode(),
        MAX_BYTES,
        MAX_PIXELS,
        "not_an_image",
        "text",
        id="text-named-jpg",
    ),
    pytest.param(
        "noise.jpg",
        lambda: bytes(range(128, 256)) * 4,
        MAX_BYTES,
        MAX_PIXELS,
        "not_an_image",
        "accepted: JPEG",
        id="unknown-binary",
    ),
    pytest.param(
        "a.zip",
        lambda: _zip([("a.png", encoded(noise_image(), "PNG"))]),
        MAX_BYTES,
        MAX_PIXELS,
        "not_an_image",
        "zip archive",
        id="zip-is-not-an-image",
    ),
    pytest.param(
        # Pillow's EPS decoder would run Ghostscript; it never sees uploaded bytes.
        "figure.jpg",
        lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        MAX_BYTES,
        MAX_PIXELS,
        "not_an_image",
        "text",
        id="eps-never-decoded",
    ),
    pytest.param(
        "anim.jpg",
        lambda: encoded(noise_image(), "GIF"),
        MAX_BYTES,
        MAX_PIXELS,
        "unsupported_format",
        "GIF",
        id="gif",
    ),
    pytest.param(
        "icon.png",
        lambda: encoded(noise_image(32, 32), "ICO"),
        MAX_BYTES,
        MAX_PIXELS,
        "unsupported_format",
        "ICO",
        id="ico",
    ),
    pytest.param(
        "phone.jpg",
        lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        MAX_BYTES,
        MAX_PIXELS,
        "unsupported_format",
        "HEIC",
        id="heic",
    ),
    pytest.param(
        "logo.png",
        lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        MAX_BYTES,
        MAX_PIXELS,
        "unsupported_format",
        "SVG",
        id="svg",
    ),
    pytest.param(
        "half.jpg", _truncated_jpeg, MAX_BYTES, MAX_PIXELS, "truncated", "truncated", id="truncated"
    ),
    pytest.param(
        "magic.png",
        lambda: b"\x89PNG\r\n\x1a\n",
        MAX_BYTES,
        MAX_PIXELS,
        "corrupt",
        "header",
        id="png-signature-only",
    ),
    pytest.param(
        "zero.jpg", _jpeg_with_zero_size, MAX_BYTES, MAX_PIXELS, "corrupt", "", id="jpeg-zero-size"
    ),
    pytest.param(
        # 10^10 pixels claimed by 67 bytes: decoding would be "truncated", so the limit must
        # have been checked from the header first.
        "bomb.png",
        lambda: png_claiming(100_000, 100_000),
        MAX_BYTES,
        MAX_PIXELS,
        "too_many_pixels",
        "10000000000 pixels > 10000000",  # whether Pillow refuses it first or we do
        id="crafted-ihdr-bomb",
    ),
    pytest.param(
        "bomb.png",
        lambda: png_claiming(5000, 4000),
        MAX_BYTES,
        MAX_PIXELS,
        "too_many_pixels",
        "5000x4000 = 20000000 pixels > 10000000",
        id="crafted-ihdr-over-our-limit",
    ),
    pytest.param(
        "blank.png",
        lambda: _blank_png(4000, 3000),
        MAX_BYTES,
        MAX_PIXELS,
        "too_many_pixels",
        "4000x3000",
        id="real-compact-bomb",
    ),
    pytest.param(
        "big.png",
        lambda: encoded(noise_image(), "PNG"),
        100,
        MAX_PIXELS,
        "too_large",
        "100 bytes",
        id="over-max-bytes",
    ),
]


@pytest.mark.parametrize(
    ("filename", "make", "max_bytes", "max_pixels", "reason", "detail"), BAD_IMAGES
)
def test_check_image_bytes_names_why_an_upload_is_refused(
    filename: str,
    make: Callable[[], bytes],
    max_bytes: int,
    max_pixels: int,
    reason: str,
    detail: str,
) -> None:
    with pytest.raises(ImageError) as caught:
        check_image_bytes(make(), filename=filename, max_bytes=max_bytes, max_pixels=max_pixels)

    assert caught.value.reason == reason
    assert detail in caught.value.detail
    assert caught.value.path == filename
    assert str(caught.value).startswith(f"{filename}: {reason}")


def test_limits_are_inclusive() -> None:
    data = encoded(noise_image(96, 64), "PNG")

    info = check_image_bytes(data, filename="a.png", max_bytes=len(data), max_pixels=96 * 64)

    assert info.size_bytes == len(data)
    for max_bytes, max_pixels in [(len(data) - 1, 96 * 64), (len(data), 96 * 64 - 1)]:
        with pytest.raises(ImageError):
            check_image_bytes(data, filename="a.png", max_bytes=max_bytes, max_pixels=max_pixels)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"PK\x03\x04\x14\x00", True),
        (b"PK\x05\x06", True),  # an empty archive
        (b"PK\x01\x02", False),  # a central directory record is not a start
        (b"PK", False),
        (b"", False),
        (b"\x89PNG", False),
        (b"\xff\xd8\xff\xe0", False),
    ],
)
def test_is_zip_goes_by_magic_bytes(head: bytes, expected: bool) -> None:
    assert is_zip(head) is expected


# ----------------------------------------------------------------------------- zip factories

Entry = tuple[str | zipfile.ZipInfo, bytes]


def _zip(entries: list[Entry], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _with_mode(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
    info.external_attr = mode << 16
    return info


def _records(data: bytes, name: str) -> tuple[int, int]:
    """Offsets of ``name``'s local header and central directory record."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
        central = data.index(name.encode(), archive.start_dir) - 46
    assert data[local : local + 4] == b"PK\x03\x04"
    assert data[central : central + 4] == b"PK\x01\x02"
    return local, central


def _patched(
    data: bytes,
    name: str,
    *,
    flag_bits: int | None = None,
    method: int | None = None,
    file_size: int | None = None,
) -> bytes:
    """``data`` with ``name``'s records (local header and central directory) rewritten."""
    patched = bytearray(data)
    local, central = _records(data, name)
    # Field offsets from the start of each record (APPNOTE 4.3.7 and 4.3.12).
    for value, fmt, local_at, central_at in [
        (flag_bits, "<H", 6, 8),
        (method, "<H", 8, 10),
        (file_size, "<I", 22, 24),
    ]:
        if value is not None:
            struct.pack_into(fmt, patched, local + local_at, value)
            struct.pack_into(fmt, patched, central + central_at, value)
    return bytes(patched)


def _renamed(data: bytes, old: str, new: bytes) -> bytes:
    """Both records of ``old`` renamed to ``new`` (same length): names zipfile cannot write."""
    assert len(new) == len(old.encode())
    assert data.count(old.encode()) == 2
    return data.replace(old.encode(), new)


def _members(
    data: bytes | IO[bytes],
    *,
    max_members: int = 100,
    max_member_bytes: int = MAX_BYTES,
    max_total_bytes: int = 10 * MAX_BYTES,
) -> list[ZipMember | RejectedMember]:
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    budget = UploadBudget(max_entries=max_members, max_bytes=max_total_bytes)
    return list(iter_zip_members(file, max_member_bytes=max_member_bytes, budget=budget))


PNG = encoded(noise_image(32, 24, seed=3), "PNG")
JPEG = encoded(noise_image(32, 24, seed=4), "JPEG")


# ----------------------------------------------------------------------------- iter_zip_members


@pytest.mark.parametrize("spooled", [False, True], ids=["bytesio", "spooled-to-disk"])
def test_good_members_come_through_beside_bad_ones(spooled: bool) -> None:
    data = _zip(
        [
            ("photos/", b""),
            ("photos/a.png", PNG),
            ("../../etc/passwd", b"root:x:0:0"),
            ("photos/b.jpg", JPEG),
            (_with_mode("link.jpg", stat.S_IFLNK | 0o777), b"/etc/passwd"),
            ("inner.zip", _zip([("c.png", PNG)])),
            ("__MACOSX/photos/._a.png", b"\x00\x05\x16\x07"),
            ("photos/.DS_Store", b"Bud1"),
            ("c..d.png", PNG),  # two dots inside a name are not a path step
        ]
    )
    # What the upload hands over is a SpooledTemporaryFile; this one has rolled over to disk.
    with tempfile.SpooledTemporaryFile(max_size=1024) as spool:
        spool.write(data)
        spool.seek(0)
        members = _members(spool if spooled else io.BytesIO(data))

    assert members == [
        ZipMember("photos/a.png", PNG),
        RejectedMember("../../etc/passwd", "unsafe_path", "a path that climbs out with '..'"),
        ZipMember("photos/b.jpg", JPEG),
        RejectedMember("link.jpg", "symlink", "a symbolic link"),
        RejectedMember("inner.zip", "nested_archive", "archives inside archives are not read"),
        ZipMember("c..d.png", PNG),
    ]


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("../../etc/passwd", "'..'"),
        ("photos/../../../x.png", "'..'"),
        ("..\\..\\windows\\x.png", "'..'"),
        ("/abs/path.png", "absolute"),
        ("\\\\server\\share\\x.png", "absolute"),
        ("C:\\x.png", "drive"),
        ("c:/x.png", "drive"),
    ],
)
def test_names_that_could_escape_are_rejected(name: str, detail: str) -> None:
    [member] = _members(_zip([(name, PNG)]))

    assert isinstance(member, RejectedMember)
    assert (member.name, member.reason) == (name, "unsafe_path")
    assert detail in member.detail


def test_a_name_with_a_nul_byte_is_rejected_and_shown_escaped() -> None:
    # zipfile cuts names at NUL when reading ("evil"); the record still holds the rest.
    data = _renamed(_zip([("evilX.png.sh", PNG)]), "evilX.png.sh", b"evil\x00.png.sh")

    [member] = _members(data)

    assert member == RejectedMember(
        "evil\\x00.png.sh", "unsafe_path", "the name contains a NUL byte"
    )


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ((_with_mode("link.png", stat.S_IFLNK | 0o777), b"../../secret"), "symlink"),
        ((_with_mode("fifo.png", stat.S_IFIFO | 0o644), b""), "special_file"),
        ((_with_mode("dev.png", stat.S_IFCHR | 0o644), b""), "special_file"),
        (("nested.zip", PNG), "nested_archive"),  # by name
        (("photos.tar.gz", PNG), "nested_archive"),
        (("sneaky.png", _zip([("a.png", PNG)])), "nested_archive"),  # by content
        (("sneaky.jpg", zlib.compress(PNG, wbits=31)), "nested_archive"),  # gzip inside
    ],
)
def test_members_that_are_not_plain_files_are_rejected(entry: Entry, reason: str) -> None:
    [member] = _members(_zip([entry, ("ok.png", PNG)]))[:1]

    assert isinstance(member, RejectedMember)
    assert member.reason == reason


@pytest.mark.parametrize(
    "entry",
    [
        ("photos/", b""),
        (_with_mode("dir-without-slash", stat.S_IFDIR | 0o755), b""),
        ("__MACOSX/._a.png", b"\x00\x05\x16\x07"),
        ("__MACOSX/photos/a.png", PNG),
        (".DS_Store", b"Bud1"),
        ("photos/.hidden.png", PNG),
        (".git/objects/x", b"x"),
        ("photos/Thumbs.db", b"\xd0\xcf\x11\xe0"),
        ("photos\\.DS_Store", b"Bud1"),  # written on Windows
        ("desktop.ini", b"[.ShellClassInfo]"),
    ],
)
def test_folders_and_junk_are_skipped_silently(entry: Entry) -> None:
    assert _members(_zip([entry, ("./ok.png", PNG)])) == [ZipMember("./ok.png", PNG)]


def test_an_encrypted_member_is_rejected() -> None:
    # zipfile cannot write encrypted members; the flag is what readers go by.
    data = _patched(_zip([("secret.png", PNG), ("ok.png", PNG)]), "secret.png", flag_bits=0x1)

    members = _members(data)

    assert members == [
        RejectedMember("secret.png", "encrypted", "the member is password-protected"),
        ZipMember("ok.png", PNG),
    ]


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        # zipfile decompresses these without an output bound: a bzip2 bomb would blow up first.
        (lambda: _zip([("a.png", PNG)], zipfile.ZIP_BZIP2), "bzip2"),
        (lambda: _zip([("a.png", PNG)], zipfile.ZIP_LZMA), "LZMA"),
        (lambda: _patched(_zip([("a.png", PNG)]), "a.png", method=93), "Zstandard"),
        (lambda: _patched(_zip([("a.png", PNG)]), "a.png", method=77), "method 77"),
    ],
    ids=["bzip2", "lzma", "zstandard", "unknown"],
)
def test_compression_other_than_deflate_is_refused(make: Callable[[], bytes], detail: str) -> None:
    [member] = _members(make())

    assert isinstance(member, RejectedMember)
    assert member.reason == "unsupported_compression"
    assert detail in member.detail


@pytest.fixture(scope="module")
def zeros_bomb() -> bytes:
    """50 MB of zeros deflated to about 50 KB, beside a small good member."""
    data = _zip([("bomb.png", bytes(50 * 1024 * 1024)), ("ok.png", PNG)])
    assert len(data) < 100 * 1024
    return data


def test_a_deflate_bomb_is_rejected_from_its_declared_size(zeros_bomb: bytes) -> None:
    members = _members(zeros_bomb, max_member_bytes=1024 * 1024)

    assert members == [
        RejectedMember(
            "bomb.png",
            "too_large",
            f"declares {50 * 1024 * 1024} bytes; the limit is 1048576 bytes",
        ),
        ZipMember("ok.png", PNG),
    ]


def test_a_bomb_whose_header_lies_is_cut_at_the_declared_size(zeros_bomb: bytes) -> None:
    # The records claim 1000 bytes: zipfile stops there and the CRC of what it read is wrong.
    data = _patched(zeros_bomb, "bomb.png", file_size=1000)

    members = _members(data, max_member_bytes=1024 * 1024)

    bomb, ok = members
    assert isinstance(bomb, RejectedMember)
    assert (bomb.name, bomb.reason) == ("bomb.png", "corrupt")
    assert "CRC" in bomb.detail
    assert ok == ZipMember("ok.png", PNG)


def test_a_member_claiming_more_than_it_holds_only_counts_more() -> None:
    # A header lying upwards makes the limits stricter, never the data longer: what comes back
    # is what the deflate stream holds, checked against its CRC.
    data = _patched(_zip([("a.png", PNG)]), "a.png", file_size=len(PNG) + 1000)

    assert _members(data) == [ZipMember("a.png", PNG)]
    [member] = _members(data, max_member_bytes=len(PNG) + 999)
    assert isinstance(member, RejectedMember)
    assert member.reason == "too_large"


def test_reading_stops_one_byte_past_the_limit(zeros_bomb: bytes) -> None:
    # zipfile never returns more than a member declares, so only a lower limit than the
    # declared size reaches this safety net; it must stop, not read all 50 MB.
    with zipfile.ZipFile(io.BytesIO(zeros_bomb)) as archive:
        info = archive.getinfo("bomb.png")
        over_member, member_read = _read_member(
            archive, info, max_member_bytes=1000, budget_bytes=10**9
        )
        over_budget, budget_read = _read_member(
            archive, info, max_member_bytes=10**9, budget_bytes=1000
        )

    assert over_member == RejectedMember(
        "bomb.png", "too_large", "more than 1000 bytes once decompressed"
    )
    assert member_read == 1001
    assert budget_read == 1001
    assert isinstance(over_budget, ZipMember)


@pytest.mark.parametrize("size", [999, 1000, 1001])
def test_member_size_limit_is_inclusive(size: int) -> None:
    [member] = _members(_zip([("a.bin", b"x" * size)]), max_member_bytes=1000)

    assert isinstance(member, ZipMember) is (size <= 1000)


def test_too_many_bytes_in_all_refuses_the_archive_before_reading() -> None:
    payloads = [np.random.default_rng(i).bytes(400_000) for i in range(3)]
    data = _zip([(f"{i}.bin", payload) for i, payload in enumerate(payloads)])

    budget = UploadBudget(max_entries=10, max_bytes=1_000_000)
    members = iter_zip_members(io.BytesIO(data), max_member_bytes=MAX_BYTES, budget=budget)
    with pytest.raises(UploadLimitReached, match=r"1200000 bytes .* the limit is 1000000 bytes"):
        next(members)

    assert _members(data, max_total_bytes=1_200_000) == [
        ZipMember(f"{i}.bin", payload) for i, payload in enumerate(payloads)
    ]


def test_rejected_and_skipped_members_do_not_count_towards_the_total(zeros_bomb: bytes) -> None:
    members = _members(zeros_bomb, max_member_bytes=1024 * 1024, max_total_bytes=len(PNG))

    assert [type(member) for member in members] == [RejectedMember, ZipMember]


def test_too_many_members_refuses_the_archive_before_reading_any() -> None:
    data = _zip([(f"{i}.png", PNG) for i in range(4)])

    budget = UploadBudget(max_entries=3, max_bytes=MAX_BYTES)
    members = iter_zip_members(io.BytesIO(data), max_member_bytes=MAX_BYTES, budget=budget)
    with pytest.raises(UploadLimitReached, match="more than 3 entries"):
        next(members)

    assert len(_members(data, max_members=4)) == 4


class _ReadSizes(io.BytesIO):
    """A BytesIO that remembers the size of every read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_sizes: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.read_sizes.append(len(chunk))
        return chunk


def test_entries_are_counted_without_loading_the_whole_directory() -> None:
    # 3000 empty entries make a ~140 KB directory that zipfile would read whole and parse.
    data = _zip([(f"{i:05d}.png", b"") for i in range(3000)], zipfile.ZIP_STORED)
    file = _ReadSizes(data)

    with pytest.raises(InputError, match="more than 10 entries"):
        _members(file, max_members=10)

    assert max(file.read_sizes) < 100_000


def test_entries_are_counted_in_a_zip64_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    # Writers switch to zip64 end records past 65535 entries; lower that bar for the builder.
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    data = _zip([(f"{i}.png", PNG) for i in range(3)])
    monkeypatch.undo()
    assert b"PK\x06\x06" in data

    with pytest.raises(InputError, match="more than 2 entries"):
        _members(data, max_members=2)
    assert [member.name for member in _members(data, max_members=3)] == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty-file"),
        pytest.param(b"PK\x03\x04 not really", id="zip-magic-only"),
        pytest.param(PNG, id="an-image"),
        pytest.param(_zip([("a.png", PNG)])[:-30], id="cut-short"),
        pytest.param(
            _zip([("a.png", PNG)]).replace(b"PK\x01\x02", b"PK\x01\x09"), id="bad-directory"
        ),
    ],
)
def test_what_is_not_a_zip_refuses_the_whole_archive(data: bytes) -> None:
    with pytest.raises(InputError, match="not a readable zip archive"):
        _members(data)


def test_an_empty_archive_has_no_members() -> None:
    data = _zip([])

    assert is_zip(data[:4])
    assert _members(data) == []


def test_zip_members_feed_check_image_bytes() -> None:
    # The service's path: every member is judged as an image on its own.
    data = _zip([("a.png", PNG), ("b.jpg", JPEG), ("notes.jpg", b"hello\n"), ("e.png", b"")])

    verdicts: list[str] = []
    for member in _members(data):
        assert isinstance(member, ZipMember)
        try:
            info = check_image_bytes(
                member.data, filename=member.name, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS
            )
        except ImageError as error:
            verdicts.append(error.reason)
        else:
            verdicts.append(info.format)

    assert verdicts == ["PNG", "JPEG", "not_an_image", "zero_bytes"]


def test_member_names_with_control_characters_are_escaped() -> None:
    data = _zip([("line\nbreak.png", PNG), ("tab\there.png", PNG), ("résumé.png", PNG)])

    names = [member.name for member in _members(data)]

    assert names == ["line\\nbreak.png", "tab\\there.png", "résumé.png"]


# ----------------------------------------------------------------------------- one request's budget


def test_the_archives_of_a_request_share_one_budget_of_bytes() -> None:
    payloads = [np.random.default_rng(i).bytes(400_000) for i in range(2)]
    first, second = (_zip([(f"{i}.bin", payload)]) for i, payload in enumerate(payloads))
    budget = UploadBudget(max_entries=100, max_bytes=600_000)

    kept = list(iter_zip_members(io.BytesIO(first), max_member_bytes=MAX_BYTES, budget=budget))
    assert kept == [ZipMember("0.bin", payloads[0])]
    assert budget.bytes_used == 400_000

    with pytest.raises(
        UploadLimitReached,
        match=r"400000 bytes .* the limit is 600000 bytes for all the archives of one upload "
        r"and 200000 are left",
    ):
        next(iter_zip_members(io.BytesIO(second), max_member_bytes=MAX_BYTES, budget=budget))
    assert budget.bytes_used == 400_000  # refused before a byte of it was read


def test_the_archives_of_a_request_share_one_budget_of_entries() -> None:
    three = _zip([("photos/", b""), ("a.png", PNG), ("b.png", PNG)])
    budget = UploadBudget(max_entries=5, max_bytes=MAX_BYTES)

    assert (
        len(list(iter_zip_members(io.BytesIO(three), max_member_bytes=MAX_BYTES, budget=budget)))
        == 2
    )
    assert budget.entries_used == 3  # the folder counts

    with pytest.raises(UploadLimitReached, match=r"more than 2 entries .* 2 are left"):
        next(iter_zip_members(io.BytesIO(three), max_member_bytes=MAX_BYTES, budget=budget))


def test_overlapping_entries_cannot_inflate_more_than_the_request_budget() -> None:
    data = overlapping_zip(entries=20, member_bytes=256 * 1024)
    assert len(data) < 5_000
    budget = UploadBudget(max_entries=10_000, max_bytes=12 * 1024 * 1024)

    for _ in range(2):  # 5 MiB each
        members = list(
            iter_zip_members(io.BytesIO(data), max_member_bytes=MAX_BYTES, budget=budget)
        )
        assert len(members) == 20
    with pytest.raises(UploadLimitReached, match="2097152 are left"):
        next(iter_zip_members(io.BytesIO(data), max_member_bytes=MAX_BYTES, budget=budget))

    assert budget.bytes_used == 10 * 1024 * 1024


# ----------------------------------------------------------------------------- names


def test_a_name_flagged_utf8_that_is_not_rejects_only_that_member() -> None:
    # zipfile flags non-ASCII names as UTF-8; the bytes then stop being UTF-8.
    data = _zip([("good.png", PNG), ("bad-é.png", PNG), ("also.jpg", JPEG)])
    data = _renamed(data, "bad-é.png", b"bad-\xff\xfe.png")

    members = _members(data)

    assert members == [
        ZipMember("good.png", PNG),
        RejectedMember(
            "bad-\\xff\\xfe.png",
            "bad_name",
            "entry 2 of the archive: its name is marked as UTF-8 but is not valid UTF-8; "
            "rename the file",
        ),
        ZipMember("also.jpg", JPEG),
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo.png", "photo.png"),
        ("line\nbreak.png", "line\\nbreak.png"),
        ("a" * 1024, "a" * 1024),
        ("a" * 1025, "a" * 511 + "…" + "a" * 511),
        ("d" * 3000 + "/photo.png", "d" * 511 + "…" + "d" * 501 + "/photo.png"),
        ("\x01" * 70_000 + ".png", "\\x01" * 127 + "\\x0…" + "x01" + "\\x01" * 126 + ".png"),
    ],
    ids=["short", "control", "at-limit", "over-limit", "keeps-the-end", "escaped-then-cut"],
)
def test_shown_names_are_escaped_and_at_most_1024_characters(name: str, expected: str) -> None:
    shown = shown_name(name)

    assert shown == expected
    assert len(shown) <= 1024


def test_long_member_names_are_cut_in_the_middle() -> None:
    name = "x" * 60_000 + ".png"

    [member] = _members(_zip([(name, PNG)]))

    assert member == ZipMember("x" * 511 + "…" + "x" * 507 + ".png", PNG)


# ----------------------------------------------------------------------------- decodes at once


def test_decodes_wait_for_a_free_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve.ingest.uploads, "DECODE_SLOTS", threading.BoundedSemaphore(2))
    lock = threading.Lock()
    running = most = 0

    def slow_decode(data: bytes, **kwargs: Any) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)
            return decode_image_bytes(data, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr("serve.ingest.uploads.decode_image_bytes", slow_decode)

    def check(i: int) -> ImageInfo:
        return check_image_bytes(
            PNG, filename=f"{i}.png", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS
        )

    with ThreadPoolExecutor(6) as pool:
        infos = list(pool.map(check, range(6)))

    assert most == 2
    assert {info.format for info in infos} == {"PNG"}


def test_there_is_a_decode_slot_per_cpu() -> None:
    slots = serve.ingest.uploads.DECODE_SLOTS
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    for _ in range(taken):
        slots.release()

    if hasattr(os, "sched_getaffinity"):
        assert taken == len(os.sched_getaffinity(0))
    else:
        assert taken == os.cpu_count()
