"""open_clip_c2lip.fileio.atomic: outputs appear whole or not at all, and nothing else is touched."""
import os

import pytest

from open_clip_c2lip.fileio.atomic import PARTIAL_SUFFIX, atomic_output, partial_files, write_text


def test_output_appears_complete_with_the_umasks_permissions(tmp_path):
    target = tmp_path / "out.json"
    old = os.umask(0o027)
    try:
        with atomic_output(str(target)) as partial:
            assert not target.exists() and os.path.basename(partial).endswith(PARTIAL_SUFFIX)
            with open(partial, "w") as f:
                f.write("done")
    finally:
        os.umask(old)
    assert target.read_text() == "done" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failure_leaves_the_old_output_and_no_partial(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    for error in (ValueError, KeyboardInterrupt):
        with pytest.raises(error):
            with atomic_output(str(target)) as partial:
                with open(partial, "w") as f:
                    f.write("half")
                raise error
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_partial_files_tells_a_running_writer_from_a_leftover(tmp_path):
    target = tmp_path / "a.tar"
    leftover = tmp_path / f".a.tar.0123abcd{PARTIAL_SUFFIX}"
    others = [f"a.tar{PARTIAL_SUFFIX}", f".a.tar.0123abcdx{PARTIAL_SUFFIX}", f".a.tar.0123ABCD{PARTIAL_SUFFIX}",
              f".b.tar.0123abcd{PARTIAL_SUFFIX}", f".a.tar.0123abcd{PARTIAL_SUFFIX}.keep", "a.tar.partial"]
    for name in [leftover.name] + others:
        (tmp_path / name).write_text("x")
    (tmp_path / f".a.tar.99999999{PARTIAL_SUFFIX}").mkdir()  # a folder is never a partial file
    assert partial_files([str(target)]) == ([], [str(leftover)])
    with atomic_output(str(target)) as live:  # held by this writer (flock): live, not a leftover
        assert partial_files([str(target)]) == ([live], [str(leftover)])
    assert partial_files([str(target)]) == ([], [str(leftover)]) and leftover.exists()
    # several targets, one listing: b.tar's leftover is found with a.tar's
    assert partial_files([str(target), str(tmp_path / "b.tar")]) == (
        [], [str(leftover), str(tmp_path / f".b.tar.0123abcd{PARTIAL_SUFFIX}")])


def test_write_text_is_utf8(tmp_path):
    write_text(str(tmp_path / "t.md"), "µ → ✓")
    assert (tmp_path / "t.md").read_bytes() == "µ → ✓".encode("utf-8")
