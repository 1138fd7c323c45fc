"""open_clip_train.data patches: packed train batches, plain val, the end-of-shard fix, bad input.

Runs open_clip_train's own ``get_data`` (patched) on tiny webdataset shards and CSVs built here,
with args from open_clip_train's ``parse_args`` (C2LIP flags included). The webdataset part also
runs against webdataset 1.0.2 (which yields end-of-shard markers) in a subprocess, installed with
``pip install --no-deps --target`` into a cache dir (``C2LIP_WDS_NEW_DIR`` overrides it).
"""
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

import open_clip_train.data as upstream_data
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import image_transform
from open_clip_train.params import parse_args

from tar_fixtures import jpeg, write_tar

from open_clip_c2lip.integration import data_order, runtime, wds
from open_clip_c2lip.integration.train_data import ConceptCsvDataset, patch_get_data
from open_clip_c2lip.integration.wds import (
    UnusableSampleError, _eof_kwargs, patch_shard_reader, sample_text, tarfile_to_samples_nothrow)
from open_clip_c2lip.layout import unpack_texts
from open_clip_c2lip.packing import concept_spans

REPO = Path(__file__).resolve().parents[1]
CONTEXT_LENGTH = 24
MAX_CONCEPTS = 3
WDS_NEW_VERSION = "1.0.2"

patch_shard_reader(upstream_data)  # normally done by the plugin's import hook; idempotent
patch_get_data(upstream_data)


CAPTIONS = [f"a red dog number {i} next to a blue car near a tree" for i in range(10)] + [
    "two cats sleeping on a sofa", "a man riding a horse on the beach"]


def _concepts_for(index: int):
    return ["a red dog", "a blue car", "a tree", "a red dog"] if index < 10 else None


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory):
    """3 shards x 4 samples: ``concepts`` key, the authors' ``nounphrases`` key, or no json at all."""
    from open_clip_c2lip.fileio.shards import write_shards

    samples = []
    for index, caption in enumerate(CAPTIONS):
        sample = {"jpg": jpeg(index), "txt": caption, "key": f"s{index:03d}"}
        if index < 5:
            sample["json"] = {"concepts": _concepts_for(index), "source": "test"}
        elif index < 10:
            sample["json"] = {"nounphrases": _concepts_for(index)}
        samples.append(sample)  # the last two have no json: concepts extracted on the fly
    directory = tmp_path_factory.mktemp("shards")
    paths = write_shards(samples, str(directory), prefix="train", samples_per_shard=4)
    assert len(paths) == 3
    return str(directory / "train-{000000..000002}.tar")


@pytest.fixture
def c2lip_off():
    runtime.configure(None)
    yield
    runtime.configure(None)


def _args(*argv, c2lip=True):
    flags = list(argv) + ["--batch-size", "4", "--workers", "0", "--model", "C2LIP-Tiny"]
    if c2lip:
        flags += ["--c2lip-loss", "--c2lip-max-concepts", str(MAX_CONCEPTS)]
    args = parse_args(flags)
    # set by open_clip_train.main after distributed init
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


def _transforms():
    return image_transform(16, is_train=True), image_transform(16, is_train=False)


def _tokenizer():
    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def _caption_of(tokenizer, caption_ids):
    decoded = " ".join(tokenizer.decode([i for i in caption_ids.tolist() if i not in (0, 49406, 49407)]).split())
    matches = [c for c in CAPTIONS + ["dummy caption"] if " ".join(tokenizer.pat.findall(c.lower())) == decoded]
    assert len(matches) == 1, decoded
    return matches[0]


def _check_packed_batch(tokenizer, texts, expected_concepts):
    """Each sample's rows equal an independent rebuild from its caption and expected concepts."""
    assert texts.ndim == 3 and texts.shape[1:] == (1 + 2 * MAX_CONCEPTS, CONTEXT_LENGTH)
    caption_ids, concept_ids, span_masks = unpack_texts(texts)
    seen = []
    for sample in range(texts.shape[0]):
        caption = _caption_of(tokenizer, caption_ids[sample])
        concepts = expected_concepts(caption)[:MAX_CONCEPTS]
        assert torch.equal(caption_ids[sample], tokenizer([caption])[0])
        assert torch.equal(concept_ids[sample, :len(concepts)], tokenizer(concepts))
        assert not concept_ids[sample, len(concepts):].any()
        for slot, span in enumerate(concept_spans(tokenizer, caption, concepts)):
            assert span is not None
            assert span_masks[sample, slot].nonzero().flatten().tolist() == list(range(*span))
        seen.append(caption)
    return seen


