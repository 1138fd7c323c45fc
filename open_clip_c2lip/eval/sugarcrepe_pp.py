"""SugarCrepe++ (Dumpala et al., NeurIPS 2024; Sri-Harsha/scpp ``data/*.json``).

``<root>/sugarcrepe_pp/<split>.json``: a list of ``{id, filename, caption, caption2,
negative_caption}``; images are COCO 2017 val in ``<root>/val2017/``. Metrics as the official
``VLMs/test_Variants_CLIP.py``: ITT (image-to-text) and TOT (text-only), strict ``>``.
"""
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from .core import (Scorer, Vocabulary, coco_caption_splits, fraction, mean, pair_similarity, register_benchmark,
                   split_names, text_similarity, tied)

SUGARCREPE_PP_SPLITS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def sugarcrepe_pp_correct(image_p1: np.ndarray, image_p2: np.ndarray, image_neg: np.ndarray,
                          p1_p2: np.ndarray, p1_neg: np.ndarray, p2_neg: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """SugarCrepe++ ITT (image-to-text) and TOT (text-only) correctness, each ``[N]`` bool.

    ITT: cos(I, P1) > cos(I, N) and cos(I, P2) > cos(I, N).
    TOT: cos(P1, P2) > cos(P1, N) and cos(P1, P2) > cos(P2, N).
    """
    itt = (np.asarray(image_p1) > image_neg) & (np.asarray(image_p2) > image_neg)
    tot = (np.asarray(p1_p2) > p1_neg) & (np.asarray(p1_p2) > p2_neg)
    return itt, tot


def sugarcrepe_pp_files(data_root: Path) -> "OrderedDict[str, Path]":
    return OrderedDict((split, Path(data_root) / "sugarcrepe_pp" / f"{split}.json") for split in SUGARCREPE_PP_SPLITS)


@register_benchmark("sugarcrepe_pp", files=sugarcrepe_pp_files, splits=True,
                    source="https://github.com/Sri-Harsha/scpp (data/*.json) + COCO 2017 val images in val2017/")
def load_sugarcrepe_pp(data_root: Path, images: Vocabulary, texts: Vocabulary,
                       splits: Optional[Sequence[str]] = None) -> Scorer:
    """SugarCrepe++: ``itt`` and ``tot`` per split; ``_average`` holds their macro averages
    (``itt``, ``tot``) and micro averages (``itt_micro``, ``tot_micro``)."""
    name = "sugarcrepe_pp"
    per_split = coco_caption_splits(data_root, name, split_names(splits, SUGARCREPE_PP_SPLITS, name), images,
                                    texts, {"p1": "caption", "p2": "caption2", "neg": "negative_caption"})

    def score(image_features, text_features):
        results, records, pooled = OrderedDict(), [], {"itt": [], "tot": []}
        for split, rows in per_split.items():
            sims = {key: pair_similarity(image_features, text_features, rows["image"], rows[key])
                    for key in ("p1", "p2", "neg")}
            p1_p2 = text_similarity(text_features, rows["p1"], rows["p2"])
            p1_neg = text_similarity(text_features, rows["p1"], rows["neg"])
            p2_neg = text_similarity(text_features, rows["p2"], rows["neg"])
            itt, tot = sugarcrepe_pp_correct(sims["p1"], sims["p2"], sims["neg"], p1_p2, p1_neg, p2_neg)
            pooled["itt"].append(itt)
            pooled["tot"].append(tot)
            ties = tied((sims["p1"], sims["neg"]), (sims["p2"], sims["neg"]), (p1_p2, p1_neg), (p1_p2, p2_neg))
            results[split] = {"itt": fraction(itt), "tot": fraction(tot), "n": len(itt), "ties": int(ties.sum())}
            records += [{"benchmark": name, "split": split, "id": i, "image_p1": a, "image_p2": b,
                         "image_neg": c, "p1_p2": d, "p1_neg": e, "p2_neg": f, "itt": bool(g), "tot": bool(h)}
                        for i, a, b, c, d, e, f, g, h in zip(rows["id"], sims["p1"], sims["p2"], sims["neg"],
                                                            p1_p2, p1_neg, p2_neg, itt, tot)]
        split_results = list(results.values())
        average = {}
        for metric in ("itt", "tot"):
            average[metric] = mean([r[metric] for r in split_results])
        for metric in ("itt", "tot"):
            average[f"{metric}_micro"] = fraction(np.concatenate(pooled[metric]) if pooled[metric] else [])
        average["n"] = sum(r["n"] for r in split_results)
        average["ties"] = sum(r["ties"] for r in split_results)
        results["_average"] = average
        return results, records

    return score
