"""Tests for open_clip_c2lip.eval.crepe: R@1 among caption + hard negatives on the cropped image, the
nine complexities pooled per type, ties counted as the official argsort ranks them (caption first)."""
import shutil

import numpy as np
import pytest
import torch

from compo_fixtures import CREPE_TYPES, read_crepe_rows, write_crepe
from eval_fixtures import Comparisons, Reference, assert_results_equal, c2eval, stub  # noqa: F401


@pytest.fixture(scope="module")
def crepe_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("crepe")
    write_crepe(root)
    return root


def reference_crepe(ref: Reference, root, cmp: Comparisons):
    results = {}
    for negative_type in CREPE_TYPES:
        hits, ties = [], 0
        for complexity in range(4, 13):
            for row in read_crepe_rows(root, negative_type, complexity):
                path = next(p for p in (root / "crepe" / "VG_100K" / f"{row['image_id']}.jpg",
                                        root / "crepe" / "VG_100K_2" / f"{row['image_id']}.jpg") if p.is_file())
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                image = ref.image(path, (x, y, x + w, y + h))  # TF.crop(img, y, x, h, w) on a PIL image
                texts = [row["caption"]] + row["hard_negs"]
                scores = [ref.text(t) @ image for t in texts]
                # official: rank of the caption (index 0) in a descending argsort; R@1 = rank 0
                for k in range(1, len(texts)):
                    cmp.gt(scores[0], scores[k], same=texts[k] == texts[0])
                rank = int(torch.where(torch.argsort(torch.tensor([scores]), descending=True) == 0)[1])
                hits.append(rank == 0)
                ties += scores[0] == max(scores[1:])  # a tie that decides (with the best negative)
        results[negative_type] = {"acc": sum(hits) / len(hits), "n": len(hits), "ties": ties}
    n = sum(r["n"] for r in results.values())
    results["_average"] = {"acc": sum(r["acc"] for r in results.values()) / 3,
                           "acc_micro": sum(r["acc"] * r["n"] for r in results.values()) / n, "n": n,
                           "ties": sum(r["ties"] for r in results.values())}
    return results


def test_crepe_matches_the_official_ranking(stub, crepe_root):
    model, preprocess, tokenizer = stub
    results = c2eval.evaluate(model, preprocess, tokenizer, ["crepe"], crepe_root, batch_size=7, progress=False)
    cmp = Comparisons()
    want = {"crepe": reference_crepe(Reference(model, preprocess, tokenizer), crepe_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    assert results["crepe"]["_average"]["ties"] >= 1  # the fixture's caption-equal negatives decide somewhere
    assert results["crepe"]["atom"]["n"] == sum(1 + c % 2 for c in range(4, 13))


def test_cpu_argsort_ranks_a_tied_caption_first():
    """The tie rule rests on torch.argsort keeping tied entries in index order for CREPE's 6 options."""
    for k in range(1, 6):
        for best in (1.0, 0.5):
            scores = torch.full((1, 6), 0.1)
            scores[0, 0] = scores[0, k] = best
            rank = int(torch.where(torch.argsort(scores, descending=True) == 0)[1])
            assert rank == 0
    correct, tied = c2eval.core.choice_outcome(np.array([[0.5, 0.1, 0.5], [0.4, 0.5, 0.1]]), 0, ties="correct")
    assert correct.tolist() == [True, False] and tied.tolist() == [True, False]


def test_partial_and_broken_roots(stub, crepe_root, tmp_path, caplog):
    import logging
    model, preprocess, tokenizer = stub
    root = tmp_path / "root"
    shutil.copytree(crepe_root, root)
    shutil.rmtree(root / "crepe" / "prod_hard_negatives" / "swap")
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["all"], root, progress=False)
    assert list(results["crepe"]) == ["atom", "negate", "_average"]
    assert results["_skipped"]["crepe"] == ["crepe/prod_hard_negatives/swap/prod_vg_hard_negs_swap_complexity_4.csv"]
    # a present type lacking one complexity is an error naming the file
    (root / "crepe" / "prod_hard_negatives" / "atom" / "prod_vg_hard_negs_atom_complexity_11.csv").unlink()
    with pytest.raises(FileNotFoundError, match="prod_vg_hard_negs_atom_complexity_11.csv"):
        c2eval.evaluate(model, preprocess, tokenizer, ["crepe"], root, progress=False)
    shutil.rmtree(root / "crepe" / "prod_hard_negatives" / "atom")
    # an image in neither VG folder: an error naming it (the official get_image_by_id raises too)
    (root / "crepe" / "VG_100K_2" / "2400001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image\(s\) referenced by .*negate_complexity_\d+.csv are in "
                                                r"neither .*VG_100K nor .*VG_100K_2: 2400001.jpg \(line \d\)"):
        c2eval.evaluate(model, preprocess, tokenizer, ["crepe"], root, progress=False)


def test_a_cut_or_ragged_row_is_a_named_error(stub, crepe_root, tmp_path):
    model, preprocess, tokenizer = stub
    root = tmp_path / "root"
    shutil.copytree(crepe_root, root)
    path = root / "crepe" / "prod_hard_negatives" / "atom" / "prod_vg_hard_negs_atom_complexity_4.csv"
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\r\n").split(",")
    cut = ",".join(lines[1].split(",")[:3])  # the file ends inside row 1, after image_id and x
    path.write_text(lines[0] + cut)
    with pytest.raises(ValueError, match=rf"complexity_4.csv:2: lacks field\(s\) \[.*'hard_negs'\]: 3 of the "
                                         rf"header's {len(header)} \(a truncated line\?\)"):
        c2eval.evaluate(model, preprocess, tokenizer, ["crepe"], root, progress=False)
    path.write_text(lines[0] + lines[1].rstrip("\r\n") + ",1,2\n" + "".join(lines[2:]))
    with pytest.raises(ValueError, match=rf"complexity_4.csv:2: 2 field\(s\) more than the header's {len(header)}"):
        c2eval.evaluate(model, preprocess, tokenizer, ["crepe"], root, progress=False)
