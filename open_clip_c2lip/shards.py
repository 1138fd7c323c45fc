"""Write and read webdataset shards (``jpg`` / ``txt`` / ``json`` samples).

Writing::

    from open_clip_c2lip.shards import write_shards
    paths = write_shards(
        [{"jpg": pil_image_or_bytes_or_path, "txt": "a red ball", "json": {"concepts": ["a red ball"]}}],
        output_dir="shards", prefix="train", samples_per_shard=1000)
    # -> ['shards/train-000000.tar', ...]

A sample is a dict with

- ``jpg``: JPEG bytes (kept byte-for-byte), other image bytes, a ``PIL.Image`` or an image file
  path. Anything that is not already JPEG is converted to RGB and re-encoded as JPEG (``quality``),
  so every sample has a ``jpg`` member, which open_clip's pipeline reads. Every image is decoded
  once to catch corrupt files.
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

Readers: ``samples_from_folder`` (``img.jpg`` + ``img.txt`` side by side), ``samples_from_csv``
(image path + caption columns, open_clip's ``filepath`` / ``title`` by default), ``read_shard`` and
``iter_tar_samples`` (members with their exact tar bytes, used by the concepts CLI to rewrite
shards byte-for-byte; a tar cut inside a member or header, or without its end-of-archive blocks,
raises ``TruncatedTarError`` after the complete samples before the damage), ``iter_tar_stream_files``
(the training reader's stream of files, same damage rule: ``end_of_archive_problem``), plus
``member_bytes`` / ``end_of_archive`` to write such a rewrite.
"""
import contextlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from .atomic import write_text
from .messages import excerpt

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
JPEG_MAGIC = b"\xff\xd8\xff"
KEY_DIGITS = 9
MAX_LISTED_SKIPS = 20
# Same split as webdataset.tariterators.base_plus_ext: key = path up to the first "." of the name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# webdataset skips these (tar_file_iterator's meta files) rather than reading them as samples.
_META = re.compile(r"^__[^/]*__($|/)")


class BadSampleError(ValueError):
    """A sample that cannot be written (corrupt image, missing caption ...)."""


@dataclass
class ShardWriteStats:
    samples_in: int = 0
    written: int = 0
    reencoded: int = 0  # images converted to JPEG
    skipped: int = 0
    skipped_examples: List[str] = field(default_factory=list)
    shards: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"samples in: {self.samples_in}   written: {self.written}   skipped: {self.skipped}   "
                 f"re-encoded to JPEG: {self.reencoded}   shards: {len(self.shards)}"]
        lines += [f"  skipped {reason}" for reason in self.skipped_examples]
        if self.skipped > len(self.skipped_examples):
            lines.append(f"  ... and {self.skipped - len(self.skipped_examples)} more")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Writing

