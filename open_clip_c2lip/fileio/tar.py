"""Read webdataset shards (tar files) as webdataset groups them, keep what damage leaves readable,
and write members byte-exactly.

``iter_tar_samples`` streams a shard (plain or compressed, read forward once) as samples:
consecutive members sharing a key (webdataset's ``base_plus_ext`` split), each with its exact tar
bytes, so the concepts CLI can rewrite a shard byte-for-byte; ``iter_tar_stream_files`` gives the
training reader the same samples' files. One damage rule serves both (``fileio.tarscan``):

- a damaged header inside the archive (bad checksum, garbled fields) is skipped to the next valid
  header, as GNU tar does, and reading goes on: every sample read whole on either side is kept;
- a truncated archive (its data ends inside a member or a header, or after a member without the
  end-of-archive blocks; a cut or corrupt compressed stream) keeps every sample before the cut.

A sample next to damage is kept when it provably lost nothing there: the damaged headers' names are
legible and none is its own, or (names unreadable) no intact sample of the shard has more members
on the damaged side than it has (compared once an intact sample after the damage has been read).
Otherwise it is lost, and so is a sample whose members lie on both sides of the damage or whose
member is cut. After the last sample, ``DamagedTarError`` says what was damaged or truncated and
how many samples were kept and lost. ``read_shard`` returns a shard's samples as dicts;
``json_member_info`` / ``member_bytes`` / ``end_of_archive`` write a rewrite.
"""
import collections
import contextlib
import inspect
import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Deque, Dict, Iterator, List, Optional, Set, Tuple, Union

from webdataset.tariterators import base_plus_ext, tar_file_iterator

from .formats import shard_stream
from .tarscan import (AFTER_MEMBER, EMPTY, END_BLOCKS_CUT, IN_DAMAGE, IN_HEADER, IN_MEMBER,
                      DamagedRegion, TarEnd, TarMember, padded, scan_tar)

# the meta files webdataset's reader skips rather than reading them as samples (its default)
_META = re.compile(inspect.signature(tar_file_iterator).parameters["skip_meta"].default)
# a sample next to damage is judged once this many intact samples follow it (or the shard ends),
# holding back at most _MAX_HELD samples: shards mix samples with and without optional members
_INTACT_AFTER = 16
_MAX_HELD = 64
_LISTED_KEYS = 5


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
    parts: List[TarMember] = field(default_factory=list)
    _extensions: List[Optional[str]] = field(default_factory=list)
    problem: Optional[str] = None
    _json: Any = None
    _json_parsed: bool = False

    @staticmethod
    def extension(info: tarfile.TarInfo) -> Optional[str]:
        extension = base_plus_ext(info.name)[1]
        return extension.lower() if extension is not None else None

    @property
    def raw(self) -> List[bytes]:
        return [part.raw for part in self.parts]

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

    def add(self, part: TarMember, extension: Optional[str]) -> None:
        if extension is not None and extension in self.extensions and self.problem is None:
            # kept (a rewrite copies it as is) and reported on this sample only
            self.problem = f"has two .{extension} members ({part.info.name!r} twice)"
        self.members.append((part.info, part.data))
        self.parts.append(part)
        self._extensions.append(extension)


# ------------------------------------------------------------------------------------------------
# Damage: what is kept, what is lost, and how it is reported

