"""File kinds by suffix and by leading bytes, and the compressed shards webdataset reads.

A shard is a tar, plain or compressed as webdataset's reader (``tarfile`` mode ``r|*``) opens it
(``SHARD_COMPRESSION``); a table is CSV/TSV/parquet (``tables.TABLE_SUFFIXES``). ``check_shard_format``
compares a file's leading bytes with what its suffix says; ``decompressed`` gives the tar inside a
compressed shard (keeping every byte before damage) and ``COMPRESSORS`` write one back the same way.
"""
import bz2
import contextlib
import gzip
import lzma
import os
import tempfile
import zlib
from typing import Any, Optional, Tuple

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


def decompressed(input_path: str, compression: str, scratch_dir: str,
                  stack: contextlib.ExitStack) -> Tuple[Any, Optional[str]]:
    """The tar inside a compressed shard, as a seekable temporary file in ``scratch_dir`` (the tar
    reader copies members byte-exactly by seeking), and why the compressed stream ended early, if it
    did: what decompressed before the damage is still read, and the damage is reported like a cut tar.
    Zero bytes after the last stream (block padding) are ignored, as ``gzip -d`` ignores them."""
    tar = stack.enter_context(tempfile.TemporaryFile(dir=scratch_dir, prefix=".c2lip-untar-"))
    problem, decompressor = None, None
    try:
        with open(input_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                while chunk:  # concatenated streams (multi-member gzip) continue with a new decompressor
                    if decompressor is not None and decompressor.eof:
                        chunk = chunk.lstrip(b"\0")
                        if not chunk:
                            break
                    if decompressor is None or decompressor.eof:
                        decompressor = DECOMPRESSORS[compression]()
                    tar.write(decompressor.decompress(chunk))
                    chunk = decompressor.unused_data if decompressor.eof else b""
        if decompressor is None or not decompressor.eof:
            problem = f"damaged {compression} stream: cut before its end, after {tar.tell()} decompressed bytes"
    except _STREAM_ERRORS as exc:
        problem = f"damaged {compression} stream after {tar.tell()} decompressed bytes ({exc})"
    tar.seek(0)
    return tar, problem


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
