"""Tests for open_clip_c2lip.eval.cli (``python -m open_clip_c2lip.eval``) with a real tiny model."""
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval_fixtures import TINY_CONFIG, c2eval, data_root  # noqa: F401


def test_cli_with_tiny_model_checkpoint(data_root, tmp_path, capsys):
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model("C2LIP-Tiny")
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               checkpoint)
    output, scores = tmp_path / "out" / "results.json", tmp_path / "scores.jsonl"
    results = c2eval.main(["--model", "C2LIP-Tiny", "--pretrained", str(checkpoint), "--benchmark", "all",
                           "--data-root", str(data_root), "--output", str(output), "--save-scores", str(scores),
                           "--aro-min-samples", "1", "--batch-size", "7", "--no-progress", "--device", "cpu"])
    assert json.loads(output.read_text()) == results
    assert not [p for p in output.parent.iterdir() if p.name != "results.json"]  # no temp files left
    # contract: benchmark -> split -> metric in [0, 1] plus n; _average present
    assert list(results) == ["sugarcrepe", "sugarcrepe_pp", "aro_vgr", "aro_vga", "aro_coco_order", "aro_flickr_order",
                             "winoground", "valse", "imagecode", "vl_checklist", "whatsup", "_skipped"]
    results = {k: v for k, v in results.items() if k != "_skipped"}
    metric_keys = {"sugarcrepe": {"acc"}, "sugarcrepe_pp": {"itt", "tot"}, "aro_vgr": {"acc"}, "aro_vga": {"acc"},
                   "aro_coco_order": {"acc"}, "aro_flickr_order": {"acc"}, "winoground": {"text", "image", "group"},
                   "valse": {"acc", "n_unvalidated"}, "imagecode": {"acc"}, "whatsup": {"acc"}}
    corpora = {kind: {f"acc_{c}" for c in names} for kind, names in c2eval.VL_CHECKLIST_TYPES.items()}
    metric_keys.update({f"vl_checklist/{kind.replace('/', '_')}": {"acc", "n_missing_images", "n_corpora"} | accs
                        for kind, accs in corpora.items()})
    for benchmark, splits in results.items():
        assert "_average" in splits
        for split, metrics in splits.items():
            assert isinstance(metrics["n"], int) and metrics["n"] > 0
            if split != "_average":
                expected = metric_keys.get(benchmark) or metric_keys[f"{benchmark}/{split}"]
                assert set(metrics) == expected | {"n", "ties"}
            assert isinstance(metrics["ties"], int) and 0 <= metrics["ties"] <= metrics["n"]
            assert all(0 <= v <= 1 for k, v in metrics.items() if k not in ("n", "ties") and not k.startswith("n_"))
    assert set(results["sugarcrepe"]["_average"]) == {"micro", "macro", "add", "replace", "swap", "n", "ties"}
    assert set(results["aro_vgr"]["_average"]) == {"acc", "acc_micro", "n", "ties", "acc_all_relations",
                                                   "n_all_relations"}
    assert set(results["vl_checklist"]["_average"]) == {"acc", "Object", "Attribute", "Relation", "n", "ties",
                                                        "n_missing_images"}
    assert list(results["whatsup"]) == list(c2eval.WHATSUP_SUBSETS) + ["_average"]
    assert list(results["imagecode"]) == ["static", "videos", "_average"]
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == sum(r["_average"].get("n_all_relations", r["_average"]["n"]) for r in results.values())
    # the plain per-item check with the real model: SugarCrepe add_att through one encode per item
    loaded, preprocess, tokenizer = c2eval.load_model("C2LIP-Tiny", str(checkpoint))
    assert loaded.visual.preprocess_cfg["resize_mode"] == "squash"
    assert tuple(loaded.visual.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)
    data = json.loads((data_root / "sugarcrepe" / "add_att.json").read_text())
    by_id = {r["id"]: r for r in rows if r["benchmark"] == "sugarcrepe" and r["split"] == "add_att"}
    with torch.no_grad():
        for key, item in data.items():
            image = preprocess(Image.open(data_root / "val2017" / item["filename"]).convert("RGB"))[None]
            v = F.normalize(loaded.encode_image(image), dim=-1)[0]
            t = F.normalize(loaded.encode_text(tokenizer([item["caption"], item["negative_caption"]])), dim=-1)
            assert by_id[key]["pos"] == pytest.approx(float(v @ t[0]), abs=1e-5)
            assert by_id[key]["neg"] == pytest.approx(float(v @ t[1]), abs=1e-5)
    printed = capsys.readouterr().out
    assert "### sugarcrepe" in printed and "| swap_att |" in printed and "### winoground" in printed
    assert "| acc | acc_micro | acc_all_relations | n | ties | n_all_relations |" in printed


