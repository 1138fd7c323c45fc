"""Tests for open_clip_c2lip.eval.vl_checklist against an independent reference of the release's itc
protocol (its loader's image filter and first-1000 cut, POS[0] vs NEG[0], macro over corpora), on a
root in the release layout with items written here."""
import json
import logging

import numpy as np
import pytest

from eval_fixtures import (Comparisons, Reference, Scripted, assert_results_equal, c2eval, id_image,  # noqa: F401
                           scored, stub, write_json, written_root)
from open_clip_c2lip.eval import vl_checklist

RELEASE_TYPES = ["Object/Location/center", "Object/Location/margin", "Object/Location/mid", "Object/Size/large",
                 "Object/Size/medium", "Object/Size/small", "Attribute/action", "Attribute/color",
                 "Attribute/material", "Attribute/size", "Attribute/state", "Relation/action", "Relation/spatial"]


def test_corpus_list_is_the_release_one():
    assert list(vl_checklist.VL_CHECKLIST_TYPES) == RELEASE_TYPES
    assert len(c2eval.VL_CHECKLIST_CORPORA) == 56  # the yamls under the release's corpus/v1
    assert vl_checklist.VL_CHECKLIST_TYPES["Relation/action"] == ("hake", "swig", "vg")
    assert "Object/Size/small/swig_destination" in c2eval.VL_CHECKLIST_CORPORA
    assert vl_checklist.type_key("Object/Location/center") == "Object_Location_center"


def reference_vl_checklist(ref: Reference, root, cmp: Comparisons, max_items=1000):
    """Per corpus yaml: load its items, keep those whose image exists, the first ``max_items``;
    correct iff s(POS[0]) > s(NEG[0]); a type = mean over its corpora; summary = mean of categories."""
    import yaml
    folder = root / "vl_checklist"
    types = {}
    for yaml_path in sorted((folder / "corpus" / "v1").rglob("*.yaml")):
        corpus = yaml_path.relative_to(folder / "corpus" / "v1").with_suffix("")
        config = yaml.safe_load(yaml_path.read_text())
        items = json.loads((folder / config["ANNO_PATH"]).read_text())
        kept, missing = [], 0
        for image, texts in items:
            if len(kept) == max_items:
                break
            if (folder / config["IMG_ROOT"] / image).exists():
                kept.append((image, texts))
            else:
                missing += 1
        outcomes, ties = [], 0
        for image, texts in kept:
            v = ref.image(folder / config["IMG_ROOT"] / image)
            same = texts["POS"][0] == texts["NEG"][0]
            outcomes.append(cmp.gt(v @ ref.text(texts["POS"][0]), v @ ref.text(texts["NEG"][0]), same))
            ties += same
        types.setdefault(str(corpus.parent), {})[corpus.name] = (outcomes, ties, missing)
    results = {}
    for kind in RELEASE_TYPES:  # the result order: the release's type order
        corpora = types[kind]
        accs = {name: sum(o) / len(o) for name, (o, _, _) in corpora.items()}
        results[kind.replace("/", "_")] = {
            "acc": np.mean(list(accs.values())), **{f"acc_{name}": a for name, a in accs.items()},
            "n": sum(len(o) for o, _, _ in corpora.values()), "ties": sum(t for _, t, _ in corpora.values()),
            "n_missing_images": sum(m for _, _, m in corpora.values()), "n_corpora": len(corpora)}
    categories = {c: np.mean([r["acc"] for k, r in results.items() if k.startswith(c + "_")])
                  for c in ("Object", "Attribute", "Relation")}
    results["_average"] = {"acc": np.mean(list(categories.values())), **categories,
                           **{k: sum(r[k] for r in results.values()) for k in ("n", "ties", "n_missing_images")}}
    return results


