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
