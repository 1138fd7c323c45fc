"""``python -m open_clip_c2lip.concepts`` (``open_clip_c2lip.concepts.cli``): exit status, start-up checks, output
folders, separators, error messages."""
import os
import subprocess
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd
import pytest

from open_clip_c2lip import concepts as C
from open_clip_c2lip.concepts import cli
from concepts_fixtures import (coco, coco_all, make_shard, run_cli, shard_samples)  # noqa: F401


# ------------------------------------------------------------------------------------------------
# Exit status and start-up checks

def test_cli_exit_status_tells_the_truth(tmp_path, coco, capsys):
    src = tmp_path / "ok.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    # a mistyped spaCy model stops before any file, whatever --on-error says
    for on_error in ("raise", "skip"):
        with pytest.raises(SystemExit, match="en_core_web_smm.*not installed"):
            run_cli([src, "--output-dir", tmp_path / "o1", "--spacy-model", "en_core_web_smm", "--on-error", on_error])
    # --output-dir that is a file / that cannot be created
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match="afile: exists and is not a directory"):
        run_cli([src, "--output-dir", tmp_path / "afile", "--on-error", "skip"])
    with pytest.raises(SystemExit, match="cannot write there"):
        run_cli([src, "--output-dir", tmp_path / "afile" / "sub", "--on-error", "skip"])
    # every file failed -> 1, one failed of two -> 1, none failed -> 0
    empty = tmp_path / "empty.tar"
    make_shard(empty, [])
    code, text = run_cli([empty, "--output-dir", tmp_path / "o2", "--on-error", "skip"], capsys)
    assert code == 1 and "0 written" in text and "1 failed" in text
    code, _ = run_cli([empty, src, "--output-dir", tmp_path / "o3", "--on-error", "skip"], capsys)
    assert code == 1 and (tmp_path / "o3" / "ok.tar").exists()
    code, _ = run_cli([src, "--output-dir", tmp_path / "o4"], capsys)
    assert code == 0


def test_cli_exit_status_in_a_real_process(tmp_path):
    """The status reaches the shell: python -m open_clip_c2lip.concepts exits 1 after a skipped failure."""
    src = tmp_path / "b.tar"
    make_shard(src, [("good", [("txt", b"a dog")]), ("bad", [("txt", b"   ")])])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "open_clip_c2lip.concepts", str(src), "--output-dir",
                             str(tmp_path / "out"), "--on-error", "skip", "--quiet"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1 and "FAILED: 1 failure" in result.stderr and "'bad'" in result.stdout


@pytest.mark.parametrize("sep, flag", [("\t", None), ("\t", "\\t"), (",", ","), (";", ";"), ("|", "|")])
def test_cli_csv_separator_matches_open_clip(tmp_path, sep, flag):
    src = tmp_path / "t.csv"  # the extension says nothing about the separator (open_clip_train neither)
    src.write_text(sep.join(["filepath", "title"]) + "\n" + sep.join(["a.jpg", "a red ball"]) + "\n")
    extra = ["--csv-separator", flag] if flag else []
    assert C.main([str(src), "--output-dir", str(tmp_path / "out"), "--quiet"] + extra) == 0
    read = pd.read_csv(tmp_path / "out" / "t.csv", sep=sep, dtype=str)
    assert list(read.columns) == ["filepath", "title", "concepts"] and read["concepts"][0] == '["a red ball"]'


@pytest.mark.parametrize("sep, flag, hint", [(",", None, "','"), ("\t", ",", "'\\t'"), (";", None, "';'")])
def test_cli_wrong_separator_says_what_is_wrong(tmp_path, sep, flag, hint):
    src = tmp_path / "t.csv"
    src.write_text(sep.join(["filepath", "title"]) + "\n" + sep.join(["a.jpg", "a red ball"]) + "\n")
    extra = ["--csv-separator", flag] if flag else []
    with pytest.raises(SystemExit) as info:
        C.main([str(src), "--output-dir", str(tmp_path / "out"), "--quiet"] + extra)
    message = str(info.value)
    assert str(src) in message and "no caption column" in message and f"--csv-separator {hint}" in message


def test_cli_rejects_a_bad_separator(tmp_path):
    with pytest.raises(SystemExit):
        C.main(["x.csv", "--output-dir", str(tmp_path), "--csv-separator", ",,"])


# ------------------------------------------------------------------------------------------------
# Messages quote a short prefix of user text, never all of it

@pytest.mark.parametrize("caption, reason", [
    (" \n" * 900_000, "empty or whitespace-only"),  # 1.8M characters of whitespace
    ("!" * 200_000, "no letter or digit"),
])
def test_error_messages_quote_a_short_prefix_of_long_captions(tmp_path, caption, reason, capsys):
    src = tmp_path / "w.tar"
    make_shard(src, [("good", [("txt", b"a dog")]), ("bad", [("txt", caption.encode())])])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    message = str(info.value)
    assert "'bad'" in message and reason in message and f"({len(caption)} characters)" in message
    assert len(message) < 600
    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and len(text) < 3000 and f"({len(caption)} characters)" in text


def test_cli_refuses_an_output_folder_linked_to_the_input(tmp_path, coco):
    src_dir = tmp_path / "data"
    src_dir.mkdir()
    src = src_dir / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    before = src.read_bytes()
    (tmp_path / "link").symlink_to(src_dir)
    (tmp_path / "file_link.tar").symlink_to(src)  # an input that is a link to a file in the output folder
    for args in ([src, "--output-dir", tmp_path / "link"], [src, "--output-dir", tmp_path / "link", "--overwrite"],
                 [tmp_path / "file_link.tar", "--output-dir", tmp_path, "--overwrite"]):
        with pytest.raises(SystemExit, match="would overwrite the input"):
            run_cli(args)
    assert src.read_bytes() == before


def test_cli_never_removes_files_it_did_not_create(tmp_path, coco):
    src = tmp_path / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    others = {"a.tar.partial": None, ".a.tar.partial": "notes", ".a.tar.0123abcd.c2lip-partial.keep": "notes",
              ".a.tar.0123abcd.c2lip-partial": "the CLI's name pattern: still not provably its file",
              ".a.tar.concepts.json.deadbeef.c2lip-partial": "same"}
    for name, text in others.items():
        (out / name).mkdir(parents=True) if text is None else (out / name).write_text(text)
    old_umask = os.umask(0o022)
    try:
        assert run_cli([src, "--output-dir", out])[0] == 0
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.iterdir()) == sorted(list(others) + ["a.tar", "a.tar.concepts.json"])
    assert all((out / n).read_text() == t for n, t in others.items() if t is not None)
    assert (out / "a.tar").stat().st_mode & 0o777 == 0o644  # the umask's, like any new file


def test_cli_stops_while_another_run_writes_the_same_output(tmp_path, coco):
    from open_clip_c2lip.fileio.atomic import atomic_output

    src = tmp_path / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    out.mkdir()
    with atomic_output(str(out / "a.tar")) as live:  # a running writer holds its partial
        with pytest.raises(SystemExit, match="another run is writing"):
            run_cli([src, "--output-dir", out, "--overwrite"])
        assert os.path.exists(live)
    assert run_cli([src, "--output-dir", out, "--overwrite"])[0] == 0


@pytest.mark.parametrize("flag", ["--concepts-key", "--caption-key"])
def test_cli_refuses_empty_keys(tmp_path, flag):
    with pytest.raises(SystemExit) as info:
        cli._parse_args([str(tmp_path / "a.tar"), "--output-dir", str(tmp_path), flag, " "])
    assert info.value.code == 2
