"""Write webdataset shards (``jpg`` / ``txt`` / ``json`` samples) from images and captions.

Writing::

    from open_clip_c2lip.fileio.shards import write_shards
    paths = write_shards(
        [{"jpg": pil_image_or_bytes_or_path, "txt": "a red ball", "json": {"concepts": ["a red ball"]}}],
        output_dir="shards", prefix="train", samples_per_shard=1000)
    # -> ['shards/train-000000.tar', ...]

A sample is a dict with

- ``jpg``: the image: encoded bytes, an image file path or a ``PIL.Image``. Every image is decoded
  once, by the decoder training uses (``fileio.images.decode_rgb``), to catch corrupt files. Bytes
  (and files) in a format open_clip_train reads (JPEG, PNG, WebP) are kept byte-for-byte as the
  sample's ``jpg``, ``png`` or ``webp`` member, so training decodes exactly the bytes a table or
  folder holds, with the same function: identical pixels. Other formats (BMP, GIF, TIFF, ...) are
  converted to the RGB a viewer shows (``fileio.images.to_rgb``: EXIF orientation, every PIL mode)
  and written losslessly as ``png``, which decodes to exactly that RGB. A ``PIL.Image`` is
  converted the same way and written as ``jpg`` (``quality``).
- ``txt``: the caption (non-blank ``str``), written UTF-8.
- ``json`` (optional): a dict, written as the sample's ``json`` member.
- ``key`` (optional): the sample's ``__key__`` (no ``.`` or ``/``). Default: the sample's zero-based
  position in the input, zero-padded to 9 digits, so keys are deterministic and a skipped sample
  leaves a gap instead of renumbering the rest.
- ``source`` (optional): where the sample came from, used in error messages.
- ``error`` (optional): a reason the source could not give a valid sample (set by the readers below).

Shards are named ``{prefix}-{i:06d}.tar`` (``i`` from 0), hold ``samples_per_shard`` samples (the last
one fewer), and are written to ``NAME.partial`` then renamed, so a listed shard is always complete.
Tar headers are fixed (mtime 0, mode 0644, owner 0), so the same samples give identical bytes. A bad
sample (corrupt image, missing/blank caption) raises ``BadSampleError`` naming it, or with
``skip_bad=True`` is counted and listed in ``ShardWriteStats`` instead; count in == written + skipped.
A folder already holding ``{prefix}-NNNNNN.tar`` files is refused (a rerun with another
``samples_per_shard`` would leave stale shards); ``overwrite=True`` deletes only the shards an earlier
``write_shards`` listed in ``{prefix}.shards.json``, its manifest (written before each shard is created).

Sources: ``samples_from_folder`` (``img.jpg`` + ``img.txt`` side by side) and ``samples_from_csv``
(image path + caption columns, open_clip's ``filepath`` / ``title`` by default). Reading shards back:
``open_clip_c2lip.fileio.tar``.
"""
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..messages import excerpt
from . import images
from .atomic import write_text
from .tar import BadSampleError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KEY_DIGITS = 9
MAX_LISTED_SKIPS = 20


@dataclass
class ShardWriteStats:
    samples_in: int = 0
    written: int = 0
    reencoded: int = 0  # images converted (formats open_clip_train does not read: PNG; PIL images: JPEG)
    skipped: int = 0
    skipped_examples: List[str] = field(default_factory=list)
    shards: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"samples in: {self.samples_in}   written: {self.written}   skipped: {self.skipped}   "
                 f"converted: {self.reencoded}   shards: {len(self.shards)}"]
        lines += [f"  skipped {reason}" for reason in self.skipped_examples]
        if self.skipped > len(self.skipped_examples):
            lines.append(f"  ... and {self.skipped - len(self.skipped_examples)} more")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Writing

