"""The webdataset surface (``open_clip_c2lip.integration.wds``): the shard reader patch, bad samples, the
train pipeline's stages, and the end-of-shard fix against webdataset 1.0.2 (in a subprocess; the folder
holding it comes from ``$C2LIP_WDS_NEW_DIR``, which the CI script fills).
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

from tar_fixtures import jpeg, write_tar

from open_clip_c2lip.integration import data_order, wds
from open_clip_c2lip.integration.train_data import patch_get_data
from open_clip_c2lip.integration.wds import (
    UnusableSampleError, _eof_kwargs, patch_shard_reader, sample_text, tarfile_to_samples_nothrow)
from train_data_fixtures import (  # noqa: F401
    CAPTIONS,
    CONTEXT_LENGTH,
    MAX_CONCEPTS,
    _args,
    _check_packed_batch,
    _tokenizer,
    _transforms,
    c2lip_off,
    good_shards)

REPO = Path(__file__).resolve().parents[1]
WDS_NEW_VERSION = "1.0.2"


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


def run_tests_with_new_webdataset(test_file: Path, keyword: str, cwd: Path) -> None:
    """Run ``pytest test_file -k keyword`` in a subprocess that imports webdataset 1.0.2 (skips without
    it, ``_new_webdataset_dir``) and assert that its tests ran and passed."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(_new_webdataset_dir()), str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = ("import sys, webdataset, pytest; assert webdataset.__version__ == sys.argv[1], webdataset.__version__; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[2], '-k', sys.argv[3]]))")
    result = subprocess.run([sys.executable, "-c", code, WDS_NEW_VERSION, str(test_file), keyword],
                            capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


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

    from open_clip_c2lip.integration import runtime
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
    """The train reader's truncation tests (tests/test_integration_wds_passes.py) pass with webdataset 1.0.2 too."""
    run_tests_with_new_webdataset(REPO / "tests" / "test_integration_wds_passes.py", "truncated", tmp_path)
