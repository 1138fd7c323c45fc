"""Tests for open_clip_c2lip.eval.aro (VG-Relation, VG-Attribution) against an independent
re-implementation of the ARO authors' published protocol (their replication notebook)."""
import json
import logging

import numpy as np
import pytest

from eval_fixtures import (Comparisons, Reference, aro_item, assert_results_equal, block_image, c2eval,  # noqa: F401
                           data_root, stub, write_json)
from open_clip_c2lip.eval import aro


def reference_aro(ref: Reference, root, name: str, min_samples: int, cmp: Comparisons, excluded=()):
    """Per-split accuracies as ``VG_*.evaluate_scores`` (splits with < min_samples items dropped), then
    the notebook's mean over the splits not in ``excluded``; the all-splits mean for VG-R too."""
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
    # no true caption equals its false one here and every margin is checked clear: no ties
    results = {g: {"acc": sum(c) / len(c), "n": len(c), "ties": 0} for g, c in kept.items()}
    published = {g: c for g, c in kept.items() if g not in excluded}
    flat = [x for c in published.values() for x in c]
    results["_average"] = {"acc": np.mean([sum(c) / len(c) for c in published.values()]),
                           "acc_micro": sum(flat) / len(flat), "n": len(flat), "ties": 0}
    if name == "aro_vgr":
        results["_average"]["acc_all_relations"] = np.mean([sum(c) / len(c) for c in kept.values()])
        results["_average"]["n_all_relations"] = sum(len(c) for c in kept.values())
    return results


def test_excluded_relation_list_is_the_published_one():
    data = json.loads(aro.VGR_EXCLUDED_RELATIONS_FILE.read_text())
    assert "vision-language-models-are-bows" in data["source"] and "Replicate ARO" in data["source"]
    relations = data["relations"]
    assert len(relations) == len(set(relations)) == 157
    assert aro.vgr_excluded_relations() == frozenset(relations)
    # the tail the notebook appends to its alphabetical list, and a few from the middle
    assert relations[-8:] == ["by", "of", "near", "next to", "with", "beside", "on the side of", "around"]
    assert {"adjusting", "parked next to", "underneath", "wrapped in"} <= set(relations)
    # relations the published number keeps (the ones that decide word order most often)
    assert not {"on", "in", "holding", "wearing", "behind", "in front of", "above", "below", "under"} & set(relations)


def test_aro_matches_independent_reference(stub, data_root):
    model, preprocess, tokenizer = stub
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["aro_vgr", "aro_vga"], data_root,
                                       batch_size=5, options={"aro_vga": {"min_samples": 2}}, progress=False,
                                       return_scores=True)
    cmp = Comparisons()
    ref = Reference(model, preprocess, tokenizer)
    excluded = {"by", "near", "next to", "with", "beside"}  # of the published list, those the fixture uses
    want = {"aro_vgr": reference_aro(ref, data_root, "aro_vgr", 0, cmp, excluded),
            "aro_vga": reference_aro(ref, data_root, "aro_vga", 2, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    vgr = results["aro_vgr"]
    # every relation is listed; the excluded ones count only in the all-relations numbers
    assert {"next to", "near"} <= set(vgr) and vgr["_average"]["n"] == 6 and vgr["_average"]["n_all_relations"] == 9
    assert vgr["_average"]["acc"] != vgr["_average"]["acc_all_relations"]  # the fixture tells the two apart
    assert {r["split"] for r in records if r["benchmark"] == "aro_vgr" and not r["kept"]} == {"next to", "near"}
    # the attribute pair below min_samples is dropped from splits and averages, not silently kept
    assert "red_blue" not in results["aro_vga"] and results["aro_vga"]["_average"]["n"] == 3
    dropped = [r for r in records if r["benchmark"] == "aro_vga" and not r["kept"]]
    assert [r["split"] for r in dropped] == ["red_blue"]


def test_vgr_without_exclusions_is_the_all_relations_macro(stub, data_root):
    model, preprocess, tokenizer = stub
    results = c2eval.evaluate(model, preprocess, tokenizer, ["aro_vgr"], data_root, progress=False,
                              options={"aro_vgr": {"excluded_relations": ()}})["aro_vgr"]["_average"]
    assert results["acc"] == pytest.approx(results["acc_all_relations"], abs=1e-12)
    assert results["n"] == results["n_all_relations"] == 9


def test_vga_default_protocol_keeps_pairs_with_25_items(stub, tmp_path, caplog):
    """The published VG-A protocol on a root whose pairs have 26, 25 (kept: the rule is < 25) and 3 items."""
    model, preprocess, tokenizer = stub
    for k in range(4):
        block_image(tmp_path / "aro_vga" / "images" / f"{k}.jpg", seed=500 + k, size=(120, 90))
    pairs = [("wooden", "metal")] * 26 + [("big", "small")] * 25 + [("red", "blue")] * 3
    nouns = ["table", "chair", "door", "fence", "bench", "box", "spoon", "bowl", "cup"]
    items = []
    for i, (a, b) in enumerate(pairs):
        x, y = nouns[i % 9], nouns[(i // 9 + i + 1) % 9]
        items.append(aro_item(f"{i % 4}.jpg", (3 * (i % 20), 2 * (i % 15), 50 + i % 7, 40 + i % 5),
                              f"the {a} {x} and the {b} {y}", f"the {b} {x} and the {a} {y}", attributes=[a, b]))
    write_json(tmp_path / "aro_vga" / "visual_genome_attribution.json", items)
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["aro_vga"], tmp_path, progress=False)
    cmp = Comparisons()
    want = {"aro_vga": reference_aro(Reference(model, preprocess, tokenizer), tmp_path, "aro_vga", 25, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    assert list(results["aro_vga"]) == ["big_small", "wooden_metal", "_average"]
    assert "dropped 1 split(s) with fewer than 25 items (3 items)" in caplog.text


def test_vga_filter_reports_when_everything_is_dropped(stub, data_root, caplog):
    model, preprocess, tokenizer = stub
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["aro_vga"], data_root, progress=False)
    assert results["aro_vga"] == {"_average": {"acc": None, "acc_micro": None, "n": 0, "ties": 0}}
    assert "dropped 2 split(s) with fewer than 25 items (4 items)" in caplog.text
