"""The ``get_data`` hookup (``open_clip_c2lip.integration.train_data``): packed train batches, plain val,
CSV with concepts, synthetic data, on-the-fly extraction.

Runs open_clip_train's own ``get_data`` (patched) on tiny webdataset shards and CSVs built here, with
args from open_clip_train's ``parse_args`` (C2LIP flags included).
"""
import json
import logging

import pytest
import torch

torch.set_num_threads(1)

import open_clip_train.data as upstream_data

from tar_fixtures import jpeg, write_tar

from open_clip_c2lip.integration import runtime
from open_clip_c2lip.integration.csv_data import TableDataset
from open_clip_c2lip.integration.train_data import ConceptCsvDataset
from train_data_fixtures import (  # noqa: F401
    CAPTIONS,
    CONTEXT_LENGTH,
    MAX_CONCEPTS,
    _args,
    _check_packed_batch,
    _concepts_for,
    _expected_from_data,
    _tokenizer,
    _transforms,
    c2lip_off,
    good_shards)


def test_inactive_get_data_is_upstream(good_shards, c2lip_off):
    args = _args("--train-data", good_shards, "--val-data", good_shards, "--dataset-type", "webdataset",
                 "--train-num-samples", "12", c2lip=False)
    assert not runtime.active()
    tokenizer = _tokenizer()
    ours = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=tokenizer)
    theirs = upstream_data.get_data.__wrapped__(args, _transforms(), epoch=0, tokenizer=tokenizer)
    assert list(ours) == list(theirs) == ["train", "val"]
    ours_val = [texts for _, texts in ours["val"].dataloader]
    theirs_val = [texts for _, texts in theirs["val"].dataloader]
    assert all(torch.equal(a, b) for a, b in zip(ours_val, theirs_val)) and len(ours_val) == 3
    ours_train = torch.cat([texts for _, texts in ours["train"].dataloader])
    theirs_train = torch.cat([texts for _, texts in theirs["train"].dataloader])
    assert ours_train.shape == theirs_train.shape == (12, CONTEXT_LENGTH)
    assert sorted(map(tuple, ours_train.tolist())) == sorted(map(tuple, theirs_train.tolist()))
    assert not hasattr(ours["train"], "c2lip_packer")


def test_webdataset_train_is_packed_and_val_is_plain(good_shards, c2lip_off, caplog):
    args = _args("--train-data", good_shards, "--val-data", good_shards, "--dataset-type", "webdataset",
                 "--train-num-samples", "12")
    assert runtime.active() and runtime.config().max_concepts == MAX_CONCEPTS
    tokenizer = _tokenizer()
    with caplog.at_level(logging.INFO):
        data = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=tokenizer)
        seen = []
        for images, texts in data["train"].dataloader:
            assert images.shape == (4, 3, 16, 16)
            seen += _check_packed_batch(tokenizer, texts, _expected_from_data)
    # three shards, one pass: every sample arrives (no KeyError / loss at shard ends)
    assert sorted(seen) == sorted(CAPTIONS)
    stats = data["train"].c2lip_packer.stats
    assert stats["samples"] == 12 and stats["shards_read"] == 3
    assert stats["extracted_on_the_fly"] == 2  # the two samples without json
    # "a red dog" given twice: one slot (3 distinct concepts fill the 3 slots), for ten samples
    assert stats["duplicate_concepts"] == 10 and stats["concepts_over_max"] == 0
    assert any("end of this worker's pass" in r.getMessage() for r in caplog.records)

    val = [(images, texts) for images, texts in data["val"].dataloader]
    val_texts = torch.cat([texts for _, texts in val])
    assert val_texts.shape == (12, CONTEXT_LENGTH)
    assert sorted(map(tuple, val_texts.tolist())) == sorted(map(tuple, tokenizer(CAPTIONS).tolist()))


def test_webdataset_packed_with_dataloader_workers(tmp_path, c2lip_off):
    from open_clip_c2lip.fileio.shards import write_shards

    samples = [{"jpg": jpeg(i), "txt": CAPTIONS[i], "json": {"concepts": _concepts_for(i)}} for i in range(8)]
    write_shards(samples, str(tmp_path), prefix="w", samples_per_shard=2)
    args = _args("--train-data", str(tmp_path / "w-{000000..000003}.tar"), "--dataset-type", "webdataset",
                 "--train-num-samples", "8")
    args.workers = 2
    tokenizer = _tokenizer()
    data = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=tokenizer)
    seen = []
    for _, texts in data["train"].dataloader:
        seen += _check_packed_batch(tokenizer, texts, _expected_from_data)
    assert sorted(seen) == sorted(CAPTIONS[:8])


