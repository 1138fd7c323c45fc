"""Read webdataset shards (tar files) as webdataset groups them, and write members byte-exactly.

``iter_tar_samples`` streams a tar as samples: consecutive members sharing a key (webdataset's
``base_plus_ext`` split), each with its exact tar bytes, so the concepts CLI can rewrite a shard
byte-for-byte. ``iter_tar_stream_files`` is the training reader's stream of files. Both apply one
damage rule (``end_of_archive_problem``): a tar cut inside a member or a header, or without its
end-of-archive blocks (a killed writer), yields the complete samples before the damage and then
raises ``TruncatedTarError``. ``read_shard`` returns a shard's samples as dicts;
``json_member_info`` / ``member_bytes`` / ``end_of_archive`` write a rewrite.
"""
import contextlib
import inspect
import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple

from webdataset.tariterators import base_plus_ext, tar_file_iterator

# the meta files webdataset's reader skips rather than reading them as samples (its default)
_META = re.compile(inspect.signature(tar_file_iterator).parameters["skip_meta"].default)


class BadSampleError(ValueError):
    """A sample that cannot be read or written (corrupt image, missing caption, json that is not an
    object ...); the message names it."""



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
        extension = base_plus_ext(info.name)[1]
        return extension.lower() if extension is not None else None

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
            is_sample_file = info.isreg() and not _META.match(info.name)
            key, extension = base_plus_ext(info.name) if is_sample_file else (None, None)
            if len(raw) != end - info.offset:
                if current is not None and current.key != key:
                    num_samples += 1
                    yield current  # complete: the cut member starts another sample
                    current = None
                raise truncated(f"cut inside member {info.name!r} ({len(raw)} of "
                                f"{end - info.offset} bytes)", key)
            data = raw[info.offset_data - info.offset:][: info.size] if info.isreg() else b""
            if key is None:
                if current is not None:
                    num_samples += 1
                    yield current
                    current = None
                yield TarSample(None, [(info, data)], [raw])
                continue
            extension = extension.lower()
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
        key = base_plus_ext(info.name)[0]
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