def _expected_from_data(caption):
    index = CAPTIONS.index(caption)
    if index < 10:
        return _concepts_for(index)
    from open_clip_c2lip.concepts import extract_concepts
    return extract_concepts([caption])[0]


# ------------------------------------------------------------------------------------------------

def test_patch_is_installed_and_idempotent():
    assert upstream_data.tarfile_to_samples_nothrow is tarfile_to_samples_nothrow
    get_data = upstream_data.get_data
    patch_shard_reader(upstream_data)
    patch_get_data(upstream_data)
    assert upstream_data.get_data is get_data and upstream_data.tarfile_to_samples_nothrow is tarfile_to_samples_nothrow
    assert not hasattr(get_data.__wrapped__, "__wrapped__")
    import webdataset
    has_marker = "eof_value" in __import__("inspect").signature(webdataset.tariterators.tar_file_expander).parameters
    assert dict(_eof_kwargs(webdataset.tariterators.tar_file_expander)) == ({"eof_value": None} if has_marker else {})


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
    assert upstream_data.CsvDataset.__name__ == "CsvDataset"  # swapped for the train build only
    assert isinstance(data["train"].dataloader.dataset, ConceptCsvDataset)
    assert type(data["val"].dataloader.dataset) is upstream_data.CsvDataset
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


def test_bad_webdataset_samples_are_skipped_named_and_counted(tmp_path, c2lip_off, caplog):
    good = [(f"g{i}.jpg", jpeg(i)) for i in range(4)]
    members = [
        good[0], ("g0.txt", CAPTIONS[0].encode()), ("g0.json", json.dumps({"concepts": ["a tree"]}).encode()),
        ("listjson.jpg", jpeg(5)), ("listjson.txt", b"a cat"), ("listjson.json", b'["a cat"]'),
        ("badconcepts.jpg", jpeg(6)), ("badconcepts.txt", b"a cat"), ("badconcepts.json", b'{"concepts": "a cat"}'),
        ("emptycaption.jpg", jpeg(7)), ("emptycaption.txt", b"   "),
        ("latin1.jpg", jpeg(8)), ("latin1.txt", "un caf\xe9".encode("latin-1")),
        ("corruptimage.jpg", b"\xff\xd8\xff not a jpeg"), ("corruptimage.txt", b"a cat"),
        ("brokenjson.jpg", jpeg(9)), ("brokenjson.txt", b"a cat"), ("brokenjson.json", b"{oops"),
        good[1], ("g1.txt", CAPTIONS[1].encode()), ("g1.json", json.dumps({"nounphrases": ["a blue car"]}).encode()),
    ]
    bad_shard = write_tar(tmp_path / "bad-000000.tar", members)
    empty_shard = write_tar(tmp_path / "bad-000001.tar", [])
    args = _args("--train-data", str(tmp_path / "bad-{000000..000001}.tar"), "--dataset-type", "webdataset",
                 "--train-num-samples", "2")
    args.batch_size = 2
    tokenizer = _tokenizer()
    with caplog.at_level(logging.WARNING):
        data = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=tokenizer)
        batches = [texts for _, texts in data["train"].dataloader]
    assert len(batches) == 1
    expected = {CAPTIONS[0]: ["a tree"], CAPTIONS[1]: ["a blue car"]}
    assert sorted(_check_packed_batch(tokenizer, batches[0], expected.__getitem__)) == sorted(expected)

    stats = data["train"].c2lip_packer.stats
    assert stats["skipped_bad_samples"] == 3  # json list, concepts not a list, empty caption
    assert stats["skipped_undecodable"] == 3  # latin-1 text, corrupt image, broken json
    assert stats["empty_shards"] == 1
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for key, what in [("listjson", "json is list, expected an object"),
                      ("badconcepts", "json['concepts'] must be a list of strings"),
                      ("emptycaption", "empty caption"), ("latin1", "decode failed"),
                      ("corruptimage", "decode failed"), ("brokenjson", "decode failed")]:
        assert any(f"shard {bad_shard}, key '{key}'" in m and what in m for m in messages), (key, messages)
    assert any(empty_shard in m and "holds no samples" in m for m in messages)


