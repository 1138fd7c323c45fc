"""Annotating one shard or table (``open_clip_c2lip.concepts.annotate``), through the CLI: bytes kept, bad and
damaged input named, counted or salvaged, compressed shards."""
import io
import json
import os
import re
import tarfile

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd
import pytest

from open_clip_c2lip import concepts as C
from open_clip_c2lip.concepts import records
from tar_damage_fixtures import DAMAGED, coco_samples, damaged_shard, keys_without
from concepts_fixtures import (  # noqa: F401
    coco,
    coco_all,
    eight_sample_shard,
    make_shard,
    raw_members,
    read_members,
    run_cli,
    shard_samples)


def test_cli_shard_bytes_order_and_json(tmp_path, coco, capsys):
    src = tmp_path / "in" / "shard-000000.tar"
    src.parent.mkdir()
    samples = shard_samples(coco, 0, 13)
    samples[4] = ("long/" + "k" * 120 + "4", samples[4][1])  # > 100 chars: GNU long-name headers
    make_shard(src, samples)
    code, out = run_cli([src, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "captions: 13" in out
    got = read_members(tmp_path / "out" / src.name)

    expected_names = []
    for key, members in samples:
        expected_names += [f"{key}.{e}" for e, _ in members]
        if "json" not in dict(members):
            expected_names.append(f"{key}.json")
    assert [m.name for m, _ in got] == expected_names

    reference = C.extract_concepts([coco[i] for i in range(13)])
    by_name = {f"{key}.{e}": d for key, members in samples for e, d in members}
    index_of = {f"{key}.{e}": i for i, (key, members) in enumerate(samples) for e, _ in members + [("json", 0)]}
    raw_in, raw_out = raw_members(src), raw_members(tmp_path / "out" / src.name)
    for info, data in got:
        if info.name.endswith(".json"):
            original = json.loads(by_name[info.name]) if info.name in by_name else {}
            assert json.loads(data) == {**original, "concepts": reference[index_of[info.name]]}
            assert list(json.loads(data))[-1] == "concepts"
            assert (info.mtime, info.mode) == (1234567, 0o640)  # header fields of the sample's members
        else:
            assert data == by_name[info.name]
            assert raw_out[info.name] == raw_in[info.name]  # header and data byte-for-byte
    assert len(raw_in[samples[4][0] + ".jpg"]) > 512 * 3  # the long name really used extra header blocks
    import webdataset as wds  # what open_clip_train reads it with
    read_back = list(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "out" / src.name)]),
                                      wds.tarfile_to_samples()))
    assert [s["__key__"] for s in read_back] == [key for key, _ in samples]
    assert [json.loads(s["json"])["concepts"] for s in read_back] == reference


def test_cli_caption_from_json_field(tmp_path, coco):
    src = tmp_path / "j.tar"
    make_shard(src, [(f"k{i}", [("jpg", b"x"), ("json", json.dumps({"caption": coco[i]}).encode())])
                     for i in range(4)])
    run_cli([src, "--output-dir", tmp_path / "out", "--caption-key", "caption", "--concepts-key", "np"])
    got = [json.loads(d) for m, d in read_members(tmp_path / "out" / "j.tar") if m.name.endswith(".json")]
    assert [g["np"] for g in got] == C.extract_concepts(coco[:4])


def test_cli_two_processes_same_bytes(tmp_path, coco):
    """Workers over files (two shards) and over batches of one file (a table) give identical outputs."""
    for i in range(2):
        make_shard(tmp_path / f"p-{i}.tar", shard_samples(coco, 7 * i, 7))
    pd.DataFrame({"caption": coco[:300]}).to_csv(tmp_path / "t.csv", index=False)
    for out, extra in (("one", []), ("two", ["--processes", "2", "--batch-size", "16"])):
        run_cli([tmp_path / "p-{0..1}.tar", "--output-dir", tmp_path / out] + extra)
        run_cli([tmp_path / "t.csv", "--output-dir", tmp_path / out] + extra)
    for name in ("p-0.tar", "p-1.tar", "t.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


# ------------------------------------------------------------------------------------------------
# CLI: tables

@pytest.mark.parametrize("suffix, caption_column", [(".csv", "caption"), (".tsv", "title"),
                                                     (".parquet", "caption")])
def test_cli_tables(tmp_path, coco, suffix, caption_column):
    table = pd.DataFrame({"filepath": [f"img/{i}.jpg" for i in range(9)], caption_column: coco[:9],
                          "score": ["0.10", "1e3", "", "007", "x,y", 'q"q', "NA", "nan", "-"]})
    src = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        table.to_parquet(src)
    else:
        table.to_csv(src, sep="\t" if suffix == ".tsv" else ",", index=False)
    run_cli([src, "--output-dir", tmp_path / "out"] + (["--csv-separator", ","] if suffix == ".csv" else []))
    out = tmp_path / "out" / src.name
    read = (pd.read_parquet(out) if suffix == ".parquet" else
            pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False))
    assert list(read.columns) == list(table.columns) + ["concepts"]
    # relative image paths name the same files from the output's folder; other cells unchanged (as text)
    assert read["filepath"].tolist() == [f"../img/{i}.jpg" for i in range(9)]
    assert read[list(table.columns)].drop(columns="filepath").equals(table.drop(columns="filepath"))
    assert [json.loads(c) for c in read["concepts"]] == C.extract_concepts(coco[:9])