def encode_image(image: Union[bytes, str, os.PathLike, Any], quality: int = 95,
                 where: str = "image") -> Tuple[bytes, bool]:
    """JPEG bytes of ``image`` (bytes, path or ``PIL.Image``) and whether it had to be re-encoded."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                image = f.read()
        except OSError as exc:
            raise BadSampleError(f"{where}: cannot read image ({exc})") from exc
    if isinstance(image, (bytes, bytearray)):
        try:
            decoded = Image.open(io.BytesIO(image))
            decoded.load()  # full decode: catches truncated/corrupt data that open() alone misses
        except Exception as exc:
            raise BadSampleError(f"{where}: corrupt or unsupported image ({type(exc).__name__}: {exc})") from exc
        if bytes(image[:3]) == JPEG_MAGIC:
            return bytes(image), False
        image = decoded
    if not isinstance(image, Image.Image):
        raise BadSampleError(f"{where}: image must be bytes, a path or a PIL.Image, got {type(image).__name__}")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), True


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
    image, reencoded = encode_image(sample["jpg"], quality, where)
    members = [_member(f"{key}.jpg", image), _member(f"{key}.txt", caption.encode("utf-8"))]
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
    """Samples from a CSV/TSV of image paths (relative to the CSV's folder unless absolute) and captions.

    Read (now, so a bad table raises ``tables.TableError`` here) by ``open_clip_c2lip.tables.read_table``:
    cells as text; ``sep`` default a tab, as open_clip_train's ``--csv-separator``."""
    from . import tables

    table = tables.read_table(path, sep)
    tables.require_columns(table, path, [img_key, caption_key], sep)
    base = os.path.dirname(os.path.abspath(path))

    def samples() -> Iterator[Dict[str, Any]]:
        for row, (image, caption) in enumerate(zip(table[img_key], table[caption_key])):
            source = f"{path} row {row} ({image})"
            yield {"jpg": os.path.join(base, image), "txt": caption,
                   "json": {"caption": caption, "source": image}, "source": source}

    return samples()


# ------------------------------------------------------------------------------------------------
# Reading

@dataclass
class TarSample:
    """Consecutive tar members sharing a webdataset key: ``members`` as ``(TarInfo, data)`` pairs and
    ``raw``, each member's exact bytes in the tar (its header blocks, extended headers included, and
    its padded data), so a rewrite can copy members byte-for-byte.

    ``key`` is None for a member that is not part of a sample (directory, ``__meta__`` file, name
    without extension): such members are carried alone so rewriting keeps them in place.
    ``problem`` says what is wrong with the sample itself (e.g. two ``.txt`` members: which one is
    the caption is ambiguous), None if nothing: a per-sample fault, the shard's other samples are fine.
    """
    key: Optional[str]
    members: List[Tuple[tarfile.TarInfo, bytes]]
    raw: List[bytes] = field(default_factory=list)
    _extensions: List[Optional[str]] = field(default_factory=list)
    problem: Optional[str] = None
    _json: Any = None
    _json_parsed: bool = False

    @staticmethod
    def extension(info: tarfile.TarInfo) -> Optional[str]:
        match = _KEY_EXT.match(info.name)
        return match.group(2).lower() if match else None

    @property
    def extensions(self) -> List[Optional[str]]:
        if len(self._extensions) != len(self.members):  # computed once per member: hot in the CLI
            self._extensions = [self.extension(info) for info, _ in self.members]
        return self._extensions

    def member(self, extension: str) -> Optional[bytes]:
        extensions = self.extensions
        extension = extension.lower()
        return self.members[extensions.index(extension)][1] if extension in extensions else None

    def json_object(self, where: str = "sample"):
        """The parsed ``json`` member (a dict), None without one, or a ``BadSampleError`` saying why not."""
        if not self._json_parsed:
            self._json_parsed = True
            data = self.member("json")
            if data is not None:
                try:
                    self._json = json.loads(data.decode("utf-8"))
                    if not isinstance(self._json, dict):
                        self._json = BadSampleError(
                            f"{where}: json is not an object (got {type(self._json).__name__})")
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    self._json = BadSampleError(f"{where}: json member is not valid UTF-8 JSON ({exc})")
        return self._json


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class TruncatedTarError(tarfile.ReadError):
    """A tar that ends inside a member or a header, or without its end-of-archive blocks (a writer
    killed mid-write). ``iter_tar_samples`` has yielded every sample before the damage; ``lost_key``
    is the key of the sample that was being read (None if the damage is between samples)."""

    def __init__(self, message: str, lost_key: Optional[str], samples_read: int):
        super().__init__(message)
        self.lost_key = lost_key
        self.samples_read = samples_read


def end_of_archive_problem(offset: int, tail: bytes) -> Tuple[Optional[str], bool]:
    """(why a tar has no proper end at ``offset``, or None; whether its last member was complete).

    ``offset`` is where ``tarfile`` found no further header and ``tail`` the (up to 1024) bytes of the
    tar from there. POSIX ends a tar with two zero blocks; ``tarfile`` (file and stream modes) also
    stops silently at a cut or garbled header and at a file that just stops after a member (a killed
    writer), so the two blocks are checked here. One rule for the concepts CLI (``iter_tar_samples``)
    and the training reader (``iter_tar_stream_files``)."""
    if len(tail) >= 2 * tarfile.BLOCKSIZE and not tail[:2 * tarfile.BLOCKSIZE].strip(tarfile.NUL):
        return None, True
    if tail and not tail.strip(tarfile.NUL):  # cut inside the end blocks: every member was written
        return f"ends at byte {offset + len(tail)} with {len(tail)} of the 1024 end-of-archive bytes", True
    if not tail:
        return f"ends at byte {offset} right after a member, without the end-of-archive blocks", False
    return f"has a cut or unreadable header at byte {offset} (no end-of-archive blocks)", False


def _check_end_of_archive(f, offset: int) -> Tuple[Optional[str], bool]:
    f.seek(offset)
    return end_of_archive_problem(offset, f.read(2 * tarfile.BLOCKSIZE))


def _truncated(path: str, why: str, lost_key: Optional[str], num_samples: int) -> "TruncatedTarError":
    lost = f"sample {lost_key!r} (possibly incomplete) and anything after it are lost" if lost_key else \
        "anything after it is lost"
    return TruncatedTarError(
        f"{path}: truncated or damaged tar: {why}; {lost} ({num_samples} complete samples before it)",
        lost_key, num_samples)


def iter_tar_samples(path: str, fileobj: Optional[BinaryIO] = None) -> Iterator[TarSample]:
    """Stream a tar as samples (grouped like webdataset's ``group_by_keys``), members in tar order.
    ``fileobj`` (seekable, at the tar's start) is read instead of opening ``path``, which then only
    names the tar in errors (e.g. the decompressed copy of a ``.tar.gz``).

    A damaged tar (cut inside a member or a header, missing its end-of-archive blocks) raises
    ``TruncatedTarError`` after every complete sample before the damage has been yielded; the
    sample being read when the damage was found is not yielded (it may be incomplete)."""
    num_samples = 0

    def truncated(why: str, lost_key: Optional[str]) -> TruncatedTarError:
        return _truncated(path, why, lost_key, num_samples)

    with (open(path, "rb") if fileobj is None else contextlib.nullcontext(fileobj)) as f, \
            tarfile.open(fileobj=f, mode="r:") as tar:
        current: Optional[TarSample] = None
        while True:
            offset = tar.offset
            try:
                info = tar.next()  # re-seeks to the next header itself, so reading `f` below is safe
            except tarfile.ReadError as exc:
                raise truncated(f"unreadable from byte {offset} ({exc})",
                                current.key if current is not None else None) from exc
            if info is None:
                why, last_complete = _check_end_of_archive(f, tar.offset)
                if why is not None:
                    if last_complete and current is not None:
                        num_samples += 1
                        yield current
                        current = None
                    raise truncated(why, current.key if current is not None else None)
                break
            tar.members.clear()  # keep memory flat on big shards
            end = info.offset_data + (_padded(info.size) if info.isreg() else 0)
            f.seek(info.offset)
            raw = f.read(end - info.offset)
            match = _KEY_EXT.match(info.name) if info.isreg() and not _META.match(info.name) else None
            if len(raw) != end - info.offset:
                key = match.group(1) if match else None
                if current is not None and current.key != key:
                    num_samples += 1
                    yield current  # complete: the cut member starts another sample
                    current = None
                raise truncated(f"cut inside member {info.name!r} ({len(raw)} of "
                                f"{end - info.offset} bytes)", key)
            data = raw[info.offset_data - info.offset:][: info.size] if info.isreg() else b""
            if match is None:
                if current is not None:
                    num_samples += 1
                    yield current
                    current = None
                yield TarSample(None, [(info, data)], [raw])
                continue
            key, extension = match.group(1), match.group(2).lower()
            if current is not None and current.key == key:
                if extension in current.extensions and current.problem is None:
                    # kept (a rewrite copies it as is) and reported on this sample only
                    current.problem = f"has two .{extension} members ({info.name!r} twice)"
                current.members.append((info, data))
                current.raw.append(raw)
                current._extensions.append(extension)
                continue
            if current is not None:
                num_samples += 1
                yield current
            current = TarSample(key, [(info, data)], [raw], [extension])
        if current is not None:
            yield current


class _ReadRecorder:
    """``tarfile``'s stream, remembering where its last ``read`` started and what it returned: after
    ``TarFile.next`` found no header, that is the (decompressed) block read at ``TarFile.offset``."""

    def __init__(self, stream):
        self.stream = stream
        self.last: Tuple[int, bytes] = (-1, b"")

    def read(self, size: int) -> bytes:
        start = self.stream.tell()
        data = self.stream.read(size)
        self.last = (start, data)
        return data

    def __getattr__(self, name):
        return getattr(self.stream, name)


def iter_tar_stream_files(fileobj, path: str) -> Iterator[Tuple[str, bytes]]:
    """``(member name, data)`` of a tar stream's regular files, in tar order, for the training reader.

    Reads like webdataset's ``tar_file_iterator`` (``tarfile`` mode ``r|*``: any compression it
    knows, no seeking, each byte read once; meta files ``__*__`` skipped), with the damage rule of
    ``iter_tar_samples``: the files of the sample being read are held back until the next sample
    starts or the archive ends with its end-of-archive blocks, so a tar cut inside a member or a
    header, or missing its end blocks (a killed writer), yields exactly the complete samples before
    the damage and then raises ``TruncatedTarError`` (the sample read at the cut, possibly
    incomplete, is not yielded). Errors of the compression layer raise it too."""
    num_samples = 0
    held: List[Tuple[str, bytes]] = []
    held_key: Optional[str] = None
    tar = tarfile.open(fileobj=fileobj, mode="r|*")  # reads the first header: outside the recorder
    recorder = _ReadRecorder(tar.fileobj)
    tar.fileobj = recorder
    last_name = None
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _truncated(path, f"unreadable after byte {tar.offset} ({exc})", held_key, num_samples) from exc
        if info is None:
            break
        tar.members = []  # keep memory flat (as webdataset)
        last_name = info.name
        if not info.isreg() or _META.match(info.name):
            continue
        match = _KEY_EXT.match(info.name)
        key = match.group(1) if match else None
        if key != held_key and held:
            yield from held
            num_samples += held_key is not None
            held = []
        held_key = key
        try:
            data = tar.extractfile(info).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _truncated(path, f"cut inside member {info.name!r} ({exc})", key, num_samples) from exc
        held.append((info.name, data))
    offset, position = tar.offset, recorder.stream.tell()
    if position < offset:  # stream ended while skipping to the next header
        why, complete = f"ends at byte {position} inside member {last_name!r} (its data or padding)", False
    else:
        start, head = recorder.last
        if start != offset:  # no member at all: the header at 0 was read while opening (a zero block)
            head = tarfile.NUL * tarfile.BLOCKSIZE if position - offset == tarfile.BLOCKSIZE else b""
        more = recorder.stream.read(tarfile.BLOCKSIZE) if len(head) == tarfile.BLOCKSIZE else b""
        why, complete = end_of_archive_problem(offset, head + more)
    if why is None or complete:
        yield from held
        num_samples += bool(held) and held_key is not None
        held, held_key = [], None
    if why is not None:
        raise _truncated(path, why, held_key, num_samples)


def read_shard(path: str) -> List[Dict[str, Any]]:
    """Samples of a shard as dicts ``{"__key__": key, extension: bytes, ...}`` (non-samples left out).

    A sample with a ``problem`` (two members of one extension) raises ``ValueError`` naming it."""
    samples = []
    for s in iter_tar_samples(path):
        if s.problem is not None:
            raise ValueError(f"{path}: sample {s.key!r} {s.problem}")
        if s.key is not None:
            samples.append({"__key__": s.key, **{s.extension(i): d for i, d in s.members}})
    return samples


def json_member_info(template: tarfile.TarInfo, obj: Dict[str, Any], name: Optional[str] = None
                     ) -> Tuple[tarfile.TarInfo, bytes]:
    """A json member holding ``obj``, with ``template``'s header fields (name, mode, owner, mtime)."""
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    info = tarfile.TarInfo(name or template.name)
    for attr in ("mode", "mtime", "uid", "gid", "uname", "gname"):
        setattr(info, attr, getattr(template, attr))
    info.size = len(data)
    return info, data


def member_bytes(info: tarfile.TarInfo, data: bytes) -> bytes:
    """A regular member's bytes in a tar: header (PAX when needed) and data padded to whole blocks."""
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header + data + tarfile.NUL * (_padded(len(data)) - len(data))


def end_of_archive(size: int) -> bytes:
    """The two zero blocks closing a tar of ``size`` bytes, padded to a whole record like ``tarfile``."""
    size += 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-size) % tarfile.RECORDSIZE)
