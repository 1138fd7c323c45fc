"""ARO VG-Relation and VG-Attribution (Yuksekgonul et al., ICLR 2023;
mertyg/vision-language-models-are-bows ``dataset_zoo/aro_datasets.py``).

``<root>/aro_vgr/visual_genome_relation.json`` + ``<root>/aro_vgr/images/`` and
``<root>/aro_vga/visual_genome_attribution.json`` + ``<root>/aro_vga/images/``: lists of
``{image_path, bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption}`` plus
``relation_name`` (VG-R) or ``attributes`` (VG-A, a 2-element list). The image is cropped to the
item's bbox; correct iff cos(crop, true) > cos(crop, false) (the ARO code's argmax over
``[false, true]`` picks ``false`` on a tie).
"""
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, check_images, field, fraction, load_json, mean, pair_similarity,
                   register_benchmark, require_dir, require_file, selection_correct)

_logger = logging.getLogger(__name__)


def _load_aro(name: str, annotation: str, group_of: Callable[[Mapping, Path, Any], str],
              default_min_samples: int, data_root: Path, images: Vocabulary, texts: Vocabulary,
              min_samples: Optional[int]) -> Scorer:
    """ARO VG-Relation / VG-Attribution: image cropped to the item's bbox, true vs false caption."""
    folder = data_root / name
    source = require_file(folder / annotation, name)
    image_dir = require_dir(folder / "images", name)
    min_samples = default_min_samples if min_samples is None else min_samples
    data = load_json(source, name)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of test cases, got {type(data).__name__}")
    rows = {"id": [], "group": [], "image": [], "true": [], "false": []}
    paths = []
    for index, item in enumerate(data):
        path = image_dir / field(item, "image_path", source, index)
        x, y, w, h = (float(field(item, key, source, index)) for key in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        if w <= 0 or h <= 0:
            raise ValueError(f"{source}: item {index} has an empty bbox (w={w}, h={h})")
        paths.append(path)
        rows["id"].append(index)
        rows["group"].append(group_of(item, source, index))
        rows["image"].append(images.add(ImageRef(path, (x, y, x + w, y + h))))
        rows["true"].append(texts.add(field(item, "true_caption", source, index)))
        rows["false"].append(texts.add(field(item, "false_caption", source, index)))
    check_images(paths, image_dir, source)
    groups = np.asarray(rows["group"], dtype=object)

    def score(image_features, text_features):
        true = pair_similarity(image_features, text_features, rows["image"], rows["true"])
        false = pair_similarity(image_features, text_features, rows["image"], rows["false"])
        correct = selection_correct(true, false)
        results, kept, dropped = OrderedDict(), [], []
        for group in sorted(set(rows["group"])):
            mask = groups == group
            if mask.sum() < min_samples:
                dropped.append(int(mask.sum()))
                continue
            kept.append(mask)
            results[group] = {"acc": fraction(correct[mask]), "n": int(mask.sum())}
        if dropped:
            _logger.warning("%s: dropped %d split(s) with fewer than %d items (%d items) from the averages "
                            "(min_samples; set --aro-min-samples 0 to keep them)", name, len(dropped),
                            min_samples, sum(dropped))
        kept_mask = np.any(kept, axis=0) if kept else np.zeros(len(correct), bool)
        accs = [r["acc"] for r in results.values()]
        results["_average"] = {"acc": mean(accs),
                               "acc_micro": fraction(correct[kept_mask]), "n": int(kept_mask.sum())}
        records = [{"benchmark": name, "split": g, "id": i, "true": t, "false": f, "correct": bool(c),
                    "kept": bool(k)}
                   for i, g, t, f, c, k in zip(rows["id"], rows["group"], true, false, correct, kept_mask)]
        return results, records

    return score


def _relation_of(item, source, index) -> str:
    return str(field(item, "relation_name", source, index))


def _attribute_pair_of(item, source, index) -> str:
    attributes = field(item, "attributes", source, index)
    if not isinstance(attributes, (list, tuple)) or len(attributes) != 2:
        raise ValueError(f"{source}: item {index} field 'attributes' must be a 2-element list, got {attributes!r}")
    return f"{attributes[0]}_{attributes[1]}"


@register_benchmark("aro_vgr")
def load_aro_vgr(data_root: Path, images: Vocabulary, texts: Vocabulary,
                 min_samples: Optional[int] = None) -> Scorer:
    """ARO VG-Relation: ``aro_vgr/visual_genome_relation.json`` + ``aro_vgr/images/``; splits = relations."""
    return _load_aro("aro_vgr", "visual_genome_relation.json", _relation_of, 0,
                     data_root, images, texts, min_samples)


@register_benchmark("aro_vga")
def load_aro_vga(data_root: Path, images: Vocabulary, texts: Vocabulary,
                 min_samples: Optional[int] = None) -> Scorer:
    """ARO VG-Attribution: ``aro_vga/visual_genome_attribution.json`` + ``aro_vga/images/``; splits = attribute pairs."""
    return _load_aro("aro_vga", "visual_genome_attribution.json", _attribute_pair_of, 25,
                     data_root, images, texts, min_samples)