# ------------------------------------------------------------------------------------------------
# CLI: bad input

BAD_SHARDS = {
    "json-not-object": ([("jpg", b"x"), ("txt", b"a dog"), ("json", b"[1, 2]")], "json is not an object"),
    "non-utf8-txt": ([("jpg", b"x"), ("txt", b"a \xff\xfe dog")], "not valid UTF-8"),
    "missing-caption": ([("jpg", b"x"), ("cls", b"3")], "no caption"),
    "blank-caption": ([("jpg", b"x"), ("txt", b"  \n")], "empty or whitespace-only"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARDS))
def test_cli_bad_sample_raises_or_counts(tmp_path, case, capsys):
    members, reason = BAD_SHARDS[case]
    src = tmp_path / "bad.tar"
    make_shard(src, [("good0", [("jpg", b"a"), ("txt", b"a red car")]), ("broken", members),
                     ("good1", [("jpg", b"b"), ("txt", b"two cats")])])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    assert str(src) in str(info.value) and "'broken'" in str(info.value) and reason in str(info.value)
    assert not list((tmp_path / "out").iterdir())  # nothing that looks finished, no partial left

    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text and "'broken'" in text  # kept going, still not a success
    got = read_members(tmp_path / "out" / "bad.tar")
    assert [m.name for m, _ in got if m.name.startswith("broken")] == [f"broken.{e}" for e, _ in members]
    assert [d for m, d in got if m.name.startswith("broken")] == [d for _, d in members]  # kept as is
    assert sum(m.name.endswith(".json") for m, _ in got) == 2 + (case == "json-not-object")


def test_cli_empty_shard_and_unreadable_inputs(tmp_path, capsys):
    empty = tmp_path / "empty.tar"
    make_shard(empty, [])
    truncated = tmp_path / "cut.tar"
    make_shard(truncated, [("a", [("jpg", os.urandom(3000)), ("txt", b"a dog")])])
    truncated.write_bytes(truncated.read_bytes()[:1800])
    bad_table = tmp_path / "bad.parquet"
    bad_table.write_bytes(b"not parquet")
    blank_row = tmp_path / "rows.csv"
    pd.DataFrame({"caption": ["a dog", "   "]}).to_csv(blank_row, index=False)
    for path, reason in [(empty, "empty shard"), (truncated, "truncated"), (bad_table, "unreadable table"),
                         (blank_row, "row 1")]:
        with pytest.raises(SystemExit, match=re.escape(str(path)) + ".*" + reason):
            run_cli([path, "--output-dir", tmp_path / "out"])
    with pytest.raises(SystemExit, match="no such file"):
        run_cli([tmp_path / "missing.tar", "--output-dir", tmp_path / "out"])
    with pytest.raises(SystemExit, match="unsupported input"):
        run_cli([tmp_path / "x.json", "--output-dir", tmp_path / "out"])

    code, text = run_cli([empty, bad_table, blank_row, "--output-dir", tmp_path / "out", "--on-error", "skip"],
                         capsys)
    assert code == 1 and "1 written, 0 skipped as finished, 2 failed" in text and "failures: 3" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rows.csv", "rows.csv.concepts.json"]
    rows = pd.read_csv(tmp_path / "out" / "rows.csv", sep="\t", keep_default_na=False)
    assert rows["concepts"].tolist() == ['["a dog"]', ""]  # failed row kept, no concepts


