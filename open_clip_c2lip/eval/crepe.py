"""CREPE productivity (Ma et al., CVPR 2023; RAIVNLab/CREPE ``data/prod_hard_negatives.zip``).

``<root>/crepe/prod_hard_negatives/<type>/prod_vg_hard_negs_<type>_complexity_<c>.csv`` for the
hard-negative types ``atom``, ``swap``, ``negate`` and complexities 4..12 (the zip extracted in
place), + Visual Genome images in ``<root>/crepe/VG_100K/`` and ``<root>/crepe/VG_100K_2/``
(``<image_id>.jpg``, looked up in that order as ``crepe_eval_utils.get_image_by_id``; an image in
neither is an error, as there). CSV columns used: ``image_id``, ``caption``, ``hard_negs`` (a
Python list literal), ``x``, ``y``, ``width``, ``height``.

Protocol (``crepe_compo_eval_open_clip.py`` / ``crepe_prod_eval_clip.py`` with
``crepe_eval_utils.get_one2many_rank``): the image is cropped with ``TF.crop(image, y, x, height,
width)``, i.e. to the PIL box ``(x, y, x + width, y + height)``; the texts are ``[caption] +
hard_negs``; the caption's rank comes from ``torch.argsort(scores, descending=True)`` and R@1 is
rank 0. ``argsort`` is not documented as stable, but on CPU it keeps tied entries in index order
for a handful of options (CREPE has 6), so a caption tied with the best negative ranks first: a tie
counts as **correct** (``core.choice_outcome(ties="correct")``; ``ties`` counts them).

Reported: ``acc`` (R@1) per type over the items of all nine complexities pooled, as the vl_compo
study (``crepe::{atom,swap,negate}``, n = 17698 / 7405 / 17303); ``_average.acc`` is their plain
mean (vl_compo's summary), ``acc_micro`` pools all items.
"""
import ast
import csv
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .core import (ImageRef, Scorer, Vocabulary, choice_outcome, csv_lines, csv_row, fraction, mean,
                   register_benchmark, require_dir, require_file, require_items, split_names)

CREPE_TYPES = ("atom", "swap", "negate")
COMPLEXITIES = tuple(range(4, 13))
IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
TIE_RULE = "correct"
SOURCE = ("https://github.com/RAIVNLab/CREPE (data/prod_hard_negatives.zip extracted into crepe/) + Visual Genome "
          "VG_100K/ and VG_100K_2/ in crepe/")


def crepe_file(data_root: Path, negative_type: str, complexity: int) -> Path:
    return (Path(data_root) / "crepe" / "prod_hard_negatives" / negative_type
            / f"prod_vg_hard_negs_{negative_type}_complexity_{complexity}.csv")


def crepe_files(data_root: Path) -> "OrderedDict[str, Path]":
    """One marker file per type (complexity 4); a present type must have all nine complexities."""
    return OrderedDict((t, crepe_file(data_root, t, COMPLEXITIES[0])) for t in CREPE_TYPES)


def _number(row, key: str, source: Path, line: int) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}:{line}: column {key!r} must be a number, got {row.get(key)!r}") from e


def read_crepe_csv(source: Path, image_dirs: Sequence[Path]):
    """``[(line, image path, box, caption, hard negatives), ...]`` of one CREPE CSV."""
    items, missing = [], []
    with csv_lines(source, "crepe") as f:
        reader = csv.DictReader(f)
        required = ("image_id", "caption", "hard_negs", "x", "y", "width", "height")
        absent = [c for c in required if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{source}: lacks column(s) {absent} (has {reader.fieldnames})")
        for row in reader:
            line = reader.line_num
            row = csv_row(row, source, line)
            try:
                negatives = ast.literal_eval(row["hard_negs"])
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"{source}:{line}: hard_negs is not a Python list literal: "
                                 f"{row['hard_negs']!r:.80}") from e
            if not isinstance(negatives, (list, tuple)) or not negatives:
                raise ValueError(f"{source}:{line}: hard_negs must be a non-empty list, got {negatives!r:.80}")
            image_id = row["image_id"].strip()
            candidates = [d / f"{image_id}.jpg" for d in image_dirs]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                missing.append(f"{image_id}.jpg (line {line})")
            x, y, w, h = (_number(row, key, source, line) for key in ("x", "y", "width", "height"))
            if w <= 0 or h <= 0:
                raise ValueError(f"{source}:{line}: empty crop (width={w}, height={h})")
            items.append((line, path, (x, y, x + w, y + h), str(row["caption"]), [str(n) for n in negatives]))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} image(s) referenced by {source} are in neither "
                                f"{' nor '.join(str(d) for d in image_dirs)}: {shown}")
    return require_items(items, source)


@register_benchmark("crepe", files=crepe_files, splits=True, source=SOURCE)
def load_crepe(data_root: Path, images: Vocabulary, texts: Vocabulary,
               splits: Optional[Sequence[str]] = None) -> Scorer:
    """CREPE productivity: ``acc`` (R@1 among the caption and its hard negatives) per negative type."""
    name = "crepe"
    folder = Path(data_root) / name
    image_dirs = [folder / d for d in IMAGE_FOLDERS]
    if not any(d.is_dir() for d in image_dirs):
        require_dir(image_dirs[0], name)
    per_type = OrderedDict()
    for negative_type in split_names(splits, CREPE_TYPES, name):
        rows = {"id": [], "complexity": [], "image": [], "options": []}
        for complexity in COMPLEXITIES:
            source = require_file(crepe_file(data_root, negative_type, complexity), name)
            for line, path, box, caption, negatives in read_crepe_csv(source, image_dirs):
                rows["id"].append(f"{complexity}:{line}")
                rows["complexity"].append(complexity)
                rows["image"].append(images.add(ImageRef(path, box)))
                rows["options"].append([texts.add(t) for t in [caption] + negatives])
        per_type[negative_type] = rows

    def score(image_features, text_features):
        results, records, pooled = OrderedDict(), [], []
        for negative_type, rows in per_type.items():
            # items with the same number of options are scored together: [N, K]
            widths = np.array([len(o) for o in rows["options"]])
            correct = np.zeros(len(widths), dtype=bool)
            is_tied = np.zeros(len(widths), dtype=bool)
            option_scores = [None] * len(widths)
            for k in np.unique(widths):
                index = np.flatnonzero(widths == k)
                image_index = torch.as_tensor(np.asarray(rows["image"])[index])
                text_index = torch.as_tensor([rows["options"][j] for j in index])  # [n, k]
                scores = (image_features[image_index][:, None, :] * text_features[text_index]).sum(-1).double().numpy()
                correct[index], is_tied[index] = choice_outcome(scores, 0, ties=TIE_RULE)
                for j, row in zip(index, scores):
                    option_scores[j] = row.tolist()
            pooled.append(correct)
            results[negative_type] = {"acc": fraction(correct), "n": len(correct), "ties": int(is_tied.sum())}
            records += [{"benchmark": name, "split": negative_type, "id": i, "complexity": c, "scores": s,
                         "correct": bool(ok)}
                        for i, c, s, ok in zip(rows["id"], rows["complexity"], option_scores, correct)]
        everything = np.concatenate(pooled)
        results["_average"] = {"acc": mean([r["acc"] for r in results.values()]), "acc_micro": fraction(everything),
                               "n": len(everything), "ties": sum(r["ties"] for r in results.values())}
        return results, records

    return score
