"""Tests for open_clip_c2lip.eval.sugarcrepe against an independent per-item reference."""
import json

import pytest

from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, data_root, stub  # noqa: F401


def reference_sugarcrepe(ref: Reference, root, cmp: Comparisons):
    results, pooled = {}, {}
    for split in c2eval.SUGARCREPE_SPLITS:
        data = json.loads((root / "sugarcrepe" / f"{split}.json").read_text())
        correct, ties = [], 0
        for item in data.values():
            v = ref.image(root / "val2017" / item["filename"])
            same = item["caption"] == item["negative_caption"]
            correct.append(cmp.gt(v @ ref.text(item["caption"]), v @ ref.text(item["negative_caption"]), same))
            ties += same  # other comparisons have clear margins (cmp.assert_clear), so only identical texts tie
        results[split] = {"acc": sum(correct) / len(correct), "n": len(correct), "ties": ties}
        pooled[split] = correct
    everything = [c for cs in pooled.values() for c in cs]
    average = {"micro": sum(everything) / len(everything),
               "macro": sum(r["acc"] for r in results.values()) / len(results), "n": len(everything),
               "ties": sum(r["ties"] for r in results.values())}
    for category in ("add", "replace", "swap"):
        members = [c for s, cs in pooled.items() if s.startswith(category + "_") for c in cs]
        average[category] = sum(members) / len(members)
    results["_average"] = average
    return results


def test_sugarcrepe_matches_independent_reference(stub, data_root):
    model, preprocess, tokenizer = stub
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], data_root, batch_size=5,
                                       progress=False, return_scores=True)
    cmp = Comparisons()
    want = {"sugarcrepe": reference_sugarcrepe(Reference(model, preprocess, tokenizer), data_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    assert len(records) == results["sugarcrepe"]["_average"]["n"]
    # both outcomes occur, so agreement is informative
    assert 0 < results["sugarcrepe"]["_average"]["micro"] < 1


def test_sugarcrepe_split_selection(stub, data_root):
    model, preprocess, tokenizer = stub
    options = {"sugarcrepe": {"splits": ["swap_att", "add_obj"]}}
    results = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], data_root, options=options,
                              progress=False)["sugarcrepe"]
    assert list(results) == ["swap_att", "add_obj", "_average"]
    assert set(results["_average"]) == {"micro", "macro", "add", "swap", "n", "ties"}  # no replace split, no replace key
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['swap_rel'\]"):
        c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], data_root,
                        options={"sugarcrepe": {"splits": ["swap_rel"]}}, progress=False)