def test_csv_train_reads_the_concepts_column(tmp_path, c2lip_off):
    image_paths = []
    for index in range(6):
        path = tmp_path / f"img{index}.jpg"
        path.write_bytes(jpeg(index))
        image_paths.append(str(path))
    rows = ["filepath\ttitle\tconcepts"]
    for index in range(6):
        concepts = json.dumps(_concepts_for(index)) if index < 5 else ""  # last row: extracted
        rows.append(f"{image_paths[index]}\t{CAPTIONS[index if index < 5 else 10]}\t{concepts}")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    args = _args("--train-data", str(csv_path), "--val-data", str(csv_path), "--dataset-type", "csv")
    tokenizer = _tokenizer()
    data = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=tokenizer)
    assert upstream_data.CsvDataset is TableDataset  # the plugin's CsvDataset; concepts for the train build only
    assert isinstance(data["train"].dataloader.dataset, ConceptCsvDataset)
    assert type(data["val"].dataloader.dataset) is TableDataset
    seen = []
    for _, texts in data["train"].dataloader:
        seen += _check_packed_batch(tokenizer, texts, _expected_from_data)
    assert len(seen) == 4  # drop_last with batch 4, shuffled: any 4 of the 6 rows
    assert data["train"].c2lip_packer.stats["extracted_on_the_fly"] == int(CAPTIONS[10] in seen)
    for _, texts in data["val"].dataloader:
        assert texts.shape[1:] == (CONTEXT_LENGTH,)


def test_csv_nounphrases_column_and_bad_rows(tmp_path):
    image = tmp_path / "img.jpg"
    image.write_bytes(jpeg(0))

    def dataset(header, *cells):
        path = tmp_path / "t.csv"
        path.write_text("\n".join([header] + [f"{image}\t{c}" for c in cells]) + "\n")
        return ConceptCsvDataset(str(path), lambda im: im, "filepath", "title", tokenizer=None), str(path)

    ds, _ = dataset("filepath\ttitle\tnounphrases", 'a dog\t["a dog"]')
    assert ds.concepts == [["a dog"]]
    with pytest.raises(ValueError, match=r"t\.csv row 1 \(line 3\): concepts cell is not JSON"):
        dataset("filepath\ttitle\tconcepts", 'a dog\t["a dog"]', "a cat\t[not json")
    with pytest.raises(ValueError, match=r"t\.csv row 0 \(line 2\): concepts must be a JSON list of strings"):
        dataset("filepath\ttitle\tconcepts", 'a dog\t["a dog", 3]')
    with pytest.raises(ValueError, match=r"t\.csv row 1 \(line 3\): empty caption in column 'title'"):
        dataset("filepath\ttitle\tconcepts", 'a dog\t["a dog"]', '\t["x"]')
    with pytest.raises(ValueError, match=r"no column\(s\) \['title'\]"):
        dataset("filepath\tcaption", "a dog")


def test_synthetic_train_extracts_concepts_on_the_fly(c2lip_off, caplog):
    args = _args("--dataset-type", "synthetic", "--train-num-samples", "8")
    tokenizer = _tokenizer()
    with caplog.at_level(logging.WARNING):
        data = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=tokenizer)
        batches = [texts for _, texts in data["train"].dataloader]
    assert len(batches) == 2
    from open_clip_c2lip.concepts import extract_concepts
    for texts in batches:
        _check_packed_batch(tokenizer, texts, lambda caption: extract_concepts([caption])[0])
    assert data["train"].c2lip_packer.stats["extracted_on_the_fly"] == 8
    assert sum("on the fly" in r.getMessage() for r in caplog.records) == 1


def test_on_the_fly_extraction_of_a_huge_caption_trains_and_names_it(tmp_path, c2lip_off, caplog):
    """A caption over spaCy's max_length without concepts: parsed up to MAX_PARSE_CHARS, counted, the
    sample named in a warning (not spaCy's E088 killing the DataLoader worker)."""
    from open_clip_c2lip.concepts import MAX_PARSE_CHARS

    long = "a brown dog runs on the green grass " * 30_000
    members = [("big.jpg", jpeg(1)), ("big.txt", long.encode())]
    for index in range(3):
        members += [(f"g{index}.jpg", jpeg(index)), (f"g{index}.txt", CAPTIONS[index].encode()),
                    (f"g{index}.json", json.dumps({"concepts": ["a tree"]}).encode())]
    shard = write_tar(tmp_path / "long-000000.tar", members)
    args = _args("--train-data", shard, "--dataset-type", "webdataset", "--train-num-samples", "4")
    tokenizer = _tokenizer()
    with caplog.at_level(logging.WARNING):
        data = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=tokenizer)
        batches = [texts for _, texts in data["train"].dataloader]
    assert len(batches) == 1 and batches[0].shape[0] == 4
    stats = data["train"].c2lip_packer.stats
    assert stats["captions_cut_for_parsing"] == 1 and stats["extracted_on_the_fly"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"shard {shard}, key 'big'" in m and str(MAX_PARSE_CHARS) in m for m in messages), messages


def test_csv_reader_reads_na_like_captions_as_text(tmp_path):
    """One reading rule with the concepts CLI: "N/A", "null" ... are captions; only empty cells are empty."""
    image = tmp_path / "img.jpg"
    image.write_bytes(jpeg(0))
    captions = ["N/A", "NA", "None", "null", "nan", "#N/A", "1e3"]
    path = tmp_path / "t.csv"
    path.write_text("filepath\ttitle\n" + "".join(f"{image}\t{c}\n" for c in captions))
    ds = ConceptCsvDataset(str(path), lambda im: im, "filepath", "title", tokenizer=None)
    assert ds.captions == captions and ds.concepts == [None] * len(captions)
    comma = tmp_path / "c.csv"
    comma.write_text(f"filepath,title\n{image},a dog\n")
    with pytest.raises(ValueError, match=r"c\.csv: no column\(s\).*separated by ',', not '\\t'.*--csv-separator ','"):
        ConceptCsvDataset(str(comma), lambda im: im, "filepath", "title", tokenizer=None)
