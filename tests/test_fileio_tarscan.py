"""The forward-only tar scanner (``open_clip_c2lip.fileio.tarscan``): members as ``tarfile`` reads them,
damaged regions skipped to the next valid header, and how an archive ends."""
import io
import random
import tarfile

import pytest

from tar_damage_fixtures import damage_header, tar_bytes

from open_clip_c2lip.fileio import tarscan as S


class _Trickle(io.RawIOBase):
    """A pipe-like stream: at most ``step`` bytes per read, no seeking."""

    def __init__(self, data: bytes, step: int = 97):
        self.data, self.position, self.step = data, 0, step

    def readable(self):
        return True

    def read(self, size=-1):
        size = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.position: self.position + size]
        self.position += len(chunk)
        return chunk


_tar = tar_bytes


MEMBERS = [("a.jpg", b"\x01" * 700), ("a.txt", b"a dog"), ("dir", None), ("long/" + "k" * 150 + ".txt", b"x" * 513),
           ("caf\u00e9.txt", "caf\u00e9".encode()), ("b.txt", b""), ("b.json", b"{}")]


@pytest.mark.parametrize("format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("step", [None, 97])
def test_members_as_tarfile_reads_them(format, step):
    members = [m for m in MEMBERS if format != tarfile.USTAR_FORMAT or (len(m[0]) < 100 and m[0].isascii())]
    blob = _tar(members, format)
    events = list(S.scan_tar(io.BytesIO(blob) if step is None else _Trickle(blob, step)))
    assert isinstance(events[-1], S.TarEnd) and events[-1].kind == S.END_BLOCKS and not events[-1].truncated
    scanned = events[:-1]
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        expected = [(m.name, m.offset, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]
    assert [(e.info.name, e.offset, e.data) for e in scanned] == expected
    assert b"".join(e.raw for e in scanned) == blob[: events[-1].offset]  # exact bytes, extended headers included


def test_is_header():
    blob = _tar([("a.txt", b"a dog on a mat")])
    header = blob[:512]
    assert S.is_header(header)
    assert not S.is_header(blob[512:1024])  # a data block
    assert not S.is_header(bytes(512)) and not S.is_header(header[:300])
    damaged = bytearray(header)
    damage_header(damaged, 0, "checksum")
    assert not S.is_header(bytes(damaged))
    assert not S.is_header(random.Random(0).randbytes(512))


def test_damaged_header_is_skipped_to_the_next_valid_one():
    blob = bytearray(_tar([("a.jpg", b"\x01" * 700), ("b.jpg", b"\x02" * 1100), ("b.txt", b"two cats"), ("c.txt", b"x")]))
    damage_header(blob, 1536, "checksum")  # b.jpg's header: a.jpg takes 512 + 1024 bytes
    events = list(S.scan_tar(io.BytesIO(bytes(blob))))
    region = events[1]
    assert isinstance(region, S.DamagedRegion)
    assert (region.offset, region.resume, region.skipped, region.reason) == (1536, 1536 + 512 + 1536, 2048, "invalid header")
    assert region.lost_names == ["b.jpg"] and region.names_complete and not region.end_blocks
    assert [e.info.name for e in events if isinstance(e, S.TarMember)] == ["a.jpg", "b.txt", "c.txt"]
    damage_header(blob, 1536, "garbled")
    region = list(S.scan_tar(io.BytesIO(bytes(blob))))[1]
    assert region.resume == 3584 and region.lost_names == [] and not region.names_complete


def test_several_damaged_headers_in_a_row_are_named_and_counted():
    blob = bytearray(_tar([("a.txt", b"x"), ("b.jpg", b"\x02" * 600), ("b.txt", b"y"), ("c.txt", b"z")]))
    for offset in (1024, 1024 + 512 + 1024):  # b.jpg's and b.txt's headers
        damage_header(blob, offset, "checksum")
    region = [e for e in S.scan_tar(io.BytesIO(bytes(blob))) if isinstance(e, S.DamagedRegion)]
    assert len(region) == 1 and region[0].lost_names == ["b.jpg", "b.txt"] and region[0].names_complete


def test_damaged_header_after_a_gnu_long_name():
    long_name = "d/" + "k" * 140 + ".jpg"
    blob = bytearray(_tar([("a.txt", b"x"), (long_name, b"\x03" * 10), ("z.txt", b"y")]))
    # a.txt: 1024 bytes; the long name: an "L" header and one data block, then the real header
    damage_header(blob, 1024 + 1024, "checksum")
    events = list(S.scan_tar(io.BytesIO(bytes(blob))))
    region = events[1]
    assert region.offset == 1024 and region.lost_names == [long_name] and region.names_complete
    assert [e.info.name for e in events if isinstance(e, S.TarMember)] == ["a.txt", "z.txt"]


@pytest.mark.parametrize("cut, kind, truncated", [
    (lambda b: b[:1536 + 300], S.IN_MEMBER, True),   # inside b.txt's data (a.txt: 1024 bytes, b.txt: 512 + 1024)
    (lambda b: b[:1024 + 200], S.IN_HEADER, True),   # inside b.txt's header
    (lambda b: b[:2560], S.AFTER_MEMBER, True),      # no end-of-archive blocks
    (lambda b: b[:2560 + 512], S.END_BLOCKS_CUT, True),
    (lambda b: b[:2560 + 1024], S.END_BLOCKS, False),  # the end blocks without the record padding
    (lambda b: b"", S.EMPTY, False),
])
def test_how_an_archive_ends(cut, kind, truncated):
    blob = _tar([("a.txt", b"a" * 10), ("b.txt", b"b" * 600)])
    end = list(S.scan_tar(io.BytesIO(cut(blob))))[-1]
    assert (end.kind, end.truncated) == (kind, truncated)
    if kind == S.IN_MEMBER:
        assert (end.member, end.got, end.expected) == ("b.txt", 512 + 300, 512 + 1024)
    if kind == S.IN_HEADER:
        assert end.cut_name == "b.txt" and end.member == "a.txt"


def test_data_after_the_end_of_archive_blocks():
    first, second = _tar([("a.txt", b"x")]), _tar([("b.txt", b"y")])
    events = list(S.scan_tar(io.BytesIO(first + second)))  # cat a.tar b.tar
    region = events[1]
    assert region.after_end and region.offset == 1024 and region.resume == len(first) and region.names_complete
    assert [e.info.name for e in events if isinstance(e, S.TarMember)] == ["a.txt", "b.txt"]
    events = list(S.scan_tar(io.BytesIO(first + b"garbage" * 100)))
    assert events[1].after_end and events[1].resume is None and not events[1].names_complete
    assert events[-1].kind == S.END_BLOCKS


@pytest.mark.parametrize("inserted", [1, 188, 700, 511])
@pytest.mark.parametrize("format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_bytes_inserted_off_the_block_grid_resync_at_the_shifted_header(inserted, format):
    members = [("a.jpg", b"\x01" * 700), ("b.jpg", b"\x02" * 1100), ("b.txt", b"two cats"), ("c.txt", b"x" * 600)]
    blob = _tar(members, format)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        b_txt = tar.getmember("b.txt").offset
    cut = b_txt - 300  # inside b.jpg's data (its sample is judged in fileio.tar): b.txt's header lands off the grid
    garbage = bytes(random.Random(inserted).randrange(1, 256) for _ in range(inserted))
    events = list(S.scan_tar(_Trickle(blob[:cut] + garbage + blob[cut:])))
    regions = [e for e in events if isinstance(e, S.DamagedRegion)]
    assert len(regions) == 1 and regions[0].resume == b_txt + inserted and not regions[0].names_complete
    assert [e.info.name for e in events if isinstance(e, S.TarMember)][-2:] == ["b.txt", "c.txt"]
    assert [e.data for e in events if isinstance(e, S.TarMember)][-2:] == [b"two cats", b"x" * 600]
    assert events[-1].kind == S.END_BLOCKS and not events[-1].truncated
