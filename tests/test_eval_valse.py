"""Tests for open_clip_c2lip.eval.valse against an independent reference of the VALSE protocol, on
real VALSE items (read from the shared data folder at test time) with stand-in images."""
import json

import numpy as np
import pytest
import torch

from eval_fixtures import (Comparisons, Reference, Scripted, assert_results_equal, c2eval, data_root,  # noqa: F401
                           id_image, scored, shared_data, stub, write_json)
from open_clip_c2lip.eval import valse

# validated items per piece (mturk.caption >= 2), as published with the release and used by vl_compo
VALIDATED_COUNTS = {"existence": 505, "plurals": 851, "counting-hard": 868, "counting-small-quant": 900,
                    "counting-adversarial": 691, "relations": 535, "action-replacement": 648, "actant-swap": 949,
                    "coreference-standard": 708, "coreference-hard": 104, "foil-it": 943}
PHENOMENA = [["existence"], ["plurals"], ["counting-hard", "counting-small-quant", "counting-adversarial"],
             ["relations"], ["action-replacement", "actant-swap"], ["coreference-standard", "coreference-hard"],
             ["foil-it"]]


def reference_valse(ref: Reference, root, cmp: Comparisons):
    results = {}
    for piece in [p for group in PHENOMENA for p in group]:
        data = json.loads((root / "valse" / f"{piece}.json").read_text())
        correct, ties, skipped = [], 0, 0
        for item in data.values():
            if item["mturk"]["caption"] < 2:
                skipped += 1
                continue
            v = ref.image(root / "valse" / "images" / item["image_file"])
            same = item["caption"] == item["foil"]
            correct.append(cmp.gt(v @ ref.text(item["caption"]), v @ ref.text(item["foil"]), same))
            ties += same
        results[piece] = {"acc": sum(correct) / len(correct), "n": len(correct), "ties": ties,
                          "n_unvalidated": skipped}
    names = ["existence", "plurals", "counting", "relations", "actions", "coreference", "foil-it"]
    means = {name: np.mean([results[p]["acc"] for p in group]) for name, group in zip(names, PHENOMENA)}
    results["_average"] = {"acc": np.mean(list(means.values())), **means,
                           **{k: sum(r[k] for r in results.values()) for k in ("n", "ties", "n_unvalidated")}}
    return results


