"""Tests for open_clip_c2lip.eval.svo_probes: positive vs negative image for a sentence, subsets with one
negative type, rows with an absent image dropped and counted (as the release's notebook)."""
import logging
import shutil

import pytest

from compo_fixtures import svo_image, write_svo
from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, stub  # noqa: F401


@pytest.fixture(scope="module")
def svo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("svo")
    rows = write_svo(root)
    return root, rows


def reference_svo(ref: Reference, root, rows, cmp: Comparisons):
    per = {"subj_neg": [], "verb_neg": [], "obj_neg": []}
    missing = {k: 0 for k in per}
    for sentence, _, _, flags, pos, neg in rows:
        if sum(flags) != 1:
            continue
        subset = ("subj_neg", "verb_neg", "obj_neg")[flags.index(1)]
        if svo_image(root, pos) is None or svo_image(root, neg) is None:
            missing[subset] += 1
            continue
        t = ref.text(sentence)
        a, b = t @ ref.image(svo_image(root, pos)), t @ ref.image(svo_image(root, neg))
        per[subset].append((cmp.gt(a, b, same=pos == neg), pos == neg))
    results = {s: {"acc": sum(c for c, _ in r) / len(r), "n": len(r), "ties": sum(t for _, t in r),
                   "n_missing_images": missing[s]} for s, r in per.items()}
    everything = [c for r in per.values() for c, _ in r]
    results["_average"] = {"acc": sum(r["acc"] for r in results.values()) / 3,
                           "acc_micro": sum(everything) / len(everything), "n": len(everything),
                           "ties": sum(r["ties"] for r in results.values()), "n_missing_images": sum(missing.values())}
    return results


def test_svo_probes_matches_independent_reference(stub, svo_root, caplog):
    model, preprocess, tokenizer = stub
    root, rows = svo_root
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["svo_probes"], root, batch_size=4, progress=False)
    cmp = Comparisons()
    want = {"svo_probes": reference_svo(Reference(model, preprocess, tokenizer), root, rows, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    got = results["svo_probes"]
    assert [got[s]["n"] for s in ("subj_neg", "verb_neg", "obj_neg")] == [2, 3, 4]
    assert got["obj_neg"]["ties"] == 1 and got["_average"]["n_missing_images"] == 2
    assert "2 of 12 rows dropped because their positive or negative image is absent" in caplog.text


def test_svo_probes_bad_inputs(stub, svo_root, tmp_path):
    model, preprocess, tokenizer = stub
    root = tmp_path / "root"
    shutil.copytree(svo_root[0], root)
    csv_path = root / "svo_probes" / "svo_probes.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace(",True,False,False,", ",maybe,False,False,", 1))
    with pytest.raises(ValueError, match=r"svo_probes.csv:2: column 'subj_neg' must be True/False, got 'maybe'"):
        c2eval.evaluate(model, preprocess, tokenizer, ["svo_probes"], root, progress=False)
    csv_path.write_text(text.replace("neg_image_id", "negative_id", 1))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['neg_image_id'\]"):
        c2eval.evaluate(model, preprocess, tokenizer, ["svo_probes"], root, progress=False)
    lines = text.splitlines(keepends=True)  # a file cut inside row 3: the reader pads it with None
    csv_path.write_text("".join(lines[:2]) + lines[2][:lines[2].index(",") + 1])
    with pytest.raises(ValueError, match=r"svo_probes.csv:3: lacks field\(s\) \[.*'neg_image_id'.*\]: 2 of the "
                                         r"header's \d+ \(a truncated line\?\)"):
        c2eval.evaluate(model, preprocess, tokenizer, ["svo_probes"], root, progress=False)
    csv_path.write_text("".join(lines[:2]) + lines[2].rstrip("\r\n") + ",extra\n")
    with pytest.raises(ValueError, match=r"svo_probes.csv:3: 1 field\(s\) more than the header's"):
        c2eval.evaluate(model, preprocess, tokenizer, ["svo_probes"], root, progress=False)
    csv_path.write_text(lines[0] + "," + lines[1].split(",", 1)[1])
    with pytest.raises(ValueError, match=r"svo_probes.csv:2: column 'sentence' is empty"):
        c2eval.evaluate(model, preprocess, tokenizer, ["svo_probes"], root, progress=False)
    csv_path.write_text(text)
    for image in (root / "svo_probes" / "images").iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match="none of the images of .*svo_probes.csv is in"):
        c2eval.evaluate(model, preprocess, tokenizer, ["svo_probes"], root, progress=False)
