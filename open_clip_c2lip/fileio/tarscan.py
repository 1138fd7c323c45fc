"""The members of a tar read from a forward-only byte stream, resynchronising after damage as GNU tar does
(and off the block grid).

``scan_tar(stream)`` yields, in archive order:

- ``TarMember``: a member as ``tarfile`` parses it (``TarInfo.fromtarfile``: GNU long names, PAX
  headers), with its exact header bytes (extended headers included) and its data;
- ``DamagedRegion``: bytes where a header belongs but none is valid (a bad checksum, a number field
  that is not a number, a negative size, a lone zero block inside the archive, data after the
  end-of-archive blocks). The scan then skips 512-byte blocks to the next block that is a sane
  header (valid checksum, numbers, a known type, a name), as GNU tar does ("Skipping to next
  header"), and goes on from there. Unlike GNU tar it also finds a header off the 512-byte grid
  (by its ``ustar`` magic), so the members after inserted or removed bytes are kept. The names and count of the members lost in the region are read
  leniently from the damaged headers where they are still legible (``lost_names``);
- ``TarEnd`` last: how the archive ends: its end-of-archive blocks, or early (truncated): inside a
  member's data, inside a header, right after a member without the end blocks.

Each byte is read once and nothing is kept but the current member and, in a damaged region, the
current block: the training reader (a pipe, a compressed stream) and the concepts CLI both use it.
A damaged compressed stream ends the decompressed stream early, which reads as a truncation here.
"""
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = tarfile.NUL * BLOCK
# header types a resynchronisation accepts (tarfile's, and the PAX / Solaris extended headers)
_HEADER_TYPES = frozenset(tarfile.SUPPORTED_TYPES) | {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}