def _encoded(image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def encode_image(image: Union[bytes, str, os.PathLike, Any], quality: int = 95,
                 where: str = "image") -> Tuple[str, bytes, bool]:
    """``(member extension, bytes, re-encoded)`` of ``image`` (bytes, path or ``PIL.Image``; see the
    module docstring). ``BadSampleError`` naming ``where`` for an unreadable or undecodable image."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                image = f.read()
        except OSError as exc:
            raise BadSampleError(f"{where}: cannot read image ({exc})") from exc
    if isinstance(image, (bytes, bytearray)):
        try:
            rgb = images.decode_rgb(image, where)  # the full decode: catches truncated and corrupt data
        except images.ImageDecodeError as exc:
            raise BadSampleError(str(exc)) from exc
        extension = images.training_extension(Image.open(io.BytesIO(image)))  # reads the header only
        if extension is not None:
            return extension, bytes(image), False
        return "png", _encoded(rgb, "PNG"), True
    if not isinstance(image, Image.Image):
        raise BadSampleError(f"{where}: image must be bytes, a path or a PIL.Image, got {type(image).__name__}")
    try:
        rgb = images.to_rgb(image)
    except images.ImageDecodeError as exc:
        raise BadSampleError(f"{where}: {exc}") from exc
    return "jpg", _encoded(rgb, "JPEG", quality=quality), True


def _member(name: str, data: bytes) -> Tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    return info, data


def _sample_members(sample: Dict[str, Any], key: str, quality: int, where: str
                    ) -> Tuple[List[Tuple[tarfile.TarInfo, bytes]], bool]:
    if sample.get("error"):
        raise BadSampleError(f"{where}: {sample['error']}")
    if "." in key or "/" in key or not key:
        raise BadSampleError(f"{where}: key {key!r} must be non-empty without '.' or '/'")
    caption = sample.get("txt")
    if not isinstance(caption, str) or not caption.strip():
        raise BadSampleError(f"{where}: missing or blank caption (txt={excerpt(caption)})")
    meta = sample.get("json")
    if meta is not None and not isinstance(meta, dict):
        raise BadSampleError(f"{where}: json must be a dict, got {type(meta).__name__}")
    if "jpg" not in sample:
        raise BadSampleError(f"{where}: no image (jpg)")
    extension, image, reencoded = encode_image(sample["jpg"], quality, where)
    members = [_member(f"{key}.{extension}", image), _member(f"{key}.txt", caption.encode("utf-8"))]
    if meta is not None:
        members.append(_member(f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8")))
    return members, reencoded


class ShardDirError(ValueError):
    """An output folder that already holds shards of the prefix being written."""


MANIFEST_SUFFIX = ".shards.json"


def manifest_path(output_dir: str, prefix: str) -> str:
    """``{output_dir}/{prefix}.shards.json``: the shards ``write_shards`` created there, so that a
    rerun with ``overwrite=True`` deletes exactly those and nothing else."""
    return os.path.join(output_dir, prefix + MANIFEST_SUFFIX)


def _shard_files(output_dir: str, prefix: str) -> List[str]:
    """File names of ``{prefix}-NNNNNN.tar`` shards (and ``.partial`` ones) in ``output_dir``."""
    pattern = re.compile(re.escape(prefix) + r"-\d{6,}\.tar(\.partial)?")
    return sorted(name for name in os.listdir(output_dir) if pattern.fullmatch(name))


def _read_manifest(output_dir: str, prefix: str) -> List[str]:
    try:
        with open(manifest_path(output_dir, prefix)) as f:
            names = json.load(f).get("shards", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str)]


def _clear_previous_shards(output_dir: str, prefix: str, overwrite: bool) -> None:
    """Refuse to write into a folder holding ``prefix`` shards; with ``overwrite``, delete the ones a
    previous ``write_shards`` listed in its manifest, and refuse if any other is there."""
    existing = _shard_files(output_dir, prefix)
    if not existing:
        return
    example = f"{existing[0]}" + (f" ... {existing[-1]}" if len(existing) > 1 else "")
    if not overwrite:
        raise ShardDirError(
            f"{output_dir} already holds {len(existing)} shard file(s) named {prefix}-NNNNNN.tar ({example}); "
            "writing there would mix old and new samples (a rerun with another samples-per-shard leaves "
            "stale shards). Pick another output folder or prefix, or overwrite the shards of the earlier "
            "run (--overwrite).")
    ours = set(_read_manifest(output_dir, prefix))
    ours |= {name + ".partial" for name in ours}
    foreign = [name for name in existing if name not in ours]
    if foreign:
        raise ShardDirError(
            f"{output_dir}: {len(foreign)} shard file(s) named {prefix}-NNNNNN.tar were not written by "
            f"write_shards here (not in {os.path.basename(manifest_path(output_dir, prefix))}; e.g. "
            f"{foreign[0]}): not deleting them. Remove them yourself or pick another output folder or prefix.")
    for name in existing:
        os.remove(os.path.join(output_dir, name))
    os.remove(manifest_path(output_dir, prefix))


class _ShardSink:
    """Writes members into ``{prefix}-{i:06d}.tar``, rolling over every ``samples_per_shard``, and
    lists each shard in the folder's manifest before creating it."""

    def __init__(self, output_dir: str, prefix: str, samples_per_shard: int):
        self.output_dir, self.prefix, self.samples_per_shard = output_dir, prefix, samples_per_shard
        self.paths: List[str] = []
        self._tar: Optional[tarfile.TarFile] = None
        self._count = 0
        self._write_manifest(complete=False)

    def _write_manifest(self, complete: bool) -> None:
        record = {"prefix": self.prefix, "samples_per_shard": self.samples_per_shard, "complete": complete,
                  "shards": [os.path.basename(p) for p in self.paths]}
        write_text(manifest_path(self.output_dir, self.prefix), json.dumps(record, indent=1))

    def add(self, members: List[Tuple[tarfile.TarInfo, bytes]]) -> None:
        if self._tar is None:
            path = os.path.join(self.output_dir, f"{self.prefix}-{len(self.paths):06d}.tar")
            self.paths.append(path)
            self._write_manifest(complete=False)  # listed before it exists: a kill leaves it ours
            self._tar = tarfile.open(path + ".partial", "w", format=tarfile.PAX_FORMAT)
        for info, data in members:
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count == self.samples_per_shard:
            self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self.paths[-1] + ".partial", self.paths[-1])
            self._tar, self._count = None, 0

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.remove(self.paths.pop() + ".partial")
            self._tar = None
        if self.paths:
            self._write_manifest(complete=False)  # the finished shards stay ours to overwrite
        else:  # nothing written: leave the folder as it was
            os.remove(manifest_path(self.output_dir, self.prefix))

    def finish(self) -> None:
        self.close()
        self._write_manifest(complete=True)


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a plain file-name prefix, else ``ValueError``: shards, their manifest and
    the overwrite check all live in the output folder, so a prefix with a path separator (``../mine``,
    ``sub/shard``) or one that is ``.``/``..``/empty would write (and overwrite) outside it."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if not prefix or prefix in (".", "..") or any(sep in prefix for sep in separators) or "\0" in prefix:
        raise ValueError(f"prefix must be a plain file-name prefix (no path separator, not '.' or '..'), "
                         f"got {prefix!r}")
    return prefix


