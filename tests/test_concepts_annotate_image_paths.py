"""The concepts CLI keeps a table's image paths meaning the same files (``concepts.annotate``): relative
paths are rewritten for the output's folder, by the rule training reads them with (relative to the
table's folder, ``fileio.tables.ImagePaths``); a path that means another file relative to the working
directory is an error naming both.
"""
import os

import pandas as pd
import pytest

from open_clip_c2lip import concepts as C

CAPTIONS = ["a red dog on the grass", "two cats on a sofa", "a man riding a horse"]


def _images(folder, count=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}.png").write_bytes(f"image {i}".encode())


def _csv(path, column="filepath", paths=None):
    paths = paths or [f"imgs/{i}.png" for i in range(3)]
    path.write_text(f"{column}\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in zip(paths, CAPTIONS)))
    return path


def test_relative_paths_are_rewritten_for_the_output_folder(tmp_path, monkeypatch):
    _images(tmp_path / "data" / "imgs")
    absolute = str(tmp_path / "data" / "imgs" / "2.png")
    src = _csv(tmp_path / "data" / "train.csv", paths=["imgs/0.png", "./imgs/1.png", absolute])
    monkeypatch.chdir(tmp_path)
    assert C.main(["data/train.csv", "--output-dir", "out/deeper", "--quiet"]) == 0
    out = pd.read_csv(tmp_path / "out" / "deeper" / "train.csv", sep="\t", dtype=str)
    assert out["filepath"].tolist() == ["../../data/imgs/0.png", "../../data/imgs/1.png", absolute]
    for cell, original in zip(out["filepath"], ["imgs/0.png", "imgs/1.png", absolute]):
        assert os.path.samefile(os.path.join(tmp_path, "out", "deeper", cell), os.path.join(src.parent, original))
    assert out["title"].tolist() == CAPTIONS


def test_image_key_names_the_column(tmp_path, capsys):
    _images(tmp_path / "imgs")
    _csv(tmp_path / "t.csv", column="image_path")
    assert C.main([str(tmp_path / "t.csv"), "--output-dir", str(tmp_path / "plain"), "--quiet"]) == 0
    note = capsys.readouterr().err
    assert "note: 1 table(s) have no 'filepath' column" in note and "--image-key COLUMN" in note
    assert pd.read_csv(tmp_path / "plain" / "t.csv", sep="\t")["image_path"].tolist() == \
           [f"imgs/{i}.png" for i in range(3)]  # not known as paths: unchanged, and said so above
    assert C.main([str(tmp_path / "t.csv"), "--output-dir", str(tmp_path / "out"), "--quiet",
                   "--image-key", "image_path"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "out" / "t.csv", sep="\t")["image_path"].tolist() == \
           [f"../imgs/{i}.png" for i in range(3)]
    with pytest.raises(SystemExit, match=r"t\.csv: no image path column 'image' \(--image-key\); columns are "
                                         r"\['image_path', 'title'\]"):
        C.main([str(tmp_path / "t.csv"), "--output-dir", str(tmp_path / "o2"), "--quiet", "--image-key", "image"])


def test_rerun_with_another_image_key_redoes_the_output(tmp_path, capsys):
    _images(tmp_path / "imgs")
    (tmp_path / "t.csv").write_text("filepath\tother\ttitle\n" +
                                    "".join(f"imgs/{i}.png\timgs/{i}.png\t{c}\n" for i, c in enumerate(CAPTIONS)))
    args = [str(tmp_path / "t.csv"), "--output-dir", str(tmp_path / "out"), "--quiet"]
    assert C.main(args) == 0
    assert C.main(args) == 0 and "1 skipped as finished" in capsys.readouterr().out
    assert C.main(args + ["--image-key", "other"]) == 0
    assert "re-annotated" in capsys.readouterr().out
    out = pd.read_csv(tmp_path / "out" / "t.csv", sep="\t")
    assert out["other"].tolist() == [f"../imgs/{i}.png" for i in range(3)]
    assert out["filepath"].tolist() == [f"imgs/{i}.png" for i in range(3)]


def test_a_path_meaning_two_files_is_an_error_naming_both(tmp_path, monkeypatch):
    _images(tmp_path / "data" / "imgs")
    _images(tmp_path / "run" / "imgs")  # same names, other files, in the working directory
    _csv(tmp_path / "data" / "train.csv")
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(SystemExit) as info:
        C.main([str(tmp_path / "data" / "train.csv"), "--output-dir", str(tmp_path / "out"), "--quiet"])
    message = str(info.value)
    assert message.startswith(f"error: {tmp_path / 'data' / 'train.csv'}: 3 relative image path(s)")
    assert str(tmp_path / "data" / "imgs" / "0.png") in message and str(tmp_path / "run" / "imgs" / "0.png") in message
    assert not (tmp_path / "out" / "train.csv").exists()


def test_parquet_paths_are_rewritten_keeping_the_column_type(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _images(tmp_path / "data" / "imgs")
    table = pa.table({"filepath": pa.array([f"imgs/{i}.png" for i in range(3)], pa.large_string()),
                      "caption": CAPTIONS, "score": [0.5, 1.5, 2.5]})
    pq.write_table(table, tmp_path / "data" / "t.parquet")
    assert C.main([str(tmp_path / "data" / "t.parquet"), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    out = pq.read_table(tmp_path / "out" / "t.parquet")
    assert out.schema.field("filepath").type == pa.large_string()
    assert out.column("filepath").to_pylist() == [f"../data/imgs/{i}.png" for i in range(3)]
    assert out.column("score").to_pylist() == [0.5, 1.5, 2.5]
