"""Tables in training (``open_clip_c2lip.integration.csv_data``): missing and undecodable images are named,
counted skips with full batches; one rule for relative image paths; parquet trains.

Runs open_clip_train's own ``get_data`` (patched by the plugin's hooks) on tables built here, with and
without ``--c2lip-loss``; images are solid colours (lossless PNG), so every batch shows which row's
image arrived with which row's caption.
"""
import inspect
import json
import logging
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

import open_clip_train.data as upstream_data

from open_clip_c2lip.fileio.tables import TableError
from open_clip_c2lip.integration import csv_data
from open_clip_c2lip.integration.csv_data import TableDataset, substitute_row
from train_data_fixtures import CAPTIONS, _args, _caption_of, _tokenizer, c2lip_off  # noqa: F401

ROWS = 12  # three full batches of 4


def colour(row: int):
    return (row * 20 % 256, 255 - row * 20 % 256, 7)


def write_png(path, row: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour(row)).save(path, "PNG")


def as_tensor(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def row_of(image: torch.Tensor) -> int:
    rgb = tuple(int(v) for v in image[:, 0, 0])
    return [colour(r) for r in range(ROWS)].index(rgb)


def write_table(folder, bad=None, concepts=True, name="train.csv"):
    """``folder/name`` with ROWS rows ``imgs/<row>.png``; ``bad`` maps row -> "missing" | "junk" | "cut"."""
    bad = bad or {}
    rows = ["filepath\ttitle" + ("\tconcepts" if concepts else "")]
    for row in range(ROWS):
        path = folder / "imgs" / f"{row}.png"
        write_png(path, row)
        if bad.get(row) == "missing":
            path.unlink()
        elif bad.get(row) == "junk":
            path.write_bytes(b"this is not a png")
        elif bad.get(row) == "cut":
            path.write_bytes(path.read_bytes()[:40])
        rows.append(f"imgs/{row}.png\t{CAPTIONS[row]}" + (f"\t{json.dumps(['a tree'])}" if concepts else ""))
    (folder / name).write_text("\n".join(rows) + "\n")
    return folder / name


def epoch_pairs(info, c2lip: bool):
    """(caption row, image row) of every sample of one epoch; every batch full."""
    tokenizer, pairs = _tokenizer(), []
    for images, texts in info.dataloader:
        assert images.shape[0] == 4 and texts.shape[0] == 4
        for image, text in zip(images, texts):
            pairs.append((CAPTIONS.index(_caption_of(tokenizer, text[0] if c2lip else text)), row_of(image)))
    return pairs


def chain(index: int, bad: dict):
    """The rows tried for ``index``: it, then its substitutes until a usable one (the documented rule)."""
    tried, attempt, row = [index], 0, index
    while row in bad:
        attempt += 1
        row = substitute_row(index, attempt, ROWS)
        tried.append(row)
    return tried


# ------------------------------------------------------------------------------------------------
# Missing and undecodable images

@pytest.mark.parametrize("workers", [0, 2])
def test_missing_and_undecodable_images_are_named_counted_skips(tmp_path, c2lip_off, caplog, workers):
    """A missing image crashed CSV training mid-epoch; now each bad row is skipped, named, counted as
    webdataset counts it, and a substitute row (image and caption together) keeps the batch full."""
    bad = {2: "missing", 5: "junk", 9: "cut"}
    table = write_table(tmp_path, bad)
    args = _args("--train-data", str(table), "--dataset-type", "csv")
    args.workers = workers
    with caplog.at_level(logging.INFO):
        info = upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())["train"]
        pairs = epoch_pairs(info, c2lip=True)
    assert len(pairs) == ROWS
    assert all(caption == image for caption, image in pairs)  # a substitute's image with its own caption
    assert not {image for _, image in pairs} & set(bad)
    tried = [row for index in range(ROWS) for row in chain(index, bad)[:-1]]  # every bad row drawn
    expected_missing = sum(bad[r] == "missing" for r in tried)
    expected_undecodable = sum(bad[r] != "missing" for r in tried)
    totals = info.c2lip_counters.totals()
    assert (totals["skipped_incomplete"], totals["skipped_undecodable"]) == (expected_missing, expected_undecodable)
    assert totals["samples"] == ROWS
    messages = [r.getMessage() for r in caplog.records]
    report = next(r for r in caplog.records if r.getMessage().startswith("C2LIP data counters, epoch 0"))
    assert report.levelno == logging.WARNING and f"skipped={len(tried)}" in report.getMessage()
    if workers == 0:  # worker processes log to their own stderr
        assert any(re.search(rf"train\.csv row 2 \(line 4\): image .*imgs/2\.png does not exist; row \d+ trains", m)
                   for m in messages), messages
        assert any("row 5 (line 7): image cannot be read" in m and "5.png: corrupt or unsupported image" in m
                   for m in messages)
        assert any("row 9 (line 11): image cannot be read" in m for m in messages)