def write_shards(samples: Iterable[Dict[str, Any]], output_dir: str, prefix: str = "shard",
                 samples_per_shard: int = 1000, *, skip_bad: bool = False, quality: int = 95,
                 stats: Optional[ShardWriteStats] = None, overwrite: bool = False) -> List[str]:
    """Write samples (see module docstring) into webdataset shards; returns the shard paths.

    A folder that already holds ``{prefix}-NNNNNN.tar`` files is refused (``ShardDirError``): a
    rerun with fewer shards would leave stale ones behind. ``overwrite=True`` first deletes the
    shards an earlier ``write_shards`` listed in ``{prefix}.shards.json`` there, and still refuses
    if any other file of that name pattern is present (never deleting what it did not create)."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    check_prefix(prefix)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    stats = ShardWriteStats() if stats is None else stats
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ShardDirError(f"output folder {output_dir} exists and is not a folder")
    os.makedirs(output_dir, exist_ok=True)
    _clear_previous_shards(output_dir, prefix, overwrite)
    sink = _ShardSink(output_dir, prefix, samples_per_shard)
    try:
        for index, sample in enumerate(samples):
            stats.samples_in += 1
            key = str(sample.get("key", f"{index:0{KEY_DIGITS}d}"))
            where = f"sample {key!r}" + (f" ({sample['source']})" if sample.get("source") else "")
            try:
                members, reencoded = _sample_members(sample, key, quality, where)
            except BadSampleError as exc:
                if not skip_bad:
                    raise
                stats.skipped += 1
                if len(stats.skipped_examples) < MAX_LISTED_SKIPS:
                    stats.skipped_examples.append(str(exc))
                continue
            sink.add(members)
            stats.written += 1
            stats.reencoded += int(reencoded)
    except BaseException:
        sink.abort()  # never leave a half-written shard that looks finished
        raise
    sink.finish()
    stats.shards.extend(sink.paths)
    return list(sink.paths)


# ------------------------------------------------------------------------------------------------
# Sources

def _read_caption(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(caption, error) of a caption file."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8").strip(), None
    except FileNotFoundError:
        return None, f"no caption file {os.path.basename(path)}"
    except UnicodeDecodeError as exc:
        return None, f"caption file {path} is not valid UTF-8 ({exc})"


def samples_from_folder(folder: str) -> Iterator[Dict[str, Any]]:
    """Samples from images with a same-stem ``.txt`` caption beside them, in sorted path order.

    Recursive; json = ``{"caption", "source"}`` with ``source`` the image path relative to ``folder``.
    A ``.txt`` without an image is yielded as a bad sample too, so it is reported, not ignored.
    """
    images, captions = [], set()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            path = os.path.relpath(os.path.join(root, name), folder)
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                images.append(path)
            elif suffix == ".txt":
                captions.add(path)
    orphans = captions - {os.path.splitext(p)[0] + ".txt" for p in images}
    for source in sorted(images + sorted(orphans)):
        if source in orphans:
            yield {"source": source, "error": "caption file without an image"}
            continue
        caption, error = _read_caption(os.path.join(folder, os.path.splitext(source)[0] + ".txt"))
        yield {"jpg": os.path.join(folder, source), "txt": caption, "json": {"caption": caption, "source": source},
               "source": source, "error": error}


def samples_from_csv(path: str, img_key: str = "filepath", caption_key: str = "title",
                     sep: str = "\t") -> Iterator[Dict[str, Any]]:
    """Samples from a CSV/TSV/parquet table of image paths and captions.

    Read now (a bad table raises ``tables.TableError`` here) by ``open_clip_c2lip.fileio.tables``, as
    training reads it: cells as text; ``sep`` default a tab, as open_clip_train's ``--csv-separator``;
    relative image paths relative to the table's folder, a path that names another file relative to
    the working directory an error naming both (``tables.ImagePaths``)."""
    from . import tables

    table = tables.read_table(path, sep)
    tables.require_columns(table, path, [img_key, caption_key], sep)
    images_column = tables.column_values(table, img_key)
    captions = tables.column_values(table, caption_key)
    paths = tables.ImagePaths(path, img_key)
    paths.check(images_column)

    def samples() -> Iterator[Dict[str, Any]]:
        for row, (image, caption) in enumerate(zip(images_column, captions)):
            source = f"{path} row {row} ({image})"
            yield {"jpg": paths.resolve(image), "txt": caption,
                   "json": {"caption": caption, "source": image}, "source": source}

    return samples()
