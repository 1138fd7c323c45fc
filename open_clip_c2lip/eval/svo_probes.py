"""SVO-Probes (Hendricks & Nematzadeh, Findings of ACL 2021; google-deepmind/svo_probes).

``<root>/svo_probes/svo_probes.csv`` (the release's CSV; columns used: ``sentence``,
``pos_image_id``, ``neg_image_id``, ``subj_neg``, ``verb_neg``, ``obj_neg``) + the images, which
the release only lists as URLs (``pos_url`` / ``neg_url``, ``image_urls.txt``), downloaded to
``<root>/svo_probes/images/<image_id>`` with the suffix the download had (``.jpg``, ``.jpeg``,
``.png`` or none).

Protocol: the release's notebook (``probing_image_text_models.ipynb``) scores each (sentence,
image) pair as a match or not and keeps a row only when both of its pairs were scored; a row whose
positive or negative image is absent is dropped the same way here, counted per subset as
``n_missing_images`` and logged. Its subsets keep rows with exactly one negative type
(``subj_neg & ~verb_neg & ~obj_neg``, ...). For an embedding model the paired form is used: a row is
correct iff cos(sentence, positive image) > cos(sentence, negative image), strict, so a tie is
wrong. This is the rule the vl_compo study's ``svo_probes::{subj_neg,verb_neg,obj_neg}`` numbers are
read with (its code is unreleased; its item counts are irregular, consistent with dropped images).
``_average.acc`` is the plain mean of the three (vl_compo's summary), ``acc_micro`` pools them.
"""
import csv
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, csv_lines, csv_row, fraction, mean, pair_similarity,
                   register_benchmark, require_dir, require_file, require_items, resolve_image, selection_correct, tied)

_logger = logging.getLogger(__name__)

ANNOTATION = "svo_probes.csv"
SUBSETS = ("subj_neg", "verb_neg", "obj_neg")
SOURCE = ("https://storage.googleapis.com/dm-mmt-models/svo_probes.csv (google-deepmind/svo_probes) into "
          "svo_probes/ + its images (pos_url / neg_url) saved as svo_probes/images/<image_id>.jpg")
_TRUE, _FALSE = {"true", "1", "yes", "t"}, {"false", "0", "no", "f", ""}


def _flag(value: str, column: str, source: Path, line: int) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{source}:{line}: column {column!r} must be True/False, got {value!r}")


@register_benchmark("svo_probes", files=lambda root: {"svo_probes": Path(root) / "svo_probes" / ANNOTATION},
                    source=SOURCE)
def load_svo_probes(data_root: Path, images: Vocabulary, texts: Vocabulary) -> Scorer:
    """SVO-Probes: ``acc`` per negative type (subj_neg / verb_neg / obj_neg)."""
    name = "svo_probes"
    folder = Path(data_root) / name
    source = require_file(folder / ANNOTATION, name)
    image_dir = require_dir(folder / "images", name)
    rows = {key: [] for key in ("id", "subset", "sentence", "pos", "neg")}
    missing = {s: 0 for s in SUBSETS}
    other, total, present_cache = 0, 0, {}

    def image_of(image_id: str):
        if image_id not in present_cache:
            path = resolve_image(image_dir, image_id)
            present_cache[image_id] = path if path.is_file() else None
        return present_cache[image_id]

    with csv_lines(source, name) as f:
        reader = csv.DictReader(f)
        required = ("sentence", "pos_image_id", "neg_image_id") + SUBSETS
        absent = [c for c in required if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{source}: lacks column(s) {absent} (has {reader.fieldnames})")
        for row in reader:
            line, total = reader.line_num, total + 1
            row = csv_row(row, source, line)
            if not row["sentence"].strip():
                raise ValueError(f"{source}:{line}: column 'sentence' is empty")
            flags = [s for s in SUBSETS if _flag(row[s], s, source, line)]
            if len(flags) != 1:
                other += 1  # no or several negative types: in none of the three subsets
                continue
            pos, neg = image_of(row["pos_image_id"].strip()), image_of(row["neg_image_id"].strip())
            if pos is None or neg is None:
                missing[flags[0]] += 1
                continue
            rows["id"].append(line)
            rows["subset"].append(flags[0])
            rows["sentence"].append(texts.add(row["sentence"]))
            rows["pos"].append(images.add(ImageRef(pos)))
            rows["neg"].append(images.add(ImageRef(neg)))
    if total == 0:
        require_items([], source)
    if not rows["id"]:
        raise FileNotFoundError(f"{name}: none of the images of {source} is in {image_dir} (expected "
                                f"<image_id>.jpg / .png per pos_image_id / neg_image_id)")
    dropped = sum(missing.values())
    if dropped:
        _logger.warning("svo_probes: %d of %d rows dropped because their positive or negative image is absent "
                        "from %s (as the release's notebook drops unscored rows); per subset: %s", dropped, total,
                        image_dir, ", ".join(f"{s} {n}" for s, n in missing.items()))
    if other:
        _logger.info("svo_probes: %d rows have no or several negative types and belong to no subset", other)
    labels = np.asarray(rows["subset"], dtype=object)

    def score(image_features, text_features):
        pos = pair_similarity(image_features, text_features, rows["pos"], rows["sentence"])
        neg = pair_similarity(image_features, text_features, rows["neg"], rows["sentence"])
        correct = selection_correct(pos, neg)
        is_tied = tied((pos, neg))
        results = OrderedDict()
        for subset in SUBSETS:
            mask = labels == subset
            results[subset] = {"acc": fraction(correct[mask]), "n": int(mask.sum()), "ties": int(is_tied[mask].sum()),
                               "n_missing_images": missing[subset]}
        present = [r["acc"] for r in results.values() if r["n"]]
        results["_average"] = {"acc": mean(present) if len(present) == len(SUBSETS) else None,
                               "acc_micro": fraction(correct), "n": len(correct), "ties": int(is_tied.sum()),
                               "n_missing_images": dropped}
        records = [{"benchmark": name, "split": s, "id": i, "pos": p, "neg": q, "correct": bool(c)}
                   for i, s, p, q, c in zip(rows["id"], rows["subset"], pos, neg, correct)]
        return results, records

    return score
