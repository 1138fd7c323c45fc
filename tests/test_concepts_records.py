"""Records of finished outputs (``open_clip_c2lip.concepts.records``): what a rerun of the CLI skips, redoes or refuses."""
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from open_clip_c2lip import concepts as C
from concepts_fixtures import (  # noqa: F401
    coco,
    coco_all,
    eight_sample_shard,
    make_shard,
    read_members,
    run_cli,
    shard_samples)


def test_cli_resume_skips_finished_not_partial(tmp_path, coco, capsys):
    inputs = []
    for i in range(3):
        inputs.append(tmp_path / f"part-{i:06d}.tar")
        make_shard(inputs[-1], shard_samples(coco, 5 * i, 5))
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".part-000000.tar.0123abcd.c2lip-partial"
    leftover.write_bytes(b"half written")  # a killed earlier run's, or a file of that name: reported, kept
    (out / "part-000000.tar.partial").write_bytes(b"someone else's")  # not a name the CLI writes: kept
    code = C.main([str(tmp_path / "part-{000000..000001}.tar"), "--output-dir", str(out), "--quiet"])
    text, err = capsys.readouterr()
    assert code == 0 and "2 written, 0 skipped as finished" in text
    assert "note: 1 partial file(s) of interrupted runs" in err and leftover.name in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"part-{i:06d}.tar{r}" for i in range(2) for r in ("", ".concepts.json")]
        + ["part-000000.tar.partial", leftover.name])
    assert (out / "part-000000.tar.partial").read_bytes() == b"someone else's"
    assert leftover.read_bytes() == b"half written"
    assert len(read_members(out / "part-000000.tar")) > 5
    finished = {i: (out / f"part-{i:06d}.tar").stat().st_mtime_ns for i in range(2)}

    code, text = run_cli([tmp_path / "part-{000000..000002}.tar", "--output-dir", out], capsys)
    assert code == 0 and "1 written, 2 skipped as finished" in text and "captions: 5" in text
    assert all((out / f"part-{i:06d}.tar").stat().st_mtime_ns == t for i, t in finished.items())
    code, text = run_cli([inputs[1], "--output-dir", out, "--overwrite"], capsys)
    assert code == 0 and "1 written, 0 skipped" in text and len(read_members(out / "part-000001.tar")) > 5


def test_cli_rerun_reports_earlier_failures(tmp_path, capsys):
    """A salvaged / partly failed output is not silently 'finished': its failures count again."""
    src = tmp_path / "f.tar"
    make_shard(src, [("good", [("txt", b"a red car")]), ("bad", [("txt", b"!!!")]), ("ok", [("txt", b"a dog")])])
    out = tmp_path / "out"
    code, text = run_cli([src, "--output-dir", out, "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text
    record = json.loads((out / "f.tar.concepts.json").read_text())
    assert record["stats"]["failures"] == 1 and record["input"] == str(src)
    assert record["input_size"] == src.stat().st_size and record["options"]["clean"] == "lower"
    for flags in (["--on-error", "skip"], []):
        code, text = run_cli([src, "--output-dir", out] + flags, capsys)
        assert code == 1 and "0 written, 1 skipped as finished" in text
        assert "earlier failures in outputs skipped as finished: 1" in text and "failures: 1" in text
        assert "(earlier run)" in text and "'bad'" in text
    code, text = run_cli([src, "--output-dir", out, "--on-error", "skip", "--overwrite"], capsys)
    assert code == 1 and "1 written" in text and "(earlier run)" not in text


def test_cli_damaged_tar_rerun_is_not_finished(tmp_path, capsys):
    src = tmp_path / "cut_mid.tar"
    eight_sample_shard(src)
    src.write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2 + 100])
    out = tmp_path / "dout"
    code, text = run_cli([src, "--output-dir", out, "--on-error", "skip"], capsys)
    assert code == 1 and "damaged or truncated shards: 1" in text
    code, text = run_cli([src, "--output-dir", out], capsys)
    assert code == 1 and "1 skipped as finished" in text and "failures: 1" in text and "truncated" in text


def test_cli_stale_output_of_a_changed_input_is_redone(tmp_path, coco, capsys):
    src = tmp_path / "in" / "p-000000.tar"
    src.parent.mkdir()
    make_shard(src, shard_samples(coco, 0, 4))
    out = tmp_path / "out"
    assert run_cli([src, "--output-dir", out], capsys)[0] == 0
    make_shard(src, shard_samples(coco, 10, 6))  # re-sharded: same name, other samples
    code, text = run_cli([src, "--output-dir", out], capsys)
    assert code == 0 and "1 written, 0 skipped" in text and "re-annotated (input or options changed" in text
    got = [json.loads(d)["concepts"] for m, d in read_members(out / src.name) if m.name.endswith(".json")]
    assert got == C.extract_concepts(coco[10:16])
    # an option that changes the content: redone too; the same command again: finished
    code, text = run_cli([src, "--output-dir", out, "--concepts-key", "np"], capsys)
    assert code == 0 and "re-annotated" in text
    code, text = run_cli([src, "--output-dir", out, "--concepts-key", "np"], capsys)
    assert code == 0 and "0 written, 1 skipped as finished" in text and "re-annotated" not in text
    # same size, only mtime moved (a rewrite with identical length): redone
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    code, text = run_cli([src, "--output-dir", out, "--concepts-key", "np"], capsys)
    assert code == 0 and "re-annotated" in text


@pytest.mark.parametrize("damage", ["no-record", "bad-record", "output-changed"])
def test_cli_output_without_a_valid_record_is_refused(tmp_path, coco, capsys, damage):
    src = tmp_path / "t.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    if damage == "no-record":
        out.mkdir()
        (out / "t.tar").write_bytes(b"someone else's file")
    else:
        assert run_cli([src, "--output-dir", out], capsys)[0] == 0
        if damage == "bad-record":
            (out / "t.tar.concepts.json").write_text("{not json")
        else:
            (out / "t.tar").write_bytes(b"replaced by someone")
    before = (out / "t.tar").read_bytes()
    with pytest.raises(SystemExit, match=r"1 output\(s\) already exist without a valid record.*t\.tar.*--overwrite"):
        run_cli([src, "--output-dir", out])
    assert (out / "t.tar").read_bytes() == before  # never replaced without --overwrite
    code, text = run_cli([src, "--output-dir", out, "--overwrite"], capsys)
    assert code == 0 and "1 written" in text and len(read_members(out / "t.tar")) > 3


def test_cli_refuses_a_file_at_the_records_name_that_is_not_a_record(tmp_path, coco):
    src = tmp_path / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.tar.concepts.json").write_text("mine")
    with pytest.raises(SystemExit, match=r"without a valid record.*a\.tar\.concepts\.json"):
        run_cli([src, "--output-dir", out])
    assert (out / "a.tar.concepts.json").read_text() == "mine" and not (out / "a.tar").exists()
    assert run_cli([src, "--output-dir", out, "--overwrite"])[0] == 0  # asked for: replaced
