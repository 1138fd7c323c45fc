"""Reading shards (``open_clip_c2lip.fileio.tar``) as webdataset groups them, and what damaged or
truncated shards keep. Through the concepts CLI: ``test_concepts_annotate.py``; through the train
reader: ``test_integration_wds_passes.py``."""
import gzip
import tarfile

import pytest

from concepts_fixtures import coco, coco_all  # noqa: F401
from tar_damage_fixtures import (DAMAGED, coco_samples, complete_keys, damage_header, gnu_tar, gnu_tar_listing,
                                 keys_without, tar_bytes, write_shard)
from tar_fixtures import wds_samples

from open_clip_c2lip.fileio import tar as T


def test_iter_tar_samples_groups_like_webdataset(tmp_path):
    path = tmp_path / "mixed.tar"
    path.write_bytes(tar_bytes([("a.jpg", b"1"), ("a.txt", b"x"), ("dir", None), ("__meta__", b"m"),
                                ("b.seg.png", b"2"), ("b.txt", b"y"), ("sub/c.jpg", b"3"), ("README", b"r")]))
    ours = [{"__key__": s["__key__"], **{k: v for k, v in s.items() if k != "__key__"}}
            for s in T.read_shard(str(path))]
    theirs = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
              for s in wds_samples([path])]
    assert ours == theirs
    groups = list(T.iter_tar_samples(str(path)))
    assert [m.name for g in groups for m, _ in g.members] == [
        "a.jpg", "a.txt", "dir", "__meta__", "b.seg.png", "b.txt", "sub/c.jpg", "README"]
    assert [g.key for g in groups] == ["a", None, None, "b", "sub/c", None]


# ------------------------------------------------------------------------------------------------
# Damaged headers: skipped to the next valid one as GNU tar does; every complete sample is kept


NUM_SAMPLES = 60


def _read(path, fileobj=None):
    kept, error = [], None
    try:
        for sample in T.iter_tar_samples(str(path), fileobj):
            kept.append(sample)
    except T.DamagedTarError as exc:
        error = exc
    return kept, error


@pytest.mark.parametrize("how", ["checksum", "garbled", "zeroed"])
@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_headers_keep_every_complete_sample(tmp_path, coco, case, how):
    samples = coco_samples(coco, NUM_SAMPLES)
    path = tmp_path / "d.tar"
    members = write_shard(path, samples)
    blob = bytearray(path.read_bytes())
    for index, name in enumerate(DAMAGED[case]):
        damage_header(blob, members[name].offset, how, seed=index)
    path.write_bytes(blob)

    kept, error = _read(path)
    expected = keys_without(samples, DAMAGED[case])
    assert [s.key for s in kept] == expected
    originals = dict(samples)
    assert all([(i.name, d) for i, d in s.members] == [(f"{s.key}.{e}", d) for e, d in originals[s.key]] for s in kept)
    lost = NUM_SAMPLES - len(expected)
    assert (error.kept, error.lost, error.damaged, error.truncated) == (len(expected), lost, True, False)
    assert error.lost_exact == (how == "checksum")  # legible names say exactly what was lost
    message = str(error)
    assert message.startswith(f"{path}: damaged tar: bad tar header at byte {members[DAMAGED[case][0]].offset:,}")
    assert f"{len(expected)} complete samples kept, {'' if how == 'checksum' else 'at least '}{lost} lost" in message
    assert "truncated" not in message and "possibly" not in message
    if gnu_tar():
        names, stderr = gnu_tar_listing(path)
        assert complete_keys(samples, names) == expected
        assert "Skipping to next header" in stderr or how == "zeroed"
    # compressed, the damaged tar inside a gzip stream that still decompresses: the same samples
    packed = tmp_path / "d.tar.gz"
    packed.write_bytes(gzip.compress(bytes(blob)))
    kept_gz, error_gz = _read(packed)
    assert [s.key for s in kept_gz] == expected and str(error_gz) == message.replace(str(path), str(packed), 1)


def test_one_damaged_header_of_5000_samples_loses_one(tmp_path, coco_all):
    """5,000 samples of real COCO captions, the first header of sample 2,500 damaged: GNU tar
    recovers every other member, and every other sample is kept."""
    samples = coco_samples(coco_all, 5000)
    path = tmp_path / "big.tar"
    members = write_shard(path, samples)
    blob = bytearray(path.read_bytes())
    damage_header(blob, members["s2500.jpg"].offset, "checksum")
    path.write_bytes(blob)
    kept, error = _read(path)
    assert [s.key for s in kept] == [key for key, _ in samples if key != "s2500"]
    assert "4,999 complete samples kept, 1 lost ('s2500')" in str(error)
    if gnu_tar():
        assert complete_keys(samples, gnu_tar_listing(path)[0]) == [s.key for s in kept]


