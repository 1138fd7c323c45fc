"""File kinds by suffix and by leading bytes, and the compressed shards webdataset reads.

A shard is a tar, plain or compressed as webdataset's reader (``tarfile`` mode ``r|*``) opens it
(``SHARD_COMPRESSION``); a table is CSV/TSV/parquet (``tables.TABLE_SUFFIXES``). ``check_shard_format``
compares a file's leading bytes with what its suffix says; ``shard_stream`` gives the tar inside a
shard, read forward (decompressed as it is read, keeping every byte before damage), and
``COMPRESSORS`` write one back the same way.
"""
import bz2
import gzip
import lzma
import os
import zlib
from typing import BinaryIO, Optional, Tuple

from .tables import TABLE_SUFFIXES


class FormatError(ValueError):
    """A file whose content is not what its name says; the message names it and the fix."""


# shard suffix -> compression: what webdataset's reader (tarfile "r|*") opens; outputs keep it
SHARD_COMPRESSION = {".tar": None, ".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bz2", ".tar.xz": "xz"}
SHARD_SUFFIXES = tuple(SHARD_COMPRESSION)
# incremental decompressors keep every byte before a cut (gzip.open & co. lose the last read)
DECOMPRESSORS = {"gzip": lambda: zlib.decompressobj(wbits=31), "bz2": bz2.BZ2Decompressor,
                 "xz": lzma.LZMADecompressor}
# mtime=0 and no file name in the gzip header: the same input gives the same output bytes
COMPRESSORS = {"gzip": lambda raw: gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0),
               "bz2": lambda raw: bz2.BZ2File(raw, "wb"),
               "xz": lambda raw: lzma.LZMAFile(raw, "wb")}
_STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)  # corrupt compressed data


def input_suffix(path: str) -> str:
    """The input type of ``path``: one of ``SHARD_SUFFIXES + TABLE_SUFFIXES`` (longest match, so
    ``.tar.gz`` not ``.gz``), else its last extension, lower case."""
    name = os.path.basename(path).lower()
    for suffix in sorted(SHARD_SUFFIXES + TABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return os.path.splitext(name)[1]


class DecompressedStream:
    """The decompressed bytes of a compressed shard, read forward (``read``; ``tell``), each byte of
    the file read once. Concatenated streams (multi-member gzip) continue; zero bytes after the last
    stream (block padding) are ignored, as ``gzip -d`` ignores them. Corrupt or cut compressed data
    ends the stream where it breaks: ``read`` returns what decompressed before it, then ``b""``, and
    ``problem`` says why (None while the stream is sound)."""

    def __init__(self, raw: BinaryIO, compression: str, chunk_size: int = 1 << 18):
        self.raw = raw
        self.compression = compression
        self.chunk_size = chunk_size
        self.problem: Optional[str] = None
        self._decompressor = None
        self._buffer = b""
        self._offset = 0  # read position in _buffer
        self._position = 0  # decompressed bytes handed out
        self._decompressed = 0  # decompressed bytes so far
        self._done = False

    def _more(self) -> bytes:
        """The bytes one more read of the compressed file decompresses to (``_done`` at its end)."""
        chunk = self.raw.read(self.chunk_size)
        pieces = []
        try:
            if not chunk:
                self._done = True
                if self._decompressor is None or not self._decompressor.eof:
                    self.problem = (f"damaged {self.compression} stream: cut before its end, after "
                                    f"{self._decompressed} decompressed bytes")
            while chunk:  # concatenated streams go on with a new decompressor
                if self._decompressor is not None and self._decompressor.eof:
                    chunk = chunk.lstrip(b"\0")
                    if not chunk:
                        break
                if self._decompressor is None or self._decompressor.eof:
                    self._decompressor = DECOMPRESSORS[self.compression]()
                pieces.append(self._decompressor.decompress(chunk))
                chunk = self._decompressor.unused_data if self._decompressor.eof else b""
        except _STREAM_ERRORS as exc:
            self._done = True
            self.problem = (f"damaged {self.compression} stream after "
                            f"{self._decompressed + sum(map(len, pieces))} decompressed bytes ({exc})")
        data = b"".join(pieces)
        self._decompressed += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [], size
        while wanted:
            if self._offset >= len(self._buffer):
                if self._done:
                    break
                self._buffer, self._offset = self._more(), 0
                continue
            end = len(self._buffer) if wanted < 0 else min(len(self._buffer), self._offset + wanted)
            parts.append(self._buffer[self._offset:end])
            wanted -= (end - self._offset) if wanted > 0 else 0
            self._offset = end
        data = b"".join(parts)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position


class _Prefixed:
    """``head`` (bytes read already) followed by the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(size)
        if size < 0:
            data, self.head = self.head + self.raw.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data


def shard_stream(raw: BinaryIO, compression: Optional[str] = "auto") -> Tuple[BinaryIO, Optional[str]]:
    """``(tar stream, compression)`` of an opened shard, read forward: decompressed when
    ``compression`` (``gzip``, ``bz2``, ``xz``) says so or, with ``"auto"``, when the leading bytes are
    one of those formats (as webdataset's reader, ``tarfile`` mode ``r|*``, detects them)."""
    if compression == "auto":
        head = b""
        while len(head) < 6:
            chunk = raw.read(6 - len(head))
            if not chunk:
                break
            head += chunk
        compression = next((name for name in DECOMPRESSORS if head.startswith(_MAGIC[name])), None)
        raw = _Prefixed(head, raw)
    return (raw if compression is None else DecompressedStream(raw, compression)), compression


# leading bytes of each format (gzip RFC 1952, bzip2 "BZh" + block size, xz's stream header magic,
# zip's local file header) and POSIX tar's "ustar" magic at offset 257
_MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00", "zip": b"PK\x03\x04"}
FORMAT_NAMES = {"gzip": "gzip-compressed", "bz2": "bzip2-compressed", "xz": "xz-compressed",
                "zip": "a zip archive", "tar": "a plain tar"}
FORMAT_SUFFIX = {"gzip": ".tar.gz", "bz2": ".tar.bz2", "xz": ".tar.xz", "tar": ".tar"}


def file_format(path: str) -> Optional[str]:
    """``gzip``, ``bz2``, ``xz``, ``zip`` or ``tar`` from a file's leading bytes; None if none matches
    (an empty file, a pre-POSIX tar, anything else)."""
    with open(path, "rb") as f:
        head = f.read(512)
    for name, magic in _MAGIC.items():
        if head.startswith(magic):
            return name
    return "tar" if head[257:262] == b"ustar" else None


def check_shard_format(input_path: str) -> None:
    """``FormatError`` when the file's leading bytes are another known format than its suffix says
    (a plain tar named ``.tar.gz``, gzip named ``.tar``, a zip): named, with the suffix to use."""
    expected = SHARD_COMPRESSION[input_suffix(input_path)] or "tar"
    actual = file_format(input_path)
    if actual is None or actual == expected:
        return
    fix = (f"rename it to a {FORMAT_SUFFIX[actual]} suffix" if actual in FORMAT_SUFFIX
           else f"shards are tars ({', '.join(SHARD_SUFFIXES)})")
    said = f"{expected}-compressed" if expected != "tar" else "a plain tar"
    raise FormatError(f"{input_path}: not {said}, the file is {FORMAT_NAMES[actual]}; {fix}")
