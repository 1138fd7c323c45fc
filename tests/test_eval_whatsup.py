"""Tests for open_clip_c2lip.eval.whatsup against an independent reference of the What'sUp protocol
(np.argmax over the options, the right one first, so a tie counts as right), on files written here
in the release's schemas."""
import json

import numpy as np
import pytest

from eval_fixtures import (Comparisons, Reference, Scripted, assert_results_equal, c2eval, id_image,  # noqa: F401
                           scored, stub, write_json, written_root)

SUBSETS = {"WhatsUp_A": "controlled_images_dataset.json", "WhatsUp_B": "controlled_clevr_dataset.json",
           "COCO_QA_ONE": "coco_qa_one_obj.json", "COCO_QA_TWO": "coco_qa_two_obj.json",
           "VG_QA_ONE": "vg_qa_one_obj.json", "VG_QA_TWO": "vg_qa_two_obj.json"}


def _image_and_options(folder, subset, item):
    if subset.startswith("WhatsUp"):
        return folder / item["image_path"].split("/", 1)[1], item["caption_options"]
    if subset.startswith("COCO"):
        return folder / "val2017" / ("%012d.jpg" % int(item[0])), item[1:]
    return folder / "vg_images" / f"{item[0]}.jpg", item[1:]


def reference_whatsup(ref: Reference, root, cmp: Comparisons):
    folder = root / "whatsup"
    results = {}
    for subset, annotation in SUBSETS.items():
        outcomes, ties = [], 0
        for item in json.loads((folder / annotation).read_text()):
            path, options = _image_and_options(folder, subset, item)
            v = ref.image(path)
            scores = [float(v @ ref.text(o)) for o in options]
            outcomes.append(cmp.first_best(scores) == 0)
            ties += scores[0] == max(scores[1:])
        results[subset] = {"acc": sum(outcomes) / len(outcomes), "n": len(outcomes), "ties": ties}
    results["_average"] = {"acc": np.mean([r["acc"] for r in results.values()]),
                           "n": sum(r["n"] for r in results.values()), "ties": sum(r["ties"] for r in results.values())}
    return results


def test_whatsup_matches_independent_reference(stub, written_root):
    model, preprocess, tokenizer = stub
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["whatsup"], written_root, batch_size=4,
                                       progress=False, return_scores=True)
    cmp = Comparisons()
    want = {"whatsup": reference_whatsup(Reference(model, preprocess, tokenizer), written_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    # VG_QA_TWO item 1 has its right text as the wrong one too: a tie, counted right
    tied = [r for r in records if r["split"] == "VG_QA_TWO" and r["id"] == 1]
    assert tied[0]["scores"][0] == tied[0]["scores"][1] and tied[0]["correct"]
    assert results["whatsup"]["VG_QA_TWO"]["ties"] == 1 and results["whatsup"]["_average"]["n"] == 18
    assert 0 < results["whatsup"]["_average"]["acc"] < 1


def test_ties_count_as_right_and_summary_is_the_subset_mean(tmp_path):
    folder = tmp_path / "whatsup"
    id_image(folder / "controlled_images" / "mug_on_table.jpeg", 0)
    id_image(folder / "controlled_clevr" / "cube_behind_sphere.jpeg", 0)
    id_image(folder / "val2017" / "000000000139.jpg", 0)
    id_image(folder / "vg_images" / "7.jpg", 0)
    texts = {"hi": scored(0.9), "lo": scored(0.1), "mid-a": scored(0.5), "mid-b": scored(0.5), "top": scored(0.95)}
    a = "data/controlled_images/mug_on_table.jpeg"
    write_json(folder / "controlled_images_dataset.json", [
        {"image_path": a, "caption_options": ["hi", "lo", "lo", "mid-a"]},  # right
        {"image_path": a, "caption_options": ["mid-a", "lo", "mid-b", "lo"]},  # tie with a wrong one: right
        {"image_path": a, "caption_options": ["hi", "top", "lo", "lo"]},  # wrong
    ])
    write_json(folder / "controlled_clevr_dataset.json", [
        {"image_path": "data/controlled_clevr/cube_behind_sphere.jpeg", "caption_options": ["lo", "hi", "lo", "lo"]}])
    write_json(folder / "coco_qa_one_obj.json", [[139, "mid-b", "mid-a"], [139, "lo", "hi"]])
    write_json(folder / "coco_qa_two_obj.json", [[139, "hi", "lo"]])
    write_json(folder / "vg_qa_one_obj.json", [["7", "hi", "lo"], [7, "lo", "hi"], [7, "hi", "hi"], [7, "lo", "top"]])
    write_json(folder / "vg_qa_two_obj.json", [[7, "top", "hi"]])
    results = Scripted([[1.0, 0.0]], texts).evaluate(["whatsup"], tmp_path)["whatsup"]
    want = {"WhatsUp_A": (2 / 3, 3, 1), "WhatsUp_B": (0.0, 1, 0), "COCO_QA_ONE": (0.5, 2, 1),
            "COCO_QA_TWO": (1.0, 1, 0), "VG_QA_ONE": (0.5, 4, 1), "VG_QA_TWO": (1.0, 1, 0)}
    for subset, (acc, n, ties) in want.items():
        assert results[subset] == {"acc": pytest.approx(acc), "n": n, "ties": ties}, subset
    assert results["_average"] == {"acc": pytest.approx(np.mean([2 / 3, 0, 0.5, 1, 0.5, 1])), "n": 12, "ties": 3}


def test_missing_images_and_bad_items_are_named_errors(tmp_path):
    folder = tmp_path / "whatsup"
    (folder / "vg_images").mkdir(parents=True)
    scripted = Scripted([[1.0, 0.0]], {"hi": scored(0.9), "lo": scored(0.1)})
    write_json(folder / "vg_qa_one_obj.json", [[12, "hi", "lo"]])
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) referenced by .*vg_qa_one_obj.json are missing "
                                                r".*12.jpg"):
        scripted.evaluate(["whatsup"], tmp_path)
    write_json(folder / "vg_qa_one_obj.json", [[12, "hi"]])
    with pytest.raises(ValueError, match=r"vg_qa_one_obj.json: item 0 must be \[image id, correct text, wrong text\]"):
        scripted.evaluate(["whatsup"], tmp_path)
    write_json(folder / "vg_qa_one_obj.json", [[12, "hi", "lo"]])
    (folder / "controlled_images").mkdir()
    write_json(folder / "controlled_images_dataset.json", [{"image_path": "data/controlled_images/x.jpeg"}])
    with pytest.raises(ValueError, match=r"controlled_images_dataset.json: item 0 must be "
                                         r"\{image_path, caption_options"):
        scripted.evaluate(["whatsup"], tmp_path, options={"whatsup": {"splits": ["WhatsUp_A"]}})