class DamagedTarError(tarfile.ReadError):
    """A damaged or truncated tar, raised after every sample that could be kept was yielded.

    ``damaged``: headers inside the archive were unreadable (skipped to the next valid header);
    ``truncated``: the data ends early (a cut file, a damaged compressed stream). ``kept``: samples
    yielded; ``lost``: samples known lost, ``lost_exact`` False when more may be (a damaged header
    whose name is unreadable); ``lost_keys``: the first few lost keys; ``problems``: one text each."""

    def __init__(self, path: str, problems: List[str], kept: int, lost: int, lost_exact: bool,
                 lost_keys: List[str], damaged: bool, truncated: bool, missing_from: Optional[int] = None):
        self.path, self.problems, self.kept, self.lost = path, problems, kept, lost
        self.lost_exact, self.lost_keys, self.damaged, self.truncated = lost_exact, lost_keys, damaged, truncated
        self.missing_from = missing_from
        kinds = " and ".join(k for k, on in (("damaged", damaged), ("truncated", truncated)) if on) or "damaged"
        super().__init__(f"{path}: {kinds} tar: {'; '.join(problems)}; {self.outcome}")

    @property
    def outcome(self) -> str:
        lost = f"{'' if self.lost_exact else 'at least '}{self.lost:,}"
        keys = ", ".join(repr(k) for k in self.lost_keys[:_LISTED_KEYS])
        more = ", ..." if self.lost > _LISTED_KEYS else ""
        text = f"{self.kept:,} complete samples kept, {lost} lost" + (f" ({keys}{more})" if keys else "")
        if self.missing_from is not None:
            text += f"; whatever the shard held after byte {self.missing_from:,} is missing"
        return text


_Region = Union[DamagedRegion, TarEnd]
# tarfile's words for a header it refuses, said plainly
_REASONS = {"invalid header": "a number field is not a number", "bad checksum": "bad checksum"}


def _key(name: str) -> Optional[str]:
    return base_plus_ext(name)[0] if not _META.match(name) else None


def _region_text(region: DamagedRegion) -> str:
    if region.after_end:
        where = f"{region.reason} (at byte {region.offset:,})"
    else:
        where = f"bad tar header at byte {region.offset:,} ({_REASONS.get(region.reason, region.reason)})"
    if region.resume is None:
        text = f"{where}: no valid header after it ({region.skipped:,} bytes to the end skipped)"
    elif region.skipped:
        text = f"{where}: skipped {region.skipped:,} bytes to the next valid header at byte {region.resume:,}"
    else:
        return where
    if region.lost_names:
        names = ", ".join(repr(n) for n in region.lost_names[:_LISTED_KEYS])
        text += f"; lost there: member(s) {names}" + ("" if region.names_complete else " and maybe more")
    elif region.skipped and not region.after_end:
        text += "; its member's name is unreadable"
    return text


def _end_text(end: TarEnd) -> Optional[str]:
    if end.kind == IN_MEMBER:
        return f"the data ends at byte {end.offset + end.got:,} inside member {end.member!r} " \
               f"({end.got:,} of its {end.expected:,} bytes)"
    if end.kind == IN_HEADER:
        return f"the data ends at byte {end.offset:,} inside a header" + (
            f" (of member {end.cut_name!r})" if end.cut_name else "")
    if end.kind == AFTER_MEMBER:
        return f"the data ends at byte {end.offset:,} right after member {end.member!r}, without the " \
               "end-of-archive blocks (a writer stopped early?)"
    if end.kind == END_BLOCKS_CUT:
        return f"the data ends at byte {end.offset:,} inside the end-of-archive blocks (every member is " \
               "complete)"
    if end.kind == IN_DAMAGE:
        return f"the data ends at byte {end.offset:,} inside the damaged part, without end-of-archive blocks"
    return None


@dataclass
class _Held:
    """A sample read, waiting to be judged: damage right before its first member (``before``) or
    after its last (``after``), or a reason it is certainly incomplete (``broken``)."""
    sample: TarSample
    order: int
    before: Optional[_Region] = None
    after: Optional[_Region] = None
    broken: Optional[str] = None

    @property
    def suspect(self) -> bool:
        return self.sample.key is not None and (self.before is not None or self.after is not None
                                                or self.broken is not None)


def _lost_here(held: _Held, side: str, region: _Region, patterns: Set[Tuple]) -> Optional[str]:
    """Why ``held`` may have lost members to ``region`` on ``side`` (``end``: after its last member,
    ``start``: before its first), or None when it provably did not."""
    key = held.sample.key
    if isinstance(region, DamagedRegion):
        named = [n for n in region.lost_names if _key(n) == key]
        if named:
            return f"its member {named[0]!r} was in the bad header at byte {region.offset:,}"
        if region.names_complete:
            return None  # every member lost there is named, none of them is this sample's
    have = tuple(held.sample.extensions)
    if not patterns:
        return "possibly incomplete: no intact sample in the shard shows what a complete one holds"
    longer = sorted(p for p in patterns if len(p) > len(have)
                    and (p[:len(have)] == have if side == "end" else p[len(p) - len(have):] == have))
    if longer:
        return f"incomplete: it has {list(have)}, intact samples of the shard have {list(longer[0])}"
    return None