def test_only_empty_shards_fail_loudly(tmp_path, c2lip_off):
    write_tar(tmp_path / "e-000000.tar", [])
    args = _args("--train-data", str(tmp_path / "e-000000.tar"), "--dataset-type", "webdataset",
                 "--train-num-samples", "4")
    data = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=_tokenizer())
    with pytest.raises(RuntimeError, match="gave no usable sample"):
        next(iter(data["train"].dataloader))


def test_sample_text_errors_name_shard_and_key():
    base = {"__url__": "s/000.tar", "__key__": "k7", "text": "a dog"}
    assert sample_text(dict(base), "concepts") == ("a dog", None)
    assert sample_text(dict(base, json={"other": 1}), "concepts") == ("a dog", None)
    assert sample_text(dict(base, json={"mine": ["x"], "nounphrases": ["y"]}), "mine") == ("a dog", ["x"])
    assert sample_text(dict(base, json={"nounphrases": []}), "mine") == ("a dog", [])
    for sample, message in [
        (dict(base, text=""), "empty caption"),
        (dict(base, json=[1]), "json is list"),
        (dict(base, json={"concepts": ["a", 1]}), "must be a list of strings"),
        (dict(base, text=b"a dog"), "caption is bytes"),
    ]:
        with pytest.raises(UnusableSampleError, match=rf"^shard s/000\.tar, key 'k7': .*{message}"):
            sample_text(sample, "concepts")


def test_pipeline_stages_are_located_or_fail_loudly(good_shards, c2lip_off):
    args = _args("--train-data", good_shards, "--dataset-type", "webdataset", "--train-num-samples", "12")
    info = upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=_tokenizer())["train"]
    stages = data_order.wds_train_stages(info)
    names = [type(s).__name__ for s in stages]
    concepts_at = names.index("AttachConcepts")
    assert stages[concepts_at + 1].f.__name__ == "_map_dict"
    with pytest.raises(RuntimeError, match="expected exactly one map_dict stage"):
        wds._stage_index([s for s in stages if getattr(s, "f", None) is not stages[concepts_at + 1].f],
                         lambda s: getattr(s, "f", None) is stages[concepts_at + 1].f, "map_dict")


# ------------------------------------------------------------------------------------------------
# webdataset 1.0.2 (end-of-shard markers), in a subprocess

def _new_webdataset_dir():
    """A folder holding webdataset 1.0.2 (``$C2LIP_WDS_NEW_DIR``; the CI script installs it there).
    No test reaches the network: without it these tests skip, saying how to get it."""
    target = os.environ.get("C2LIP_WDS_NEW_DIR")
    if not target or not (Path(target) / "webdataset" / "__init__.py").is_file():
        pytest.skip(f"webdataset {WDS_NEW_VERSION} (which has the end-of-shard marker) not found in "
                    f"$C2LIP_WDS_NEW_DIR={target or '(unset)'}: run `pip install --no-deps --target DIR "
                    f"webdataset=={WDS_NEW_VERSION}` and set C2LIP_WDS_NEW_DIR=DIR")
    return Path(target)


