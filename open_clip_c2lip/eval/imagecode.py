"""ImageCoDe (Krojer et al., ACL 2022; McGill-NLP/imagecode ``data/valid_data.json``).

``<root>/imagecode/valid_data.json`` (``{set name: {"<target index>": description}}``) +
``<root>/imagecode/image-sets/<set name>/img<X>.jpg``, the folder ``image-sets.zip`` unpacks to;
ten images per set, where X is the frame number for the sets cut from videos.

Protocol (zero-shot CLIP baseline, ``baselines/clip/zero_shot.py``): a set's images are ordered by
the integer X (not by file name, not by position in the folder), and the target is the
``int(index)``-th image in that order; the description is ``description.strip()``. A description is
correct iff its most similar image is the target. The official ranking is numpy's ``argsort`` of the
negated similarities; for ten entries that sort kept tied images in their order (numpy of the
release's time, and still for the float16 scores CLIP gives on a GPU; numpy >= 1.25 with AVX-512
orders float32 ties otherwise), so the first of the tied images in frame order ranks first: a tie is
correct iff the target is the first of the images tied at the top (``np.argmax``). Sets whose name contains ``open-images`` are the ``static``
subset, the others ``videos``; ``_average`` is the micro accuracy over all descriptions.
"""
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, choice_outcome, fraction, load_json, register_benchmark,
                   require_dir, require_file, require_items)

NAME = "imagecode"
ANNOTATION = "valid_data.json"
IMAGE_DIR = "image-sets"
SOURCE = ("https://github.com/McGill-NLP/imagecode (data/valid_data.json); images: image-sets.zip from "
          "Zenodo record 6518944 (or HF BennoKrojer/ImageCoDe), unpacked into imagecode/")
STATIC_MARKER = "open-images"  # zero_shot.py: static images (IMG ACC) vs video frames (VIDEO ACC)
SUBSETS = ("static", "videos")
IMAGES_PER_SET = 10  # the paper's sets of ten minimally different images
_FRAME_FILE = re.compile(r"img(\d+)\.jpg")


def subset_of(set_name: str) -> str:
    return "static" if STATIC_MARKER in set_name else "videos"


def ordered_images(set_dir: Path) -> List[Path]:
    """The ten ``img<X>.jpg`` files of ``set_dir`` ordered by the integer X; ValueError for another
    name, FileNotFoundError for another number of images."""
    frames = []
    for path in set_dir.glob("*.jpg"):
        match = _FRAME_FILE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{NAME}: {path} is not named img<frame number>.jpg")
        frames.append((int(match.group(1)), path))
    if len(frames) != IMAGES_PER_SET:
        # the target is a position in frame order: with an image missing, every later index would
        # silently point at the next image
        raise FileNotFoundError(f"{NAME}: image set folder {set_dir} holds {len(frames)} img<X>.jpg files; an "
                                f"ImageCoDe set has {IMAGES_PER_SET} (a partly unpacked image-sets.zip?)")
    return [path for _, path in sorted(frames)]


@register_benchmark(NAME, files=lambda root: {NAME: Path(root) / NAME / ANNOTATION}, source=SOURCE)
def load_imagecode(data_root: Path, images: Vocabulary, texts: Vocabulary) -> Scorer:
    """ImageCoDe (validation set): ``acc`` for ``static`` and ``videos``; ``_average`` the micro over both."""
    folder = Path(data_root) / NAME
    source = require_file(folder / ANNOTATION, NAME)
    require_dir(folder / IMAGE_DIR, NAME)
    data = load_json(source, NAME)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object {{set name: {{index: description}}}}, "
                         f"got {type(data).__name__}")
    require_items(data, source)
    rows: Dict[str, list] = {"id": [], "subset": [], "images": [], "text": [], "target": []}
    for set_name, descriptions in data.items():
        if not isinstance(descriptions, dict) or not descriptions:
            raise ValueError(f"{source}: set {set_name!r} must map image indices to descriptions, "
                             f"got {descriptions!r:.80}")
        set_dir = folder / IMAGE_DIR / set_name
        if not set_dir.is_dir():
            raise FileNotFoundError(f"{NAME}: image set folder {set_dir} (named by {source}) not found")
        ordered = ordered_images(set_dir)
        indices = [images.add(ImageRef(path)) for path in ordered]
        for index, description in descriptions.items():
            try:
                target = int(index)
            except ValueError:
                raise ValueError(f"{source}: set {set_name!r}: image index {index!r} is not an integer") from None
            if not 0 <= target < len(ordered):
                raise ValueError(f"{source}: set {set_name!r}: image index {target} is out of range for the "
                                 f"{len(ordered)} images in {set_dir}")
            if not isinstance(description, str):
                raise ValueError(f"{source}: set {set_name!r}, index {index!r}: description must be a string")
            rows["id"].append(f"{set_name}/{index}")
            rows["subset"].append(subset_of(set_name))
            rows["images"].append(indices)
            rows["text"].append(texts.add(description.strip()))
            rows["target"].append(target)

    def score(image_features, text_features):
        width = max(len(i) for i in rows["images"])
        scores = np.full((len(rows["id"]), width), -np.inf)
        for j, (image_indices, text_index) in enumerate(zip(rows["images"], rows["text"])):
            similarity = image_features[image_indices] @ text_features[text_index]  # [images of the set]
            scores[j, :len(image_indices)] = similarity.double().numpy()
        target = np.asarray(rows["target"])
        correct = scores.argmax(axis=1) == target  # the first of tied images wins, as the official ranking
        _, tied = choice_outcome(scores, target)
        subsets = np.asarray(rows["subset"])
        results = OrderedDict()
        for subset in SUBSETS:
            mask = subsets == subset
            if mask.any():
                results[subset] = {"acc": fraction(correct[mask]), "n": int(mask.sum()), "ties": int(tied[mask].sum())}
        results["_average"] = {"acc": fraction(correct), "n": len(correct), "ties": int(tied.sum())}
        records = [{"benchmark": NAME, "split": s, "id": i, "scores": row[np.isfinite(row)].tolist(), "target": t,
                    "correct": bool(c)}
                   for i, s, row, t, c in zip(rows["id"], rows["subset"], scores, rows["target"], correct)]
        return results, records

    return score
