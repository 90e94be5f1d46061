"""Judging uploaded bytes before they are kept: single images, and zip archives of images.

Nothing here writes to disk or trusts a name: an image is decoded in memory to prove it is
usable, and a zip member is read (never extracted) with its size enforced while it is read.

``check_image_bytes`` raises ``ImageError(filename, reason, detail)``; reasons are the ones of
``labeler.core.images.decode_image_bytes`` (``zero_bytes``, ``not_an_image``, ``too_many_pixels``,
``truncated``, ``corrupt``) plus ``too_large`` and ``unsupported_format`` (a GIF, HEIC, ...).

``iter_zip_members`` yields each member as a ``ZipMember`` or a ``RejectedMember`` whose reason
is one of ``unsafe_path``, ``bad_name``, ``symlink``, ``special_file``, ``encrypted``,
``nested_archive``, ``unsupported_compression``, ``too_large`` or ``corrupt``; it raises
``InputError`` only for the archive as a whole: not a zip, or (``UploadLimitReached``) more
entries or decompressed bytes than the request's ``UploadBudget`` has left. One budget is shared
by all the archives of a request, so that a request of many archives costs no more than one.

Decoding is the costly part (a 10 KB PNG can hold 81 M pixels: half a second and half a GiB),
so ``check_image_bytes`` lets at most ``DECODE_SLOTS`` decodes run at once in the process.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import stat
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, cast

from PIL import Image

from labeler.core.exceptions import ImageError, InputError
from labeler.core.images import decode_image_bytes

__all__ = [
    "ACCEPTED_FORMATS",
    "DECODE_SLOTS",
    "DECODE_SLOT_COUNT",
    "MEDIA_TYPES",
    "ImageInfo",
    "RejectedMember",
    "UploadBudget",
    "UploadLimitReached",
    "ZipMember",
    "check_image_bytes",
    "is_zip",
    "iter_zip_members",
    "shown_name",
]

# Pillow's format name -> the extension the bytes are stored under. MPO (a phone's multi-picture
# JPEG) reaches us through Pillow's JPEG decoder and is a JPEG to every reader.
_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
# Only these decoders ever see uploaded bytes: Pillow's rarer plugins (EPS runs Ghostscript)
# are attack surface that no labeling dataset needs.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
Image.init()  # registers every format's media type in Image.MIME
# What a stored image is served as, by its extension: its format's media type, as Pillow knows it.
MEDIA_TYPES = {_EXTENSIONS[name]: Image.MIME[name] for name in ACCEPTED_FORMATS}
_ACCEPTED = ", ".join(ACCEPTED_FORMATS)

# (leading bytes, what the file is, whether it is an image in a format we do not accept)
_KNOWN_KINDS = (
    (b"%PDF", "a PDF document", False),
    (b"GIF8", "a GIF image", True),
    (b"\x7fELF", "an ELF executable", False),
    (b"MZ", "a Windows executable", False),
    (b"PK\x03\x04", "a zip archive", False),
    (b"\x1f\x8b", "a gzip file", False),
    (b"\x00\x00\x01\x00", "an ICO icon", True),
    (b"8BPS", "a Photoshop document", True),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image", True),
    (b"\xff\x0a", "a JPEG XL image", True),
)
_HEIF_BRANDS = {b"heic": "a HEIC image", b"heix": "a HEIC image", b"mif1": "a HEIF image"}
_HEIF_BRANDS |= {b"avif": "an AVIF image", b"avis": "an AVIF image"}

_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
# A member starting like one of these is an archive inside the archive.
_ARCHIVE_SIGNATURES = (
    *_ZIP_SIGNATURES,
    b"PK\x07\x08",  # spanned zip
    b"\x1f\x8b",  # gzip (and .tar.gz)
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x28\xb5\x2f\xfd",  # zstandard
)
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")
_JUNK_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_DRIVE = re.compile(r"^[A-Za-z]:")
# bzip2 and LZMA members are decompressed by zipfile without an output bound: a few kilobytes
# of bzip2 can become gigabytes in one call, before any size check can run.
_READABLE_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_COMPRESSION_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 9: "Deflate64"}
_COMPRESSION_NAMES |= {93: "Zstandard", 99: "WinZip AES"}
_ENCRYPTED_FLAGS = 0x0001 | 0x0040  # traditional and strong encryption
_UTF8_NAME_FLAG = 0x0800
_CHUNK_BYTES = 1 << 20
# signature, flags, .. name, extra and comment lengths ..
_CENTRAL_RECORD = struct.Struct("<4s4xH18x3H12x")
_FLAGS_HIGH_BYTE = 9  # offset in a central record of the byte holding the UTF-8 name flag
# A name is shown (in answers and logs) cut to this many characters: a zip name can be 64 KiB
# and a request can hold thousands of them.
_SHOWN_CHARS = 1024


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may run on (cgroups, taskset)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Image decodes that may run at once in this process: uploads run in a thread pool of 40, and
# each decode can hold ~0.5 GiB (an image at the pixel limit); more than one per CPU only
# multiplies the memory.
DECODE_SLOT_COUNT = max(1, _cpu_count())
DECODE_SLOTS = threading.BoundedSemaphore(DECODE_SLOT_COUNT)


@dataclass(frozen=True)
class ImageInfo:
    sha256: str  # of the bytes as uploaded
    width: int  # as displayed: EXIF orientation applied
    height: int
    format: str  # one of ACCEPTED_FORMATS
    extension: str  # to store the bytes under, with the dot: ".jpg"
    size_bytes: int


@dataclass(frozen=True)
class ZipMember:
    name: str  # the path inside the archive, for messages only: never a place to write to
    data: bytes


@dataclass(frozen=True)
class RejectedMember:
    name: str  # the path inside the archive, control characters escaped
    reason: str
    detail: str = ""


class UploadLimitReached(InputError):
    """An archive is refused because the request's ``UploadBudget`` cannot cover it."""