def test_damage_inside_data_blocks(tmp_path, coco):
    """Damage inside a member's data is invisible to tar (no checksum over data): every sample is
    read, as GNU tar reads them. Damage running from a data block over the next header loses that
    header's sample only."""
    samples = coco_samples(coco, 20)
    path = tmp_path / "d.tar"
    members = write_shard(path, samples)
    blob = bytearray(path.read_bytes())
    blob[members["s005.jpg"].offset_data + 10: members["s005.jpg"].offset_data + 200] = bytes(190)
    path.write_bytes(blob)
    kept, error = _read(path)
    assert error is None and [s.key for s in kept] == [key for key, _ in samples]
    start = members["s010.cls"].offset_data + 1  # from inside s010's cls data over s011.jpg's header
    blob[start: members["s011.jpg"].offset + 300] = b"\xff" * (members["s011.jpg"].offset + 300 - start)
    path.write_bytes(blob)
    kept, error = _read(path)
    assert [s.key for s in kept] == keys_without(samples, ["s011.jpg"])
    assert error.lost == 1 and f"bad tar header at byte {members['s011.jpg'].offset:,}" in str(error)
    if gnu_tar():
        assert complete_keys(samples, gnu_tar_listing(path)[0]) == [s.key for s in kept]


def test_damage_then_truncation_says_both(tmp_path, coco):
    samples = coco_samples(coco, 20)
    path = tmp_path / "d.tar"
    members = write_shard(path, samples)
    blob = bytearray(path.read_bytes())
    damage_header(blob, members["s004.txt"].offset, "checksum")
    path.write_bytes(blob[: members["s015.jpg"].offset_data + 100])  # the data ends inside s015's jpg
    kept, error = _read(path)
    assert [s.key for s in kept] == keys_without(samples, ["s004.txt"])[:14]
    assert error.damaged and error.truncated and str(error).startswith(f"{path}: damaged and truncated tar: ")
    assert "inside member 's015.jpg'" in str(error) and "14 complete samples kept, 2 lost ('s004', 's015')" in str(error)


def test_a_complete_last_sample_is_kept_when_the_end_blocks_are_missing(tmp_path, coco):
    """A writer stopped after the last member: that sample has every member its shard's samples
    have, so it is kept; one that lacks a member the others have is not."""
    samples = coco_samples(coco, 7)
    path = tmp_path / "d.tar"
    members = write_shard(path, samples)
    blob = path.read_bytes()
    last = members["s006.cls"]
    path.write_bytes(blob[: last.offset_data + 512])
    kept, error = _read(path)
    assert [s.key for s in kept] == [key for key, _ in samples] and error.lost == 0 and error.truncated
    assert "right after member 's006.cls', without the end-of-archive blocks" in str(error)
    path.write_bytes(blob[: last.offset])  # stopped before s006.cls: s006 is incomplete
    kept, error = _read(path)
    assert [s.key for s in kept] == [key for key, _ in samples][:6] and error.lost == 1
    assert "sample 's006': incomplete: it has ['jpg', 'txt', 'json'], intact samples of the shard have" in str(error)


def test_not_a_tar_and_empty_files(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"no tar here " * 200)
    with pytest.raises(tarfile.ReadError, match="the file is not a tar archive"):
        list(T.iter_tar_samples(str(junk)))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(tarfile.ReadError, match="empty file"):
        list(T.iter_tar_samples(str(empty)))


@pytest.mark.parametrize("inserted", [700, 1024, 3000])
def test_garbage_inserted_in_the_middle_keeps_the_samples_after_it(tmp_path, coco, inserted):
    """Bytes inserted inside s005's jpg data, on or off the 512-byte grid: s005 is lost (its members
    lie on both sides of the damage), every later sample is kept (GNU tar keeps them only on the grid)."""
    samples = coco_samples(coco, 12)
    path = tmp_path / "g.tar"
    members = write_shard(path, samples)
    blob = path.read_bytes()
    cut = members["s005.jpg"].offset_data + 100
    path.write_bytes(blob[:cut] + bytes(range(1, 256)) * (inserted // 255) + b"\x07" * (inserted % 255) + blob[cut:])
    kept, error = _read(path)
    assert [s.key for s in kept] == [key for key, _ in samples if key != "s005"]
    assert error.damaged and not error.truncated and error.lost == 1
    assert "11 complete samples kept, at least 1 lost ('s005')" in str(error)
