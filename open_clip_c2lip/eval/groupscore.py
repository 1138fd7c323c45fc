"""Winoground-style group scores for benchmarks built of 2x2 items (two images, two captions, caption
``k`` matching image ``k``): ColorSwap, MMVP-VLM, EqBen.

text: s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1) (each image picks its caption);
image: s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0) (each caption picks its image);
group: both. Strict ``>`` as the Winoground paper and EqBen's ``eqben_acc.cal_wino_score``: a tie is
wrong; ``ties`` counts items where any of the four comparisons is an exact tie.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from .core import fraction, pair_similarity, tied
from .winoground import winoground_correct

GROUP_METRICS = ("text", "image", "group")


class GroupRows:
    """Items of a 2x2 benchmark as index lists: ``id``, ``subset`` and the image (``i0``, ``i1``) and
    caption (``c0``, ``c1``) indices into the shared vocabularies."""

    def __init__(self):
        self.columns: Dict[str, List[Any]] = {key: [] for key in ("id", "subset", "i0", "i1", "c0", "c1")}

    def add(self, item_id, subset: str, i0: int, i1: int, c0: int, c1: int) -> None:
        for key, value in zip(self.columns, (item_id, subset, i0, i1, c0, c1)):
            self.columns[key].append(value)

    def __len__(self) -> int:
        return len(self.columns["id"])

    def __getitem__(self, key: str) -> List[Any]:
        return self.columns[key]


def group_similarities(rows: GroupRows, image_features: torch.Tensor,
                       text_features: torch.Tensor) -> Dict[str, np.ndarray]:
    """``{"c0_i0", "c0_i1", "c1_i0", "c1_i1"}`` -> ``[N]`` cosine similarities of caption ``c`` and image ``i``."""
    return {f"c{c}_i{i}": pair_similarity(image_features, text_features, rows[f"i{i}"], rows[f"c{c}"])
            for c in (0, 1) for i in (0, 1)}


def group_outcomes(s: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``{"text", "image", "group", "ties"}`` -> ``[N]`` bool from the four similarities."""
    text, image, group = winoground_correct(s["c0_i0"], s["c0_i1"], s["c1_i0"], s["c1_i1"])
    ties = tied((s["c0_i0"], s["c1_i0"]), (s["c1_i1"], s["c0_i1"]), (s["c0_i0"], s["c0_i1"]),
                (s["c1_i1"], s["c1_i0"]))
    return {"text": text, "image": image, "group": group, "ties": ties}


def subset_results(outcomes: Mapping[str, np.ndarray], mask: np.ndarray,
                   metrics: Sequence[str] = GROUP_METRICS) -> Dict[str, Any]:
    """``{metric: fraction, "n": items, "ties": count}`` over the items in ``mask``."""
    result: Dict[str, Any] = {m: fraction(outcomes[m][mask]) for m in metrics}
    result["n"] = int(mask.sum())
    result["ties"] = int(outcomes["ties"][mask].sum())
    return result


def score_groups(name: str, rows: GroupRows, subsets: Sequence[str], image_features: torch.Tensor,
                 text_features: torch.Tensor) -> Tuple["OrderedDict[str, Dict[str, Any]]", Dict[str, np.ndarray],
                                                      List[Dict[str, Any]]]:
    """Per-subset text / image / group results (in the order of ``subsets``, those with items), the
    per-item outcomes (with the similarities) and per-item score records."""
    s = group_similarities(rows, image_features, text_features)
    outcomes = {**group_outcomes(s), **s}
    labels = np.asarray(rows["subset"], dtype=object)
    results = OrderedDict()
    for subset in subsets:
        mask = labels == subset
        if mask.any():
            results[subset] = subset_results(outcomes, mask)
    records = [{"benchmark": name, "split": rows["subset"][j], "id": rows["id"][j],
                **{key: float(s[key][j]) for key in s}, **{m: bool(outcomes[m][j]) for m in GROUP_METRICS}}
               for j in range(len(rows))]
    return results, outcomes, records
