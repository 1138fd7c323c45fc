"""SugarCrepe (Hsieh et al., NeurIPS 2023; RAIVNLab/sugar-crepe ``data/*.json``).

``<root>/sugarcrepe/<split>.json``: a dict keyed by item id of ``{filename, caption,
negative_caption}``; images are COCO 2017 val in ``<root>/val2017/``. An item is correct iff
cos(image, caption) > cos(image, negative_caption).
"""
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .core import (Scorer, Vocabulary, coco_caption_splits, fraction, mean, pair_similarity, register_benchmark,
                   selection_correct, split_names, tied)

SUGARCREPE_SPLITS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def sugarcrepe_files(data_root: Path) -> "OrderedDict[str, Path]":
    return OrderedDict((split, Path(data_root) / "sugarcrepe" / f"{split}.json") for split in SUGARCREPE_SPLITS)


@register_benchmark("sugarcrepe", files=sugarcrepe_files, splits=True,
                    source="https://github.com/RAIVNLab/sugar-crepe (data/*.json) + COCO 2017 val images in val2017/")
def load_sugarcrepe(data_root: Path, images: Vocabulary, texts: Vocabulary,
                    splits: Optional[Sequence[str]] = None) -> Scorer:
    """SugarCrepe: ``acc`` per split; ``_average`` has ``micro`` (all items pooled), ``macro`` (mean
    of split accuracies) and ``add`` / ``replace`` / ``swap``, each the *micro* average over the
    items of that category's splits (the SugarCrepe authors' tables use micro averages)."""
    name = "sugarcrepe"
    per_split = coco_caption_splits(data_root, name, split_names(splits, SUGARCREPE_SPLITS, name), images,
                                    texts, {"pos": "caption", "neg": "negative_caption"})

    def score(image_features, text_features):
        results, records, pooled = OrderedDict(), [], {}
        for split, rows in per_split.items():
            pos = pair_similarity(image_features, text_features, rows["image"], rows["pos"])
            neg = pair_similarity(image_features, text_features, rows["image"], rows["neg"])
            correct = selection_correct(pos, neg)
            pooled[split] = correct
            results[split] = {"acc": fraction(correct), "n": len(correct), "ties": int(tied((pos, neg)).sum())}
            records += [{"benchmark": name, "split": split, "id": i, "pos": p, "neg": q, "correct": bool(c)}
                        for i, p, q, c in zip(rows["id"], pos, neg, correct)]
        everything = np.concatenate(list(pooled.values())) if pooled else np.zeros(0, dtype=bool)
        average = {"micro": fraction(everything),
                   "macro": mean([r["acc"] for r in results.values()])}
        for category in ("add", "replace", "swap"):
            members = [c for s, c in pooled.items() if s.split("_")[0] == category]
            if members:
                average[category] = fraction(np.concatenate(members))
        average["n"] = len(everything)
        average["ties"] = sum(r["ties"] for r in results.values())
        results["_average"] = average
        return results, records

    return score
