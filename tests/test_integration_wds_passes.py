"""No input makes training hang (``open_clip_c2lip.integration.wds``: ``PassLog``, ``DropIncomplete``,
``FullBatchGuard``, the per-shard reader); shards and samples that do not train are named and counted.

Runs open_clip_train's (patched) ``get_data`` on tiny shards / CSVs written here. Every iteration runs
under ``bounded`` (SIGALRM), so a regression to upstream's endless restart fails instead of hanging the
suite.
"""
import contextlib
import logging
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


from concepts_fixtures import coco, coco_all  # noqa: F401
from tar_damage_fixtures import DAMAGED, coco_samples, complete_keys, damaged_shard, gnu_tar, gnu_tar_listing, keys_without
from tar_fixtures import jpeg, write_tar

from open_clip_c2lip.integration import runtime
from open_clip_c2lip.config import C2LIPConfig
from wds_fixtures import GOOD_CAPTIONS, c2lip_off, _args, _epoch, _good, _mostly_rejected_shard, _rejected, _train  # noqa: F401  (c2lip_off: autouse)


# ------------------------------------------------------------------------------------------------
# no hang: a pass that cannot fill a batch stops with an error naming shards and counts

def test_pass_that_cannot_fill_a_batch_stops_with_named_error(tmp_path):
    shard = _mostly_rejected_shard(tmp_path / "issue-000000.tar")
    info = _train(_args("--train-data", shard, "--dataset-type", "webdataset", "--train-num-samples", "8"))
    with pytest.raises(RuntimeError, match="training cannot fill a batch") as error:
        _epoch(info)
    message = str(error.value)
    assert shard in message
    for count in ("read=8", "undecodable=2", "bad=3", "usable=3", "--batch-size 4", "lower --batch-size"):
        assert count in message, (count, message)


def test_same_shard_trains_when_a_batch_fits_and_rollovers_are_counted(tmp_path, caplog):
    shard = _mostly_rejected_shard(tmp_path / "issue-000000.tar")
    info = _train(_args("--train-data", shard, "--dataset-type", "webdataset", "--train-num-samples", "6",
                        batch_size=3))
    with caplog.at_level(logging.INFO):
        batches = _epoch(info)
    assert len(batches) == 2  # one batch per pass of 3 usable samples: the second pass repeats them
    totals = info.c2lip_counters.totals()
    assert totals["rollovers"] == 1 and totals["samples_read"] == 16 and totals["samples"] == 6
    assert totals["skipped_bad_samples"] == 6 and totals["skipped_undecodable"] == 4
    report = [r for r in caplog.records if "C2LIP data counters, epoch 0" in r.getMessage()]
    assert len(report) == 1 and report[0].levelno == logging.WARNING  # samples were skipped
    assert "rollovers=1" in report[0].getMessage() and "skipped=10" in report[0].getMessage()


def test_worker_whose_shards_cannot_fill_a_batch_stops_training(tmp_path):
    members = []
    for index in range(8):
        members += _good(f"g{index}", index)
    write_tar(tmp_path / "w-000000.tar", members)
    bad = write_tar(tmp_path / "w-000001.tar", _rejected("a") + _rejected("b"))
    info = _train(_args("--train-data", str(tmp_path / "w-{000000..000001}.tar"), "--dataset-type", "webdataset",
                        "--train-num-samples", "16", workers=2))
    with pytest.raises(RuntimeError, match="training cannot fill a batch") as error:
        _epoch(info, seconds=120)
    message = str(error.value)
    assert bad in message and "gave no usable sample" in message and "fewer --workers" in message