def test_plain_training_skips_the_same_way(tmp_path, c2lip_off, caplog):
    table = write_table(tmp_path, {0: "missing", 7: "junk"}, concepts=False)
    args = _args("--train-data", str(table), "--dataset-type", "csv", c2lip=False)
    with caplog.at_level(logging.WARNING):
        info = upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())["train"]
        pairs = epoch_pairs(info, c2lip=False)
    assert len(pairs) == ROWS and all(caption == image for caption, image in pairs)
    assert sum("does not exist" in r.getMessage() for r in caplog.records) >= 1


def test_substitutes_are_fixed_and_spread(tmp_path):
    assert [substitute_row(i, a, 1000) for i in range(50) for a in (1, 2)] == \
           [substitute_row(i, a, 1000) for i in range(50) for a in (1, 2)]
    firsts = [substitute_row(i, 1, 1000) for i in range(1000)]
    assert all(0 <= r < 1000 for r in firsts)
    assert len(set(firsts)) > 550  # a random map hits ~632 of 1000; "the next row" would make a run repeat one
    table = write_table(tmp_path, {3: "missing"})
    dataset = TableDataset(str(table), as_tensor, "filepath", "title", tokenizer=_tokenizer())
    assert dataset.load_image(3)[0] == dataset.load_image(3)[0] == chain(3, {3: 1})[-1]


def test_a_table_whose_images_are_gone_is_an_error_not_a_hang(tmp_path, monkeypatch):
    table = write_table(tmp_path, {row: "missing" for row in range(ROWS)})
    with pytest.raises(TableError, match=r"train\.csv: none of the images of its first 12 row\(s\) exists, e\.g\. "
                                         r"row 0: .*imgs/0\.png \(relative image paths are read relative to the "
                                         r"table's folder"):
        TableDataset(str(table), as_tensor, "filepath", "title")
    table = write_table(tmp_path, {row: "missing" for row in range(1, ROWS)})
    dataset = TableDataset(str(table), as_tensor, "filepath", "title")
    monkeypatch.setattr(csv_data, "MAX_IMAGE_TRIES", 2)
    index = next(i for i in range(1, ROWS) if substitute_row(i, 1, ROWS) != 0)
    with pytest.raises(RuntimeError, match=rf"2 rows of .*train\.csv in a row \(row {index} and its substitutes\) "
                                           r"have no usable image.*does not exist"):
        dataset[index]


def test_bad_cells_are_errors_naming_the_row(tmp_path):
    write_png(tmp_path / "imgs" / "0.png", 0)
    (tmp_path / "t.csv").write_text("filepath\ttitle\nimgs/0.png\ta dog\n\ta cat\n")
    with pytest.raises(TableError, match=r"t\.csv row 1: column 'filepath' holds '', not an image path"):
        TableDataset(str(tmp_path / "t.csv"), as_tensor, "filepath", "title")
    (tmp_path / "t.csv").write_text("filepath\ttitle\nimgs/0.png\ta dog\nimgs/0.png\t \n")
    with pytest.raises(TableError, match=r"t\.csv row 1 \(line 3\): empty caption in column 'title'"):
        TableDataset(str(tmp_path / "t.csv"), as_tensor, "filepath", "title")


# ------------------------------------------------------------------------------------------------
# Relative paths: the table's folder

def test_relative_paths_are_read_from_the_tables_folder(tmp_path, monkeypatch, c2lip_off):
    table = write_table(tmp_path / "data")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    args = _args("--train-data", os.path.relpath(table), "--dataset-type", "csv")
    info = upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())["train"]
    assert sorted(epoch_pairs(info, c2lip=True)) == [(row, row) for row in range(ROWS)]


def test_a_path_meaning_two_files_stops_training_naming_both(tmp_path, monkeypatch, c2lip_off):
    """The reported case: with imgs/ beside the table and in the working directory, training used the
    working directory's images without a word."""
    table = write_table(tmp_path / "data")
    for row in range(ROWS):
        write_png(tmp_path / "run" / "imgs" / f"{row}.png", (row + 1) % ROWS)  # other pictures
    monkeypatch.chdir(tmp_path / "run")
    args = _args("--train-data", str(table), "--dataset-type", "csv")
    with pytest.raises(TableError) as info:
        upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())
    message = str(info.value)
    assert f"{table}: 12 relative image path(s) of column 'filepath'" in message
    assert f"{tmp_path / 'data' / 'imgs' / '0.png'}" in message and f"{tmp_path / 'run' / 'imgs' / '0.png'}" in message
    # with the working directory's images only, it says so too (not a run of skipped rows)
    for row in range(ROWS):
        (tmp_path / "data" / "imgs" / f"{row}.png").unlink()
    with pytest.raises(TableError, match=r"relative to the table's folder, which does not exist, but .*run/imgs/0\.png "
                                         r"\(relative to the working directory\) does"):
        upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())


