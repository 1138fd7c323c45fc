"""Tests for open_clip_c2lip.eval.mmvp_vlm: Winoground scores per category (vl_compo) and the official
pair accuracy of tsb0601/MMVP scripts/evaluate_vlm.py, against an independent per-pair scorer."""
import csv
import logging

import numpy as np
import pytest

from compo_fixtures import write_mmvp
from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, stub  # noqa: F401
from open_clip_c2lip.eval.mmvp_vlm import CATEGORIES


@pytest.fixture(scope="module")
def mmvp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmvp")
    write_mmvp(root)
    return root


def reference_mmvp(ref: Reference, root, cmp: Comparisons, prompt="a photo of ", folder_name="MLLM_VLM Images"):
    """Walks Questions.csv as the official script: consecutive rows pair up, images from the first
    row's type folder, ground truth image 1 iff the qid is odd, category = CATEGORIES[pair // 15]."""
    folder = root / "mmvp_vlm"
    with open(folder / "Questions.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    per_category = {}
    for p in range(len(rows) // 2):
        (q1, kind, s1), (q2, _, s2) = rows[2 * p], rows[2 * p + 1]
        q1, q2 = int(q1), int(q2)
        img1 = ref.image(folder / folder_name / kind / f"{q1}.jpg")
        img2 = ref.image(folder / folder_name / kind / f"{q2}.jpg")
        same = bool(np.array_equal(img1, img2))
        t1, t2 = ref.text(prompt + s1), ref.text(prompt + s2)
        # official: pred = img1 iff softmax prob of img1 > 0.5, i.e. iff cos(t, img1) > cos(t, img2)
        pred1 = "img1" if cmp.gt(t1 @ img1, t1 @ img2, same) else "img2"
        pred2 = "img1" if cmp.gt(t2 @ img1, t2 @ img2, same) else "img2"
        gt1, gt2 = ("img1" if q1 % 2 == 1 else "img2"), ("img1" if q2 % 2 == 1 else "img2")
        pair = pred1 == gt1 and pred2 == gt2
        # Winoground: caption k = statement k, image k = the image statement k should pick
        i0, i1 = (img1, img2) if gt1 == "img1" else (img2, img1)
        text = cmp.gt(t1 @ i0, t2 @ i0) and cmp.gt(t2 @ i1, t1 @ i1)
        image = cmp.gt(t1 @ i0, t1 @ i1, same) and cmp.gt(t2 @ i1, t2 @ i0, same)
        per_category.setdefault(CATEGORIES[p // 15], []).append((text, image, text and image, pair, same))
    results = {}
    for category in CATEGORIES:
        if category in per_category:
            r = per_category[category]
            results[category] = {m: sum(x[j] for x in r) / len(r) for j, m in enumerate(("text", "image", "group",
                                                                                          "pair"))}
            results[category].update(n=len(r), ties=sum(x[4] for x in r))
    results["_average"] = {m: sum(v[m] for v in results.values()) / len(results)
                           for m in ("text", "image", "group", "pair")}
    results["_average"].update(n=len(rows) // 2, ties=sum(v["ties"] for k, v in results.items() if k != "_average"))
    return results


def test_mmvp_matches_the_official_script_and_winoground_scores(stub, mmvp_root, caplog):
    model, preprocess, tokenizer = stub
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["mmvp_vlm"], mmvp_root, batch_size=16,
                                  progress=False)
    # a short Questions.csv (here 33 pairs) is said so: its averages are over fewer categories
    assert "holds 33 pairs where MMVP-VLM has 135 (9 categories x 15)" in caplog.text
    assert f"{CATEGORIES[2]} (3), {CATEGORIES[3]} (0)" in caplog.text
    cmp = Comparisons()
    want = {"mmvp_vlm": reference_mmvp(Reference(model, preprocess, tokenizer), mmvp_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    got = results["mmvp_vlm"]
    assert list(got) == list(CATEGORIES[:3]) + ["_average"]  # 15 + 15 + 3 pairs: categories by position
    assert [got[c]["n"] for c in CATEGORIES[:3]] == [15, 15, 3] and got[CATEGORIES[2]]["ties"] == 1


def test_mmvp_prompt_option_and_readme_folder_name(stub, tmp_path):
    model, preprocess, tokenizer = stub
    write_mmvp(tmp_path, pairs=15, folder_name="MMVP_VLM_Images", tie_pair=-1)
    results = c2eval.evaluate(model, preprocess, tokenizer, ["mmvp_vlm"], tmp_path, progress=False,
                              options={"mmvp_vlm": {"prompt": ""}})
    cmp = Comparisons()
    want = {"mmvp_vlm": reference_mmvp(Reference(model, preprocess, tokenizer), tmp_path, cmp, prompt="",
                                       folder_name="MMVP_VLM_Images")}
    cmp.assert_clear()
    assert_results_equal(results, want)


def test_official_pair_rule_credits_a_tie_to_image_2():
    """A statement whose two images tie picks image 2 (softmax prob 0.5 is not > 0.5): right when its
    answer is image 2, wrong when it is image 1. The Winoground image score (strict) is wrong on both."""
    from open_clip_c2lip.eval.groupscore import group_outcomes
    from open_clip_c2lip.eval.mmvp_vlm import official_pair_correct
    # rows: statement 2 (answer image 2) ties; statement 1 (answer image 1) ties; no tie; qid1 even, s1 ties
    s1_1, s1_2 = np.array([0.9, 0.5, 0.9, 0.4]), np.array([0.1, 0.5, 0.1, 0.4])
    s2_1, s2_2 = np.array([0.5, 0.1, 0.1, 0.8]), np.array([0.5, 0.9, 0.9, 0.2])
    qid1_odd = np.array([True, True, True, False])
    assert official_pair_correct(s1_1, s1_2, s2_1, s2_2, qid1_odd).tolist() == [True, False, True, True]
    # the same pairs in Winoground order (caption k = statement k, image k = its answer)
    i0_is_1 = qid1_odd
    s = {"c0_i0": np.where(i0_is_1, s1_1, s1_2), "c0_i1": np.where(i0_is_1, s1_2, s1_1),
         "c1_i0": np.where(i0_is_1, s2_1, s2_2), "c1_i1": np.where(i0_is_1, s2_2, s2_1)}
    outcomes = group_outcomes(s)
    assert outcomes["image"].tolist() == [False, False, True, False]
    assert outcomes["ties"].tolist() == [True, True, False, True]


@pytest.mark.parametrize("mutate, error", [
    (lambda rows: rows[:-1], "an odd number"),
    (lambda rows: [rows[0], [rows[1][0], rows[1][1]]] + rows[2:], "expected 3 columns"),
    (lambda rows: [rows[0], ["4", rows[1][1], rows[1][2]]] + rows[2:], "must be one odd .* and one even"),
    (lambda rows: [rows[0]] + rows[1:] * 5, "beyond the 9 categories"),
    (lambda rows: [rows[0], rows[1][:2] + [" "]] + rows[2:], r"Questions.csv:2: qid \d+: the statement is empty"),
])
def test_malformed_questions_are_named_errors(stub, tmp_path, mutate, error):
    model, preprocess, tokenizer = stub
    write_mmvp(tmp_path, pairs=30, tie_pair=-1)
    path = tmp_path / "mmvp_vlm" / "Questions.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(mutate(rows))
    with pytest.raises(ValueError, match=error):
        c2eval.evaluate(model, preprocess, tokenizer, ["mmvp_vlm"], tmp_path, progress=False)


def test_missing_image_folder_and_image(stub, tmp_path):
    import shutil
    model, preprocess, tokenizer = stub
    write_mmvp(tmp_path, pairs=2, tie_pair=-1)
    (tmp_path / "mmvp_vlm" / "MLLM_VLM Images" / "Orientation" / "3.jpg").unlink()
    # named by its type folder: every type folder holds the same qid names
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) .* missing from .*MLLM_VLM Images: Orientation/3.jpg$"):
        c2eval.evaluate(model, preprocess, tokenizer, ["mmvp_vlm"], tmp_path, progress=False)
    shutil.rmtree(tmp_path / "mmvp_vlm" / "MLLM_VLM Images")
    with pytest.raises(FileNotFoundError, match=r"MLLM_VLM Images \(or .*MMVP_VLM_Images\)"):
        c2eval.evaluate(model, preprocess, tokenizer, ["mmvp_vlm"], tmp_path, progress=False)