def test_valse_matches_independent_reference(stub, data_root):
    model, preprocess, tokenizer = stub
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["valse"], data_root, batch_size=5,
                                       progress=False, return_scores=True)
    cmp = Comparisons()
    want = {"valse": reference_valse(Reference(model, preprocess, tokenizer), data_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    average = results["valse"]["_average"]
    assert average["ties"] == 1 and results["valse"]["counting-hard"]["ties"] == 1  # the deliberate tie: wrong
    assert [r["correct"] for r in records if r["id"] == "deliberate_tie"] == [False]
    assert 0 < average["acc"] < 1 and average["n_unvalidated"] == 11 and len(records) == average["n"]


def test_validated_counts_on_the_real_files(tmp_path):
    """Every real piece, through the loader: the validated counts published with VALSE (and vl_compo's n)."""
    root = tmp_path
    for piece in valse.VALSE_PIECES:
        (root / "valse" / f"{piece}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "valse" / f"{piece}.json").symlink_to(shared_data("valse", f"{piece}.json"))
        for item in json.loads((root / "valse" / f"{piece}.json").read_text()).values():
            path = root / "valse" / "images" / item["image_file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()  # only existence is checked before encoding
    images, texts = c2eval.Vocabulary(), c2eval.Vocabulary()
    score = valse.load_valse(root, images, texts)
    generator = torch.Generator().manual_seed(0)
    results, _ = score(torch.nn.functional.normalize(torch.randn(len(images), 8, generator=generator), dim=-1),
                       torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=generator), dim=-1))
    assert {p: results[p]["n"] for p in valse.VALSE_PIECES} == VALIDATED_COUNTS
    for piece in valse.VALSE_PIECES:
        total = len(json.loads((root / "valse" / f"{piece}.json").read_text()))
        assert results[piece]["n"] + results[piece]["n_unvalidated"] == total
    assert results["_average"]["n"] == sum(VALIDATED_COUNTS.values()) == 7702


def _scripted_root(root, outcomes):
    """One image; per piece, items that are right (1), wrong (0) or tied (None), plus an unvalidated
    item that would be right. Returns the scripted model: caption / foil texts score 0.9 / 0.1."""
    id_image(root / "valse" / "images" / "a.jpg", 0)
    text_vectors = {}
    for piece, items in outcomes.items():
        data = {}
        for k, outcome in enumerate(items + [1]):
            caption, foil = f"{piece} caption {k}", f"{piece} foil {k}"
            right, wrong = (0.5, 0.5) if outcome is None else (0.9, 0.1) if outcome else (0.1, 0.9)
            text_vectors[caption], text_vectors[foil] = scored(right), scored(wrong)
            data[f"{piece}_{k}"] = {"image_file": "a.jpg", "caption": caption, "foil": foil, "dataset": "x",
                                    "mturk": {"caption": 1 if k == len(items) else 2 + k % 2, "foil": 0, "other": 0}}
        write_json(root / "valse" / f"{piece}.json", data)
    return Scripted([[1.0, 0.0]], text_vectors)


def test_ties_and_summary_rule_on_scripted_scores(tmp_path):
    outcomes = {"existence": [1, 0], "plurals": [1], "counting-hard": [0, None], "counting-small-quant": [1],
                "counting-adversarial": [1, 0], "relations": [0], "action-replacement": [1, 1, None],
                "actant-swap": [0], "coreference-standard": [1], "coreference-hard": [None], "foil-it": [1]}
    results = _scripted_root(tmp_path, outcomes).evaluate(["valse"], tmp_path)["valse"]
    acc = {p: np.mean([o == 1 for o in items]) for p, items in outcomes.items()}  # a tie is wrong
    for piece, items in outcomes.items():
        assert results[piece] == {"acc": pytest.approx(acc[piece]), "n": len(items),
                                  "ties": items.count(None), "n_unvalidated": 1}
    phenomena = [np.mean([acc[p] for p in group]) for group in PHENOMENA]
    assert results["_average"]["acc"] == pytest.approx(np.mean(phenomena))
    assert results["_average"]["counting"] == pytest.approx(np.mean([0, 1, 0.5]))
    assert results["_average"]["ties"] == 3 and results["_average"]["n"] == 16
    # the summary is not the mean over pieces, nor over items
    assert abs(results["_average"]["acc"] - np.mean(list(acc.values()))) > 0.01


def test_partial_pieces_and_bad_items(tmp_path):
    outcomes = {"existence": [1, 0], "counting-hard": [1], "counting-adversarial": [0]}
    scripted = _scripted_root(tmp_path, outcomes)
    results = scripted.evaluate(["valse"], tmp_path)
    assert list(results["valse"]) == ["existence", "counting-hard", "counting-adversarial", "_average"]
    assert results["valse"]["_average"]["acc"] == pytest.approx(np.mean([0.5, np.mean([1, 0])]))
    assert "valse/plurals.json" in results["_skipped"]["valse"]
    data = json.loads((tmp_path / "valse" / "existence.json").read_text())
    del data["existence_0"]["mturk"]
    write_json(tmp_path / "valse" / "existence.json", data)
    with pytest.raises(ValueError, match=r"existence.json: item 'existence_0' lacks field 'mturk'"):
        scripted.evaluate(["valse"], tmp_path)
    (tmp_path / "valse" / "images" / "a.jpg").unlink()
    write_json(tmp_path / "valse" / "existence.json", {})
    with pytest.raises(ValueError, match="existence.json: holds no items"):
        scripted.evaluate(["valse"], tmp_path)
    del outcomes["existence"]
    _scripted_root(tmp_path, outcomes)
    (tmp_path / "valse" / "images" / "a.jpg").unlink()
    (tmp_path / "valse" / "existence.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"image\(s\) referenced by .*counting-hard.json are missing .*a.jpg"):
        scripted.evaluate(["valse"], tmp_path)
