"""VALSE (Parcalabescu et al., ACL 2022; Heidelberg-NLP/VALSE ``data/<piece>.json``).

``<root>/valse/<piece>.json`` (the release's files, as downloaded) + ``<root>/valse/images/``: one
flat folder holding every ``image_file`` the pieces name (Visual7W ``v7w_<id>.jpg``, COCO 2017,
SWiG ``images_512``, VisDial v1.0, COCO val2014; the release ships no images). Each file is a dict
id -> ``{image_file, caption, foil, mturk: {caption, foil, other}, ...}``.

Protocol (the release README and ``lxmert_valse_eval.py``):

- only the validated items count: ``mturk["caption"] >= 2`` (at least two of three annotators chose
  the caption and not the foil); the others are left out and counted (``n_unvalidated``);
- pairwise accuracy ``acc_r``: correct iff s(image, caption) > s(image, foil), with s the cosine
  similarity here. The comparison is strict (``cross_score[0, 1] > cross_score[1, 1]``), so a tie
  counts as wrong.

``_average.acc`` is the mean over the seven phenomena, each phenomenon the mean of its pieces
(counting: 3, actions: 2, coreference: 2), as in the vl_compo study's VALSE column; the phenomenon
means are reported next to it.
"""
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, check_images, choice_outcome, field, fraction, load_json,
                   mean, pair_similarity, register_benchmark, require_dir, require_file, require_items,
                   split_names, text_field)

NAME = "valse"
SOURCE = ("https://github.com/Heidelberg-NLP/VALSE (data/*.json); images from the pieces' source datasets "
          "(Visual7W, COCO 2017 and val2014, SWiG images_512, VisDial v1.0) into valse/images/")
# phenomenon -> its pieces (file stems), in the order of the VALSE paper's tables
VALSE_PHENOMENA = OrderedDict([
    ("existence", ("existence",)),
    ("plurals", ("plurals",)),
    ("counting", ("counting-hard", "counting-small-quant", "counting-adversarial")),
    ("relations", ("relations",)),
    ("actions", ("action-replacement", "actant-swap")),
    ("coreference", ("coreference-standard", "coreference-hard")),
    ("foil-it", ("foil-it",)),
])
VALSE_PIECES = tuple(piece for pieces in VALSE_PHENOMENA.values() for piece in pieces)
MIN_CAPTION_VOTES = 2  # the release README's "valid" foils


def valse_files(data_root: Path) -> "OrderedDict[str, Path]":
    return OrderedDict((piece, Path(data_root) / NAME / f"{piece}.json") for piece in VALSE_PIECES)


def validated(item, source: Path, item_id) -> bool:
    """Whether at least ``MIN_CAPTION_VOTES`` annotators chose the caption (and not the foil)."""
    votes = field(item, "mturk", source, item_id)
    caption_votes = field(votes, "caption", source, f"{item_id}.mturk")
    if not isinstance(caption_votes, (int, float)) or isinstance(caption_votes, bool):
        raise ValueError(f"{source}: item {item_id!r}: mturk.caption must be a number, got {caption_votes!r}")
    return caption_votes >= MIN_CAPTION_VOTES


@register_benchmark(NAME, files=valse_files, splits=True, source=SOURCE)
def load_valse(data_root: Path, images: Vocabulary, texts: Vocabulary,
               splits: Optional[Sequence[str]] = None) -> Scorer:
    """VALSE: ``acc`` per piece over its validated items; ``_average`` has ``acc`` (the mean of the
    phenomenon means), each phenomenon's mean, ``n`` and ``ties``."""
    image_dir = require_dir(Path(data_root) / NAME / "images", NAME)
    per_piece = OrderedDict()
    for piece in split_names(splits, VALSE_PIECES, NAME):
        source = require_file(valse_files(data_root)[piece], NAME)
        data = load_json(source, NAME)
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of items keyed by id, got {type(data).__name__}")
        require_items(data, source)
        rows = {"id": [], "image": [], "caption": [], "foil": []}
        paths, unvalidated = [], 0
        for item_id, item in data.items():
            if not validated(item, source, item_id):
                unvalidated += 1
                continue
            path = image_dir / text_field(item, "image_file", source, item_id)
            foil = text_field(item, "foil", source, item_id)
            paths.append(path)
            rows["id"].append(item_id)
            rows["image"].append(images.add(ImageRef(path)))
            rows["caption"].append(texts.add(text_field(item, "caption", source, item_id)))
            rows["foil"].append(texts.add(foil))
        if not rows["id"]:
            raise ValueError(f"{source}: none of its {len(data)} items is validated (mturk.caption >= "
                             f"{MIN_CAPTION_VOTES})")
        check_images(paths, image_dir, source)
        per_piece[piece] = (rows, unvalidated)

    def score(image_features, text_features):
        results, records = OrderedDict(), []
        for piece, (rows, unvalidated) in per_piece.items():
            caption = pair_similarity(image_features, text_features, rows["image"], rows["caption"])
            foil = pair_similarity(image_features, text_features, rows["image"], rows["foil"])
            correct, tied = choice_outcome(np.stack([caption, foil], axis=1), answer=0, ties="wrong")
            results[piece] = {"acc": fraction(correct), "n": len(correct), "ties": int(tied.sum()),
                              "n_unvalidated": unvalidated}
            records += [{"benchmark": NAME, "split": piece, "id": i, "caption": c, "foil": f, "correct": bool(k)}
                        for i, c, f, k in zip(rows["id"], caption, foil, correct)]
        phenomena = OrderedDict()
        for phenomenon, pieces in VALSE_PHENOMENA.items():
            present = [results[p]["acc"] for p in pieces if p in results]
            if present:
                phenomena[phenomenon] = mean(present)
        average = {"acc": mean(list(phenomena.values())), **phenomena}
        for key in ("n", "ties", "n_unvalidated"):
            average[key] = sum(r[key] for r in results.values())
        results["_average"] = average
        return results, records

    return score