def test_cli_on_a_partial_root_reports_each_absence_once(data_root, tmp_path, capsys, caplog):
    import logging
    root = tmp_path / "root"
    (root / "sugarcrepe").mkdir(parents=True)
    (root / "val2017").symlink_to(data_root / "val2017")
    (root / "sugarcrepe" / "swap_att.json").symlink_to(data_root / "sugarcrepe" / "swap_att.json")
    output = tmp_path / "results.json"
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.main(["--model", "C2LIP-Tiny", "--data-root", str(root), "--output", str(output),
                               "--no-progress", "--device", "cpu"])
    assert json.loads(output.read_text()) == results and list(results) == ["sugarcrepe", "_skipped"]
    assert list(results["sugarcrepe"]) == ["swap_att", "_average"]
    assert results["_skipped"]["winoground"] == ["winoground/examples.jsonl"]
    assert caplog.text.count("sugarcrepe: 6 of 7 splits are absent") == 1
    assert caplog.text.count("skipped: sugarcrepe_pp") == 1
    assert "not evaluated (absent from the data root): aro_vga" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# a full disk and a missing Hub: one error line, nothing partial

import errno  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from collections import namedtuple  # noqa: E402

from eval_fixtures import write_winoground  # noqa: E402
from hub_fixtures import hub_cache, refused_hub  # noqa: E402,F401
from open_clip_c2lip import cli_errors  # noqa: E402

Usage = namedtuple("Usage", "total used free")


def _cli(argv):
    try:
        cli_errors.run(c2eval.main, argv)
    except SystemExit as e:
        return e.code
    return None


def _forbid(monkeypatch, target: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{target} must not be called")
    monkeypatch.setattr(target, refuse)


@pytest.fixture
def winoground_root(tmp_path):
    root = tmp_path / "root"
    write_winoground(root)
    return root


def test_full_disk_is_said_before_the_evaluation(winoground_root, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 9, 10 ** 9, 0))
    _forbid(monkeypatch, "open_clip_c2lip.eval.cli.load_model")
    output = tmp_path / "out" / "results.json"
    message = _cli(["--model", "C2LIP-Tiny", "--data-root", str(winoground_root), "--output", str(output),
                    "--device", "cpu", "--no-progress"])
    assert message == (f"error: no space left on the device for {output}: it needs at least 1,048,576 bytes "
                       f"(1.0 MiB), 0 bytes free in {tmp_path}")