def padded(size: int) -> int:
    """``size`` rounded up to whole 512-byte blocks."""
    return -(-size // BLOCK) * BLOCK


@dataclass
class TarMember:
    """One member: ``header`` its exact header blocks (extended ones included) starting at byte
    ``offset``, ``data`` its content (``info.size`` bytes for a regular file, else empty) and
    ``span`` the bytes its data occupies in the tar (padding included)."""
    info: tarfile.TarInfo
    header: bytes
    data: bytes
    offset: int
    span: int

    @property
    def raw(self) -> bytes:
        """The member's exact bytes in the tar: header blocks, data, zero padding."""
        return self.header + self.data + tarfile.NUL * (self.span - len(self.data))


@dataclass
class DamagedRegion:
    """Bytes ``[offset, resume)`` that hold no valid header where one belongs.

    ``resume``: the next valid header, None when none follows (``end`` is then where the data ends).
    ``lost_names``: names read leniently from the damaged headers, in order; ``names_complete``:
    whether those headers chain exactly (each one's size leads to the next) from ``offset`` to
    ``resume``, so that ``lost_names`` are all the members lost there. ``end_blocks``: the region
    runs into the end-of-archive blocks (what was lost was the archive's last member(s)).
    """
    offset: int
    reason: str
    resume: Optional[int] = None
    end: int = 0
    lost_names: List[str] = field(default_factory=list)
    names_complete: bool = False
    end_blocks: bool = False
    after_end: bool = False  # data found after the end-of-archive blocks

    @property
    def skipped(self) -> int:
        return (self.resume if self.resume is not None else self.end) - self.offset


# how an archive ends: its end-of-archive blocks, or early
END_BLOCKS, END_BLOCKS_CUT, AFTER_MEMBER, IN_HEADER, IN_MEMBER, IN_DAMAGE, EMPTY = (
    "end-blocks", "end-blocks-cut", "after-member", "in-header", "in-member", "in-damage", "empty")


@dataclass
class TarEnd:
    """How the archive ends, at byte ``offset``: ``kind`` one of ``END_BLOCKS`` (proper end),
    ``END_BLOCKS_CUT`` (cut inside the end blocks: every member is complete), ``AFTER_MEMBER`` (no
    end blocks after the last member: a writer stopped), ``IN_HEADER``, ``IN_MEMBER`` (cut inside
    ``member``'s data: ``got`` of ``expected`` bytes), ``IN_DAMAGE`` (a damaged region runs to the
    end without end blocks), ``EMPTY`` (no byte at all). ``member``: the last member read, for the
    cuts after or inside one."""
    kind: str
    offset: int
    member: Optional[str] = None
    got: int = 0
    expected: int = 0
    cut_name: Optional[str] = None  # ``IN_HEADER``: the name in the cut header, where it is legible

    @property
    def truncated(self) -> bool:
        return self.kind not in (END_BLOCKS, EMPTY)


TarEvent = Union[TarMember, DamagedRegion, TarEnd]


class _Source:
    """The stream as ``tarfile.TarInfo.fromtarfile`` reads a ``TarFile`` (``fileobj``, ``encoding``,
    ``errors``, ``pax_headers``, ``offset``), with the position counted, bytes pushed back, and what
    is read between ``capture`` and ``captured`` recorded (a member's header bytes)."""

    encoding = "utf-8"  # tarfile's default on Linux (the file system encoding); webdataset reads with it
    errors = "surrogateescape"

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.fileobj = self
        self.pax_headers: dict = {}
        self.offset = 0  # set by fromtarfile: where the next header starts
        self.position = 0
        self.hit_end = False  # a read came back short: the data has ended
        self._pushback = b""
        self._capture: Optional[List[bytes]] = None

    def read(self, size: int) -> bytes:
        parts, wanted = [], size
        if self._pushback:
            parts.append(self._pushback[:size])
            self._pushback = self._pushback[size:]
            wanted -= len(parts[0])
        while wanted > 0:
            chunk = self.stream.read(wanted)
            if not chunk:
                self.hit_end = True
                break
            parts.append(chunk)
            wanted -= len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.position += len(data)
        if self._capture is not None:
            self._capture.append(data)
        return data

    def tell(self) -> int:
        return self.position

    def unread(self, data: bytes) -> None:
        self._pushback = data + self._pushback
        self.position -= len(data)
        self.hit_end = False

    def capture(self) -> None:
        self._capture = []

    def captured(self) -> bytes:
        data, self._capture = b"".join(self._capture or ()), None
        return data


def _octal(field_bytes: bytes) -> Optional[int]:
    """A tar number field (octal text, or GNU base-256), None when it is neither."""
    if field_bytes[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field_bytes[1:], "big")
        return value - 256 ** (len(field_bytes) - 1) if field_bytes[:1] == b"\xff" else value
    text = field_bytes.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        return None


def is_header(block: bytes) -> bool:
    """Whether ``block`` is a sane tar header: a valid checksum (``tarfile.TarInfo.frombuf``), number
    fields that are numbers, a size >= 0, a known type and a name. What a resynchronisation accepts."""
    if len(block) != BLOCK or block == ZERO_BLOCK or block[156:157] not in _HEADER_TYPES or not block[:1].strip(b"\0"):
        return False
    try:
        info = tarfile.TarInfo.frombuf(block, _Source.encoding, _Source.errors)
    except tarfile.HeaderError:
        return False
    return info.size >= 0 and bool(info.name)


def _legible_name(block: bytes) -> Optional[str]:
    """The name in a (possibly damaged) header block, if it reads as one: UTF-8, printable."""
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix holds the leading directories
        prefix = block[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text and text.isprintable() else None


def _cut_name(block: bytes) -> Optional[str]:
    """The member name in the first block of a cut header, where it is legible (not for the
    extended headers, whose own name is not the member's)."""
    if len(block) < 101 or block[156:157] in _EXTENSION_TYPES:
        return None
    return _legible_name(block[:BLOCK].ljust(BLOCK, b"\0"))


class _LostMembers:
    """The members of a damaged region, followed header to header from its damaged first one while
    their names and sizes stay legible (a bad checksum often leaves them intact)."""

    def __init__(self, offset: int):
        self.next_header = offset
        self.names: List[str] = []
        self.legible = True
        self.zeros_at: Optional[int] = None  # the chain ran into zero blocks (the end of the archive) here
        self._long_name: Optional[str] = None
        self._long_name_at: Optional[Tuple[int, int]] = None  # (offset, length) of a GNU long name's data

    def see(self, position: int, block: bytes) -> None:
        if self._long_name_at is not None and position == self._long_name_at[0]:
            try:
                self._long_name = block[: self._long_name_at[1]].split(b"\0", 1)[0].decode("utf-8")
            except UnicodeDecodeError:
                self._long_name = None
            self._long_name_at = None
            return
        if not self.legible or self.zeros_at is not None or position != self.next_header:
            return
        if block == ZERO_BLOCK:
            self.zeros_at = position
            return
        size, name = _octal(block[124:136]), _legible_name(block)
        if size is None or size < 0 or name is None:
            self.legible = False
            return
        kind = block[156:157]
        self.next_header = position + BLOCK + padded(size)
        if kind == tarfile.GNUTYPE_LONGNAME and 0 < size <= BLOCK:
            self._long_name_at = (position + BLOCK, size)
        elif kind not in _EXTENSION_TYPES:
            self.names.append(self._long_name or name)
            self._long_name = None

    def complete(self, resume: Optional[int]) -> bool:
        """Whether the chain of legible headers covers the region exactly (to ``resume``, or to the
        end-of-archive blocks when nothing follows)."""
        end = resume if resume is not None else self.zeros_at
        return self.legible and end is not None and self.next_header == end and self._long_name_at is None


_EXTENSION_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGLINK,
                    tarfile.GNUTYPE_LONGNAME)


def _unaligned_header(window: bytes) -> Optional[int]:
    """The first ``h`` in 1..511 where a sane header starts in ``window`` (two consecutive blocks),
    found by its ``ustar`` magic (POSIX, GNU and PAX headers carry it at byte 257)."""
    found = window.find(_MAGIC, _MAGIC_AT + 1)
    while found != -1 and found - _MAGIC_AT < BLOCK:
        start = found - _MAGIC_AT
        if start + BLOCK <= len(window) and is_header(window[start:start + BLOCK]):
            return start
        found = window.find(_MAGIC, found + 1)
    return None


_MAGIC, _MAGIC_AT = b"ustar", 257


def _resynchronise(src: _Source, offset: int, first_block: bytes, reason: str,
                   after_end: bool = False) -> DamagedRegion:
    """Skip blocks from ``offset`` (``first_block``, read already) to the next sane header."""
    lost = _LostMembers(offset)
    if first_block == ZERO_BLOCK:  # a zeroed header: its member's name and size are gone
        lost.legible = False
    elif not after_end:
        lost.see(offset, first_block)
    position, zeros, previous = offset + len(first_block), 0, first_block
    while len(first_block) == BLOCK:
        block = src.read(BLOCK)
        shift = _unaligned_header(previous + block)
        if shift is not None:  # bytes inserted or removed: the members after them are off the block grid
            src.unread((previous + block)[shift:])
            resume = position - BLOCK + shift
            return DamagedRegion(offset, reason, resume, resume, lost.names, False, False, after_end)
        previous = block
        if len(block) < BLOCK:
            end_blocks = zeros >= 2 and not block.strip(b"\0")
            return DamagedRegion(offset, reason, None, position + len(block), lost.names,
                                 end_blocks and lost.complete(None), end_blocks, after_end)
        if is_header(block):
            src.unread(block)
            return DamagedRegion(offset, reason, position, position, lost.names, lost.complete(position),
                                 False, after_end)
        zeros = zeros + 1 if block == ZERO_BLOCK else 0
        lost.see(position, block)
        position += BLOCK
    return DamagedRegion(offset, reason, None, position, lost.names, False, False, after_end)


def _after_end_blocks(src: _Source, offset: int) -> Iterator[TarEvent]:
    """After the two end-of-archive blocks at ``offset``: zero padding to the end is a proper end.
    Anything else is a damaged region from ``offset`` (a zeroed header looks like end blocks; tars
    joined by ``cat``): where a valid header follows, its members are read on, as ``tar -i`` does."""
    position = offset + 2 * BLOCK
    while True:
        block = src.read(BLOCK)
        if not block.strip(b"\0"):
            if len(block) < BLOCK:
                yield TarEnd(END_BLOCKS, offset)
                return
            position += BLOCK
            continue
        if is_header(block):  # only zero blocks in between: nothing is lost there
            src.unread(block)
            yield DamagedRegion(offset, "more members after the end-of-archive blocks", position, position,
                                names_complete=True, after_end=True)
            return
        region = _resynchronise(src, position, block, "data after the end-of-archive blocks", after_end=True)
        region.offset = offset
        yield region
        if region.resume is None:
            yield TarEnd(END_BLOCKS, region.end)
        return


def scan_tar(stream: BinaryIO) -> Iterator[TarEvent]:
    """``TarMember``s and ``DamagedRegion``s of the tar in ``stream`` (read forward only from its
    current position, which counts as byte 0), then one ``TarEnd`` (see the module docstring)."""
    src = _Source(stream)
    last_member: Optional[str] = None
    while True:
        offset = src.position
        block = src.read(BLOCK)
        if not block:
            yield TarEnd(EMPTY if offset == 0 else AFTER_MEMBER, offset, last_member)
            return
        if len(block) < BLOCK:
            if offset > 0 and not block.strip(b"\0"):
                yield TarEnd(END_BLOCKS_CUT, offset, last_member)
            else:
                yield TarEnd(IN_HEADER, offset, last_member, cut_name=_cut_name(block))
            return
        if block == ZERO_BLOCK:
            second = src.read(BLOCK)
            if second == ZERO_BLOCK:
                events = list(_after_end_blocks(src, offset))
                yield from events
                if isinstance(events[-1], TarEnd):
                    return
                continue  # members follow the end blocks: read on
            if not second.strip(b"\0"):  # cut inside the end blocks: every member was complete
                yield TarEnd(END_BLOCKS_CUT, offset, last_member)
                return
            src.unread(second)
            reason = "a zero block inside the archive"
        else:
            src.unread(block)
            src.capture()
            try:
                info = tarfile.TarInfo.fromtarfile(src)
                reason = "" if info.size >= 0 else "negative size"
            except (tarfile.HeaderError, ValueError, UnicodeError) as exc:  # ValueError: malformed PAX records
                reason = str(exc) or type(exc).__name__
            header = src.captured()
            if src.hit_end:  # the data ended inside the header blocks
                yield TarEnd(IN_HEADER, offset, last_member, cut_name=_cut_name(block))
                return
            if not reason:
                size = info.size if info.isreg() else 0
                span = src.offset - src.position
                data = src.read(size)
                padding = src.read(span - size) if len(data) == size else b""
                if len(data) + len(padding) < span:
                    yield TarEnd(IN_MEMBER, offset, info.name, len(header) + len(data) + len(padding),
                                 len(header) + span)
                    return
                yield TarMember(info, header, data, offset, span)
                last_member = info.name
                continue
            src.unread(header[BLOCK:])
        region = _resynchronise(src, offset, block, reason)
        yield region
        if region.resume is None:
            yield TarEnd(END_BLOCKS if region.end_blocks else IN_DAMAGE, region.end)
            return