# ------------------------------------------------------------------------------------------------
# Parquet

def _parquet_from_pandas(tmp_path, concepts_as_lists: bool):
    import pandas as pd

    for row in range(ROWS):
        write_png(tmp_path / "imgs" / f"{row}.png", row)
    frame = pd.DataFrame({"filepath": [f"imgs/{row}.png" for row in range(ROWS)], "title": CAPTIONS[:ROWS]})
    if concepts_as_lists:
        frame["concepts"] = [["a tree", "a red dog"]] * ROWS
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    return path


@pytest.mark.parametrize("dataset_type", ["auto", "csv"])
@pytest.mark.parametrize("c2lip", [True, False], ids=["c2lip", "plain"])
def test_parquet_written_by_pandas_trains(tmp_path, c2lip_off, dataset_type, c2lip):
    """Training on a parquet table crashed at start-up (AttributeError: 'ChunkedArray' object has no
    attribute 'tolist'); --dataset-type auto refused the extension."""
    table = _parquet_from_pandas(tmp_path, concepts_as_lists=True)
    args = _args("--train-data", str(table), "--dataset-type", dataset_type, c2lip=c2lip)
    info = upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())["train"]
    assert sorted(epoch_pairs(info, c2lip)) == [(row, row) for row in range(ROWS)]
    if c2lip:
        assert info.dataloader.dataset.concepts == [["a tree", "a red dog"]] * ROWS
        assert info.c2lip_packer.stats["extracted_on_the_fly"] == 0


def test_parquet_written_by_the_concepts_cli_trains(tmp_path, monkeypatch, c2lip_off):
    from open_clip_c2lip import concepts as C

    source = _parquet_from_pandas(tmp_path / "data", concepts_as_lists=False)
    monkeypatch.chdir(tmp_path)
    assert C.main([str(source), "--output-dir", str(tmp_path / "annotated"), "--quiet"]) == 0
    output = tmp_path / "annotated" / "train.parquet"
    args = _args("--train-data", str(output), "--dataset-type", "auto")
    info = upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())["train"]
    assert sorted(epoch_pairs(info, c2lip=True)) == [(row, row) for row in range(ROWS)]
    dataset = info.dataloader.dataset
    assert dataset.images == [f"../data/imgs/{row}.png" for row in range(ROWS)]  # rewritten for its folder
    assert dataset.concepts == C.extract_concepts(CAPTIONS[:ROWS])
    assert info.c2lip_packer.stats["extracted_on_the_fly"] == 0


# ------------------------------------------------------------------------------------------------
# The patch against upstream

def test_patch_is_installed_idempotent_and_upstream_still_fits():
    assert upstream_data.CsvDataset is TableDataset
    get_dataset_fn = upstream_data.get_dataset_fn
    csv_data.patch_csv_data(upstream_data)
    assert upstream_data.get_dataset_fn is get_dataset_fn and upstream_data.CsvDataset is TableDataset
    assert get_dataset_fn("x.parquet", "auto") is upstream_data.get_csv_dataset
    assert get_dataset_fn("x.tar", "auto") is upstream_data.get_wds_dataset
    original = get_dataset_fn.__wrapped__
    with pytest.raises(ValueError, match="failed for extension parquet"):
        original("x.parquet", "auto")  # upstream's, still refusing: the patch is still needed
    # upstream builds CsvDataset by its module-level name, with the constructor TableDataset keeps
    names = upstream_data.get_csv_dataset.__code__.co_names
    unwrapped = inspect.unwrap(upstream_data.get_csv_dataset)
    assert "CsvDataset" in names + unwrapped.__code__.co_names
    upstream_class = csv_data.UPSTREAM_CSV_DATASET
    assert tuple(inspect.signature(upstream_class.__init__).parameters)[1:] == csv_data.CSV_DATASET_PARAMETERS
    assert tuple(inspect.signature(TableDataset.__init__).parameters)[1:7] == csv_data.CSV_DATASET_PARAMETERS
    assert "Image.open" in inspect.getsource(upstream_class.__getitem__)  # what the patch replaces