@pytest.mark.parametrize("failing", ["results", "scores"])
def test_full_disk_while_writing_leaves_no_partial_file(winoground_root, tmp_path, monkeypatch, failing):
    """The disk fills during a write: one line with the file and its size, no partial file (the
    atomic writer's temporary is removed), nothing written after it."""
    atomic = sys.modules[c2eval.cli.write_text.__module__]
    output, scores = tmp_path / "out" / "results.json", tmp_path / "out" / "scores.jsonl"
    sizes = {}

    def filling_open(path, mode="r", **kwargs):
        handle = open(path, mode, **kwargs)
        target = "results" if ".results.json." in str(path) else "scores"
        if target != failing:
            return handle

        def write(text):
            sizes[target] = len(text.encode("utf-8"))
            handle.buffer.write(text.encode("utf-8")[: sizes[target] // 2])
            handle.buffer.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        handle.write = write
        return handle

    monkeypatch.setattr(atomic, "open", filling_open, raising=False)
    message = _cli(["--model", "C2LIP-Tiny", "--data-root", str(winoground_root), "--output", str(output),
                    "--save-scores", str(scores), "--device", "cpu", "--no-progress"])
    path = output if failing == "results" else scores
    assert message.startswith(f"error: no space left on the device for {path}: it needs about "
                              f"{sizes[failing]:,} bytes") and " free in " in message
    assert sorted(p.name for p in output.parent.iterdir()) == (["results.json"] if failing == "scores" else [])


def test_offline_pretrained_tag_is_one_line(winoground_root, tmp_path, hub_cache, refused_hub, monkeypatch):
    _forbid(monkeypatch, "open_clip.create_model_and_transforms")
    message = _cli(["--model", "ViT-B-16-SigLIP-C2", "--pretrained", "webli", "--data-root", str(winoground_root),
                    "--output", str(tmp_path / "r.json"), "--device", "cpu"])
    assert message.startswith("error: the tokenizer of ViT-B-16-SigLIP-C2 (Hub repo timm/ViT-B-16-SigLIP) and the "
                              "weights of --pretrained webli of ViT-B-16-SigLIP-C2 (open_clip_pytorch_model.bin of "
                              "Hub repo timm/ViT-B-16-SigLIP) are not in the local Hugging Face cache")
    assert "Connection refused" in message and "\n" not in message
    assert len(refused_hub) == 1 and not (tmp_path / "r.json").exists()


def _fail_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


@pytest.mark.parametrize("flags, message", [
    (["--output", "{tmp}"], r"--output .* is a folder"),
    (["--output", "{tmp}/file.txt/r.json"], r"--output .*r.json: .*file.txt is not a folder"),
    (["--output", "{tmp}/r.json", "--save-scores", "{tmp}/r.json"], r"--save-scores and --output are the same file"),
    (["--output", "{tmp}/r.json", "--csv", "{tmp}"], r"--csv .* is a folder"),
    (["--output", "{tmp}/r.json", "--csv", "{tmp}/pub.csv", "--compare", "{tmp}/pub.csv", "--figure", "{tmp}/f.png"],
     r"--csv would overwrite the --compare CSV"),
    (["--output", "{tmp}/r.json", "--compare", "{tmp}/pub.csv", "--figure", "{tmp}/fig"],
     r"--figure .*fig: name the file with a type suffix"),
])
def test_outputs_that_cannot_be_written_fail_before_the_model_loads(data_root, tmp_path, monkeypatch, flags,
                                                                     message):
    """Before, a folder as --output / --csv / --save-scores raised IsADirectoryError (a traceback)
    after the whole evaluation, and --figure without a suffix wrote <name>.png instead of <name>."""
    from open_clip_c2lip.eval import cli
    from test_eval_report import write_published
    monkeypatch.setattr(cli, "load_model", _fail_load)
    (tmp_path / "file.txt").write_text("x")
    write_published(tmp_path / "pub.csv", [("OpenCLIP", 60.0, [40.0] * 12)])
    (tmp_path / "cb" / "imagenet1k-unverified" / "val").mkdir(parents=True)
    argv = ["--model", "C2LIP-Tiny", "--benchmark", "winoground", "--data-root", str(data_root), "--no-progress",
            "--clip-benchmark-root", str(tmp_path / "cb"), "--clip-benchmark-datasets", "imagenet1k-unverified"]
    with pytest.raises(ValueError, match=message):
        cli.main(argv + [f.format(tmp=tmp_path) for f in flags])


def test_a_clip_benchmark_failure_keeps_the_compositionality_results(data_root, tmp_path):
    """clip_benchmark runs after the suite: when it fails, the suite's results are already written."""
    (tmp_path / "cb" / "flickr30k").mkdir(parents=True)
    (tmp_path / "cb" / "flickr30k" / "flickr30k_test_karpathy.txt").write_text("image,caption\nabsent.jpg,a dog\n")
    output = tmp_path / "results.json"
    with pytest.raises(ValueError, match=r"clip_benchmark flickr30k under .* failed: FileNotFoundError: .*absent.jpg"):
        c2eval.main(["--model", "C2LIP-Tiny", "--benchmark", "winoground", "--data-root", str(data_root),
                     "--output", str(output), "--no-progress", "--clip-benchmark-root", str(tmp_path / "cb"),
                     "--clip-benchmark-datasets", "flickr30k"])
    assert list(json.loads(output.read_text())) == ["winoground"]
