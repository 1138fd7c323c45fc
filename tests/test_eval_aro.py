"""Tests for open_clip_c2lip.eval.aro (VG-Relation, VG-Attribution) against an independent reference."""
import json
import logging

import numpy as np

from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, data_root, stub  # noqa: F401


def reference_aro(ref: Reference, root, name: str, min_samples: int, cmp: Comparisons):
    annotation, key = {
        "aro_vgr": ("visual_genome_relation.json", lambda d: d["relation_name"]),
        "aro_vga": ("visual_genome_attribution.json", lambda d: "_".join(d["attributes"])),
    }[name]
    groups = {}
    for d in json.loads((root / name / annotation).read_text()):
        box = (d["bbox_x"], d["bbox_y"], d["bbox_x"] + d["bbox_w"], d["bbox_y"] + d["bbox_h"])
        v = ref.image(root / name / "images" / d["image_path"], box)
        groups.setdefault(key(d), []).append(cmp.gt(v @ ref.text(d["true_caption"]), v @ ref.text(d["false_caption"])))
    kept = {g: c for g, c in sorted(groups.items()) if len(c) >= min_samples}
    results = {g: {"acc": sum(c) / len(c), "n": len(c)} for g, c in kept.items()}
    flat = [x for c in kept.values() for x in c]
    results["_average"] = {"acc": np.mean([r["acc"] for r in results.values()]), "acc_micro": sum(flat) / len(flat),
                           "n": len(flat)}
    return results


def test_aro_matches_independent_reference(stub, data_root):
    model, preprocess, tokenizer = stub
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["aro_vgr", "aro_vga"], data_root,
                                       batch_size=5, options={"aro_vga": {"min_samples": 2}}, progress=False,
                                       return_scores=True)
    cmp = Comparisons()
    ref = Reference(model, preprocess, tokenizer)
    want = {"aro_vgr": reference_aro(ref, data_root, "aro_vgr", 0, cmp),
            "aro_vga": reference_aro(ref, data_root, "aro_vga", 2, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    # the attribute pair below min_samples is dropped from splits and averages, not silently kept
    assert "red_blue" not in results["aro_vga"] and results["aro_vga"]["_average"]["n"] == 3
    dropped = [r for r in records if r["benchmark"] == "aro_vga" and not r["kept"]]
    assert [r["split"] for r in dropped] == ["red_blue"]


def test_vga_default_filter_drops_small_pairs_and_reports(stub, data_root, caplog):
    model, preprocess, tokenizer = stub
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["aro_vga"], data_root, progress=False)
    # the ARO repository's rule: attribute pairs with < 25 items are dropped (here: all of them)
    assert results["aro_vga"] == {"_average": {"acc": None, "acc_micro": None, "n": 0}}
    assert "dropped 2 split(s) with fewer than 25 items (4 items)" in caplog.text