@dataclass
class UploadBudget:
    """What one request may still spend on archives: entries (files and folders) and bytes
    decompressed, shared by all its archives. ``iter_zip_members`` takes from it."""

    max_entries: int
    max_bytes: int
    entries_used: int = 0
    bytes_used: int = 0

    @property
    def entries_left(self) -> int:
        return max(0, self.max_entries - self.entries_used)

    @property
    def bytes_left(self) -> int:
        return max(0, self.max_bytes - self.bytes_used)


def _limit_words(left: int, limit: int, unit: str) -> str:
    """How a refusal for the budget ends: the limit, and what the archives before used."""
    if left == limit:
        return f"the limit is {limit} {unit}"
    return (
        f"the limit is {limit} {unit} for all the archives of one upload and {left} are "
        "left after the archives before it; send it in another upload"
    )


def shown_name(name: str, *, limit: int = _SHOWN_CHARS) -> str:
    """``name`` safe to log and show: control characters (NUL, newlines, ...) escaped, and at
    most ``limit`` characters, the middle cut out as "…" so that the start and the extension
    stay. Only what is shown is escaped: a name may be megabytes long."""
    if len(name) <= limit:
        shown = _escaped(name)
        if len(shown) <= limit:
            return shown
    keep = (limit - 1) // 2
    head = _escaped(name[:keep])[:keep]
    tail = _escaped(name[-keep:])[-keep:] if keep else ""
    return f"{head}…{tail}"


def _escaped(name: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in name)