class _Judge:
    """Groups members into samples and decides which damaged neighbours are kept (module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.patterns: Set[Tuple] = set()  # extension lists of intact samples
        self.queue: Deque[_Held] = collections.deque()
        self.order = 0
        self.intact: Deque[int] = collections.deque(maxlen=_INTACT_AFTER)  # orders of the last intact samples
        self.kept = self.lost = 0
        self.lost_keys: List[str] = []
        self.lost_set: Set[str] = set()
        self.blamed: Set[int] = set()  # regions a lost neighbour was found to have lost members to
        self.lost_exact = True
        self.reasons: List[str] = []

    def close(self, held: _Held) -> Iterator[TarSample]:
        if held.sample.key is not None and not held.suspect:
            self.patterns.add(tuple(held.sample.extensions))
            self.intact.append(held.order)
        self.queue.append(held)
        return self.release(final=False)

    def release(self, final: bool) -> Iterator[TarSample]:
        while self.queue:
            held = self.queue[0]
            waiting = len(self.intact) < _INTACT_AFTER or self.intact[0] < held.order
            if held.suspect and not final and waiting and len(self.queue) < _MAX_HELD:
                return
            self.queue.popleft()
            why = held.broken
            for side, region in (("end", held.after), ("start", held.before)):
                if why is None and region is not None:
                    why = _lost_here(held, side, region, self.patterns)
                    if why is not None:
                        self.blamed.add(id(region))
            if why is None:
                self.kept += held.sample.key is not None
                yield held.sample
            else:
                self.lose(held.sample.key, why)

    def lose(self, key: str, why: str) -> None:
        self.lost += 1
        self.lost_set.add(key)
        if len(self.lost_keys) < _LISTED_KEYS:
            self.lost_keys.append(key)
            self.reasons.append(f"sample {key!r}: {why}")

    def new(self, key: Optional[str]) -> _Held:
        self.order += 1
        return _Held(TarSample(key, []), self.order)


def _samples(events: Iterator, path: str, stream_problem, compression: Optional[str]) -> Iterator[TarSample]:
    """Group ``scan_tar``'s events into samples, keeping what the damage rule allows; raises
    ``DamagedTarError`` at the end if anything was damaged or truncated."""
    judge = _Judge(path)
    current: Optional[_Held] = None
    damage: Optional[DamagedRegion] = None  # a region since the last member
    regions: List[DamagedRegion] = []
    members = 0
    end: Optional[TarEnd] = None
    for event in events:
        if isinstance(event, DamagedRegion):
            regions.append(event)
            damage = event
            continue
        if isinstance(event, TarEnd):
            end = event
            break
        members += 1
        info = event.info
        is_sample = info.isreg() and not _META.match(info.name)
        key, extension = base_plus_ext(info.name) if is_sample else (None, None)
        extension = extension.lower() if extension is not None else None
        if key is not None and current is not None and current.sample.key == key:
            if damage is not None and current.broken is None and _lost_here(current, "end", damage, set()):
                current.broken = f"members on both sides of the bad header at byte {damage.offset:,}"
                judge.blamed.add(id(damage))
            current.sample.add(event, extension)
            damage = None
            continue
        if current is not None:
            current.after = damage
            yield from judge.close(current)
        current = judge.new(key)
        current.sample.add(event, extension)
        current.before = damage
        damage = None
        if key is None:
            yield from judge.close(current)
            current = None
    assert end is not None
    truncated = end.truncated or stream_problem() is not None
    cut = end.member if end.kind == IN_MEMBER else end.cut_name  # the member whose data or header is cut
    if current is not None:
        if cut is not None and _key(cut) == current.sample.key:
            current.broken = f"its member {cut!r} is cut"
        elif end.kind in (AFTER_MEMBER, IN_DAMAGE) or (end.kind == IN_HEADER and cut is None) or damage is not None:
            current.after = damage or end  # members of it may be missing
        yield from judge.close(current)
    yield from judge.release(final=True)
    if cut is not None and _key(cut) is not None and (current is None or _key(cut) != current.sample.key):
        judge.lose(_key(cut), f"its member {cut!r} is cut")
    for region in regions:  # whole samples in damaged regions, named by their legible headers
        keys = [_key(name) for name in region.lost_names if _key(name) is not None]
        for name in region.lost_names:
            if _key(name) is not None and _key(name) not in judge.lost_set:
                judge.lose(_key(name), f"its member {name!r} was in the damaged part at byte {region.offset:,}")
        if not region.names_complete:
            judge.lost_exact = False
            if not keys and id(region) not in judge.blamed:  # an unnamed member of some other sample
                judge.lost += 1
    problem = stream_problem()
    if members == 0 and regions and regions[0].offset == 0 and regions[0].resume is None:
        what = f"the decompressed {compression} data is" if compression else "the file is"
        raise tarfile.ReadError(f"{path}: {what} not a tar archive (no valid tar header in its {end.offset:,} bytes)"
                                + (f"; {problem}" if problem else ""))
    if end.kind == EMPTY:
        raise tarfile.ReadError(f"{path}: " + (f"{problem}; no tar data before it" if problem else "empty file"))
    problems = [_region_text(r) for r in regions]
    end_text = _end_text(end)
    if end_text is not None:
        problems.append(end_text)
    if problem is not None:
        problems.append(problem)
    if problems:
        problems += judge.reasons
        missing_from = end.offset + end.got if end.kind in (IN_MEMBER, IN_HEADER, AFTER_MEMBER, IN_DAMAGE) else None
        raise DamagedTarError(path, problems, judge.kept, judge.lost, judge.lost_exact, judge.lost_keys,
                              damaged=bool(regions), truncated=truncated, missing_from=missing_from)


def iter_tar_samples(path: str, fileobj: Optional[BinaryIO] = None,
                     compression: Optional[str] = "auto") -> Iterator[TarSample]:
    """Stream a shard as samples (grouped like webdataset's ``group_by_keys``), members in tar order.

    ``fileobj`` (read forward from its current position) is read instead of opening ``path``, which
    then only names the shard in messages. ``compression``: ``gzip``, ``bz2``, ``xz``, None (a plain
    tar) or ``"auto"`` (from the leading bytes, as webdataset). Damage: see the module docstring;
    ``DamagedTarError`` comes after the last sample, ``tarfile.ReadError`` for a file that is empty or
    holds no tar header at all."""
    with (open(path, "rb") if fileobj is None else contextlib.nullcontext(fileobj)) as f:
        stream, compression = shard_stream(f, compression)
        yield from _samples(scan_tar(stream), path, lambda: getattr(stream, "problem", None), compression)


def iter_tar_stream_files(fileobj: BinaryIO, path: str) -> Iterator[Tuple[str, bytes]]:
    """``(member name, data)`` of the samples of a shard stream, in tar order, for the training
    reader: what webdataset's ``tar_file_iterator`` gives (regular files; ``__*__`` meta files
    skipped; any compression it detects), with ``iter_tar_samples``' damage rule: damaged headers
    are skipped to the next valid one, a sample that lost members to damage or a cut is left out,
    and ``DamagedTarError`` after the last sample says what was damaged or cut and how many samples
    were kept and lost."""
    for sample in iter_tar_samples(path, fileobj):
        if sample.key is not None:
            for info, data in sample.members:
                yield info.name, data


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
    return header + data + tarfile.NUL * (padded(len(data)) - len(data))


def end_of_archive(size: int) -> bytes:
    """The two zero blocks closing a tar of ``size`` bytes, padded to a whole record like ``tarfile``."""
    size += 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-size) % tarfile.RECORDSIZE)