def test_upstream_csv_dataset_is_what_failed(tmp_path, monkeypatch):
    """open_clip_train's own CsvDataset: a missing image raises mid-epoch, parquet is no CSV."""
    table = write_table(tmp_path, {1: "missing"}, concepts=False)
    monkeypatch.chdir(tmp_path)
    dataset = csv_data.UPSTREAM_CSV_DATASET(str(table), as_tensor, "filepath", "title", tokenizer=_tokenizer())
    with pytest.raises(FileNotFoundError):
        dataset[1]
    with pytest.raises(UnicodeDecodeError):
        csv_data.UPSTREAM_CSV_DATASET(str(_parquet_from_pandas(tmp_path / "p", False)), as_tensor, "filepath", "title")


# ------------------------------------------------------------------------------------------------
# patches/open_clip_train-table-images.diff: the same behaviour upstream

@pytest.fixture(scope="module")
def patched_upstream(tmp_path_factory):
    import importlib.util
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("patch") is None:
        pytest.skip("the `patch` program is needed to apply patches/open_clip_train-table-images.diff")
    root = tmp_path_factory.mktemp("upstream")
    (root / "src" / "open_clip_train").mkdir(parents=True)
    shutil.copy(upstream_data.__file__, root / "src" / "open_clip_train" / "data.py")
    diff = Path(__file__).resolve().parents[1] / "patches" / "open_clip_train-table-images.diff"
    result = subprocess.run(["patch", "-p1", "-i", str(diff)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    spec = importlib.util.spec_from_file_location("table_images_open_clip_train_data",
                                                  root / "src" / "open_clip_train" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_upstream_diff_reads_tables_as_the_plugin(patched_upstream, tmp_path, monkeypatch):
    from test_integration_images import write_user_images

    names = sorted(write_user_images(tmp_path / "data" / "imgs"))
    rows = [f"imgs/{name}\t{CAPTIONS[i]}" for i, name in enumerate(names)] + [f"imgs/gone.png\t{CAPTIONS[8]}"]
    table = tmp_path / "data" / "t.tsv"
    table.write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)  # not the table's folder
    theirs = patched_upstream.CsvDataset(str(table), as_tensor, "filepath", "title", tokenizer=_tokenizer())
    ours = TableDataset(str(table), as_tensor, "filepath", "title", tokenizer=_tokenizer())
    for index in range(len(rows)):  # the same pixels and captions; the missing row gets the same substitute
        (their_image, their_text), (our_image, our_text) = theirs[index], ours[index]
        assert torch.equal(their_image, our_image) and torch.equal(their_text, our_text), index
    assert patched_upstream.get_dataset_fn("t.parquet", "auto") is patched_upstream.get_csv_dataset
    parquet = _parquet_from_pandas(tmp_path / "p", concepts_as_lists=False)
    assert len(patched_upstream.CsvDataset(str(parquet), as_tensor, "filepath", "title", tokenizer=_tokenizer())) == ROWS
    write_png(tmp_path / "imgs" / names[0], 5)  # now row 0's path means two files
    with pytest.raises(ValueError, match=rf"t\.tsv row 0: image path 'imgs/{names[0]}' is .*data/imgs/{names[0]} "
                                         r"relative to the table's folder \(another file\) but "
                                         rf"{tmp_path}/imgs/{names[0]} relative to the working directory"):
        patched_upstream.CsvDataset(str(table), as_tensor, "filepath", "title", tokenizer=_tokenizer())


def test_upstream_diff_decodes_shards_as_the_plugin(patched_upstream, tmp_path):
    from open_clip_c2lip.fileio.shards import samples_from_folder, write_shards
    from test_integration_images import write_user_images

    names = sorted(write_user_images(tmp_path / "imgs"))
    for i, name in enumerate(names):
        (tmp_path / "imgs" / name).with_suffix(".txt").write_text(CAPTIONS[i])
    write_shards(samples_from_folder(str(tmp_path / "imgs")), str(tmp_path / "shards"), samples_per_shard=8)
    args = _args("--val-data", str(tmp_path / "shards" / "shard-000000.tar"), "--dataset-type", "webdataset",
                 c2lip=False)
    tokenizer = _tokenizer()

    def pixels(module):
        info = module.get_wds_dataset(args, as_tensor, is_train=False, tokenizer=tokenizer)
        return {_caption_of(tokenizer, t): i for images, texts in info.dataloader for i, t in zip(images, texts)}

    theirs, ours = pixels(patched_upstream), pixels(upstream_data)
    assert sorted(theirs) == sorted(ours) == sorted(CAPTIONS[:8])
    assert all(torch.equal(theirs[c], ours[c]) for c in theirs)
