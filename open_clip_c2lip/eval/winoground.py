"""Winoground (Thrush et al., CVPR 2022; HF ``facebook/winoground``).

``<root>/winoground/examples.jsonl`` (``id, image_0, image_1, caption_0, caption_1[,
collapsed_tag]``) + ``<root>/winoground/images/`` (``image_k`` names with or without suffix, e.g.
``ex_0_img_0.png``). Text, image and group scores as the paper defines them, strict ``>``.
"""
import json
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Tuple

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, check_images, fraction, pair_similarity, read_text,
                   register_benchmark, require_dir, require_file, require_items, resolve_image, text_field, tied)

ANNOTATION = "examples.jsonl"


def winoground_correct(c0_i0: np.ndarray, c0_i1: np.ndarray, c1_i0: np.ndarray,
                       c1_i1: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Winoground text, image and group correctness from the four caption-image scores, ``[N]`` bool."""
    text = (np.asarray(c0_i0) > c1_i0) & (np.asarray(c1_i1) > c0_i1)
    image = (np.asarray(c0_i0) > c0_i1) & (np.asarray(c1_i1) > c1_i0)
    return text, image, text & image


@register_benchmark("winoground", files=lambda root: {"winoground": Path(root) / "winoground" / ANNOTATION},
                    source="the gated Hugging Face dataset facebook/winoground (data/examples.jsonl, images)")
def load_winoground(data_root: Path, images: Vocabulary, texts: Vocabulary) -> Scorer:
    """Winoground: ``text``, ``image``, ``group`` per ``collapsed_tag`` (``all`` without tags);
    ``_average`` is over all items (the official Winoground scores)."""
    name = "winoground"
    source = require_file(data_root / name / ANNOTATION, name)
    image_dir = require_dir(data_root / name / "images", name)
    rows = {key: [] for key in ("id", "tag", "i0", "i1", "c0", "c1")}
    paths = []
    lines = read_text(source, name).split("\n")  # JSON Lines: one item per line
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{line_number}: invalid JSON line: {e}") from e
        item_id = item.get("id", line_number) if isinstance(item, Mapping) else line_number
        for k in (0, 1):
            path = resolve_image(image_dir, text_field(item, f"image_{k}", source, item_id))
            paths.append(path)
            rows[f"i{k}"].append(images.add(ImageRef(path)))
            rows[f"c{k}"].append(texts.add(text_field(item, f"caption_{k}", source, item_id)))
        rows["id"].append(item_id)
        rows["tag"].append(str(item.get("collapsed_tag", "all")))
    require_items(rows["id"], source)
    check_images(paths, image_dir, source)
    tags = np.asarray(rows["tag"], dtype=object)

    def score(image_features, text_features):
        s = {f"c{c}_i{i}": pair_similarity(image_features, text_features, rows[f"i{i}"], rows[f"c{c}"])
             for c in (0, 1) for i in (0, 1)}
        text, image, group = winoground_correct(s["c0_i0"], s["c0_i1"], s["c1_i0"], s["c1_i1"])
        ties = tied((s["c0_i0"], s["c1_i0"]), (s["c1_i1"], s["c0_i1"]), (s["c0_i0"], s["c0_i1"]),
                    (s["c1_i1"], s["c1_i0"]))
        results = OrderedDict()
        for tag in sorted(set(rows["tag"])):
            mask = tags == tag
            results[tag] = {"text": fraction(text[mask]), "image": fraction(image[mask]),
                            "group": fraction(group[mask]), "n": int(mask.sum()), "ties": int(ties[mask].sum())}
        results["_average"] = {"text": fraction(text), "image": fraction(image), "group": fraction(group),
                               "n": len(text), "ties": int(ties.sum())}
        records = [{"benchmark": name, "split": rows["tag"][j], "id": rows["id"][j],
                    **{key: float(v[j]) for key, v in s.items()},
                    "text": bool(text[j]), "image": bool(image[j]), "group": bool(group[j])}
                   for j in range(len(text))]
        return results, records

    return score
