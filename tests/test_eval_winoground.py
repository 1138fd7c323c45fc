"""Tests for open_clip_c2lip.eval.winoground against an independent per-item reference."""
import json

from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, data_root, stub  # noqa: F401


def reference_winoground(ref: Reference, root, cmp: Comparisons):
    by_tag, rows = {}, []
    for line in (root / "winoground" / "examples.jsonl").read_text().splitlines():
        d = json.loads(line)
        i0, i1 = (ref.image(root / "winoground" / "images" / f"{d[f'image_{k}']}.png") for k in (0, 1))
        c0, c1 = ref.text(d["caption_0"]), ref.text(d["caption_1"])
        text = cmp.gt(c0 @ i0, c1 @ i0) and cmp.gt(c1 @ i1, c0 @ i1)
        image = cmp.gt(c0 @ i0, c0 @ i1) and cmp.gt(c1 @ i1, c1 @ i0)
        by_tag.setdefault(d["collapsed_tag"], []).append((text, image, text and image))
        rows.append((text, image, text and image))
    results = {}
    for tag, r in sorted(by_tag.items()):
        results[tag] = {m: sum(x[j] for x in r) / len(r) for j, m in enumerate(("text", "image", "group"))}
        results[tag]["n"] = len(r)
        results[tag]["ties"] = 0  # distinct captions and images, margins checked clear: no ties
    results["_average"] = {m: sum(x[j] for x in rows) / len(rows) for j, m in enumerate(("text", "image", "group"))}
    results["_average"]["n"] = len(rows)
    results["_average"]["ties"] = 0
    return results


def test_winoground_matches_independent_reference(stub, data_root):
    model, preprocess, tokenizer = stub
    results = c2eval.evaluate(model, preprocess, tokenizer, ["winoground"], data_root, batch_size=3, progress=False)
    cmp = Comparisons()
    want = {"winoground": reference_winoground(Reference(model, preprocess, tokenizer), data_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)


def test_winoground_metric_on_known_cases():
    # scores s(c, i): item 0 all right; item 1 text right only; item 2 image right only
    text, image, group = c2eval.winoground_correct(
        c0_i0=[0.9, 0.9, 0.5], c0_i1=[0.1, 0.95, 0.1], c1_i0=[0.2, 0.1, 0.6], c1_i1=[0.8, 0.96, 0.8])
    assert text.tolist() == [True, True, False]
    assert image.tolist() == [True, False, True]
    assert group.tolist() == [True, False, False]