def is_zip(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes, at least 4) starts a zip archive, empty or not."""
    return head.startswith(_ZIP_SIGNATURES)


def _describe(data: bytes) -> tuple[str, bool]:
    """What ``data`` looks like ("" when unknown), and whether that is an image format."""
    for signature, kind, is_image in _KNOWN_KINDS:
        if data.startswith(signature):
            return kind, is_image
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return _HEIF_BRANDS[data[8:12]], True
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page", False
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "an SVG drawing", True
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return "", False
    return "a text file", False


def check_image_bytes(data: bytes, *, filename: str, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Prove that ``data`` is one usable image by decoding it fully, once, in memory.

    The size is checked before anything else and the pixel count from the header before any
    pixel is decoded; the decode waits for one of the ``DECODE_SLOTS``. Raises ImageError
    naming ``filename`` with reason ``too_large``, ``zero_bytes``, ``not_an_image`` (the
    detail says what the file looks like, e.g. a PDF), ``unsupported_format``,
    ``too_many_pixels``, ``truncated`` or ``corrupt``.
    """
    if len(data) > max_bytes:
        raise ImageError(filename, "too_large", f"larger than the limit of {max_bytes} bytes")
    try:
        with DECODE_SLOTS:
            decoded = decode_image_bytes(
                data, name=filename, max_pixels=max_pixels, formats=ACCEPTED_FORMATS
            )
    except ImageError as error:
        if error.reason != "not_an_image":
            raise
        kind, is_image = _describe(data)
        detail = f"{kind}; accepted formats: {_ACCEPTED}" if kind else f"accepted: {_ACCEPTED}"
        reason = "unsupported_format" if is_image else "not_an_image"
        raise ImageError(filename, reason, detail) from None
    extension = _EXTENSIONS.get(decoded.format)
    if extension is None:  # a format name this Pillow gives that we do not know: refuse it
        raise ImageError(filename, "unsupported_format", decoded.format)
    width, height = decoded.image.size
    return ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        format="JPEG" if decoded.format == "MPO" else decoded.format,
        extension=extension,
        size_bytes=len(data),
    )


# ----------------------------------------------------------------------------- zip archives


def _unsafe_path(name: str) -> str:
    """Why extracting to ``name`` could write outside the target folder; "" when it could not."""
    if not name:
        return "the name is empty"
    if "\x00" in name:
        return "the name contains a NUL byte"
    if name.startswith(("/", "\\")):
        return "an absolute path"
    if _DRIVE.match(name):
        return "a path on a drive"
    if ".." in re.split(r"[\\/]", name):
        return "a path that climbs out with '..'"
    return ""


def _is_junk(name: str) -> bool:
    """Hidden files and folders, macOS resource forks (``__MACOSX/``), Windows thumbnails."""
    parts = [part for part in re.split(r"[\\/]", name) if part not in ("", ".")]
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return True
    return bool(parts) and parts[-1].lower() in _JUNK_FILE_NAMES


@dataclass(frozen=True)
class _Directory:
    entries: int  # at most stop_after + 1
    # Entries flagged as UTF-8 whose names are not: index in the directory -> the raw name.
    bad_names: dict[int, bytes]
    # File offsets of the bytes holding those entries' UTF-8 flags.
    bad_flag_offsets: tuple[int, ...]


def _scan_directory(file: IO[bytes], *, stop_after: int) -> _Directory | None:
    """The central directory walked from its raw records, at most ``stop_after + 1`` entries;
    None when the records cannot be walked (zipfile then says why).

    zipfile builds an object per entry before anyone can count them, and an upload of empty
    entries (46 bytes each) would become millions of objects; and it refuses the whole archive
    when one name flagged as UTF-8 is not. This walk keeps nothing per good entry. It finds the
    central directory as zipfile does, with zipfile's own end-record reader.
    """
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # a future zipfile: the count after parsing still holds
        return None
    try:
        end = end_record(file)
    except (OSError, zipfile.BadZipFile, struct.error):
        return None
    if not end:
        return None
    signature, size_cd, location = end[0], end[5], end[9]  # zipfile's _ECD_* positions
    start = location - size_cd
    if signature == b"PK\x06\x06":  # zip64: its end record (56) and locator (20) come first
        start -= 56 + 20
    if start < 0 or size_cd <= 0:
        return None
    file.seek(start)
    entries = walked = 0
    bad_names: dict[int, bytes] = {}
    bad_flag_offsets: list[int] = []
    while walked < size_cd and entries <= stop_after:
        record = file.read(_CENTRAL_RECORD.size)
        if len(record) != _CENTRAL_RECORD.size:
            return None
        signature, flags, name_length, extra_length, comment_length = _CENTRAL_RECORD.unpack(record)
        if signature != b"PK\x01\x02":
            return None
        skipped = name_length
        if flags & _UTF8_NAME_FLAG:
            name = file.read(name_length)
            skipped = 0
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                bad_names[entries] = name
                bad_flag_offsets.append(start + walked + _FLAGS_HIGH_BYTE)
        variable = name_length + extra_length + comment_length
        file.seek(variable - name_length + skipped, 1)
        walked += _CENTRAL_RECORD.size + variable
        entries += 1
    return _Directory(entries, bad_names, tuple(bad_flag_offsets))


