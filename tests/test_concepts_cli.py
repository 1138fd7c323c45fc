"""``python -m open_clip_c2lip.concepts`` (``open_clip_c2lip.concepts.cli``): exit status, start-up checks, output
folders, separators, error messages."""
import collections
import errno
import os
import shutil
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


# ------------------------------------------------------------------------------------------------
# A full disk: one error line naming the output and the space it needs, nothing partial

Usage = collections.namedtuple("Usage", "total used free")


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes were written."""

    def __init__(self, f, room: int, path: str):
        self.f, self.room, self.path = f, room, path

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        self.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def _disk_full_for(monkeypatch, name: str, room: int = 3000) -> None:
    """Writes of the output named ``name`` (its partial file) fail with ENOSPC after ``room`` bytes."""
    from open_clip_c2lip.concepts import annotate

    def full_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f, room, path) if "w" in mode and f".{name}." in os.path.basename(path) else f

    monkeypatch.setattr(annotate, "open", full_open, raising=False)


def _no_partial_left(folder) -> bool:
    return not [p for p in os.listdir(folder) if p.endswith(".c2lip-partial")]


@pytest.mark.parametrize("processes, on_error", [(1, "raise"), (1, "skip"), (2, "skip")])
def test_full_disk_while_writing_a_shard_stops_with_one_line(tmp_path, coco, monkeypatch, processes, on_error):
    inputs = []
    for name, start in (("a.tar", 0), ("b.tar", 20)):
        make_shard(tmp_path / name, shard_samples(coco, start, 20))
        inputs.append(tmp_path / name)
    out = tmp_path / "out"
    _disk_full_for(monkeypatch, "b.tar")
    with pytest.raises(SystemExit) as info:
        run_cli(inputs + ["--output-dir", out, "--processes", processes, "--on-error", on_error])
    message = str(info.value)
    size = (tmp_path / "b.tar").stat().st_size
    assert message.startswith(f"error: no space left on the device for {out / 'b.tar'}: it needs about {size:,} bytes")
    assert f"free in {out}" in message and "\n" not in message and "nothing partial is left" in message
    # a.tar finished (or never started, with two workers it may lose the race); b.tar left nothing
    assert sorted(os.listdir(out)) in (["a.tar", "a.tar.concepts.json"], []) and _no_partial_left(out)
    monkeypatch.undo()
    code, text = run_cli(inputs + ["--output-dir", out])  # disk freed: the rerun goes on
    assert code == 0 and sorted(os.listdir(out)) == ["a.tar", "a.tar.concepts.json", "b.tar", "b.tar.concepts.json"]


def test_full_disk_while_writing_a_table_or_a_record(tmp_path, monkeypatch):
    from open_clip_c2lip.concepts import records
    from open_clip_c2lip.fileio import tables

    src = tmp_path / "t.csv"
    pd.DataFrame({"filepath": ["a.jpg", "b.jpg"], "caption": ["a red ball", "two cats"]}).to_csv(src, sep="\t",
                                                                                                index=False)
    out = tmp_path / "out"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for module, name in ((tables, "write_text_table"), (records, "write_text")):
        with monkeypatch.context() as patch:
            patch.setattr(module, name, full)
            with pytest.raises(SystemExit) as info:
                run_cli([src, "--output-dir", out, "--on-error", "skip"])
        assert str(info.value).startswith(f"error: no space left on the device for {out / 't.csv'}: it needs about "
                                          f"{src.stat().st_size} bytes"), name
        assert os.listdir(out) == [], name  # no output without its record, no partial


def test_full_disk_up_front_names_the_folder_and_the_space(tmp_path, coco, monkeypatch):
    inputs = []
    for name, start in (("a.tar", 0), ("b.tar", 20)):
        make_shard(tmp_path / name, shard_samples(coco, start, 20))
        inputs.append(tmp_path / name)
    out = tmp_path / "out"
    needed = sum(p.stat().st_size for p in inputs)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 12, 10 ** 12 - needed + 1, needed - 1))
    with pytest.raises(SystemExit) as info:
        run_cli(inputs + ["--output-dir", out])
    assert str(info.value) == (
        f"error: no space left on the device for {out}: it needs about {needed:,} bytes ({needed / 1024:.1f} KiB), "
        f"{needed - 1:,} bytes ({(needed - 1) / 1024:.1f} KiB) free in {out} for the 2 output(s) to write, about as "
        "big as their inputs; nothing was written: free space or pick another --output-dir")
    assert os.listdir(out) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 12, 0, needed))  # exactly enough
    assert run_cli(inputs + ["--output-dir", out])[0] == 0
    # a redo frees its earlier output first: the same room is enough again
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 12, 0, 0))
    assert run_cli(inputs + ["--output-dir", out, "--overwrite"])[0] == 0


def test_full_disk_in_a_real_process_prints_no_traceback(tmp_path, coco):
    src = tmp_path / "b.tar"
    make_shard(src, shard_samples(coco, 0, 20))
    out = tmp_path / "out"
    code = (
        "import sys, os, errno\n"
        "from open_clip_c2lip.concepts import annotate, cli\n"
        "real_open = open\n"
        "class Full:\n"
        "    def __init__(self, f): self.f = f\n"
        "    def write(self, data): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    def __enter__(self): return self\n"
        "    def __exit__(self, *a): self.f.close()\n"
        "annotate.open = lambda p, m='r', *a, **k: Full(real_open(p, m, *a, **k)) if 'w' in m else real_open(p, m, *a, **k)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", code, str(src), "--output-dir", str(out)], capture_output=True,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert lines[-1].startswith(f"error: no space left on the device for {out / 'b.tar'}: it needs about")
    assert [line for line in lines if "error" in line] == lines[-1:] and os.listdir(out) == []