def test_vl_checklist_matches_independent_reference(stub, written_root):
    model, preprocess, tokenizer = stub
    results = c2eval.evaluate(model, preprocess, tokenizer, ["vl_checklist"], written_root, batch_size=6,
                              progress=False)
    cmp = Comparisons()
    want = {"vl_checklist": reference_vl_checklist(Reference(model, preprocess, tokenizer), written_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    average = results["vl_checklist"]["_average"]
    assert average["ties"] == 1 and average["n_missing_images"] == 1 and average["n"] == 56 * 3
    assert results["vl_checklist"]["Object_Location_margin"]["acc_swig_tool"] is not None
    assert 0 < average["acc"] < 1


def _corpus(root, corpus, items, image_root="vg/"):
    anno = f"data/{corpus}.json"
    write_json(root / "vl_checklist" / anno, items)
    path = root / "vl_checklist" / "corpus" / "v1" / f"{corpus}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'ANNO_PATH: "{anno}"\nIMG_ROOT: "{image_root}"\nTYPE: "TUPLE_JSON"\n')


def test_image_filter_first_1000_ties_and_summary_on_scripted_scores(tmp_path, caplog):
    """Texts "right" / "wrong" / "tie-a" / "tie-b" score 0.9 / 0.1 / 0.5 / 0.5 with every image."""
    id_image(tmp_path / "vl_checklist" / "vg" / "VG_100K" / "1.jpg", 0)
    id_image(tmp_path / "vl_checklist" / "hake" / "a.jpg", 0)
    right = ["VG_100K/1.jpg", {"POS": ["right", "x"], "NEG": ["wrong", "y"]}]
    wrong = ["VG_100K/1.jpg", {"POS": ["wrong"], "NEG": ["right"]}]
    tie = ["VG_100K/1.jpg", {"POS": ["tie-a"], "NEG": ["tie-b"]}]
    absent = ["VG_100K/404.jpg", {"POS": ["right"], "NEG": ["wrong"]}]
    # 3 absent images first (dropped, counted), then 600 right, 399 wrong, 1 tie = the first 1000 kept;
    # after those, 500 right ones the cut leaves out
    _corpus(tmp_path, "Attribute/color/vaw", [absent] * 3 + [right] * 600 + [wrong] * 399 + [tie] + [right] * 500)
    _corpus(tmp_path, "Attribute/color/vg", [right, wrong, wrong, wrong])  # 1/4
    _corpus(tmp_path, "Attribute/size/vg", [right])  # 1
    _corpus(tmp_path, "Object/Size/large/hake", [["a.jpg", right[1]], ["a.jpg", wrong[1]]], "hake/")  # 1/2
    _corpus(tmp_path, "Object/Size/large/swig_agent", [absent, absent])  # no image: left out of the mean
    _corpus(tmp_path, "Object/Size/small/swig_agent", [absent])  # no corpus left: type left out
    _corpus(tmp_path, "Relation/spatial/vg", [wrong, tie, right])  # 1/3
    scripted = Scripted([[1.0, 0.0]], {"right": scored(0.9), "wrong": scored(0.1), "tie-a": scored(0.5),
                                       "tie-b": scored(0.5)})
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = scripted.evaluate(["vl_checklist"], tmp_path)
    got = results["vl_checklist"]
    assert list(got) == ["Object_Size_large", "Attribute_color", "Attribute_size", "Relation_spatial", "_average"]
    assert got["Attribute_color"] == {"acc": pytest.approx((0.6 + 0.25) / 2), "acc_vaw": pytest.approx(0.6),
                                      "acc_vg": pytest.approx(0.25), "n": 1004, "ties": 1, "n_missing_images": 3,
                                      "n_corpora": 2}
    assert got["Object_Size_large"] == {"acc": 0.5, "acc_hake": 0.5, "n": 2, "ties": 0, "n_missing_images": 2,
                                        "n_corpora": 1}
    assert got["Relation_spatial"]["acc"] == pytest.approx(1 / 3) and got["Relation_spatial"]["ties"] == 1
    average = got["_average"]
    assert average["Attribute"] == pytest.approx(np.mean([(0.6 + 0.25) / 2, 1.0]))
    assert average["acc"] == pytest.approx(np.mean([0.5, np.mean([(0.6 + 0.25) / 2, 1.0]), 1 / 3]))
    assert average["n_missing_images"] == 6 and average["ties"] == 2
    assert "Object/Size/large/swig_agent: no image" in caplog.text
    assert "Object_Size_small has no corpus with images" in caplog.text
    assert "Attribute/color/vaw: 3 item(s) dropped for a missing image" in caplog.text
    assert len(results["_skipped"]["vl_checklist"]) == 56 - 7
    # all items of a corpus (max_items=None) and a smaller cut
    every = scripted.evaluate(["vl_checklist"], tmp_path, options={"vl_checklist": {
        "splits": ["Attribute/color/vaw"], "max_items": None}})["vl_checklist"]["Attribute_color"]
    assert every["n"] == 1500 and every["acc"] == pytest.approx(1100 / 1500)
    few = scripted.evaluate(["vl_checklist"], tmp_path, options={"vl_checklist": {
        "splits": ["Attribute/color/vaw"], "max_items": 2}})["vl_checklist"]["Attribute_color"]
    assert few["n"] == 2 and few["acc"] == 1.0 and few["n_missing_images"] == 3


def test_bad_corpus_files_are_named_errors(tmp_path):
    id_image(tmp_path / "vl_checklist" / "vg" / "1.jpg", 0)
    scripted = Scripted([[1.0, 0.0]], {"a": scored(0.5), "b": scored(0.4)})
    _corpus(tmp_path, "Relation/spatial/vg", [["1.jpg", {"POS": [], "NEG": ["b"]}]])
    with pytest.raises(ValueError, match=r"spatial/vg.json: item 0: POS must be a non-empty list of texts"):
        scripted.evaluate(["vl_checklist"], tmp_path)
    _corpus(tmp_path, "Relation/spatial/vg", [{"image": "1.jpg"}])
    with pytest.raises(ValueError, match=r"item 0 must be \[image path, \{POS, NEG\}\]"):
        scripted.evaluate(["vl_checklist"], tmp_path)
    (tmp_path / "vl_checklist" / "data" / "Relation" / "spatial" / "vg.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"vg.json, the ANNO_PATH of .*Relation/spatial/vg.yaml, not found"):
        scripted.evaluate(["vl_checklist"], tmp_path)
    (tmp_path / "vl_checklist" / "corpus" / "v1" / "Relation" / "spatial" / "vg.yaml").write_text("IMG_ROOT: vg\n")
    with pytest.raises(ValueError, match=r"vg.yaml must set ANNO_PATH and IMG_ROOT"):
        scripted.evaluate(["vl_checklist"], tmp_path)


def test_no_image_of_any_corpus_is_an_error_not_a_null_result(tmp_path):
    """Every item dropped for a missing image would leave nothing scored (the release divides by
    zero); a root without the image folders is an error naming where the images were looked for."""
    scripted = Scripted([[1.0, 0.0]], {"a": scored(0.5), "b": scored(0.4)})
    _corpus(tmp_path, "Relation/spatial/vg", [["VG_100K/1.jpg", {"POS": ["a"], "NEG": ["b"]}]])
    _corpus(tmp_path, "Attribute/color/vg", [["VG_100K/2.jpg", {"POS": ["a"], "NEG": ["b"]}]])
    with pytest.raises(FileNotFoundError, match=r"vl_checklist: none of the images of the 2 corpora is present "
                                                r"\(looked in .*vl_checklist/vg\)"):
        scripted.evaluate(["vl_checklist"], tmp_path)
    id_image(tmp_path / "vl_checklist" / "vg" / "VG_100K" / "1.jpg", 0)  # one present: the other corpus is dropped
    results = scripted.evaluate(["vl_checklist"], tmp_path)["vl_checklist"]
    assert list(results) == ["Relation_spatial", "_average"] and results["_average"]["n_missing_images"] == 1