class _UnflaggedNames:
    """``file`` with the UTF-8 flag cleared in the directory records at ``flag_offsets``, so
    that zipfile reads those names as bytes (cp437) instead of refusing the whole archive; the
    members themselves are then rejected one by one. Only what zipfile calls is provided."""

    def __init__(self, file: IO[bytes], flag_offsets: tuple[int, ...]) -> None:
        self._file = file
        self._offsets = sorted(flag_offsets)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        start = self._file.tell()
        data = self._file.read(size)
        first = bisect.bisect_left(self._offsets, start)
        last = bisect.bisect_left(self._offsets, start + len(data))
        if first == last:
            return data
        patched = bytearray(data)
        for offset in self._offsets[first:last]:
            patched[offset - start] &= ~(_UTF8_NAME_FLAG >> 8) & 0xFF
        return bytes(patched)


def _verdict(
    info: zipfile.ZipInfo, *, max_member_bytes: int, index: int, bad_name: bytes | None
) -> RejectedMember | bool:
    """A rejection, True to read the member, or False to skip it silently (folders, junk).

    ``index`` is the member's place in the directory, ``bad_name`` its raw name when the
    name is flagged as UTF-8 but is not."""
    if bad_name is not None:
        return RejectedMember(
            shown_name(bad_name.decode("utf-8", "backslashreplace")),
            "bad_name",
            f"entry {index + 1} of the archive: its name is marked as UTF-8 but is not valid "
            "UTF-8; rename the file",
        )
    name = info.orig_filename  # zipfile cuts ``filename`` at a NUL byte; the original keeps it
    shown = shown_name(name)
    unsafe = _unsafe_path(name)
    if unsafe:
        return RejectedMember(shown, "unsafe_path", unsafe)
    mode = info.external_attr >> 16  # Unix mode bits, when the archiver wrote them
    if info.is_dir() or stat.S_ISDIR(mode) or _is_junk(name):
        return False
    if stat.S_ISLNK(mode):
        return RejectedMember(shown, "symlink", "a symbolic link")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return RejectedMember(shown, "special_file", f"file type {oct(stat.S_IFMT(mode))}")
    if info.flag_bits & _ENCRYPTED_FLAGS:
        return RejectedMember(shown, "encrypted", "the member is password-protected")
    if name.lower().endswith(_ARCHIVE_SUFFIXES):
        return RejectedMember(shown, "nested_archive", "archives inside archives are not read")
    if info.compress_type not in _READABLE_COMPRESSION:
        method = _COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
        return RejectedMember(
            shown, "unsupported_compression", f"{method}; store or deflate the files instead"
        )
    if info.file_size > max_member_bytes:
        return RejectedMember(
            shown,
            "too_large",
            f"declares {info.file_size} bytes; the limit is {max_member_bytes} bytes",
        )
    return True


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, max_member_bytes: int, budget_bytes: int
) -> tuple[ZipMember | RejectedMember, int]:
    """The member's bytes (or why not) and how many bytes were decompressed to find out.

    Reading stops as soon as the member passes ``max_member_bytes`` or the request's remaining
    ``budget_bytes``, whatever its header declared.
    """
    shown = shown_name(info.orig_filename)
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as stream:
            while True:
                # One byte past the tighter limit tells "exactly at the limit" from "over it".
                wanted = min(_CHUNK_BYTES, min(max_member_bytes, budget_bytes) + 1 - size)
                chunk = stream.read(wanted)
                if not chunk:
                    break
                if size == 0 and chunk.startswith(_ARCHIVE_SIGNATURES):
                    detail = "archives inside archives are not read"
                    return RejectedMember(shown, "nested_archive", detail), len(chunk)
                chunks.append(chunk)
                size += len(chunk)
                if size > max_member_bytes:
                    detail = f"more than {max_member_bytes} bytes once decompressed"
                    return RejectedMember(shown, "too_large", detail), size
                if size > budget_bytes:
                    break
    except NotImplementedError as exc:  # a compression zipfile cannot read
        return RejectedMember(shown, "unsupported_compression", str(exc)), size
    except Exception as exc:  # damaged data: BadZipFile (bad CRC), zlib.error, EOFError, ...
        return RejectedMember(shown, "corrupt", f"{type(exc).__name__}: {exc}"), size
    return ZipMember(name=shown, data=b"".join(chunks)), size


