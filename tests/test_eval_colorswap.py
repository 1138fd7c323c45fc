"""Tests for open_clip_c2lip.eval.colorswap against an independent per-item Winoground scorer."""
import json

import pytest

from compo_fixtures import write_colorswap
from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, stub  # noqa: F401


@pytest.fixture(scope="module")
def colorswap_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("colorswap")
    write_colorswap(root)
    return root


def reference_colorswap(ref: Reference, root, cmp: Comparisons):
    """Winoground text / image / group per example; a tie (equal scores) is wrong."""
    folder = root / "colorswap"
    text = image = group = ties = 0
    items = json.loads((folder / "test.json").read_text())
    for d in items:
        i0, i1 = ref.image(folder / d["image_1"]), ref.image(folder / d["image_2"])
        c0, c1 = ref.text(d["caption_1"]), ref.text(d["caption_2"])
        same_caption, same_image = d["caption_1"] == d["caption_2"], d["image_1"] == d["image_2"]
        t = cmp.gt(c0 @ i0, c1 @ i0, same_caption) and cmp.gt(c1 @ i1, c0 @ i1, same_caption)
        m = cmp.gt(c0 @ i0, c0 @ i1, same_image) and cmp.gt(c1 @ i1, c1 @ i0, same_image)
        text, image, group, ties = text + t, image + m, group + (t and m), ties + (same_caption or same_image)
    n = len(items)
    values = {"text": text / n, "image": image / n, "group": group / n, "n": n, "ties": ties}
    return {"test": values, "_average": dict(values)}


def test_colorswap_matches_independent_reference(stub, colorswap_root):
    model, preprocess, tokenizer = stub
    results = c2eval.evaluate(model, preprocess, tokenizer, ["colorswap"], colorswap_root, batch_size=4,
                              progress=False)
    cmp = Comparisons()
    want = {"colorswap": reference_colorswap(Reference(model, preprocess, tokenizer), colorswap_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    assert results["colorswap"]["test"]["ties"] == 2  # the equal-caption and the equal-image example
    assert results["colorswap"]["test"]["n"] == 6  # test.json only; train.json is not the benchmark


def test_colorswap_missing_image_is_an_error_naming_it(stub, colorswap_root, tmp_path):
    import shutil
    model, preprocess, tokenizer = stub
    root = tmp_path / "root"
    shutil.copytree(colorswap_root, root)
    (root / "colorswap" / "images" / "img_3_2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) referenced by .*test.json are missing .*img_3_2.png"):
        c2eval.evaluate(model, preprocess, tokenizer, ["colorswap"], root, progress=False)
    (root / "colorswap" / "test.json").write_text(json.dumps([{"id": 0, "caption_1": "a"}]))
    with pytest.raises(ValueError, match=r"test.json: item 0 lacks field 'image_1'"):
        c2eval.evaluate(model, preprocess, tokenizer, ["colorswap"], root, progress=False)