@pytest.mark.slow
def test_only_empty_or_rejected_shards_with_resampling_stop(tmp_path):
    write_tar(tmp_path / "r-000000.tar", _rejected("a"))
    write_tar(tmp_path / "r-000001.tar", _rejected("b"))
    info = _train(_args("--train-data", str(tmp_path / "r-{000000..000001}.tar"), "--dataset-type", "webdataset",
                        "--train-num-samples", "8", "--dataset-resampled"))
    with pytest.raises(RuntimeError, match=r"every one of the 2 shards .* was drawn \(--dataset-resampled\)"):
        _epoch(info, seconds=120)

    write_tar(tmp_path / "e-000000.tar", [])
    write_tar(tmp_path / "e-000001.tar", [])
    info = _train(_args("--train-data", str(tmp_path / "e-{000000..000001}.tar"), "--dataset-type", "webdataset",
                        "--train-num-samples", "8", "--dataset-resampled"))
    with pytest.raises(RuntimeError, match="not one sample was usable") as error:
        _epoch(info)
    assert "read=0" in str(error.value) and "empty=" in str(error.value)


def test_resampling_with_few_usable_samples_trains(tmp_path):
    _mostly_rejected_shard(tmp_path / "r-000000.tar")
    write_tar(tmp_path / "r-000001.tar", _rejected("b"))
    info = _train(_args("--train-data", str(tmp_path / "r-{000000..000001}.tar"), "--dataset-type", "webdataset",
                        "--train-num-samples", "8", "--dataset-resampled"))
    assert len(_epoch(info, seconds=120)) == 2


def test_csv_smaller_than_one_batch_is_an_error(tmp_path):
    rows = ["filepath\ttitle\tconcepts"]
    for index in range(3):
        (tmp_path / f"{index}.jpg").write_bytes(jpeg(index))
        rows.append(f"{tmp_path / f'{index}.jpg'}\t{GOOD_CAPTIONS[index]}\t[\"a\"]")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"no full training batch: 3 samples, --batch-size 4"):
        _train(_args("--train-data", str(tmp_path / "t.csv"), "--dataset-type", "csv"))


# ------------------------------------------------------------------------------------------------
# missing / unreadable / incomplete: named, counted, reported

def test_missing_and_unreadable_shards_are_named_counted_and_reported(tmp_path, caplog):
    for shard in (0, 3):
        members = []
        for index in range(4):
            members += _good(f"s{shard}k{index}", index)
        write_tar(tmp_path / f"m-{shard:06d}.tar", members)
    # a killed writer: the archive stops inside the third sample's image
    members = []
    for index in range(4):
        members += _good(f"s2k{index}", index)
    full = Path(write_tar(tmp_path / "full.tar", members)).read_bytes()
    cut_at = full.index(b"s2k2.jpg") + 512 + 100
    (tmp_path / "m-000002.tar").write_bytes(full[:cut_at])
    missing = str(tmp_path / "m-000001.tar")
    args = _args("--train-data", str(tmp_path / "m-{000000..000003}.tar"), "--dataset-type", "webdataset",
                 "--train-num-samples", "16")
    with caplog.at_level(logging.INFO):
        info = _train(args)
        startup = [r.getMessage() for r in caplog.records if "do not exist" in r.getMessage()]
        assert len(startup) == 1 and "1 of the 4 shard(s)" in startup[0] and missing in startup[0]
        batches = _epoch(info)
    assert len(batches) == 4
    totals = info.c2lip_counters.totals()
    passes = totals["rollovers"] + 1  # the last pass is cut by the epoch end, or ends with it
    assert totals["rollovers"] >= 1  # 10 readable samples per pass, 16 per epoch
    assert totals["missing_shards"] in (passes - 1, passes) and totals["missing_shards"] >= 1
    assert totals["truncated_shards"] >= 1 and totals["unreadable_shards"] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"shard {missing} does not exist" in m for m in messages)
    # the two samples before the cut train; the message says how much was read
    assert any(f"shard {tmp_path / 'm-000002.tar'} is truncated" in m and "the 2 complete samples it keeps train" in m
               and "inside member 's2k2.jpg'" in m and "2 complete samples kept, 1 lost ('s2k2')" in m
               for m in messages)
    assert totals["samples_read"] >= 10
    report = [m for m in messages if m.startswith("C2LIP data counters, epoch 0")]
    assert len(report) == 1 and f"missing={totals['missing_shards']}" in report[0]
    assert any("missing or unreadable this epoch" in m for m in messages)