def iter_zip_members(
    file: IO[bytes], *, max_member_bytes: int, budget: UploadBudget
) -> Iterator[ZipMember | RejectedMember]:
    """Each regular file of the zip in ``file`` (seekable), in archive order, as its bytes or
    as the reason it is refused; folders, hidden files and ``__MACOSX/`` are skipped silently.

    A bad member is yielded as a ``RejectedMember`` and the rest go on. Raises InputError for
    the whole archive when it is not a zip (or its directory is damaged), and its subclass
    UploadLimitReached when it has more entries (folders included; checked before any member
    is read) or decompresses to more bytes (checked against the sizes the members declare
    before any is read, and enforced while reading, since a header can lie) than ``budget``
    has left. The entries and the bytes read are taken from ``budget``.
    """
    entries_left, bytes_left = budget.entries_left, budget.bytes_left
    directory = _scan_directory(file, stop_after=entries_left)
    if directory is not None and directory.entries > entries_left:
        raise UploadLimitReached(
            f"the archive has more than {entries_left} entries (files and folders); "
            + _limit_words(entries_left, budget.max_entries, "entries")
        )
    bad_names = directory.bad_names if directory is not None else {}
    try:
        if directory is not None and directory.bad_flag_offsets:
            patched = _UnflaggedNames(file, directory.bad_flag_offsets)
            archive = zipfile.ZipFile(cast(IO[bytes], patched))
        else:
            archive = zipfile.ZipFile(file)
    except Exception as exc:  # zipfile raises many types on a damaged directory
        raise InputError(f"not a readable zip archive ({type(exc).__name__}: {exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > entries_left:
            raise UploadLimitReached(
                f"the archive has {len(infos)} entries (files and folders); "
                + _limit_words(entries_left, budget.max_entries, "entries")
            )
        verdicts = [
            _verdict(
                info, max_member_bytes=max_member_bytes, index=index, bad_name=bad_names.get(index)
            )
            for index, info in enumerate(infos)
        ]
        declared_bytes = sum(
            info.file_size for info, verdict in zip(infos, verdicts, strict=True) if verdict is True
        )
        if declared_bytes > bytes_left:
            raise UploadLimitReached(
                f"the archive's files add up to {declared_bytes} bytes once decompressed; "
                + _limit_words(bytes_left, budget.max_bytes, "bytes")
            )
        budget.entries_used += len(infos)
        for info, verdict in zip(infos, verdicts, strict=True):
            if verdict is False:
                continue
            if isinstance(verdict, RejectedMember):
                yield verdict
                continue
            member, read_bytes = _read_member(
                archive,
                info,
                max_member_bytes=max_member_bytes,
                budget_bytes=budget.bytes_left,
            )
            over = read_bytes > budget.bytes_left
            budget.bytes_used += read_bytes
            if over:
                raise UploadLimitReached(
                    f"the archive decompresses to more than {bytes_left} bytes (its files from "
                    f"{shown_name(info.orig_filename, limit=200)} on were not kept); "
                    + _limit_words(bytes_left, budget.max_bytes, "bytes")
                )
            yield member
