"""The one reader of caption tables (``open_clip_c2lip.fileio.tables``), as the concepts CLI and training use it."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


from open_clip_c2lip import concepts as C


# ------------------------------------------------------------------------------------------------
# Tables: one reader, one rule, open_clip's separator

NA_LIKE = ["N/A", "NA", "None", "null", "nan", "NaN", "#N/A", "NULL", "<NA>"]


def test_na_like_captions_are_text_in_cli_and_training_reader(tmp_path):
    """A caption 'N/A' is text for the CLI and for training's CSV reader alike (one reader)."""
    from open_clip_c2lip.integration.train_data import ConceptCsvDataset

    src = tmp_path / "train.csv"  # tab-separated, as open_clip_train reads by default
    (tmp_path / "img").mkdir()
    for i in range(len(NA_LIKE) + 1):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(b"")  # the dataset checks that images exist
    rows = ["filepath\ttitle"] + [f"img/{i}.jpg\t{c}" for i, c in enumerate(NA_LIKE + ["a red ball"])]
    src.write_text("\n".join(rows) + "\n")
    assert C.main([str(src), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    out = tmp_path / "out" / "train.csv"
    dataset = ConceptCsvDataset(str(out), None, "filepath", "title", sep="\t")
    assert dataset.captions == NA_LIKE + ["a red ball"]
    assert all(concepts for concepts in dataset.concepts)  # every row annotated, read back as given
    assert dataset.concepts == C.extract_concepts(NA_LIKE + ["a red ball"])


# ------------------------------------------------------------------------------------------------
# Image paths: relative to the table's folder, conflicts with the working directory named

def _file(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_image_paths_resolve_against_the_tables_folder(tmp_path, monkeypatch):
    from open_clip_c2lip.fileio.tables import ImagePaths, TableError

    monkeypatch.chdir(tmp_path)
    paths = ImagePaths("data/sub/t.csv", "filepath")
    assert paths.folder == str(tmp_path / "data" / "sub")
    assert paths.resolve("imgs/a.jpg") == str(tmp_path / "data" / "sub" / "imgs" / "a.jpg")
    assert paths.resolve("../b.jpg") == str(tmp_path / "data" / "sub" / ".." / "b.jpg")
    assert paths.resolve("/abs/c.jpg") == "/abs/c.jpg"
    paths.check(["imgs/a.jpg", "/abs/c.jpg"])  # nothing in the working directory: no conflict
    with pytest.raises(TableError, match=r"t\.csv row 1: column 'filepath' holds b'\\x89PNG.*… \(\d+ characters\), "
                                         r"not an image path \(1 such row\(s\)\)"):
        paths.check(["imgs/a.jpg", b"\x89PNG" + bytes(500)])  # a parquet column of image bytes


def test_image_path_conflicts_name_both_files(tmp_path, monkeypatch):
    from open_clip_c2lip.fileio.tables import ImagePaths, TableError

    _file(tmp_path / "data" / "imgs" / "a.jpg", b"table's")
    _file(tmp_path / "data" / "imgs" / "b.jpg")
    _file(tmp_path / "run" / "imgs" / "a.jpg", b"another")  # same name, other file
    _file(tmp_path / "run" / "imgs" / "c.jpg")  # only relative to the working directory
    monkeypatch.chdir(tmp_path / "run")
    paths = ImagePaths(str(tmp_path / "data" / "t.csv"), "filepath")
    assert paths.conflict("imgs/b.jpg") is None  # only ours exists
    assert paths.conflict("imgs/zzz.jpg") is None  # neither: a missing image, skipped in training
    assert paths.conflict(str(tmp_path / "run" / "imgs" / "a.jpg")) is None  # absolute
    assert "a different file" in paths.conflict("imgs/a.jpg")
    assert "which does not exist" in paths.conflict("imgs/c.jpg")
    with pytest.raises(TableError) as info:
        paths.check(["imgs/b.jpg", "imgs/a.jpg", "imgs/c.jpg"])
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'data' / 't.csv'}: 2 relative image path(s) of column 'filepath'")
    assert f"row 1: 'imgs/a.jpg' is {tmp_path / 'data' / 'imgs' / 'a.jpg'} relative to the table's folder and a " \
           f"different file, {tmp_path / 'run' / 'imgs' / 'a.jpg'}, relative to the working directory" in message
    # the same file reached both ways (a symlink, or the table in the working directory) is no conflict
    (tmp_path / "run" / "imgs" / "a.jpg").unlink()
    (tmp_path / "run" / "imgs" / "a.jpg").symlink_to(tmp_path / "data" / "imgs" / "a.jpg")
    assert paths.conflict("imgs/a.jpg") is None
    monkeypatch.chdir(tmp_path / "data")
    ImagePaths("t.csv", "filepath").check(["imgs/a.jpg", "imgs/c.jpg"])


def test_relocated_paths_name_the_same_files(tmp_path, monkeypatch):
    from open_clip_c2lip.fileio.tables import ImagePaths

    monkeypatch.chdir(tmp_path)
    a = _file(tmp_path / "data" / "imgs" / "a.jpg")
    paths = ImagePaths("data/t.csv", "filepath")
    assert paths.relocated("imgs/a.jpg", "out") == "../data/imgs/a.jpg"
    assert paths.relocated("imgs/a.jpg", "data") == "imgs/a.jpg"
    assert paths.relocated("a.jpg", "data/imgs") == "../a.jpg"
    assert paths.relocated("imgs/a.jpg", "data/imgs") == "a.jpg"
    assert paths.relocated("/abs/x.jpg", "out") == "/abs/x.jpg"
    assert paths.relocated("https://example.com/a/x.jpg", "out") == "https://example.com/a/x.jpg"
    assert paths.resolve("s3://bucket/x.jpg") == "s3://bucket/x.jpg"
    # an output folder reached through a symlink: '..' from it is the link target's parent
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    moved = paths.relocated("imgs/a.jpg", "link")
    assert os.path.samefile(os.path.join(tmp_path, "link", moved), a)