def _damaged_shards(root: Path) -> dict:
    """Shards of 4 samples each (keys ``{name}k0..k3``): intact, gzip, the three damage kinds of a
    killed writer — cut inside a member, cut exactly at a header, no end-of-archive blocks — and a
    damaged header inside the archive (k2.jpg's checksum overwritten)."""
    import gzip
    import tarfile

    def members(prefix):
        out = []
        for index in range(4):
            out += _good(f"{prefix}k{index}", index)
        return out

    paths = {"intact": write_tar(root / "intact.tar", members("intact"))}
    gz = root / "gz.tar.gz"
    gz.write_bytes(gzip.compress(Path(write_tar(root / "gz.tmp", members("gzip"))).read_bytes()))
    paths["gzip"] = str(gz)
    for kind in ("in_member", "at_header", "no_end", "bad_header"):
        full = Path(write_tar(root / f"{kind}.full", members(kind))).read_bytes()
        with tarfile.open(root / f"{kind}.full") as tar:
            infos = tar.getmembers()
        third = next(i for i in infos if i.name == f"{kind}k2.jpg")
        end = infos[-1].offset_data + -(-infos[-1].size // 512) * 512  # the last member's padded end
        if kind == "bad_header":
            full = bytearray(full)
            full[third.offset + 148: third.offset + 156] = b"XXXXXXXX"
            (root / f"{kind}.tar").write_bytes(full)
            paths[kind] = str(root / f"{kind}.tar")
            continue
        cut = {"in_member": third.offset_data + 100, "at_header": third.offset, "no_end": end}[kind]
        (root / f"{kind}.tar").write_bytes(full[:cut])
        paths[kind] = str(root / f"{kind}.tar")
    return paths


# keys that train from each shard: every complete sample (at a header cut or without end blocks the
# last sample read holds every member an intact sample of the shard has), as the concepts CLI keeps them
TRAINED_KEYS = {"intact": [0, 1, 2, 3], "gzip": [0, 1, 2, 3], "in_member": [0, 1], "at_header": [0, 1],
                "no_end": [0, 1, 2, 3], "bad_header": [0, 1, 3]}
# samples known lost: the one whose member is cut / whose header is damaged (what a cut file never
# held is not counted: it is unknown)
LOST = {"intact": 0, "gzip": 0, "in_member": 1, "at_header": 0, "no_end": 0, "bad_header": 1}


class _Counts:
    def __init__(self):
        self.stats = {}

    def count(self, key, amount=1):
        self.stats[key] = self.stats.get(key, 0) + amount


@pytest.mark.parametrize("kind", sorted(TRAINED_KEYS))
def test_truncated_shards_are_detected_by_the_clis_rule(tmp_path, kind, caplog):
    from open_clip_c2lip.integration.wds import tarfile_to_samples_nothrow
    from open_clip_c2lip.fileio.tar import DamagedTarError, iter_tar_samples

    path = _damaged_shards(tmp_path)[kind]
    counts = _Counts()
    with caplog.at_level(logging.WARNING):
        samples = list(tarfile_to_samples_nothrow([{"url": path}], packer=counts))
    assert [s["__key__"] for s in samples] == [f"{kind}k{i}" for i in TRAINED_KEYS[kind]]
    assert all({"jpg", "txt", "json"} <= set(s) for s in samples)
    damaged = kind not in ("intact", "gzip")
    assert counts.stats.get("truncated_shards", 0) == int(damaged and kind != "bad_header")
    assert counts.stats.get("damaged_shards", 0) == int(kind == "bad_header")
    assert counts.stats.get("lost_samples", 0) == LOST[kind]
    assert counts.stats.get("shards_read", 0) == int(not damaged)
    assert counts.stats.get("unreadable_shards", 0) == 0 and counts.stats["samples_read"] == len(samples)
    said = "damaged" if kind == "bad_header" else "truncated"
    warnings = [r.getMessage() for r in caplog.records if f"shard {path} is {said}" in r.getMessage()]
    assert len(warnings) == int(damaged)
    if damaged:  # the warning's counts are the counters'
        assert f"the {len(samples)} complete samples it keeps train" in warnings[0]
        assert f"{len(samples)} complete samples kept, {counts.stats['lost_samples']} lost" in warnings[0]
    if kind != "gzip":  # the CLI's reader (uncompressed tars only) keeps the same samples
        cli = []
        with contextlib.suppress(DamagedTarError):
            for sample in iter_tar_samples(path):
                cli.append(sample.key)
        assert cli == [s["__key__"] for s in samples]


@pytest.mark.parametrize("damage", ["compressed_stream_cut", "tar_cut_inside_gzip"])
def test_damaged_gzip_shards_are_counted_as_truncated(tmp_path, damage):
    import gzip

    from open_clip_c2lip.integration.wds import tarfile_to_samples_nothrow

    members = []
    for index in range(6):
        members += _good(f"k{index}", index)
    full = Path(write_tar(tmp_path / "full.tar", members)).read_bytes()
    data = gzip.compress(full)[:-200] if damage == "compressed_stream_cut" else gzip.compress(full[:len(full) // 2])
    path = tmp_path / "d.tar.gz"
    path.write_bytes(data)
    counts = _Counts()
    keys = [s["__key__"] for s in tarfile_to_samples_nothrow([{"url": str(path)}], packer=counts)]
    assert counts.stats.get("truncated_shards") == 1 and "shards_read" not in counts.stats
    assert len(keys) < 6 and keys == [f"k{i}" for i in range(len(keys))]  # complete samples before the cut


def test_truncated_shards_are_counted_in_the_epoch_report(tmp_path, caplog):
    paths = _damaged_shards(tmp_path)
    args = _args("--train-data", "::".join(paths[k] for k in ("intact", "in_member", "at_header", "no_end", "gzip",
                                                              "bad_header")),
                 "--dataset-type", "webdataset", "--train-num-samples", "12")
    with caplog.at_level(logging.INFO):
        info = _train(args)
        batches = _epoch(info)
    assert len(batches) == 3
    totals = info.c2lip_counters.totals()
    assert totals["truncated_shards"] >= 3 and totals["truncated_shards"] % 3 == 0
    assert totals["damaged_shards"] == totals["truncated_shards"] // 3  # one per pass, like the truncated ones
    assert totals["lost_samples"] == 2 * totals["damaged_shards"]  # in_member's k2 and bad_header's k2
    assert totals["unreadable_shards"] == 0 and totals["missing_shards"] == 0
    messages = [r.getMessage() for r in caplog.records]
    for kind in ("in_member", "at_header", "no_end", "bad_header"):
        said = "damaged" if kind == "bad_header" else "truncated"
        assert any(f"shard {paths[kind]} is {said}" in m for m in messages), kind
    report = [m for m in messages if m.startswith("C2LIP data counters, epoch 0")]
    assert len(report) == 1 and f"truncated={totals['truncated_shards']}" in report[0]
    assert f"damaged={totals['damaged_shards']}" in report[0] and f"lost={totals['lost_samples']}" in report[0]
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith("C2LIP data counters, epoch 0")
               for r in caplog.records)


def test_all_local_shards_missing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none of the 2 shard\(s\) of --train-data"):
        _train(_args("--train-data", str(tmp_path / "none-{000000..000001}.tar"), "--dataset-type", "webdataset",
                     "--train-num-samples", "8"))


def test_samples_without_image_or_caption_are_named_and_counted(tmp_path, caplog):
    members = []
    for index in range(4):
        members += _good(f"g{index}", index)
    members += [("noimage.txt", b"a cat"), ("nocaption.jpg", jpeg(9))]
    shard = write_tar(tmp_path / "i-000000.tar", members)
    info = _train(_args("--train-data", shard, "--dataset-type", "webdataset", "--train-num-samples", "4"))
    with caplog.at_level(logging.WARNING):
        _epoch(info)
    assert info.c2lip_counters.totals()["skipped_incomplete"] == 2
    messages = [r.getMessage() for r in caplog.records]
    for key in ("noimage", "nocaption"):
        assert any(f"key {key!r}" in m and "no image" in m for m in messages), key


def test_a_sample_with_two_members_of_one_extension_is_skipped_whole(tmp_path, caplog):
    """Two ``k.txt`` members: upstream's grouping splits the sample in two; both parts are skipped,
    named with the repeated extension and counted once as read and once as bad (not trained on one
    of its captions, not called "incomplete")."""
    from open_clip_c2lip.integration.wds import tarfile_to_samples_nothrow

    members = _good("g0", 0) + [("dup.jpg", jpeg(5)), ("dup.txt", b"a cat"), ("dup.txt", b"a dog")]
    members += [("dup3.txt", b"a"), ("dup3.txt", b"b"), ("dup3.txt", b"c")] + _good("g1", 1)
    shard = write_tar(tmp_path / "d-000000.tar", members)
    counts = _Counts()
    with caplog.at_level(logging.WARNING):
        keys = [s["__key__"] for s in tarfile_to_samples_nothrow([{"url": shard}], packer=counts)]
    assert keys == ["g0", "g1"]
    assert counts.stats["samples_read"] == 4 and counts.stats["skipped_bad_samples"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("key 'dup'" in m and "2 members of extension(s) ['txt']" in m for m in messages), messages
    assert any("key 'dup3'" in m and "3 members of extension(s) ['txt']" in m for m in messages), messages
    # in training: counted in the epoch's data counters, not as incomplete
    info = _train(_args("--train-data", shard, "--dataset-type", "webdataset", "--train-num-samples", "2",
                        batch_size=2))
    _epoch(info)
    totals = info.c2lip_counters.totals()
    assert totals["skipped_bad_samples"] >= 2 and totals.get("skipped_incomplete", 0) == 0


def test_samples_never_span_two_shards(tmp_path):
    """Shard 0 ends with ``k.jpg`` alone, shard 1 starts with ``k.txt`` (same key): upstream's key-only
    grouping would make one sample of shard 0's image and shard 1's caption."""
    from open_clip_c2lip.integration.wds import tarfile_to_samples_nothrow

    first = write_tar(tmp_path / "s-000000.tar", _good("g0", 0) + [("k.jpg", jpeg(1))])
    second = write_tar(tmp_path / "s-000001.tar", [("k.txt", b"a caption of shard 1"), ("k.jpg", jpeg(2))]
                       + _good("g1", 1))
    counts = _Counts()
    samples = list(tarfile_to_samples_nothrow([{"url": first}, {"url": second}], packer=counts))
    assert [(s["__url__"], s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples] == [
        (first, "g0", ["jpg", "json", "txt"]), (first, "k", ["jpg"]), (second, "k", ["jpg", "txt"]),
        (second, "g1", ["jpg", "json", "txt"])]
    assert counts.stats.get("skipped_bad_samples", 0) == 0  # shard 0's lone image is incomplete, not bad
    # the same shard read twice in a row (resampling), its last key its first: never one sample across
    loop = write_tar(tmp_path / "s-000002.tar", [("k.txt", b"a caption")] + _good("g1", 1) + [("k.jpg", jpeg(3))])
    again = list(tarfile_to_samples_nothrow([{"url": loop}, {"url": loop}], packer=_Counts()))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in again] == [
        ("k", ["txt"]), ("g1", ["jpg", "json", "txt"]), ("k", ["jpg"])] * 2


def test_upstream_group_per_shard_diff(tmp_path):
    """patches/open_clip_train-group-per-shard.diff: upstream 3.3.0 merges k.jpg (end of shard 0) and
    k.txt (start of shard 1) into one sample; the patched function keeps them apart, as the plugin does."""
    import importlib.util
    import shutil
    import subprocess

    from open_clip_train import data as upstream

    if shutil.which("patch") is None:
        pytest.skip("the `patch` program is needed to apply the diff")
    root = tmp_path / "upstream"
    (root / "src" / "open_clip_train").mkdir(parents=True)
    shutil.copy(upstream.__file__, root / "src" / "open_clip_train" / "data.py")
    diff = Path(__file__).resolve().parents[1] / "patches" / "open_clip_train-group-per-shard.diff"
    subprocess.run(["patch", "-p1", "--quiet", "-i", str(diff)], cwd=root, check=True)
    spec = importlib.util.spec_from_file_location("grouped_per_shard", root / "src" / "open_clip_train" / "data.py")
    patched = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patched)
    files = [("s0", "g0.jpg"), ("s0", "g0.txt"), ("s0", "k.jpg"), ("s1", "k.txt"), ("s1", "g1.jpg"), ("s1", "g1.txt")]
    stream = [{"fname": name, "data": b"x", "__url__": url} for url, name in files]

    def grouped(function):
        return [(s["__url__"], s["__key__"], sorted(k for k in s if not k.startswith("__")))
                for s in function(iter([dict(f) for f in stream]))]

    assert ("s0", "k", ["jpg", "txt"]) in grouped(upstream.group_by_keys_nothrow)  # one sample, two shards
    assert grouped(patched.group_by_keys_nothrow) == [
        ("s0", "g0", ["jpg", "txt"]), ("s0", "k", ["jpg"]), ("s1", "k", ["txt"]), ("s1", "g1", ["jpg", "txt"])]


# ------------------------------------------------------------------------------------------------
# spaCy at start-up

def test_broken_spacy_model_fails_at_get_data_when_extraction_can_happen(tmp_path):
    members = []
    for index in range(4):
        members += _good(f"g{index}", index)
    shard = write_tar(tmp_path / "p-000000.tar", members)
    args = _args("--train-data", shard, "--dataset-type", "webdataset", "--train-num-samples", "4")
    runtime.configure(C2LIPConfig(max_concepts=3, spacy_model="en_core_web_smm"))  # e.g. set in code
    with pytest.raises(RuntimeError, match=r"extracted on the fly with spaCy \(--c2lip-spacy-model 'en_core_web_smm'\)"):
        _train(args)

    # a CSV whose every row has concepts never extracts: no spaCy needed
    rows = ["filepath\ttitle\tconcepts"]
    for index in range(4):
        (tmp_path / f"{index}.jpg").write_bytes(jpeg(index))
        rows.append(f"{tmp_path / f'{index}.jpg'}\t{GOOD_CAPTIONS[index]}\t[\"a\"]")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    args = _args("--train-data", str(tmp_path / "t.csv"), "--dataset-type", "csv")
    runtime.configure(C2LIPConfig(max_concepts=3, spacy_model="en_core_web_smm"))
    assert len(_epoch(_train(args))) == 1


@pytest.mark.parametrize("how", ["checksum", "garbled"])
def test_damaged_headers_train_every_complete_sample(tmp_path, coco, how, caplog):
    """Shards of real COCO captions with damaged headers (first member, mid-sample, last member,
    several): training reads exactly the samples GNU tar recovers whole, and its warning and
    counters say how many were kept and lost."""
    from open_clip_c2lip.integration.wds import tarfile_to_samples_nothrow

    for case, damaged in sorted(DAMAGED.items()):
        samples = coco_samples(coco, 60)
        path = tmp_path / f"{case}-{how}.tar"
        damaged_shard(path, samples, damaged, how)
        counts = _Counts()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = list(tarfile_to_samples_nothrow([{"url": str(path)}], packer=counts))
        expected = keys_without(samples, damaged)
        assert [s["__key__"] for s in got] == expected, case
        if gnu_tar():
            assert complete_keys(samples, gnu_tar_listing(path)[0]) == expected, case
        originals = dict(samples)
        assert all({k: v for k, v in s.items() if not k.startswith("__")} == dict(originals[s["__key__"]]) for s in got)
        lost = len(samples) - len(expected)
        assert counts.stats == {"samples_read": len(expected), "damaged_shards": 1, "lost_samples": lost}, case
        warning, = [r.getMessage() for r in caplog.records if f"shard {path} is damaged" in r.getMessage()]
        assert f"the {len(expected)} complete samples it keeps train" in warning
        assert f"{len(expected)} complete samples kept, {'' if how == 'checksum' else 'at least '}{lost} lost" in warning