NEW_WEBDATASET_SCRIPT = textwrap.dedent("""
    import importlib.util, json, os, sys
    import torch
    torch.set_num_threads(1)
    import webdataset
    assert webdataset.__version__ == sys.argv[3], webdataset.__version__
    import open_clip_train.data as upstream  # plugin disabled by env: pristine upstream
    assert not hasattr(upstream.get_data, "__c2lip_wrapped__")
    assert upstream.tarfile_to_samples_nothrow.__module__ == "open_clip_train.data"
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transform import image_transform
    from open_clip_train.params import parse_args

    shards, patched_copy = sys.argv[1], sys.argv[2]
    tokenizer = SimpleTokenizer(context_length=24)
    transforms = image_transform(16, is_train=True), image_transform(16, is_train=False)

    def args(*extra):
        a = parse_args(["--train-data", shards, "--dataset-type", "webdataset", "--train-num-samples", "12",
                        "--batch-size", "4", "--workers", "0", "--model", "C2LIP-Tiny", *extra])
        a.world_size, a.rank, a.distributed = 1, 0, False
        return a

    def count(module, *extra):
        try:
            data = module.get_data(args(*extra), transforms, epoch=0, tokenizer=tokenizer)
            return [list(texts.shape) for _, texts in data["train"].dataloader]
        except KeyError as exc:
            return "KeyError: " + str(exc)

    report = {"upstream": count(upstream)}
    spec = importlib.util.spec_from_file_location("patched_upstream_data", patched_copy)
    patched = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patched)
    report["diff"] = count(patched)

    from open_clip_c2lip import runtime
    from open_clip_c2lip.config import C2LIPConfig
    from open_clip_c2lip.integration.train_data import patch_get_data
    from open_clip_c2lip.integration.wds import patch_shard_reader
    patch_shard_reader(upstream)
    patch_get_data(upstream)
    report["plugin"] = count(upstream)
    runtime.configure(C2LIPConfig(max_concepts=3))
    report["plugin_c2lip"] = count(upstream)
    print(json.dumps(report))
""")


def test_end_of_shard_fix_with_current_webdataset(tmp_path):
    from open_clip_c2lip.fileio.shards import write_shards

    if shutil.which("patch") is None:
        pytest.skip("the `patch` program is needed to apply patches/open_clip_train-wds-eof.diff")
    new_webdataset = _new_webdataset_dir()
    # every sample carries concepts: no spaCy in the subprocess
    samples = [{"jpg": jpeg(i), "txt": caption, "json": {"concepts": ["a red dog"]}} for i, caption in enumerate(CAPTIONS)]
    write_shards(samples, str(tmp_path / "shards"), prefix="n", samples_per_shard=4)
    shards = str(tmp_path / "shards" / "n-{000000..000002}.tar")
    # the shipped diff, applied to a copy of the installed (3.3.0) open_clip_train/data.py
    copy_root = tmp_path / "upstream"
    (copy_root / "src" / "open_clip_train").mkdir(parents=True)
    shutil.copy(upstream_data.__file__, copy_root / "src" / "open_clip_train" / "data.py")
    diff = REPO / "patches" / "open_clip_train-wds-eof.diff"
    subprocess.run(["patch", "-p1", "--quiet", "-i", str(diff)], cwd=copy_root, check=True)

    script = tmp_path / "run_new_webdataset.py"
    script.write_text(NEW_WEBDATASET_SCRIPT)
    env = dict(os.environ, OPEN_CLIP_C2LIP_DISABLE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(new_webdataset), str(REPO)]))
    result = subprocess.run(
        [sys.executable, str(script), shards, str(copy_root / "src" / "open_clip_train" / "data.py"),
         WDS_NEW_VERSION], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # upstream 3.3.0 crashes at the first shard end; the diff and the plugin both read all 3 shards
    assert report["upstream"] == "KeyError: 'fname'"
    assert report["diff"] == [[4, CONTEXT_LENGTH]] * 3
    assert report["plugin"] == [[4, CONTEXT_LENGTH]] * 3
    assert report["plugin_c2lip"] == [[4, 1 + 2 * MAX_CONCEPTS, CONTEXT_LENGTH]] * 3


def test_truncated_shard_detection_with_current_webdataset(tmp_path):
    """The train reader's truncation tests (tests/test_data_passes.py) pass with webdataset 1.0.2 too."""
    new_webdataset = _new_webdataset_dir()
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(new_webdataset), str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = ("import sys, webdataset, pytest; assert webdataset.__version__ == sys.argv[1], webdataset.__version__; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[2], '-k', 'truncated']))")
    result = subprocess.run([sys.executable, "-c", code, WDS_NEW_VERSION, str(REPO / "tests" / "test_data_passes.py")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_on_the_fly_extraction_of_a_huge_caption_trains_and_names_it(tmp_path, c2lip_off, caplog):
    """A caption over spaCy's max_length without concepts: parsed up to MAX_PARSE_CHARS, counted, the
    sample named in a warning (it used to kill the DataLoader worker with spaCy's E088)."""
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