def test_cli_shard_with_a_huge_caption_keeps_every_sample(tmp_path, capsys):
    """6 samples, one caption of 1,100,000 characters (over spaCy's limit)."""
    captions = ["a red car", "two cats on a sofa", "x " * 550_000, "a dog", "a green tree", "a blue boat"]
    src = tmp_path / "s.tar"
    make_shard(src, [(f"k{i}", [("jpg", b"x"), ("txt", c.encode())]) for i, c in enumerate(captions)])
    code, text = run_cli([src, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "captions: 6" in text and "failures: 0" in text
    assert f"over {C.MAX_PARSE_CHARS} characters after cleaning, parsed up to there): 1" in text
    got = [json.loads(d)["concepts"] for m, d in read_members(tmp_path / "out" / "s.tar") if m.name.endswith(".json")]
    assert len(got) == 6 and got[0] == ["a red car"] and got[5] == ["a blue boat"]


@pytest.mark.parametrize("caption", ["!!!", "...", "- -", "&amp;", "&lt;&gt;"])
def test_caption_without_text_after_cleaning_is_a_named_failure(tmp_path, caption, capsys):
    with pytest.raises(C.CaptionError, match=r"img-1.*no letter or digit"):
        C.extract_concepts(["a dog", caption], names=["img-0", "img-1"])
    src = tmp_path / "p.tar"
    make_shard(src, [("good", [("txt", b"a dog")]), ("bad", [("txt", caption.encode())])])
    with pytest.raises(SystemExit, match=re.escape(str(src)) + r": sample 'bad'.*no letter or digit"):
        run_cli([src, "--output-dir", tmp_path / "out"])
    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text and "'bad'" in text and "captions: 1" in text


@pytest.mark.parametrize("cut, lost, kept", [
    ("inside-member", ["s5"], 5),     # inside s5's jpg data
    ("at-header", ["s4"], 4),         # at the header of s4.txt: s4 has its jpg only, intact samples have jpg + txt
    ("inside-header", ["s4"], 4),     # half of s4.txt's header: its name is still legible
    ("no-end-blocks", [], 8),         # every member written, the writer killed before the end blocks
    ("half-end-blocks", [], 8),       # one of the two end blocks: every sample is complete
])
def test_cli_truncated_tar_keeps_every_complete_sample(tmp_path, capsys, cut, lost, kept):
    src = tmp_path / "d.tar"
    members = eight_sample_shard(src)
    blob = src.read_bytes()
    last = members["s7.txt"]
    end = {"inside-member": members["s5.jpg"].offset_data + 300,
           "at-header": members["s4.txt"].offset,
           "inside-header": members["s4.txt"].offset + 200,
           "no-end-blocks": last.offset_data + 512,
           "half-end-blocks": last.offset_data + 1024}[cut]
    src.write_bytes(blob[:end])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    message = str(info.value)
    assert str(src) in message and "truncated tar" in message and "damaged" not in message
    assert f"{kept} complete samples kept, {len(lost)} lost" in message
    assert all(f"sample {key!r}" in message for key in lost)
    assert not (tmp_path / "out" / "d.tar").exists()

    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text
    assert f"damaged or truncated shards: 1 ({kept} complete samples kept, {len(lost)} lost)" in text
    assert f"samples: {kept}   captions: {kept}" in text
    got = read_members(tmp_path / "out" / "d.tar")  # a complete tar of the complete samples
    assert sorted({m.name.split(".")[0] for m, _ in got}) == [f"s{i}" for i in range(kept)]
    assert sum(m.name.endswith(".json") for m, _ in got) == kept


def _bar_total(stderr: str) -> int:
    """The last count tqdm's bar showed (``N samples [...]``)."""
    return int(re.findall(r"(\d+) samples \[", stderr)[-1])


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("how", ["checksum", "garbled"])
def test_cli_damaged_headers_keep_every_complete_sample(tmp_path, coco, capsys, how, processes):
    """Real COCO captions, shards with damaged headers (the cases of ``tar_damage_fixtures.DAMAGED``)
    and an intact one: without --on-error skip one error naming the shard and the counts, nothing
    written; with it the complete samples are annotated, and the progress bar, the summary and the
    per-shard message give the same counts."""
    cases = ["first-member-mid-shard", "several"]
    inputs, expected = [], {}
    for case in cases:
        samples = coco_samples(coco, 60)
        path = tmp_path / "in" / f"{case}.tar"
        path.parent.mkdir(exist_ok=True)
        damaged_shard(path, samples, DAMAGED[case], how)
        inputs.append(path)
        expected[path.name] = (samples, keys_without(samples, DAMAGED[case]))
    intact = tmp_path / "in" / "intact.tar"
    make_shard(intact, shard_samples(coco, 100, 20))
    inputs.append(intact)
    kept = sum(len(keys) for _, keys in expected.values())
    lost = 2 * 60 - kept
    at_least = "" if how == "checksum" else "at least "

    with pytest.raises(SystemExit) as info:
        run_cli([inputs[0], "--output-dir", tmp_path / "out1"])
    message = str(info.value)
    assert message.startswith(f"error: {inputs[0]}: damaged tar: bad tar header at byte ") and "\n" not in message
    assert f"59 complete samples kept, {at_least}1 lost ('s031')" in message
    assert not (tmp_path / "out1" / inputs[0].name).exists()

    out = tmp_path / "out"
    code = C.main([str(p) for p in inputs] + ["--output-dir", str(out), "--on-error", "skip",
                                              "--processes", str(processes)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"damaged or truncated shards: 2 ({kept} complete samples kept, {at_least}{lost} lost)" in captured.out
    assert f"samples: {kept + 20}   captions: {kept + 20}" in captured.out and "failures: 2" in captured.out
    assert _bar_total(captured.err) == kept + 20
    per_shard = re.findall(r": damaged tar: .*; (\d+) complete samples kept, (?:at least )?(\d+) lost", captured.out)
    assert sorted(per_shard) == sorted((str(len(keys)), str(60 - len(keys))) for _, keys in expected.values())
    for name, (samples, keys) in expected.items():
        got = read_members(out / name)
        assert [m.name.split(".")[0] for m, _ in got if m.name.endswith(".txt")] == keys
        captions = dict((key, dict(members)["txt"].decode()) for key, members in samples)
        concepts = [json.loads(d)["concepts"] for m, d in got if m.name.endswith(".json")]
        assert concepts == C.extract_concepts([captions[key] for key in keys])


def test_complete_tar_reads_without_damage_report(tmp_path):
    from open_clip_c2lip.fileio.tar import iter_tar_samples
    src = tmp_path / "ok.tar"
    eight_sample_shard(src)
    assert [s.key for s in iter_tar_samples(str(src))] == [f"s{i}" for i in range(8)]


@pytest.mark.parametrize("extension", ["txt", "json", "jpg"])
def test_duplicated_member_fails_its_sample_only(tmp_path, extension, capsys):
    dup = [("jpg", b"x"), ("txt", b"a red bus"), ("json", b"{}")]
    dup.insert(dup.index(next(m for m in dup if m[0] == extension)) + 1, (extension, b"{}"))
    src = tmp_path / "dup.tar"
    make_shard(src, [("s001", [("jpg", b"a"), ("txt", b"a red car")]), ("s002", dup),
                     ("s003", [("jpg", b"b"), ("txt", b"two cats")])])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    assert re.search(re.escape(str(src)) + rf": sample 's002' has two \.{extension} members", str(info.value))
    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text and "captions: 2" in text and f"two .{extension} members" in text
    got = read_members(tmp_path / "out" / "dup.tar")
    assert [(m.name, d) for m, d in got if m.name.startswith("s002")] == [(f"s002.{e}", d) for e, d in dup]
    concepts = {m.name: json.loads(d)["concepts"] for m, d in got if m.name.endswith(".json") and "s002" not in m.name}
    assert concepts == {"s001.json": ["a red car"], "s003.json": ["two cats"]}
    with pytest.raises(ValueError, match="'s002' has two"):
        from open_clip_c2lip.fileio.tar import read_shard
        read_shard(str(src))


# ------------------------------------------------------------------------------------------------
# Compressed shards (what webdataset also reads for training)

COMPRESSIONS = {".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bz2", ".tar.xz": "xz"}


def _compress(blob: bytes, suffix: str) -> bytes:
    import bz2
    import gzip
    import lzma
    return {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[COMPRESSIONS[suffix]](blob)


@pytest.mark.parametrize("suffix", sorted(COMPRESSIONS))
def test_cli_compressed_shard_annotated_like_the_plain_tar(tmp_path, coco, capsys, suffix):
    """A .tar.gz (etc.) gets exactly the plain tar's annotation, written back compressed the same way;
    webdataset's own reader (what training uses) reads it."""
    import webdataset as wds
    plain = tmp_path / "in" / "shard-000000.tar"
    plain.parent.mkdir()
    make_shard(plain, shard_samples(coco, 0, 9))
    packed = tmp_path / "in" / ("shard-000000" + suffix)
    packed.write_bytes(_compress(plain.read_bytes(), suffix))
    assert run_cli([plain, "--output-dir", tmp_path / "out_plain"], capsys)[0] == 0
    code, text = run_cli([packed, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "captions: 9" in text and "failures: 0" in text
    out = tmp_path / "out" / packed.name
    assert records.read_record(str(out)) is not None
    expected = (tmp_path / "out_plain" / plain.name).read_bytes()
    import tarfile as _tarfile
    with _tarfile.open(out, "r:*") as tar:  # the compressed output holds the plain output's bytes
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == \
            [(m.name, d) for m, d in read_members(tmp_path / "out_plain" / plain.name)]
    assert out.read_bytes()[:3] == _compress(expected, suffix)[:3]  # same compression format
    got = [json.loads(s["json"])["concepts"] for s in wds.WebDataset(str(out), shardshuffle=False)]
    assert len(got) == 9 and got == C.extract_concepts([coco[i] for i in range(9)])
    assert not list((tmp_path / "out").glob(".c2lip-untar-*"))  # the scratch copy is gone
    # a rerun finds it finished
    code, text = run_cli([packed, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "1 skipped as finished" in text, text


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz"])
def test_cli_cut_compressed_shard_is_detected_salvaged_and_counted(tmp_path, capsys, suffix):
    src = tmp_path / "d.tar"
    eight_sample_shard(src)
    packed = tmp_path / ("d" + suffix)
    blob = _compress(src.read_bytes(), suffix)
    packed.write_bytes(blob[: len(blob) * 2 // 3])  # the download stopped two thirds in
    with pytest.raises(SystemExit) as info:
        run_cli([packed, "--output-dir", tmp_path / "out"])
    message = str(info.value)
    assert str(packed) in message and f"damaged {COMPRESSIONS[suffix]} stream" in message
    assert not (tmp_path / "out" / packed.name).exists()
    code, text = run_cli([packed, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text
    salvaged = int(re.search(r"damaged or truncated shards: 1 \((\d+) complete samples kept", text).group(1))
    assert 0 < salvaged < 8 and f"captions: {salvaged}" in text
    import tarfile as _tarfile
    with _tarfile.open(tmp_path / "out" / packed.name, "r:*") as tar:  # a complete archive
        keys = sorted({m.name.split(".")[0] for m in tar.getmembers()})
    assert keys == [f"s{i}" for i in range(salvaged)]


def test_cli_corrupt_gzip_is_a_named_failure(tmp_path, capsys):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"this is not gzip data at all" * 10)
    with pytest.raises(SystemExit, match=re.escape(str(bad)) + r".*damaged gzip stream"):
        run_cli([bad, "--output-dir", tmp_path / "out"])
    assert not (tmp_path / "out" / bad.name).exists()


@pytest.mark.parametrize("name,mode,actual", [("plain.tar.gz", "w", "a plain tar"), ("x.tar.bz2", "w:xz", "xz-compressed"),
                                              ("g.tgz", "w:bz2", "bzip2-compressed"), ("z.tar", "w:gz", "gzip-compressed"),
                                              ("y.tar.xz", "w:gz", "gzip-compressed")])
def test_cli_names_a_compression_the_suffix_does_not_say(tmp_path, name, mode, actual):
    path = tmp_path / name
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo("s0.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"a dog"))
    with pytest.raises(SystemExit, match=re.escape(f"{path}: not ") + rf".*the file is {actual}; rename it"):
        run_cli([path, "--output-dir", tmp_path / "out"])
    assert not (tmp_path / "out" / name).exists()


def test_cli_names_a_zip_and_a_compressed_non_tar(tmp_path):
    import gzip
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.tar.gz", "w") as archive:
        archive.writestr("a.txt", "a dog")
    (tmp_path / "n.tar.gz").write_bytes(gzip.compress(b"a dog on a mat " * 100))
    with pytest.raises(SystemExit, match="the file is a zip archive; shards are tars"):
        run_cli([tmp_path / "z.tar.gz", "--output-dir", tmp_path / "out"])
    with pytest.raises(SystemExit, match="the decompressed gzip data is not a tar"):
        run_cli([tmp_path / "n.tar.gz", "--output-dir", tmp_path / "out"])


def test_cli_reads_gzip_with_trailing_zero_padding(tmp_path, coco):
    import gzip

    plain = tmp_path / "p.tar"
    make_shard(plain, shard_samples(coco, 0, 3))
    padded = tmp_path / "p.tar.gz"
    padded.write_bytes(gzip.compress(plain.read_bytes()) + b"\0" * 3000)  # block padding, as tape tools write
    assert run_cli([padded, "--output-dir", tmp_path / "out"])[0] == 0
    assert run_cli([plain, "--output-dir", tmp_path / "out_plain"])[0] == 0
    assert gzip.decompress((tmp_path / "out" / "p.tar.gz").read_bytes()) == (tmp_path / "out_plain" / "p.tar").read_bytes()
