"""Tests for open_clip_c2lip.eval.eqben: the shuffled full-test annotation regrouped by private_info and
scored as evaluate_eqben_locally.py (Winoground per sub-dataset), with vl_compo's summary."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from compo_fixtures import EQBEN_SAMPLES, write_eqben
from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, stub  # noqa: F401
from open_clip_c2lip.eval.eqben import SUBSETS


@pytest.fixture(scope="module")
def eqben_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eqben")
    write_eqben(root)
    return root


def reference_eqben(ref: Reference, root, cmp: Comparisons, scratch):
    folder = root / "eqben"
    samples = {}
    for entry in json.loads((folder / "ann_json_finegrained_random.json").read_text()):
        info = entry["private_info"]
        name = info["name"]
        sample = samples.setdefault((info["dataset"], info["sample_cnt"]), {})
        sample[f"i{name[3]}"], sample[f"c{name[1]}"] = entry["image"], entry["caption"]

    def image(relative):
        path = folder / "images" / relative
        if path.suffix == ".npy":  # official process_img_npy: BGR array -> RGB image
            png = scratch / (relative.replace("/", "_") + ".png")
            Image.fromarray(np.load(path)[:, :, [2, 1, 0]], "RGB").save(png)
            path = png
        elif not path.is_file():
            path = path.with_suffix(".jpg")
        return ref.image(path)

    per = {}
    for (dataset, _), d in samples.items():
        i0, i1, c0, c1 = image(d["i0"]), image(d["i1"]), ref.text(d["c0"]), ref.text(d["c1"])
        same = d["c0"] == d["c1"]
        text = cmp.gt(c0 @ i0, c1 @ i0, same) and cmp.gt(c1 @ i1, c0 @ i1, same)
        img = cmp.gt(c0 @ i0, c0 @ i1) and cmp.gt(c1 @ i1, c1 @ i0)
        per.setdefault(dataset, []).append((text, img, text and img, same))
    results = {}
    for dataset in SUBSETS:
        r = per[dataset]
        results[dataset] = {m: sum(x[j] for x in r) / len(r) for j, m in enumerate(("text", "image", "group"))}
        results[dataset].update(n=len(r), ties=sum(x[3] for x in r))
    average = {}
    for m in ("text", "image", "group"):
        kubric = (results["eqbenkubric_loc"][m] + results["eqbenkubric_cnt"][m] + results["eqbenkubric_attr"][m]) / 3
        average[m] = (results["eqbenyoucook2"][m] + results["eqbengebc"][m] + results["eqbenag"][m] + kubric
                      + results["eqbensd"][m]) / 5
    average.update(n=sum(EQBEN_SAMPLES.values()), ties=sum(v["ties"] for v in results.values()))
    results["_average"] = average
    return results


def test_eqben_matches_independent_reference(stub, eqben_root, tmp_path):
    model, preprocess, tokenizer = stub
    results = c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], eqben_root, batch_size=5, progress=False)
    cmp = Comparisons()
    want = {"eqben": reference_eqben(Reference(model, preprocess, tokenizer), eqben_root, cmp, tmp_path)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    assert results["eqben"]["eqbensd"]["ties"] == 1 and results["eqben"]["_average"]["n"] == 16


def test_npy_frames_are_read_as_bgr(eqben_root):
    from open_clip_c2lip.eval.eqben import read_bgr_npy
    path = next((eqben_root / "eqben" / "images" / "eqbenyoucook2").rglob("*.npy"))
    stored = np.load(path)
    assert np.array_equal(np.asarray(read_bgr_npy(path)), stored[:, :, ::-1])


def test_summary_needs_all_subsets_and_bad_annotations_are_named(stub, eqben_root, tmp_path, caplog):
    model, preprocess, tokenizer = stub
    root = tmp_path / "root"
    shutil.copytree(eqben_root, root)
    annotation = root / "eqben" / "ann_json_finegrained_random.json"
    entries = json.loads(annotation.read_text())
    annotation.write_text(json.dumps([e for e in entries if e["private_info"]["dataset"] != "eqbengebc"]))
    results = c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], root, progress=False)
    assert "eqbengebc" not in results["eqben"] and results["eqben"]["_average"]["group"] is None
    assert "eqbengebc absent" in caplog.text
    annotation.write_text(json.dumps(entries[1:]))
    with pytest.raises(ValueError, match=r"sample \d+ lacks the entries \['c\di\d'\]"):
        c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], root, progress=False)
    annotation.write_text(json.dumps([dict(entries[0], private_info=dict(entries[0]["private_info"], dataset="x"))]))
    with pytest.raises(ValueError, match="unknown private_info.dataset 'x'"):
        c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], root, progress=False)
    annotation.write_text(json.dumps(entries))
    next((root / "eqben" / "images" / "eqbengebc").rglob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) referenced by .* are missing"):
        c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], root, progress=False)


def test_frames_and_sample_numbers_of_another_type_are_named_errors(stub, eqben_root, tmp_path):
    """A float frame would have been cast to uint8 with wrap-around; a sample number of another type
    mixed with integers failed in the sort (TypeError) or as a dict key (a list)."""
    from open_clip_c2lip.eval.eqben import read_bgr_npy
    model, preprocess, tokenizer = stub
    path = tmp_path / "frame.npy"
    np.save(path, np.full((6, 8, 3), 300.0))
    with pytest.raises(ValueError, match=r"expected an \[H, W, 3\] uint8 frame, got shape \(6, 8, 3\), dtype float64"):
        read_bgr_npy(path)
    root = tmp_path / "root"
    shutil.copytree(eqben_root, root)
    annotation = root / "eqben" / "ann_json_finegrained_random.json"
    entries = json.loads(annotation.read_text())
    want = c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], eqben_root, progress=False)
    as_text = [dict(e, private_info=dict(e["private_info"], sample_cnt=str(e["private_info"]["sample_cnt"])))
               if e["private_info"]["sample_cnt"] % 2 else e for e in entries]  # digits as text, mixed with ints
    annotation.write_text(json.dumps(as_text))
    assert c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], root, progress=False) == want
    annotation.write_text(json.dumps([dict(entries[0], private_info=dict(entries[0]["private_info"], sample_cnt=[1]))]
                                     + entries[1:]))
    with pytest.raises(ValueError, match=r"entry 0: private_info.sample_cnt must be an integer, got \[1\]"):
        c2eval.evaluate(model, preprocess, tokenizer, ["eqben"], root, progress=False)
